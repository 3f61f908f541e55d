//! The in-memory index of preserved chunks: `(chunk, upper epoch) → slot`, kept sorted.
//!
//! A record `(chunk, upper) → slot` says: the slot holds the chunk's content for every shadow
//! copy whose epoch lies in `(upper of the previous record of that chunk, upper]`. A lookup for
//! copy `k` is "the first record of the chunk with `upper ≥ k`": one binary search, whatever the
//! number of copies.
//!
//! Stored as a sorted list of pages of 16-byte entries (a two-level B-tree without the pointer
//! overhead of `BTreeMap`), so that RAM per preserved chunk stays near 16–24 bytes.
//! Owns no policy: which records are garbage is [`super::catalog`]'s decision.

/// One preserved chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The chunk of the volume.
    pub chunk: u64,
    /// The newest copy epoch this record serves (it serves every copy from the previous record's `upper` up to this one).
    pub upper: u32,
    /// The store slot holding the chunk's old content.
    pub slot: u32,
}

impl Entry {
    /// The sort key: `(chunk, upper)`.
    pub fn key(&self) -> (u64, u32) {
        (self.chunk, self.upper)
    }
}

const PAGE_CAP: usize = 512;

/// Sorted `(chunk, upper) → slot` map.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    pages: Vec<Vec<Entry>>,
    len: usize,
}

impl ChunkIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held by the index.
    pub fn heap_bytes(&self) -> usize {
        self.pages.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self.pages.iter().map(|p| p.capacity() * std::mem::size_of::<Entry>()).sum::<usize>()
    }

    /// The page that holds `key` or where it would go.
    fn page_for(&self, key: (u64, u32)) -> usize {
        let i = self.pages.partition_point(|p| p.last().is_some_and(|e| e.key() < key));
        i.min(self.pages.len().saturating_sub(1))
    }

    /// Inserts or replaces; returns the slot a replaced record had.
    pub fn insert(&mut self, entry: Entry) -> Option<u32> {
        if self.pages.is_empty() {
            self.pages.push(new_page(entry));
            self.len = 1;
            return None;
        }
        let p = self.page_for(entry.key());
        let page = &mut self.pages[p];
        match page.binary_search_by_key(&entry.key(), Entry::key) {
            Ok(i) => Some(std::mem::replace(&mut page[i], entry).slot),
            Err(i) => {
                self.len += 1;
                if page.len() < PAGE_CAP {
                    page.insert(i, entry);
                } else if i == page.len() {
                    // Appending past a full page: start a fresh one so sequential inserts fill pages.
                    self.pages.insert(p + 1, new_page(entry));
                } else {
                    let mut right = Vec::with_capacity(PAGE_CAP);
                    right.extend(page.drain(PAGE_CAP / 2..));
                    if i <= page.len() {
                        page.insert(i, entry);
                    } else {
                        right.insert(i - page.len(), entry);
                    }
                    self.pages.insert(p + 1, right);
                }
                None
            }
        }
    }

    /// Removes a record; returns its slot.
    pub fn remove(&mut self, chunk: u64, upper: u32) -> Option<u32> {
        if self.pages.is_empty() {
            return None;
        }
        let p = self.page_for((chunk, upper));
        let page = &mut self.pages[p];
        let i = page.binary_search_by_key(&(chunk, upper), Entry::key).ok()?;
        let e = page.remove(i);
        if page.is_empty() {
            self.pages.remove(p);
        }
        self.len -= 1;
        Some(e.slot)
    }

    /// The first record of `chunk` with `upper ≥ epoch`: the one that serves copy `epoch`.
    pub fn covering(&self, chunk: u64, epoch: u32) -> Option<Entry> {
        if self.pages.is_empty() {
            return None;
        }
        let p = self.page_for((chunk, epoch));
        let page = &self.pages[p];
        let i = page.partition_point(|e| e.key() < (chunk, epoch));
        let e = match page.get(i) {
            Some(e) => *e,
            None => *self.pages.get(p + 1)?.first()?,
        };
        (e.chunk == chunk).then_some(e)
    }

    /// The record of `chunk` with the highest `upper`.
    pub fn last_of(&self, chunk: u64) -> Option<Entry> {
        let (p, i) = self.position_before((chunk, u32::MAX))?;
        let e = self.pages[p][i];
        (e.chunk == chunk).then_some(e)
    }

    /// The `upper` of the record of `chunk` just before `upper` (0 if none): the exclusive lower
    /// bound of the epochs that record `(chunk, upper)` serves.
    pub fn lower_bound(&self, chunk: u64, upper: u32) -> u32 {
        match self.position_before((chunk, upper)) {
            Some((p, i)) if self.pages[p][i].chunk == chunk && self.pages[p][i].upper < upper => self.pages[p][i].upper,
            _ => 0,
        }
    }

    /// The first record with key `>= key`.
    pub fn first_at_or_after(&self, key: (u64, u32)) -> Option<Entry> {
        self.iter_from(key.0, key.1).next()
    }

    /// The record with exactly this key.
    pub fn get(&self, key: (u64, u32)) -> Option<Entry> {
        self.first_at_or_after(key).filter(|e| e.key() == key)
    }

    /// The last record with key `< key` (or `<= key` when `inclusive`).
    pub fn last_before(&self, key: (u64, u32), inclusive: bool) -> Option<Entry> {
        if self.pages.is_empty() {
            return None;
        }
        let before = |e: &Entry| if inclusive { e.key() <= key } else { e.key() < key };
        let p = self.pages.partition_point(|pg| pg.first().is_some_and(&before));
        let page = &self.pages[p.checked_sub(1)?];
        page.iter().rev().find(|e| before(e)).copied()
    }

    /// Position of the last entry with key `< key`, or `== key` when `key.1 == u32::MAX`.
    fn position_before(&self, key: (u64, u32)) -> Option<(usize, usize)> {
        if self.pages.is_empty() {
            return None;
        }
        let inclusive = key.1 == u32::MAX;
        let p = self.page_for(key);
        let page = &self.pages[p];
        let i = page.partition_point(|e| if inclusive { e.key() <= key } else { e.key() < key });
        if i > 0 {
            Some((p, i - 1))
        } else if p > 0 {
            Some((p - 1, self.pages[p - 1].len() - 1))
        } else {
            None
        }
    }

    /// Records with key `>= (chunk, upper)`, in key order.
    pub fn iter_from(&self, chunk: u64, upper: u32) -> impl Iterator<Item = Entry> + '_ {
        let key = (chunk, upper);
        let (p, i) = if self.pages.is_empty() {
            (0, 0)
        } else {
            let p = self.page_for(key);
            (p, self.pages[p].partition_point(|e| e.key() < key))
        };
        self.pages.iter().skip(p).enumerate().flat_map(move |(n, page)| page[if n == 0 { i } else { 0 }..].iter().copied())
    }

    /// All records in key order.
    pub fn iter(&self) -> impl Iterator<Item = Entry> + '_ {
        self.pages.iter().flat_map(|p| p.iter().copied())
    }

    /// Keeps the records for which `keep(lower, entry)` is true, where `lower` is the `upper` of
    /// the chunk's previous record (0 if none) before this pass; returns the removed records.
    pub fn retain(&mut self, mut keep: impl FnMut(u32, &Entry) -> bool) -> Vec<Entry> {
        let mut removed = Vec::new();
        let mut prev: Option<Entry> = None;
        for page in &mut self.pages {
            page.retain(|e| {
                let lower = match prev {
                    Some(p) if p.chunk == e.chunk => p.upper,
                    _ => 0,
                };
                prev = Some(*e);
                let k = keep(lower, e);
                if !k {
                    removed.push(*e);
                }
                k
            });
        }
        self.pages.retain(|p| !p.is_empty());
        self.len -= removed.len();
        removed
    }
}

fn new_page(first: Entry) -> Vec<Entry> {
    let mut v = Vec::with_capacity(PAGE_CAP);
    v.push(first);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..4, 0u64..40, 1u32..30, 0u32..1000), 1..3000)) {
            let mut idx = ChunkIndex::new();
            let mut model: BTreeMap<(u64, u32), u32> = BTreeMap::new();
            for (op, chunk, upper, slot) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(idx.insert(Entry { chunk, upper, slot }), model.insert((chunk, upper), slot)),
                    2 => prop_assert_eq!(idx.remove(chunk, upper), model.remove(&(chunk, upper))),
                    _ => {
                        let want = model.range((chunk, upper)..=(chunk, u32::MAX)).next().map(|(k, v)| Entry { chunk: k.0, upper: k.1, slot: *v });
                        prop_assert_eq!(idx.covering(chunk, upper), want);
                        let last = model.range((chunk, 0)..=(chunk, u32::MAX)).next_back().map(|(k, v)| Entry { chunk: k.0, upper: k.1, slot: *v });
                        prop_assert_eq!(idx.last_of(chunk), last);
                        let lower = model.range((chunk, 0)..(chunk, upper)).next_back().map_or(0, |(k, _)| k.1);
                        prop_assert_eq!(idx.lower_bound(chunk, upper), lower);
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            let all: Vec<_> = idx.iter().map(|e| ((e.chunk, e.upper), e.slot)).collect();
            let want: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn sequential_inserts_fill_pages() {
        let mut idx = ChunkIndex::new();
        for c in 0..100_000u64 {
            idx.insert(Entry { chunk: c, upper: 1, slot: c as u32 });
        }
        let per_entry = idx.heap_bytes() as f64 / idx.len() as f64;
        assert!(per_entry < 17.0, "{per_entry} bytes per entry");
    }
}
