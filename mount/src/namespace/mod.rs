//! The mount layout in neutral types: what every frontend (FUSE today, WinFsp later) shows.
//!
//! ```text
//! <mnt>/<volume>/live                          read-write: the live volume
//! <mnt>/<volume>/@GMT-YYYY.MM.DD-HH.MM.SS/      read-only tree of a shadow copy
//! <mnt>/<volume>/.images/@GMT-….img             read-only raw image of a shadow copy
//! ```
//!
//! Owns resolving node ids ([`nodes`]) to objects of the [`Service`] model, lookups, directory
//! listings, attributes, cache policy ([`Cache`]), which writes are refused and how, and the one
//! table from library errors to [`NsError`]. Cache policy: `live` is never cached (direct I/O,
//! zero TTL); copy trees and images are immutable, so their attributes and entries live for a
//! day and their pages are kept; folders the daemon makes change as copies come and go, so they
//! get a one-second TTL plus explicit invalidation when a copy leaves.
//!
//! Never names a frontend's types (no `fuser`, no WinFsp): a frontend maps [`Attr`], [`Entry`]
//! and [`NsError`] to its own. Never panics on a request: every failure is an [`NsError`].

pub mod nodes;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shadowcopy::fsread::{FileKind, FsError, FsStats, ReadOnlyFs, Stat};

use self::nodes::Node;
use crate::service::{Service, ShadowCopy, Volume};

/// Entries and attributes of immutable copy trees.
const TREE_TTL: Duration = Duration::from_secs(86400);
/// Daemon-made folders (their entries change as copies come and go).
const DIR_TTL: Duration = Duration::from_secs(1);

/// Why a request fails. Each frontend maps it to its own code (FUSE: an errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsError {
    /// No such entry.
    NotFound,
    /// The object a node named is gone (a copy deleted, a volume removed).
    Stale,
    /// A directory operation on a file.
    NotDir,
    /// A file operation on a directory.
    IsDir,
    /// A change inside a copy (copies are read-only).
    ReadOnly,
    /// A change the layout never allows (folders the daemon makes, the live file's metadata).
    NotPermitted,
    /// A number that does not fit (an inode number of 2^40 or more).
    Overflow,
    /// A write past the end of the live volume.
    NoSpace,
    /// Growing the live volume.
    TooBig,
    /// An argument out of range.
    Invalid,
    /// An operation the layout does not offer.
    Unsupported,
    /// No such extended attribute.
    NoData,
    /// Damaged or unreadable data (a corrupt filesystem in a copy, a failed volume read).
    Io,
}

impl NsError {
    /// From a filesystem reader's error: the explicit table (a generic conversion would turn
    /// most kinds into an I/O error).
    pub fn from_fs(e: &FsError) -> NsError {
        match e {
            FsError::NotFound => NsError::NotFound,
            FsError::NotDir => NsError::NotDir,
            FsError::IsDir => NsError::IsDir,
            FsError::Invalid(_) => NsError::Invalid,
            FsError::Unsupported(_) | FsError::Corrupt(_) | FsError::Io(_) => NsError::Io,
            // A kind added to the library later: an error all the same.
            _ => NsError::Io,
        }
    }

    /// From the engine's error.
    pub fn from_engine(e: &shadowcopy::Error) -> NsError {
        use shadowcopy::Error as E;
        match e {
            E::NoSuchCopy(_) | E::CopyDeleted(_) => NsError::Stale,
            E::OutOfRange { .. } => NsError::Invalid,
            E::VolumeIo { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => NsError::NoSpace,
            _ => NsError::Io,
        }
    }
}

/// What a node id names, with the objects it needs.
pub enum Resolved {
    /// The mount's root: one folder per volume.
    Root,
    /// `<mnt>/<volume>/`
    VolumeDir(Arc<Volume>),
    /// `<mnt>/<volume>/live`
    Live(Arc<Volume>),
    /// `<mnt>/<volume>/.images/`
    ImagesDir(Arc<Volume>),
    /// `<mnt>/<volume>/.images/@GMT-….img`
    Image(Arc<Volume>, Arc<ShadowCopy>),
    /// A file or directory inside a copy's filesystem (its inode number).
    Tree(Arc<ShadowCopy>, Arc<dyn ReadOnlyFs>, u64),
}

/// Attributes as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// What `stat` shows as the inode number (inside a copy: the original filesystem's).
    pub st_ino: u64,
    /// File, directory, …
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u16,
    /// Bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device files in a copy).
    pub rdev: u32,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Change time.
    pub ctime: SystemTime,
    /// Creation time.
    pub crtime: SystemTime,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its node id (the directory's own for `.` and `..`).
    pub id: u64,
    /// File, directory, …
    pub kind: FileKind,
    /// Its name.
    pub name: Vec<u8>,
}

/// How the kernel (or any frontend's cache) may keep what it was given about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Never: the live volume (direct I/O, no attribute caching).
    Never,
    /// Briefly, with explicit invalidation: folders the daemon makes.
    Brief,
    /// For good: copy trees and images never change.
    Immutable,
}

impl Cache {
    /// How long attributes and entries stay valid.
    pub fn ttl(self) -> Duration {
        match self {
            Cache::Never => Duration::ZERO,
            Cache::Brief => DIR_TTL,
            Cache::Immutable => TREE_TTL,
        }
    }
}

/// A space request on the live volume, in neutral terms (from `fallocate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// The range reads as zeros afterwards (discard, WRITE_ZEROES, punch hole, zero range).
    Zero,
    /// Reserve space; `keep_size` when the file must not grow.
    Reserve {
        /// Whether growing the file was refused by the caller already.
        keep_size: bool,
    },
    /// Anything else.
    Other,
}

/// The mount layout over a [`Service`].
pub struct Namespace {
    service: Arc<Service>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl Namespace {
    /// The layout of `service`'s volumes; daemon-made folders belong to the daemon's user.
    pub fn new(service: Arc<Service>) -> Namespace {
        Namespace { service, uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw(), started: SystemTime::now() }
    }

    /// The service it shows.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// What node `id` names now.
    pub fn resolve(&self, id: u64) -> Result<Resolved, NsError> {
        let node = Node::from_id(id).ok_or(NsError::NotFound)?;
        let vol = |s| self.service.volume_by_serial(s).ok_or(NsError::Stale);
        Ok(match node {
            Node::Root => Resolved::Root,
            Node::VolumeDir(s) => Resolved::VolumeDir(vol(s)?),
            Node::Live(s) => Resolved::Live(vol(s)?),
            Node::ImagesDir(s) => Resolved::ImagesDir(vol(s)?),
            Node::Image(c) => {
                let copy = self.service.copy_by_serial(c).ok_or(NsError::Stale)?;
                let v = copy.volume.upgrade().ok_or(NsError::Stale)?;
                Resolved::Image(v, copy)
            }
            Node::Tree { copy, ino } => {
                let c = self.service.copy_by_serial(copy).ok_or(NsError::Stale)?;
                let fs = c.tree(self.service.settings.fs_owner).ok_or(NsError::Stale)?;
                Resolved::Tree(c, fs, ino)
            }
        })
    }

    /// The node id of a resolved object; `None` when it does not fit.
    pub fn node_id(r: &Resolved) -> Option<u64> {
        match r {
            Resolved::Root => Node::Root.id(),
            Resolved::VolumeDir(v) => Node::VolumeDir(v.serial).id(),
            Resolved::Live(v) => Node::Live(v.serial).id(),
            Resolved::ImagesDir(v) => Node::ImagesDir(v.serial).id(),
            Resolved::Image(_, c) => Node::Image(c.serial).id(),
            Resolved::Tree(c, _, ino) => Node::Tree { copy: c.serial, ino: *ino }.id(),
        }
    }

    /// What `stat` shows as the inode number of node `id`.
    pub fn st_ino(id: u64) -> u64 {
        Node::from_id(id).map_or(id, |n| n.st_ino())
    }

    /// Attributes of a daemon-made folder.
    pub fn dir_attr(&self, node: Node, nlink: u32) -> Attr {
        Self::synthetic(node, FileKind::Dir, 0o755, 0, (self.uid, self.gid), self.started, nlink)
    }

    /// Attributes of a daemon-made object.
    fn synthetic(node: Node, kind: FileKind, perm: u16, size: u64, (uid, gid): (u32, u32), time: SystemTime, nlink: u32) -> Attr {
        Attr {
            st_ino: node.st_ino(),
            kind,
            perm,
            size,
            blocks: size.div_ceil(512),
            nlink,
            uid,
            gid,
            rdev: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
        }
    }

    fn live_attr(&self, v: &Volume) -> Attr {
        // Read and write bits of the image file (read bits only on a read-only volume); `live`
        // is what the image is.
        let perm = (v.owner.mode & if v.read_only() { 0o444 } else { 0o666 }) as u16;
        Self::synthetic(Node::Live(v.serial), FileKind::File, perm, v.size(), (v.owner.uid, v.owner.gid), SystemTime::now(), 1)
    }

    fn image_attr(&self, v: &Volume, c: &ShadowCopy) -> Attr {
        // Whoever could read the original image may read its copies, nobody else.
        let perm = (v.owner.mode & 0o444) as u16;
        Self::synthetic(Node::Image(c.serial), FileKind::File, perm, v.size(), (v.owner.uid, v.owner.gid), c.info.created, 1)
    }

    fn tree_attr(copy: &ShadowCopy, st: &Stat) -> Result<Attr, NsError> {
        Node::Tree { copy: copy.serial, ino: st.ino }.id().ok_or(NsError::Overflow)?;
        Ok(Attr {
            st_ino: st.ino,
            kind: st.kind,
            perm: st.perm,
            size: st.size,
            blocks: st.blocks,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev,
            atime: st.atime.to_system_time(),
            mtime: st.mtime.to_system_time(),
            ctime: st.ctime.to_system_time(),
            crtime: st.crtime.to_system_time(),
        })
    }

    /// Attributes of an object and how long they may be cached.
    pub fn getattr(&self, r: &Resolved) -> Result<(Attr, Cache), NsError> {
        Ok(match r {
            Resolved::Root => (self.dir_attr(Node::Root, 2 + self.service.volumes().len() as u32), Cache::Brief),
            Resolved::VolumeDir(v) => (self.dir_attr(Node::VolumeDir(v.serial), 3 + v.copies.read().len() as u32), Cache::Brief),
            Resolved::Live(v) => (self.live_attr(v), Cache::Never),
            Resolved::ImagesDir(v) => (self.dir_attr(Node::ImagesDir(v.serial), 2), Cache::Brief),
            Resolved::Image(v, c) => (self.image_attr(v, c), Cache::Immutable),
            Resolved::Tree(c, fs, ino) => (Self::tree_attr(c, &fs.stat(*ino).map_err(|e| tree_error(c, &e))?)?, Cache::Immutable),
        })
    }

    /// The entry `name` of directory `parent`.
    pub fn lookup(&self, parent: &Resolved, name: &[u8]) -> Result<Resolved, NsError> {
        let name_s = std::str::from_utf8(name).ok();
        match parent {
            Resolved::Root => name_s.and_then(|n| self.service.volume(n)).map(Resolved::VolumeDir).ok_or(NsError::NotFound),
            Resolved::VolumeDir(v) => match name_s {
                Some("live") => Ok(Resolved::Live(Arc::clone(v))),
                Some(".images") => Ok(Resolved::ImagesDir(Arc::clone(v))),
                Some(n) if n.starts_with("@GMT-") => {
                    let c = v.copies.read().get(n).filter(|c| c.exposed()).cloned().ok_or(NsError::NotFound)?;
                    let fs = c.tree(self.service.settings.fs_owner).ok_or(NsError::NotFound)?;
                    let root = fs.root();
                    Ok(Resolved::Tree(c, fs, root))
                }
                _ => Err(NsError::NotFound),
            },
            Resolved::ImagesDir(v) => {
                let base = name_s.and_then(|n| n.strip_suffix(".img")).ok_or(NsError::NotFound)?;
                let c = v.copies.read().get(base).filter(|c| c.exposed()).cloned().ok_or(NsError::NotFound)?;
                Ok(Resolved::Image(Arc::clone(v), c))
            }
            Resolved::Tree(c, fs, ino) => {
                let child = fs.lookup(*ino, name).map_err(|e| tree_error(c, &e))?;
                Ok(Resolved::Tree(Arc::clone(c), Arc::clone(fs), child))
            }
            Resolved::Live(_) | Resolved::Image(..) => Err(NsError::NotDir),
        }
    }

    /// Every entry of directory `dir` (node id `id`), `.` and `..` first.
    pub fn entries(&self, dir: &Resolved, id: u64) -> Result<Vec<Entry>, NsError> {
        let entry = |id: Option<u64>, kind, name: &[u8]| Entry { id: id.unwrap_or(0), kind, name: name.to_vec() };
        let mut out = vec![entry(Some(id), FileKind::Dir, b"."), entry(Some(id), FileKind::Dir, b"..")];
        match dir {
            Resolved::Root => {
                for v in self.service.volumes() {
                    out.push(entry(Node::VolumeDir(v.serial).id(), FileKind::Dir, v.name.as_bytes()));
                }
            }
            Resolved::VolumeDir(v) => {
                out.push(entry(Node::Live(v.serial).id(), FileKind::File, b"live"));
                out.push(entry(Node::ImagesDir(v.serial).id(), FileKind::Dir, b".images"));
                let windows = v.system().is_none();
                let copies: Vec<Arc<ShadowCopy>> = v.copies.read().values().filter(|c| c.listed(windows)).cloned().collect();
                for c in copies {
                    if let Some(fs) = c.tree(self.service.settings.fs_owner) {
                        if let Some(id) = (Node::Tree { copy: c.serial, ino: fs.root() }).id() {
                            out.push(entry(Some(id), FileKind::Dir, c.name.as_bytes()));
                        }
                    }
                }
            }
            Resolved::ImagesDir(v) => {
                for c in v.copies.read().values().filter(|c| c.exposed()) {
                    out.push(entry(Node::Image(c.serial).id(), FileKind::File, format!("{}.img", c.name).as_bytes()));
                }
            }
            Resolved::Tree(c, fs, ino) => {
                for e in fs.read_dir(*ino).map_err(|e| tree_error(c, &e))?.iter() {
                    match (Node::Tree { copy: c.serial, ino: e.ino }).id() {
                        Some(id) => out.push(entry(Some(id), e.kind, &e.name)),
                        None => tracing::warn!(ino = e.ino, "inode number too large to serve; entry skipped"),
                    }
                }
            }
            Resolved::Live(_) | Resolved::Image(..) => return Err(NsError::NotDir),
        }
        Ok(out)
    }

    /// The error for a change (create, remove, rename, set an attribute) under node `parent`:
    /// inside a copy the filesystem is read-only; elsewhere the layout is fixed.
    pub fn change_refused(&self, parent: u64) -> NsError {
        match Node::from_id(parent) {
            Some(Node::Tree { .. }) | Some(Node::ImagesDir(_)) => NsError::ReadOnly,
            _ => NsError::NotPermitted,
        }
    }

    /// `setattr` on an object: only the live file accepts it, and only when nothing changes (its
    /// size, owner and mode are the image's).
    pub fn setattr(&self, r: &Resolved, size: Option<u64>, owner_or_mode: bool) -> Result<Attr, NsError> {
        match r {
            Resolved::Live(v) => {
                if size.is_some_and(|s| s != v.size()) || owner_or_mode {
                    return Err(NsError::NotPermitted);
                }
                Ok(self.live_attr(v))
            }
            Resolved::Tree(..) | Resolved::Image(..) => Err(NsError::ReadOnly),
            _ => Err(NsError::NotPermitted),
        }
    }

    /// A symbolic link's target.
    pub fn readlink(&self, r: &Resolved) -> Result<Vec<u8>, NsError> {
        match r {
            Resolved::Tree(c, fs, i) => fs.read_link(*i).map_err(|e| tree_error(c, &e)),
            _ => Err(NsError::Invalid),
        }
    }

    /// Opens a file; the live file counts its opens (revert and remove refuse while it is open)
    /// and must be closed with [`Namespace::close_live`]. `request` names the open so that one
    /// sent again after a worker died is counted once.
    pub fn open(&self, r: &Resolved, writing: bool, request: Option<crate::ledger::OpenRequest>) -> Result<Cache, NsError> {
        match r {
            Resolved::Live(v) if writing && v.read_only() => Err(NsError::ReadOnly),
            Resolved::Live(v) => {
                v.live_opened(request);
                crate::failpoints::stall_live_open_answer();
                Ok(Cache::Never)
            }
            Resolved::Image(..) | Resolved::Tree(..) if writing => Err(NsError::ReadOnly),
            Resolved::Image(..) | Resolved::Tree(..) => Ok(Cache::Immutable),
            _ => Err(NsError::IsDir),
        }
    }

    /// Closes what [`Namespace::open`] opened on the live file of node `id`.
    pub fn close_live(&self, id: u64) {
        if let Some(Node::Live(s)) = Node::from_id(id) {
            if let Some(v) = self.service.volume_by_serial(s) {
                v.live_released();
            }
        }
    }

    /// Opens a directory: how its listing may be cached.
    pub fn opendir(&self, r: &Resolved) -> Result<Cache, NsError> {
        match r {
            Resolved::Tree(..) => Ok(Cache::Immutable),
            Resolved::Live(_) | Resolved::Image(..) => Err(NsError::NotDir),
            _ => Ok(Cache::Brief),
        }
    }

    /// Reads up to `size` bytes at `offset` into `buf` (grown as needed); the byte count.
    pub fn read(&self, r: &Resolved, offset: u64, size: u32, buf: &mut Vec<u8>) -> Result<usize, NsError> {
        let clamp = |total: u64| -> usize { total.saturating_sub(offset).min(u64::from(size)) as usize };
        match r {
            Resolved::Live(v) => {
                let n = clamp(v.size());
                grow(buf, n);
                v.read_live(&mut buf[..n], offset).map(|()| n).map_err(|e| NsError::from_engine(&e))
            }
            Resolved::Image(v, c) => {
                let n = clamp(v.size());
                grow(buf, n);
                v.read_copy(c.info.id, &mut buf[..n], offset).map(|()| n).map_err(|e| NsError::from_engine(&e))
            }
            Resolved::Tree(c, fs, i) => {
                grow(buf, size as usize);
                fs.read(*i, offset, &mut buf[..size as usize]).map_err(|e| tree_error(c, &e))
            }
            _ => Err(NsError::IsDir),
        }
    }

    /// Writes `data` at `offset` of the live file (through copy-before-write).
    pub fn write(&self, r: &Resolved, offset: u64, data: &[u8]) -> Result<usize, NsError> {
        let Resolved::Live(v) = r else { return Err(NsError::ReadOnly) };
        crate::failpoints::stall_live_write();
        let Some(engine) = v.system() else { return Err(NsError::ReadOnly) };
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > engine.size()) {
            return Err(NsError::NoSpace);
        }
        engine.write_at(data, offset).map(|()| data.len()).map_err(|e| {
            tracing::error!(volume = %v.name, offset, len = data.len(), error = %e, "live write failed");
            NsError::from_engine(&e)
        })
    }

    /// Makes every answered write to the live file durable (the loop device's flush).
    pub fn fsync(&self, r: &Resolved) -> Result<(), NsError> {
        match r {
            Resolved::Live(v) => v.system().map_or(Ok(()), |e| e.flush()).map_err(|e| {
                tracing::error!(volume = %v.name, error = %e, "flush of the live volume failed");
                NsError::from_engine(&e)
            }),
            _ => Ok(()),
        }
    }

    /// A space request on the live file.
    pub fn allocate(&self, r: &Resolved, offset: u64, length: u64, what: Allocation) -> Result<(), NsError> {
        let Resolved::Live(v) = r else { return Err(NsError::ReadOnly) };
        let Some(engine) = v.system() else { return Err(NsError::ReadOnly) };
        let size = engine.size();
        let end = offset.saturating_add(length);
        match what {
            // Discards and WRITE_ZEROES from a loop device: the range reads as zeros afterwards,
            // and copies keep what they need first.
            Allocation::Zero => {
                let end = end.min(size);
                if offset >= end {
                    return Ok(());
                }
                engine.punch_zero(offset, end - offset).map_err(|e| NsError::from_engine(&e))
            }
            // Every byte of the volume already exists; growing it cannot.
            Allocation::Reserve { keep_size } => {
                if end <= size || keep_size {
                    Ok(())
                } else {
                    Err(NsError::TooBig)
                }
            }
            Allocation::Other => Err(NsError::Unsupported),
        }
    }

    /// Filesystem statistics of the copy a node is in (zeros outside copies).
    pub fn statfs(&self, r: &Resolved) -> FsStats {
        match r {
            Resolved::Tree(_, fs, _) => fs.stats(),
            _ => FsStats { blocks: 0, free_blocks: 0, files: 0, free_files: 0, block_size: 4096, name_max: 255 },
        }
    }

    /// The value of extended attribute `name`. `privileged`: the caller is root (`trusted.*`
    /// attributes are for root only, as on the original filesystem).
    pub fn xattr(&self, r: &Resolved, name: &[u8], privileged: bool) -> Result<Vec<u8>, NsError> {
        match r {
            Resolved::Tree(c, fs, i) if visible(name, privileged) => {
                fs.xattr(*i, name).map_err(|e| tree_error(c, &e))?.ok_or(NsError::NoData)
            }
            _ => Err(NsError::NoData),
        }
    }

    /// The names of the extended attributes, each followed by a NUL.
    pub fn xattr_names(&self, r: &Resolved, privileged: bool) -> Result<Vec<u8>, NsError> {
        match r {
            Resolved::Tree(c, fs, i) => {
                let list = fs.xattr_names(*i).map_err(|e| tree_error(c, &e))?;
                let mut names = Vec::new();
                for n in list.iter().filter(|n| visible(n, privileged)) {
                    names.extend_from_slice(n);
                    names.push(0);
                }
                Ok(names)
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The error for a failed request inside copy `c`. Damage is logged once per copy and inode,
/// naming the volume, the copy and the inode (a walker that keeps meeting it does not flood the
/// log).
fn tree_error(c: &ShadowCopy, e: &FsError) -> NsError {
    if let FsError::Corrupt(damage) = e {
        if c.first_report_of_damage(damage.ino) {
            let volume = c.volume.upgrade().map(|v| v.name.clone()).unwrap_or_default();
            tracing::warn!(%volume, copy = %c.name, ino = ?damage.ino, kind = ?damage.kind, %damage, "damaged data in a shadow copy: the request gets EIO");
        }
    }
    NsError::from_fs(e)
}

/// `trusted.*` attributes are for root only, as on the original filesystem.
fn visible(name: &[u8], privileged: bool) -> bool {
    !name.starts_with(b"trusted.") || privileged
}

/// Makes `buf` at least `n` bytes long (it only grows; contents are overwritten by each read).
fn grow(buf: &mut Vec<u8>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0);
    }
}
