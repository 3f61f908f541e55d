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
use shadowcopy::protocol::{Answer, ClientError, CreateRequest, Op, WriterSelection, WriterState, WriterView};
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
/// The arguments of `shadowcopy writer run` for a hook writer `name` on `volume`.
fn writer_run_args(d: &Daemon, name: &str, exec: &Path, volume: &str) -> Vec<String> {
    ["--socket", d.socket.to_str().unwrap(), "writer", "run", "--name", name, "--exec", exec.to_str().unwrap(), "--volume", volume]
        .map(String::from)
        .to_vec()
}

fn start_writer(d: &Daemon, name: &str, exec: &Path, volume: &str) -> ChildGuard {
    let child = Command::new(cli_binary())
        .args(writer_run_args(d, name, exec, volume))
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
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{name} ")))
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

/// Waits (up to 10 s) until `name` logged `event`.
fn wait_for_event(log: &Path, name: &str, event: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(log, name).iter().any(|e| e == event) {
        assert!(Instant::now() < deadline, "{name} never got {event}: {:?}", events(log, name));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `bytes` at the start of `vol`'s live file (which cannot be truncated).
fn write_live(d: &Daemon, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(d.live("vol")).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_all().unwrap();
}

/// Runs the CLI against the daemon; returns its output.
fn cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(cli_binary()).arg("--socket").arg(&d.socket).args(args).output().expect("running shadowcopy")
}

/// `create vol` with the given writer selection.
fn create(d: &Daemon, writers: WriterSelection) -> Result<Answer, ClientError> {
    d.call(Op::Create(CreateRequest { writers, ..CreateRequest::new(vec!["vol".into()]) }))
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
    // The requester is told what the daemon waits for, stage by stage.
    let mut stages = Vec::new();
    let set = match d
        .client()
        .call_with_stages(Op::Create(CreateRequest::new(vec!["vol".into()])), &mut |_, _| {}, &mut |s| stages.push(s.to_string()))
    {
        Ok(Answer::Set(s)) => s,
        other => panic!("create: {other:?}"),
    };
    assert_eq!(set.writers, vec!["app".to_string()]);
    let at = |s: &str| stages.iter().position(|x| x == s).unwrap_or_else(|| panic!("no stage `{s}` in {stages:?}"));
    assert!(at("identify: waiting for writer `app`") < at("freeze: waiting for writer `app`"));
    assert!(at("freeze: waiting for writer `app`") < at("flush and hold: freezing filesystems, taking the set"));
    assert!(at("flush and hold: freezing filesystems, taking the set") < at("thaw: waiting for writer `app`"));
    // The backup session ends with the requester's connection: BackupShutdown.
    wait_for_event(&log, "app", "backup_shutdown");
    assert_eq!(
        events(&log, "app"),
        ["identify", "prepare_for_backup", "prepare_for_snapshot", "freeze", "thaw", "post_snapshot", "backup_complete", "backup_shutdown"],
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
    assert_eq!(events(&log, "app").len(), 8, "no events for a set without writers");
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
        Command::new(cli_binary())
            .args(["--socket", d.socket.to_str().unwrap(), "create", "vol"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
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

#[test]
fn a_backup_in_one_command_reads_the_copy_then_completes_and_releases_it() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _w = start_writer(&d, "app", &hook(d.dir.path(), "app", &log, ""), "vol");
    write_live(&d, b"backup me");
    let read = d.dir.join("read.bin");
    // The command runs between PostSnapshot and BackupComplete, with the copy in its environment.
    let exec = format!(
        "echo \"app exec $SHADOWCOPY_SET_ID\" >> {log}; head -c 9 \"$SHADOWCOPY_IMAGE_PATH\" > {read}",
        log = log.display(),
        read = read.display()
    );
    let out = cli(&d, &["create", "vol", "--context", "backup", "--exec", &exec]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&read).unwrap(), b"backup me", "the command read the copy");
    wait_for_event(&log, "app", "backup_shutdown");
    assert_eq!(
        events(&log, "app"),
        [
            "identify",
            "prepare_for_backup",
            "prepare_for_snapshot",
            "freeze",
            "thaw",
            "post_snapshot",
            "exec",
            "backup_complete",
            "backup_shutdown"
        ]
    );
    // A backup-context set is volatile and auto-released: gone with the command.
    assert!(d.list().is_empty(), "released: {:?}", d.list());

    // A failing command: no BackupComplete, its exit status, the set released all the same.
    let out = cli(&d, &["create", "vol", "--context", "backup", "--exec", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not told BackupComplete"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&log, "app").iter().filter(|e| *e == "backup_shutdown").count() < 2 {
        assert!(Instant::now() < deadline, "second BackupShutdown: {:?}", events(&log, "app"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let tail: Vec<String> = events(&log, "app").into_iter().rev().take(3).collect();
    assert_eq!(tail, ["backup_shutdown", "post_snapshot", "thaw"], "no backup_complete after a failed command");
    assert!(d.list().is_empty());

    // A volatile set with nothing to keep it is refused before anything happens.
    let out = cli(&d, &["create", "vol", "--volatile"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-after-exit"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(events(&log, "app").iter().filter(|e| *e == "identify").count(), 2);
}

/// A set of `vol` whose BackupComplete is deferred; writer `app` (logging to `log`) is left
/// after PostSnapshot.
fn create_deferred(d: &Daemon, log: &Path) -> shadowcopy::protocol::SetView {
    let out = cli(d, &["--json", "create", "vol", "--defer-backup-complete"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let set = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(events(log, "app").last().map(String::as_str), Some("post_snapshot"));
    set
}

#[test]
fn backup_complete_can_wait_until_the_copies_were_read() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _w = start_writer(&d, "app", &hook(d.dir.path(), "app", &log, ""), "vol");
    let set = create_deferred(&d, &log);
    assert_eq!(writers(&d)[0].state, WriterState::WaitingForBackupComplete);
    // Later, from another process:
    let out = cli(&d, &["backup-complete", &set.set_id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 writer"), "{}", String::from_utf8_lossy(&out.stdout));
    wait_for_event(&log, "app", "backup_shutdown");
    assert_eq!(events(&log, "app")[5..], ["post_snapshot", "backup_complete", "backup_shutdown"]);
    assert_eq!(writers(&d)[0].state, WriterState::Stable);
    assert_eq!(d.list().len(), 1, "a persistent set stays");
    // Saying it twice is harmless; an unknown set is an error.
    assert!(cli(&d, &["backup-complete", &set.set_id.to_string()]).status.success());
    assert_eq!(events(&log, "app").iter().filter(|e| *e == "backup_complete").count(), 1);
    let out = cli(&d, &["backup-complete", &uuid::Uuid::new_v4().to_string()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no shadow copy set"));
}

#[test]
fn writers_are_told_around_a_revert_and_may_refuse_it() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let veto = d.dir.join("veto");
    let _w = start_writer(
        &d,
        "app",
        &hook(
            d.dir.path(),
            "app",
            &log,
            &format!("if [ \"$1\" = pre_restore ] && [ -e {} ]; then echo 'service still running' >&2; exit 1; fi", veto.display()),
        ),
        "vol",
    );
    write_live(&d, b"old");
    let set = d.create(&["vol"], false);
    write_live(&d, b"new");
    let id = set.copies[0].id;

    std::fs::write(&veto, b"").unwrap();
    let err = match d.call(Op::Revert { id }) {
        Err(ClientError::Daemon(e)) => e.message,
        other => panic!("revert with a refusing writer: {other:?}"),
    };
    assert!(err.contains("`app`") && err.contains("pre_restore") && err.contains("service still running"), "{err}");
    let mut head = [0u8; 3];
    std::io::Read::read_exact(&mut std::fs::File::open(d.live("vol")).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"new", "a refused revert changes nothing");
    assert_eq!(writers(&d)[0].state, WriterState::FailedAtPreRestore);

    std::fs::remove_file(&veto).unwrap();
    match d.call(Op::Revert { id }) {
        Ok(Answer::Done(m)) => assert!(m.contains("1 writer"), "{m}"),
        other => panic!("revert: {other:?}"),
    }
    std::io::Read::read_exact(&mut std::fs::File::open(d.live("vol")).unwrap(), &mut head).unwrap();
    assert_eq!(&head, b"old");
    let ev = events(&log, "app");
    assert_eq!(ev[ev.len() - 2..], ["pre_restore", "post_restore"]);
}

/// Pins a bug (issue 12): two writers could register under one name, or name a volume that is
/// not registered (their events then went to the wrong one, or to none).
#[test]
fn a_writer_name_is_taken_once_and_its_volumes_must_exist() {
    let d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let exec = hook(d.dir.path(), "app", &log, "");
    let _w = start_writer(&d, "app", &exec, "vol");
    // A refused registration ends the writer at once; `timeout` guards against one that would not.
    let run = |name: &str, volume: &str| {
        Command::new("timeout").arg("20").arg(cli_binary()).args(writer_run_args(&d, name, &exec, volume)).output().unwrap()
    };
    let out = run("app", "vol");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`app` is connected already"), "{err}");
    let out = run("other", "nosuch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("volume `nosuch`, which is not registered"), "{err}");
    let names: Vec<String> = writers(&d).into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["app"], "only the first writer is registered");
}

#[test]
fn a_deferred_backup_complete_survives_a_worker_restart() {
    let mut d = Daemon::start(&[]);
    volume(&d);
    let log = d.dir.join("events.log");
    let _w = start_writer(&d, "app", &hook(d.dir.path(), "app", &log, ""), "vol");
    let set = create_deferred(&d, &log);
    // The worker that took the set dies; the writer reconnects to the next one.
    d.kill_worker();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writers(&d).iter().any(|w| w.name == "app" && w.state != WriterState::Disconnected) {
        assert!(Instant::now() < deadline, "the writer did not reconnect: {:?}", writers(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli(&d, &["backup-complete", &set.set_id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 writer"),
        "the new worker told the writer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_for_event(&log, "app", "backup_shutdown");
    let seen = events(&log, "app");
    assert_eq!(seen[seen.len() - 3..], ["post_snapshot", "backup_complete", "backup_shutdown"], "{seen:?}");
    assert!(d.log().contains("took over the backup session of a set taken by the previous worker"), "{}", d.log());
    // Once is enough, also across workers.
    assert!(cli(&d, &["backup-complete", &set.set_id.to_string()]).status.success());
    assert_eq!(events(&log, "app").iter().filter(|e| *e == "backup_complete").count(), 1);
}
