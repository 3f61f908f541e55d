//! Invariant 5 against hostile volume content: images damaged on purpose (as the attack on the
//! landed daemon did) are built here with `mkfs`, `debugfs` and byte patches, and every reader
//! must answer each request within a time bound with an error or a result, never spin, hang or
//! allocate what the damage claims. Each test names the finding (F1…F5) it pins.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowcopy::fsread::{self, ByteSource, CorruptKind, ForeignOwner, FsError, ReadOnlyFs};
use shadowcopy::testing::system::*;

/// Runs `f` on another thread and fails the test if it does not finish within `limit` (a reader
/// stuck in a loop would otherwise hang the test run; the thread is left behind, the process
/// ends with the test binary).
fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let start = Instant::now();
    match rx.recv_timeout(limit) {
        Ok(v) => {
            eprintln!("{what}: {:?}", start.elapsed());
            v
        }
        Err(_) => panic!("{what} did not finish within {limit:?}: a reader is stuck on hostile data"),
    }
}

fn open_image(p: &Path) -> Result<Option<Arc<dyn ReadOnlyFs>>, FsError> {
    let f: Arc<dyn ByteSource> = Arc::new(File::open(p).expect("image"));
    fsread::open(f, ForeignOwner::default())
}

fn patch(image: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(image).expect("image").write_all_at(bytes, offset).expect("patch");
}

fn read_at(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    FileExt::read_exact_at(&File::open(image).expect("image"), &mut b, offset).expect("read");
    b
}

fn debugfs(image: &Path, request: &str, write: bool) -> String {
    let mut args = vec![];
    if write {
        args.push("-w");
    }
    args.extend(["-R", request, image.to_str().expect("utf-8")]);
    run_text("debugfs", &args)
}

/// An ext4 image of `size_kib` KiB with 1 KiB blocks, no checksums (the patches below do not
/// recompute them), holding `dir/` and `file`.
fn small_ext4(dir: &TempDir, extra_features: &str) -> PathBuf {
    let seed = dir.join("seed");
    std::fs::create_dir_all(seed.join("dir")).unwrap();
    std::fs::write(seed.join("dir/a.txt"), b"a\n").unwrap();
    std::fs::write(seed.join("file"), b"hello\n").unwrap();
    let image = dir.join("ext4.img");
    let features = format!("^metadata_csum,^metadata_csum_seed{extra_features}");
    mkfs_ext4(&image, "8M", Some(&seed), &["-b", "1024", "-O", &features]);
    image
}

/// The inode number of `path` in an ext4 image.
fn ino_of(image: &Path, path: &str) -> u64 {
    let out = debugfs(image, &format!("stat {path}"), false);
    out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("debugfs stat {path}: {out}"))
}

/// Where inode `ino` lives in the image: its byte offset.
fn inode_offset(image: &Path, ino: u64) -> u64 {
    let out = debugfs(image, &format!("imap <{ino}>"), false);
    // "Inode 12 is part of block group 0\n\tlocated at block 37, offset 0x0b00"
    let block: u64 =
        out.split("located at block ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse().ok()).expect("imap block");
    let off = out.split("offset 0x").nth(1).map(|s| u64::from_str_radix(s.trim(), 16).expect("imap offset")).expect("imap offset");
    block * 1024 + off
}

#[test]
fn f1_a_directory_claiming_two_to_the_fifty_bytes_lists_quickly() {
    // Pins F1: `i_size = 2^50` on a directory made the listing walk 2^40 logical blocks as holes.
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = small_ext4(&dir, "");
    debugfs(&image, "sif /dir size 0x4000000000000", true);
    let fs = open_image(&image).unwrap().expect("ext4");
    let ino = fs.lookup(fs.root(), b"dir").unwrap();
    let listed = within(Duration::from_secs(20), "listing the 2^50-byte directory", move || fs.read_dir(ino).map(|e| e.len()));
    // The directory's one real block is read: its entries, nothing else.
    assert_eq!(listed.unwrap(), 1, "a.txt is the only entry besides . and ..");
}

/// Writes an extent tree node at `block`: `entries` entries, all pointing at `child` (an index
/// node) or, for a leaf (`depth == 0`), zero-length extents.
fn extent_node(entries: u16, depth: u16, child: u32, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    b[0..2].copy_from_slice(&0xF30Au16.to_le_bytes());
    b[2..4].copy_from_slice(&entries.to_le_bytes());
    b[4..6].copy_from_slice(&entries.to_le_bytes());
    b[6..8].copy_from_slice(&depth.to_le_bytes());
    for i in 0..usize::from(entries) {
        let e = &mut b[12 + i * 12..24 + i * 12];
        e[0..4].copy_from_slice(&(i as u32).to_le_bytes());
        if depth > 0 {
            e[4..8].copy_from_slice(&child.to_le_bytes());
        }
    }
    b
}

/// Gives inode `ino` an extent tree of depth 4 whose every index entry points at the next
/// node (blocks 7000..7003; every depth and block number valid): 4·84³ leaf visits if the walk
/// follows each pointer.
fn looping_extent_tree(image: &Path, ino: u64) {
    let per = ((1024 - 12) / 12) as u16;
    for (k, depth) in [(0u32, 3u16), (1, 2), (2, 1), (3, 0)] {
        patch(image, u64::from(7000 + k) * 1024, &extent_node(per, depth, 7001 + k, 1024));
    }
    let root = extent_node(4, 4, 7000, 60);
    let at = inode_offset(image, ino);
    patch(image, at + 40, &root);
    // EXT4_EXTENTS_FL.
    let mut flags = read_at(image, at + 32, 4);
    flags[2] |= 0x08;
    patch(image, at + 32, &flags);
}

#[test]
fn f2_an_extent_tree_whose_nodes_point_at_each_other_is_damage_not_hours_of_work() {
    // Pins F2: index nodes that all point at the next node: depth and run limits held, but node
    // visits were unbounded (16.8 s of CPU per access with 1 KiB blocks, 75 min with 4 KiB).
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = small_ext4(&dir, "");
    let ino = ino_of(&image, "/file");
    looping_extent_tree(&image, ino);
    let fs = open_image(&image).unwrap().expect("ext4");
    let r = within(Duration::from_secs(10), "reading the file with the looping tree", move || fs.read(ino, 0, &mut [0u8; 16]));
    match r {
        Err(FsError::Corrupt(c)) => assert_eq!((c.kind, c.ino), (CorruptKind::BlockMap, Some(ino)), "{c}"),
        other => panic!("expected damage in the block map, got {other:?}"),
    }
}

#[test]
fn f3_a_looping_tree_on_the_journal_fails_the_open_instead_of_hanging_it() {
    // Pins F3: the F2 tree on the journal inode with needs_recovery set hung the copy's open
    // (journal replay), and every later lookup waited on it.
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = small_ext4(&dir, ",has_journal");
    looping_extent_tree(&image, 8);
    debugfs(&image, "feature needs_recovery", true);
    let r = within(Duration::from_secs(10), "opening with the looping journal tree", move || open_image(&image).map(|f| f.is_some()));
    match r {
        Err(FsError::Corrupt(c)) => assert_eq!(c.kind, CorruptKind::BlockMap, "{c}"),
        other => panic!("expected the open to fail with damage, got {other:?}"),
    }
}

/// FAT16 geometry from the boot sector: (bytes per sector, first FAT's offset, FAT bytes,
/// FAT count, first data byte, bytes per cluster).
fn fat16_geometry(image: &Path) -> (u64, u64, u64, u64, u64, u64) {
    let b = read_at(image, 0, 512);
    let bps = u64::from(u16::from_le_bytes([b[11], b[12]]));
    let spc = u64::from(b[13]);
    let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
    let nfats = u64::from(b[16]);
    let root_entries = u64::from(u16::from_le_bytes([b[17], b[18]]));
    let fat_sectors = u64::from(u16::from_le_bytes([b[22], b[23]]));
    let fat = reserved * bps;
    let root = fat + nfats * fat_sectors * bps;
    let data = root + root_entries * 32;
    (bps, fat, fat_sectors * bps, nfats, data, spc * bps)
}

#[test]
fn f4_a_fat_directory_whose_cluster_chain_loops_to_itself_ends() {
    // Pins F4: a directory whose cluster chain loops to itself with every entry deleted made the
    // `fatfs` crate iterate forever while the copy was opened (MAX_NODES counts only entries
    // found).
    require_commands(&["mkfs.fat", "mmd", "mshowfat"]);
    let dir = TempDir::new("sc-hostile-");
    let image = dir.join("fat.img");
    File::create(&image).unwrap().set_len(16 << 20).unwrap();
    run("mkfs.fat", &["-F", "16", image.to_str().unwrap()]);
    let img = format!("{}", image.display());
    run("mmd", &["-i", &img, "::/loop"]);
    // "::/loop <3>": its first cluster.
    let out = run_text("mshowfat", &["-i", &img, "::/loop"]);
    let cluster: u64 = out.split('<').nth(1).and_then(|s| s.split(['>', '-']).next()).and_then(|s| s.trim().parse().ok()).expect("cluster");
    let (_bps, fat, fat_bytes, nfats, data, cluster_bytes) = fat16_geometry(&image);
    // Every entry after `.` and `..` deleted (0xE5): no end marker to stop at.
    let start = data + (cluster - 2) * cluster_bytes;
    let mut entries = read_at(&image, start, cluster_bytes as usize);
    for e in entries[64..].chunks_mut(32) {
        e.fill(0x20);
        e[0] = 0xE5;
        e[11] = 0x20;
    }
    patch(&image, start, &entries);
    // The chain: cluster -> itself, in every FAT.
    for n in 0..nfats {
        patch(&image, fat + n * fat_bytes + cluster * 2, &(cluster as u16).to_le_bytes());
    }
    let r = within(Duration::from_secs(60), "opening the FAT with a looping directory", move || open_image(&image).map(|f| f.is_some()));
    match r {
        Err(FsError::Corrupt(c)) => assert!(c.detail().contains("loop"), "{c}"),
        other => panic!("expected the open to fail with damage, got {other:?}"),
    }
}

#[test]
fn f5_an_xattr_claiming_four_gigabytes_is_refused_without_allocating_it() {
    // Pins F5: EA-inode xattr entries with `e_value_size = 0xFFFFFFFF`: each value was allocated
    // up to 64 MiB and every getxattr/listxattr built all of them (512 MB RSS for one getfattr).
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = small_ext4(&dir, ",ea_inode");
    let value = dir.join("value");
    std::fs::write(&value, vec![b'v'; 8192]).unwrap();
    debugfs(&image, &format!("ea_set -f {} /file user.big", value.display()), true);
    let ino = ino_of(&image, "/file");
    // Find the entry (in the xattr block, or in the inode) and claim 0xFFFFFFFF bytes.
    let stat = debugfs(&image, "stat /file", false);
    let acl_block: u64 =
        stat.split("File ACL: ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (area_at, area_len) = if acl_block != 0 { (acl_block * 1024, 1024) } else { (inode_offset(&image, ino), 256) };
    let area = read_at(&image, area_at, area_len);
    let name_at = area.windows(3).position(|w| w == b"big").expect("the entry's name");
    // The entry header is 16 bytes before its name: e_value_size at +8.
    patch(&image, area_at + name_at as u64 - 16 + 8, &0xFFFF_FFFFu32.to_le_bytes());
    let fs = open_image(&image).unwrap().expect("ext4");
    let names = fs.xattr_names(ino).expect("names need no values");
    assert!(names.contains(&b"user.big".to_vec()), "{names:?}");
    let f = Arc::clone(&fs);
    match within(Duration::from_secs(10), "getxattr of the 4 GiB claim", move || f.xattr(ino, b"user.big")) {
        Err(FsError::Corrupt(c)) => assert_eq!((c.kind, c.ino), (CorruptKind::Xattr, Some(ino)), "{c}"),
        other => panic!("expected damage, got {:?}", other.map(|v| v.map(|v| v.len()))),
    }
}
