//! The daemon's life never pulls the disk from a filesystem on `live`: SIGHUP is ignored;
//! SIGTERM, SIGINT and `shadowcopy daemon stop` while `live` is in use leave the daemon serving
//! and say by what; `--stop-when-unused` stops once the last user is gone; `--force` is the one
//! way to stop under a user. The kernel is the oracle: the filesystem stays writable and its
//! writes reach the volume.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::protocol::Op;
use shadowcopy::testing::system::*;

/// Longer than the daemon's grace for closes in flight (2 s).
const AFTER_GRACE: Duration = Duration::from_millis(3000);

fn signal(d: &mut Daemon, sig: &str) {
    run("kill", &[sig, &d.pid().to_string()]);
}

#[test]
fn stop_signals_under_a_mounted_filesystem_are_refused_and_say_by_what() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "sync"]);
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let (device, mount_point) = (fs.loop_dev.device.clone(), fs.mount.point.display().to_string());
    for sig in ["-HUP", "-TERM", "-INT"] {
        signal(&mut d, sig);
        std::thread::sleep(AFTER_GRACE);
        assert!(d.running(), "{sig} stopped the daemon under a mounted filesystem:\n{}", d.log());
        // Still serving: the filesystem takes writes and they reach the volume.
        std::fs::write(fs.path(&format!("after{sig}")), sig).expect("the filesystem on live is writable");
        run("sync", &["-f", fs.path(&format!("after{sig}")).to_str().unwrap()]);
        assert!(d.call(Op::Status).is_ok(), "the control socket answers after {sig}");
    }
    let log = d.log();
    assert!(log.contains("SIGHUP ignored"), "SIGHUP is logged as ignored:\n{log}");
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("not stopping")).collect();
    assert_eq!(refusals.len(), 2, "SIGTERM and SIGINT were each refused:\n{log}");
    for r in &refusals {
        assert!(
            r.contains(&device) && r.contains(&mount_point) && r.contains("`vol`"),
            "the refusal names the loop device and mount point: {r}"
        );
    }
    // `status` shows who uses live, and the thaw keeper.
    match d.call(Op::Status) {
        Ok(shadowcopy::protocol::Answer::Status(s)) => {
            assert!(s.live_in_use.len() == 1 && s.live_in_use[0].contains(&device), "{:?}", s.live_in_use);
            assert!(s.thaw_keeper.is_some(), "the thaw keeper runs");
        }
        other => panic!("status: {other:?}"),
    }
    // The CLI says the same, as an error, and as a `busy` JSON error.
    let out = d.cli(&["daemon", "stop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "daemon stop under a user fails");
    assert!(stderr.contains(&device) && stderr.contains(&mount_point) && stderr.contains("--force"), "{stderr}");
    let out = d.cli(&["--json", "daemon", "stop"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["error"]["kind"], "busy", "{v}");
    assert!(d.running());
    // What was written while the stops were refused is on the volume: the kernel's ext4 on the
    // image itself reads it once everything is stopped.
    drop(fs);
    d.stop();
    let check = TempDir::new("sc-lifecycle-check-");
    let _ro = Mount::new(image.to_str().unwrap(), &check.join("m"), Some("ext4"), "ro,loop,noload");
    for sig in ["-HUP", "-TERM", "-INT"] {
        assert_eq!(std::fs::read_to_string(check.join("m").join(format!("after{sig}"))).unwrap(), sig);
    }
}

#[test]
fn stop_when_unused_stops_by_itself_once_the_last_user_is_gone() {
    require_commands(&["mkfs.ext4", "losetup", "mount"]);
    let mut d = Daemon::start(&["--stop-when-unused"]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    std::fs::write(fs.path("kept"), b"kept").unwrap();
    signal(&mut d, "-TERM");
    std::thread::sleep(AFTER_GRACE);
    assert!(d.running(), "SIGTERM with --stop-when-unused stopped under a mounted filesystem:\n{}", d.log());
    assert!(d.log().contains("stopping once nothing uses live"), "{}", d.log());
    std::fs::write(fs.path("still"), b"still writable").expect("the filesystem stays writable meanwhile");
    drop(fs);
    let status = d.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("the daemon did not stop once unused:\n{}", d.log()));
    assert!(status.success(), "{status}:\n{}", d.log());
    assert!(!is_mounted(&d.mount), "the mount is gone");
    let check = TempDir::new("sc-lifecycle-check-");
    let _ro = Mount::new(image.to_str().unwrap(), &check.join("m"), Some("ext4"), "ro,loop,noload");
    assert_eq!(std::fs::read(check.join("m/still")).unwrap(), b"still writable");
}

#[test]
fn daemon_stop_names_a_process_and_force_stops_under_it() {
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 16 << 20);
    d.add_volume("vol", &image);
    // This test process is the user.
    let mut held = std::fs::File::open(d.live("vol")).unwrap();
    let out = d.cli(&["daemon", "stop"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused while a process holds live");
    assert!(stderr.contains(&format!("process {}", std::process::id())), "the refusal names this process: {stderr}");
    // --force stops, and the CLI returns once the daemon is gone.
    let out = d.cli(&["daemon", "stop", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.socket.exists(), "the CLI returned before the daemon was gone");
    let status = d.wait_exit(Duration::from_secs(10)).expect("the daemon exited");
    assert!(status.success(), "{status}");
    assert!(d.log().contains("stopping by force"), "{}", d.log());
    // The user of live now gets errors, as the refusal warned.
    let mut b = [0u8; 512];
    assert!(held.read(&mut b).is_err(), "reads of a live file after a forced stop fail");
}

#[test]
fn daemon_stop_of_an_unused_daemon_returns_once_it_is_gone() {
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 16 << 20);
    d.add_volume("vol", &image);
    let out = d.cli(&["--json", "daemon", "stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["message"], "stopping");
    assert!(!d.socket.exists());
    let status = d.wait_exit(Duration::from_secs(10)).expect("the daemon exited");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&d.mount));
    // Its log went to a file: no colour codes in it.
    let log = d.log();
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "plain log lines in a file:\n{log}");
}

/// Thaws a filesystem on drop (`fsfreeze -u`, errors ignored), so that a failing test never
/// leaves one frozen; declared after the [`LiveFs`], it runs before the unmount.
struct ThawOnDrop(PathBuf);

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(std::process::Stdio::null()).status();
    }
}

/// A volume with an ext4 on `live`, and a `shadowcopy create` of it stopped while its filesystem
/// is frozen (the `stall-after-freeze` fail point reached), with a write to the filesystem
/// started then, which must block. Dropped in field order: the CLI, the fail point, then a thaw
/// and the unmount, so a failing test never leaves a filesystem frozen.
struct HeldFrozen {
    create: ChildGuard,
    /// The blocked write's outcome, once it returns.
    write: std::sync::mpsc::Receiver<std::io::Result<()>>,
    stall: Option<FailPoint>,
    _thaw: ThawOnDrop,
    fs: Option<LiveFs>,
}

fn hold_frozen(d: &Daemon) -> HeldFrozen {
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    let thaw = ThawOnDrop(fs.mount.point.clone());
    let stall = d.failpoint("stall-after-freeze");
    let create = ChildGuard(Some(d.spawn_cli(&["create", "vol"])));
    d.wait_until_reached("stall-after-freeze", "the create");
    let (tx, write) = std::sync::mpsc::channel();
    let probe = fs.path("probe");
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(probe, b"written after the freeze"));
    });
    assert!(write.recv_timeout(Duration::from_millis(500)).is_err(), "a write to the filesystem blocks while it is frozen");
    HeldFrozen { create, write, stall: Some(stall), _thaw: thaw, fs: Some(fs) }
}

#[test]
fn a_worker_killed_while_filesystems_are_frozen_leaves_nothing_frozen_and_no_copy() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "fsfreeze", "sync"]);
    let mut d = Daemon::start_with_failpoints();
    let mut held = hold_frozen(&d);
    let killed = Instant::now();
    let next = d.kill_worker();
    assert_eq!(next.reason, "the previous worker was killed by SIGKILL", "status says why the worker restarted");
    // A frozen filesystem blocks writes, it never fails them: the write returning is the thaw.
    // The holder kept the connection, so it succeeds.
    let r = held.write.recv_timeout(Duration::from_secs(10)).expect("the filesystem was thawed within 10 s of the kill");
    r.expect("the write blocked by the freeze succeeds once thawed: the disk never went away");
    eprintln!("the blocked write returned {:?} after the worker was killed", killed.elapsed());
    assert!(
        d.log().contains("thawed a filesystem the previous worker left frozen")
            || d.log().contains("thaw keeper: thawed the filesystem because the daemon went away mid-hold"),
        "{}",
        d.log()
    );
    assert!(!held.create.child().wait().unwrap().success(), "the interrupted create failed");
    drop(held.stall.take());
    assert!(d.list().is_empty(), "no copy of the interrupted set is kept: {:?}", d.list());
    // The filesystem on live carries on.
    let fs = held.fs.as_ref().unwrap();
    std::fs::write(fs.path("after"), b"after the crash").expect("the filesystem is writable after the worker crash");
    run("sync", &["-f", fs.path("after").to_str().unwrap()]);
    assert_eq!(std::fs::read(fs.path("probe")).unwrap(), b"written after the freeze");
}

#[test]
fn a_daemon_killed_while_filesystems_are_frozen_is_thawed_by_its_keeper() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "fsfreeze"]);
    let mut d = Daemon::start_with_failpoints();
    let mut held = hold_frozen(&d);
    // Holder and worker die, the keeper does not (it has a process of its own).
    let worker = d.worker_pid();
    let killed = Instant::now();
    run("kill", &["-KILL", &d.pid().to_string(), &worker.to_string()]);
    // The write returning at all is the thaw. (It may fail with EIO: the killed daemon took the
    // loop device's backing file along.)
    let r = held.write.recv_timeout(Duration::from_secs(10)).expect("the filesystem was thawed within 10 s of the kill");
    eprintln!("the blocked write returned {:?} after the daemon was killed: {r:?}", killed.elapsed());
    assert!(d.log().contains("thaw keeper: thawed the filesystem because the daemon went away mid-hold"), "{}", d.log());
    assert!(!held.create.child().wait().unwrap().success(), "the interrupted create failed");
    drop(held.stall.take());
    drop(held.fs.take());
    d.kill();
    d.restart();
    assert!(d.list().is_empty(), "no copy of the interrupted set is kept: {:?}", d.list());
}

#[test]
fn a_restarted_daemon_thaws_what_a_killed_daemon_and_keeper_left_frozen() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "pgrep", "fsfreeze"]);
    let mut d = Daemon::start_with_failpoints();
    let mut held = hold_frozen(&d);
    // The whole service is killed at once (as a cgroup kill would): holder, worker, keeper.
    let keeper = run_text("pgrep", &["-P", &d.worker_pid().to_string(), "-f", "thaw-keeper"]);
    assert!(!keeper.trim().is_empty(), "the worker runs a thaw keeper");
    d.kill();
    assert!(held.write.recv_timeout(Duration::from_secs(1)).is_err(), "with daemon and keeper dead, the filesystem stays frozen");
    drop(held.stall.take());
    d.restart();
    // The write returning at all is the thaw (see above; EIO is the dead device's).
    let r = held.write.recv_timeout(Duration::from_secs(10)).expect("the restarted daemon thawed the filesystem");
    eprintln!("the blocked write returned after the restart: {r:?}");
    assert!(d.log().contains("thawed a filesystem left frozen by a daemon that died mid-hold"), "{}", d.log());
}

#[test]
fn a_worker_whose_holder_dies_becomes_the_holder_and_the_filesystem_never_notices() {
    use std::io::Write;
    require_commands(&["mkfs.ext4", "losetup", "mount"]);
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 64 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    // A writer that writes, fsyncs and renames all along; what it saw acknowledged is checked.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dir = fs.mount.point.clone();
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || -> std::io::Result<u64> {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let tmp = dir.join("note.tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(format!("generation {n}").as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, dir.join("note"))?;
                std::fs::File::open(&dir)?.sync_all()?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(n)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let holder = d.pid();
    let first = d.worker();
    run("kill", &["-KILL", &holder.to_string()]);
    let (new_holder, second) = d.wait_for_generation_any_holder(first.generation + 1);
    assert_eq!(new_holder, first.pid, "the worker whose holder died is the holder now");
    assert_ne!(second.pid, first.pid, "and runs a new worker");
    assert!(second.reason.contains(&format!("the holder (pid {holder}) died")), "status says why: {}", second.reason);
    assert!(d.log().contains("the holder died; this worker hands over and becomes the holder"), "{}", d.log());

    // The new holder survives the next worker crash, as the first one did.
    std::thread::sleep(Duration::from_millis(300));
    run("kill", &["-KILL", &second.pid.to_string()]);
    let (holder_now, third) = d.wait_for_generation_any_holder(second.generation + 1);
    assert_eq!(holder_now, first.pid, "the same holder starts the next worker");
    assert!(third.reason.contains("killed by SIGKILL"), "{}", third.reason);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap().expect("every write, fsync and rename of the filesystem on live succeeded");
    assert!(written > 10, "the writer ran across both events ({written} generations)");
    let note = std::fs::read_to_string(fs.path("note")).unwrap();
    assert_eq!(note, format!("generation {written}"), "the last acknowledged generation is there");
    let device = fs.loop_dev.device.clone();
    let LiveFs { mount, loop_dev } = fs;
    drop(mount);
    run("e2fsck", &["-fn", &device]);
    drop(loop_dev);

    // The new holder stops as the first would: SIGTERM once nothing uses live.
    run("kill", &["-TERM", &first.pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{}", first.pid)).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", first.pid)).unwrap_or_default().contains(") Z")
    {
        assert!(Instant::now() < deadline, "the new holder did not stop on SIGTERM:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&d.mount), "the mount is gone with the new holder");
}
