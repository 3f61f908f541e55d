//! Which slots of the `store` file are free, in use, or waiting to become free.
//!
//! A slot freed by a deletion may still be named by a durable journal record until the record of
//! the deletion is durable too; reusing it earlier could let a crash resurrect a copy whose data
//! was overwritten. So freed slots wait in `pending` until the commit that carries the deletion
//! is done ([`SlotAllocator::commit_done`]). Lowest free slots are reused first so that the store
//! file can shrink.

/// The free slots as a bitmap (bit set: free) over `0..high_water`: one bit a slot, whatever
/// the number of free slots.
#[derive(Debug)]
pub(crate) struct SlotAllocator {
    /// Most slots the diff area may use (`None`: unbounded).
    capacity: Option<u32>,
    /// Slots `0..high_water` exist in the store file.
    high_water: u32,
    free: Vec<u64>,
    /// No free slot lies in a word before this one.
    first_word: usize,
    pending: Vec<(u64, u32)>,
    /// Many slots released at once (a merge's garbage), as bitmaps.
    pending_bulk: Vec<(u64, Vec<u64>)>,
    in_use: u32,
}

impl SlotAllocator {
    /// The allocator of a new diff area.
    pub(crate) fn empty(capacity: Option<u32>) -> Self {
        Self::from_free(Vec::new(), 0, capacity)
    }

    /// Builds the allocator from a free-slot bitmap over `0..high_water` (bit set: free).
    pub(crate) fn from_free(mut free: Vec<u64>, high_water: u32, capacity: Option<u32>) -> Self {
        free.resize((high_water as usize).div_ceil(64), 0);
        if !high_water.is_multiple_of(64) {
            if let Some(last) = free.last_mut() {
                *last &= (1u64 << (high_water % 64)) - 1;
            }
        }
        let free_count: u32 = free.iter().map(|w| w.count_ones()).sum();
        SlotAllocator {
            capacity,
            high_water,
            free,
            first_word: 0,
            pending: Vec::new(),
            pending_bulk: Vec::new(),
            in_use: high_water - free_count,
        }
    }

    /// Builds the allocator from the slots that records name.
    #[cfg(test)]
    pub(crate) fn from_used(used: impl Iterator<Item = u32>, capacity: Option<u32>) -> Self {
        let used: Vec<u32> = used.collect();
        let high_water = used.iter().max().map_or(0, |s| s + 1);
        let mut free = vec![u64::MAX; (high_water as usize).div_ceil(64)];
        for s in used {
            free[s as usize / 64] &= !(1 << (s % 64));
        }
        Self::from_free(free, high_water, capacity)
    }

    /// Slots it may hand out (`None`: unbounded).
    pub(crate) fn capacity(&self) -> Option<u32> {
        self.capacity
    }

    pub(crate) fn set_capacity(&mut self, capacity: Option<u32>) {
        self.capacity = capacity;
    }

    fn lowest_free(&mut self) -> Option<u32> {
        while let Some(w) = self.free.get(self.first_word) {
            if *w != 0 {
                return Some(self.first_word as u32 * 64 + w.trailing_zeros());
            }
            self.first_word += 1;
        }
        None
    }

    fn mark_free(&mut self, s: u32) {
        let w = s as usize / 64;
        self.free[w] |= 1 << (s % 64);
        self.first_word = self.first_word.min(w);
    }

    /// A free slot, or `None` when the diff area is full.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let cap = self.capacity.unwrap_or(u32::MAX);
        let slot = match self.lowest_free() {
            Some(s) if s < cap => {
                self.free[s as usize / 64] &= !(1 << (s % 64));
                s
            }
            _ if self.high_water < cap => {
                self.high_water += 1;
                if self.free.len() * 64 < self.high_water as usize {
                    self.free.push(0);
                }
                self.high_water - 1
            }
            _ => return None,
        };
        self.in_use += 1;
        Some(slot)
    }

    /// A slot no record needs any more; reusable once commit `after_commit` is done.
    pub(crate) fn release(&mut self, slot: u32, after_commit: u64) {
        // Saturating: after a failure of the diff area the allocator starts over, and slots
        // taken before come back to it.
        self.in_use = self.in_use.saturating_sub(1);
        if slot >= self.high_water {
            return;
        }
        self.pending.push((after_commit, slot));
    }

    /// Slots no record needs any more, as a bitmap (bit set: release it); reusable once commit
    /// `after_commit` is done.
    pub(crate) fn release_bitmap(&mut self, mut bits: Vec<u64>, after_commit: u64) {
        bits.truncate((self.high_water as usize).div_ceil(64));
        if !self.high_water.is_multiple_of(64) {
            if let Some(last) = bits.get_mut((self.high_water / 64) as usize) {
                *last &= (1u64 << (self.high_water % 64)) - 1;
            }
        }
        let n: u32 = bits.iter().map(|w| w.count_ones()).sum();
        if n > 0 {
            self.in_use = self.in_use.saturating_sub(n);
            self.pending_bulk.push((after_commit, bits));
        }
    }

    /// Commit `n` is durable: slots released before it may be reused.
    pub(crate) fn commit_done(&mut self, n: u64) {
        let mut i = 0;
        while i < self.pending_bulk.len() {
            if self.pending_bulk[i].0 <= n {
                let (_, bits) = self.pending_bulk.swap_remove(i);
                for (w, b) in bits.into_iter().enumerate() {
                    if b != 0 && w < self.free.len() {
                        self.free[w] |= b;
                        self.first_word = self.first_word.min(w);
                    }
                }
            } else {
                i += 1;
            }
        }
        let mut now = Vec::new();
        self.pending.retain(|&(c, s)| {
            if c <= n {
                now.push(s);
                false
            } else {
                true
            }
        });
        now.into_iter().for_each(|s| self.mark_free(s));
    }

    /// Slots in use.
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Slots waiting for a commit before they become free.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len() + self.pending_bulk.iter().map(|(_, b)| b.iter().map(|w| w.count_ones() as usize).sum::<usize>()).sum::<usize>()
    }

    /// Drops trailing free slots; returns the new number of slots the store needs.
    pub(crate) fn trim(&mut self) -> u32 {
        while self.high_water > 0 {
            let s = self.high_water - 1;
            let w = s as usize / 64;
            if self.free[w] >> (s % 64) & 1 == 0 {
                break;
            }
            self.free[w] &= !(1 << (s % 64));
            self.high_water -= 1;
        }
        self.free.truncate((self.high_water as usize).div_ceil(64));
        self.high_water
    }

    pub(crate) fn high_water(&self) -> u32 {
        self.high_water
    }

    /// Heap bytes it holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.free.capacity() * 8 + self.pending.capacity() * 16 + self.pending_bulk.iter().map(|(_, b)| b.capacity() * 8).sum::<usize>()
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

    #[test]
    fn the_lowest_free_slot_goes_first_across_words() {
        let mut a = SlotAllocator::from_used((0..200).filter(|s| *s != 70 && *s != 130), None);
        assert_eq!(a.in_use(), 198);
        assert_eq!(a.allocate(), Some(70));
        assert_eq!(a.allocate(), Some(130));
        assert_eq!(a.allocate(), Some(200), "then the store grows");
        a.release(5, 1);
        a.release(199, 1);
        a.release(200, 1);
        a.commit_done(1);
        assert_eq!(a.allocate(), Some(5), "a freed low slot is found again");
        assert_eq!(a.trim(), 199, "trailing free slots are dropped");
        assert_eq!(a.allocate(), Some(199));
    }

    #[test]
    fn a_bitmap_of_released_slots_waits_for_its_commit_too() {
        let mut a = SlotAllocator::from_used(0..130, None);
        let mut bits = vec![0u64; 3];
        bits[0] |= 1 << 3;
        bits[1] |= 1 << 1; // slot 65
        bits[2] |= 1 << 10; // slot 138: beyond the high water, ignored
        a.release_bitmap(bits, 4);
        assert_eq!((a.in_use(), a.pending()), (128, 2));
        assert_eq!(a.allocate(), Some(130), "not before commit 4");
        a.commit_done(4);
        assert_eq!(a.pending(), 0);
        assert_eq!(a.allocate(), Some(3));
        assert_eq!(a.allocate(), Some(65));
        assert_eq!(a.allocate(), Some(131));
    }
}
