//! Live data held back until the record that preserves the chunk's old content is durable.
//!
//! After a persistent shadow copy, the first write to a chunk copies the old content into a
//! diff-area slot and journals a record. If the new bytes reached the volume file before that
//! record was durable, the kernel's writeback could make them durable first and a power loss
//! would leave the copy without its chunk. So the new content of such a chunk waits here, whole,
//! tagged with the number of the commit that carries its record; the commit writes it to the
//! volume once the record is durable. Live reads and later writes to the chunk see it here.
//!
//! Owns only the held chunks; never decides when to commit.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const SHARDS: usize = 64;
const RUN_SHIFT: u32 = 6;

#[derive(Debug)]
struct Held {
    commit: u64,
    data: Box<[u8]>,
}

/// Chunks waiting for their commit, sharded by chunk number.
#[derive(Debug)]
pub struct Pending {
    shards: Vec<Mutex<HashMap<u64, Held>>>,
    bytes: AtomicU64,
    /// Released chunk buffers kept for reuse: fresh allocations cost a page fault per page.
    spare: Mutex<Vec<Box<[u8]>>>,
    spare_max: usize,
}

impl Pending {
    /// Keeps up to `spare_max` released buffers for reuse.
    pub fn new(spare_max: usize) -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            bytes: AtomicU64::new(0),
            spare: Mutex::new(Vec::new()),
            spare_max,
        }
    }

    /// A buffer of `len` bytes (contents unspecified), reused when one is spare.
    pub fn buffer(&self, len: usize) -> Box<[u8]> {
        let reused = {
            let mut spare = self.spare.lock();
            match spare.last() {
                Some(b) if b.len() == len => spare.pop(),
                _ => None,
            }
        };
        reused.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
    }

    /// Runs of 64 consecutive chunks share a shard, so that a release can write a run with one
    /// call.
    fn shard(&self, chunk: u64) -> &Mutex<HashMap<u64, Held>> {
        &self.shards[((chunk >> RUN_SHIFT) % SHARDS as u64) as usize]
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Holds the whole new content of `chunk` until commit `commit` is done.
    pub fn hold(&self, chunk: u64, commit: u64, data: Box<[u8]>) {
        let len = data.len() as u64;
        let prev = self.shard(chunk).lock().insert(chunk, Held { commit, data });
        self.bytes.fetch_add(len, Ordering::AcqRel);
        if let Some(p) = prev {
            self.bytes.fetch_sub(p.data.len() as u64, Ordering::AcqRel);
        }
    }

    /// Applies a write to a held chunk; false when the chunk is not held.
    pub fn update(&self, chunk: u64, offset_in_chunk: usize, data: &[u8]) -> bool {
        match self.shard(chunk).lock().get_mut(&chunk) {
            Some(h) => {
                h.data[offset_in_chunk..offset_in_chunk + data.len()].copy_from_slice(data);
                true
            }
            None => false,
        }
    }

    /// Whether `chunk` is held.
    pub fn holds(&self, chunk: u64) -> bool {
        self.shard(chunk).lock().contains_key(&chunk)
    }

    /// Copies from a held chunk; false when the chunk is not held.
    pub fn read(&self, chunk: u64, offset_in_chunk: usize, buf: &mut [u8]) -> bool {
        if self.is_empty() {
            return false;
        }
        match self.shard(chunk).lock().get(&chunk) {
            Some(h) => {
                buf.copy_from_slice(&h.data[offset_in_chunk..offset_in_chunk + buf.len()]);
                true
            }
            None => false,
        }
    }

    /// Writes every chunk held for commits `<= upto` (all of them when `None`) through `write`
    /// — runs of consecutive chunks in one call, as `(first chunk, their contents)` — and forgets
    /// them. Chunks stay held if their write fails.
    pub fn release(&self, upto: Option<u64>, mut write: impl FnMut(u64, &[&[u8]]) -> io::Result<()>) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        for shard in &self.shards {
            // One shard at a time: writers and readers of other shards are never held.
            let mut map = shard.lock();
            let mut due: Vec<u64> = map.iter().filter(|(_, h)| upto.is_none_or(|u| h.commit <= u)).map(|(c, _)| *c).collect();
            if due.is_empty() {
                continue;
            }
            due.sort_unstable();
            for run in due.chunk_by(|a, b| *b == a + 1) {
                let bufs: Vec<&[u8]> = run.iter().map(|c| &map[c].data[..]).collect();
                write(run[0], &bufs)?;
                let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
                let mut spare = self.spare.lock();
                for c in run {
                    if let Some(h) = map.remove(c) {
                        if spare.len() < self.spare_max {
                            spare.push(h.data);
                        }
                    }
                }
                drop(spare);
                self.bytes.fetch_sub(len, Ordering::AcqRel);
            }
        }
        Ok(())
    }
}
