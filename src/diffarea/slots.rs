//! Which slots of the `store` file are free, in use, or waiting to become free.
//!
//! A slot freed by a deletion may still be named by a durable journal record until the record of
//! the deletion is durable too; reusing it earlier could let a crash resurrect a copy whose data
//! was overwritten. So freed slots wait in `pending` until the commit that carries the deletion
//! is done ([`SlotAllocator::commit_done`]). Lowest free slots are reused first so that the store
//! file can shrink.

/// Words of a [`SparseBits`] block (32 Ki bits, 4 KiB).
const BLOCK_WORDS: usize = 512;

/// A bitmap kept in blocks of 32 Ki bits, where a block with no bit set takes no memory: the
/// free slots of a full diff area cost nothing, whatever its number of slots.
#[derive(Debug, Default)]
struct SparseBits {
    blocks: Vec<Option<Box<[u64; BLOCK_WORDS]>>>,
}

impl SparseBits {
    /// From a dense bitmap.
    fn from_words(words: &[u64]) -> Self {
        let blocks = words
            .chunks(BLOCK_WORDS)
            .map(|c| {
                c.iter().any(|w| *w != 0).then(|| {
                    let mut b = Box::new([0u64; BLOCK_WORDS]);
                    b[..c.len()].copy_from_slice(c);
                    b
                })
            })
            .collect();
        SparseBits { blocks }
    }

    fn word(&self, w: usize) -> u64 {
        self.blocks.get(w / BLOCK_WORDS).and_then(|b| b.as_ref()).map_or(0, |b| b[w % BLOCK_WORDS])
    }

    fn get(&self, s: u32) -> bool {
        self.word(s as usize / 64) >> (s % 64) & 1 == 1
    }

    /// ORs `bits` into word `w`.
    fn or_word(&mut self, w: usize, bits: u64) {
        if bits == 0 {
            return;
        }
        let b = w / BLOCK_WORDS;
        if self.blocks.len() <= b {
            self.blocks.resize_with(b + 1, || None);
        }
        self.blocks[b].get_or_insert_with(|| Box::new([0u64; BLOCK_WORDS]))[w % BLOCK_WORDS] |= bits;
    }

    fn set(&mut self, s: u32) {
        self.or_word(s as usize / 64, 1 << (s % 64));
    }

    fn clear(&mut self, s: u32) {
        let w = s as usize / 64;
        let b = w / BLOCK_WORDS;
        if let Some(Some(block)) = self.blocks.get_mut(b) {
            block[w % BLOCK_WORDS] &= !(1 << (s % 64));
            if block[w % BLOCK_WORDS] == 0 && block.iter().all(|x| *x == 0) {
                self.blocks[b] = None;
            }
        }
    }

    /// The first set bit in word `from` or after; `from` moves past words found empty.
    fn first_set(&self, from: &mut usize) -> Option<u32> {
        while *from / BLOCK_WORDS < self.blocks.len() {
            match &self.blocks[*from / BLOCK_WORDS] {
                None => *from = (*from / BLOCK_WORDS + 1) * BLOCK_WORDS,
                Some(block) => {
                    let w = block[*from % BLOCK_WORDS];
                    if w != 0 {
                        return Some(*from as u32 * 64 + w.trailing_zeros());
                    }
                    *from += 1;
                }
            }
        }
        None
    }

    /// Drops every bit at or above `bits`.
    fn truncate(&mut self, bits: u32) {
        let words = (bits as usize).div_ceil(64);
        self.blocks.truncate(words.div_ceil(BLOCK_WORDS));
        // The block holding word `words` (the first whole word dropped), if it was kept.
        let (b, start) = (words / BLOCK_WORDS, words % BLOCK_WORDS);
        if start != 0 {
            if let Some(Some(block)) = self.blocks.get_mut(b) {
                block[start..].fill(0);
            }
        }
        if !bits.is_multiple_of(64) {
            let w = bits as usize / 64;
            if let Some(Some(block)) = self.blocks.get_mut(w / BLOCK_WORDS) {
                block[w % BLOCK_WORDS] &= (1u64 << (bits % 64)) - 1;
            }
        }
        if let Some(last) = self.blocks.last_mut() {
            if last.as_ref().is_some_and(|b| b.iter().all(|w| *w == 0)) {
                *last = None;
            }
        }
        while matches!(self.blocks.last(), Some(None)) {
            self.blocks.pop();
        }
    }

    fn count(&self) -> u32 {
        self.blocks.iter().flatten().map(|b| b.iter().map(|w| w.count_ones()).sum::<u32>()).sum()
    }

    fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * 8 + self.blocks.iter().flatten().count() * BLOCK_WORDS * 8
    }
}

/// Free slots (a sparse bitmap over `0..high_water`, bit set: free), slots in use, and slots
/// released but waiting for a commit.
#[derive(Debug)]
pub(crate) struct SlotAllocator {
    /// Most slots the diff area may use (`None`: unbounded).
    capacity: Option<u32>,
    /// Slots `0..high_water` exist in the store file.
    high_water: u32,
    free: SparseBits,
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
    pub(crate) fn from_free(free: Vec<u64>, high_water: u32, capacity: Option<u32>) -> Self {
        let mut free = SparseBits::from_words(&free);
        free.truncate(high_water);
        let free_count = free.count();
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

    fn mark_free(&mut self, s: u32) {
        self.free.set(s);
        self.first_word = self.first_word.min(s as usize / 64);
    }

    /// A free slot, or `None` when the diff area is full.
    pub(crate) fn allocate(&mut self) -> Option<u32> {
        let cap = self.capacity.unwrap_or(u32::MAX);
        let slot = match self.free.first_set(&mut self.first_word) {
            Some(s) if s < cap => {
                self.free.clear(s);
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
                let hw_words = (self.high_water as usize).div_ceil(64);
                for (w, b) in bits.into_iter().enumerate().take(hw_words) {
                    if b != 0 {
                        self.free.or_word(w, b);
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
        let high_water = self.high_water;
        now.into_iter().filter(|s| *s < high_water).for_each(|s| self.mark_free(s));
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
        while self.high_water > 0 && self.free.get(self.high_water - 1) {
            self.free.clear(self.high_water - 1);
            self.high_water -= 1;
        }
        self.free.truncate(self.high_water);
        self.high_water
    }

    pub(crate) fn high_water(&self) -> u32 {
        self.high_water
    }

    /// Heap bytes it holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.free.heap_bytes() + self.pending.capacity() * 16 + self.pending_bulk.iter().map(|(_, b)| b.capacity() * 8).sum::<usize>()
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

    /// The sparse bitmap against a plain set, through every operation the allocator uses.
    #[test]
    fn sparse_bits_behave_like_a_set() {
        use std::collections::BTreeSet;
        let mut bits = SparseBits::default();
        let mut model = BTreeSet::new();
        let mut x = 7u64;
        for i in 0..20_000u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let s = (x >> 40) as u32 % 200_000;
            match i % 5 {
                0 | 1 => {
                    bits.set(s);
                    model.insert(s);
                }
                2 => {
                    bits.clear(s);
                    model.remove(&s);
                }
                3 => {
                    let mut from = (s / 64) as usize;
                    assert_eq!(bits.first_set(&mut from), model.range((s / 64) * 64..).next().copied());
                }
                _ if i % 1000 == 4 => {
                    let cut = 150_000 + s % 50_000;
                    bits.truncate(cut);
                    model.retain(|t| *t < cut);
                }
                _ => assert_eq!(bits.get(s), model.contains(&s)),
            }
        }
        assert_eq!(bits.count() as usize, model.len());
        for s in model.iter().copied() {
            bits.clear(s);
        }
        assert_eq!(bits.heap_bytes(), bits.blocks.capacity() * 8, "empty blocks take no memory");
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
