//! Shadow copies of a live ext4 while a writer keeps changing it: every copy's tree, read
//! through our mount, equals the kernel's view of the copy's raw image (`mount -o ro,noload` of
//! `.images/…img`) in every field, and equals a manifest of the live filesystem taken while the
//! writer was held at the copy's instant. Copies survive a daemon restart (and a kill -9)
//! identical; volatile copies do not.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use shadowcopy::protocol::ClientError;
use shadowcopy::protocol::{Answer, Context, CreateRequest, DeleteTarget, ErrorKind, Op};
use shadowcopy::testing::system::*;

/// Fields comparable between the live filesystem (read while it is being used) and a copy.
/// atime: reading the live files for the manifest updates it after it was recorded; blocks: the
/// live filesystem counts delayed allocations without the extent blocks that writeback adds.
const LIVE_FIELDS: Fields = Fields { atime: false, blocks: false, ..Fields::ALL };

/// A writer that keeps creating, rewriting, growing and deleting files; `gate` held by the test
/// keeps it between two operations.
fn spawn_writer(root: std::path::PathBuf, gate: Arc<Mutex<()>>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let _g = gate.lock().unwrap();
            let i = n % 40;
            let p = root.join(format!("dir{}/file{i}", n % 4));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match n % 5 {
                0 | 1 => std::fs::write(&p, format!("version {n}\n").repeat((n % 500) as usize + 1)).unwrap(),
                2 => {
                    use std::io::Write;
                    // Appends, starting over past 400 KB: the work set stays a few MiB, so the
                    // diff area holds what changed between copies, not an ever-growing file.
                    let restart = std::fs::metadata(&p).is_ok_and(|m| m.len() > 400_000);
                    let mut f = std::fs::OpenOptions::new().append(!restart).write(true).truncate(restart).create(true).open(&p).unwrap();
                    f.write_all(&vec![n as u8; 40_000]).unwrap();
                }
                3 => {
                    let _ = std::fs::remove_file(&p);
                }
                _ => std::fs::write(root.join("counter"), n.to_string()).unwrap(),
            }
            n += 1;
        }
        n
    })
}

#[test]
fn copies_of_a_busy_ext4_match_the_kernel_and_the_instant() {
    require_commands(&["mkfs.ext4", "mkfifo", "mknod"]);
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 256 << 20);
    d.add_volume("vol", &image);
    let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
    // Start from a rich tree (links, nodes, xattrs, big and sparse files, a 3000-entry dir).
    seed_tree(&fs.path("seed"), true, 3000);
    run("sync", &[]);
    let gate = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(fs.path("work"), Arc::clone(&gate), Arc::clone(&stop));
    let mut expected = Vec::new();
    for round in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let held = gate.lock().unwrap();
        let manifest = manifest_of_dir(&fs.mount.point, LIVE_FIELDS);
        let set = d.create(&["vol"], false);
        drop(held);
        assert_eq!(set.frozen, vec![fs.mount.point.display().to_string()], "round {round}: create froze the live filesystem");
        expected.push((set.copies[0].clone(), manifest));
    }
    stop.store(true, Ordering::Relaxed);
    let ops = writer.join().unwrap();
    assert!(ops > 30, "the writer did work ({ops} operations)");
    for (i, (copy, manifest)) in expected.iter().enumerate() {
        let ours = manifest_of_dir(&d.tree("vol", copy), Fields::ALL);
        let lo = LoopDevice::attach_read_only(&d.image("vol", copy));
        let kmount = Mount::new(&lo.device, &d.dir.join(&format!("kernel{i}")), None, "ro,noload");
        let kernel = manifest_of_dir(&kmount.point, Fields::ALL);
        assert_same(&ours, &kernel, &format!("copy {i} ({}) vs the kernel", copy.exposed_name));
        let ours_live_fields = manifest_of_dir(&d.tree("vol", copy), LIVE_FIELDS);
        assert_same(&ours_live_fields, manifest, &format!("copy {i} ({}) vs the live filesystem at its instant", copy.exposed_name));
    }
    // The copies differ from each other (the writer's work between them is visible).
    let a = manifest_of_dir(&d.tree("vol", &expected[0].0), LIVE_FIELDS);
    let b = manifest_of_dir(&d.tree("vol", &expected[2].0), LIVE_FIELDS);
    assert_ne!(a, b, "copies taken at different instants differ");
    drop(fs);
}

#[test]
fn persistent_copies_survive_restart_and_kill_volatile_ones_do_not() {
    require_commands(&["mkfs.ext4", "mkfifo", "mknod"]);
    let mut d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 128 << 20);
    d.add_volume("vol", &image);
    let (persistent, volatile, before) = {
        let fs = LiveFs::new(&d.live("vol"), &d.dir.join("fs"), false);
        seed_tree(&fs.path("seed"), true, 3000);
        std::fs::write(fs.path("state.txt"), "first\n").unwrap();
        let p = d.create(&["vol"], false).copies[0].clone();
        std::fs::write(fs.path("state.txt"), "second\n").unwrap();
        let v = d.create(&["vol"], true).copies[0].clone();
        std::fs::write(fs.path("state.txt"), "third\n").unwrap();
        let before = manifest_of_dir(&d.tree("vol", &p), Fields::ALL);
        assert_eq!(std::fs::read_to_string(d.tree("vol", &v).join("state.txt")).unwrap(), "second\n");
        (p, v, before)
    };
    // A clean restart.
    d.restart();
    let after = d.list();
    assert_eq!(after.len(), 1, "only the persistent copy comes back: {after:?}");
    assert_eq!(after[0].id, persistent.id);
    assert_eq!(after[0].exposed_name, persistent.exposed_name, "exposed names are stable");
    assert!(!d.tree("vol", &volatile).exists());
    assert_same(&manifest_of_dir(&d.tree("vol", &persistent), Fields::ALL), &before, "after a restart");
    // A crash: kill -9 leaves a stale mount the next start clears.
    d.kill();
    d.restart();
    assert_same(&manifest_of_dir(&d.tree("vol", &persistent), Fields::ALL), &before, "after kill -9");
    assert_eq!(std::fs::read_to_string(d.tree("vol", &persistent).join("state.txt")).unwrap(), "first\n");
    // Deleting makes it disappear from the mount at once.
    d.call(Op::Delete { target: DeleteTarget::Id(persistent.id) }).unwrap();
    assert!(!d.tree("vol", &persistent).exists(), "a deleted copy's folder is gone");
    assert!(!d.image("vol", &persistent).exists(), "a deleted copy's image is gone");
}

/// Two copies within one second get distinct names: the second takes the next free second.
#[test]
fn copies_within_one_second_get_unique_names() {
    let d = Daemon::start(&[]);
    let image = image_file(&d.dir, "vol.img", 16 << 20);
    d.add_volume("vol", &image);
    let names: Vec<String> = (0..4).map(|_| d.create(&["vol"], false).copies[0].exposed_name.clone()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{names:?}");
    for n in &names {
        assert!(shadowcopy::protocol::parse_gmt_name(n).is_some(), "{n} is a valid @GMT name");
        assert!(d.mount.join("vol/.images").join(format!("{n}.img")).exists());
    }
    match d.call(Op::List { volume: Some("vol".into()) }).unwrap() {
        Answer::Copies(c) => assert_eq!(c.len(), 4),
        other => panic!("{other:?}"),
    }
}

/// A set's context decides whether it is persistent, takes writers and is listed in the
/// volume's folder; `list` shows it. An auto-release set lives as long as its requester's
/// connection.
#[test]
fn contexts_decide_persistence_listing_and_release() {
    require_commands(&["mkfs.ext4"]);
    let d = Daemon::start(&[]);
    let image = d.dir.join("vol.img");
    mkfs_ext4(&image, "32M", None, &[]);
    d.add_volume("vol", &image);
    let create = |client: &mut shadowcopy::protocol::Client, context: Context, keep: bool| match client
        .call(Op::Create(CreateRequest { context, keep_after_disconnect: keep, ..CreateRequest::new(vec!["vol".into()]) }), &mut |_, _| {})
    {
        Ok(Answer::Set(s)) => s.copies[0].clone(),
        other => panic!("create {context:?}: {other:?}"),
    };
    let listed = || -> Vec<String> {
        std::fs::read_dir(d.mount.join("vol")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    };

    let shared = create(&mut d.client(), Context::ClientAccessible, false);
    let rollback = create(&mut d.client(), Context::NasRollback, false);
    let views = d.list();
    let view = |id| views.iter().find(|c| c.id == id).unwrap().clone();
    assert_eq!(view(shared.id).context.as_deref(), Some("client_accessible"));
    assert!(view(shared.id).attributes.iter().any(|a| a == "client_accessible"));
    assert_eq!(view(rollback.id).context.as_deref(), Some("nas_rollback"));
    assert!(view(rollback.id).persistent && !view(rollback.id).attributes.iter().any(|a| a == "client_accessible"));
    assert!(view(rollback.id).attributes.iter().any(|a| a == "no_writers"));
    // Listed or not, both are reachable by path.
    let names = listed();
    assert!(names.contains(&shared.exposed_name), "{names:?}");
    assert!(!names.contains(&rollback.exposed_name), "{names:?}");
    assert!(d.tree("vol", &rollback).join("lost+found").is_dir());
    // A context without writers refuses a writer selection.
    let req = CreateRequest {
        context: Context::NasRollback,
        writers: shadowcopy::protocol::WriterSelection { only: vec!["x".into()], ..Default::default() },
        ..CreateRequest::new(vec!["vol".into()])
    };
    match d.call(Op::Create(req)) {
        Err(ClientError::Daemon(e)) => assert!(e.kind == ErrorKind::BadRequest && e.message.contains("takes no writers"), "{e:?}"),
        other => panic!("{other:?}"),
    }

    // A backup set: volatile, and released when its requester's connection ends.
    let mut requester = d.client();
    let backup = create(&mut requester, Context::Backup, false);
    let kept = create(&mut d.client(), Context::FileShareBackup, true);
    let b = d.list().into_iter().find(|c| c.id == backup.id).expect("alive while the requester is connected");
    assert!(!b.persistent && b.attributes.iter().any(|a| a == "auto_release"), "{b:?}");
    assert!(std::fs::read_dir(d.tree("vol", &backup)).is_ok());
    drop(requester);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.list().iter().any(|c| c.id == backup.id) {
        assert!(std::time::Instant::now() < deadline, "the backup set was not released");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!d.tree("vol", &backup).exists());
    let left: Vec<_> = d.list().into_iter().map(|c| c.id).collect();
    assert_eq!(left, [shared.id, rollback.id, kept.id], "the others stay (keep_after_disconnect kept the file-share one)");
}

/// Every copy of a set shares one instant: a writer puts a sequence number on volume `a`, then
/// the same number on `b`, over and over; in every set, `b`'s copy holds `a`'s number or the one
/// before it (the one write in flight), never anything further apart.
#[test]
fn a_set_of_two_volumes_shares_one_instant() {
    use std::os::unix::fs::FileExt;
    let d = Daemon::start(&[]);
    for name in ["a", "b"] {
        let image = image_file(&d.dir, &format!("{name}.img"), 16 << 20);
        d.add_volume(name, &image);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (a, b) = (d.live("a"), d.live("b"));
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let open = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let (fa, fb) = (open(&a), open(&b));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                fa.write_all_at(&n.to_le_bytes(), 0).unwrap();
                fb.write_all_at(&n.to_le_bytes(), 0).unwrap();
            }
            n
        })
    };
    let seq_of = |p: std::path::PathBuf| {
        let mut buf = [0u8; 8];
        std::fs::File::open(&p).unwrap().read_exact_at(&mut buf, 0).unwrap();
        u64::from_le_bytes(buf)
    };
    while seq_of(d.live("b")) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut seen = Vec::new();
    for _ in 0..40 {
        let set = d.create(&["a", "b"], false);
        assert_eq!(set.copies.len(), 2);
        let copy = |v: &str| set.copies.iter().find(|c| c.volume == v).unwrap().clone();
        let (ca, cb) = (copy("a"), copy("b"));
        assert_eq!(ca.set_id, cb.set_id);
        let (sa, sb) = (seq_of(d.image("a", &ca)), seq_of(d.image("b", &cb)));
        assert!(sa == sb || sa == sb + 1, "set {}: a holds {sa}, b holds {sb}", set.set_id);
        seen.push((sa, sb));
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    // The sets were taken while the writer ran, not before or after it.
    let distinct: std::collections::BTreeSet<u64> = seen.iter().map(|s| s.0).collect();
    assert!(distinct.len() >= 10 && seen.iter().all(|s| s.0 > 0 && s.0 <= written), "{seen:?} of {written}");
}

/// `expose` makes a copy visible outside the mount: its files on a folder (a bind mount), or
/// its raw image as a read-only loop device the kernel mounts. An exposed copy cannot be
/// deleted; `unexpose` undoes it, and so does stopping the daemon.
#[test]
fn a_copy_can_be_exposed_on_a_folder_and_as_a_device() {
    require_commands(&["mkfs.ext4", "losetup"]);
    let seed = TempDir::new("sc-expose-seed");
    seed_tree(&seed.join("seed"), true, 50);
    let mut d = Daemon::start(&[]);
    let image = d.dir.join("vol.img");
    mkfs_ext4(&image, "64M", Some(seed.path()), &[]);
    d.add_volume("vol", &image);
    let copy = d.create(&["vol"], false).copies[0].clone();
    let folder = d.dir.join("exposed");
    std::fs::create_dir(&folder).unwrap();
    let call = |op: Op| d.call(op).unwrap_or_else(|e| panic!("{e}"));

    call(Op::Expose { id: copy.id, at: Some(folder.display().to_string()), device: false, force: false });
    // Unmounted on the way out even if an assertion fails (before the daemon goes).
    let folder_guard = Mount { point: folder.clone() };
    assert!(is_mounted(&folder));
    assert_same(&manifest_of_dir(&folder, Fields::ALL), &manifest_of_dir(&d.tree("vol", &copy), Fields::ALL), "the exposed folder");
    let listed = d.list();
    assert_eq!(listed[0].exposed_at, vec![folder.display().to_string()]);
    match d.call(Op::Delete { target: DeleteTarget::Id(copy.id) }) {
        Err(ClientError::Daemon(e)) => assert!(e.kind == ErrorKind::Busy && e.message.contains("exposed"), "{e:?}"),
        other => panic!("deleting an exposed copy: {other:?}"),
    }

    let device = match call(Op::Expose { id: copy.id, at: None, device: true, force: false }) {
        Answer::Done(m) => m.rsplit(' ').next().unwrap().to_string(),
        other => panic!("{other:?}"),
    };
    let device_guard = LoopDevice { device: device.clone() };
    assert!(device.starts_with("/dev/loop"), "{device}");
    assert!(std::fs::read(&device).unwrap() == std::fs::read(d.image("vol", &copy)).unwrap(), "the device holds the copy's image");
    {
        let kernel = Mount::new(&device, &d.dir.join("kernel"), Some("ext4"), "ro,noload");
        let fields = Fields { atime: false, ..Fields::ALL };
        assert_same(
            &manifest_of_dir(&kernel.point, fields),
            &manifest_of_dir(&d.tree("vol", &copy), fields),
            "the kernel on the exposed device",
        );
        // Still mounted: unexpose refuses and says where; the copy stays undeletable.
        match d.call(Op::Unexpose { path: device.clone() }) {
            Err(ClientError::Daemon(e)) => {
                assert!(e.message.contains(&format!("is mounted at {}", kernel.point.display())), "{e:?}")
            }
            other => panic!("unexposing a mounted device: {other:?}"),
        }
        assert!(d.call(Op::Delete { target: DeleteTarget::Id(copy.id) }).is_err(), "a copy exposed on a mounted device stays");
    }
    // A folder that holds something is refused unless forced (the mount would hide it).
    let full = d.dir.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine.txt"), b"keep me").unwrap();
    match d.call(Op::Expose { id: copy.id, at: Some(full.display().to_string()), device: false, force: false }) {
        Err(ClientError::Daemon(e)) => assert!(e.message.contains("not empty") && e.message.contains("--force"), "{e:?}"),
        other => panic!("exposing on a non-empty folder: {other:?}"),
    }
    assert!(!is_mounted(&full));
    call(Op::Expose { id: copy.id, at: Some(full.display().to_string()), device: false, force: true });
    let full_guard = Mount { point: full.clone() };
    assert!(is_mounted(&full) && !full.join("mine.txt").exists());
    call(Op::Unexpose { path: full.display().to_string() });
    std::mem::forget(full_guard);
    assert_eq!(std::fs::read(full.join("mine.txt")).unwrap(), b"keep me");
    call(Op::Unexpose { path: device.clone() });
    std::mem::forget(device_guard);
    assert!(!std::path::Path::new(&format!("/sys/block/{}/loop", device.trim_start_matches("/dev/"))).exists(), "{device} was detached");
    call(Op::Unexpose { path: folder.display().to_string() });
    std::mem::forget(folder_guard);
    assert!(!is_mounted(&folder));
    assert!(d.list()[0].exposed_at.is_empty());

    // A daemon that stops undoes its exposures (and can unmount).
    call(Op::Expose { id: copy.id, at: Some(folder.display().to_string()), device: false, force: false });
    d.stop();
    assert!(!is_mounted(&folder), "the exposure went with the daemon");
    // After a restart nothing is exposed, and the copy can be deleted.
    d.restart();
    d.call(Op::Delete { target: DeleteTarget::Id(copy.id) }).expect("delete after the exposure ended");
}
