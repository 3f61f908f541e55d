//! Writers take part in sets: hook writers (`shadowcopy writer run --exec`) see the events in
//! VSS's order with the set in their environment; a writer that fails or hangs at Freeze aborts
//! the set (the others get Abort, no copy is kept, the error names the writer and the event);
//! a writer that crashed is left out of the next set, which says so.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::protocol::{Answer, ClientError, Op, WriterSelection, WriterState, WriterView};
use shadowcopy::testing::system::ChildGuard;

/// An executable hook that logs `NAME EVENT SET_ID` to `log` and runs `extra` (bash) after.
fn hook(dir: &Path, name: &str, log: &Path, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.hook"));
    std::fs::write(&p, format!("#!/bin/bash\necho \"{name} $1 $SHADOWCOPY_SET_ID\" >> {}\n{extra}\nexit 0\n", log.display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn writers(d: &Daemon) -> Vec<WriterView> {
    match d.call(Op::Writers) {
        Ok(Answer::Writers(w)) => w,
        other => panic!("writers: {other:?}"),
    }
}

/// Starts `shadowcopy writer run` and waits until the daemon lists it.
fn start_writer(d: &Daemon, name: &str, exec: &Path, volume: &str) -> ChildGuard {
    let child = Command::new(cli_binary())
        .args(["--socket", d.socket.to_str().unwrap(), "writer", "run", "--name", name, "--exec", exec.to_str().unwrap(), "--volume", volume])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("writer run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writers(d).iter().any(|w| w.name == name && w.state != WriterState::Disconnected) {
        assert!(Instant::now() < deadline, "writer {name} did not register");
        std::thread::sleep(Duration::from_millis(50));
    }
    ChildGuard(Some(child))
}

fn events(log: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.starts_with(&format!("{name} "))).map(|l| l.split(' ').nth(1).unwrap().to_string()).collect()
}

/// `create vol` with the given writer selection.
fn create(d: &Daemon, writers: WriterSelection) -> Result<Answer, ClientError> {
    d.call(Op::Create { volumes: vec!["vol".into()], volatile: false, writers })
}

fn volume(d: &Daemon) {
    let image = image_file(&d.dir, "vol.img", 16 << 20);
    d.add_volume("vol", &image);
}

#[test]
fn hook_writers_see_every_event_in_order() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _w = start_writer(&d, "app", &hook(d.dir.path(), "app", &log, ""), "vol");
    let set = d.create(&["vol"], false);
    assert_eq!(set.writers, vec!["app".to_string()]);
    assert_eq!(
        events(&log, "app"),
        ["identify", "prepare_for_backup", "prepare_for_snapshot", "freeze", "thaw", "post_snapshot", "backup_complete"],
        "VSS's order"
    );
    // After the instant, the hook sees the set's id.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().any(|l| l == format!("app thaw {}", set.set_id)), "{text}");
    assert_eq!(writers(&d)[0].state, WriterState::Stable);
    // --no-writers leaves it out.
    match create(&d, WriterSelection { none: true, ..Default::default() }) {
        Ok(Answer::Set(s)) => assert!(s.writers.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(events(&log, "app").len(), 7, "no events for a set without writers");
}

#[test]
fn a_writer_failing_freeze_aborts_the_set() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _good = start_writer(&d, "good", &hook(d.dir.path(), "good", &log, ""), "vol");
    let bad_hook = hook(d.dir.path(), "bad", &log, "if [ \"$1\" = freeze ]; then echo 'database is locked' >&2; exit 3; fi");
    let _bad = start_writer(&d, "bad", &bad_hook, "vol");
    let err = match create(&d, WriterSelection::default()) {
        Err(ClientError::Daemon(e)) => e.message,
        other => panic!("create with a failing writer: {other:?}"),
    };
    assert!(err.contains("`bad`") && err.contains("freeze") && err.contains("database is locked"), "{err}");
    assert!(d.list().is_empty(), "no copy is kept");
    assert_eq!(events(&log, "good"), ["identify", "prepare_for_backup", "prepare_for_snapshot", "freeze", "abort"]);
    let bad = writers(&d).into_iter().find(|w| w.name == "bad").unwrap();
    assert_eq!(bad.state, WriterState::FailedAtFreeze);
    assert!(bad.last_error.unwrap().contains("database is locked"));
    // Excluding it, the set goes through.
    match create(&d, WriterSelection { exclude: vec!["bad".into()], ..Default::default() }) {
        Ok(Answer::Set(s)) => {
            assert_eq!(s.writers, vec!["good".to_string()]);
            assert!(s.skipped_writers.iter().any(|w| w.starts_with("bad")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_hanging_writer_times_out_and_the_set_is_aborted() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _good = start_writer(&d, "good", &hook(d.dir.path(), "good", &log, ""), "vol");
    let _hung = start_writer(&d, "hung", &hook(d.dir.path(), "hung", &log, "if [ \"$1\" = freeze ]; then sleep 40; fi"), "vol");
    let t0 = Instant::now();
    let err = match create(&d, WriterSelection::default()) {
        Err(ClientError::Daemon(e)) => e.message,
        other => panic!("create with a hanging writer: {other:?}"),
    };
    let took = t0.elapsed();
    assert!(err.contains("`hung`") && err.contains("freeze") && err.contains("no answer"), "{err}");
    // 10 s for Freeze, at most 2 s for each Abort.
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(16), "gave up after {took:?}");
    assert!(d.list().is_empty());
    assert_eq!(events(&log, "good").last().map(String::as_str), Some("abort"));
}

#[test]
fn a_crashed_writer_is_left_out_of_the_next_set() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let mut w = start_writer(&d, "app", &hook(d.dir.path(), "app", &log, ""), "vol");
    w.child().kill().unwrap();
    w.child().wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while writers(&d)[0].state != WriterState::Disconnected {
        assert!(Instant::now() < deadline, "the daemon noticed the writer is gone");
        std::thread::sleep(Duration::from_millis(50));
    }
    let set = d.create(&["vol"], false);
    assert!(set.writers.is_empty());
    assert_eq!(set.skipped_writers, vec!["app (disconnected)".to_string()]);
    assert_eq!(set.copies.len(), 1);
}

#[test]
fn a_requester_killed_mid_sequence_gets_the_set_aborted() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _w = start_writer(&d, "slow", &hook(d.dir.path(), "slow", &log, "if [ \"$1\" = freeze ]; then sleep 2; fi"), "vol");
    let mut requester = ChildGuard(Some(
        Command::new(cli_binary()).args(["--socket", d.socket.to_str().unwrap(), "create", "vol"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    ));
    // Kill it while the writer is freezing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(&log, "slow").contains(&"freeze".to_string()) {
        assert!(Instant::now() < deadline, "the writer got Freeze");
        std::thread::sleep(Duration::from_millis(20));
    }
    requester.child().kill().unwrap();
    requester.child().wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&log, "slow").last().map(String::as_str) != Some("abort") {
        assert!(Instant::now() < deadline, "the daemon aborted the set: {:?}", events(&log, "slow"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!events(&log, "slow").contains(&"thaw".to_string()), "no set was taken");
    assert!(d.list().is_empty(), "no copy is kept");
}
