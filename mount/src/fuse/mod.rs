//! The FUSE frontend: presents the service's volumes and copies in the fixed layout
//!
//! ```text
//! <mnt>/<volume>/live                          read-write: the live volume
//! <mnt>/<volume>/@GMT-YYYY.MM.DD-HH.MM.SS/      read-only tree of a shadow copy
//! <mnt>/<volume>/.images/@GMT-….img             read-only raw image of a shadow copy
//! ```
//!
//! Owns node ids ([`nodes`]), attributes, cache policy and the errno table ([`errno`]). Cache
//! policy: `live` is never cached by the kernel (direct I/O, zero TTL); copy trees and images are
//! immutable, so their attributes and entries live for a day and their pages are kept; folders
//! the daemon makes change as copies come and go, so they get a one-second TTL plus explicit
//! invalidation when a copy leaves.
//!
//! Never decides anything about copies: it reads the [`Service`] model and calls the engine for
//! bytes. Never panics on a request: every failure is an errno.

mod errno;
pub mod nodes;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shadowcopy::fsread::{FileKind, ReadOnlyFs, Stat};

use self::nodes::Node;
use crate::service::{Service, ShadowCopy, Volume};

/// Entries and attributes of immutable copy trees.
const TREE_TTL: Duration = Duration::from_secs(86400);
/// Daemon-made folders (their entries change as copies come and go).
const DIR_TTL: Duration = Duration::from_secs(1);

const LIVE_FH: u64 = 1;

pub struct Frontend {
    service: Arc<Service>,
    uid: u32,
    gid: u32,
    started: SystemTime,
}

fn kind_to_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// What a resolved node is, with the objects it needs.
enum Resolved {
    Root,
    VolumeDir(Arc<Volume>),
    Live(Arc<Volume>),
    ImagesDir(Arc<Volume>),
    Image(Arc<Volume>, Arc<ShadowCopy>),
    Tree(Arc<ShadowCopy>, Arc<dyn ReadOnlyFs>, u64),
}

impl Frontend {
    pub fn new(service: Arc<Service>) -> Frontend {
        Frontend { service, uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw(), started: SystemTime::now() }
    }

    fn resolve(&self, id: INodeNo) -> Result<Resolved, Errno> {
        let node = Node::from_id(id.0).ok_or(Errno::ENOENT)?;
        let vol = |s| self.service.volume_by_serial(s).ok_or(Errno::ESTALE);
        Ok(match node {
            Node::Root => Resolved::Root,
            Node::VolumeDir(s) => Resolved::VolumeDir(vol(s)?),
            Node::Live(s) => Resolved::Live(vol(s)?),
            Node::ImagesDir(s) => Resolved::ImagesDir(vol(s)?),
            Node::Image(c) => {
                let copy = self.service.copy_by_serial(c).ok_or(Errno::ESTALE)?;
                let v = copy.volume.upgrade().ok_or(Errno::ESTALE)?;
                Resolved::Image(v, copy)
            }
            Node::Tree { copy, ino } => {
                let c = self.service.copy_by_serial(copy).ok_or(Errno::ESTALE)?;
                let fs = c.tree(self.service.settings.fs_owner).ok_or(Errno::ESTALE)?;
                Resolved::Tree(c, fs, ino)
            }
        })
    }

    fn dir_attr(&self, node: Node, nlink: u32) -> FileAttr {
        self.attr(node, FileType::Directory, 0o755, 0, self.uid, self.gid, self.started, nlink)
    }

    #[allow(clippy::too_many_arguments)]
    fn attr(&self, node: Node, kind: FileType, perm: u16, size: u64, uid: u32, gid: u32, time: SystemTime, nlink: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(node.st_ino()),
            size,
            blocks: size.div_ceil(512),
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn live_attr(&self, v: &Volume) -> FileAttr {
        // Read and write bits of the image file (read bits only on a read-only volume); `live`
        // is what the image is.
        let perm = (v.owner.mode & if v.read_only() { 0o444 } else { 0o666 }) as u16;
        self.attr(Node::Live(v.serial), FileType::RegularFile, perm, v.size(), v.owner.uid, v.owner.gid, SystemTime::now(), 1)
    }

    fn image_attr(&self, v: &Volume, c: &ShadowCopy) -> FileAttr {
        // Whoever could read the original image may read its copies, nobody else.
        let perm = (v.owner.mode & 0o444) as u16;
        self.attr(Node::Image(c.serial), FileType::RegularFile, perm, v.size(), v.owner.uid, v.owner.gid, c.info.created, 1)
    }

    fn tree_attr(&self, copy: &ShadowCopy, st: &Stat) -> Result<FileAttr, Errno> {
        let node = Node::Tree { copy: copy.serial, ino: st.ino };
        node.id().ok_or(Errno::EOVERFLOW)?;
        Ok(FileAttr {
            ino: INodeNo(st.ino),
            size: st.size,
            blocks: st.blocks,
            atime: st.atime.to_system_time(),
            mtime: st.mtime.to_system_time(),
            ctime: st.ctime.to_system_time(),
            crtime: st.crtime.to_system_time(),
            kind: kind_to_type(st.kind),
            perm: st.perm,
            nlink: st.nlink,
            uid: st.uid,
            gid: st.gid,
            rdev: st.rdev,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Attributes of a node plus its TTL.
    fn getattr_of(&self, r: &Resolved) -> Result<(FileAttr, Duration), Errno> {
        Ok(match r {
            Resolved::Root => (self.dir_attr(Node::Root, 2 + self.service.volumes().len() as u32), DIR_TTL),
            Resolved::VolumeDir(v) => (self.dir_attr(Node::VolumeDir(v.serial), 3 + v.copies.read().len() as u32), DIR_TTL),
            Resolved::Live(v) => (self.live_attr(v), Duration::ZERO),
            Resolved::ImagesDir(v) => (self.dir_attr(Node::ImagesDir(v.serial), 2), DIR_TTL),
            Resolved::Image(v, c) => (self.image_attr(v, c), TREE_TTL),
            Resolved::Tree(c, fs, ino) => (self.tree_attr(c, &fs.stat(*ino).map_err(|e| errno::of_fs(&e))?)?, TREE_TTL),
        })
    }

    fn node_of(r: &Resolved) -> Option<u64> {
        match r {
            Resolved::Root => Node::Root.id(),
            Resolved::VolumeDir(v) => Node::VolumeDir(v.serial).id(),
            Resolved::Live(v) => Node::Live(v.serial).id(),
            Resolved::ImagesDir(v) => Node::ImagesDir(v.serial).id(),
            Resolved::Image(_, c) => Node::Image(c.serial).id(),
            Resolved::Tree(c, _, ino) => Node::Tree { copy: c.serial, ino: *ino }.id(),
        }
    }

    fn lookup_child(&self, parent: &Resolved, name: &OsStr) -> Result<Resolved, Errno> {
        let name_s = name.to_str();
        match parent {
            Resolved::Root => name_s.and_then(|n| self.service.volume(n)).map(Resolved::VolumeDir).ok_or(Errno::ENOENT),
            Resolved::VolumeDir(v) => match name_s {
                Some("live") => Ok(Resolved::Live(Arc::clone(v))),
                Some(".images") => Ok(Resolved::ImagesDir(Arc::clone(v))),
                Some(n) if n.starts_with("@GMT-") => {
                    let c = v.copies.read().get(n).filter(|c| c.exposed()).cloned().ok_or(Errno::ENOENT)?;
                    let fs = c.tree(self.service.settings.fs_owner).ok_or(Errno::ENOENT)?;
                    let root = fs.root();
                    Ok(Resolved::Tree(c, fs, root))
                }
                _ => Err(Errno::ENOENT),
            },
            Resolved::ImagesDir(v) => {
                let base = name_s.and_then(|n| n.strip_suffix(".img")).ok_or(Errno::ENOENT)?;
                let c = v.copies.read().get(base).filter(|c| c.exposed()).cloned().ok_or(Errno::ENOENT)?;
                Ok(Resolved::Image(Arc::clone(v), c))
            }
            Resolved::Tree(c, fs, ino) => {
                let child = fs.lookup(*ino, name.as_bytes()).map_err(|e| errno::of_fs(&e))?;
                Ok(Resolved::Tree(Arc::clone(c), Arc::clone(fs), child))
            }
            Resolved::Live(_) | Resolved::Image(..) => Err(Errno::ENOTDIR),
        }
    }

    /// Every entry of a directory, `.` and `..` first: (node id, kind, name).
    fn entries(&self, dir: &Resolved, id: INodeNo) -> Result<Vec<(u64, FileType, Vec<u8>)>, Errno> {
        let mut out = vec![(id.0, FileType::Directory, b".".to_vec()), (id.0, FileType::Directory, b"..".to_vec())];
        match dir {
            Resolved::Root => {
                for v in self.service.volumes() {
                    out.push((Node::VolumeDir(v.serial).id().unwrap_or(0), FileType::Directory, v.name.as_bytes().to_vec()));
                }
            }
            Resolved::VolumeDir(v) => {
                out.push((Node::Live(v.serial).id().unwrap_or(0), FileType::RegularFile, b"live".to_vec()));
                out.push((Node::ImagesDir(v.serial).id().unwrap_or(0), FileType::Directory, b".images".to_vec()));
                let windows = v.system().is_none();
                let copies: Vec<Arc<ShadowCopy>> = v.copies.read().values().filter(|c| c.listed(windows)).cloned().collect();
                for c in copies {
                    if let Some(fs) = c.tree(self.service.settings.fs_owner) {
                        if let Some(id) = (Node::Tree { copy: c.serial, ino: fs.root() }).id() {
                            out.push((id, FileType::Directory, c.name.as_bytes().to_vec()));
                        }
                    }
                }
            }
            Resolved::ImagesDir(v) => {
                for c in v.copies.read().values().filter(|c| c.exposed()) {
                    out.push((Node::Image(c.serial).id().unwrap_or(0), FileType::RegularFile, format!("{}.img", c.name).into_bytes()));
                }
            }
            Resolved::Tree(c, fs, ino) => {
                for e in fs.read_dir(*ino).map_err(|e| errno::of_fs(&e))?.iter() {
                    match (Node::Tree { copy: c.serial, ino: e.ino }).id() {
                        Some(id) => out.push((id, kind_to_type(e.kind), e.name.clone())),
                        None => tracing::warn!(ino = e.ino, "inode number too large to serve; entry skipped"),
                    }
                }
            }
            Resolved::Live(_) | Resolved::Image(..) => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    fn read_only_error(&self, parent: INodeNo) -> Errno {
        match Node::from_id(parent.0) {
            Some(Node::Tree { .. }) | Some(Node::ImagesDir(_)) => Errno::EROFS,
            _ => Errno::EPERM,
        }
    }
}

fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for Frontend {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // POSIX ACLs: without this capability `default_permissions` checks mode bits only, and a
        // user an ACL denies on the original file could read every copy of it (the class of bug
        // behind CVE-2021-36934). With it, the kernel reads `system.posix_acl_*` through getxattr
        // and enforces each copy's own ACLs. Required, not best effort: see below.
        if config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            tracing::error!("the kernel lacks FUSE_POSIX_ACL: refusing to serve copies whose ACLs it would not enforce");
            return Err(std::io::Error::other("kernel without FUSE_POSIX_ACL"));
        }
        for cap in [
            InitFlags::FUSE_ASYNC_DIO,
            // Always readdirplus (not "auto", which falls back to plain readdir after the first
            // chunk when a program reads a whole directory before it stats the entries, as
            // `find` does): copy trees are immutable and attributes are cheap to give.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "the kernel lacks a FUSE capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r =
            self.resolve(parent).and_then(|p| self.lookup_child(&p, name)).and_then(|child| self.getattr_of(&child).map(|a| (child, a)));
        match r {
            Ok((child, (attr, ttl))) => match Self::node_of(&child) {
                // The node id names the object in this mount; attr.ino is what `stat` shows
                // (inside a copy: the original filesystem's inode number).
                Some(id) => reply.entry_with_node(INodeNo(id), &ttl, &ttl, &attr, Generation(0)),
                None => reply.error(Errno::EOVERFLOW),
            },
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.resolve(ino).and_then(|r| self.getattr_of(&r)) {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.resolve(ino) {
            Ok(Resolved::Live(v)) => {
                // The live volume's size is the image's; owners and modes are the image's.
                if size.is_some_and(|s| s != v.size()) {
                    return reply.error(Errno::EPERM);
                }
                if mode.is_some() || uid.is_some() || gid.is_some() {
                    return reply.error(Errno::EPERM);
                }
                reply.attr(&Duration::ZERO, &self.live_attr(&v));
            }
            Ok(Resolved::Tree(..)) | Ok(Resolved::Image(..)) => reply.error(Errno::EROFS),
            Ok(_) => reply.error(Errno::EPERM),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.resolve(ino) {
            Ok(Resolved::Tree(_, fs, i)) => match fs.read_link(i) {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno::of_fs(&e)),
            },
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        match self.resolve(ino) {
            Ok(Resolved::Live(v)) if writing && v.read_only() => reply.error(Errno::EROFS),
            Ok(Resolved::Live(v)) => {
                v.live_opens.fetch_add(1, Ordering::AcqRel);
                // Direct I/O: every write reaches the engine at once (no page cache between the
                // loop device and the copy-on-write), and writes run in parallel.
                reply.opened(FileHandle(LIVE_FH), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);
            }
            Ok(Resolved::Image(..)) | Ok(Resolved::Tree(..)) if writing => reply.error(Errno::EROFS),
            Ok(Resolved::Image(..)) | Ok(Resolved::Tree(..)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let clamp = |total: u64| -> usize { total.saturating_sub(offset).min(u64::from(size)) as usize };
        let resolved = match self.resolve(ino) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        // One buffer per worker thread, reused: a fresh 1 MiB allocation is a new mapping whose
        // every page faults on first touch.
        READ_BUF.with_borrow_mut(|buf| {
            let result = match &resolved {
                Resolved::Live(v) => {
                    let n = clamp(v.size());
                    grow(buf, n);
                    v.read_live(&mut buf[..n], offset).map(|()| n).map_err(|e| errno::of_engine(&e))
                }
                Resolved::Image(v, c) => {
                    let n = clamp(v.size());
                    grow(buf, n);
                    v.read_copy(c.info.id, &mut buf[..n], offset).map(|()| n).map_err(|e| errno::of_engine(&e))
                }
                Resolved::Tree(_, fs, i) => {
                    grow(buf, size as usize);
                    fs.read(*i, offset, &mut buf[..size as usize]).map_err(|e| errno::of_fs(&e))
                }
                _ => Err(Errno::EISDIR),
            };
            match result {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.resolve(ino) {
            Ok(Resolved::Live(v)) => {
                crate::failpoints::stall_live_write();
                let Some(engine) = v.system() else { return reply.error(Errno::EROFS) };
                if offset.checked_add(data.len() as u64).is_none_or(|end| end > engine.size()) {
                    return reply.error(Errno::ENOSPC);
                }
                match engine.write_at(data, offset) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => {
                        tracing::error!(volume = %v.name, offset, len = data.len(), error = %e, "live write failed");
                        reply.error(errno::of_engine(&e))
                    }
                }
            }
            Ok(_) => reply.error(Errno::EROFS),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if fh.0 == LIVE_FH {
            if let Some(Node::Live(s)) = Node::from_id(ino.0) {
                if let Some(v) = self.service.volume_by_serial(s) {
                    v.live_opens.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.resolve(ino) {
            Ok(Resolved::Live(v)) => match v.system().map_or(Ok(()), |e| e.flush()) {
                Ok(()) => reply.ok(),
                Err(e) => {
                    tracing::error!(volume = %v.name, error = %e, "flush of the live volume failed");
                    reply.error(errno::of_engine(&e))
                }
            },
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let v = match self.resolve(ino) {
            Ok(Resolved::Live(v)) => v,
            Ok(_) => return reply.error(Errno::EROFS),
            Err(e) => return reply.error(e),
        };
        let Some(engine) = v.system() else { return reply.error(Errno::EROFS) };
        let size = engine.size();
        let end = offset.saturating_add(length);
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            // Discards and WRITE_ZEROES from a loop device: the range reads as zeros afterwards,
            // and copies keep what they need first.
            if mode & !(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                return reply.error(Errno::EOPNOTSUPP);
            }
            let end = end.min(size);
            if offset >= end {
                return reply.ok();
            }
            return match engine.punch_zero(offset, end - offset) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno::of_engine(&e)),
            };
        }
        if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            // Plain allocation: every byte of the volume already exists; growing it cannot.
            return if end <= size || mode & libc::FALLOC_FL_KEEP_SIZE != 0 { reply.ok() } else { reply.error(Errno::EFBIG) };
        }
        reply.error(Errno::EOPNOTSUPP)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.resolve(ino) {
            Ok(Resolved::Tree(..)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Ok(Resolved::Live(_)) | Ok(Resolved::Image(..)) => reply.error(Errno::ENOTDIR),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = match self.resolve(ino).and_then(|r| self.entries(&r, ino)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (id, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let st_ino = Node::from_id(*id).map_or(*id, |n| n.st_ino());
            if reply.add(INodeNo(st_ino), (i + 1) as u64, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let dir = match self.resolve(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let entries = match self.entries(&dir, ino) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        // `.` and `..` carry the directory's own inode number.
        let own = self.getattr_of(&dir).ok().map(|(a, _)| a);
        for (i, (id, _kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let child = if name == b"." || name == b".." {
                None
            } else {
                self.lookup_child(&dir, OsStr::from_bytes(name)).ok().and_then(|c| self.getattr_of(&c).ok())
            };
            let full = match child {
                Some((attr, ttl)) => reply.add(INodeNo(*id), (i + 1) as u64, OsStr::from_bytes(name), &ttl, &attr, Generation(0)),
                // `.`, `..`, or an entry whose attributes cannot be read: node id 0 tells the
                // kernel to look it up itself (and get the error then).
                None => {
                    let attr = own.unwrap_or_else(|| self.dir_attr(Node::Root, 2));
                    reply.add(INodeNo(0), (i + 1) as u64, OsStr::from_bytes(name), &Duration::ZERO, &attr, Generation(0))
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.resolve(ino) {
            Ok(Resolved::Tree(_, fs, _)) => {
                let s = fs.stats();
                reply.statfs(s.blocks, s.free_blocks, s.free_blocks, s.files, s.free_files, s.block_size, s.name_max, s.block_size)
            }
            _ => reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.resolve(ino) {
            Ok(Resolved::Tree(_, fs, i)) => match fs.xattrs(i) {
                Ok(list) => match list.iter().find(|(n, _)| n.as_slice() == name.as_bytes() && visible(req, n)) {
                    Some((_, v)) => xattr_reply(reply, v, size),
                    None => reply.error(Errno::ENODATA),
                },
                Err(e) => reply.error(errno::of_fs(&e)),
            },
            Ok(_) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.resolve(ino) {
            Ok(Resolved::Tree(_, fs, i)) => match fs.xattrs(i) {
                Ok(list) => {
                    let mut names = Vec::new();
                    for (n, _) in list.iter().filter(|(n, _)| visible(req, n)) {
                        names.extend_from_slice(n);
                        names.push(0);
                    }
                    xattr_reply(reply, &names, size)
                }
                Err(e) => reply.error(errno::of_fs(&e)),
            },
            Ok(_) => xattr_reply(reply, &[], size),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32, reply: ReplyEmpty) {
        reply.error(self.read_only_error(ino));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.read_only_error(ino));
    }

    fn mknod(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _rdev: u32, reply: ReplyEntry) {
        reply.error(self.read_only_error(parent));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(self.read_only_error(parent));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.read_only_error(parent));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.read_only_error(parent));
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, _link: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(self.read_only_error(parent));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.read_only_error(parent));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(self.read_only_error(newparent));
    }

    fn create(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _flags: i32, reply: ReplyCreate) {
        reply.error(self.read_only_error(parent));
    }
}

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes `buf` at least `n` bytes long (it only grows; contents are overwritten by each read).
fn grow(buf: &mut Vec<u8>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0);
    }
}

/// `trusted.*` attributes are for root only, as on the original filesystem.
fn visible(req: &Request, name: &[u8]) -> bool {
    !name.starts_with(b"trusted.") || req.uid() == 0
}

/// Seconds since the epoch, for logs.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
