//! The diff area's in-memory state: the shadow copies and the index of preserved chunks, and
//! the rules that tie them together — which copy a write must preserve for, which records
//! are garbage once copies go, which records must be journaled.
//!
//! Pure bookkeeping: no I/O, no locking (the engine holds it under one lock).

use std::collections::{BTreeMap, HashMap};

use super::format::{Record, SnapshotRecord};
use super::index::{ChunkIndex, Entry};

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
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    copies: BTreeMap<u32, CopyMeta>,
    by_id: HashMap<[u8; 16], u32>,
    index: ChunkIndex,
    next_epoch: u32,
}

impl Catalog {
    pub(crate) fn new(next_epoch: u32) -> Self {
        Self::from_parts(BTreeMap::new(), ChunkIndex::new(), next_epoch)
    }

    pub(crate) fn from_parts(copies: BTreeMap<u32, CopyMeta>, index: ChunkIndex, next_epoch: u32) -> Self {
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

    pub(crate) fn index(&self) -> &ChunkIndex {
        &self.index
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
    pub(crate) fn needs_preserve(&self, chunk: u64) -> Option<u32> {
        let newest = self.newest_protected()?;
        match self.index.last_of(chunk) {
            Some(e) if e.upper >= newest => None,
            _ => Some(newest),
        }
    }

    /// The slot holding `chunk` as copy `epoch` saw it, or `None` when the volume still has it.
    pub(crate) fn lookup(&self, chunk: u64, epoch: u32) -> Option<u32> {
        self.index.covering(chunk, epoch).map(|e| e.slot)
    }

    fn any_in(&self, lower: u32, upper: u32, pred: impl Fn(&CopyMeta) -> bool) -> bool {
        lower < upper && self.copies.range(lower + 1..=upper).any(|(_, m)| pred(m))
    }

    /// Records the preservation of `chunk` for copies up to `upper` in `slot`. Returns whether
    /// the record must be journaled (it serves a persistent copy), or `Err(slot)` when no copy
    /// needs it any more (the copy went while the chunk was being copied).
    pub(crate) fn insert_preserved(&mut self, chunk: u64, upper: u32, slot: u32) -> Result<bool, u32> {
        let lower = self.index.last_of(chunk).map_or(0, |e| e.upper);
        if !self.any_in(lower, upper, CopyMeta::protected) {
            return Err(slot);
        }
        let persistent = self.any_in(lower, upper, |m| m.persistent && m.protected());
        self.index.insert(Entry { chunk, upper, slot });
        Ok(persistent)
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

    /// Drops every record whose epoch range holds no protected copy; returns them.
    pub(crate) fn collect_garbage(&mut self) -> Vec<Entry> {
        let copies = &self.copies;
        self.index.retain(|lower, e| lower < e.upper && copies.range(lower + 1..=e.upper).any(|(_, m)| m.protected()))
    }

    /// One bounded step of garbage collection: looks at up to `budget` records from key
    /// `start`, drops the garbage among them and returns it with the key to resume from.
    /// A record that is garbage stays garbage (new copies only get newer epochs), so the
    /// steps may be interleaved with any other use of the catalog.
    pub(crate) fn collect_garbage_step(&mut self, start: (u64, u32), budget: usize) -> (Vec<Entry>, Option<(u64, u32)>) {
        let mut lower = self.index.lower_bound(start.0, start.1);
        let mut prev_chunk = start.0;
        let mut garbage = Vec::new();
        let mut next = None;
        for (n, e) in self.index.iter_from(start.0, start.1).enumerate() {
            if n == budget {
                next = Some((e.chunk, e.upper));
                break;
            }
            let lo = if e.chunk == prev_chunk { lower } else { 0 };
            if !self.any_in(lo, e.upper, CopyMeta::protected) {
                garbage.push(e);
            }
            prev_chunk = e.chunk;
            lower = e.upper;
        }
        for g in &garbage {
            self.index.remove(g.chunk, g.upper);
        }
        (garbage, next)
    }

    /// The first payload of a compaction: the configuration and the persistent copies.
    pub(crate) fn durable_copies(&self, max_size: u64) -> Vec<u8> {
        let mut out = Vec::new();
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

    /// One bounded step of a compaction: the records from key `start` (up to `budget` of them)
    /// that serve a persistent copy, encoded, and the key to resume from.
    pub(crate) fn durable_records_step(&self, start: (u64, u32), budget: usize) -> (Vec<u8>, Option<(u64, u32)>) {
        let mut out = Vec::new();
        let mut lower = self.index.lower_bound(start.0, start.1);
        let mut prev_chunk = start.0;
        for (n, e) in self.index.iter_from(start.0, start.1).enumerate() {
            if n == budget {
                return (out, Some((e.chunk, e.upper)));
            }
            let lo = if e.chunk == prev_chunk { lower } else { 0 };
            if self.any_in(lo, e.upper, |m| m.persistent && m.protected()) {
                Record::Preserved { chunk: e.chunk, upper: e.upper, slot: e.slot }.encode_into(&mut out);
            }
            prev_chunk = e.chunk;
            lower = e.upper;
        }
        (out, None)
    }
}
