//! FAT12/16/32 through the `fatfs` crate.
//!
//! `fatfs::FileSystem` is neither `Send` nor shareable, so it lives on its own reader thread
//! for the life of the view; file reads are requests to that thread (which keeps recently used
//! files open). The directory tree is walked once when the view opens: FAT volumes are small, the
//! copy is immutable, and the walk order gives every file a stable inode number (the root is 1).
//!
//! FAT has no owners or permission bits: every file shows the [`ForeignOwner`]'s ids and
//! read-only bits. Times are DOS local times, shown as if UTC (as the kernel's vfat does on a
//! machine whose clock runs in UTC). Symlinks, devices and xattrs do not exist on FAT.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

use super::cursor::{Cursor, ReadBudget};
use super::{ByteSource, CorruptKind, DirEntry, FileKind, ForeignOwner, FsError, FsStats, ReadOnlyFs, Stat, Timestamp, Xattrs};

/// Entries walked at most (a damaged FAT can loop).
const MAX_NODES: usize = 1 << 20;
const MAX_DEPTH: usize = 64;

struct Node {
    name: Vec<u8>,
    /// Path from the root, for the reader thread.
    path: String,
    kind: FileKind,
    size: u64,
    mtime: Timestamp,
    atime: Timestamp,
    crtime: Timestamp,
    children: Vec<u64>,
    subdirs: u32,
}

struct ReadRequest {
    ino: u64,
    path: String,
    offset: u64,
    len: usize,
    reply: mpsc::SyncSender<io::Result<Vec<u8>>>,
}

/// An open FAT filesystem.
pub struct FatFs {
    nodes: Vec<Node>,
    listings: Vec<Option<Arc<Vec<DirEntry>>>>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    owner: ForeignOwner,
    stats: FsStats,
    requests: Mutex<mpsc::Sender<ReadRequest>>,
}

fn dos_time(dt: fatfs::DateTime) -> Timestamp {
    date_time(dt.date, dt.time.hour, dt.time.min, dt.time.sec, dt.time.millis)
}

fn date_time(d: fatfs::Date, h: u16, m: u16, s: u16, ms: u16) -> Timestamp {
    // Days from civil (Howard Hinnant), from a DOS date (1980..2107).
    let (y, mo, day) = (i64::from(d.year), i64::from(d.month.clamp(1, 12)), i64::from(d.day.clamp(1, 31)));
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Timestamp { secs: days * 86400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s), nanos: u32::from(ms.min(999)) * 1_000_000 }
}

impl FatFs {
    /// Opens the FAT filesystem in `source`; files show `owner`.
    pub fn open(source: Arc<dyn ByteSource>, owner: ForeignOwner) -> Result<FatFs, FsError> {
        let (tx, rx) = mpsc::channel::<ReadRequest>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(Vec<Node>, FsStats), FsError>>(1);
        let src = Arc::clone(&source);
        std::thread::Builder::new()
            .name("shadowcopy-fat".into())
            .spawn(move || {
                // Opening walks every directory once: the volume's bytes at most, twice over.
                let budget = ReadBudget::new(ReadBudget::per_request(src.size()));
                let per_request = ReadBudget::per_request(src.size());
                let fs = match fatfs::FileSystem::new(Cursor::with_budget(src, budget.clone()), fatfs::FsOptions::new()) {
                    Ok(fs) => fs,
                    Err(e) => {
                        let _ = ready_tx.send(Err(FsError::corrupt(CorruptKind::Fat, None, format!("not a readable FAT filesystem: {e}"))));
                        return;
                    }
                };
                // The reader thread has its own panic guard: the request guard runs on the
                // caller's thread.
                let walked = super::guard::contain("opening the FAT filesystem", None, || walk(&fs)).map(|nodes| {
                    let cluster = fs.cluster_size();
                    let stats = fs.stats().ok();
                    (
                        nodes,
                        FsStats {
                            block_size: cluster,
                            blocks: stats.as_ref().map_or(0, |s| u64::from(s.total_clusters())),
                            free_blocks: stats.as_ref().map_or(0, |s| u64::from(s.free_clusters())),
                            files: 0,
                            free_files: 0,
                            name_max: 255,
                        },
                    )
                });
                let ok = walked.is_ok();
                let _ = ready_tx.send(walked);
                if ok {
                    serve(&fs, rx, &budget, per_request);
                }
            })
            .map_err(FsError::Io)?;
        let (nodes, stats) =
            ready_rx.recv().map_err(|_| FsError::corrupt(CorruptKind::Fat, None, "the FAT reader stopped while opening"))??;
        let mut by_name = HashMap::new();
        let mut listings = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let ino = i as u64 + 1;
            if n.kind == FileKind::Dir {
                let entries: Vec<DirEntry> = n
                    .children
                    .iter()
                    .map(|&c| DirEntry { name: nodes[c as usize - 1].name.clone(), ino: c, kind: nodes[c as usize - 1].kind })
                    .collect();
                for e in &entries {
                    by_name.insert((ino, e.name.clone()), e.ino);
                }
                listings.push(Some(Arc::new(entries)));
            } else {
                listings.push(None);
            }
        }
        Ok(FatFs { nodes, listings, by_name, owner, stats, requests: Mutex::new(tx) })
    }

    fn node(&self, ino: u64) -> Result<&Node, FsError> {
        usize::try_from(ino).ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.nodes.get(i)).ok_or(FsError::NotFound)
    }
}

fn walk<T: fatfs::ReadWriteSeek>(fs: &fatfs::FileSystem<T>) -> Result<Vec<Node>, FsError> {
    let root = Node {
        name: Vec::new(),
        path: String::new(),
        kind: FileKind::Dir,
        size: 0,
        mtime: Timestamp::default(),
        atime: Timestamp::default(),
        crtime: Timestamp::default(),
        children: Vec::new(),
        subdirs: 0,
    };
    let mut nodes = vec![root];
    let mut stack: Vec<(u64, fatfs::Dir<'_, T>, usize)> = vec![(1, fs.root_dir(), 0)];
    while let Some((ino, dir, depth)) = stack.pop() {
        for entry in dir.iter() {
            let entry = entry.map_err(|e| {
                FsError::corrupt(CorruptKind::Directory, Some(ino), format!("FAT directory {}: {e}", nodes[ino as usize - 1].path))
            })?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if nodes.len() >= MAX_NODES {
                return Err(FsError::corrupt(CorruptKind::Directory, None, "too many FAT entries (a directory loop?)"));
            }
            let parent_path = &nodes[ino as usize - 1].path;
            let path = if parent_path.is_empty() { name.clone() } else { format!("{parent_path}/{name}") };
            let kind = if entry.is_dir() { FileKind::Dir } else { FileKind::File };
            let accessed = entry.accessed();
            nodes.push(Node {
                name: name.into_bytes(),
                path,
                kind,
                size: if kind == FileKind::File { entry.len() } else { 0 },
                mtime: dos_time(entry.modified()),
                atime: date_time(accessed, 0, 0, 0, 0),
                crtime: dos_time(entry.created()),
                children: Vec::new(),
                subdirs: 0,
            });
            let child = nodes.len() as u64;
            let parent = &mut nodes[ino as usize - 1];
            parent.children.push(child);
            if kind == FileKind::Dir {
                parent.subdirs += 1;
                if depth + 1 > MAX_DEPTH {
                    return Err(FsError::corrupt(CorruptKind::Directory, None, "FAT directories nest too deep (a directory loop?)"));
                }
                stack.push((child, entry.to_dir(), depth + 1));
            }
        }
    }
    Ok(nodes)
}

/// The reader thread: answers reads, keeping a few files open.
fn serve<T: fatfs::ReadWriteSeek>(fs: &fatfs::FileSystem<T>, rx: mpsc::Receiver<ReadRequest>, budget: &ReadBudget, per_request: u64) {
    let root = fs.root_dir();
    let mut open: HashMap<u64, fatfs::File<'_, T>> = HashMap::new();
    for req in rx {
        budget.reset(per_request);
        if open.len() > 64 {
            open.clear();
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> io::Result<Vec<u8>> {
            let file = match open.entry(req.ino) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(root.open_file(&req.path)?),
            };
            file.seek(SeekFrom::Start(req.offset))?;
            let mut buf = vec![0u8; req.len];
            let mut done = 0;
            while done < buf.len() {
                let n = file.read(&mut buf[done..])?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            Ok(buf)
        }))
        .unwrap_or_else(|_| Err(io::Error::other("the FAT reader failed on damaged data (a panic, caught)")));
        if result.is_err() {
            open.remove(&req.ino);
        }
        let _ = req.reply.send(result);
    }
}

impl ReadOnlyFs for FatFs {
    fn kind(&self) -> &'static str {
        "vfat"
    }

    fn root(&self) -> u64 {
        1
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        let n = self.node(ino)?;
        let dir = n.kind == FileKind::Dir;
        Ok(Stat {
            ino,
            kind: n.kind,
            perm: if dir { self.owner.dir_perm } else { self.owner.file_perm },
            nlink: if dir { 2 + n.subdirs } else { 1 },
            uid: self.owner.uid,
            gid: self.owner.gid,
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.crtime,
            rdev: 0,
        })
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, FsError> {
        if self.node(dir)?.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        self.by_name.get(&(dir, name.to_vec())).copied().ok_or(FsError::NotFound)
    }

    fn read_dir(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        self.node(dir)?;
        self.listings[dir as usize - 1].clone().ok_or(FsError::NotDir)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let n = self.node(ino)?;
        if n.kind == FileKind::Dir {
            return Err(FsError::IsDir);
        }
        if offset >= n.size {
            return Ok(0);
        }
        let len = (n.size - offset).min(buf.len() as u64) as usize;
        let (tx, rx) = mpsc::sync_channel(1);
        let req = ReadRequest { ino, path: n.path.clone(), offset, len, reply: tx };
        self.requests.lock().send(req).map_err(|_| FsError::corrupt(CorruptKind::Fat, None, "the FAT reader stopped"))?;
        let data = rx.recv().map_err(|_| FsError::corrupt(CorruptKind::Fat, None, "the FAT reader stopped"))??;
        if data.len() != len {
            return Err(FsError::corrupt(CorruptKind::Fat, None, format!("{}: the cluster chain is shorter than the file", n.path)));
        }
        buf[..len].copy_from_slice(&data);
        Ok(len)
    }

    fn read_link(&self, _ino: u64) -> Result<Vec<u8>, FsError> {
        Err(FsError::Invalid("FAT has no symbolic links"))
    }

    fn xattrs(&self, ino: u64) -> Result<Xattrs, FsError> {
        self.node(ino)?;
        Ok(Vec::new())
    }

    fn stats(&self) -> FsStats {
        FsStats { files: self.nodes.len() as u64, ..self.stats }
    }
}
