//! The hold limit: a filesystem freeze that does not finish (its device stops answering) is
//! abandoned at 10 s — `create` fails with a timeout, no copy is left, and once the device
//! answers again the filesystem is thawed and writable. Never a stuck freeze.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::protocol::{ClientError, CreateRequest, ErrorKind, Op};

#[test]
fn a_hanging_freeze_is_abandoned_at_the_hold_limit() {
    shadowcopy::testing::system::require_commands(&["mkfs.ext4"]);
    let d = Daemon::start_with_failpoints();
    let image = image_file(&d.dir, "vol.img", 256 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    // Dirty pages the freeze must write through `live`.
    std::fs::write(fs.path("dirty.bin"), vec![7u8; 16 << 20]).unwrap();
    let stall = d.failpoint("stall-live-writes");
    let t0 = Instant::now();
    let r = d.call(Op::Create(CreateRequest::new(vec!["vol".into()])));
    let took = t0.elapsed();
    drop(stall);
    match r {
        Err(ClientError::Daemon(e)) => {
            assert_eq!(e.kind, ErrorKind::Timeout, "{}", e.message);
            assert!(e.message.contains("hold limit") && e.message.contains("thawed"), "{}", e.message);
        }
        other => panic!("create with a hanging freeze: {other:?}"),
    }
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(20), "gave up after {took:?}");
    assert!(d.list().is_empty(), "no copy is left behind");
    // The device answers again: the late freeze is thawed at once and writes go through.
    let path = fs.path("after.txt");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::write(&path, b"written after the aborted set\n").and_then(|()| std::fs::File::open(&path)?.sync_all());
        let _ = tx.send(r.is_ok());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(true), "the filesystem is writable again (thawed)");
    // And a normal set works afterwards.
    let set = d.create(&["vol"], false);
    assert_eq!(set.copies.len(), 1);
    assert_eq!(std::fs::read(d.tree("vol", &set.copies[0]).join("after.txt")).unwrap(), b"written after the aborted set\n");
}
