//! The index the catalog uses, `(chunk, upper) → slot`, kept as layers: the records added since
//! the last merge (in memory), the records a merge is writing out (in memory, frozen), and the
//! checkpointed file ([`super::base`], on disk through a bounded page cache).
//!
//! A record is live in the layer that holds it unless a newer layer lists its key as dead
//! (removed since), or it is in the checkpoint and names a slot that the journal's tail named
//! again (the slot was freed and reused before a crash: see `docs/design.md`, "Recovery").
//! Every answer is the one a single sorted map of the live records would give; the property
//! test below holds it to that.
//!
//! Owns no policy: which records are garbage, and which a merge keeps, are decided by
//! [`super::catalog`]. Never writes a file except through [`merge`].

use std::collections::HashSet;
use std::sync::Arc;

use super::base::{BaseIndex, BaseWriter};
use super::index::{ChunkIndex, Entry};
use crate::DiffAreaError;

type Key = (u64, u32);

/// Records added, and keys of older layers removed, since a point in time.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    records: ChunkIndex,
    /// Keys of older layers' records that are gone (the slot is the one they named).
    dead: ChunkIndex,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct LayeredIndex {
    active: Delta,
    frozen: Option<Arc<Delta>>,
    base: Arc<BaseIndex>,
    /// Slots the journal's tail named: a checkpoint record naming one is dead.
    hidden: Arc<HashSet<u32>>,
    len: u64,
}

/// What a merge works from, taken by [`LayeredIndex::freeze`]: immutable, read without locks.
#[derive(Debug, Clone)]
pub(crate) struct Frozen {
    delta: Arc<Delta>,
    base: Arc<BaseIndex>,
    hidden: Arc<HashSet<u32>>,
}

/// What a merge decides for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Into the checkpoint.
    Keep,
    /// Needed, but not after a restart (it serves volatile copies only): stays in memory.
    Carry,
    /// Garbage.
    Drop,
}

/// What a merge wrote, what stays in memory, and what it dropped.
#[derive(Debug)]
pub(crate) struct Merged {
    pub records: u64,
    pub carried: Vec<Entry>,
    /// Records of the frozen layer it dropped (as many as the layer: bounded by the journal's
    /// budget).
    pub dropped: Vec<Entry>,
    /// Slots of the checkpoint's records it dropped, as a bitmap (one bit a slot, however many
    /// records a deletion made garbage).
    pub dropped_slots: Vec<u64>,
}

/// What [`LayeredIndex::install`] hands back: the slots of dropped records, to be freed.
#[derive(Debug, Default)]
pub(crate) struct Freed {
    /// Dropped records of the frozen layer.
    pub records: Vec<Entry>,
    /// Slots of dropped checkpoint records (bit set: free it).
    pub slots: Vec<u64>,
}

impl LayeredIndex {
    /// The index over a checkpoint, with no record since.
    pub(crate) fn over(base: BaseIndex) -> Self {
        let len = base.len();
        LayeredIndex { active: Delta::default(), frozen: None, base: Arc::new(base), hidden: Arc::default(), len }
    }

    /// Hides the checkpoint's records that name one of `slots` (they were reused by the
    /// journal's tail); `named_by_checkpoint` of them are named by a checkpoint record.
    pub(crate) fn hide_slots(&mut self, slots: HashSet<u32>, named_by_checkpoint: u64) {
        debug_assert!(self.frozen.is_none() && self.active.dead.is_empty());
        self.len -= named_by_checkpoint;
        self.hidden = Arc::new(slots);
    }

    /// Live records.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The checkpoint under the layers.
    pub(crate) fn base(&self) -> &BaseIndex {
        &self.base
    }

    /// Heap bytes held in memory (the page cache apart).
    pub(crate) fn heap_bytes(&self) -> usize {
        let delta = |d: &Delta| d.records.heap_bytes() + d.dead.heap_bytes();
        delta(&self.active) + self.frozen.as_deref().map_or(0, delta) + self.base.heap_bytes() + self.hidden.capacity() * 8
    }

    fn base_live(&self, e: &Entry) -> bool {
        !self.hidden.contains(&e.slot)
            && self.frozen.as_ref().is_none_or(|f| f.dead.get(e.key()).is_none())
            && self.active.dead.get(e.key()).is_none()
    }

    fn frozen_live(&self, e: &Entry) -> bool {
        self.active.dead.get(e.key()).is_none()
    }

    /// The live record with this key in the frozen layer or the checkpoint.
    fn older(&self, key: Key) -> Result<Option<Entry>, DiffAreaError> {
        if let Some(f) = &self.frozen {
            if let Some(e) = f.records.get(key) {
                return Ok(Some(e).filter(|e| self.frozen_live(e)));
            }
        }
        Ok(self.base.first_at_or_after(key)?.filter(|e| e.key() == key && self.base_live(e)))
    }

    /// The first live record of `chunk` with key `>= key`.
    fn first_of_chunk(&self, key: Key) -> Result<Option<Entry>, DiffAreaError> {
        let chunk = key.0;
        let mut best = self.active.records.first_at_or_after(key).filter(|e| e.chunk == chunk);
        let mut consider = |e: Entry| {
            if best.is_none_or(|b| e.key() < b.key()) {
                best = Some(e);
            }
        };
        if let Some(f) = &self.frozen {
            if let Some(e) = f.records.iter_from(key.0, key.1).take_while(|e| e.chunk == chunk).find(|e| self.frozen_live(e)) {
                consider(e);
            }
        }
        let mut c = self.base.cursor(key);
        while let Some(e) = c.peek()? {
            if e.chunk != chunk {
                break;
            }
            if self.base_live(&e) {
                consider(e);
                break;
            }
            c.advance();
        }
        Ok(best)
    }

    /// The last live record of `chunk` with key `< key` (or `<= key` when `inclusive`).
    fn last_of_chunk(&self, key: Key, inclusive: bool) -> Result<Option<Entry>, DiffAreaError> {
        let chunk = key.0;
        let mut best = self.active.records.last_before(key, inclusive).filter(|e| e.chunk == chunk);
        let mut consider = |e: Entry| {
            if best.is_none_or(|b| e.key() > b.key()) {
                best = Some(e);
            }
        };
        if let Some(f) = &self.frozen {
            let (mut k, mut incl) = (key, inclusive);
            while let Some(e) = f.records.last_before(k, incl).filter(|e| e.chunk == chunk) {
                if self.frozen_live(&e) {
                    consider(e);
                    break;
                }
                (k, incl) = (e.key(), false);
            }
        }
        let (mut k, mut incl) = (key, inclusive);
        while let Some(e) = self.base.last_before(k, incl)?.filter(|e| e.chunk == chunk) {
            if self.base_live(&e) {
                consider(e);
                break;
            }
            (k, incl) = (e.key(), false);
        }
        Ok(best)
    }

    /// The first record of `chunk` with `upper ≥ epoch`: the one that serves copy `epoch`.
    pub(crate) fn covering(&self, chunk: u64, epoch: u32) -> Result<Option<Entry>, DiffAreaError> {
        self.first_of_chunk((chunk, epoch))
    }

    /// The record of `chunk` with the highest `upper`.
    pub(crate) fn last_of(&self, chunk: u64) -> Result<Option<Entry>, DiffAreaError> {
        self.last_of_chunk((chunk, u32::MAX), true)
    }

    /// The `upper` of the record of `chunk` just before `upper` (0 if none).
    pub(crate) fn lower_bound(&self, chunk: u64, upper: u32) -> Result<u32, DiffAreaError> {
        Ok(self.last_of_chunk((chunk, upper), false)?.map_or(0, |e| e.upper))
    }

    /// Inserts or replaces; returns the slot a replaced record had.
    pub(crate) fn insert(&mut self, entry: Entry) -> Result<Option<u32>, DiffAreaError> {
        if let Some(old) = self.active.records.get(entry.key()) {
            self.active.records.insert(entry);
            return Ok(Some(old.slot));
        }
        let older = self.older(entry.key())?;
        match older {
            Some(old) => {
                self.active.dead.insert(old);
            }
            None => self.len += 1,
        }
        self.active.records.insert(entry);
        Ok(older.map(|o| o.slot))
    }

    /// Inserts a record replayed from the journal's tail, whose key the checkpoint never holds
    /// (a checkpoint holds what was merged before the journal it names began); returns the slot
    /// of a replaced tail record. Reads no page.
    pub(crate) fn insert_replayed(&mut self, entry: Entry) -> Option<u32> {
        debug_assert!(self.frozen.is_none() && self.active.dead.is_empty());
        let old = self.active.records.insert(entry);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes a record; returns its slot.
    pub(crate) fn remove(&mut self, chunk: u64, upper: u32) -> Result<Option<u32>, DiffAreaError> {
        let removed = match self.active.records.remove(chunk, upper) {
            Some(slot) => Some(slot),
            None => self.older((chunk, upper))?.map(|old| {
                self.active.dead.insert(old);
                old.slot
            }),
        };
        if removed.is_some() {
            self.len -= 1;
        }
        Ok(removed)
    }

    /// Up to `budget` live records from `start` in key order, and the key to go on from.
    pub(crate) fn scan(&self, start: Key, budget: usize) -> Result<(Vec<Entry>, Option<Key>), DiffAreaError> {
        let mut out = Vec::with_capacity(budget.min(4096));
        let mut active = self.active.records.iter_from(start.0, start.1).peekable();
        let mut frozen = self.frozen.as_ref().map(|f| f.records.iter_from(start.0, start.1).filter(|e| self.frozen_live(e)).peekable());
        let mut base = self.base.cursor(start);
        loop {
            let b = loop {
                match base.peek()? {
                    Some(e) if !self.base_live(&e) => base.advance(),
                    other => break other,
                }
            };
            let a = active.peek().copied();
            let f = frozen.as_mut().and_then(|f| f.peek().copied());
            let Some(next) = [a, f, b].into_iter().flatten().min_by_key(Entry::key) else { return Ok((out, None)) };
            if out.len() == budget {
                return Ok((out, Some(next.key())));
            }
            out.push(next);
            if a == Some(next) {
                active.next();
            } else if f == Some(next) {
                frozen.as_mut().and_then(|f| f.next());
            } else {
                base.advance();
            }
        }
    }

    /// Every live record, in key order (reads the whole checkpoint: for whole-index questions).
    pub(crate) fn for_each(&self, mut f: impl FnMut(Entry)) -> Result<(), DiffAreaError> {
        let mut from = Some((0u64, 0u32));
        while let Some(start) = from {
            let (records, next) = self.scan(start, 4096)?;
            records.into_iter().for_each(&mut f);
            from = next;
        }
        Ok(())
    }

    /// The records held in memory (added since the last merge), in key order.
    pub(crate) fn for_each_in_memory(&self, f: impl FnMut(Entry)) {
        self.active.records.iter().for_each(f);
    }

    /// Removes a record held in the active layer (no page is read); returns its slot.
    pub(crate) fn remove_in_memory(&mut self, chunk: u64, upper: u32) -> Option<u32> {
        let slot = self.active.records.remove(chunk, upper)?;
        self.len -= 1;
        Some(slot)
    }

    /// Up to `budget` records held in the active layer from `start`, and the key to go on from.
    pub(crate) fn scan_in_memory(&self, start: Key, budget: usize) -> (Vec<Entry>, Option<Key>) {
        let mut it = self.active.records.iter_from(start.0, start.1);
        let out: Vec<Entry> = it.by_ref().take(budget).collect();
        (out, it.next().map(|e| e.key()))
    }

    /// Starts a merge: the records added so far become the frozen layer, read by [`merge`]
    /// without locks; new changes go to a fresh layer.
    pub(crate) fn freeze(&mut self) -> Frozen {
        assert!(self.frozen.is_none(), "one merge at a time");
        let delta = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(Arc::clone(&delta));
        Frozen { delta, base: Arc::clone(&self.base), hidden: Arc::clone(&self.hidden) }
    }

    /// Ends a merge: `base` (written by [`merge`] from what [`Self::freeze`] returned) replaces
    /// the frozen layer and the old checkpoint. Records the merge carried stay in memory, unless
    /// they were removed meanwhile. Returns the records the merge dropped that were still live:
    /// their slots are the caller's to free (those removed meanwhile were freed by whoever
    /// removed them).
    pub(crate) fn install(&mut self, base: BaseIndex, merged: Merged) -> Freed {
        let mut freed = Freed { records: Vec::new(), slots: merged.dropped_slots };
        if self.frozen.is_none() {
            // The index was cleared meanwhile (the diff area failed): nothing to install.
            return Freed::default();
        }
        for d in merged.dropped {
            if self.active.dead.remove(d.chunk, d.upper).is_none() {
                freed.records.push(d);
            }
        }
        // A dead key naming a dropped checkpoint slot is that record (a slot is named once).
        let dead: Vec<Entry> = self.active.dead.iter().collect();
        for d in dead {
            let (w, b) = (d.slot as usize / 64, d.slot % 64);
            if freed.slots.get(w).is_some_and(|x| x >> b & 1 == 1) {
                freed.slots[w] &= !(1 << b);
                self.active.dead.remove(d.chunk, d.upper);
            }
        }
        for c in merged.carried {
            if self.active.dead.remove(c.chunk, c.upper).is_none() && self.active.records.get(c.key()).is_none() {
                self.active.records.insert(c);
            }
        }
        self.base = Arc::new(base);
        self.frozen = None;
        self.hidden = Arc::default();
        self.len = self.base.len() + self.active.records.len() as u64 - self.active.dead.len() as u64;
        freed
    }

    /// Abandons a merge that failed: the frozen layer goes back under the active one.
    pub(crate) fn thaw(&mut self) {
        let Some(frozen) = self.frozen.take() else { return };
        let frozen = Arc::try_unwrap(frozen)
            .unwrap_or_else(|shared| Delta { records: shared.records.iter().collect_index(), dead: shared.dead.iter().collect_index() });
        let newer = std::mem::replace(&mut self.active, frozen);
        for d in newer.dead.iter() {
            if self.active.records.remove(d.chunk, d.upper).is_none() {
                self.active.dead.insert(d);
            }
        }
        for r in newer.records.iter() {
            self.active.records.insert(r);
        }
    }
}

trait CollectIndex {
    fn collect_index(self) -> ChunkIndex;
}

impl<I: Iterator<Item = Entry>> CollectIndex for I {
    fn collect_index(self) -> ChunkIndex {
        let mut idx = ChunkIndex::new();
        self.for_each(|e| {
            idx.insert(e);
        });
        idx
    }
}

/// Writes a new checkpoint from `frozen`: the old checkpoint's live records merged with the
/// frozen layer, each one kept, carried or dropped by `fate(lower, record)` (`lower`: the
/// `upper` of the chunk's previous record, 0 if none).
pub(crate) fn merge(
    frozen: &Frozen,
    mut writer: BaseWriter,
    next_epoch: u32,
    mut fate: impl FnMut(u32, &Entry) -> Fate,
) -> Result<(Merged, u64), DiffAreaError> {
    let mut out = Merged { records: 0, carried: Vec::new(), dropped: Vec::new(), dropped_slots: Vec::new() };
    let mut prev: Option<Entry> = None;
    let mut step = |e: Entry, from_base: bool, writer: &mut BaseWriter| -> Result<(), DiffAreaError> {
        let lower = match prev {
            Some(p) if p.chunk == e.chunk => p.upper,
            _ => 0,
        };
        prev = Some(e);
        match fate(lower, &e) {
            Fate::Keep => writer.push(e)?,
            Fate::Carry => out.carried.push(e),
            Fate::Drop if from_base => {
                let w = e.slot as usize / 64;
                if out.dropped_slots.len() <= w {
                    out.dropped_slots.resize(w + 1, 0);
                }
                out.dropped_slots[w] |= 1 << (e.slot % 64);
            }
            Fate::Drop => out.dropped.push(e),
        }
        Ok(())
    };
    let mut delta = frozen.delta.records.iter().peekable();
    for page in frozen.base.scan_pages() {
        for e in page?.iter() {
            if frozen.hidden.contains(&e.slot) || frozen.delta.dead.get(e.key()).is_some() {
                continue;
            }
            while let Some(d) = delta.next_if(|d| d.key() < e.key()) {
                step(d, false, &mut writer)?;
            }
            step(*e, true, &mut writer)?;
        }
    }
    for d in delta {
        step(d, false, &mut writer)?;
    }
    out.records = writer.len();
    let high_water = writer.finish(next_epoch)?;
    Ok((out, high_water))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffarea::base::PageCache;
    use crate::testing::MemStorage;
    use crate::volume::Storage;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn check(idx: &LayeredIndex, model: &BTreeMap<Key, u32>) -> Result<(), TestCaseError> {
        let all: Vec<(Key, u32)> = {
            let mut v = Vec::new();
            idx.for_each(|e| v.push((e.key(), e.slot))).unwrap();
            v
        };
        let want: Vec<(Key, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        prop_assert_eq!(all, want);
        prop_assert_eq!(idx.len(), model.len() as u64);
        for chunk in 0..12u64 {
            for upper in 0..12u32 {
                let entry = |(k, v): (&Key, &u32)| Entry { chunk: k.0, upper: k.1, slot: *v };
                prop_assert_eq!(idx.covering(chunk, upper).unwrap(), model.range((chunk, upper)..=(chunk, u32::MAX)).next().map(entry));
                prop_assert_eq!(
                    idx.lower_bound(chunk, upper).unwrap(),
                    model.range((chunk, 0)..(chunk, upper)).next_back().map_or(0, |(k, _)| k.1)
                );
            }
            prop_assert_eq!(
                idx.last_of(chunk).unwrap(),
                model.range((chunk, 0)..=(chunk, u32::MAX)).next_back().map(|(k, v)| Entry { chunk: k.0, upper: k.1, slot: *v })
            );
        }
        Ok(())
    }

    proptest! {
        /// Inserts and removals, with merges started and finished (or abandoned) at random
        /// points, give the answers of one sorted map.
        #[test]
        fn behaves_like_one_sorted_map(ops in proptest::collection::vec((0u8..10, 0u64..12, 1u32..12), 1..400)) {
            let cache = Arc::new(PageCache::new(8 * 4096));
            let files: [Arc<dyn Storage>; 2] = [Arc::new(MemStorage::default()), Arc::new(MemStorage::default())];
            let mut idx = LayeredIndex::over(BaseIndex::empty(Arc::clone(&cache)));
            let mut model: BTreeMap<Key, u32> = BTreeMap::new();
            let mut pending: Option<Frozen> = None;
            let mut generation = 0u64;
            let mut next_slot = 0u32;
            for (op, chunk, upper) in ops {
                match op {
                    0..=3 => {
                        next_slot += 1;
                        let old = idx.insert(Entry { chunk, upper, slot: next_slot }).unwrap();
                        prop_assert_eq!(old, model.insert((chunk, upper), next_slot));
                    }
                    4..=5 => prop_assert_eq!(idx.remove(chunk, upper).unwrap(), model.remove(&(chunk, upper))),
                    6 if pending.is_none() => pending = Some(idx.freeze()),
                    7 | 8 if pending.is_some() => {
                        let frozen = pending.take().unwrap();
                        generation += 1;
                        let file = Arc::clone(&files[generation as usize % 2]);
                        let writer = BaseWriter::new(Arc::clone(&file), generation, [1; 16]).unwrap();
                        // Drop records of chunk 0, carry those of chunk 1, keep the rest.
                        let (merged, _) = merge(&frozen, writer, 100, |_, e| match e.chunk {
                            0 => Fate::Drop,
                            1 => Fate::Carry,
                            _ => Fate::Keep,
                        }).unwrap();
                        let (base, _) = BaseIndex::open(file, generation, [1; 16], Arc::clone(&cache), 1 << 20).unwrap();
                        // Dropped records still live are handed back, and are gone (slots are
                        // unique here, as in the engine).
                        let freed = idx.install(base, merged);
                        let bit = |s: u32| freed.slots.get(s as usize / 64).is_some_and(|w| w >> (s % 64) & 1 == 1);
                        let gone: Vec<(Key, u32)> = model
                            .iter()
                            .filter(|(k, v)| freed.records.contains(&Entry { chunk: k.0, upper: k.1, slot: **v }) || bit(**v))
                            .map(|(k, v)| (*k, *v))
                            .collect();
                        let handed_back = freed.records.len() + freed.slots.iter().map(|w| w.count_ones() as usize).sum::<usize>();
                        prop_assert_eq!(gone.len(), handed_back, "every slot handed back was a live record's");
                        for (k, _) in gone {
                            prop_assert_eq!(k.0, 0, "only chunk 0 is dropped");
                            model.remove(&k);
                            prop_assert_eq!(idx.remove(k.0, k.1).unwrap(), None);
                        }
                    }
                    9 if pending.is_some() => {
                        pending = None;
                        idx.thaw();
                    }
                    _ => {}
                }
                check(&idx, &model)?;
            }
        }
    }
}
