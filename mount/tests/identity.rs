//! Device identity: a block device is known by more than its path. Another disk given the same
//! path while the daemon was down (here: another image on the same loop device, as sdb and sdc
//! swap at boot) is refused with what was expected and what was found, listed as failed (not
//! hidden), and its diff area is left untouched; the right device back at the path is served
//! again with its copies.

mod common;

use common::*;
use shadowcopy::protocol::{Answer, Op, VolumeInfo};
use shadowcopy::testing::system::*;

fn volumes(d: &Daemon) -> Vec<VolumeInfo> {
    match d.call(Op::VolumeList) {
        Ok(Answer::Volumes(v)) => v,
        other => panic!("volume list: {other:?}"),
    }
}

fn attach_at(device: &str, image: &std::path::Path) {
    run("losetup", &[device, image.to_str().unwrap()]);
}

fn detach(device: &str) {
    run("losetup", &["-d", device]);
}

#[test]
fn another_disk_at_the_registered_path_is_refused_and_the_right_one_comes_back() {
    require_commands(&["losetup", "mkfs.ext4"]);
    let mut d = Daemon::start(&[]);
    // Two disks of the same size with different filesystems.
    let (a, b) = (d.dir.join("disk-a.img"), d.dir.join("disk-b.img"));
    mkfs_ext4(&a, "32M", None, &["-L", "disk-a"]);
    mkfs_ext4(&b, "32M", None, &["-L", "disk-b"]);
    let dev = LoopDevice::attach(&a, false);
    d.add_volume("data", std::path::Path::new(&dev.device));
    let copy = d.create(&["data"], false).copies[0].clone();
    d.stop();
    let journal = d.state.join("diffareas/data/journal.0");
    let journal_before = std::fs::read(&journal).unwrap();
    // Disk B takes disk A's place.
    detach(&dev.device);
    attach_at(&dev.device, &b);
    d.restart();
    let vols = volumes(&d);
    assert_eq!(vols.len(), 1, "the volume is still listed: {vols:?}");
    let why = vols[0].failure.clone().unwrap_or_else(|| panic!("the volume is listed as failed: {vols:?}\n{}", d.log()));
    assert!(
        why.contains("is not the device registered") && why.contains("disk-a.img") && why.contains("disk-b.img"),
        "the reason says what was expected and found: {why}"
    );
    assert!(d.list().is_empty(), "no copy of disk A is served over disk B");
    let out = d.cli(&["volume", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not opened"), "{}", String::from_utf8_lossy(&out.stdout));
    d.stop();
    assert_eq!(std::fs::read(&journal).unwrap(), journal_before, "the diff area was not touched");
    // Disk A back at its path: served again, with its copy.
    detach(&dev.device);
    attach_at(&dev.device, &a);
    d.restart();
    assert_eq!(volumes(&d)[0].failure, None, "{}", d.log());
    let copies = d.list();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].id, copy.id);
    d.stop();
}
