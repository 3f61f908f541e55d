//! Writes made behind the daemon's back: a volume mounted and written directly (as an
//! unchanged fstab line would at boot) while the daemon is stopped marks every copy taken before
//! as `stale`, with the reason, instead of `ok`; a clean stop and start leaves copies `ok`. The
//! kernel's own filesystems (ext4, XFS) and ntfs-3g do the writing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shadowcopy::testing::system::*;

/// A filesystem made on an image, and how to mount it directly.
struct Fs {
    name: &'static str,
    image: PathBuf,
}

fn make(dir: &TempDir, name: &'static str) -> Fs {
    let image = dir.join(&format!("{name}.img"));
    std::fs::File::create(&image).unwrap().set_len(if name == "xfs" { 320 << 20 } else { 64 << 20 }).unwrap();
    let p = image.to_str().unwrap();
    match name {
        "ext4" => mkfs_ext4(&image, "64M", None, &[]),
        "xfs" => {
            run("mkfs.xfs", &["-q", "-f", p]);
        }
        "ntfs" => {
            run("mkntfs", &["-q", "-F", "-f", p]);
        }
        _ => unreachable!(),
    }
    Fs { name, image }
}

/// Mounts the image directly (not through shadowcopy) and writes a file, as a boot-time fstab
/// mount of the raw device would.
fn write_behind_the_back(fs: &Fs, at: &Path) {
    if fs.name == "ntfs" {
        std::fs::create_dir_all(at).unwrap();
        run("ntfs-3g", &[fs.image.to_str().unwrap(), at.to_str().unwrap()]);
        std::fs::write(at.join("behind"), b"written behind shadowcopy's back").unwrap();
        run("umount", &[at.to_str().unwrap()]);
    } else {
        let m = Mount::new(fs.image.to_str().unwrap(), at, Some(fs.name), "loop");
        std::fs::write(m.point.join("behind"), b"written behind shadowcopy's back").unwrap();
    }
}

fn states(d: &Daemon) -> Vec<Option<String>> {
    d.list().into_iter().map(|c| c.stale).collect()
}

#[test]
fn copies_taken_before_a_write_behind_the_back_are_stale_and_a_clean_restart_keeps_them_ok() {
    require_commands(&["mkfs.ext4", "mkfs.xfs", "mkntfs", "ntfs-3g", "mount"]);
    let mut d = Daemon::start(&[]);
    let names = ["ext4", "xfs", "ntfs"];
    let filesystems: Vec<Fs> = names.iter().map(|n| make(&d.dir, n)).collect();
    for fs in &filesystems {
        d.add_volume(fs.name, &fs.image);
        d.create(&[fs.name], false);
    }
    // A clean stop and start: nothing changed, nothing is stale.
    d.restart();
    assert_eq!(states(&d), vec![None, None, None], "a clean restart leaves copies ok:\n{}", d.log());
    // Now each volume is written directly while the daemon is down.
    d.stop();
    for fs in &filesystems {
        write_behind_the_back(fs, &d.dir.join(&format!("direct-{}", fs.name)));
    }
    d.restart();
    for c in d.list() {
        let reason = c.stale.as_deref().unwrap_or_else(|| panic!("the copy of {} is stale:\n{}", c.volume, d.log()));
        assert!(reason.contains("written while shadowcopy was not serving it"), "{reason}");
    }
    let out = d.cli(&["list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.matches("stale").count(), 3, "`list` shows each copy stale:\n{table}");
    // Stale stays stale (durably), and a new copy is ok. (What a stale copy shows is exactly
    // what cannot be relied on: blocks written behind the back were not preserved for it.)
    d.restart();
    for fs in &filesystems {
        let set = d.create(&[fs.name], false);
        assert!(set.copies[0].stale.is_none());
    }
    let copies = d.list();
    assert_eq!(copies.iter().filter(|c| c.stale.is_some()).count(), 3, "{copies:?}");
    let newest_ext4 = copies.iter().rfind(|c| c.volume == "ext4").unwrap();
    assert!(d.tree("ext4", newest_ext4).join("behind").exists(), "the new copy sees the file written behind the back");
}
