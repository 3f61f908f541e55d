//! A read-only, journal-aware ext2/3/4 reader with the filesystem's own inode numbers and full
//! metadata (nlink, ctime, rdev, xattrs), built to serve a FUSE tree at kernel speed.
//!
//! One module per on-disk structure: [`superblock`], [`group`] descriptors, [`inode`],
//! [`blockmap`] (extents and indirect maps), [`dir`] entries, [`xattr`]s, and the jbd2
//! [`journal`] (replayed in memory). Caches: recently used metadata blocks, each file's
//! flattened block map (a seek is a binary search, not a walk from the start), and each
//! directory's parsed entries with a name index.
//!
//! Supports extents, indirect maps, 64bit, flex_bg, meta_bg, htree and large_dir (read as plain
//! leaf blocks), inline_data, ea_inode, casefold (names as stored; lookups are exact), and
//! replays the journal. Refuses compression, encryption, dirdata and external journals.
//! Checksums are not verified: damage is caught by range checks instead.

mod blockmap;
mod dir;
mod group;
mod inode;
mod journal;
mod superblock;
mod xattr;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use self::blockmap::{BlockReader, Run};
use self::inode::{Inode, FLAG_EXTENTS, FLAG_INLINE_DATA};
use self::superblock::{Superblock, INCOMPAT_FILETYPE, INCOMPAT_RECOVER, RO_COMPAT_HUGE_FILE};
use super::{ByteSource, CorruptKind, DirEntry, FileKind, FsError, FsStats, ReadOnlyFs, Stat, Xattrs};

/// A directory's entries in order, and a name → position index.
struct DirListing {
    entries: Arc<Vec<DirEntry>>,
    by_name: HashMap<Vec<u8>, usize>,
}

/// An open ext2/3/4 filesystem.
pub struct Ext4 {
    source: Arc<dyn ByteSource>,
    sb: Superblock,
    inode_tables: Vec<u64>,
    /// Blocks replayed from the journal; consulted before the image.
    overlay: HashMap<u64, Arc<[u8]>>,
    blocks: Mutex<LruCache<u64, Arc<[u8]>>>,
    maps: Mutex<LruCache<u32, Arc<Vec<Run>>>>,
    dirs: Mutex<LruCache<u32, Arc<DirListing>>>,
}

/// Reads blocks of an `Ext4` without its caches (used while opening, before it exists).
struct RawBlocks<'a> {
    source: &'a dyn ByteSource,
    block_size: u32,
    blocks_count: u64,
    overlay: Option<&'a HashMap<u64, Arc<[u8]>>>,
}

impl BlockReader for RawBlocks<'_> {
    fn block(&self, blk: u64) -> Result<Arc<[u8]>, FsError> {
        if let Some(b) = self.overlay.and_then(|o| o.get(&blk)) {
            return Ok(Arc::clone(b));
        }
        if blk >= self.blocks_count {
            return Err(FsError::corrupt(CorruptKind::BlockMap, None, format!("block {blk} is beyond the end of the filesystem")));
        }
        let mut buf = vec![0u8; self.block_size as usize];
        self.source.read_exact_at(&mut buf, blk * u64::from(self.block_size))?;
        Ok(buf.into())
    }
    fn blocks_count(&self) -> u64 {
        self.blocks_count
    }
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(n).expect("non-zero")))
}

impl Ext4 {
    /// Opens the filesystem in `source`, replaying its journal in memory if it needs recovery.
    pub fn open(source: Arc<dyn ByteSource>) -> Result<Ext4, FsError> {
        let mut sbbuf = vec![0u8; 1024];
        source.read_exact_at(&mut sbbuf, 1024)?;
        let mut sb = Superblock::parse(&sbbuf)?;
        let size_blocks = source.size() / u64::from(sb.block_size);
        if sb.blocks_count > size_blocks {
            return Err(FsError::corrupt(
                CorruptKind::Superblock,
                None,
                format!("the superblock says {} blocks but the image holds {size_blocks}", sb.blocks_count),
            ));
        }
        let mut fs = Ext4::assemble(Arc::clone(&source), sb.clone(), HashMap::new())?;
        if sb.incompat & INCOMPAT_RECOVER != 0 && sb.journal_inum != 0 {
            let overlay = fs.replay_journal()?;
            if !overlay.is_empty() {
                // The superblock or descriptors may be among the replayed blocks.
                let sb_block = 1024 / u64::from(sb.block_size);
                if let Some(b) = overlay.get(&sb_block) {
                    let at = (1024 % sb.block_size) as usize;
                    sb = Superblock::parse(b.get(at..at + 1024).unwrap_or(&[]))?;
                }
                fs = Ext4::assemble(source, sb, overlay)?;
            }
        }
        Ok(fs)
    }

    fn assemble(source: Arc<dyn ByteSource>, sb: Superblock, overlay: HashMap<u64, Arc<[u8]>>) -> Result<Ext4, FsError> {
        let raw = RawBlocks { source: &*source, block_size: sb.block_size, blocks_count: sb.blocks_count, overlay: Some(&overlay) };
        let desc_blocks =
            group::descriptor_blocks(&sb).into_iter().map(|b| raw.block(b).map(|d| d.to_vec())).collect::<Result<Vec<_>, _>>()?;
        let inode_tables = group::inode_tables(&sb, &desc_blocks)?;
        Ok(Ext4 { source, sb, inode_tables, overlay, blocks: lru(4096), maps: lru(1024), dirs: lru(1024) })
    }

    fn replay_journal(&self) -> Result<HashMap<u64, Arc<[u8]>>, FsError> {
        let jinode = self.inode(self.sb.journal_inum)?;
        let runs = self.block_map(&jinode)?;
        struct J<'a> {
            fs: &'a Ext4,
            runs: Arc<Vec<Run>>,
        }
        impl journal::JournalReader for J<'_> {
            fn journal_block(&self, n: u64) -> Result<Arc<[u8]>, FsError> {
                match blockmap::find(&self.runs, n) {
                    Ok(i) => {
                        let r = self.runs[i];
                        self.fs.block(r.physical + (n - r.logical))
                    }
                    Err(_) => Err(FsError::corrupt(CorruptKind::Journal, None, format!("journal block {n} is not mapped"))),
                }
            }
        }
        journal::replay(&J { fs: self, runs }, self.sb.block_size)
    }

    fn block_size(&self) -> u64 {
        u64::from(self.sb.block_size)
    }

    /// A metadata block, through the overlay and the block cache.
    fn block(&self, blk: u64) -> Result<Arc<[u8]>, FsError> {
        if let Some(b) = self.blocks.lock().get(&blk) {
            return Ok(Arc::clone(b));
        }
        let raw = RawBlocks {
            source: &*self.source,
            block_size: self.sb.block_size,
            blocks_count: self.sb.blocks_count,
            overlay: Some(&self.overlay),
        };
        let b = raw.block(blk)?;
        self.blocks.lock().put(blk, Arc::clone(&b));
        Ok(b)
    }

    fn inode(&self, ino: u32) -> Result<Inode, FsError> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(FsError::NotFound);
        }
        let idx = u64::from(ino - 1);
        let group = (idx / u64::from(self.sb.inodes_per_group)) as usize;
        let within = idx % u64::from(self.sb.inodes_per_group);
        let table = *self.inode_tables.get(group).ok_or(FsError::NotFound)?;
        let isz = u64::from(self.sb.inode_size);
        let byte = within * isz;
        let blk = table + byte / self.block_size();
        let off = (byte % self.block_size()) as usize;
        let b = self.block(blk)?;
        Inode::parse(ino, &b[off..off + isz as usize])
    }

    fn block_map(&self, inode: &Inode) -> Result<Arc<Vec<Run>>, FsError> {
        if let Some(m) = self.maps.lock().get(&inode.ino) {
            return Ok(Arc::clone(m));
        }
        let runs = if inode.flags & FLAG_EXTENTS != 0 {
            blockmap::extent_runs(&inode.block, self, inode.ino)?
        } else {
            blockmap::indirect_runs(&inode.block, self, self.sb.block_size, inode.size, inode.ino)?
        };
        let runs = Arc::new(runs);
        self.maps.lock().put(inode.ino, Arc::clone(&runs));
        Ok(runs)
    }

    /// Reads `buf.len()` bytes of an inode's data at `offset` (within its size).
    fn read_data(&self, inode: &Inode, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        if inode.flags & FLAG_INLINE_DATA != 0 {
            let data = self.inline_data(inode)?;
            let start = offset as usize;
            let avail = data.get(start..).unwrap_or(&[]);
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            buf[n..].fill(0);
            return Ok(());
        }
        let runs = self.block_map(inode)?;
        let bs = self.block_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let lblk = pos / bs;
            let in_block = pos % bs;
            let want = buf.len() - done;
            match blockmap::find(&runs, lblk) {
                Ok(i) => {
                    let r = runs[i];
                    let run_bytes_left = (r.logical + r.len - lblk) * bs - in_block;
                    let n = (want as u64).min(run_bytes_left) as usize;
                    let dst = &mut buf[done..done + n];
                    if r.uninit {
                        dst.fill(0);
                    } else {
                        self.read_physical(r.physical + (lblk - r.logical), in_block, dst)?;
                    }
                    done += n;
                }
                Err(next) => {
                    let hole_end = runs.get(next).map_or(u64::MAX, |r| r.logical.saturating_mul(bs));
                    let n = (want as u64).min(hole_end - pos) as usize;
                    buf[done..done + n].fill(0);
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// Reads contiguous blocks from `blk` (+`in_block` bytes), honouring the journal overlay.
    fn read_physical(&self, blk: u64, in_block: u64, dst: &mut [u8]) -> Result<(), FsError> {
        let bs = self.block_size();
        if self.overlay.is_empty() {
            self.source.read_exact_at(dst, blk * bs + in_block)?;
            return Ok(());
        }
        let mut done = 0usize;
        let mut b = blk;
        let mut off = in_block;
        while done < dst.len() {
            let n = ((bs - off) as usize).min(dst.len() - done);
            match self.overlay.get(&b) {
                Some(data) => dst[done..done + n].copy_from_slice(&data[off as usize..off as usize + n]),
                None => self.source.read_exact_at(&mut dst[done..done + n], b * bs + off)?,
            }
            done += n;
            b += 1;
            off = 0;
        }
        Ok(())
    }

    fn raw_xattrs(&self, inode: &Inode) -> Result<Vec<xattr::RawXattr>, FsError> {
        let mut out = Vec::new();
        xattr::in_inode(inode.inline_xattr_area(), inode.ino, &mut out)?;
        if inode.file_acl != 0 {
            if inode.file_acl >= self.sb.blocks_count {
                return Err(FsError::corrupt(
                    CorruptKind::Xattr,
                    Some(u64::from(inode.ino)),
                    format!("inode {}: xattr block beyond the filesystem", inode.ino),
                ));
            }
            xattr::in_block(&self.block(inode.file_acl)?, inode.ino, &mut out)?;
        }
        Ok(out)
    }

    /// The value of one attribute. A value in an EA inode is read only up to the kernel's
    /// `XATTR_SIZE_MAX`: a larger one is damage, whatever size the entry claims.
    fn xattr_value(&self, owner: u32, x: &xattr::RawXattr) -> Result<Vec<u8>, FsError> {
        match x.value_inode {
            None => Ok(x.value.clone()),
            Some((ino, size)) => {
                if size as usize > crate::fsread::XATTR_SIZE_MAX {
                    return Err(FsError::corrupt(
                        CorruptKind::Xattr,
                        Some(u64::from(owner)),
                        format!("inode {owner}: an extended attribute claims {size} bytes, more than any attribute can hold"),
                    ));
                }
                let vi = self.inode(ino)?;
                let mut v = vec![0u8; size as usize];
                self.read_data(&vi, 0, &mut v)?;
                Ok(v)
            }
        }
    }

    /// The whole content of an inline-data inode: `i_block` then the `system.data` xattr.
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>, FsError> {
        let mut data = inode.block.to_vec();
        if let Some(x) = self.raw_xattrs(inode)?.into_iter().find(|x| x.name == b"system.data") {
            data.extend(self.xattr_value(inode.ino, &x)?);
        }
        data.truncate(inode.size.min(data.len() as u64) as usize);
        Ok(data)
    }

    fn listing(&self, ino: u32) -> Result<Arc<DirListing>, FsError> {
        if let Some(d) = self.dirs.lock().get(&ino) {
            return Ok(Arc::clone(d));
        }
        let inode = self.inode(ino)?;
        if inode.kind()? != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let mut raw = Vec::new();
        if inode.flags & FLAG_INLINE_DATA != 0 {
            let data = self.inline_data(&inode)?;
            // The first 4 bytes are the parent's inode; entries follow, then continue in the
            // xattr part (which starts at byte 60).
            let split = data.len().min(60);
            dir::parse_block(data.get(4..split).unwrap_or(&[]), filetype, ino, &mut raw)?;
            dir::parse_block(data.get(60..).unwrap_or(&[]), filetype, ino, &mut raw)?;
        } else {
            // Only the blocks the directory really has: its size is untrusted (a hostile 2^50
            // would otherwise be walked block by block as holes), its mapped blocks are not.
            let bs = self.block_size();
            let blocks = inode.size.div_ceil(bs);
            let mut buf = vec![0u8; bs as usize];
            for r in self.block_map(&inode)?.iter().filter(|r| !r.uninit) {
                for lblk in r.logical..(r.logical + r.len).min(blocks) {
                    self.read_physical(r.physical + (lblk - r.logical), 0, &mut buf)?;
                    dir::parse_block(&buf, filetype, ino, &mut raw)?;
                }
            }
        }
        let mut entries = Vec::with_capacity(raw.len());
        for e in raw {
            let kind = match dir::kind_of(e.file_type) {
                Some(k) => k,
                None => self.inode(e.ino)?.kind()?,
            };
            entries.push(DirEntry { name: e.name, ino: u64::from(e.ino), kind });
        }
        let by_name = entries.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
        let listing = Arc::new(DirListing { entries: Arc::new(entries), by_name });
        self.dirs.lock().put(ino, Arc::clone(&listing));
        Ok(listing)
    }
}

impl BlockReader for Ext4 {
    fn block(&self, blk: u64) -> Result<Arc<[u8]>, FsError> {
        Ext4::block(self, blk)
    }
    fn blocks_count(&self) -> u64 {
        self.sb.blocks_count
    }
}

fn ino32(ino: u64) -> Result<u32, FsError> {
    u32::try_from(ino).map_err(|_| FsError::NotFound)
}

impl ReadOnlyFs for Ext4 {
    fn kind(&self) -> &'static str {
        self.sb.kind()
    }

    fn inode_tables(&self) -> Option<super::InodeTables> {
        let bs = self.block_size();
        let per_group = u64::from(self.sb.inodes_per_group);
        Some(super::InodeTables {
            record_size: u64::from(self.sb.inode_size),
            tables: self
                .inode_tables
                .iter()
                .enumerate()
                .map(|(g, &blk)| (blk.saturating_mul(bs), g as u64 * per_group + 1, per_group))
                .collect(),
            replayed: self.overlay.keys().map(|&blk| (blk.saturating_mul(bs), bs)).collect(),
        })
    }

    fn inode_record(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let ino = u32::try_from(ino).map_err(|_| FsError::NotFound)?;
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(FsError::NotFound);
        }
        let idx = u64::from(ino - 1);
        let table = *self.inode_tables.get((idx / u64::from(self.sb.inodes_per_group)) as usize).ok_or(FsError::NotFound)?;
        let byte = (idx % u64::from(self.sb.inodes_per_group)) * u64::from(self.sb.inode_size);
        let b = self.block(table + byte / self.block_size())?;
        let off = (byte % self.block_size()) as usize;
        b.get(off..off + usize::from(self.sb.inode_size)).map(<[u8]>::to_vec).ok_or(FsError::NotFound)
    }

    fn root(&self) -> u64 {
        2
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        let i = self.inode(ino32(ino)?)?;
        let kind = i.kind()?;
        Ok(Stat {
            ino,
            kind,
            perm: i.mode & 0o7777,
            nlink: u32::from(i.links),
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            // Like the kernel: an inline-data file reports its bytes as sectors, so that tools
            // do not take it for a sparse file.
            blocks: i.blocks_512(self.sb.ro_compat & RO_COMPAT_HUGE_FILE != 0, self.sb.block_size)
                + if kind == FileKind::File && i.flags & FLAG_INLINE_DATA != 0 { i.size.div_ceil(512) } else { 0 },
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            crtime: i.crtime,
            rdev: if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) { i.rdev() } else { 0 },
        })
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, FsError> {
        let d = self.listing(ino32(dir)?)?;
        d.by_name.get(name).map(|&i| d.entries[i].ino).ok_or(FsError::NotFound)
    }

    fn read_dir(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        Ok(Arc::clone(&self.listing(ino32(dir)?)?.entries))
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let i = self.inode(ino32(ino)?)?;
        match i.kind()? {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::IsDir),
            _ => return Err(FsError::Invalid("not a regular file")),
        }
        if offset >= i.size {
            return Ok(0);
        }
        let n = (i.size - offset).min(buf.len() as u64) as usize;
        self.read_data(&i, offset, &mut buf[..n])?;
        Ok(n)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let i = self.inode(ino32(ino)?)?;
        if i.kind()? != FileKind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        if i.size > u64::from(self.sb.block_size) {
            return Err(FsError::corrupt(
                CorruptKind::Symlink,
                Some(u64::from(i.ino)),
                format!("symlink {} is longer than a block", i.ino),
            ));
        }
        let ea_blocks = if i.file_acl != 0 { self.block_size() / 512 } else { 0 };
        let data_blocks = i.blocks_512(false, self.sb.block_size).saturating_sub(ea_blocks);
        if i.flags & (FLAG_INLINE_DATA | FLAG_EXTENTS) == 0 && data_blocks == 0 {
            // A fast symlink: the target is stored in i_block.
            return Ok(i.block[..(i.size as usize).min(60)].to_vec());
        }
        let mut v = vec![0u8; i.size as usize];
        self.read_data(&i, 0, &mut v)?;
        Ok(v)
    }

    fn xattrs(&self, ino: u64) -> Result<Xattrs, FsError> {
        let i = self.inode(ino32(ino)?)?;
        let raw = self.raw_xattrs(&i)?;
        // `system.data` holds inline file data; the kernel does not list it.
        raw.iter().filter(|x| x.name != b"system.data").map(|x| Ok((x.name.clone(), self.xattr_value(i.ino, x)?))).collect()
    }

    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        let i = self.inode(ino32(ino)?)?;
        Ok(self.raw_xattrs(&i)?.into_iter().filter(|x| x.name != b"system.data").map(|x| x.name).collect())
    }

    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        if name == b"system.data" {
            return Ok(None);
        }
        let i = self.inode(ino32(ino)?)?;
        match self.raw_xattrs(&i)?.into_iter().find(|x| x.name == name) {
            Some(x) => self.xattr_value(i.ino, &x).map(Some),
            None => Ok(None),
        }
    }

    fn stats(&self) -> FsStats {
        FsStats {
            block_size: self.sb.block_size,
            blocks: self.sb.blocks_count,
            free_blocks: self.sb.free_blocks,
            files: u64::from(self.sb.inodes_count),
            free_files: u64::from(self.sb.free_inodes),
            name_max: 255,
        }
    }
}
