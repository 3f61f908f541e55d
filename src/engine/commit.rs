//! Group commit: makes journaled records durable, then lets held-back live data reach the volume.
//!
//! One commit at a time (the journal lock). A commit takes the records buffered so far, syncs the
//! store (so the slots those records name are durable), appends the records as one journal batch
//! and syncs it, then writes the chunks held for this commit to the volume and frees the slots
//! released before it. When the journal has grown past its budget the commit writes the whole
//! live state into the other journal file instead (compaction).

use std::mem;
use std::sync::atomic::Ordering;

use super::Inner;
use crate::diffarea::format::Record;
use crate::error::{DiffAreaError, Error};

enum Work {
    Append(Vec<u8>),
    Compact(Vec<Vec<u8>>),
}

impl Inner {
    /// Runs one commit; returns its number. A diff-area failure stops the diff area (copies
    /// are lost, held data goes to the volume) and is returned, so that whoever needed the
    /// commit — a deletion, a new copy — learns it did not happen.
    pub(super) fn commit(&self) -> Result<u64, Error> {
        self.commit_inner(false)
    }

    /// A commit that compacts the journal whatever its size.
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
        let (work, n) = if compact {
            let (n, seal) = {
                let mut log = self.log.lock();
                // The compacted state is rebuilt from the catalog, which does not hold a seal
                // (the clean-stop fingerprint): if the log ends with one, it goes last again.
                let seal = Record::decode_all(&log.payload).ok().and_then(|mut records| match records.pop() {
                    Some(r @ Record::Sealed { .. }) => Some(r),
                    _ => None,
                });
                log.payload.clear();
                log.commit_no += 1;
                (log.commit_no - 1, seal)
            };
            // The state is read in bounded steps so that writers are never held for a whole
            // scan. What changes meanwhile is also in the log, appended after the compacted
            // state by the next commit; replaying a record twice is harmless (see design.md).
            let max = self.max_size.lock().unwrap_or(u64::MAX);
            let mut payloads = vec![self.catalog.read().durable_copies(max)];
            let mut from = Some((0u64, 0u32));
            while let Some(start) = from {
                let (payload, next) = self.catalog.read().durable_records_step(start, 4096);
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
            (Work::Compact(payloads), n)
        } else {
            let mut log = self.log.lock();
            let n = log.commit_no;
            log.commit_no += 1;
            (Work::Append(mem::take(&mut log.payload)), n)
        };
        let result = match &work {
            Work::Append(p) if p.is_empty() => Ok(()),
            _ => self.store.sync_data().map_err(|source| DiffAreaError::Io { what: "syncing the store", source }).and_then(
                |()| match &work {
                    Work::Append(p) => journal.append(p),
                    Work::Compact(ps) => journal.compact(ps),
                },
            ),
        };
        drop(journal);
        if let Err(e) = result {
            self.fail_diff_area(e.to_string());
            return Err(e.into());
        }
        if compact {
            tracing::debug!(commit = n, "journal compacted");
        }
        self.release_held(Some(n))?;
        self.slots.lock().commit_done(n);
        self.pending.checkpoint_if_due();
        Ok(n)
    }

    /// Writes held-back chunks of commits `<= upto` to the volume.
    fn release_held(&self, upto: Option<u64>) -> Result<(), Error> {
        self.pending
            .release(upto, |at, bufs| self.volume.write_vectored_at(bufs, at))
            .map_err(Error::volume("writing held-back data to the volume"))
    }

    /// Bytes the active journal file may reach before a commit compacts it.
    fn compaction_threshold(&self) -> u64 {
        if let Some(t) = self.options.journal_compact_bytes {
            return t;
        }
        match *self.max_size.lock() {
            Some(max) => (128 << 10) + (max / u64::from(self.chunk_size)) * 32,
            None => {
                let cat = self.catalog.read();
                let live = cat.index().len() as u64 * 17 + cat.copies().len() as u64 * 80;
                (1 << 20).max(3 * live)
            }
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
