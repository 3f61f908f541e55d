//! Windows shadow copies: the VSS stores Windows keeps inside an NTFS volume, opened read-only
//! and served through the same [`Provider`] seam as our own engine.
//!
//! Owns parsing the catalog and the stores ([`format`]), each store's block map ([`blocks`]), and
//! reading a store's view of the volume: the stores are applied newest first on top of the
//! current volume, so reading an old store can pass through every newer one. Base-volume reads go
//! through the LRU [`ChunkCache`]. A damaged store (and every older store, which reads through
//! it) is reported with its error and cannot be read; the others stay readable. Never writes.
//!
//! Supported: VSS versions 1 and 2 (Vista to Windows 10), block descriptors with forwarders,
//! overlays and "not used" entries, current and previous bitmaps (blocks not in use read as
//! zeros, as libvshadow does). Not supported: Windows 2003 shadow copies (no stores), the store
//! block range list (not needed for reading), and writing.

mod blocks;
mod format;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use self::blocks::{Bitmap, BlockMap};
use self::format::{BlockDescriptor, BlockHeader, CatalogEntry, StoreEntry, StoreLocation, BLOCK_HEADER_SIZE, BLOCK_SIZE};
use crate::cache::ChunkCache;
use crate::error::Error;
use crate::fsread::ByteSource;
use crate::provider::Provider;
use crate::CopyInfo;

/// Blocks a chain may have at most (a damaged chain can loop).
const MAX_CHAIN: usize = 1 << 16;

/// A Windows shadow copy as found on the volume.
#[derive(Debug, Clone)]
pub struct WindowsCopy {
    /// 1 = oldest.
    pub index: u32,
    /// The store's id.
    pub store_id: Uuid,
    /// The copy's id (as Windows shows it).
    pub copy_id: Uuid,
    /// Its set's id.
    pub set_id: Uuid,
    /// When Windows took it.
    pub created: SystemTime,
    /// `VSS_VOLSNAP_ATTR_*` flags.
    pub attributes: u32,
    /// The volume's size the store was made for.
    pub volume_size: u64,
    /// Why it cannot be read, if it cannot.
    pub damage: Option<String>,
}

/// Where a piece of a store's view comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A block not in use at the time: zeros (as libvshadow gives).
    Zero,
    /// These bytes of the base volume.
    Base(u64),
}

struct Store {
    copy: WindowsCopy,
    map: BlockMap,
    current: Bitmap,
    previous: Option<Bitmap>,
}

/// The VSS stores of one volume.
pub struct WindowsStores {
    base: Arc<dyn ByteSource>,
    cache: ChunkCache,
    size: u64,
    /// Oldest first.
    stores: Vec<Store>,
    /// A catalog that could not be read at all.
    pub catalog_damage: Option<String>,
}

impl std::fmt::Debug for WindowsStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowsStores").field("stores", &self.stores.len()).field("catalog_damage", &self.catalog_damage).finish()
    }
}

fn read_block(base: &dyn ByteSource, offset: u64) -> Result<Vec<u8>, String> {
    if offset == 0 || !offset.is_multiple_of(512) || offset.checked_add(BLOCK_SIZE).is_none_or(|end| end > base.size()) {
        return Err(format!("block offset {offset:#x} is outside the volume"));
    }
    let mut b = vec![0u8; BLOCK_SIZE as usize];
    base.read_exact_at(&mut b, offset).map_err(|e| format!("reading block {offset:#x}: {e}"))?;
    Ok(b)
}

/// Follows a chain of blocks of one record type from `first`, handing each block to `each`.
fn walk_chain(base: &dyn ByteSource, first: u64, record: u32, what: &str, each: &mut dyn FnMut(&[u8])) -> Result<(), String> {
    let mut at = first;
    let mut seen = std::collections::HashSet::new();
    while at != 0 {
        if !seen.insert(at) || seen.len() > MAX_CHAIN {
            return Err(format!("the {what} chain loops at {at:#x}"));
        }
        let b = read_block(base, at).map_err(|e| format!("{what}: {e}"))?;
        let h = BlockHeader::parse(&b, record).map_err(|e| format!("{what} block at {at:#x}: {e}"))?;
        each(&b);
        at = h.next;
    }
    Ok(())
}

impl WindowsStores {
    /// Reads the VSS catalog and stores of the NTFS volume in `base`. `Ok(None)`: no VSS header.
    /// A damaged catalog or store is reported in the result, not as an error.
    pub fn open(base: Arc<dyn ByteSource>, cache_blocks: usize) -> Result<Option<WindowsStores>, Error> {
        let size = base.size();
        let mut header = vec![0u8; 512];
        if size < format::VOLUME_HEADER_OFFSET + 512 {
            return Ok(None);
        }
        base.read_exact_at(&mut header, format::VOLUME_HEADER_OFFSET).map_err(Error::volume("reading the VSS volume header"))?;
        let mut me =
            WindowsStores { base: Arc::clone(&base), cache: ChunkCache::new(cache_blocks), size, stores: Vec::new(), catalog_damage: None };
        let header = match format::VolumeHeader::parse(&header) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => {
                me.catalog_damage = Some(e);
                return Ok(Some(me));
            }
        };
        if header.catalog_offset == 0 {
            return Ok(Some(me));
        }
        let mut entries: HashMap<Uuid, StoreEntry> = HashMap::new();
        let mut locations: HashMap<Uuid, StoreLocation> = HashMap::new();
        let walked = walk_chain(&*base, header.catalog_offset, format::RECORD_CATALOG, "catalog", &mut |b| {
            for e in b[BLOCK_HEADER_SIZE..].chunks_exact(128) {
                match format::catalog_entry(e) {
                    CatalogEntry::Store(s) => {
                        entries.insert(s.store_id, s);
                    }
                    CatalogEntry::Location(l) => {
                        locations.insert(l.store_id, l);
                    }
                    CatalogEntry::Other => {}
                }
            }
        });
        if let Err(e) = walked {
            me.catalog_damage = Some(e);
            return Ok(Some(me));
        }
        let mut found: Vec<(StoreEntry, StoreLocation)> =
            entries.into_iter().filter_map(|(id, e)| locations.get(&id).map(|l| (e, *l))).collect();
        found.sort_by_key(|(e, _)| (e.created, e.sequence));
        for (i, (entry, loc)) in found.into_iter().enumerate() {
            let store = Self::load_store(&*base, i as u32 + 1, entry, loc);
            if let Some(reason) = &store.copy.damage {
                tracing::warn!(store = %store.copy.store_id, %reason, "a Windows shadow copy store is damaged");
            }
            me.stores.push(store);
        }
        // Reading a store passes through every newer store: a damaged one spoils the older ones.
        for i in (0..me.stores.len()).rev() {
            if let Some(newer) = me.stores.get(i + 1) {
                if newer.copy.damage.is_some() && me.stores[i].copy.damage.is_none() {
                    me.stores[i].copy.damage =
                        Some(format!("it reads through the newer Windows shadow copy {}, which is damaged", newer.copy.copy_id));
                }
            }
        }
        Ok(Some(me))
    }

    fn load_store(base: &dyn ByteSource, index: u32, entry: StoreEntry, loc: StoreLocation) -> Store {
        let mut copy = WindowsCopy {
            index,
            store_id: entry.store_id,
            copy_id: Uuid::nil(),
            set_id: Uuid::nil(),
            created: format::filetime(entry.created),
            attributes: 0,
            volume_size: entry.volume_size,
            damage: None,
        };
        let mut map = BlockMap::default();
        let mut current = Bitmap::default();
        let mut previous = None;
        let r = (|| -> Result<(), String> {
            let h = read_block(base, loc.header).map_err(|e| format!("store header: {e}"))?;
            BlockHeader::parse(&h, format::RECORD_STORE_HEADER).map_err(|e| format!("store header: {e}"))?;
            let info = format::store_info(&h);
            copy.copy_id = info.copy_id;
            copy.set_id = info.set_id;
            copy.attributes = info.attributes;
            let mut descriptors: Vec<BlockDescriptor> = Vec::new();
            walk_chain(base, loc.block_list, format::RECORD_BLOCK_LIST, "block list", &mut |b| {
                descriptors.extend(b[BLOCK_HEADER_SIZE..].chunks_exact(32).filter_map(BlockDescriptor::parse));
            })?;
            for d in descriptors {
                if d.original % BLOCK_SIZE != 0 || d.original >= base.size() {
                    return Err(format!("a block descriptor names offset {:#x}, outside the volume or unaligned", d.original));
                }
                map.insert(d);
            }
            walk_chain(base, loc.current_bitmap, format::RECORD_BITMAP, "current bitmap", &mut |b| {
                current.0.extend_from_slice(&b[BLOCK_HEADER_SIZE..])
            })?;
            if loc.previous_bitmap != 0 {
                let mut p = Bitmap::default();
                walk_chain(base, loc.previous_bitmap, format::RECORD_BITMAP, "previous bitmap", &mut |b| {
                    p.0.extend_from_slice(&b[BLOCK_HEADER_SIZE..])
                })?;
                previous = Some(p);
            }
            Ok(())
        })();
        if let Err(e) = r {
            copy.damage = Some(e);
        }
        Store { copy, map, current, previous }
    }

    /// The copies, oldest first (damaged ones included, with their damage).
    pub fn copies(&self) -> Vec<WindowsCopy> {
        self.stores.iter().map(|s| s.copy.clone()).collect()
    }

    /// Reads the base (current) volume through the block cache.
    fn read_base(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let block = at / BLOCK_SIZE;
            let within = (at % BLOCK_SIZE) as usize;
            let n = (BLOCK_SIZE as usize - within).min(buf.len() - done);
            let data = match self.cache.get(block) {
                Some(d) => d,
                None => {
                    let start = block * BLOCK_SIZE;
                    let len = (self.size.saturating_sub(start)).min(BLOCK_SIZE) as usize;
                    let mut b = vec![0u8; len];
                    self.base.read_exact_at(&mut b, start).map_err(Error::volume("reading the volume under a Windows shadow copy"))?;
                    let d: Arc<[u8]> = b.into();
                    self.cache.insert(block, Arc::clone(&d));
                    d
                }
            };
            let avail = data.len().saturating_sub(within).min(n);
            if avail < n {
                return Err(Error::OutOfRange { offset: at, len: n as u64, size: self.size });
            }
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(())
    }

    /// Where the bytes of store `i`'s view at `at` come from, on behalf of the store the caller
    /// asked for (`active`), and for how many bytes (at most `max`) that holds.
    fn resolve(&self, i: usize, active: usize, at: u64, max: u64) -> (Source, u64) {
        let store = &self.stores[i];
        let next = i + 1 < self.stores.len();
        let within = at % BLOCK_SIZE;
        let mut run = BLOCK_SIZE - within;
        let mut desc: Option<&BlockDescriptor> = store.map.at(at);
        let mut from = desc.map(|d| if d.is_forwarder() { d.relative } else { d.store });
        if let Some(d) = desc {
            let overlay = if d.is_overlay() { Some(d) } else { d.overlay.as_deref() };
            if let Some(ov) = overlay {
                if i != active {
                    // Overlays apply to the store being read only.
                    if d.is_overlay() {
                        desc = None;
                    }
                } else {
                    let sector = (within / 512) as u32;
                    let bits = ov.bitmap.checked_shr(sector).unwrap_or(0);
                    let set = bits & 1 != 0;
                    // Sectors from here in the same state: one source.
                    let same = if set { bits.trailing_ones() } else { bits.trailing_zeros() }.min(32 - sector);
                    run = u64::from(same) * 512 - within % 512;
                    if set {
                        desc = Some(ov);
                        from = Some(ov.store);
                    } else if d.is_overlay() {
                        desc = None;
                    }
                }
            }
        }
        let n = run.min(max);
        match desc {
            Some(d) => {
                let from = from.unwrap_or(0) + within;
                if d.is_forwarder() && next {
                    self.resolve(i + 1, active, from, n)
                } else {
                    (Source::Base(from), n)
                }
            }
            None if next => self.resolve(i + 1, active, at, n),
            None => {
                let unused = i == active
                    && !store.map.forwarded_to(at)
                    && store.current.is_set(at)
                    && store.previous.as_ref().is_none_or(|p| p.is_set(at));
                (if unused { Source::Zero } else { Source::Base(at) }, n)
            }
        }
    }

    /// Reads store `i`'s view: each piece resolved to its final source, and pieces that continue
    /// one another on the base volume read with one call (long runs bypass the block cache).
    fn read_store(&self, i: usize, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let mut done = 0usize;
        // A pending run of base bytes: (position in buf, base offset, length).
        let mut pending: Option<(usize, u64, usize)> = None;
        let flush = |p: Option<(usize, u64, usize)>, buf: &mut [u8]| -> Result<(), Error> {
            match p {
                Some((at, from, len)) if len > BLOCK_SIZE as usize => self
                    .base
                    .read_exact_at(&mut buf[at..at + len], from)
                    .map_err(Error::volume("reading the volume under a Windows shadow copy")),
                Some((at, from, len)) => self.read_base(&mut buf[at..at + len], from),
                None => Ok(()),
            }
        };
        while done < buf.len() {
            let (source, n) = self.resolve(i, i, offset + done as u64, (buf.len() - done) as u64);
            let n = n as usize;
            match source {
                Source::Zero => {
                    flush(pending.take(), buf)?;
                    buf[done..done + n].fill(0);
                }
                Source::Base(from) => match &mut pending {
                    Some((_, start, len)) if *start + *len as u64 == from => *len += n,
                    _ => {
                        flush(pending.take(), buf)?;
                        pending = Some((done, from, n));
                    }
                },
            }
            done += n;
        }
        flush(pending, buf)
    }

    fn index_of(&self, id: Uuid) -> Result<usize, Error> {
        let i = self.stores.iter().position(|s| s.copy.copy_id == id).ok_or(Error::NoSuchCopy(id))?;
        if let Some(reason) = &self.stores[i].copy.damage {
            return Err(Error::CopyFailed { id, reason: reason.clone() });
        }
        Ok(i)
    }
}

impl Provider for WindowsStores {
    fn name(&self) -> &'static str {
        "windows-vss"
    }

    fn volume_size(&self) -> u64 {
        self.size
    }

    fn copies(&self) -> Vec<CopyInfo> {
        self.stores
            .iter()
            .map(|s| CopyInfo {
                id: s.copy.copy_id,
                set_id: s.copy.set_id,
                epoch: s.copy.index,
                created: s.copy.created,
                persistent: s.copy.attributes & 1 != 0,
                attributes: s.copy.attributes,
                set_size: 1,
                failed: s.copy.damage.clone(),
                stale: None,
            })
            .collect()
    }

    fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let i = self.index_of(id)?;
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.size => self.read_store(i, buf, offset),
            _ => Err(Error::OutOfRange { offset, len: buf.len() as u64, size: self.size }),
        }
    }

    fn delete_copy(&self, id: Uuid) -> Result<CopyInfo, Error> {
        Err(Error::Unavailable(format!("{id} is a Windows shadow copy on a read-only volume; shadowcopy does not change Windows' stores")))
    }
}
