//! Invariant 5 against hostile volume content: images damaged on purpose (as the attack on the
//! landed daemon did) are built here with `mkfs`, `debugfs` and byte patches, and every reader
//! must answer each request within a time bound with an error or a result, never spin, hang or
//! allocate what the damage claims. Each test names the finding (F1…F5) it pins.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowcopy::fsread::{self, ByteSource, CorruptKind, ForeignOwner, FsError, ReadOnlyFs};
use shadowcopy::testing::hostile::*;
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

#[test]
fn f1_a_directory_claiming_two_to_the_fifty_bytes_lists_quickly() {
    // Pins F1: `i_size = 2^50` on a directory made the listing walk 2^40 logical blocks as holes.
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = ext4_huge_directory(&dir);
    let fs = open_image(&image).unwrap().expect("ext4");
    let ino = fs.lookup(fs.root(), b"dir").unwrap();
    let listed = within(Duration::from_secs(20), "listing the 2^50-byte directory", move || fs.read_dir(ino).map(|e| e.len()));
    // The directory's one real block is read: its entries, nothing else.
    assert_eq!(listed.unwrap(), 1, "a.txt is the only entry besides . and ..");
}

#[test]
fn f2_an_extent_tree_whose_nodes_point_at_each_other_is_damage_not_hours_of_work() {
    // Pins F2: index nodes that all point at the next node: depth and run limits held, but node
    // visits were unbounded (16.8 s of CPU per access with 1 KiB blocks, 75 min with 4 KiB).
    require_commands(&["mkfs.ext4", "debugfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = ext4_looping_extent_tree(&dir);
    let ino = ino_of(&image, "/file");
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
    let image = ext4_looping_journal(&dir);
    let r = within(Duration::from_secs(10), "opening with the looping journal tree", move || open_image(&image).map(|f| f.is_some()));
    match r {
        Err(FsError::Corrupt(c)) => assert_eq!(c.kind, CorruptKind::BlockMap, "{c}"),
        other => panic!("expected the open to fail with damage, got {other:?}"),
    }
}

#[test]
fn f4_a_fat_directory_whose_cluster_chain_loops_to_itself_ends() {
    // Pins F4: a directory whose cluster chain loops to itself with every entry deleted made the
    // `fatfs` crate iterate forever while the copy was opened (MAX_NODES counts only entries
    // found).
    require_commands(&["mkfs.fat", "mmd", "mshowfat"]);
    let dir = TempDir::new("sc-hostile-");
    let image = fat_looping_directory(&dir);
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
    let (image, ino) = ext4_huge_xattr(&dir);
    let fs = open_image(&image).unwrap().expect("ext4");
    let names = fs.xattr_names(ino).expect("names need no values");
    assert!(names.contains(&b"user.big".to_vec()), "{names:?}");
    let f = Arc::clone(&fs);
    match within(Duration::from_secs(10), "getxattr of the 4 GiB claim", move || f.xattr(ino, b"user.big")) {
        Err(FsError::Corrupt(c)) => assert_eq!((c.kind, c.ino), (CorruptKind::Xattr, Some(ino)), "{c}"),
        other => panic!("expected damage, got {:?}", other.map(|v| v.map(|v| v.len()))),
    }
}

#[test]
fn f6_an_ntfs_index_entry_shorter_than_its_header_is_damage_not_a_panic() {
    // Pins F6: a damaged NTFS index made the `ntfs` crate panic (index_entry.rs:205, a slice
    // out of range), and the FUSE worker thread that ran the request died with it. The vendored
    // crate now refuses the entry (third_party/ntfs), and any reader panic is contained.
    require_commands(&["mkntfs"]);
    let dir = TempDir::new("sc-hostile-");
    let image = ntfs_short_index_entry(&dir);
    let r = within(Duration::from_secs(10), "listing the damaged NTFS root", move || {
        let fs = open_image(&image)?.expect("ntfs");
        fs.read_dir(fs.root()).map(|e| e.len())
    });
    match r {
        Err(FsError::Corrupt(c)) => assert_ne!(c.kind, CorruptKind::Panic, "refused by the reader, not caught as a panic: {c}"),
        other => panic!("expected damage, got {other:?}"),
    }
}
