//! Invariant 5 through the daemon: one volume's copies can never starve another volume, and
//! hostile images (built as the attack built them) sitting on volumes while a healthy volume
//! works leave that volume served and its copy exact, the daemon's memory bounded, and every
//! walk of them ended with errors, not hangs.
//!
//! How fast the healthy volume stays beside them is a figure, not a test: `scripts/bench mount`
//! measures its 4 KiB random writes beside the same walkers against the same writes alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use shadowcopy::testing::hostile::*;
use shadowcopy::testing::system::*;

/// A volume with a small ext4 of `seed_tree` content and one copy; its copy's folder.
fn ext4_volume_with_copy(d: &Daemon, name: &str) -> PathBuf {
    let seed = d.dir.join(&format!("seed-{name}"));
    seed_tree(&seed, true, 500);
    let image = d.dir.join(&format!("{name}.img"));
    mkfs_ext4(&image, "64M", Some(&seed), &[]);
    d.add_volume(name, &image);
    let set = d.create(&[name], false);
    d.tree(name, &set.copies[0])
}

/// Pins the shared pool of FUSE workers: a volume whose copies never finish opening took every
/// worker, and with them every other volume's copies and `live` file.
#[test]
fn a_volume_whose_copies_never_open_stalls_no_other_volume() {
    require_commands(&["mkfs.ext4"]);
    let d = Daemon::start_with_failpoints();
    let stuck_tree = ext4_volume_with_copy(&d, "stuck");
    let healthy_tree = ext4_volume_with_copy(&d, "healthy");
    let stall = d.failpoint("stall-tree-open-stuck");
    // More walkers than the daemon has FUSE threads (8), all waiting on the stuck volume.
    let walkers: Vec<_> = (0..16)
        .map(|_| {
            let p = stuck_tree.clone();
            std::thread::spawn(move || std::fs::read_dir(&p).map(|rd| rd.count()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(walkers.iter().all(|w| !w.is_finished()), "the stuck volume's copies are stuck");
    // Meanwhile the other volume answers: its copy's whole tree, and its live file.
    let (tx, rx) = std::sync::mpsc::channel();
    let (tree, live) = (healthy_tree.clone(), d.live("healthy"));
    std::thread::spawn(move || {
        let manifest = manifest_of_dir(&tree, Fields::NAMES_SIZES_CONTENT);
        let mut head = vec![0u8; 1 << 20];
        let read = std::fs::File::open(&live).and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0));
        let _ = tx.send((manifest.len(), read.is_ok()));
    });
    let (entries, live_ok) = rx.recv_timeout(Duration::from_secs(30)).expect("the healthy volume was served while the other was stuck");
    assert!(entries > 500 && live_ok, "{entries} entries, live read {live_ok}");
    assert!(d.call(shadowcopy::protocol::Op::Status).is_ok());
    drop(stall);
    for w in walkers {
        assert!(w.join().unwrap().is_ok(), "the stuck volume's copy opens once released");
    }
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// 4 KiB random direct writes to `file` for `seconds`: (IOPS, p99 completion latency in µs).
fn fio_randwrite(file: &Path, seconds: u32) -> (f64, f64) {
    let out = run_text(
        "fio",
        &[
            "--name=healthy",
            &format!("--filename={}", file.display()),
            "--rw=randwrite",
            "--bs=4k",
            "--direct=1",
            "--ioengine=psync",
            "--size=24M", // under the diff area's 50 % of 64 MiB: the copy is never dropped for room
            "--time_based",
            &format!("--runtime={seconds}"),
            "--output-format=json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').expect("fio json")..]).expect("fio json");
    let w = &v["jobs"][0]["write"];
    (w["iops"].as_f64().unwrap_or(0.0), w["clat_ns"]["percentile"]["99.000000"].as_f64().unwrap_or(0.0) / 1000.0)
}

/// Walks a tree as people would: list, stat, read, and read every xattr; ends with whatever
/// errors the damage gives.
fn walk_with_tools(tree: &Path) -> std::process::Output {
    Command::new("timeout")
        .args([
            "120",
            "sh",
            "-c",
            "find \"$1\" -exec stat {} + >/dev/null; find \"$1\" -type f -exec cat {} + >/dev/null; getfattr -R -d -m - \"$1\" >/dev/null",
            "walk",
        ])
        .arg(tree)
        .output()
        .expect("walker")
}

#[test]
fn hostile_images_beside_a_healthy_volume() {
    require_commands(&["mkfs.ext4", "debugfs", "mkfs.fat", "mmd", "mshowfat", "fio", "getfattr", "timeout"]);
    let mut d = Daemon::start(&[]);
    // The healthy volume: an ext4 with a copy; fio overwrites its live file while the copy is
    // read, so every block of the copy comes from the diff area under load.
    let healthy_tree = ext4_volume_with_copy(&d, "healthy");
    let mut seed = manifest_of_dir(&d.dir.join("seed-healthy"), Fields::NAMES_SIZES_CONTENT);
    seed.remove("/");
    let (alone_iops, alone_p99) = fio_randwrite(&d.live("healthy"), 2);
    // The hostile ones, each with a copy.
    type Builder = Box<dyn Fn(&TempDir) -> PathBuf>;
    let builders: Vec<(&str, Builder)> = vec![
        ("f1-huge-dir", Box::new(ext4_huge_directory)),
        ("f2-looping-extents", Box::new(ext4_looping_extent_tree)),
        ("f3-looping-journal", Box::new(ext4_looping_journal)),
        ("f4-looping-fat", Box::new(fat_looping_directory)),
        ("f5-huge-xattr", Box::new(|dir: &TempDir| ext4_huge_xattr(dir).0)),
    ];
    let mut trees = Vec::new();
    for (name, build) in &builders {
        let dir = TempDir::new("sc-hostile-img-");
        let image = build(&dir);
        let placed = d.dir.join(&format!("{name}.img"));
        std::fs::copy(&image, &placed).unwrap();
        d.add_volume(name, &placed);
        let set = d.create(&[name], false);
        trees.push((name.to_string(), d.tree(name, &set.copies[0]), d.image(name, &set.copies[0])));
    }
    // Three walkers per hostile copy, walking again and again while fio writes the healthy
    // volume and its copy is read.
    let start = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let walkers: Vec<_> = trees
        .iter()
        .flat_map(|(name, tree, image)| {
            let done = std::sync::Arc::clone(&done);
            (0..3).map(move |_| {
                let (name, tree, image, done) = (name.clone(), tree.clone(), image.clone(), std::sync::Arc::clone(&done));
                std::thread::spawn(move || {
                    let (mut walks, mut slowest, mut timed_out) = (0, Duration::ZERO, false);
                    while !done.load(std::sync::atomic::Ordering::Relaxed) || walks == 0 {
                        let t = Instant::now();
                        // A copy whose filesystem cannot be opened has no tree: its raw image is read.
                        let out = if tree.exists() { walk_with_tools(&tree) } else { walk_with_tools(&image) };
                        timed_out |= out.status.code() == Some(124);
                        slowest = slowest.max(t.elapsed());
                        walks += 1;
                    }
                    (name, walks, slowest, timed_out)
                })
            })
        })
        .collect();
    let read_copy = {
        let tree = healthy_tree.clone();
        move || {
            let mut copy = manifest_of_dir(&tree, Fields::NAMES_SIZES_CONTENT);
            copy.remove("/");
            copy.remove("/lost+found");
            copy
        }
    };
    let reader = std::thread::spawn(read_copy.clone());
    let (beside_iops, beside_p99) = fio_randwrite(&d.live("healthy"), 4);
    assert!(beside_iops > 0.0, "the healthy volume's live file took writes beside the hostile walkers");
    let during = reader.join().expect("the healthy copy was read beside the hostile walkers");
    // Once more with the page cache dropped: every block now comes from the diff area.
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the page cache");
    let after = read_copy();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for (copy, when) in [(during, "while its live was overwritten"), (after, "after that, from a cold cache")] {
        assert_same(&copy, &seed, &format!("the healthy volume's copy, read beside hostile walkers {when}"));
        assert_eq!(copy.len(), seed.len(), "the copy has exactly the seed's entries ({when})");
    }
    let (mut slowest, mut walks) = (Duration::ZERO, 0);
    for w in walkers {
        let (name, n, took, timed_out) = w.join().unwrap();
        assert!(!timed_out, "{name}: a walk was still running after 120 s");
        slowest = slowest.max(took);
        walks += n;
    }
    let peak = peak_rss(d.worker_pid());
    // The figures, for the log only (see the module's doc).
    eprintln!(
        "healthy volume, 4 KiB random direct writes: alone {alone_iops:.0} IOPS (p99 {alone_p99:.0} µs), beside 15 hostile walkers \
         {beside_iops:.0} IOPS (p99 {beside_p99:.0} µs); {walks} hostile walks, the slowest {slowest:?}, all done in {:?}; daemon peak RSS {} MiB",
        start.elapsed(),
        peak >> 20
    );
    assert!(peak < 1 << 30, "the daemon's memory stays bounded while hostile images are read: {} MiB", peak >> 20);
    // Everything still answers, and the damage is reported where it was found: the log names
    // the volume, the copy and the inode, once per inode.
    assert!(d.call(shadowcopy::protocol::Op::Status).is_ok());
    let log = d.log();
    let damage: Vec<&str> = log.lines().filter(|l| l.contains("damaged data in a shadow copy")).collect();
    // (The 2^50-byte directory is not damage any more: it lists its one real block.)
    for name in ["f2-looping-extents", "f5-huge-xattr"] {
        assert!(damage.iter().any(|l| l.contains(name) && l.contains("Some(14)")), "{name} is named in the log:\n{}", damage.join("\n"));
    }
    assert!(damage.len() < 100, "each damaged inode is logged once, not per request: {} lines", damage.len());
    d.stop();
}
