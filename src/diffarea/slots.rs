//! Which slots of the `store` file are free, in use, or waiting to become free.
//!
//! A slot freed by a deletion may still be named by a durable journal record until the record of
//! the deletion is durable too; reusing it earlier could let a crash resurrect a copy whose data
//! was overwritten. So freed slots wait in `pending` until the commit that carries the deletion
//! is done ([`SlotAllocator::commit_done`]). Lowest free slots are reused first so that the store
//! file can shrink.

use std::collections::BTreeSet;

#[derive(Debug)]
pub(crate) struct SlotAllocator {
    /// Most slots the diff area may use (`None`: unbounded).
    capacity: Option<u32>,
    /// Slots `0..high_water` exist in the store file.
    high_water: u32,
    free: BTreeSet<u32>,
    pending: Vec<(u64, u32)>,
    in_use: u32,
}

impl SlotAllocator {
    /// Builds the allocator from the slots that records name after recovery.
    pub(crate) fn from_used(used: impl Iterator<Item = u32>, capacity: Option<u32>) -> Self {
        let used: BTreeSet<u32> = used.collect();
        let high_water = used.last().map_or(0, |s| s + 1);
        let free = (0..high_water).filter(|s| !used.contains(s)).collect();
        SlotAllocator { capacity, high_water, free, pending: Vec::new(), in_use: used.len() as u32 }
    }

    /// Slots it may hand out (`None`: unbounded).
    pub(crate) fn capacity(&self) -> Option<u32> {
        self.capacity
    }

    pub(crate) fn set_capacity(&mut self, capacity: Option<u32>) {
        self.capacity = capacity;
    }

    /// A free slot, or `None` when the diff area is full.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let cap = self.capacity.unwrap_or(u32::MAX);
        let slot = match self.free.first().copied() {
            Some(s) if s < cap => {
                self.free.remove(&s);
                s
            }
            _ if self.high_water < cap => {
                self.high_water += 1;
                self.high_water - 1
            }
            _ => return None,
        };
        self.in_use += 1;
        Some(slot)
    }

    /// A slot no record needs any more; reusable once commit `after_commit` is done.
    pub(crate) fn release(&mut self, slot: u32, after_commit: u64) {
        self.in_use -= 1;
        self.pending.push((after_commit, slot));
    }

    /// Commit `n` is durable: slots released before it may be reused.
    pub(crate) fn commit_done(&mut self, n: u64) {
        let free = &mut self.free;
        self.pending.retain(|&(c, s)| {
            if c <= n {
                free.insert(s);
                false
            } else {
                true
            }
        });
    }

    /// Slots in use.
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Slots waiting for a commit before they become free.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Drops trailing free slots; returns the new number of slots the store needs.
    pub(crate) fn trim(&mut self) -> u32 {
        while self.high_water > 0 && self.free.remove(&(self.high_water - 1)) {
            self.high_water -= 1;
        }
        self.high_water
    }

    pub(crate) fn high_water(&self) -> u32 {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_slots_wait_for_their_commit() {
        let mut a = SlotAllocator::from_used([0, 2].into_iter(), Some(4));
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), None);
        a.release(2, 7);
        assert_eq!(a.allocate(), None, "not before commit 7 is durable");
        a.commit_done(6);
        assert_eq!(a.allocate(), None);
        a.commit_done(7);
        assert_eq!(a.allocate(), Some(2));
        a.release(3, 8);
        a.commit_done(8);
        assert_eq!(a.trim(), 3);
    }
}
