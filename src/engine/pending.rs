//! Live data held back until the record that preserves the chunk's old content is durable.
//!
//! After a persistent shadow copy, the first write to a chunk copies the old content into a
//! diff-area slot and journals a record. If the new bytes reached the volume file before that
//! record was durable, the kernel's writeback could make them durable first and a power loss
//! would leave the copy without its chunk. So the new bytes of such a chunk wait here, tagged
//! with the number of the commit that carries its record; the commit writes them to the volume
//! once the record is durable. Live reads and later writes to the chunk see them here.
//!
//! A held chunk keeps one contiguous range of new bytes (`valid`); the rest of the chunk is
//! still what the volume holds, which cannot change while the chunk is held (every write to it
//! lands here). A write that would leave a gap fills the gap from the volume first.
//!
//! Owns only the held bytes; never decides when to commit.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const SHARDS: usize = 64;
/// Runs of 64 consecutive chunks share a shard, so that a release can write a run with one call.
const RUN_SHIFT: u32 = 6;

#[derive(Debug)]
struct Held {
    commit: u64,
    /// Chunk-sized; only `valid` is meaningful.
    data: Box<[u8]>,
    valid: Range<usize>,
}

/// Reads bytes of the volume: `(byte offset, buffer)`.
pub(super) type VolumeRead<'a> = &'a dyn Fn(u64, &mut [u8]) -> io::Result<()>;

/// Chunks waiting for their commit, sharded by runs of chunks.
#[derive(Debug)]
pub(super) struct Pending {
    shards: Vec<Mutex<HashMap<u64, Held>>>,
    bytes: AtomicU64,
    chunk_shift: u32,
    /// Released chunk buffers kept for reuse: fresh allocations cost a page fault per page.
    spare: Mutex<Vec<Box<[u8]>>>,
    spare_max: usize,
}

impl Pending {
    /// Holds chunks of `1 << chunk_shift` bytes; keeps up to `spare_max` released buffers.
    pub(super) fn new(chunk_shift: u32, spare_max: usize) -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            bytes: AtomicU64::new(0),
            chunk_shift,
            spare: Mutex::new(Vec::new()),
            spare_max,
        }
    }

    fn shard(&self, chunk: u64) -> &Mutex<HashMap<u64, Held>> {
        &self.shards[((chunk >> RUN_SHIFT) % SHARDS as u64) as usize]
    }

    /// A buffer of `len` bytes (contents unspecified), reused when one is spare.
    fn buffer(&self, len: usize) -> Box<[u8]> {
        let reused = {
            let mut spare = self.spare.lock();
            match spare.last() {
                Some(b) if b.len() == len => spare.pop(),
                _ => None,
            }
        };
        reused.unwrap_or_else(|| vec![0u8; len].into_boxed_slice())
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Holds `data`, written at `offset_in_chunk` of `chunk` (of `chunk_len` bytes), until
    /// commit `commit` is done. If the chunk is held already, the bytes join the held ones and
    /// the chunk waits for the later of the two commits.
    pub(super) fn hold(
        &self,
        chunk: u64,
        chunk_len: usize,
        commit: u64,
        offset_in_chunk: usize,
        data: &[u8],
        volume: VolumeRead<'_>,
    ) -> io::Result<()> {
        let mut map = self.shard(chunk).lock();
        if let Some(h) = map.get_mut(&chunk) {
            h.commit = h.commit.max(commit);
            let grown = merge(h, chunk << self.chunk_shift, offset_in_chunk, data, volume)?;
            self.bytes.fetch_add(grown, Ordering::AcqRel);
            return Ok(());
        }
        let mut buf = self.buffer(chunk_len);
        let valid = offset_in_chunk..offset_in_chunk + data.len();
        buf[valid.clone()].copy_from_slice(data);
        map.insert(chunk, Held { commit, data: buf, valid });
        self.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Applies a write to a held chunk; false when the chunk is not held.
    pub(super) fn update(&self, chunk: u64, offset_in_chunk: usize, data: &[u8], volume: VolumeRead<'_>) -> io::Result<bool> {
        let mut map = self.shard(chunk).lock();
        let Some(h) = map.get_mut(&chunk) else { return Ok(false) };
        let grown = merge(h, chunk << self.chunk_shift, offset_in_chunk, data, volume)?;
        self.bytes.fetch_add(grown, Ordering::AcqRel);
        Ok(true)
    }

    /// Whether `chunk` is held.
    pub(super) fn holds(&self, chunk: u64) -> bool {
        self.shard(chunk).lock().contains_key(&chunk)
    }

    /// Reads `buf` from `offset_in_chunk` of a held chunk — the held bytes over what the volume
    /// has — and returns true; false when the chunk is not held (then the volume has it all).
    pub(super) fn read(&self, chunk: u64, offset_in_chunk: usize, buf: &mut [u8], volume: VolumeRead<'_>) -> io::Result<bool> {
        if self.is_empty() {
            return Ok(false);
        }
        let map = self.shard(chunk).lock();
        let Some(h) = map.get(&chunk) else { return Ok(false) };
        let want = offset_in_chunk..offset_in_chunk + buf.len();
        let both = want.start.max(h.valid.start)..want.end.min(h.valid.end);
        if both.start > want.start || both.end < want.end || both.is_empty() {
            // Under the shard lock, so the held bytes cannot reach the volume meanwhile.
            volume((chunk << self.chunk_shift) + offset_in_chunk as u64, buf)?;
        }
        if !both.is_empty() {
            buf[both.start - want.start..both.end - want.start].copy_from_slice(&h.data[both.clone()]);
        }
        Ok(true)
    }

    /// Writes every chunk held for commits `<= upto` (all of them when `None`) through `write`
    /// — `(byte offset on the volume, pieces written back to back)`, a run of consecutive whole
    /// chunks in one call — and forgets them. Chunks stay held if their write fails.
    pub(super) fn release(&self, upto: Option<u64>, mut write: impl FnMut(u64, &[&[u8]]) -> io::Result<()>) -> io::Result<()> {
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
            // Pieces join a run while they touch: the previous ends its chunk, this one starts its.
            let touches = |a: &u64, b: &u64| {
                let (ha, hb) = (&map[a], &map[b]);
                *b == a + 1 && ha.valid.end == ha.data.len() && hb.valid.start == 0
            };
            let runs: Vec<Vec<u64>> = due.chunk_by(touches).map(<[u64]>::to_vec).collect();
            for run in runs {
                let first = &map[&run[0]];
                let at = (run[0] << self.chunk_shift) + first.valid.start as u64;
                let bufs: Vec<&[u8]> = run.iter().map(|c| &map[c].data[map[c].valid.clone()]).collect();
                write(at, &bufs)?;
                let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
                let mut spare = self.spare.lock();
                for c in &run {
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

/// Writes `data` at `offset` into a held chunk starting at byte `base` of the volume; the held
/// range grows to cover both, and the gap the two may leave is filled from the volume (which
/// still holds the chunk's old bytes there). Returns how many bytes the held range grew by.
fn merge(h: &mut Held, base: u64, offset: usize, data: &[u8], volume: VolumeRead<'_>) -> io::Result<u64> {
    let new = offset..offset + data.len();
    let hull = h.valid.start.min(new.start)..h.valid.end.max(new.end);
    let gap = if new.start > h.valid.end {
        h.valid.end..new.start
    } else if new.end < h.valid.start {
        new.end..h.valid.start
    } else {
        0..0
    };
    if !gap.is_empty() {
        volume(base + gap.start as u64, &mut h.data[gap])?;
    }
    h.data[new].copy_from_slice(data);
    let grown = (hull.len() - h.valid.len()) as u64;
    h.valid = hull;
    Ok(grown)
}
