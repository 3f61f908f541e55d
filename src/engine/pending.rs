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
//! Every change to a held chunk is also appended to the diff area's redo log
//! ([`crate::diffarea::redo`]) under the chunk's shard lock, before the write is answered, and a
//! release is logged before the chunk stops being held: so a death of the process loses no
//! answered write (the next open replays what was still held). Each shard appends to one of
//! the log's two files; a checkpoint moves the shards, one at a time, to the other file by
//! logging their held chunks there whole, and then empties the first file.
//!
//! Owns only the held bytes and their log; never decides when to commit.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::diffarea::redo::{RedoLog, REDO_HEADER_LEN};

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

/// Below this, a redo file is never checkpointed (by default).
pub(super) const CHECKPOINT_MIN: u64 = 8 << 20;

#[derive(Debug, Default)]
struct Shard {
    held: HashMap<u64, Held>,
    /// The redo file this shard appends to.
    file: usize,
}

/// Whether a change to held bytes is in the redo log, so that a death of the process cannot
/// lose it. When it is not (the log's file could not be written), the caller must make the bytes
/// reach the volume before it answers (a commit).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Logged {
    Yes,
    No,
}

/// Chunks waiting for their commit, sharded by runs of chunks.
#[derive(Debug)]
pub(super) struct Pending {
    shards: Vec<Mutex<Shard>>,
    /// `None`: held bytes live in memory only (test doubles that model power loss alone).
    redo: Option<RedoLog>,
    /// Cleared when the log failed: held changes are then made durable before they are answered.
    redo_ok: AtomicBool,
    /// Checkpoints wait until the open's replay has read the old entries.
    checkpoints: AtomicBool,
    checkpoint: Mutex<()>,
    /// The file shards move to at the next checkpoint is the other one.
    active: AtomicUsize,
    /// Below this, the active redo file is never checkpointed.
    checkpoint_min: u64,
    bytes: AtomicU64,
    chunk_shift: u32,
    /// Released chunk buffers kept for reuse: fresh allocations cost a page fault per page.
    spare: Mutex<Vec<Box<[u8]>>>,
    spare_max: usize,
}

impl Pending {
    /// Holds chunks of `1 << chunk_shift` bytes, logging them to `redo` (checkpointed once a
    /// file passes `checkpoint_min` bytes); keeps up to `spare_max` released buffers.
    pub(super) fn new(chunk_shift: u32, spare_max: usize, redo: Option<RedoLog>, checkpoint_min: u64) -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            redo,
            redo_ok: AtomicBool::new(true),
            checkpoints: AtomicBool::new(false),
            checkpoint: Mutex::new(()),
            active: AtomicUsize::new(0),
            checkpoint_min,
            bytes: AtomicU64::new(0),
            chunk_shift,
            spare: Mutex::new(Vec::new()),
            spare_max,
        }
    }

    fn shard(&self, chunk: u64) -> &Mutex<Shard> {
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
    ) -> io::Result<Logged> {
        let mut shard = self.shard(chunk).lock();
        if let Some(h) = shard.held.get_mut(&chunk) {
            h.commit = h.commit.max(commit);
            let grown = merge(h, chunk << self.chunk_shift, offset_in_chunk, data, volume)?;
            self.bytes.fetch_add(grown, Ordering::AcqRel);
        } else {
            let mut buf = self.buffer(chunk_len);
            let valid = offset_in_chunk..offset_in_chunk + data.len();
            buf[valid.clone()].copy_from_slice(data);
            shard.held.insert(chunk, Held { commit, data: buf, valid });
            self.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
        }
        Ok(self.log_held(shard.file, (chunk << self.chunk_shift) + offset_in_chunk as u64, data))
    }

    /// Applies a write to a held chunk; `None` when the chunk is not held.
    pub(super) fn update(&self, chunk: u64, offset_in_chunk: usize, data: &[u8], volume: VolumeRead<'_>) -> io::Result<Option<Logged>> {
        let mut shard = self.shard(chunk).lock();
        let file = shard.file;
        let Some(h) = shard.held.get_mut(&chunk) else { return Ok(None) };
        let grown = merge(h, chunk << self.chunk_shift, offset_in_chunk, data, volume)?;
        self.bytes.fetch_add(grown, Ordering::AcqRel);
        Ok(Some(self.log_held(file, (chunk << self.chunk_shift) + offset_in_chunk as u64, data)))
    }

    /// Logs held bytes (under their shard's lock).
    fn log_held(&self, file: usize, offset: u64, data: &[u8]) -> Logged {
        let Some(redo) = &self.redo else { return Logged::Yes };
        if !self.redo_ok.load(Ordering::Acquire) {
            return Logged::No;
        }
        match redo.append_held(file, offset, data) {
            Ok(()) => Logged::Yes,
            Err(e) => {
                self.redo_failed(&e);
                Logged::No
            }
        }
    }

    /// Stops using the redo log after a failed append: from now on held changes are committed
    /// before they are answered. A release that could not be logged would let an old entry be
    /// replayed over newer data, so the log's files are emptied (their headers stay).
    fn redo_failed(&self, e: &io::Error) {
        if self.redo_ok.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %e, "the diff area's redo log cannot be written: live writes to held chunks now wait for their commit");
        }
        if let Some(redo) = &self.redo {
            for i in 0..2 {
                if let Err(e) = redo.clear(i) {
                    tracing::error!(error = %e, file = i, "emptying a redo file failed");
                }
            }
        }
    }

    /// Whether `chunk` is held.
    pub(super) fn holds(&self, chunk: u64) -> bool {
        self.shard(chunk).lock().held.contains_key(&chunk)
    }

    /// Reads `buf` from `offset_in_chunk` of a held chunk — the held bytes over what the volume
    /// has — and returns true; false when the chunk is not held (then the volume has it all).
    pub(super) fn read(&self, chunk: u64, offset_in_chunk: usize, buf: &mut [u8], volume: VolumeRead<'_>) -> io::Result<bool> {
        if self.is_empty() {
            return Ok(false);
        }
        let shard = self.shard(chunk).lock();
        let Some(h) = shard.held.get(&chunk) else { return Ok(false) };
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
    /// chunks in one call — logs their release and forgets them. Chunks stay held if their write
    /// fails.
    pub(super) fn release(&self, upto: Option<u64>, mut write: impl FnMut(u64, &[&[u8]]) -> io::Result<()>) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        for shard in &self.shards {
            // One shard at a time: writers and readers of other shards are never held.
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let map = &mut shard.held;
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
            let mut written: Vec<u64> = Vec::with_capacity(due.len());
            let mut failure = None;
            for run in runs {
                let first = &map[&run[0]];
                let at = (run[0] << self.chunk_shift) + first.valid.start as u64;
                let bufs: Vec<&[u8]> = run.iter().map(|c| &map[c].data[map[c].valid.clone()]).collect();
                if let Err(e) = write(at, &bufs) {
                    failure = Some(e);
                    break;
                }
                written.extend_from_slice(&run);
            }
            // The release is logged before the chunks stop being held: a write straight to the
            // volume can only follow it, so a replay never puts older bytes over it.
            if !written.is_empty() {
                if let Some(redo) = &self.redo {
                    if self.redo_ok.load(Ordering::Acquire) {
                        if let Err(e) = redo.append_released(shard.file, &written) {
                            self.redo_failed(&e);
                        }
                    }
                }
            }
            let mut len = 0u64;
            let mut spare = self.spare.lock();
            for c in &written {
                if let Some(h) = map.remove(c) {
                    len += h.valid.len() as u64;
                    if spare.len() < self.spare_max {
                        spare.push(h.data);
                    }
                }
            }
            drop(spare);
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Lets checkpoints run (once the open's replay has read the log's old entries).
    pub(super) fn allow_checkpoints(&self) {
        self.checkpoints.store(true, Ordering::Release);
    }

    /// Empties the redo log when nothing is held (at open after the replay, at a clean close).
    pub(super) fn reset_log(&self) {
        let Some(redo) = &self.redo else { return };
        let _one = self.checkpoint.lock();
        let shards: Vec<_> = self.shards.iter().map(|s| s.lock()).collect();
        if shards.iter().any(|s| !s.held.is_empty()) {
            return;
        }
        for i in 0..2 {
            if let Err(e) = redo.clear(i) {
                self.redo_failed(&e);
            }
        }
    }

    /// Moves every shard to the other redo file once the active one has grown past both
    /// `checkpoint_min` ([`CHECKPOINT_MIN`] by default) and four times the bytes held (so the rewriting costs at most a
    /// quarter of what was logged), then empties the first file.
    pub(super) fn checkpoint_if_due(&self) {
        let Some(redo) = &self.redo else { return };
        if !self.checkpoints.load(Ordering::Acquire) || !self.redo_ok.load(Ordering::Acquire) {
            return;
        }
        let old = self.active.load(Ordering::Acquire);
        let len = redo.len(old);
        if len < self.checkpoint_min || len < 4 * self.bytes() {
            return;
        }
        let Some(_one) = self.checkpoint.try_lock() else { return };
        let new = 1 - old;
        if redo.len(new) != REDO_HEADER_LEN {
            if let Err(e) = redo.reset(new) {
                return self.redo_failed(&e);
            }
        }
        for shard in &self.shards {
            let mut shard = shard.lock();
            if shard.file == new {
                continue;
            }
            for (chunk, h) in &shard.held {
                let at = (chunk << self.chunk_shift) + h.valid.start as u64;
                if let Err(e) = redo.append_held(new, at, &h.data[h.valid.clone()]) {
                    return self.redo_failed(&e);
                }
            }
            shard.file = new;
        }
        self.active.store(new, Ordering::Release);
        if let Err(e) = redo.reset(old) {
            self.redo_failed(&e);
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::MemStorage;
    use crate::volume::Storage;

    const SHIFT: u32 = 14; // 16 KiB chunks
    const CHUNK: usize = 1 << SHIFT;

    /// Applies what a new process would replay from `files` to `volume`. The replay reads
    /// copies of the files: an open starts empty files afresh, which must not disturb the log
    /// still in use.
    fn replayed(files: &[Arc<dyn Storage>; 2], mut volume: Vec<u8>) -> Vec<u8> {
        let copy = |f: &Arc<dyn Storage>| -> Arc<dyn Storage> {
            let mut bytes = vec![0u8; f.len().unwrap() as usize];
            f.read_at(&mut bytes, 0).unwrap();
            let c = MemStorage::default();
            c.write_at(&bytes, 0).unwrap();
            Arc::new(c)
        };
        let files = [copy(&files[0]), copy(&files[1])];
        let (_log, rec) = RedoLog::open(files, Some([1; 16]), [2; 16], CHUNK as u32, volume.len() as u64).unwrap();
        for (at, data) in rec.writes {
            volume[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
        volume
    }

    #[test]
    fn a_checkpoint_keeps_held_chunks_and_empties_the_old_file() {
        let files: [Arc<dyn Storage>; 2] = [Arc::new(MemStorage::default()), Arc::new(MemStorage::default())];
        let pending = Pending::new(SHIFT, 4, Some(RedoLog::create(files.clone(), [1; 16], [2; 16]).unwrap()), CHECKPOINT_MIN);
        pending.allow_checkpoints();
        let volume = vec![0u8; 256 * CHUNK];
        let read = |at: u64, b: &mut [u8]| -> io::Result<()> {
            b.copy_from_slice(&volume[at as usize..at as usize + b.len()]);
            Ok(())
        };
        // Chunk 3 is held, then rewritten over and over (the log grows, the held bytes do not);
        // chunk 100 is held and released.
        let mut want = volume.clone();
        assert_eq!(pending.hold(100, CHUNK, 1, 0, &[9; 100], &read).unwrap(), Logged::Yes);
        pending.release(Some(1), |_, _| Ok(())).unwrap();
        for i in 0..700u32 {
            let data = vec![(i % 251) as u8; CHUNK];
            if i == 0 {
                assert_eq!(pending.hold(3, CHUNK, 2, 0, &data, &read).unwrap(), Logged::Yes);
            } else {
                assert_eq!(pending.update(3, 0, &data, &read).unwrap(), Some(Logged::Yes));
            }
            want[3 * CHUNK..4 * CHUNK].copy_from_slice(&data);
        }
        let before = pending.redo.as_ref().unwrap().len(0);
        assert!(before > CHECKPOINT_MIN);
        assert_eq!(replayed(&files, volume.clone()), want, "before the checkpoint");
        pending.checkpoint_if_due();
        let redo = pending.redo.as_ref().unwrap();
        assert_eq!(redo.len(0), REDO_HEADER_LEN, "the old file is emptied");
        assert!(redo.len(1) < 2 * CHUNK as u64, "the new one holds chunk 3 once: {}", redo.len(1));
        assert_eq!(replayed(&files, volume.clone()), want, "after the checkpoint");
        // Writes go on in the new file; a release there retires the chunk.
        let data = vec![77u8; 10];
        assert_eq!(pending.update(3, 5, &data, &read).unwrap(), Some(Logged::Yes));
        want[3 * CHUNK + 5..3 * CHUNK + 15].copy_from_slice(&data);
        assert_eq!(replayed(&files, volume.clone()), want);
        pending.release(Some(2), |_, _| Ok(())).unwrap();
        assert_eq!(replayed(&files, volume.clone()), volume, "nothing held, nothing replayed");
    }
}
