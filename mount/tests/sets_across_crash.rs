//! All or nothing across a crash: a persistent set of several volumes that a killed daemon left
//! on some volumes only is dropped at the next start; one that had every copy durable is kept
//! whole and completed; a set that finished is never dropped because one of its copies was
//! deleted later.

mod common;

use common::*;
use shadowcopy::protocol::{Client, CreateRequest, Op};

fn two_volumes(d: &Daemon) {
    for name in ["a", "b"] {
        let image = image_file(&d.dir, &format!("{name}.img"), 16 << 20);
        d.add_volume(name, &image);
    }
}

/// Starts a persistent set of `a` and `b` on its own connection, waits until the daemon stalls
/// at fail point `point`, then kills the daemon.
fn kill_mid_set(d: &mut Daemon, point: &str) {
    let stall = d.failpoint(point);
    let socket = d.socket.clone();
    let requester = std::thread::spawn(move || {
        let req = CreateRequest { persistent: Some(true), ..CreateRequest::new(vec!["a".into(), "b".into()]) };
        Client::connect(&socket).and_then(|mut c| c.call(Op::Create(req), &mut |_, _| {}))
    });
    let reached = d.wait_until_reached(point, "the set");
    d.kill();
    assert!(requester.join().unwrap().is_err(), "the requester of the killed set got an error");
    drop(stall);
    let _ = std::fs::remove_file(&reached);
}

fn log_has(d: &Daemon, text: &str) -> bool {
    d.log().lines().any(|l| l.contains(text))
}

#[test]
fn a_set_cut_short_by_a_crash_is_dropped_from_every_volume() {
    let mut d = Daemon::start_with_failpoints();
    two_volumes(&d);
    kill_mid_set(&mut d, "stall-set-between-volumes");
    d.restart();
    assert!(d.list().is_empty(), "no copy of the cut-short set is kept: {:?}", d.list());
    assert!(log_has(&d, "dropped a set that a crash cut short"), "{}", d.log());
    // The volumes work on: a new set of both is whole.
    let set = d.create(&["a", "b"], false);
    assert_eq!(set.copies.len(), 2);
    d.restart();
    assert_eq!(d.list().len(), 2, "a finished set survives a restart whole");
}

#[test]
fn a_set_whose_copies_were_all_durable_is_completed_after_a_crash() {
    let mut d = Daemon::start_with_failpoints();
    two_volumes(&d);
    kill_mid_set(&mut d, "stall-set-before-complete");
    d.restart();
    let copies = d.list();
    assert_eq!(copies.len(), 2, "both copies are kept: {copies:?}");
    assert_eq!(copies[0].set_id, copies[1].set_id);
    assert!(log_has(&d, "completed a set that a crash interrupted"), "{}", d.log());
    // The completion is durable: the next start has nothing to decide.
    d.restart();
    assert_eq!(d.list().len(), 2);
    let completions = d.log().lines().filter(|l| l.contains("completed a set that a crash interrupted")).count();
    assert_eq!(completions, 1, "completed once, durably:\n{}", d.log());
}

#[test]
fn a_finished_set_with_a_copy_deleted_later_keeps_its_other_copy() {
    let mut d = Daemon::start(&[]);
    two_volumes(&d);
    let set = d.create(&["a", "b"], false);
    let on_a = set.copies.iter().find(|c| c.volume == "a").expect("a copy on a");
    let out = d.cli(&["delete", &on_a.id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.restart();
    let left = d.list();
    assert_eq!(left.len(), 1, "the copy on b stays: {left:?}");
    assert_eq!(left[0].volume, "b");
    assert!(!log_has(&d, "dropped a set"), "{}", d.log());
}
