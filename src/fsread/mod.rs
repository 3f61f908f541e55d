//! Read-only views of the filesystem inside a shadow copy: ext2/3/4, FAT12/16/32 and NTFS.
//!
//! Owns the [`ReadOnlyFs`] trait that every frontend (FUSE today, WinFsp later) serves, the
//! [`ByteSource`] seam it reads from (a copy's image, or any file), and detection of which
//! filesystem a copy holds. Inode numbers are the filesystem's own where it has them (ext4's
//! inode numbers, NTFS file record numbers); FAT gets stable numbers from its directory layout.
//!
//! Never trusts the bytes it reads: every offset, length and count from disk is checked, and a
//! damaged structure is a [`FsError::Corrupt`] for the request that met it, never a panic.
//! Never writes.

pub mod compare;
#[cfg(any(feature = "fat", feature = "ntfs"))]
mod cursor;
pub mod ext4;
#[cfg(feature = "fat")]
pub mod fat;
pub mod guard;
#[cfg(feature = "ntfs")]
pub(crate) mod lznt1;
#[cfg(feature = "ntfs")]
pub mod ntfs;

use std::io;
use std::sync::Arc;

use thiserror::Error;

/// Random-access bytes of a volume image (a shadow copy, or a file in tests).
pub trait ByteSource: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ByteSource for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Which on-disk structure a [`Corruption`] was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptKind {
    /// The superblock (ext2/3/4) or boot sector.
    Superblock,
    /// ext4 group descriptors.
    GroupDescriptors,
    /// An inode (ext4) itself.
    Inode,
    /// The map from a file's logical blocks to disk blocks (extents, indirect blocks).
    BlockMap,
    /// A directory's entries.
    Directory,
    /// Extended attributes.
    Xattr,
    /// A symbolic link's target.
    Symlink,
    /// The jbd2 journal.
    Journal,
    /// FAT structures (the allocation table, cluster chains).
    Fat,
    /// NTFS structures (file records, attributes, runs).
    Ntfs,
    /// A compressed stream (LZNT1).
    Compression,
    /// A reader panicked on the data (caught at the request boundary).
    Panic,
    /// A request needed more work or memory than the filesystem can legitimately ask for (a
    /// loop in its structures, a size no real file has).
    Budget,
}

/// A damaged on-disk structure: where it is, and the message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// What kind of structure.
    pub kind: CorruptKind,
    /// The inode (file record, FAT node) it belongs to, if it belongs to one.
    pub ino: Option<u64>,
    detail: String,
}

impl Corruption {
    /// The message, as shown to people (it names the inode where one is known).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Failures of a filesystem request.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FsError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// A directory operation on something else.
    #[error("not a directory")]
    NotDir,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsDir,
    /// A request that cannot be valid (the reason).
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The filesystem uses something this reader does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An on-disk structure is damaged.
    #[error("corrupt filesystem: {0}")]
    Corrupt(Corruption),
    /// Reading the copy's bytes failed.
    #[error("reading the image failed: {0}")]
    Io(#[from] io::Error),
}

impl FsError {
    /// A [`FsError::Corrupt`] of `kind`, in inode `ino` if known.
    pub fn corrupt(kind: CorruptKind, ino: Option<u64>, detail: impl Into<String>) -> FsError {
        FsError::Corrupt(Corruption { kind, ino, detail: detail.into() })
    }
}

/// What kind of file an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl FileKind {
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// The largest extended attribute value the kernel hands out (`XATTR_SIZE_MAX`): no legitimate
/// value is larger, so a reader never builds one that is.
pub const XATTR_SIZE_MAX: usize = 64 << 10;

/// Extended attributes as `(full name, value)` pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A timestamp: seconds since the Unix epoch (may be negative) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// As a `SystemTime` (nanoseconds clamped to a valid value).
    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos.min(999_999_999))
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs()) + Duration::from_nanos(u64::from(self.nanos.min(999_999_999)))
        }
    }
}

/// The attributes of an inode, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The filesystem's own inode number.
    pub ino: u64,
    /// File, directory, …
    pub kind: FileKind,
    /// Permission bits including set-id and sticky (`mode & 0o7777`).
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last change of the inode.
    pub ctime: Timestamp,
    /// Creation (zero where the filesystem does not keep it).
    pub crtime: Timestamp,
    /// Device number of a device node, in the kernel's `new_encode_dev` form.
    pub rdev: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name.
    pub name: Vec<u8>,
    /// Its inode number.
    pub ino: u64,
    /// What it is.
    pub kind: FileKind,
}

/// Space figures for `statfs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsStats {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks in all.
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Inodes in all.
    pub files: u64,
    /// Free inodes.
    pub free_files: u64,
    /// Longest name.
    pub name_max: u32,
}

/// A read-only filesystem inside a shadow copy. Safe to call from many threads at once.
pub trait ReadOnlyFs: Send + Sync {
    /// `ext4`, `ext3`, `ext2`, `vfat`, `ntfs`.
    fn kind(&self) -> &'static str;
    /// The root directory's inode number.
    fn root(&self) -> u64;
    /// The attributes of inode `ino`.
    fn stat(&self, ino: u64) -> Result<Stat, FsError>;
    /// The inode of `name` in directory `dir`.
    fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, FsError>;
    /// Every entry of `dir` except `.` and `..`, in on-disk order.
    fn read_dir(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError>;
    /// Reads file data at `offset`; returns the bytes read (short only at end of file).
    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError>;
    /// The target of symbolic link `ino`.
    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError>;
    /// Extended attributes as `(full name, value)`, e.g. `user.comment`.
    fn xattrs(&self, ino: u64) -> Result<Xattrs, FsError>;
    /// The names of the extended attributes, without building their values.
    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        Ok(self.xattrs(ino)?.into_iter().map(|(n, _)| n).collect())
    }
    /// The value of one extended attribute (`None`: no such attribute), building only that one.
    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        Ok(self.xattrs(ino)?.into_iter().find(|(n, _)| n.as_slice() == name).map(|(_, v)| v))
    }
    /// Sizes and counts, as `statfs` shows them.
    fn stats(&self) -> FsStats;
    /// Why the tree is damaged, once a request found it so (a reader panicked on it).
    fn damage(&self) -> Option<String> {
        None
    }
    /// Where the inode records are in the image, for filesystems with fixed inode tables
    /// (ext2/3/4); `None` for the others. See [`changed_inodes`].
    fn inode_tables(&self) -> Option<InodeTables> {
        None
    }
    /// The on-disk record of inode `ino` as the filesystem holds it (after journal replay), for
    /// filesystems with [`ReadOnlyFs::inode_tables`].
    fn inode_record(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let _ = ino;
        Err(FsError::NotFound)
    }
}

/// Where a filesystem keeps its inode records: every change to a file (data, size, times,
/// mode, owner, links, xattrs) rewrites its record, so two images whose records are equal hold
/// the same inodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeTables {
    /// Bytes per record.
    pub record_size: u64,
    /// Each table: its byte offset in the image, the first inode number in it, how many.
    pub tables: Vec<(u64, u64, u64)>,
    /// Byte ranges of the image the reader does not take as they are on disk (blocks replayed
    /// from the journal): records in them may differ from the disk's.
    pub replayed: Vec<(u64, u64)>,
}

/// Most inodes [`changed_inodes`] compares before it gives up (a hostile image may claim
/// billions).
pub const CHANGED_INODES_LIMIT: usize = 16 << 20;

/// The inodes whose records differ between two images of one filesystem, given the byte ranges
/// of the image that differ (`changed`, e.g. the engine's changed ranges between two copies).
/// Only records in a changed range (or in blocks either reader replayed from its journal) are
/// compared, each through both readers. `None` when that cannot be told: a filesystem without
/// inode tables, tables that moved (a new filesystem), or more than [`CHANGED_INODES_LIMIT`]
/// records to compare.
pub fn changed_inodes(a: &dyn ReadOnlyFs, b: &dyn ReadOnlyFs, changed: &[(u64, u64)]) -> Option<Vec<u64>> {
    let (ta, tb) = (a.inode_tables()?, b.inode_tables()?);
    if ta.tables != tb.tables || ta.record_size != tb.record_size || ta.record_size == 0 {
        return None;
    }
    let mut candidates: Vec<(u64, u64)> = Vec::new();
    let mut total = 0usize;
    for &(off, len) in changed.iter().chain(&ta.replayed).chain(&tb.replayed) {
        let end = off.saturating_add(len);
        for &(start, first, count) in &ta.tables {
            let table_end = start.saturating_add(count.saturating_mul(ta.record_size));
            let (lo, hi) = (off.max(start), end.min(table_end));
            if lo >= hi {
                continue;
            }
            let (i, j) = ((lo - start) / ta.record_size, (hi - start).div_ceil(ta.record_size));
            total = total.saturating_add((j - i) as usize);
            if total > CHANGED_INODES_LIMIT {
                return None;
            }
            candidates.push((first + i, first + j));
        }
    }
    candidates.sort_unstable();
    let mut out = Vec::new();
    let mut next = 0u64;
    for (lo, hi) in candidates {
        for ino in lo.max(next)..hi {
            // A record one side cannot read counts as changed: the caller then compares it.
            let differ = match (a.inode_record(ino), b.inode_record(ino)) {
                (Ok(x), Ok(y)) => x != y,
                _ => true,
            };
            if differ {
                out.push(ino);
            }
        }
        next = next.max(hi);
    }
    Some(out)
}

/// Ownership for filesystems without POSIX owners (FAT, NTFS): who owns every file and the
/// permission bits files and directories get (always read-only).
#[derive(Debug, Clone, Copy)]
pub struct ForeignOwner {
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// Permission bits of files (e.g. 0o444) and directories (e.g. 0o555).
    pub file_perm: u16,
    /// Permission bits shown for directories.
    pub dir_perm: u16,
}

impl Default for ForeignOwner {
    fn default() -> Self {
        ForeignOwner { uid: 0, gid: 0, file_perm: 0o444, dir_perm: 0o555 }
    }
}

/// Recognises the filesystem in `source` and opens it. `Ok(None)`: no filesystem this build
/// reads (the raw image is still served). The reader comes wrapped in [`guard::Guarded`]: its
/// panics are errors.
pub fn open(source: Arc<dyn ByteSource>, owner: ForeignOwner) -> Result<Option<Arc<dyn ReadOnlyFs>>, FsError> {
    let fs = guard::contain("opening the filesystem", None, || open_unguarded(source, owner))?;
    Ok(fs.map(|fs| Arc::new(guard::Guarded::new(fs)) as Arc<dyn ReadOnlyFs>))
}

/// [`open`] without the panic guard.
fn open_unguarded(source: Arc<dyn ByteSource>, owner: ForeignOwner) -> Result<Option<Arc<dyn ReadOnlyFs>>, FsError> {
    let mut head = vec![0u8; 2048];
    if source.size() < head.len() as u64 {
        return Ok(None);
    }
    source.read_exact_at(&mut head, 0)?;
    if head[1024 + 56..1024 + 58] == [0x53, 0xEF] {
        return Ok(Some(Arc::new(ext4::Ext4::open(source)?)));
    }
    if &head[3..11] == b"NTFS    " {
        #[cfg(feature = "ntfs")]
        return Ok(Some(Arc::new(ntfs::NtfsFs::open(source, owner)?)));
        #[cfg(not(feature = "ntfs"))]
        return Err(FsError::Unsupported("NTFS (this build has no `ntfs` feature)".into()));
    }
    if looks_like_fat(&head) {
        #[cfg(feature = "fat")]
        return Ok(Some(Arc::new(fat::FatFs::open(source, owner)?)));
        #[cfg(not(feature = "fat"))]
        return Err(FsError::Unsupported("FAT (this build has no `fat` feature)".into()));
    }
    let _ = owner; // used by the optional readers only
    Ok(None)
}

/// Whether the boot sector in `head` (at least 512 bytes) is a FAT12/16/32 one.
pub fn looks_like_fat(head: &[u8]) -> bool {
    let jump = head[0] == 0xEB || head[0] == 0xE9;
    let bps = crate::bytes::le::u16(head, 11);
    let sig = head[510] == 0x55 && head[511] == 0xAA;
    let label = &head[54..59] == b"FAT12" || &head[54..59] == b"FAT16" || &head[82..87] == b"FAT32" || &head[54..57] == b"FAT";
    jump && sig && matches!(bps, 512 | 1024 | 2048 | 4096) && label
}
