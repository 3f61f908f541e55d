//! `live` as the backing file of a loop device: mkfs, mount, writes, sync, fsfreeze and fstrim
//! work, buffered and with direct I/O; discards and WRITE_ZEROES reach the engine (the kernel
//! logs no I/O error for our loop device); a flush reaches the image (a killed daemon loses
//! nothing that was synced).

mod common;

use common::*;
use shadowcopy::testing::system::*;

fn loop_device_workload(direct_io: bool) {
    require_commands(&["mkfs.ext4", "fsfreeze", "fstrim", "e2fsck", "dmesg"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 256 << 20);
    d.add_volume("vol", &image);
    let before = run_text("dmesg", &[]);
    let device;
    {
        let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), direct_io);
        device = fs.loop_dev.device.clone();
        for i in 0..50 {
            std::fs::write(fs.path(&format!("f{i}")), vec![i as u8; 70_000 + i * 1000]).expect("write");
        }
        run("sync", &[]);
        let mp = fs.mount.point.to_str().unwrap().to_string();
        run("fsfreeze", &["-f", &mp]);
        run("fsfreeze", &["-u", &mp]);
        for i in 0..25 {
            std::fs::remove_file(fs.path(&format!("f{i}"))).expect("unlink");
        }
        run("sync", &[]);
        // Discards reach the engine as fallocate(PUNCH_HOLE).
        let trimmed = run_text("fstrim", &["-v", &mp]);
        assert!(trimmed.contains("trimmed"), "fstrim: {trimmed}");
        for i in 25..50 {
            assert_eq!(std::fs::read(fs.path(&format!("f{i}"))).expect("read back"), vec![i as u8; 70_000 + i * 1000]);
        }
    }
    let errors = kernel_io_errors(&before, &device);
    assert!(errors.is_empty(), "the kernel logged I/O errors for {device}:\n{}", errors.join("\n"));
    // The filesystem on the live volume is clean (checked through a fresh loop device).
    let lo = LoopDevice::attach_read_only(&d.live("vol"));
    run("e2fsck", &["-fn", &lo.device]);
}

#[test]
fn loop_device_on_live_buffered() {
    loop_device_workload(false);
}

#[test]
fn loop_device_on_live_direct_io() {
    loop_device_workload(true);
}

/// Invariant 2: what was synced through the loop device is in the image even if the daemon is
/// killed right after.
#[test]
fn synced_writes_survive_a_killed_daemon() {
    require_commands(&["mkfs.ext4"]);
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 128 << 20);
    d.add_volume("vol", &image);
    {
        let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), true);
        std::fs::write(fs.path("durable.txt"), b"made durable by sync\n").expect("write");
        let f = std::fs::File::open(fs.path("durable.txt")).expect("open");
        f.sync_all().expect("fsync");
        d.kill();
        // The loop device now gets EIO; unmounting may complain, the guards clean up.
    }
    // The file's metadata is in the journal: let the kernel replay it on a copy of the image.
    let copy = d.dir.join("after-crash.img");
    std::fs::copy(&image, &copy).expect("copy");
    let lo = LoopDevice::attach(&copy, false);
    let m = Mount::new(&lo.device, &d.dir.join("check"), None, "ro");
    assert_eq!(std::fs::read(m.point.join("durable.txt")).expect("the synced file"), b"made durable by sync\n");
}
