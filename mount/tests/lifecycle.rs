//! The daemon's life never pulls the disk from a filesystem on `live`: SIGHUP is ignored;
//! SIGTERM, SIGINT and `shadowcopy daemon stop` while `live` is in use leave the daemon serving
//! and say by what; `--stop-when-unused` stops once the last user is gone; `--force` is the one
//! way to stop under a user. The kernel is the oracle: the filesystem stays writable and its
//! writes reach the volume.

mod common;

use std::io::Read;
use std::time::Duration;

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
        assert!(r.contains(&device) && r.contains(&mount_point) && r.contains("`vol`"), "the refusal names the loop device and mount point: {r}");
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
}
