//! Hostile images, built the way the attack on the landed daemon built them (`mkfs`, `debugfs`,
//! byte patches), for the readers' and the daemon's regression tests. Each builder names the
//! finding it reproduces (see the issue "Hostile volume content").
//!
//! Never used outside tests: every function panics on a failed step.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::system::{mkfs_ext4, run, run_text, TempDir};

/// Overwrites `bytes` at `offset` of the image.
pub fn patch(image: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new().write(true).open(image).expect("image").write_all_at(bytes, offset).expect("patch");
}

/// `len` bytes at `offset` of the image.
pub fn read_at(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    FileExt::read_exact_at(&File::open(image).expect("image"), &mut b, offset).expect("read");
    b
}

/// Runs one `debugfs` request on the image (`-w` when `write`); its output.
pub fn debugfs(image: &Path, request: &str, write: bool) -> String {
    let mut args = vec![];
    if write {
        args.push("-w");
    }
    args.extend(["-R", request, image.to_str().expect("utf-8")]);
    run_text("debugfs", &args)
}

/// An ext4 image of `size_kib` KiB with 1 KiB blocks, no checksums (the patches below do not
/// recompute them), holding `dir/` and `file`.
pub fn small_ext4(dir: &TempDir, extra_features: &str) -> PathBuf {
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
pub fn ino_of(image: &Path, path: &str) -> u64 {
    let out = debugfs(image, &format!("stat {path}"), false);
    out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("debugfs stat {path}: {out}"))
}

/// Where inode `ino` lives in the image: its byte offset.
pub fn inode_offset(image: &Path, ino: u64) -> u64 {
    let out = debugfs(image, &format!("imap <{ino}>"), false);
    // "Inode 12 is part of block group 0\n\tlocated at block 37, offset 0x0b00"
    let block: u64 =
        out.split("located at block ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse().ok()).expect("imap block");
    let off = out.split("offset 0x").nth(1).map(|s| u64::from_str_radix(s.trim(), 16).expect("imap offset")).expect("imap offset");
    block * 1024 + off
}

/// Writes an extent tree node at `block`: `entries` entries, all pointing at `child` (an index
/// node) or, for a leaf (`depth == 0`), zero-length extents.
pub fn extent_node(entries: u16, depth: u16, child: u32, len: usize) -> Vec<u8> {
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
pub fn looping_extent_tree(image: &Path, ino: u64) {
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

/// FAT16 geometry from the boot sector: (bytes per sector, first FAT's offset, FAT bytes,
/// FAT count, first data byte, bytes per cluster).
pub fn fat16_geometry(image: &Path) -> (u64, u64, u64, u64, u64, u64) {
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

/// F1: an ext4 image whose `/dir` claims `i_size = 2^50`.
pub fn ext4_huge_directory(dir: &TempDir) -> PathBuf {
    let image = small_ext4(dir, "");
    debugfs(&image, "sif /dir size 0x4000000000000", true);
    image
}

/// F2: an ext4 image whose `/file` has an extent tree whose nodes all point at the next one.
pub fn ext4_looping_extent_tree(dir: &TempDir) -> PathBuf {
    let image = small_ext4(dir, "");
    let ino = ino_of(&image, "/file");
    looping_extent_tree(&image, ino);
    image
}

/// F3: the F2 tree on the journal inode, with `needs_recovery` set.
pub fn ext4_looping_journal(dir: &TempDir) -> PathBuf {
    let image = small_ext4(dir, ",has_journal");
    looping_extent_tree(&image, 8);
    debugfs(&image, "feature needs_recovery", true);
    image
}

/// F4: a FAT16 image whose `/loop` directory's cluster chain loops to itself, every entry
/// after `.` and `..` deleted (no end marker).
pub fn fat_looping_directory(dir: &TempDir) -> PathBuf {
    let image = dir.join("fat.img");
    File::create(&image).expect("image").set_len(16 << 20).expect("size");
    run("mkfs.fat", &["-F", "16", image.to_str().expect("utf-8")]);
    let img = image.display().to_string();
    run("mmd", &["-i", &img, "::/loop"]);
    // "::/loop <3>": its first cluster.
    let out = run_text("mshowfat", &["-i", &img, "::/loop"]);
    let cluster: u64 = out.split('<').nth(1).and_then(|s| s.split(['>', '-']).next()).and_then(|s| s.trim().parse().ok()).expect("cluster");
    let (_bps, fat, fat_bytes, nfats, data, cluster_bytes) = fat16_geometry(&image);
    let start = data + (cluster - 2) * cluster_bytes;
    let mut entries = read_at(&image, start, cluster_bytes as usize);
    for e in entries[64..].chunks_mut(32) {
        e.fill(0x20);
        e[0] = 0xE5;
        e[11] = 0x20;
    }
    patch(&image, start, &entries);
    for n in 0..nfats {
        patch(&image, fat + n * fat_bytes + cluster * 2, &(cluster as u16).to_le_bytes());
    }
    image
}

/// F5: an ext4 image (`ea_inode`) whose `/file` has `user.big` in an EA inode, the entry
/// claiming `e_value_size = 0xFFFFFFFF`. Returns the image and the file's inode number.
pub fn ext4_huge_xattr(dir: &TempDir) -> (PathBuf, u64) {
    let image = small_ext4(dir, ",ea_inode");
    let value = dir.join("value");
    std::fs::write(&value, vec![b'v'; 8192]).expect("value");
    debugfs(&image, &format!("ea_set -f {} /file user.big", value.display()), true);
    let ino = ino_of(&image, "/file");
    let stat = debugfs(&image, "stat /file", false);
    let acl_block: u64 =
        stat.split("File ACL: ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (area_at, area_len) = if acl_block != 0 { (acl_block * 1024, 1024) } else { (inode_offset(&image, ino), 256) };
    let area = read_at(&image, area_at, area_len);
    let name_at = area.windows(3).position(|w| w == b"big").expect("the entry's name");
    // The entry header is 16 bytes before its name: e_value_size at +8.
    patch(&image, area_at + name_at as u64 - 16 + 8, &0xFFFF_FFFFu32.to_le_bytes());
    (image, ino)
}

/// F6: an NTFS image whose root directory index (`$I30` of MFT record 5, resident in its
/// INDEX_ROOT) starts with an entry claiming 4 bytes, shorter than an entry's own header.
pub fn ntfs_short_index_entry(dir: &TempDir) -> PathBuf {
    let image = dir.join("ntfs.img");
    File::create(&image).expect("image").set_len(4 << 20).expect("size");
    run("mkntfs", &["-q", "-F", "-f", "-H", "1", "-S", "1", "-p", "0", image.to_str().expect("utf-8")]);
    let boot = read_at(&image, 0, 512);
    let cluster = u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13]);
    let mft = u64::from_le_bytes(boot[0x30..0x38].try_into().expect("8 bytes")) * cluster;
    let per = boot[0x40] as i8;
    let record_size = if per < 0 { 1u64 << (-per) } else { per as u64 * cluster };
    let at = mft + 5 * record_size;
    let rec = read_at(&image, at, record_size as usize);
    let mut a = usize::from(u16::from_le_bytes([rec[0x14], rec[0x15]]));
    loop {
        let ty = u32::from_le_bytes(rec[a..a + 4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rec[a + 4..a + 8].try_into().expect("4 bytes")) as usize;
        assert!(ty != 0xFFFF_FFFF && len > 0, "no INDEX_ROOT in the root directory's record");
        if ty == 0x90 {
            let value = a + usize::from(u16::from_le_bytes([rec[a + 0x14], rec[a + 0x15]]));
            let node = value + 16;
            let first = node + u32::from_le_bytes(rec[node..node + 4].try_into().expect("4 bytes")) as usize;
            // The first entry's length (offset 8 of the entry); away from the sector ends the
            // update sequence guards.
            patch(&image, at + first as u64 + 8, &4u16.to_le_bytes());
            return image;
        }
        a += len;
    }
}
