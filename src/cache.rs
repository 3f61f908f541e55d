//! The LRU chunk cache in front of the base volume.
//!
//! Holds whole chunks of the *live* volume as shadow-copy reads found them (a copy reads the
//! volume for every chunk not written since the copy was taken). Every live write invalidates the
//! chunks it touches while it holds their stripe lock, so a reader that fills the cache under the
//! same lock can never insert stale bytes. Never caches diff-area slots or anything it was not
//! handed.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// A chunk-granular LRU cache; capacity 0 disables it.
#[derive(Debug)]
pub struct ChunkCache {
    lru: Option<Mutex<LruCache<u64, Arc<[u8]>>>>,
    /// Entries held, read without the lock so that writes skip invalidation when empty.
    held: AtomicUsize,
}

impl ChunkCache {
    /// A cache of at most `capacity` chunks.
    pub fn new(capacity: usize) -> Self {
        ChunkCache { lru: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))), held: AtomicUsize::new(0) }
    }

    /// The chunk's bytes, if cached (and marks it recently used).
    pub fn get(&self, chunk: u64) -> Option<Arc<[u8]>> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.lru.as_ref()?.lock().get(&chunk).cloned()
    }

    /// Caches a chunk's bytes (evicting the least recently used).
    pub fn insert(&self, chunk: u64, data: Arc<[u8]>) {
        if let Some(lru) = &self.lru {
            let mut lru = lru.lock();
            lru.put(chunk, data);
            self.held.store(lru.len(), Ordering::Release);
        }
    }

    /// Forgets chunks `first..=last`.
    pub fn invalidate(&self, first: u64, last: u64) {
        if self.held.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(lru) = &self.lru {
            let mut lru = lru.lock();
            if last - first < lru.len() as u64 {
                for c in first..=last {
                    lru.pop(&c);
                }
            } else {
                let stale: Vec<u64> = lru.iter().map(|(k, _)| *k).filter(|k| (first..=last).contains(k)).collect();
                stale.iter().for_each(|k| {
                    lru.pop(k);
                });
            }
            self.held.store(lru.len(), Ordering::Release);
        }
    }
}
