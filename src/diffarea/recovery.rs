//! Rebuilds the [`Catalog`] from the journal's replay.
//!
//! Rules (see `docs/design.md`, "Recovery"):
//! - A `Preserved` record naming a slot that an earlier record named replaces that earlier
//!   record: the slot was freed (by a durable deletion) before it was reused.
//! - Damage in the middle of the journal loses records of unknown content: every copy that
//!   existed at that point is marked failed; copies created later stay good.
//! - A record that names a slot beyond the store or a chunk beyond the volume, and still serves
//!   a copy after garbage collection, fails the copies it serves. (A garbage record may name a
//!   slot past the end: the store is trimmed on open.)
//! - Volatile copies are never journaled, so they are simply absent.

use std::collections::BTreeMap;

use super::catalog::{Catalog, CopyMeta};
use super::format::Record;
use super::index::{ChunkIndex, Entry};
use super::journal::ReplayItem;

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
}

/// Replays `items` for a volume of `volume_chunks` chunks and a store of `store_slots` slots.
pub(crate) fn recover(items: Vec<ReplayItem>, volume_chunks: u64, store_slots: u64) -> Recovered {
    let mut copies: BTreeMap<u32, CopyMeta> = BTreeMap::new();
    let mut index = ChunkIndex::new();
    let mut slot_owner: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
    let mut max_size = None;
    let mut damage = Vec::new();
    let mut max_epoch = 0u32;
    let mut seal = None;

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
                    copies.remove(&epoch);
                }
                Record::SnapshotFailed { epoch, reason } => {
                    if let Some(m) = copies.get_mut(&epoch) {
                        m.failed = Some(reason);
                    }
                }
                Record::Sealed { .. } | Record::Unsealed => {}
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
                    if let Some((old_chunk, old_upper)) = slot_owner.insert(slot, (chunk, upper)) {
                        index.remove(old_chunk, old_upper);
                    }
                    if let Some(old_slot) = index.insert(Entry { chunk, upper, slot }) {
                        if old_slot != slot {
                            slot_owner.remove(&old_slot);
                        }
                    }
                }
            }
        }
    }
    let next_epoch = max_epoch.saturating_add(1);
    let mut catalog = Catalog::from_parts(copies, index, next_epoch);
    catalog.collect_garbage();
    // Records that still serve a copy but point outside the volume or the store: those copies
    // cannot be read whole. (Garbage records may point past a store that was trimmed since.)
    let out_of_bounds: Vec<(Entry, u32)> = catalog
        .index()
        .iter()
        .filter(|e| e.chunk >= volume_chunks || u64::from(e.slot) >= store_slots)
        .map(|e| (e, catalog.index().lower_bound(e.chunk, e.upper)))
        .collect();
    for (e, lower) in out_of_bounds {
        let why = format!(
            "diff-area record for chunk {} names {}; this copy's data is incomplete",
            e.chunk,
            if e.chunk >= volume_chunks { "a chunk beyond the volume" } else { "a slot beyond the store file" }
        );
        damage.push(why.clone());
        let epochs: Vec<u32> = catalog.copies().range(lower + 1..=e.upper).map(|(k, _)| *k).collect();
        for k in epochs {
            catalog.fail_copy(k, why.clone());
        }
    }
    catalog.collect_garbage();
    Recovered { catalog, max_size, damage, seal }
}
