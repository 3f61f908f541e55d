//! Group commit: makes journaled records durable, then lets held-back live data reach the volume.
//!
//! One commit at a time (the journal lock). A commit takes the records buffered so far, syncs the
//! store (so the slots those records name are durable), appends the records as one journal batch
//! and syncs it, then writes the chunks held for this commit to the volume and frees the slots
//! released before it.
//!
//! When the journal's tail has grown past its budget, the commit is a merge instead: the
//! records added since the last checkpoint are frozen, merged with the checkpoint into the
//! other index file (read and written without the catalog's lock, so writers and readers carry
//! on), and the journal is compacted to the new checkpoint, the copies and the records added
//! during the merge. The switch is the journal's header write; a crash before it leaves the old
//! checkpoint and journal whole (see `docs/design.md`, "The checkpointed index").

use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Inner;
use crate::diffarea::base::{BaseIndex, BaseWriter};
use crate::diffarea::catalog;
use crate::diffarea::format::Record;
use crate::diffarea::journal::Journal;
use crate::diffarea::layered;
use crate::error::{DiffAreaError, Error};

/// The most journal a merge lets accumulate: about 240 K records, replayed by an open in about
/// 0.1 s. A constant, so that the open's work does not grow with the diff area; the price is the
/// merge's rewrite of the whole checkpoint once per budget (see `docs/design.md`).
const TAIL_BUDGET: u64 = 4 << 20;

impl Inner {
    /// Runs one commit; returns its number. A diff-area failure stops the diff area (copies
    /// are lost, held data goes to the volume) and is returned, so that whoever needed the
    /// commit — a deletion, a new copy — learns it did not happen.
    pub(super) fn commit(&self) -> Result<u64, Error> {
        self.commit_inner(false)
    }

    /// A commit that merges the index and compacts the journal whatever their size.
    pub(super) fn commit_compacting(&self) -> Result<u64, Error> {
        self.commit_inner(true)
    }

    fn commit_inner(&self, force_compact: bool) -> Result<u64, Error> {
        if self.failure.lock().is_some() {
            self.release_held(None)?;
            return Ok(0);
        }
        let mut journal = self.journal.lock();
        let compact = force_compact || journal.active_len() > self.compaction_threshold();
        let (result, n) = if compact {
            self.merge_and_compact(&mut journal)
        } else {
            let payload = {
                let mut log = self.log.lock();
                log.commit_no += 1;
                (mem::take(&mut log.payload), log.commit_no - 1)
            };
            let result = if payload.0.is_empty() {
                Ok(())
            } else {
                self.store
                    .sync_data()
                    .map_err(|source| DiffAreaError::Io { what: "syncing the store", source })
                    .and_then(|()| journal.append(&payload.0))
            };
            (result, payload.1)
        };
        drop(journal);
        if let Err(e) = result {
            self.fail_diff_area(e.to_string());
            return Err(e.into());
        }
        self.release_held(Some(n))?;
        self.slots.lock().commit_done(n);
        self.pending.checkpoint_if_due();
        Ok(n)
    }

    /// The merge (see the module docs). Returns the outcome and the commit's number.
    fn merge_and_compact(&self, journal: &mut Journal) -> (Result<(), DiffAreaError>, u64) {
        let started = Instant::now();
        let (frozen, copies, next_epoch, n, seal) = {
            let mut cat = self.catalog.write();
            let mut log = self.log.lock();
            // The compacted journal is rebuilt from the catalog, which does not hold a seal
            // (the clean-stop fingerprint): if the log ends with one, it goes last again.
            let seal = Record::decode_all(&log.payload).ok().and_then(|mut records| match records.pop() {
                Some(r @ Record::Sealed { .. }) => Some(r),
                _ => None,
            });
            // The log's records are in the catalog: in the frozen layer, or copies.
            log.payload.clear();
            log.commit_no += 1;
            (cat.index_mut().freeze(), cat.copies_snapshot(), cat.next_epoch(), log.commit_no - 1, seal)
        };
        let generation = journal.header().generation + 1;
        let file_no = 1 - self.index_file.load(Ordering::Acquire);
        let file = Arc::clone(&self.index_files[usize::from(file_no)]);
        let merged = (|| {
            let writer = BaseWriter::new(Arc::clone(&file), generation, *self.diff_area_id.as_bytes())?;
            let (merged, _) = layered::merge(&frozen, writer, next_epoch, |lower, e| catalog::merge_fate(&copies, lower, e))?;
            let store_slots = self
                .store
                .len()
                .map_err(|source| DiffAreaError::Io { what: "reading the store size", source })?
                .div_ceil(u64::from(self.chunk_size));
            let (base, _) = BaseIndex::open(file, generation, *self.diff_area_id.as_bytes(), Arc::clone(&self.page_cache), store_slots)?;
            Ok::<_, DiffAreaError>((base, merged))
        })();
        drop(frozen);
        let (base, merged) = match merged {
            Ok(m) => m,
            Err(e) => {
                self.catalog.write().index_mut().thaw();
                return (Err(e), n);
            }
        };
        // The journal: the checkpoint, the copies, then the records added since the freeze, read
        // in bounded steps (what changes meanwhile is also in the log, appended by the next
        // commit; replaying a record twice is harmless, see design.md).
        let max = self.max_size.lock().unwrap_or(u64::MAX);
        let checkpoint = Record::IndexCheckpoint { file: file_no, generation };
        let mut payloads = vec![self.catalog.read().durable_copies(max, Some(checkpoint))];
        let mut from = Some((0u64, 0u32));
        while let Some(start) = from {
            let (records, next) = self.catalog.read().index().scan_in_memory(start, 4096);
            let mut payload = Vec::new();
            for e in records {
                Record::Preserved { chunk: e.chunk, upper: e.upper, slot: e.slot }.encode_into(&mut payload);
            }
            if !payload.is_empty() {
                payloads.push(payload);
            }
            from = next;
        }
        if let Some(seal) = seal {
            let mut last = Vec::new();
            seal.encode_into(&mut last);
            payloads.push(last);
        }
        let result = self
            .store
            .sync_data()
            .map_err(|source| DiffAreaError::Io { what: "syncing the store", source })
            .and_then(|()| journal.compact(&payloads));
        if let Err(e) = result {
            self.catalog.write().index_mut().thaw();
            return (Err(e), n);
        }
        let records = merged.records;
        let freed = self.catalog.write().index_mut().install(base, merged);
        self.index_file.store(file_no, Ordering::Release);
        // The old file is named by no journal any more (the old journal was cut to its header,
        // as a compaction does): give its space back.
        let _ = self.index_files[usize::from(1 - file_no)].set_len(0);
        let collected = freed.records.len() + freed.slots.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        {
            let mut slots = self.slots.lock();
            freed.records.iter().for_each(|e| slots.release(e.slot, n));
            slots.release_bitmap(freed.slots, n);
        }
        tracing::debug!(commit = n, records, collected, ms = started.elapsed().as_millis() as u64, "index merged, journal compacted");
        (Ok(()), n)
    }

    /// Writes held-back chunks of commits `<= upto` to the volume.
    fn release_held(&self, upto: Option<u64>) -> Result<(), Error> {
        self.pending
            .release(upto, |at, bufs| self.volume.write_vectored_at(bufs, at))
            .map_err(Error::volume("writing held-back data to the volume"))
    }

    /// Bytes the active journal file may reach before a commit merges: what the diff area's
    /// maximum size reserves for it, and at most [`TAIL_BUDGET`], which bounds an open's replay
    /// whatever the size of the diff area (the tail is replayed at every open; the checkpoint
    /// is not).
    fn compaction_threshold(&self) -> u64 {
        if let Some(t) = self.options.journal_compact_bytes {
            return t;
        }
        match *self.max_size.lock() {
            Some(max) => ((128 << 10) + (max / u64::from(self.chunk_size)) * 32).min(TAIL_BUDGET),
            None => TAIL_BUDGET,
        }
    }

    /// The background committer: every `commit_interval`, commits if anything waits.
    pub(super) fn run_committer(&self) {
        let (lock, cv) = &self.wake;
        loop {
            {
                let mut g = lock.lock();
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                cv.wait_for(&mut g, self.options.commit_interval);
            }
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let waiting = !self.pending.is_empty() || !self.log.lock().payload.is_empty();
            if waiting {
                if let Err(e) = self.commit() {
                    tracing::error!(error = %e, "background commit failed");
                }
            }
        }
    }
}
