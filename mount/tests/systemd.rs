//! shadowcopyd under systemd: the shipped unit passes `systemd-analyze verify` (systemd's own
//! parser is the oracle), and the daemon speaks the `Type=notify` protocol on `NOTIFY_SOCKET`
//! (READY=1 once it serves, STATUS= lines, STOPPING=1), checked on a real datagram socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::testing::system::{require_commands, TempDir};

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
