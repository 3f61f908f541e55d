//! Striped per-chunk locks: a live write holds its chunks exclusively while it preserves and
//! overwrites them; a shadow-copy read holds its chunks shared while it decides between the diff
//! area and the volume and reads. Writers take their stripes in ascending order (no deadlock).

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

const STRIPES: u64 = 4096;

#[derive(Debug)]
pub(super) struct Stripes {
    locks: Vec<RwLock<()>>,
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes { locks: (0..STRIPES).map(|_| RwLock::new(())).collect() }
    }
}

impl Stripes {
    /// Exclusive locks on every stripe of chunks `first..=last`.
    pub(super) fn write_range(&self, first: u64, last: u64) -> Vec<RwLockWriteGuard<'_, ()>> {
        Self::ids(first, last).into_iter().map(|i| self.locks[i as usize].write()).collect()
    }

    /// Shared locks on every stripe of chunks `first..=last` (each stripe once, in the writers'
    /// order, so a reader holding several never deadlocks with a writer).
    pub(super) fn read_range(&self, first: u64, last: u64) -> Vec<RwLockReadGuard<'_, ()>> {
        Self::ids(first, last).into_iter().map(|i| self.locks[i as usize].read()).collect()
    }

    /// The stripes of chunks `first..=last`, ascending, each once.
    fn ids(first: u64, last: u64) -> Vec<u64> {
        let mut ids: Vec<u64> =
            if last - first + 1 >= STRIPES { (0..STRIPES).collect() } else { (first..=last).map(|c| c % STRIPES).collect() };
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
