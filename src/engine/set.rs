//! Shadow copy sets: copies of several volumes taken at one instant.
//!
//! The instant: every volume's catalog is taken exclusively (in a fixed order, so two sets cannot
//! deadlock). That holds every write at its ordering point (a short, in-memory read of the
//! catalog) without waiting for any write's I/O; each volume gets its copy (an epoch bump in
//! memory, O(1)); the catalogs are released. Nothing is read, copied or synced while writes are
//! held. Writes ordered before the instant may still be writing; whoever reads or writes their
//! chunks waits on the chunks' stripes, so the copy never shows them half-way.
//!
//! Durability of a persistent copy comes after the instant: the writes ordered before it finish,
//! a commit makes their records durable and writes their held-back data, the volume is synced
//! (so every chunk the copy shares with the volume is durable as of the instant), and only then
//! is the copy's own record journaled and committed. A crash before that leaves no copy — never
//! a copy that reads wrong. The call returns once every copy of the set is durable.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::{CopyInfo, DeleteReason, Inner, ShadowVolume};
use crate::diffarea::catalog::CopyMeta;
use crate::diffarea::format::{Record, SnapshotRecord};
use crate::error::Error;

/// How to take a set.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Volatile copies skip every durability cost and are dropped on reopen (VSS auto-release).
    pub volatile: bool,
    /// Context and attribute bits stored with each copy.
    pub attributes: u32,
}

/// The set that was taken.
#[derive(Debug, Clone)]
pub struct SetInfo {
    /// The set's id, shared by its copies.
    pub set_id: Uuid,
    /// One copy per volume, in the order the volumes were given.
    pub copies: Vec<CopyInfo>,
    /// How long live writes were held (from asking for the catalogs to releasing them).
    pub hold: Duration,
}

/// Takes one shadow copy of each volume at the same instant.
pub fn create_set(volumes: &[&ShadowVolume], options: CreateOptions) -> Result<SetInfo, Error> {
    if volumes.is_empty() {
        return Err(Error::Config("a shadow copy set needs at least one volume".into()));
    }
    let mut order: Vec<usize> = (0..volumes.len()).collect();
    order.sort_by_key(|&i| volumes[i].inner.diff_area_id);
    if order.windows(2).any(|w| volumes[w[0]].inner.diff_area_id == volumes[w[1]].inner.diff_area_id) {
        return Err(Error::Config("a volume appears twice in the set".into()));
    }
    for v in volumes {
        if let Some(reason) = v.failure() {
            return Err(Error::Unavailable(reason));
        }
    }
    let set_id = Uuid::new_v4();
    let created_ns = (volumes[0].inner.options.clock)().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let ids: Vec<Uuid> = volumes.iter().map(|_| Uuid::new_v4()).collect();

    let asked = Instant::now();
    let mut catalogs: Vec<_> = order.iter().map(|&i| (i, volumes[i].inner.catalog.write())).collect();
    catalogs.sort_by_key(|(i, _)| *i);
    let epochs: Vec<u32> = catalogs
        .iter_mut()
        .zip(&ids)
        .map(|((_, cat), id)| {
            cat.add_copy(CopyMeta {
                record: SnapshotRecord {
                    epoch: 0,
                    id: *id.as_bytes(),
                    set_id: *set_id.as_bytes(),
                    created_ns,
                    set_size: volumes.len() as u32,
                    attributes: options.attributes,
                },
                persistent: !options.volatile,
                journaled: false,
                failed: None,
                // Marked (and journaled) once every copy of the set is durable.
                set_complete: volumes.len() == 1,
                stale: None,
            })
        })
        .collect();
    drop(catalogs);
    let hold = asked.elapsed();

    if !options.volatile {
        for (i, (v, epoch)) in volumes.iter().zip(&epochs).enumerate() {
            if i > 0 {
                set_hooks::reached(SetStep::BetweenVolumes);
            }
            if let Err(e) = v.make_durable(*epoch) {
                for (v, epoch) in volumes.iter().zip(&epochs) {
                    let _ = v.inner.delete_epoch(*epoch, DeleteReason::Requested);
                }
                return Err(e);
            }
        }
        // Phase two: every copy is durable, so the set is whole. A crash before every volume
        // has its mark leaves copies that all exist: the daemon completes them at open.
        if volumes.len() > 1 {
            set_hooks::reached(SetStep::BeforeComplete);
            for (v, epoch) in volumes.iter().zip(&epochs) {
                if let Err(e) = v.inner.mark_set_complete(*epoch) {
                    tracing::warn!(set = %set_id, error = %e, "could not mark the set complete on a volume; it is completed at the next open");
                }
            }
        }
    } else {
        let mut cats: Vec<_> = volumes.iter().map(|v| v.inner.catalog.write()).collect();
        for (cat, epoch) in cats.iter_mut().zip(&epochs) {
            if let Some(m) = cat.copy_mut(*epoch) {
                m.set_complete = true;
            }
        }
    }
    let copies = volumes.iter().zip(&ids).map(|(v, id)| v.copy(*id)).collect::<Result<Vec<_>, _>>()?;
    tracing::info!(set = %set_id, volumes = volumes.len(), hold_us = hold.as_micros() as u64, volatile = options.volatile, "shadow copy set created");
    Ok(SetInfo { set_id, copies, hold })
}

/// Points inside [`create_set`] where a test may stop the process (a daemon's fail points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetStep {
    /// One volume's copy is durable, the next one's is not yet.
    BetweenVolumes,
    /// Every copy is durable; no volume has its `SetComplete` mark yet.
    BeforeComplete,
}

/// The hook a daemon may install to be told of each [`SetStep`] (fault injection in tests).
pub mod set_hooks {
    use std::sync::OnceLock;

    use super::SetStep;

    static HOOK: OnceLock<fn(SetStep)> = OnceLock::new();

    /// Installs the hook (once per process).
    pub fn install(hook: fn(SetStep)) {
        let _ = HOOK.set(hook);
    }

    pub(super) fn reached(step: SetStep) {
        if let Some(h) = HOOK.get() {
            h(step);
        }
    }
}

impl ShadowVolume {
    /// The persistent copies of sets of several volumes that a crash may have cut short: durable
    /// here, but the set's completion was never recorded. The caller looks for their siblings on
    /// the other volumes and either completes ([`ShadowVolume::complete_set`]) or deletes them.
    pub fn unfinished_set_copies(&self) -> Vec<CopyInfo> {
        let cat = self.inner.catalog.read();
        cat.copies().values().filter(|m| m.persistent && m.journaled && !m.set_complete).map(CopyInfo::from_meta).collect()
    }

    /// Records that copy `id`'s set is whole (every copy of it is durable on its volume).
    pub fn complete_set(&self, id: Uuid) -> Result<(), Error> {
        let epoch = super::find_epoch(&self.inner.catalog.read(), id)?;
        self.inner.mark_set_complete(epoch)
    }

    /// Makes copy `epoch` durable: earlier data first, then its own record.
    fn make_durable(&self, epoch: u32) -> Result<(), Error> {
        let inner = &self.inner;
        inner.inflight.wait_before(epoch);
        inner.commit()?;
        inner.volume.sync_data().map_err(Error::volume("flushing the volume for a shadow copy"))?;
        {
            let mut cat = inner.catalog.write();
            let Some(meta) = cat.copy_mut(epoch) else {
                return Err(Error::Unavailable("the copy was deleted to make room before it became durable; enlarge the diff area".into()));
            };
            if let Some(reason) = &meta.failed {
                return Err(Error::Unavailable(reason.clone()));
            }
            meta.journaled = true;
            // Under the catalog lock, like every record, so the log follows the catalog's order.
            inner.push_record(&Record::SnapshotCreated(meta.record));
        }
        inner.commit()?;
        if let Some(reason) = inner.failure.lock().clone() {
            return Err(Error::Unavailable(reason));
        }
        Ok(())
    }
}

impl Inner {
    /// Marks copy `epoch`'s set complete and makes the mark durable.
    pub(super) fn mark_set_complete(&self, epoch: u32) -> Result<(), Error> {
        {
            let mut cat = self.catalog.write();
            let Some(meta) = cat.copy_mut(epoch) else {
                return Err(Error::Unavailable("the copy was deleted before its set was complete".into()));
            };
            if meta.set_complete {
                return Ok(());
            }
            meta.set_complete = true;
            // Under the catalog lock, like every record, so the log follows the catalog's order.
            self.push_record(&Record::SetComplete { epoch });
        }
        self.commit()?;
        if let Some(reason) = self.failure.lock().clone() {
            return Err(Error::Unavailable(reason));
        }
        Ok(())
    }
}
