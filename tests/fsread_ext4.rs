//! The ext2/3/4 reader against the kernel: images made by `mkfs.ext4 -d` from a seed tree, in
//! every layout the reader claims (ext2 indirect maps, ext3, ext4 extents, 1 KiB blocks,
//! inline_data, meta_bg, 64bit), are walked by our reader and by the kernel's ext4 (`mount -o
//! ro,noload`), and must agree on every field `stat` shows, every byte, every link target and
//! every xattr. A copy taken while the filesystem is mounted and dirty (journal not yet
//! checkpointed) must read like the kernel's replay of it.

use std::path::Path;
use std::sync::Arc;

use shadowcopy::fsread::{ext4::Ext4, ByteSource, FileKind, ReadOnlyFs};
use shadowcopy::testing::system::*;

/// Our reader's manifest, built through `lookup`-free walking (`read_dir` + `stat`), with every
/// path also resolved by `lookup` from the root.
fn manifest_of_reader(fs: &dyn ReadOnlyFs) -> Manifest {
    let mut m = Manifest::new();
    let mut stack = vec![(String::new(), fs.root())];
    while let Some((rel, ino)) = stack.pop() {
        let st = fs.stat(ino).unwrap_or_else(|e| panic!("stat {rel}: {e}"));
        let content = match st.kind {
            FileKind::File => {
                let mut data = vec![0u8; st.size as usize];
                let mut done = 0;
                // Odd-sized reads at odd offsets, like a real reader's.
                while done < data.len() {
                    let end = (done + 777_777).min(data.len());
                    let n = fs.read(ino, done as u64, &mut data[done..end]).unwrap_or_else(|e| panic!("read {rel}: {e}"));
                    assert!(n > 0, "short read in {rel}");
                    done += n;
                }
                Some(content_hash(&data))
            }
            FileKind::Symlink => Some(content_hash(&fs.read_link(ino).unwrap_or_else(|e| panic!("readlink {rel}: {e}")))),
            _ => None,
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = fs
            .xattrs(ino)
            .unwrap_or_else(|e| panic!("xattrs {rel}: {e}"))
            .into_iter()
            .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), v))
            .collect();
        xattrs.sort();
        let mode = st.perm as u32
            | match st.kind {
                FileKind::File => 0o100000,
                FileKind::Dir => 0o040000,
                FileKind::Symlink => 0o120000,
                FileKind::CharDevice => 0o020000,
                FileKind::BlockDevice => 0o060000,
                FileKind::Fifo => 0o010000,
                FileKind::Socket => 0o140000,
            };
        let rdev = u64::from(st.rdev);
        // The kernel's st_rdev is makedev(major, minor); ours is new_encode_dev.
        let (major, minor) = ((rdev >> 8) & 0xfff, (rdev & 0xff) | ((rdev >> 12) & 0xfff00));
        m.insert(
            if rel.is_empty() { "/".into() } else { rel.clone() },
            Entry {
                ino: st.ino,
                mode,
                nlink: u64::from(st.nlink),
                uid: st.uid,
                gid: st.gid,
                size: st.size,
                blocks: st.blocks,
                mtime: (st.mtime.secs, i64::from(st.mtime.nanos)),
                ctime: (st.ctime.secs, i64::from(st.ctime.nanos)),
                atime: (st.atime.secs, i64::from(st.atime.nanos)),
                rdev: libc::makedev(major as u32, minor as u32),
                content,
                xattrs,
            },
        );
        if st.kind == FileKind::Dir {
            for e in fs.read_dir(ino).unwrap_or_else(|e| panic!("readdir {rel}: {e}")).iter() {
                assert_eq!(fs.lookup(ino, &e.name).expect("lookup of a listed name"), e.ino);
                let name = String::from_utf8_lossy(&e.name);
                stack.push((format!("{rel}/{name}"), e.ino));
            }
        }
    }
    m
}

fn open_image(path: &Path) -> Ext4 {
    let f: Arc<dyn ByteSource> = Arc::new(std::fs::File::open(path).expect("open image"));
    Ext4::open(f).expect("our reader opens the image")
}

fn kernel_manifest(image: &Path, dir: &TempDir, options: &str) -> Manifest {
    let lo = LoopDevice::attach(image, false);
    let mnt = Mount::new(&lo.device, &dir.join("kernel"), None, options);
    let m = manifest_of_dir(&mnt.point, Fields::ALL);
    drop(mnt);
    drop(lo);
    m
}

fn check_layout(label: &str, mkfs_args: &[&str]) {
    require_commands(&["mkfs.ext4", "losetup", "mount", "umount", "mkfifo", "mknod"]);
    let dir = TempDir::new("sc-ext4-");
    let seed = dir.join("seed");
    seed_tree(&seed, true, 3000);
    let image = dir.join("fs.img");
    mkfs_ext4(&image, "128M", Some(&seed), mkfs_args);
    let ours = manifest_of_reader(&open_image(&image));
    // `noload` (do not replay the journal) is refused for a filesystem without a journal.
    let options = if mkfs_args.contains(&"ext2") { "ro" } else { "ro,noload" };
    let kernel = kernel_manifest(&image, &dir, options);
    assert_same(&ours, &kernel, label);
    // The seed's content reached both (the oracle is not comparing two empty trees).
    assert!(kernel.len() > 3000 && kernel.contains_key("/dir/sub/deeper/deepest/leaf.txt"), "{label}: seed missing");
}

#[test]
fn ext4_default_layout_matches_the_kernel() {
    check_layout("ext4", &[]);
}

#[test]
fn ext2_indirect_blocks_match_the_kernel() {
    check_layout("ext2", &["-t", "ext2"]);
}

#[test]
fn ext3_one_kib_blocks_match_the_kernel() {
    check_layout("ext3 1k", &["-t", "ext3", "-b", "1024"]);
}

#[test]
fn ext4_inline_data_and_meta_bg_match_the_kernel() {
    check_layout("ext4 inline_data", &["-O", "inline_data"]);
    check_layout("ext4 meta_bg 64bit", &["-O", "meta_bg,^resize_inode,64bit"]);
}

/// A copy of a mounted, written, synced but not checkpointed ext4: the journal holds committed
/// metadata the home blocks lack. Ours replays it in memory; the kernel replays it at mount.
#[test]
fn journal_replay_matches_the_kernels_recovery() {
    require_commands(&["mkfs.ext4", "losetup", "mount", "umount", "dumpe2fs", "mkfifo", "mknod"]);
    let dir = TempDir::new("sc-ext4-journal-");
    let image = dir.join("fs.img");
    mkfs_ext4(&image, "64M", None, &[]);
    let ours_copy = dir.join("ours.img");
    let kernel_copy = dir.join("kernel.img");
    {
        let lo = LoopDevice::attach(&image, false);
        // commit=600: the journal is committed by sync but not checkpointed for minutes.
        let mnt = Mount::new(&lo.device, &dir.join("live"), None, "commit=600");
        for i in 0..200 {
            std::fs::write(mnt.point.join(format!("f{i}")), format!("file {i}\n").repeat(i + 1)).expect("write");
        }
        std::fs::create_dir(mnt.point.join("d")).expect("mkdir");
        std::fs::rename(mnt.point.join("f7"), mnt.point.join("d/seven")).expect("rename");
        std::fs::remove_file(mnt.point.join("f8")).expect("unlink");
        run("sync", &[]);
        // Copy the image while mounted (as a shadow copy would see it), through the same page
        // cache the loop device writes into.
        std::fs::copy(&image, &ours_copy).expect("copy");
        std::fs::copy(&image, &kernel_copy).expect("copy");
    }
    let features = run_text("dumpe2fs", &["-h", ours_copy.to_str().unwrap()]);
    assert!(features.contains("needs_recovery"), "the copy should need journal recovery:\n{features}");
    let ours = manifest_of_reader(&open_image(&ours_copy));
    // The kernel replays the journal when mounting a writable device (it writes the copy).
    let kernel = kernel_manifest(&kernel_copy, &dir, "ro");
    let strip = |m: &Manifest| -> Vec<(String, Option<u64>, u64)> { m.iter().map(|(p, e)| (p.clone(), e.content, e.size)).collect() };
    assert_same(&ours, &kernel, "journal replay");
    assert!(strip(&kernel).iter().any(|(p, _, _)| p == "/d/seven"), "the renamed file is in the kernel's view");
    assert!(!kernel.contains_key("/f8"));
}

/// Hostile input: random damage in metadata never panics, only errors.
#[test]
fn damaged_images_give_errors_not_panics() {
    require_commands(&["mkfs.ext4", "mkfifo", "mknod"]);
    let dir = TempDir::new("sc-ext4-damage-");
    let seed = dir.join("seed");
    seed_tree(&seed, true, 3000);
    let image = dir.join("fs.img");
    mkfs_ext4(&image, "32M", Some(&seed), &[]);
    let pristine = std::fs::read(&image).expect("read");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Damage inside the first 2 MiB: superblock, descriptors, bitmaps, inode tables, directories.
    for round in 0..40 {
        let mut img = pristine.clone();
        for _ in 0..64 {
            let at = (rand() % (2 << 20)) as usize;
            img[at] = rand() as u8;
        }
        let src: Arc<dyn ByteSource> = Arc::new(MemSource(img));
        let Ok(fs) = Ext4::open(src) else { continue };
        // Walk what can be walked; errors are fine, panics are not.
        let mut stack = vec![fs.root()];
        let mut seen = 0;
        while let Some(ino) = stack.pop() {
            seen += 1;
            if seen > 10_000 {
                break;
            }
            let Ok(st) = fs.stat(ino) else { continue };
            match st.kind {
                FileKind::Dir => {
                    if let Ok(list) = fs.read_dir(ino) {
                        stack.extend(list.iter().map(|e| e.ino));
                    }
                }
                FileKind::File => {
                    let mut buf = vec![0u8; 65536];
                    let _ = fs.read(ino, 0, &mut buf);
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(ino);
                }
                _ => {}
            }
            let _ = fs.xattrs(ino);
        }
        let _ = round;
    }
}

struct MemSource(Vec<u8>);

impl ByteSource for MemSource {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = self.0.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The byte ranges (16 KiB chunks, as the engine's) where two images differ: an oracle for the
/// engine's changed ranges that does not use the engine.
fn differing_chunks(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(16 << 10).zip(b.chunks(16 << 10)).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| ((i as u64) << 14, 16 << 10)).collect()
}

/// Two images of one ext4, the second edited by debugfs (a file rewritten, one added, one
/// removed, a mode changed): the changed inodes found from the differing chunks include every
/// edited inode (debugfs's numbers) and no other file's, and the tree comparison that uses them
/// gives exactly the edits; without the inode set (every entry stat'ed) it gives the same.
#[test]
fn changed_inodes_and_the_tree_comparison_find_exactly_the_edits() {
    use shadowcopy::fsread::compare::{compare_trees, TreeChange};
    use shadowcopy::testing::hostile::{debugfs, ino_of, small_ext4};
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-compare-");
    let a = small_ext4(&dir, "");
    let b = dir.join("b.img");
    std::fs::copy(&a, &b).unwrap();
    let payload = dir.join("payload");
    std::fs::write(&payload, b"a new file\n").unwrap();
    debugfs(&b, &format!("write {} dir/new.txt", payload.display()), true);
    debugfs(&b, "rm dir/a.txt", true);
    debugfs(&b, "sif file mode 0100600", true);
    let (fa, fb) = (open_image(&a), open_image(&b));
    let changed = shadowcopy::fsread::changed_inodes(&fa, &fb, &differing_chunks(&a, &b)).expect("ext4 has inode tables");
    // (debugfs, unlike the kernel, leaves the folder's times alone: `dir`'s record is the same,
    // and its entries are compared all the same.)
    for (image, path) in [(&b, "file"), (&b, "dir/new.txt"), (&a, "dir/a.txt")] {
        let ino = ino_of(image, path);
        assert!(changed.contains(&ino), "{path} (inode {ino}) is in {changed:?}");
    }
    assert_eq!(changed.len(), 3, "only the edited inodes: {changed:?}");
    let expected = vec![
        (TreeChange::Deleted, "/dir/a.txt".to_string()),
        (TreeChange::Added, "/dir/new.txt".to_string()),
        (TreeChange::Metadata, "/file".to_string()),
    ];
    let sorted = |mut v: Vec<(TreeChange, String)>| {
        v.sort_by(|x, y| x.1.cmp(&y.1));
        v
    };
    let set: std::collections::HashSet<u64> = changed.iter().copied().collect();
    let with = sorted(compare_trees(&fa, &fb, Some(&set), 100).expect("readable"));
    let without = sorted(compare_trees(&fa, &fb, None, 100).expect("readable"));
    assert_eq!(with, sorted(expected.clone()));
    assert_eq!(without, with);
    // Nothing changed: no inodes, no changes.
    assert_eq!(shadowcopy::fsread::changed_inodes(&fa, &open_image(&a), &[]), Some(vec![]));
    assert_eq!(compare_trees(&fa, &open_image(&a), Some(&Default::default()), 100), Some(vec![]));
    // The bound on the answer is kept.
    assert_eq!(compare_trees(&fa, &fb, Some(&set), 2), None);
    // Another filesystem (its inode tables elsewhere) cannot be compared by inode.
    let other = dir.join("other.img");
    mkfs_ext4(&other, "8M", None, &["-b", "4096"]);
    assert_eq!(shadowcopy::fsread::changed_inodes(&fa, &open_image(&other), &[(0, 8 << 20)]), None);
}
