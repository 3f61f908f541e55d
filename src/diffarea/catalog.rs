//! The diff area's in-memory state: the shadow copies and the index of preserved chunks, and
//! the rules that tie them together — which copy a write must preserve for, which records
//! are garbage once copies go, which records must be journaled.
//!
//! Pure bookkeeping, no locking (the engine holds it under one lock); its only I/O is the
//! index's reads of checkpoint pages, whose failures it returns.

use std::collections::{BTreeMap, HashMap};

use super::format::{Record, SnapshotRecord};
use super::index::Entry;
use super::layered::{Fate, LayeredIndex};
use crate::DiffAreaError;

/// A shadow copy as the diff area knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyMeta {
    pub record: SnapshotRecord,
    /// Survives reopen (journaled); volatile copies are dropped on reopen.
    pub persistent: bool,
    /// The `SnapshotCreated` record has been handed to the journal.
    pub journaled: bool,
    /// Why the copy can no longer be read, if it cannot.
    pub failed: Option<String>,
    /// Every copy of its set was durable (always true for a set of one; see `SetComplete`).
    pub set_complete: bool,
    /// Why the copy is stale (the volume was written while nobody served it), if it is.
    pub stale: Option<String>,
}

impl CopyMeta {
    /// Whether writes must still preserve chunks for this copy.
    fn protected(&self) -> bool {
        self.failed.is_none()
    }
}

/// Copies and preserved chunks.
#[derive(Debug)]
pub(crate) struct Catalog {
    copies: BTreeMap<u32, CopyMeta>,
    by_id: HashMap<[u8; 16], u32>,
    index: LayeredIndex,
    next_epoch: u32,
}

impl Catalog {
    pub(crate) fn from_parts(copies: BTreeMap<u32, CopyMeta>, index: LayeredIndex, next_epoch: u32) -> Self {
        let by_id = copies.iter().map(|(e, m)| (m.record.id, *e)).collect();
        Catalog { copies, by_id, index, next_epoch: next_epoch.max(1) }
    }

    /// The epoch of the copy with this id.
    pub(crate) fn epoch_of(&self, id: &[u8; 16]) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn copies(&self) -> &BTreeMap<u32, CopyMeta> {
        &self.copies
    }

    pub(crate) fn copy(&self, epoch: u32) -> Option<&CopyMeta> {
        self.copies.get(&epoch)
    }

    pub(crate) fn copy_mut(&mut self, epoch: u32) -> Option<&mut CopyMeta> {
        self.copies.get_mut(&epoch)
    }

    pub(crate) fn index(&self) -> &LayeredIndex {
        &self.index
    }

    pub(crate) fn index_mut(&mut self) -> &mut LayeredIndex {
        &mut self.index
    }

    /// A snapshot of the copies, for a merge that decides without the lock.
    pub(crate) fn copies_snapshot(&self) -> BTreeMap<u32, CopyMeta> {
        self.copies.clone()
    }

    /// The epoch the next copy gets.
    pub(crate) fn next_epoch(&self) -> u32 {
        self.next_epoch
    }

    /// Registers a new copy at the next epoch and returns the epoch.
    pub(crate) fn add_copy(&mut self, mut meta: CopyMeta) -> u32 {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        meta.record.epoch = epoch;
        self.by_id.insert(meta.record.id, epoch);
        self.copies.insert(epoch, meta);
        epoch
    }

    /// The newest copy writes must preserve chunks for.
    pub(crate) fn newest_protected(&self) -> Option<u32> {
        self.copies.iter().rev().find(|(_, m)| m.protected()).map(|(e, _)| *e)
    }

    /// The oldest copy (failed ones first: they hold space for nothing).
    pub(crate) fn oldest(&self) -> Option<u32> {
        self.copies.iter().find(|(_, m)| !m.protected()).or_else(|| self.copies.iter().next()).map(|(e, _)| *e)
    }

    /// The epoch a write to `chunk` must preserve the current content for, if any.
    pub(crate) fn needs_preserve(&self, chunk: u64) -> Result<Option<u32>, DiffAreaError> {
        let Some(newest) = self.newest_protected() else { return Ok(None) };
        Ok(match self.index.last_of(chunk)? {
            Some(e) if e.upper >= newest => None,
            _ => Some(newest),
        })
    }

    /// The slot holding `chunk` as copy `epoch` saw it, or `None` when the volume still has it.
    pub(crate) fn lookup(&self, chunk: u64, epoch: u32) -> Result<Option<u32>, DiffAreaError> {
        Ok(self.index.covering(chunk, epoch)?.map(|e| e.slot))
    }

    fn any_in(&self, lower: u32, upper: u32, pred: impl Fn(&CopyMeta) -> bool) -> bool {
        any_in(&self.copies, lower, upper, pred)
    }

    /// Records the preservation of `chunk` for copies up to `upper` in `slot`. Returns whether
    /// the record must be journaled (it serves a persistent copy), or `Err(slot)` when no copy
    /// needs it any more (the copy went while the chunk was being copied).
    pub(crate) fn insert_preserved(&mut self, chunk: u64, upper: u32, slot: u32) -> Result<Result<bool, u32>, DiffAreaError> {
        let lower = self.index.last_of(chunk)?.map_or(0, |e| e.upper);
        if !self.any_in(lower, upper, CopyMeta::protected) {
            return Ok(Err(slot));
        }
        let persistent = self.any_in(lower, upper, |m| m.persistent && m.protected());
        self.index.insert(Entry { chunk, upper, slot })?;
        Ok(Ok(persistent))
    }

    /// Removes a copy. Its records become garbage; [`Catalog::collect_garbage_step`] drops them.
    pub(crate) fn remove_copy(&mut self, epoch: u32) -> Option<CopyMeta> {
        let meta = self.copies.remove(&epoch)?;
        self.by_id.remove(&meta.record.id);
        Some(meta)
    }

    /// Marks a copy failed: it stays listed with the reason, and no longer holds chunks (its
    /// records become garbage).
    pub(crate) fn fail_copy(&mut self, epoch: u32, reason: String) {
        if let Some(m) = self.copies.get_mut(&epoch) {
            if m.failed.is_none() {
                m.failed = Some(reason);
            }
        }
    }

    /// Forgets every record (all copies failed); the slots are the caller's to reset.
    pub(crate) fn clear_index(&mut self, empty: LayeredIndex) {
        self.index = empty;
    }

    /// One bounded step of garbage collection over the records held in memory (added since the
    /// last merge): looks at up to `budget` of them from key `start`, drops the garbage among
    /// them and returns it with the key to resume from. Garbage in the checkpoint is the
    /// merge's to drop. A record's range is taken from the previous record *in memory* (0 if
    /// none): at most as far down as its true range, so a record kept here may be garbage (the
    /// next merge drops it), never the reverse. A record that is garbage stays garbage (new
    /// copies only get newer epochs), so the steps may be interleaved with any other use.
    pub(crate) fn collect_memory_garbage_step(&mut self, start: (u64, u32), budget: usize) -> (Vec<Entry>, Option<(u64, u32)>) {
        let (records, next) = self.index.scan_in_memory(start, budget);
        let mut garbage = Vec::new();
        let mut prev: Option<Entry> = None;
        for e in records {
            let lower = match prev {
                Some(p) if p.chunk == e.chunk => p.upper,
                _ => 0,
            };
            prev = Some(e);
            if !self.any_in(lower, e.upper, CopyMeta::protected) {
                garbage.push(e);
            }
        }
        for g in &garbage {
            self.index.remove_in_memory(g.chunk, g.upper);
        }
        (garbage, next)
    }

    /// The first payload of a compaction: the configuration, the checkpoint the journal's
    /// records continue, and the persistent copies.
    pub(crate) fn durable_copies(&self, max_size: u64, checkpoint: Option<Record>) -> Vec<u8> {
        let mut out = Vec::new();
        checkpoint.iter().for_each(|c| c.encode_into(&mut out));
        Record::Config { max_size }.encode_into(&mut out);
        for (_, m) in self.copies.iter().filter(|(_, m)| m.persistent && m.journaled) {
            Record::SnapshotCreated(m.record).encode_into(&mut out);
            if let Some(reason) = &m.failed {
                Record::SnapshotFailed { epoch: m.record.epoch, reason: reason.clone() }.encode_into(&mut out);
            }
            if let Some(reason) = &m.stale {
                Record::SnapshotStale { epoch: m.record.epoch, reason: reason.clone() }.encode_into(&mut out);
            }
            if m.set_complete && m.record.set_size > 1 {
                Record::SetComplete { epoch: m.record.epoch }.encode_into(&mut out);
            }
        }
        out
    }
}

fn any_in(copies: &BTreeMap<u32, CopyMeta>, lower: u32, upper: u32, pred: impl Fn(&CopyMeta) -> bool) -> bool {
    lower < upper && copies.range(lower + 1..=upper).any(|(_, m)| pred(m))
}

/// What a merge does with a record serving copies `(lower, upper]`, by the copies as they were
/// when the merge began (a record that is garbage then stays garbage): into the checkpoint if
/// it serves a persistent copy, kept in memory if only volatile ones, else dropped.
pub(crate) fn merge_fate(copies: &BTreeMap<u32, CopyMeta>, lower: u32, e: &Entry) -> Fate {
    if any_in(copies, lower, e.upper, |m| m.persistent && m.protected()) {
        Fate::Keep
    } else if any_in(copies, lower, e.upper, CopyMeta::protected) {
        Fate::Carry
    } else {
        Fate::Drop
    }
}
