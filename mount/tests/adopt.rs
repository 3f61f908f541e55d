//! `shadowcopy adopt`: an ext4 on a loop device (attached by hand, mounted from fstab) and an XFS
//! mounted with `mount -o loop` become volumes mounted at the same place with the same options,
//! their files intact; a user of the filesystem is named and stops it; a failure after the
//! unmount puts the original mount back; the root filesystem is refused. The kernel's mount table
//! and loop devices are the oracle.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shadowcopy::protocol::{Answer, Op};
use shadowcopy::testing::system::{mkfs_ext4, require_commands, run, run_text, TempDir};

fn mounted(point: &Path) -> Option<shadowcopy::probe::Mount> {
    shadowcopy::probe::mount_at(&point.canonicalize().ok()?).unwrap()
}

/// Whether `point` is mounted from a loop device over `live`.
fn through(point: &Path, live: &Path) -> bool {
    let Some(m) = mounted(point) else { return false };
    shadowcopy::probe::loop_devices_backed_by(live).unwrap().iter().any(|l| l.dev == m.dev)
}

fn volume_names(d: &Daemon) -> Vec<String> {
    match d.call(Op::VolumeList).unwrap() {
        Answer::Volumes(v) => v.into_iter().map(|v| v.name).collect(),
        other => panic!("{other:?}"),
    }
}

fn image_with(dir: &TempDir, name: &str, content: &str) -> PathBuf {
    let root = dir.join(&format!("{name}-seed"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("report.txt"), content).unwrap();
    let image = dir.join(&format!("{name}.img"));
    mkfs_ext4(&image, "48M", Some(&root), &[]);
    image
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_ext4_from_fstab_on_a_loop_device_is_adopted_in_place() {
    require_commands(&["mkfs.ext4"]);
    let d = Daemon::start(&[]);
    let _cleanup = MountsUnder::of(&d);
    let image = image_with(&d.dir, "data", "before\n");
    let device = run_text("losetup", &["--find", "--show", image.to_str().unwrap()]).trim().to_string();
    let srv = d.dir.join("srv data");
    std::fs::create_dir(&srv).unwrap();
    run("mount", &["-o", "noatime,nodev", &device, srv.to_str().unwrap()]);
    std::fs::write(srv.join("report.txt"), "written before adoption\n").unwrap();
    let fstab = d.dir.join("fstab");
    let escaped = srv.display().to_string().replace(' ', "\\040");
    let original = format!("# static file system information\nUUID=0000-1111 /boot vfat defaults 0 2\n{device} {escaped} ext4 noatime,nodev,x-systemd.after=foo.service 0 2\n");
    std::fs::write(&fstab, &original).unwrap();
    let args = ["adopt", srv.to_str().unwrap(), "--name", "data", "--fstab", fstab.to_str().unwrap()];

    // The plan: nothing changes.
    let plan = d.cli(&[&args[..], &["--dry-run"]].concat());
    assert!(plan.status.success(), "{}", stderr(&plan));
    let said = String::from_utf8_lossy(&plan.stdout);
    assert!(said.contains("unmount") && said.contains("comment out line 3") && said.contains("-o noatime,nodev"), "{said}");
    assert_eq!(mounted(&srv).unwrap().source, device);
    assert!(volume_names(&d).is_empty());

    // A process working in it: refused, named, nothing changed.
    let user = std::fs::File::open(srv.join("report.txt")).unwrap();
    let refused = d.cli(&args);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(&format!("process {}", std::process::id())) && stderr(&refused).contains("nothing was changed"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(mounted(&srv).unwrap().source, device);
    drop(user);

    let done = d.cli(&args);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(through(&srv, &d.live("data")), "mounted through live");
    let m = mounted(&srv).unwrap();
    assert!(m.fstype == "ext4" && m.options.split(',').any(|o| o == "noatime") && m.options.split(',').any(|o| o == "nodev"), "{m:?}");
    assert_eq!(std::fs::read_to_string(srv.join("report.txt")).unwrap(), "written before adoption\n");
    assert!(
        shadowcopy::probe::loop_devices().unwrap().iter().all(|l| l.device != device || l.backing_file != image),
        "the old loop device was detached"
    );
    let text = std::fs::read_to_string(&fstab).unwrap();
    assert!(text.contains(&format!("# {device} {escaped} ext4")) && text.contains("UUID=0000-1111 /boot vfat defaults 0 2\n"), "{text}");
    let backups: Vec<_> = std::fs::read_dir(d.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fstab.shadowcopy-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(backups[0].path()).unwrap(), original);
    assert!(std::fs::read_to_string(&d.config).unwrap().contains("name = \"data\""));

    // It is a volume like any other: a copy holds the file, live carries on.
    let copy = d.create(&["data"], false).copies[0].clone();
    std::fs::write(srv.join("report.txt"), "after\n").unwrap();
    assert_eq!(std::fs::read_to_string(d.tree("data", &copy).join("report.txt")).unwrap(), "written before adoption\n");

    // Adopted once is enough.
    let again = d.cli(&["adopt", srv.to_str().unwrap(), "--name", "other", "--fstab", fstab.to_str().unwrap()]);
    assert!(!again.status.success() && stderr(&again).contains("already mounted through shadowcopy"), "{}", stderr(&again));
}

#[test]
fn an_xfs_whose_adoption_fails_midway_is_mounted_back_then_adopted() {
    require_commands(&["mkfs.xfs"]);
    let d = Daemon::start(&[]);
    let _cleanup = MountsUnder::of(&d);
    let image = d.dir.join("xfs.img");
    std::fs::File::create(&image).unwrap().set_len(320 << 20).unwrap();
    run("mkfs.xfs", &["-q", image.to_str().unwrap()]);
    let srv = d.dir.join("xfs");
    std::fs::create_dir(&srv).unwrap();
    run("mount", &["-o", "loop,noatime", image.to_str().unwrap(), srv.to_str().unwrap()]);
    std::fs::write(srv.join("report.txt"), "xfs content\n").unwrap();
    let fstab = d.dir.join("fstab-empty");

    // The diff area cannot be made (sysfs): the add fails after the unmount.
    let failed =
        d.cli(&["adopt", srv.to_str().unwrap(), "--fstab", fstab.to_str().unwrap(), "--diff-area", "/sys/shadowcopy-cannot-be-here"]);
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("the original mount is back"), "{}", stderr(&failed));
    let m = mounted(&srv).expect("mounted again");
    assert_eq!(m.fstype, "xfs");
    assert!(m.options.split(',').any(|o| o == "noatime"), "{m:?}");
    assert!(shadowcopy::probe::loop_devices().unwrap().iter().any(|l| l.backing_file == image && l.dev == m.dev), "from the image again");
    assert_eq!(std::fs::read_to_string(srv.join("report.txt")).unwrap(), "xfs content\n");
    assert!(volume_names(&d).is_empty(), "no volume is left registered");
    assert!(!d.config.exists() || !std::fs::read_to_string(&d.config).unwrap().contains("[[volume]]"));

    let done = d.cli(&["adopt", srv.to_str().unwrap(), "--fstab", fstab.to_str().unwrap()]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(volume_names(&d), ["xfs"], "named after the mount point");
    assert!(through(&srv, &d.live("xfs")));
    assert_eq!(mounted(&srv).unwrap().fstype, "xfs");
    assert_eq!(std::fs::read_to_string(srv.join("report.txt")).unwrap(), "xfs content\n");
    assert!(shadowcopy::probe::loop_devices().unwrap().iter().all(|l| l.backing_file != image), "the image's own loop device is gone");

    // A copy of an XFS has the live filesystem's UUID: exposing it as a device says how to
    // mount it, and that way works beside the live one.
    let copy = d.create(&["xfs"], false).copies[0].clone();
    std::fs::write(
        srv.join("report.txt"),
        "changed after the copy
",
    )
    .unwrap();
    let exposed = d.cli(&["expose", &copy.id.to_string(), "--device"]);
    assert!(exposed.status.success(), "{}", stderr(&exposed));
    let said = String::from_utf8_lossy(&exposed.stdout).into_owned();
    assert!(said.contains("mount -o ro,nouuid,norecovery /dev/loop"), "{said}");
    let device = said.split_whitespace().find(|w| w.starts_with("/dev/loop")).unwrap().trim_end_matches([',', ';', ')']).to_string();
    let at = d.dir.join("xfs-copy");
    std::fs::create_dir(&at).unwrap();
    run("mount", &["-o", "ro,nouuid,norecovery", &device, at.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(at.join("report.txt")).unwrap(), "xfs content\n");
    run("umount", &[at.to_str().unwrap()]);
    assert!(d.cli(&["unexpose", &device]).status.success());
}

#[test]
fn the_root_filesystem_and_what_is_not_a_block_filesystem_are_refused() {
    let d = Daemon::start(&[]);
    let root = d.cli(&["adopt", "/"]);
    assert!(!root.status.success() && stderr(&root).contains("root filesystem cannot be adopted"), "{}", stderr(&root));
    let proc_ = d.cli(&["adopt", "/proc"]);
    assert!(!proc_.status.success() && stderr(&proc_).contains("not from a block device or an image file"), "{}", stderr(&proc_));
    let nothing = d.cli(&["adopt", d.dir.path().to_str().unwrap()]);
    assert!(!nothing.status.success() && stderr(&nothing).contains("nothing is mounted at"), "{}", stderr(&nothing));
}
