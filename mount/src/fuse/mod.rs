//! The FUSE frontend: maps the neutral [`Namespace`] (the mount layout) to fuser's types.
//!
//! Owns the FUSE session's settings (capabilities asked at INIT, `max_write`, readahead), the
//! errno table ([`errno`]), and the translation of attributes, entries and cache policy into
//! fuser's replies. A WinFsp frontend would sit beside this one over the same namespace.
//!
//! Isolation between volumes: requests that may parse a copy's filesystem (anything inside a
//! volume's folder but its `live` file) run on that volume's own small pool of threads
//! ([`pool`]), never on the kernel-facing threads. A hostile image can only keep its own
//! volume's pool busy: other volumes' copies and every `live` file are served meanwhile.
//!
//! Never decides anything about the layout or copies: every answer comes from the namespace.
//! Never panics on a request: every failure is an errno.

mod pool;

pub use pool::Drain;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use shadowcopy::fsread::FileKind;

use crate::ledger::OpenRequest;
use crate::namespace::nodes::Node;
use crate::namespace::{Allocation, Attr, Cache, Namespace, NsError};
use crate::service::Service;

/// The file handle of an open `live` file (its release is counted).
const LIVE_FH: u64 = 1;
/// The bit the kernel sets in `unique` of a request it sends again (`FUSE_NOTIFY_RESEND`).
const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// The FUSE filesystem: the namespace, answered in fuser's terms.
pub struct Frontend {
    ns: Arc<Namespace>,
    pools: pool::VolumePools,
}

/// The errno for each [`NsError`]: explicit, because converting an `io::Error` generically turns
/// most kinds into EIO.
fn errno(e: NsError) -> Errno {
    match e {
        NsError::NotFound => Errno::ENOENT,
        NsError::Stale => Errno::ESTALE,
        NsError::NotDir => Errno::ENOTDIR,
        NsError::IsDir => Errno::EISDIR,
        NsError::ReadOnly => Errno::EROFS,
        NsError::NotPermitted => Errno::EPERM,
        NsError::Overflow => Errno::EOVERFLOW,
        NsError::NoSpace => Errno::ENOSPC,
        NsError::TooBig => Errno::EFBIG,
        NsError::Invalid => Errno::EINVAL,
        NsError::Unsupported => Errno::EOPNOTSUPP,
        NsError::NoData => Errno::ENODATA,
        NsError::Io => Errno::EIO,
    }
}

fn file_type(k: FileKind) -> FileType {
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

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.st_ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.crtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
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

impl Frontend {
    /// The frontend of `service`'s layout.
    pub fn new(service: Arc<Service>) -> Frontend {
        Frontend { ns: Arc::new(Namespace::new(service)), pools: pool::VolumePools::default() }
    }

    /// A handle that waits until no request handed to a volume's pool is unanswered.
    pub fn drain(&self) -> pool::Drain {
        self.pools.drain()
    }

    /// Runs `job` for a request on node `id`: on the pool of the volume the node belongs to when
    /// answering may parse a copy's filesystem, else here (the mount's root, `live`, a node
    /// whose volume is gone).
    fn on_volume(&self, id: u64, job: impl FnOnce(&Namespace) + Send + 'static) {
        match self.volume_of(id) {
            Some(volume) => {
                let ns = Arc::clone(&self.ns);
                self.pools.run(volume, Box::new(move || job(&ns)));
            }
            None => job(&self.ns),
        }
    }

    /// The serial of the volume whose pool serves node `id`.
    fn volume_of(&self, id: u64) -> Option<u32> {
        match Node::from_id(id)? {
            Node::Root | Node::Live(_) => None,
            Node::VolumeDir(s) | Node::ImagesDir(s) => Some(s),
            Node::Image(c) | Node::Tree { copy: c, .. } => self.ns.service().copy_by_serial(c)?.volume.upgrade().map(|v| v.serial),
        }
    }
}

thread_local! {
    /// One read buffer per worker thread, reused: a fresh 1 MiB allocation is a new mapping
    /// whose every page faults on first touch.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A directory's entries with their attributes, from `offset` on.
fn readdirplus(ns: &Namespace, ino: INodeNo, offset: u64, mut reply: ReplyDirectoryPlus) {
    let dir = match ns.resolve(ino.0) {
        Ok(d) => d,
        Err(e) => return reply.error(errno(e)),
    };
    let entries = match ns.entries(&dir, ino.0) {
        Ok(e) => e,
        Err(e) => return reply.error(errno(e)),
    };
    // `.` and `..` carry the directory's own inode number.
    let own = ns.getattr(&dir).ok().map(|(a, _)| a);
    for (i, e) in entries.iter().enumerate().skip(offset as usize) {
        let child = if e.name == b"." || e.name == b".." { None } else { ns.lookup(&dir, &e.name).ok().and_then(|c| ns.getattr(&c).ok()) };
        let name = OsStr::from_bytes(&e.name);
        let full = match child {
            Some((attr, cache)) => reply.add(INodeNo(e.id), (i + 1) as u64, name, &cache.ttl(), &file_attr(&attr), Generation(0)),
            // `.`, `..`, or an entry whose attributes cannot be read: node id 0 tells the kernel
            // to look it up itself (and get the error then).
            None => {
                let attr = own.clone().unwrap_or_else(|| ns.dir_attr(Node::Root, 2));
                reply.add(INodeNo(0), (i + 1) as u64, name, &Cache::Never.ttl(), &file_attr(&attr), Generation(0))
            }
        };
        if full {
            break;
        }
    }
    reply.ok();
}

impl Filesystem for Frontend {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // POSIX ACLs: without this capability `default_permissions` checks mode bits only, and a
        // user an ACL denies on the original file could read every copy of it (the class of bug
        // behind CVE-2021-36934). With it, the kernel reads `system.posix_acl_*` through getxattr
        // and enforces each copy's own ACLs. Required, not best effort.
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
        let name = name.as_bytes().to_vec();
        self.on_volume(parent.0, move |ns| {
            let r = ns.resolve(parent.0).and_then(|p| ns.lookup(&p, &name)).and_then(|child| {
                let (attr, cache) = ns.getattr(&child)?;
                // The node id names the object in this mount; attr.ino is what `stat` shows
                // (inside a copy: the original filesystem's inode number).
                let id = Namespace::node_id(&child).ok_or(NsError::Overflow)?;
                Ok((id, attr, cache))
            });
            match r {
                Ok((id, attr, cache)) => reply.entry_with_node(INodeNo(id), &cache.ttl(), &cache.ttl(), &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.getattr(&r)) {
            Ok((attr, cache)) => reply.attr(&cache.ttl(), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        });
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
        let owner_or_mode = mode.is_some() || uid.is_some() || gid.is_some();
        match self.ns.resolve(ino.0).and_then(|r| self.ns.setattr(&r, size, owner_or_mode)) {
            Ok(attr) => reply.attr(&Cache::Never.ttl(), &file_attr(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.readlink(&r)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let unique = req.unique().0;
        let request = OpenRequest { id: unique & !FUSE_UNIQUE_RESEND, resent: unique & FUSE_UNIQUE_RESEND != 0 };
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.open(&r, writing, Some(request))) {
            // Direct I/O: every write reaches the engine at once (no page cache between the
            // loop device and the copy-on-write), and writes run in parallel.
            Ok(Cache::Never) => reply.opened(FileHandle(LIVE_FH), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        });
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
        self.on_volume(ino.0, move |ns| {
            let resolved = match ns.resolve(ino.0) {
                Ok(r) => r,
                Err(e) => return reply.error(errno(e)),
            };
            READ_BUF.with_borrow_mut(|buf| match ns.read(&resolved, offset, size, buf) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(e)),
            });
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
        match self.ns.resolve(ino.0).and_then(|r| self.ns.write(&r, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
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
            self.ns.close_live(ino.0);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.ns.resolve(ino.0).and_then(|r| self.ns.fsync(&r)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let zeroing = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        let what = if mode & zeroing != 0 {
            if mode & !(zeroing | libc::FALLOC_FL_KEEP_SIZE) != 0 {
                Allocation::Other
            } else {
                Allocation::Zero
            }
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            Allocation::Reserve { keep_size: mode & libc::FALLOC_FL_KEEP_SIZE != 0 }
        } else {
            Allocation::Other
        };
        match self.ns.resolve(ino.0).and_then(|r| self.ns.allocate(&r, offset, length, what)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.opendir(&r)) {
            Ok(Cache::Immutable) => reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.on_volume(ino.0, move |ns| {
            let entries = match ns.resolve(ino.0).and_then(|r| ns.entries(&r, ino.0)) {
                Ok(e) => e,
                Err(e) => return reply.error(errno(e)),
            };
            for (i, e) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(Namespace::st_ino(e.id)), (i + 1) as u64, file_type(e.kind), OsStr::from_bytes(&e.name)) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        self.on_volume(ino.0, move |ns| readdirplus(ns, ino, offset, reply));
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.on_volume(ino.0, move |ns| {
            let s = match ns.resolve(ino.0) {
                Ok(r) => ns.statfs(&r),
                Err(_) => ns.statfs(&crate::namespace::Resolved::Root),
            };
            reply.statfs(s.blocks, s.free_blocks, s.free_blocks, s.files, s.free_files, s.block_size, s.name_max, s.block_size)
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (name, privileged) = (name.as_bytes().to_vec(), req.uid() == 0);
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.xattr(&r, &name, privileged)) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let privileged = req.uid() == 0;
        self.on_volume(ino.0, move |ns| match ns.resolve(ino.0).and_then(|r| ns.xattr_names(&r, privileged)) {
            Ok(names) => xattr_reply(reply, &names, size),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _value: &[u8], _flags: i32, _position: u32, reply: ReplyEmpty) {
        reply.error(errno(self.ns.change_refused(ino.0)));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(self.ns.change_refused(ino.0)));
    }

    fn mknod(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _rdev: u32, reply: ReplyEntry) {
        reply.error(errno(self.ns.change_refused(parent.0)));
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(errno(self.ns.change_refused(parent.0)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(self.ns.change_refused(parent.0)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(self.ns.change_refused(parent.0)));
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, _link: &OsStr, _target: &std::path::Path, reply: ReplyEntry) {
        reply.error(errno(self.ns.change_refused(parent.0)));
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
        reply.error(errno(self.ns.change_refused(parent.0)));
    }

    fn link(&self, _req: &Request, _ino: INodeNo, newparent: INodeNo, _newname: &OsStr, reply: ReplyEntry) {
        reply.error(errno(self.ns.change_refused(newparent.0)));
    }

    fn create(&self, _req: &Request, parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, _flags: i32, reply: ReplyCreate) {
        reply.error(errno(self.ns.change_refused(parent.0)));
    }
}
