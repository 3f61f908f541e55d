//! shadowcopyd under systemd: the shipped unit passes `systemd-analyze verify` (systemd's own
//! parser is the oracle), and the daemon speaks the `Type=notify` protocol on `NOTIFY_SOCKET`
//! (READY=1 once it serves, STATUS= lines, STOPPING=1), checked on a real datagram socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::testing::system::{require_commands, ChildGuard, TempDir};

/// The unit as shipped, with `ExecStart` pointing at the binary under test (verify checks that
/// the program exists).
#[test]
fn the_shipped_unit_passes_systemd_analyze_verify() {
    require_commands(&["systemd-analyze"]);
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd/shadowcopyd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/shadowcopyd "), "the unit starts the installed binary");
    assert!(unit.contains("Type=notify"));
    let dir = TempDir::new("sc-unit-");
    let path = dir.join("shadowcopyd.service");
    std::fs::write(&path, unit.replace("/usr/sbin/shadowcopyd", daemon_binary().to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on some problems (unknown keys, bad values) and only says so on stderr.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("shadowcopyd.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}\n{err}", out.status);
    // The oracle can fail: a misspelt key is reported.
    std::fs::write(&path, unit.replace("/usr/sbin/shadowcopyd", daemon_binary().to_str().unwrap()).replace("KillMode=", "KilMode="))
        .unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("KilMode"), "verify reports a misspelt key");
}

#[test]
fn the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = TempDir::new("sc-notify-");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut d = Daemon::start_with_env(&[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let read_until = |want: &str| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let done = msg.lines().any(|l| l == want);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
        }
        panic!("no {want} within 30 s; got {seen:?}");
    };
    let ready = read_until("READY=1");
    let status = ready.concat();
    assert!(status.contains(&format!("STATUS=serving 0 volumes at {}", d.mount.display())), "{status}");
    // Ready means served: the control socket answers by then (Daemon::start checked it too).
    assert!(d.socket.exists());
    d.stop();
    let stopping = read_until("STOPPING=1");
    assert!(stopping.concat().contains("STATUS=stopping"), "{stopping:?}");
}

/// The optional socket unit, beside the service it activates, passes `systemd-analyze verify`.
#[test]
fn the_shipped_socket_unit_passes_systemd_analyze_verify() {
    require_commands(&["systemd-analyze"]);
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd");
    let optional = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/systemd/optional");
    let dir = TempDir::new("sc-unit-");
    let service = std::fs::read_to_string(format!("{units}/shadowcopyd.service")).unwrap();
    std::fs::write(dir.join("shadowcopyd.service"), service.replace("/usr/sbin/shadowcopyd", daemon_binary().to_str().unwrap())).unwrap();
    let socket = std::fs::read_to_string(format!("{optional}/shadowcopyd.socket")).unwrap();
    assert!(socket.contains("ListenStream=/run/shadowcopy/control.sock") && socket.contains("Service=shadowcopyd.service"));
    std::fs::write(dir.join("shadowcopyd.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(dir.join("shadowcopyd.socket")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("shadowcopyd.")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}\n{err}", out.status);
}

/// Socket activation with systemd's own tool: `systemd-socket-activate` owns the socket and
/// starts the daemon on the first connection, which waits in the queue and is answered; the
/// daemon leaves the socket's path to its owner when it stops.
#[test]
fn a_daemon_started_by_socket_activation_answers_the_first_connection() {
    require_commands(&["systemd-socket-activate"]);
    let dir = TempDir::new("sc-activate-");
    let socket = dir.join("control.sock");
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    /// The activator and what it started (its own process group), killed on drop; the mount
    /// a killed daemon leaves is detached.
    struct Activated(ChildGuard, std::path::PathBuf);
    impl Drop for Activated {
        fn drop(&mut self) {
            if let Some(c) = self.0 .0.as_ref() {
                kill_group(c.id());
            }
            if is_mounted(&self.1) {
                let _ = Command::new("umount").arg("-l").arg(&self.1).status();
            }
        }
    }
    let mut command = Command::new("systemd-socket-activate");
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut activator = Activated(
        ChildGuard(Some(
            command
                .args(["-l", socket.to_str().unwrap(), daemon_binary().to_str().unwrap()])
                .args(["--socket", socket.to_str().unwrap(), "--config", dir.join("none.toml").to_str().unwrap()])
                .args(["--state-dir", dir.join("state").to_str().unwrap(), "--mount", dir.join("mnt").to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )),
        dir.join("mnt"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "systemd-socket-activate did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!dir.join("mnt").exists(), "nothing started before the first connection");
    // The first connection: the daemon starts and answers it.
    let mut client = shadowcopy::protocol::Client::connect(&socket).expect("connecting to the activated socket");
    let status = match client.call(shadowcopy::protocol::Op::Status, &mut |_, _| {}) {
        Ok(shadowcopy::protocol::Answer::Status(s)) => s,
        other => panic!("status: {other:?}\n{}", std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()),
    };
    let pid = activator.0.child().id();
    assert_eq!(status.pid, pid, "the activator exec'd the daemon, which is the holder");
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(log.contains("socket activation"), "{log}");
    drop(client);
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = activator.0.child().try_wait().unwrap() {
            assert!(s.success(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the activated daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    activator.0 .0 = None;
    assert!(socket.exists(), "the socket's path belongs to whoever passed it: left in place");
    assert!(!is_mounted(&dir.join("mnt")));
}
