//! The checkpointed index: an immutable, sorted file of `(chunk, upper) → slot` records, written
//! whole by a merge and opened without being read whole.
//!
//! An open reads the header, the fence keys (the first key of every page, 12 bytes a page of
//! 255 records) and the free-slot bitmap: work proportional to the number of pages and slots
//! in bits, not to the records. A lookup is one binary search over the fences and one page,
//! read through the bounded [`PageCache`]: at most one read per lookup.
//!
//! Owns the file's byte layout and nothing else: which records go in is the merge's decision
//! ([`super::layered`]), when to write one is the engine's.
//!
//! ```text
//! header (HEADER_LEN = 4096 bytes, the first 76 used)
//!   0  magic        [u8; 8]  "SHCPINDX"
//!   8  version      u32      1
//!  12  page_len     u32      4096
//!  16  diff_area_id [u8;16]  the journal's
//!  32  generation   u64      the journal checkpoint that names this file carries the same
//!  40  entries      u64      records in the file
//!  48  pages        u32
//!  52  next_epoch   u32      the epoch the next copy gets (no epoch a record names is reused)
//!  56  high_water   u32      1 + the highest slot a record names (0: none)
//!  60  reserved     u32
//!  64  fences_crc   u32      crc32c of the fence table
//!  68  free_crc     u32      crc32c of the free bitmap
//!  72  crc32c       u32      of bytes 0..72
//! page p (at HEADER_LEN + p * PAGE_LEN)
//!   0  count        u16      1..=255 records
//!   2  reserved     u16
//!   4  crc32c       u32      of generation (u64 LE), p (u32 LE), then the records
//!   8  records      count × (chunk u64, upper u32, slot u32), ascending by (chunk, upper)
//! fence table (after the last page): pages × (chunk u64, upper u32): each page's first key
//! free bitmap (after the fences): ceil(high_water / 64) × u64; bit s set = slot s named by no record
//! ```

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::index::Entry;
use crate::bytes::le;
use crate::volume::Storage;
use crate::{DiffAreaError, DiffAreaPart};

/// Bytes of a page.
pub(crate) const PAGE_LEN: usize = 4096;
/// Records a page holds.
pub(crate) const PAGE_ENTRIES: usize = (PAGE_LEN - 8) / 16;
const HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"SHCPINDX";
const VERSION: u32 = 1;
const FENCE_LEN: usize = 12;

type Key = (u64, u32);
/// A page's records, shared between the cache and its readers.
type Page = Arc<[Entry]>;
/// A page in the cache: (generation of its checkpoint, page number).
type PageId = (u64, u32);

/// Pages of checkpointed indexes kept in memory, shared by every generation of one diff area
/// (keys carry the generation, so a merge needs no flush), with hit counters for `status`.
#[derive(Debug)]
pub struct PageCache {
    lru: Mutex<LruCache<PageId, Page>>,
    capacity_pages: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the page cache holds and how well it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageCacheStats {
    /// The most bytes of pages it keeps.
    pub capacity_bytes: u64,
    /// Bytes of pages it holds now.
    pub resident_bytes: u64,
    /// Lookups served from memory.
    pub hits: u64,
    /// Lookups that read a page from the file.
    pub misses: u64,
}

impl PageCache {
    /// A cache of at most `bytes` of pages (at least one page).
    pub fn new(bytes: u64) -> Self {
        let pages = usize::try_from(bytes / PAGE_LEN as u64).unwrap_or(usize::MAX).max(1);
        PageCache {
            lru: Mutex::new(LruCache::new(NonZeroUsize::new(pages).expect("at least one"))),
            capacity_pages: pages,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Its figures.
    pub fn stats(&self) -> PageCacheStats {
        PageCacheStats {
            capacity_bytes: (self.capacity_pages * PAGE_LEN) as u64,
            resident_bytes: (self.lru.lock().len() * PAGE_LEN) as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// An open checkpointed index (or the empty one a diff area starts with).
#[derive(Debug)]
pub(crate) struct BaseIndex {
    file: Option<Arc<dyn Storage>>,
    generation: u64,
    entries: u64,
    fences: Vec<Key>,
    next_epoch: u32,
    high_water: u32,
    cache: Arc<PageCache>,
}

/// The free-slot bitmap of a checkpoint: bit `s` set when no record of the file names slot `s`.
pub(crate) type FreeBitmap = Vec<u64>;

fn corrupt(offset: u64, detail: impl Into<String>) -> DiffAreaError {
    DiffAreaError::Corrupt { what: DiffAreaPart::Index, offset: Some(offset), detail: detail.into() }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> DiffAreaError {
    move |source| DiffAreaError::Io { what, source }
}

impl BaseIndex {
    /// The index of a diff area that has no checkpoint yet.
    pub(crate) fn empty(cache: Arc<PageCache>) -> Self {
        BaseIndex { file: None, generation: 0, entries: 0, fences: Vec::new(), next_epoch: 1, high_water: 0, cache }
    }

    /// Opens the file a journal checkpoint names; returns it with its free-slot bitmap.
    /// `store_slots` (the slots the store file holds) bounds what the header may claim.
    pub(crate) fn open(
        file: Arc<dyn Storage>,
        generation: u64,
        diff_area_id: [u8; 16],
        cache: Arc<PageCache>,
        store_slots: u64,
    ) -> Result<(Self, FreeBitmap), DiffAreaError> {
        let len = file.len().map_err(io("reading the index"))?;
        if len < HEADER_LEN {
            return Err(corrupt(0, format!("the file is {len} bytes, shorter than its header")));
        }
        let mut h = vec![0u8; 76];
        file.read_at(&mut h, 0).map_err(io("reading the index"))?;
        if &h[0..8] != MAGIC {
            return Err(corrupt(0, "not a shadowcopy index (bad magic)"));
        }
        if crc32c::crc32c(&h[0..72]) != le::u32(&h, 72) {
            return Err(corrupt(0, "header checksum mismatch"));
        }
        let version = le::u32(&h, 8);
        if version != VERSION || le::u32(&h, 12) as usize != PAGE_LEN {
            return Err(corrupt(0, format!("version {version} or page length not understood")));
        }
        if h[16..32] != diff_area_id {
            return Err(corrupt(0, "the file belongs to another diff area"));
        }
        let found = le::u64(&h, 32);
        if found != generation {
            return Err(corrupt(0, format!("generation {found} where the journal names {generation}")));
        }
        let entries = le::u64(&h, 40);
        let pages = le::u32(&h, 48);
        let high_water = le::u32(&h, 56);
        // Each record names its own slot, every slot it names is in the store: this bounds the
        // memory the header can make an open take by what the store holds.
        if entries > u64::from(high_water) || u64::from(high_water) > store_slots {
            return Err(corrupt(
                0,
                format!(
                    "{entries} records naming slots up to {high_water}, with {store_slots} slots in the store (was the store file cut?)"
                ),
            ));
        }
        let fences_at = HEADER_LEN + u64::from(pages) * PAGE_LEN as u64;
        let fences_len = pages as usize * FENCE_LEN;
        let words = (high_water as usize).div_ceil(64);
        // Sizes come from a checksummed header, and are checked against the file before any
        // allocation they drive.
        let need = fences_at + fences_len as u64 + words as u64 * 8;
        if need > len || entries > u64::from(pages) * PAGE_ENTRIES as u64 || entries < u64::from(pages) {
            return Err(corrupt(
                0,
                format!("the header describes {need} bytes and {entries} records in {pages} pages; the file has {len} bytes"),
            ));
        }
        let mut raw = vec![0u8; fences_len];
        file.read_at(&mut raw, fences_at).map_err(io("reading the index"))?;
        if crc32c::crc32c(&raw) != le::u32(&h, 64) {
            return Err(corrupt(fences_at, "fence table checksum mismatch"));
        }
        let fences: Vec<Key> = raw.chunks_exact(FENCE_LEN).map(|f| (le::u64(f, 0), le::u32(f, 8))).collect();
        if fences.windows(2).any(|w| w[0] >= w[1]) {
            return Err(corrupt(fences_at, "fence keys out of order"));
        }
        drop(raw);
        let free_at = fences_at + fences_len as u64;
        let mut raw = vec![0u8; words * 8];
        file.read_at(&mut raw, free_at).map_err(io("reading the index"))?;
        if crc32c::crc32c(&raw) != le::u32(&h, 68) {
            return Err(corrupt(free_at, "free-slot bitmap checksum mismatch"));
        }
        let free = raw.chunks_exact(8).map(|w| le::u64(w, 0)).collect();
        let base = BaseIndex { file: Some(file), generation, entries, fences, next_epoch: le::u32(&h, 52), high_water, cache };
        Ok((base, free))
    }

    /// Records in the file.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    /// The epoch the next copy gets, as the checkpoint knew it.
    pub(crate) fn next_epoch(&self) -> u32 {
        self.next_epoch
    }

    /// 1 + the highest slot a record names.
    pub(crate) fn high_water(&self) -> u32 {
        self.high_water
    }

    /// Bytes the file takes.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.file.as_ref().and_then(|f| f.len().ok()).unwrap_or(0)
    }

    /// Bytes it keeps in memory besides the cache.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.fences.capacity() * std::mem::size_of::<Key>()
    }

    fn pages(&self) -> u32 {
        self.fences.len() as u32
    }

    /// Page `p`, from the cache or the file.
    fn page(&self, p: u32) -> Result<Arc<[Entry]>, DiffAreaError> {
        if let Some(page) = self.cache.lru.lock().get(&(self.generation, p)).cloned() {
            self.cache.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(page);
        }
        self.cache.misses.fetch_add(1, Ordering::Relaxed);
        let page = self.read_page(p)?;
        self.cache.lru.lock().put((self.generation, p), Arc::clone(&page));
        Ok(page)
    }

    /// Page `p` from the file, checked against its checksum and its fence.
    fn read_page(&self, p: u32) -> Result<Arc<[Entry]>, DiffAreaError> {
        let file = self.file.as_ref().ok_or_else(|| corrupt(0, "page of an empty index"))?;
        let at = HEADER_LEN + u64::from(p) * PAGE_LEN as u64;
        let mut b = vec![0u8; PAGE_LEN];
        file.read_at(&mut b, at).map_err(io("reading an index page"))?;
        let count = le::u16(&b, 0) as usize;
        if count == 0 || count > PAGE_ENTRIES {
            return Err(corrupt(at, format!("page {p} claims {count} records")));
        }
        let body = &b[8..8 + count * 16];
        if page_crc(self.generation, p, body) != le::u32(&b, 4) {
            return Err(corrupt(at, format!("page {p}: checksum mismatch")));
        }
        let entries: Arc<[Entry]> =
            body.chunks_exact(16).map(|r| Entry { chunk: le::u64(r, 0), upper: le::u32(r, 8), slot: le::u32(r, 12) }).collect();
        let in_order = entries.windows(2).all(|w| w[0].key() < w[1].key());
        let next_fence = self.fences.get(p as usize + 1);
        if !in_order || entries[0].key() != self.fences[p as usize] || next_fence.is_some_and(|f| entries[count - 1].key() >= *f) {
            return Err(corrupt(at, format!("page {p}: records out of order or not matching the fence table")));
        }
        Ok(entries)
    }

    /// The page that holds `key` or the first key after it, when `key` is not before every page.
    fn page_of(&self, key: Key) -> Option<u32> {
        self.fences.partition_point(|f| *f <= key).checked_sub(1).map(|p| p as u32)
    }

    /// The first record with key `>= key`.
    pub(crate) fn first_at_or_after(&self, key: Key) -> Result<Option<Entry>, DiffAreaError> {
        let p = self.page_of(key).unwrap_or(0);
        if p >= self.pages() {
            return Ok(None);
        }
        let page = self.page(p)?;
        match page.get(page.partition_point(|e| e.key() < key)) {
            Some(e) => Ok(Some(*e)),
            None if p + 1 < self.pages() => Ok(self.page(p + 1)?.first().copied()),
            None => Ok(None),
        }
    }

    /// The last record with key `< key` (or `<= key` when `inclusive`).
    pub(crate) fn last_before(&self, key: Key, inclusive: bool) -> Result<Option<Entry>, DiffAreaError> {
        let p = self.fences.partition_point(|f| if inclusive { *f <= key } else { *f < key });
        let Some(p) = p.checked_sub(1) else { return Ok(None) };
        let page = self.page(p as u32)?;
        let end = page.partition_point(|e| if inclusive { e.key() <= key } else { e.key() < key });
        Ok(end.checked_sub(1).map(|i| page[i]))
    }

    /// A cursor over the records from `key` on, in key order, reading pages through the cache.
    pub(crate) fn cursor(&self, key: Key) -> BaseCursor<'_> {
        BaseCursor { base: self, page: self.page_of(key).unwrap_or(0), at: 0, loaded: None, from: Some(key) }
    }

    /// Records of the whole file, page by page, without the cache (for a merge).
    pub(crate) fn scan_pages(&self) -> impl Iterator<Item = Result<Arc<[Entry]>, DiffAreaError>> + '_ {
        (0..self.pages()).map(|p| self.read_page(p))
    }
}

/// See [`BaseIndex::cursor`].
pub(crate) struct BaseCursor<'a> {
    base: &'a BaseIndex,
    page: u32,
    at: usize,
    loaded: Option<Arc<[Entry]>>,
    from: Option<Key>,
}

impl BaseCursor<'_> {
    /// The record under the cursor.
    pub(crate) fn peek(&mut self) -> Result<Option<Entry>, DiffAreaError> {
        loop {
            if self.page >= self.base.pages() {
                return Ok(None);
            }
            if self.loaded.is_none() {
                let page = self.base.page(self.page)?;
                if let Some(key) = self.from.take() {
                    self.at = page.partition_point(|e| e.key() < key);
                }
                self.loaded = Some(page);
            }
            let page = self.loaded.as_ref().expect("loaded above");
            if let Some(e) = page.get(self.at) {
                return Ok(Some(*e));
            }
            self.page += 1;
            self.at = 0;
            self.loaded = None;
        }
    }

    /// Moves past the record under the cursor.
    pub(crate) fn advance(&mut self) {
        self.at += 1;
    }
}

fn page_crc(generation: u64, p: u32, body: &[u8]) -> u32 {
    let mut seed = [0u8; 12];
    seed[..8].copy_from_slice(&generation.to_le_bytes());
    seed[8..].copy_from_slice(&p.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&seed), body)
}

/// Writes a checkpointed index: records go in ascending key order; [`BaseWriter::finish`]
/// writes the fences, the bitmap and the header, and makes the file durable.
pub(crate) struct BaseWriter {
    file: Arc<dyn Storage>,
    generation: u64,
    diff_area_id: [u8; 16],
    page: Vec<Entry>,
    pages: u32,
    out: Vec<u8>,
    out_at: u64,
    fences: Vec<u8>,
    used: Vec<u64>,
    entries: u64,
    last: Option<Key>,
}

/// Bytes of pages gathered before one write.
const WRITE_BATCH: usize = 256 * PAGE_LEN;

impl BaseWriter {
    /// Starts a new file (its old content is dropped).
    pub(crate) fn new(file: Arc<dyn Storage>, generation: u64, diff_area_id: [u8; 16]) -> Result<Self, DiffAreaError> {
        file.set_len(0).map_err(io("writing the index"))?;
        Ok(BaseWriter {
            file,
            generation,
            diff_area_id,
            page: Vec::with_capacity(PAGE_ENTRIES),
            pages: 0,
            out: Vec::with_capacity(WRITE_BATCH),
            out_at: HEADER_LEN,
            fences: Vec::new(),
            used: Vec::new(),
            entries: 0,
            last: None,
        })
    }

    /// Adds the next record; keys must ascend.
    pub(crate) fn push(&mut self, e: Entry) -> Result<(), DiffAreaError> {
        debug_assert!(self.last.is_none_or(|k| k < e.key()), "records must ascend");
        self.last = Some(e.key());
        let word = e.slot as usize / 64;
        if self.used.len() <= word {
            self.used.resize(word + 1, 0);
        }
        self.used[word] |= 1 << (e.slot % 64);
        self.entries += 1;
        self.page.push(e);
        if self.page.len() == PAGE_ENTRIES {
            self.end_page()?;
        }
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), DiffAreaError> {
        if self.page.is_empty() {
            return Ok(());
        }
        let first = self.page[0];
        self.fences.extend_from_slice(&first.chunk.to_le_bytes());
        self.fences.extend_from_slice(&first.upper.to_le_bytes());
        let start = self.out.len();
        self.out.resize(start + PAGE_LEN, 0);
        let b = &mut self.out[start..];
        b[0..2].copy_from_slice(&(self.page.len() as u16).to_le_bytes());
        for (i, e) in self.page.iter().enumerate() {
            let r = &mut b[8 + i * 16..8 + (i + 1) * 16];
            r[0..8].copy_from_slice(&e.chunk.to_le_bytes());
            r[8..12].copy_from_slice(&e.upper.to_le_bytes());
            r[12..16].copy_from_slice(&e.slot.to_le_bytes());
        }
        let crc = page_crc(self.generation, self.pages, &b[8..8 + self.page.len() * 16]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        self.page.clear();
        self.pages += 1;
        if self.out.len() >= WRITE_BATCH {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<(), DiffAreaError> {
        self.file.write_at(&self.out, self.out_at).map_err(io("writing the index"))?;
        self.out_at += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Records pushed so far.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    /// Writes the rest and the header, and syncs; returns the high water of the slots named.
    pub(crate) fn finish(mut self, next_epoch: u32) -> Result<u64, DiffAreaError> {
        self.end_page()?;
        self.flush_out()?;
        let high_water =
            self.used.iter().enumerate().rev().find(|(_, w)| **w != 0).map_or(0, |(i, w)| i * 64 + 64 - w.leading_zeros() as usize);
        let words = high_water.div_ceil(64);
        let mut free = Vec::with_capacity(words * 8);
        for i in 0..words {
            let mut w = !self.used[i];
            if i == words - 1 && high_water % 64 != 0 {
                w &= (1u64 << (high_water % 64)) - 1;
            }
            free.extend_from_slice(&w.to_le_bytes());
        }
        let mut tail = std::mem::take(&mut self.fences);
        let fences_crc = crc32c::crc32c(&tail);
        let free_crc = crc32c::crc32c(&free);
        tail.extend_from_slice(&free);
        self.file.write_at(&tail, self.out_at).map_err(io("writing the index"))?;
        let mut h = vec![0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(PAGE_LEN as u32).to_le_bytes());
        h[16..32].copy_from_slice(&self.diff_area_id);
        h[32..40].copy_from_slice(&self.generation.to_le_bytes());
        h[40..48].copy_from_slice(&self.entries.to_le_bytes());
        h[48..52].copy_from_slice(&self.pages.to_le_bytes());
        h[52..56].copy_from_slice(&next_epoch.to_le_bytes());
        h[56..60].copy_from_slice(&(high_water as u32).to_le_bytes());
        h[64..68].copy_from_slice(&fences_crc.to_le_bytes());
        h[68..72].copy_from_slice(&free_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..72]);
        h[72..76].copy_from_slice(&crc.to_le_bytes());
        self.file.write_at(&h, 0).map_err(io("writing the index"))?;
        // One sync: the file is named by no journal until the checkpoint that follows it.
        self.file.sync_data().map_err(io("syncing the index"))?;
        Ok(high_water as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    fn write(entries: &[Entry], generation: u64) -> (Arc<dyn Storage>, u64) {
        let file: Arc<dyn Storage> = Arc::new(MemStorage::default());
        let mut w = BaseWriter::new(Arc::clone(&file), generation, [7; 16]).unwrap();
        entries.iter().for_each(|e| w.push(*e).unwrap());
        let hw = w.finish(99).unwrap();
        (file, hw)
    }

    fn sample(n: u64) -> Vec<Entry> {
        (0..n).map(|i| Entry { chunk: i / 3 * 5, upper: (i % 3) as u32 * 2 + 1, slot: (i * 7 % (n + 11)) as u32 }).collect()
    }

    #[test]
    fn lookups_match_a_sorted_list_across_pages() {
        let entries = sample(1000);
        let (file, _) = write(&entries, 3);
        let (base, _) = BaseIndex::open(file, 3, [7; 16], Arc::new(PageCache::new(2 * PAGE_LEN as u64)), 1 << 20).unwrap();
        assert_eq!(base.len(), 1000);
        assert_eq!(base.next_epoch(), 99);
        for probe in 0..(entries.last().unwrap().chunk + 3) {
            for upper in 0..8 {
                let key = (probe, upper);
                assert_eq!(base.first_at_or_after(key).unwrap(), entries.iter().find(|e| e.key() >= key).copied(), "{key:?}");
                assert_eq!(base.last_before(key, false).unwrap(), entries.iter().rev().find(|e| e.key() < key).copied());
                assert_eq!(base.last_before(key, true).unwrap(), entries.iter().rev().find(|e| e.key() <= key).copied());
            }
        }
        let mut c = base.cursor((100, 2));
        let mut got = Vec::new();
        while let Some(e) = c.peek().unwrap() {
            got.push(e);
            c.advance();
        }
        let want: Vec<Entry> = entries.iter().filter(|e| e.key() >= (100, 2)).copied().collect();
        assert_eq!(got, want);
        let stats = base.cache.stats();
        assert!(stats.hits > 0 && stats.misses > 0 && stats.resident_bytes <= 2 * PAGE_LEN as u64, "{stats:?}");
    }

    #[test]
    fn the_free_bitmap_is_the_complement_of_the_named_slots() {
        let entries =
            vec![Entry { chunk: 1, upper: 1, slot: 0 }, Entry { chunk: 2, upper: 1, slot: 3 }, Entry { chunk: 3, upper: 1, slot: 70 }];
        let (file, hw) = write(&entries, 1);
        assert_eq!(hw, 71);
        let (_, free) = BaseIndex::open(Arc::clone(&file), 1, [7; 16], Arc::new(PageCache::new(0)), 71).unwrap();
        assert!(BaseIndex::open(Arc::clone(&file), 1, [7; 16], Arc::new(PageCache::new(0)), 70).is_err(), "a store cut short");
        let is_free = |s: u32| free[s as usize / 64] >> (s % 64) & 1 == 1;
        assert!(!is_free(0) && !is_free(3) && !is_free(70));
        assert!(is_free(1) && is_free(2) && is_free(69));
        assert_eq!(free.len(), 2);
    }

    #[test]
    fn damage_is_an_error_never_a_wrong_answer() {
        let entries = sample(600);
        let (file, _) = write(&entries, 5);
        let cache = || Arc::new(PageCache::new(1 << 20));
        assert!(BaseIndex::open(Arc::clone(&file), 6, [7; 16], cache(), 1 << 20).is_err(), "another generation");
        assert!(BaseIndex::open(Arc::clone(&file), 5, [8; 16], cache(), 1 << 20).is_err(), "another diff area");
        // One flipped bit in the second page's records.
        let mut b = [0u8; 1];
        let at = HEADER_LEN + PAGE_LEN as u64 + 100;
        file.read_at(&mut b, at).unwrap();
        file.write_at(&[b[0] ^ 4], at).unwrap();
        let (base, _) = BaseIndex::open(Arc::clone(&file), 5, [7; 16], cache(), 1 << 20).unwrap();
        let key = entries[PAGE_ENTRIES + 3].key();
        assert!(matches!(base.first_at_or_after(key), Err(DiffAreaError::Corrupt { .. })));
        assert!(base.first_at_or_after(entries[3].key()).is_ok(), "the other pages still read");
        // A header that claims more than the file holds.
        file.set_len(HEADER_LEN + 10).unwrap();
        assert!(BaseIndex::open(file, 5, [7; 16], cache(), 1 << 20).is_err());
    }
}
