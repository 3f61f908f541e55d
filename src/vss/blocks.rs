//! One store's block map: which 16 KiB blocks of the volume it holds old content for, built from
//! its block list the way the documented format asks (descriptors are applied front to back):
//!
//! - a "not used" descriptor is ignored;
//! - a forwarder says "this block's old content is the next store's block at `relative`"; a later
//!   descriptor whose original offset is a forwarder's `relative` takes the forwarder's original
//!   offset instead (the reverse map), and a forwarder that points at itself is ignored;
//! - an overlay holds only some 512-byte sectors of a block (its bitmap); overlays of one block
//!   merge, and a full descriptor that replaces an overlaid block keeps the overlay on top;
//! - a later full descriptor for the same block replaces the earlier one.

use std::collections::HashMap;

use super::format::{BlockDescriptor, BLOCK_SIZE, FLAG_NOT_USED};

#[derive(Debug, Default)]
pub(super) struct BlockMap {
    /// By original offset (16 KiB aligned).
    pub forward: HashMap<u64, BlockDescriptor>,
    /// Forwarders, by the offset they forward to.
    pub reverse: HashMap<u64, BlockDescriptor>,
}

impl BlockMap {
    pub(super) fn insert(&mut self, d: BlockDescriptor) {
        if d.flags & FLAG_NOT_USED != 0 {
            return;
        }
        let mut original = d.original;
        if !d.is_overlay() {
            if let Some(r) = self.reverse.remove(&d.original) {
                original = r.original;
            }
        }
        if d.is_forwarder() && original == d.relative {
            return;
        }
        let mut new = BlockDescriptor { original, ..d };
        match self.forward.get_mut(&original) {
            None => {
                self.forward.insert(original, new.clone());
            }
            Some(existing) => {
                if new.is_overlay() {
                    if existing.is_overlay() {
                        existing.bitmap |= new.bitmap;
                    } else if let Some(ov) = existing.overlay.as_mut() {
                        ov.bitmap |= new.bitmap;
                    } else {
                        existing.overlay = Some(Box::new(new));
                    }
                    return;
                }
                new.overlay = if existing.is_overlay() { Some(Box::new(existing.clone())) } else { existing.overlay.take() };
                *existing = new.clone();
            }
        }
        if new.is_forwarder() {
            self.reverse.insert(new.relative, new);
        }
    }

    /// The descriptor covering `offset`.
    pub(super) fn at(&self, offset: u64) -> Option<&BlockDescriptor> {
        self.forward.get(&(offset - offset % BLOCK_SIZE))
    }

    /// Whether a forwarder points at the block covering `offset`.
    pub(super) fn forwarded_to(&self, offset: u64) -> bool {
        self.reverse.contains_key(&(offset - offset % BLOCK_SIZE))
    }
}

/// A bitmap with one bit per 16 KiB block of the volume (LSB first); a set bit means the block
/// was not in use.
#[derive(Debug, Default)]
pub(super) struct Bitmap(pub Vec<u8>);

impl Bitmap {
    pub(super) fn is_set(&self, offset: u64) -> bool {
        let block = offset / BLOCK_SIZE;
        self.0.get((block / 8) as usize).is_some_and(|b| b & (1 << (block % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vss::format::{FLAG_FORWARDER, FLAG_OVERLAY};

    fn d(original: u64, relative: u64, store: u64, flags: u32, bitmap: u32) -> BlockDescriptor {
        BlockDescriptor { original, relative, store, flags, bitmap, overlay: None }
    }

    #[test]
    fn later_descriptors_replace_and_overlays_merge() {
        let mut m = BlockMap::default();
        m.insert(d(0x4000, 0, 0x10000, 0, 0));
        m.insert(d(0x4000, 1, 0x20000, FLAG_OVERLAY, 0b01));
        m.insert(d(0x4000, 1, 0x20000, FLAG_OVERLAY, 0b10));
        let e = m.at(0x4000 + 100).unwrap();
        assert_eq!(e.store, 0x10000);
        assert_eq!(e.overlay.as_ref().unwrap().bitmap, 0b11);
        // A full descriptor replacing an overlaid block keeps the overlay.
        m.insert(d(0x4000, 0, 0x30000, 0, 0));
        assert_eq!(m.at(0x4000).unwrap().store, 0x30000);
        assert_eq!(m.at(0x4000).unwrap().overlay.as_ref().unwrap().bitmap, 0b11);
        // Not-used descriptors are ignored.
        m.insert(d(0x8000, 0, 0x40000, FLAG_NOT_USED, 0));
        assert!(m.at(0x8000).is_none());
    }

    #[test]
    fn forwarders_chain_and_self_forwarders_are_ignored() {
        let mut m = BlockMap::default();
        m.insert(d(0xC000, 0xC000, 0, FLAG_FORWARDER, 0));
        assert!(m.forward.is_empty(), "a forwarder to itself is ignored");
        m.insert(d(0x4000, 0x8000, 0, FLAG_FORWARDER, 0));
        assert!(m.forwarded_to(0x8000));
        // A descriptor for the forwarded-to block takes the forwarder's original offset.
        m.insert(d(0x8000, 0, 0x50000, 0, 0));
        assert!(!m.forwarded_to(0x8000));
        assert_eq!(m.at(0x4000).unwrap().store, 0x50000);
    }
}
