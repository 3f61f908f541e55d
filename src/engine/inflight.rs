//! Writes in flight, by the point in the copy sequence at which they were ordered.
//!
//! A live write is ordered against shadow copies at one instant: its read of the catalog (under
//! its stripes). A copy taken after that read is taken *after* the write, even though the
//! write's I/O may still be running — readers and writers of those chunks wait on the stripes,
//! so nobody can see the chunks half-way. Making a persistent copy durable, though, needs the
//! bytes of every write ordered before it on the volume before the volume is synced. This
//! tracker lets it wait for exactly those writes.

use std::collections::BTreeMap;

use parking_lot::{Condvar, Mutex};

/// Counts of writes in flight, keyed by the epoch the next copy would have got when they were
/// ordered.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    by_next_epoch: Mutex<BTreeMap<u32, usize>>,
    done: Condvar,
}

/// A write in flight; dropping it ends it.
pub(super) struct Ticket<'a> {
    owner: &'a InFlight,
    next_epoch: u32,
}

impl InFlight {
    /// Registers a write ordered while `next_epoch` was the next copy's epoch. Call it under
    /// the catalog lock the write was ordered by.
    pub(super) fn enter(&self, next_epoch: u32) -> Ticket<'_> {
        *self.by_next_epoch.lock().entry(next_epoch).or_insert(0) += 1;
        Ticket { owner: self, next_epoch }
    }

    /// Waits until every write ordered before copy `epoch` existed has finished.
    pub(super) fn wait_before(&self, epoch: u32) {
        let mut map = self.by_next_epoch.lock();
        while map.range(..=epoch).next().is_some() {
            self.done.wait(&mut map);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.by_next_epoch.lock();
        if let Some(n) = map.get_mut(&self.next_epoch) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.next_epoch);
                self.owner.done.notify_all();
            }
        }
    }
}
