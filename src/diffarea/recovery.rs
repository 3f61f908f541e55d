//! Rebuilds the [`Catalog`] from the checkpointed index and the journal's replay (the tail
//! since the checkpoint): work proportional to the tail, except after damage or a deletion
//! the checkpoint does not reflect yet, when garbage is collected over the whole index.
//!
//! Rules (see `docs/design.md`, "Recovery"):
//! - A `Preserved` record naming a slot that an earlier record named replaces that earlier
//!   record: the slot was freed (by a durable deletion) before it was reused. An earlier record
//!   in the checkpoint is hidden (the checkpoint's free-slot bitmap says which slots it names).
//! - Damage in the middle of the journal loses records of unknown content: every copy that
//!   existed at that point is marked failed; copies created later stay good.
//! - A record of the tail that names a slot beyond the store or a chunk beyond the volume fails
//!   the copies it serves, and leaves the index (a garbage one just leaves).
//! - Volatile copies are never journaled, so they are simply absent.

use std::collections::{BTreeMap, HashSet};

use super::base::{BaseIndex, FreeBitmap};
use super::catalog::{Catalog, CopyMeta};
use super::format::Record;
use super::index::Entry;
use super::journal::ReplayItem;
use super::layered::LayeredIndex;
use crate::DiffAreaError;

/// What recovery produced.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub catalog: Catalog,
    /// Latest configured maximum size (`u64::MAX`: unbounded), if the journal holds one.
    pub max_size: Option<u64>,
    /// What was found damaged, in words a person can act on.
    pub damage: Vec<String>,
    /// The volume's fingerprint when the daemon last stopped cleanly, if nothing was journaled
    /// since (see `Sealed`).
    pub seal: Option<[u32; 4]>,
    /// Free slots below `high_water` (bit set: free).
    pub free: FreeBitmap,
    /// 1 + the highest slot a record names.
    pub high_water: u32,
    /// Records replayed from the journal.
    pub replayed: usize,
    /// Whether the checkpoint (or the tail) may hold garbage, or failures must be made
    /// durable: the engine then merges at once.
    pub needs_merge: bool,
}

/// A free-slot bitmap with its high water.
struct Slots {
    free: FreeBitmap,
    high_water: u32,
}

impl Slots {
    fn is_free(&self, s: u32) -> bool {
        s >= self.high_water || self.free[s as usize / 64] >> (s % 64) & 1 == 1
    }

    /// Marks slot `s` named by a record (the bitmap grows past the high water as needed).
    fn mark_used(&mut self, s: u32) {
        if s >= self.high_water {
            // Slots between the old high water and `s` are free.
            let words = (s as usize + 1).div_ceil(64);
            self.free.resize(words, 0);
            for t in self.high_water..s {
                self.free[t as usize / 64] |= 1 << (t % 64);
            }
            self.high_water = s + 1;
        }
        self.free[s as usize / 64] &= !(1 << (s % 64));
    }
}

/// Which record names each slot, while the journal is replayed: one flat array over the slots
/// the store can hold (16 bytes a slot, one allocation, freed whole), sized by the records
/// replayed so that a damaged store length cannot make it large; slots past it (rare: a store
/// that shrank, a damaged record) go to a map.
struct SlotOwners {
    dense: Vec<(u64, u32)>,
    sparse: BTreeMap<u32, (u64, u32)>,
}

/// `dense` entry of a slot no record names.
const NO_OWNER: (u64, u32) = (u64::MAX, 0);

impl SlotOwners {
    fn new(dense: usize) -> Self {
        SlotOwners { dense: vec![NO_OWNER; dense], sparse: BTreeMap::new() }
    }

    /// Records that `(chunk, upper)` names `slot`; returns the record that named it before.
    fn insert(&mut self, slot: u32, chunk: u64, upper: u32) -> Option<(u64, u32)> {
        match self.dense.get_mut(slot as usize) {
            Some(owner) => Some(std::mem::replace(owner, (chunk, upper))).filter(|o| *o != NO_OWNER),
            None => self.sparse.insert(slot, (chunk, upper)),
        }
    }

    fn remove(&mut self, slot: u32) {
        match self.dense.get_mut(slot as usize) {
            Some(owner) => *owner = NO_OWNER,
            None => {
                self.sparse.remove(&slot);
            }
        }
    }
}

/// The checkpoint a journal continues, if it names one (always its first record).
pub(crate) fn checkpoint_of(items: &[ReplayItem]) -> Option<(u8, u64)> {
    match items.first() {
        Some(ReplayItem::Batch(records)) => match records.first() {
            Some(Record::IndexCheckpoint { file, generation }) => Some((*file, *generation)),
            _ => None,
        },
        _ => None,
    }
}

/// Replays `items` over the checkpoint `base` (with its free-slot bitmap `free`) for a volume
/// of `volume_chunks` chunks and a store of `store_slots` slots.
pub(crate) fn recover(
    items: Vec<ReplayItem>,
    base: BaseIndex,
    free: FreeBitmap,
    volume_chunks: u64,
    store_slots: u64,
) -> Result<Recovered, DiffAreaError> {
    let mut copies: BTreeMap<u32, CopyMeta> = BTreeMap::new();
    let base_next_epoch = base.next_epoch();
    let mut slots = Slots { free, high_water: base.high_water() };
    let base_high_water = base.high_water();
    let mut index = LayeredIndex::over(base);
    let preserved = items
        .iter()
        .map(|i| match i {
            ReplayItem::Batch(records) => records.iter().filter(|r| matches!(r, Record::Preserved { .. })).count(),
            ReplayItem::Damage { .. } => 0,
        })
        .sum::<usize>();
    let mut slot_owner = SlotOwners::new(store_slots.min(preserved as u64) as usize);
    let mut hidden: HashSet<u32> = HashSet::new();
    let mut max_size = None;
    let mut damage = Vec::new();
    let mut max_epoch = 0u32;
    let mut seal = None;
    let mut copies_went = false;

    let fail_all = |copies: &mut BTreeMap<u32, CopyMeta>, why: &str| {
        for m in copies.values_mut() {
            if m.failed.is_none() {
                m.failed = Some(why.to_string());
            }
        }
    };

    for item in items {
        let records = match item {
            ReplayItem::Batch(records) => records,
            ReplayItem::Damage { offset, reason } => {
                let why = format!("diff-area journal damaged at byte {offset} ({reason}); records of this copy were lost");
                damage.push(why.clone());
                fail_all(&mut copies, &why);
                continue;
            }
        };
        for r in records {
            // Any record but the seal itself means the volume was served after the seal.
            seal = match &r {
                Record::Sealed { fingerprint } => Some(*fingerprint),
                _ => None,
            };
            match r {
                Record::Config { max_size: m } => max_size = Some(m),
                Record::SnapshotCreated(rec) => {
                    max_epoch = max_epoch.max(rec.epoch);
                    copies.insert(
                        rec.epoch,
                        CopyMeta {
                            record: rec,
                            persistent: true,
                            journaled: true,
                            failed: None,
                            set_complete: rec.set_size <= 1,
                            stale: None,
                        },
                    );
                }
                Record::SnapshotDeleted { epoch } => {
                    copies_went |= copies.remove(&epoch).is_some();
                }
                Record::SnapshotFailed { epoch, reason } => {
                    if let Some(m) = copies.get_mut(&epoch) {
                        m.failed = Some(reason);
                        copies_went = true;
                    }
                }
                Record::Sealed { .. } | Record::Unsealed | Record::IndexCheckpoint { .. } => {}
                Record::SnapshotStale { epoch, reason } => {
                    if let Some(m) = copies.get_mut(&epoch) {
                        m.stale = Some(reason);
                    }
                }
                Record::SetComplete { epoch } => {
                    if let Some(m) = copies.get_mut(&epoch) {
                        m.set_complete = true;
                    }
                }
                Record::Preserved { chunk, upper, slot } => {
                    max_epoch = max_epoch.max(upper);
                    if let Some((old_chunk, old_upper)) = slot_owner.insert(slot, chunk, upper) {
                        index.remove(old_chunk, old_upper)?;
                    } else if slot < base_high_water && !slots.is_free(slot) {
                        // The checkpoint's record of this slot is garbage whose slot was reused.
                        hidden.insert(slot);
                    }
                    if let Some(old_slot) = index.insert_replayed(Entry { chunk, upper, slot }) {
                        if old_slot != slot {
                            slot_owner.remove(old_slot);
                        }
                    }
                }
            }
        }
    }
    if !hidden.is_empty() {
        // `hidden` holds slots the checkpoint names: one record each.
        let n = hidden.len() as u64;
        index.hide_slots(hidden, n);
    }
    let next_epoch = max_epoch.saturating_add(1).max(base_next_epoch);
    let mut catalog = Catalog::from_parts(copies, index, next_epoch);
    // Records the tail added, and the bounds checks that do not need the checkpoint (its
    // records name slots inside the store: its open checked the high water).
    let mut tail = Vec::new();
    catalog.index().for_each_in_memory(|e| tail.push(e));
    let out_of_bounds = |e: &Entry| e.chunk >= volume_chunks || u64::from(e.slot) >= store_slots;
    let suspects: Vec<Entry> = tail.into_iter().filter(out_of_bounds).collect();
    let mut failed_any = false;
    for e in suspects {
        let lower = catalog.index().lower_bound(e.chunk, e.upper)?;
        let epochs: Vec<u32> = catalog.copies().range(lower + 1..=e.upper).filter(|(_, m)| m.failed.is_none()).map(|(k, _)| *k).collect();
        // Unreadable either way: gone from the index, so that its slot (past the store) never
        // reaches the allocator.
        catalog.index_mut().remove_in_memory(e.chunk, e.upper);
        if epochs.is_empty() {
            continue; // garbage: serves no copy
        }
        let why = format!(
            "diff-area record for chunk {} names {}; this copy's data is incomplete",
            e.chunk,
            if e.chunk >= volume_chunks { "a chunk beyond the volume" } else { "a slot beyond the store file" }
        );
        damage.push(why.clone());
        for k in epochs {
            catalog.fail_copy(k, why.clone());
        }
        failed_any = true;
    }
    // Garbage: the checkpoint no longer matches the copies when copies went or failed in the
    // tail; the merge the engine then runs at once drops it (with the tail's own garbage).
    let needs_merge = !damage.is_empty() || copies_went || failed_any;
    let mut replayed = 0;
    catalog.index().for_each_in_memory(|e| {
        slots.mark_used(e.slot);
        replayed += 1;
    });
    Ok(Recovered { catalog, max_size, damage, seal, free: slots.free, high_water: slots.high_water, replayed, needs_merge })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffarea::base::PageCache;
    use crate::diffarea::format::SnapshotRecord;
    use std::sync::Arc;

    fn created(epoch: u32) -> Record {
        Record::SnapshotCreated(SnapshotRecord { epoch, id: [epoch as u8; 16], set_id: [0; 16], created_ns: 0, set_size: 1, attributes: 0 })
    }

    /// A slot named again replaces the record that named it before (after a durable deletion
    /// the earlier record is garbage anyway; here copy 1 still exists, so only the rule removes
    /// it), whether the slot is in the flat array (sized by the records replayed) or past it.
    #[test]
    fn a_slot_named_again_replaces_its_earlier_record_in_and_past_the_flat_array() {
        // Four `Preserved` records: the flat array covers slots 0..4; slot 7 is past it.
        let items = vec![
            ReplayItem::Batch(vec![
                created(1),
                Record::Preserved { chunk: 10, upper: 1, slot: 1 },
                Record::Preserved { chunk: 11, upper: 1, slot: 7 },
            ]),
            ReplayItem::Batch(vec![Record::Preserved { chunk: 20, upper: 1, slot: 1 }, Record::Preserved { chunk: 21, upper: 1, slot: 7 }]),
        ];
        let recovered = recover(items, BaseIndex::empty(Arc::new(PageCache::new(0))), Vec::new(), 100, 8).unwrap();
        assert!(recovered.damage.is_empty(), "{:?}", recovered.damage);
        let mut entries: Vec<Entry> = Vec::new();
        recovered.catalog.index().for_each(|e| entries.push(e)).unwrap();
        assert_eq!(
            entries,
            vec![Entry { chunk: 20, upper: 1, slot: 1 }, Entry { chunk: 21, upper: 1, slot: 7 }],
            "each slot is named once, by its latest record"
        );
    }
}
