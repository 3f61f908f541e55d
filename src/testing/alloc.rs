//! A global allocator that counts live heap bytes, for benchmarks' memory figures.
//!
//! Owns the one `unsafe` outside [`crate::sys`]: a `GlobalAlloc` must be an `unsafe impl`. It
//! forwards every call to the system allocator unchanged and only counts. Never used by the
//! daemon or the CLI (it is behind the `testing` feature).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live heap bytes; install with `#[global_allocator]`.
pub struct CountingAlloc {
    live: AtomicUsize,
}

impl CountingAlloc {
    /// A counter at zero.
    pub const fn new() -> Self {
        CountingAlloc { live: AtomicUsize::new(0) }
    }

    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so `System`'s guarantees are ours; the counter is only arithmetic on an atomic.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.live.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.live.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from this allocator, i.e. from `System`, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        self.live.fetch_add(new, Ordering::Relaxed);
        self.live.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `System` with layout `l`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(p, l, new) }
    }
}
