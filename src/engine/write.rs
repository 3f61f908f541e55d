//! The live write path: copy-before-write, then the write itself.
//!
//! For a write to chunks `first..=last`, holding the chunks' stripes exclusively:
//! 1. ask the catalog which chunks the newest copy still shares with the volume. This read is
//!    the write's place in the sequence of copies: a copy taken after it is after the write
//!    (see [`super::inflight`]);
//! 2. read their current content (held-back data first, else the volume), in contiguous runs;
//! 3. take slots (deleting the oldest copies when the diff area is full), write the old content
//!    into them, then index them — the slot is written before any reader can find it;
//! 4. write the new data: chunks whose record serves a persistent copy are held back until the
//!    record is durable ([`super::pending`], which also logs them for a death of the process);
//!    chunks already held are updated in place; the rest go to the volume in contiguous runs.

use std::io;

use super::pending::Logged;
use super::{DeleteReason, Inner};
use crate::diffarea::format::Record;
use crate::error::Error;

/// What a write must preserve: `chunks` for copies up to `epoch`.
struct Plan {
    epoch: u32,
    chunks: Vec<u64>,
}

/// A chunk whose old content was preserved by this write.
struct Preserved {
    chunk: u64,
    /// The commit that makes its record durable, if the new data must wait for it.
    hold_until: Option<u64>,
}

impl Inner {
    pub(super) fn write_at(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        self.check_range(offset, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        if self.pending.bytes() > self.options.pending_limit {
            // Back-pressure: make held-back data durable before holding more. A failure stops
            // the diff area and releases the held data; the write itself goes on.
            if let Err(e) = self.commit() {
                tracing::debug!(error = %e, "commit for back-pressure failed");
            }
        }
        let first = offset >> self.chunk_shift;
        let last = (offset + data.len() as u64 - 1) >> self.chunk_shift;
        let _stripes = self.stripes.write_range(first, last);
        let (plan, _ticket) = self.plan(first, last);
        let preserved = self.preserve(first, last, plan)?;
        let logged = self.apply(data, offset, first, last, preserved)?;
        self.answerable(logged);
        Ok(())
    }

    /// Before a write is answered: if held bytes of it could not be logged for a death of the
    /// process (the redo log failed), a commit makes them reach the volume first. A commit that
    /// fails stops the diff area, which also hands the held bytes to the volume.
    fn answerable(&self, logged: Logged) {
        if logged == Logged::No {
            if let Err(e) = self.commit() {
                tracing::debug!(error = %e, "commit of unlogged held bytes failed");
            }
        }
    }

    /// Step 1, the write's ordering point: which chunks to preserve for which copy. An index
    /// that cannot be read stops the diff area (its copies cannot be trusted); the write goes on
    /// with nothing to preserve.
    fn plan(&self, first: u64, last: u64) -> (Option<Plan>, super::inflight::Ticket<'_>) {
        let planned = {
            let cat = self.catalog.read();
            let ticket = self.inflight.enter(cat.next_epoch());
            let plan = cat.newest_protected().map(|epoch| -> Result<Plan, crate::DiffAreaError> {
                let mut chunks = Vec::new();
                for c in first..=last {
                    if cat.needs_preserve(c)?.is_some() {
                        chunks.push(c);
                    }
                }
                Ok(Plan { epoch, chunks })
            });
            match plan.transpose() {
                Ok(plan) => return (plan, ticket),
                Err(e) => e,
            }
        };
        self.fail_diff_area(format!("reading the index failed: {planned}"));
        let cat = self.catalog.read();
        (None, self.inflight.enter(cat.next_epoch()))
    }

    /// Zeroes a live range: preserved like a write, deallocated on the volume where possible.
    pub(super) fn punch_zero(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX))?;
        if len == 0 {
            return Ok(());
        }
        let chunk = u64::from(self.chunk_size);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            // Whole chunks that need no preservation and are not held go to the volume's hole
            // punching; everything else is written as zeros through the normal path.
            let step_end = end.min((pos / chunk + 256) * chunk);
            let zeros = vec![0u8; (step_end - pos) as usize];
            let first = pos >> self.chunk_shift;
            let last = (step_end - 1) >> self.chunk_shift;
            let _stripes = self.stripes.write_range(first, last);
            let (plan, _ticket) = self.plan(first, last);
            if plan.is_none() && self.pending.is_empty() {
                self.volume.punch_zero(pos, step_end - pos).map_err(Error::volume("punching a hole in the volume"))?;
                self.cache.invalidate(first, last);
            } else {
                let preserved = self.preserve(first, last, plan)?;
                let logged = self.apply(&zeros, pos, first, last, preserved)?;
                self.answerable(logged);
            }
            pos = step_end;
        }
        Ok(())
    }

    /// Steps 2–3: preserves the chunks of the plan.
    fn preserve(&self, first: u64, last: u64, plan: Option<Plan>) -> Result<Vec<Preserved>, Error> {
        let Some(Plan { epoch, chunks }) = plan else { return Ok(Vec::new()) };
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let Some(slots) = self.take_slots(chunks.len())? else {
            return Ok(Vec::new()); // every copy is gone: nothing to preserve
        };
        let mut out: Vec<Preserved> = chunks.iter().map(|c| Preserved { chunk: *c, hold_until: None }).collect();
        if let Err(e) = self.copy_to_slots(&chunks, &slots) {
            let mut s = self.slots.lock();
            slots.iter().for_each(|slot| s.release(*slot, 0));
            s.commit_done(0);
            drop(s);
            if e.raw_os_error() == Some(libc::ENOSPC) {
                // The diff area's filesystem is full: stop growing the store and make room as when
                // the diff area reaches its maximum size — the oldest copy goes. Each retry
                // removes a copy, so this ends.
                let hw = self.slots.lock().high_water();
                tracing::warn!(slots = hw, "the diff area's filesystem is full; capping the diff area at its current size");
                {
                    let mut s = self.slots.lock();
                    let cap = s.capacity().unwrap_or(u32::MAX).min(hw);
                    s.set_capacity(Some(cap));
                }
                let oldest = self.catalog.read().oldest();
                match oldest {
                    Some(epoch) if self.delete_epoch(epoch, DeleteReason::DiffAreaFull).is_ok() => {
                        // Copies only went away: planning again cannot add work.
                        let (plan, _ticket) = self.plan(first, last);
                        return self.preserve(first, last, plan);
                    }
                    _ => return Ok(Vec::new()),
                }
            }
            self.fail_diff_area(format!("writing to the diff-area store failed: {e}"));
            return Ok(Vec::new());
        }
        let mut freed_now = Vec::new();
        let mut index_failed = None;
        {
            let mut cat = self.catalog.write();
            let mut log = self.log.lock();
            for (p, slot) in out.iter_mut().zip(&slots) {
                match cat.insert_preserved(p.chunk, epoch, *slot) {
                    Ok(Ok(true)) => {
                        Record::Preserved { chunk: p.chunk, upper: epoch, slot: *slot }.encode_into(&mut log.payload);
                        p.hold_until = Some(log.commit_no);
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(slot)) => freed_now.push(slot),
                    Err(e) => {
                        index_failed.get_or_insert(e);
                        freed_now.push(*slot);
                    }
                }
            }
        }
        if !freed_now.is_empty() {
            // Never journaled, never readable: free at once.
            let mut s = self.slots.lock();
            freed_now.iter().for_each(|slot| s.release(*slot, 0));
            s.commit_done(0);
        }
        if let Some(e) = index_failed {
            self.fail_diff_area(format!("reading the index failed: {e}"));
        }
        Ok(out)
    }

    /// `n` free slots, deleting the oldest copies while the diff area is full. `None` when no
    /// copy is left to preserve for.
    fn take_slots(&self, n: usize) -> Result<Option<Vec<u32>>, Error> {
        let mut got = Vec::with_capacity(n);
        loop {
            {
                let mut s = self.slots.lock();
                while got.len() < n {
                    match s.allocate() {
                        Some(slot) => got.push(slot),
                        None => break,
                    }
                }
                if got.len() == n {
                    return Ok(Some(got));
                }
                if s.pending() > 0 {
                    drop(s);
                    if self.commit().is_err() {
                        return Ok(None); // the diff area failed: write through
                    }
                    continue;
                }
            }
            let oldest = self.catalog.read().oldest();
            match oldest {
                Some(epoch) => {
                    if self.delete_epoch(epoch, DeleteReason::DiffAreaFull).is_err() {
                        return Ok(None); // the diff area failed: write through
                    }
                }
                None => {
                    let mut s = self.slots.lock();
                    got.iter().for_each(|slot| s.release(*slot, 0));
                    s.commit_done(0);
                    return Ok(None);
                }
            }
            if self.failure.lock().is_some() {
                return Ok(None);
            }
        }
    }

    /// Copies the live content of `chunks` into `slots`, one call per run of chunks that are
    /// consecutive on the volume and in the store. A run with no held-back chunk is copied by the
    /// kernel (`copy_file_range`) when both sides are files; otherwise through a buffer.
    fn copy_to_slots(&self, chunks: &[u64], slots: &[u32]) -> io::Result<()> {
        let mut i = 0;
        while i < chunks.len() {
            let mut j = i + 1;
            while j < chunks.len() && chunks[j] == chunks[j - 1] + 1 && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            let start = chunks[i] << self.chunk_shift;
            let end = ((chunks[j - 1] + 1) << self.chunk_shift).min(self.volume_size);
            let at = u64::from(slots[i]) << self.chunk_shift;
            let held = !self.pending.is_empty() && chunks[i..j].iter().any(|c| self.pending.holds(*c));
            let copied = !held && self.copy_in_kernel(start, at, end - start)?;
            if !copied {
                let mut buf = vec![0u8; (end - start) as usize];
                self.read_live_locked(&mut buf, start).map_err(|e| match e {
                    Error::VolumeIo { source, .. } => source,
                    other => io::Error::other(other.to_string()),
                })?;
                self.store.write_at(&buf, at)?;
            }
            i = j;
        }
        Ok(())
    }

    /// `copy_file_range` from the volume to the store; false when either is not a plain file
    /// or the kernel cannot do it (the caller copies through a buffer).
    fn copy_in_kernel(&self, from: u64, to: u64, len: u64) -> io::Result<bool> {
        let (Some(src), Some(dst)) = (self.volume.as_file(), self.store.as_file()) else { return Ok(false) };
        let (mut off_in, mut off_out, mut left) = (from, to, len);
        while left > 0 {
            let (mut i, mut o) = (off_in as i64, off_out as i64);
            let r = nix::fcntl::copy_file_range(src, Some(&mut i), dst, Some(&mut o), left as usize);
            (off_in, off_out) = (i as u64, o as u64);
            match r {
                Ok(0) => return Ok(false),
                Ok(n) => left -= n as u64,
                Err(e)
                    if left == len
                        && matches!(
                            e,
                            nix::errno::Errno::EXDEV
                                | nix::errno::Errno::ENOSYS
                                | nix::errno::Errno::EINVAL
                                | nix::errno::Errno::EOPNOTSUPP
                        ) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Step 4: the write itself. Says whether every held byte of it is in the redo log.
    fn apply(&self, data: &[u8], offset: u64, first: u64, last: u64, preserved: Vec<Preserved>) -> Result<Logged, Error> {
        let end = offset + data.len() as u64;
        let mut logged = Logged::Yes;
        let mut held = preserved.iter().filter(|p| p.hold_until.is_some()).peekable();
        // Contiguous byte range still to be written straight to the volume.
        let mut direct: Option<(u64, u64)> = None;
        let flush_direct = |range: &mut Option<(u64, u64)>| -> Result<(), Error> {
            if let Some((s, e)) = range.take() {
                let lo = (s - offset) as usize;
                let hi = (e - offset) as usize;
                self.volume.write_at(&data[lo..hi], s).map_err(Error::volume("writing to the volume"))?;
            }
            Ok(())
        };
        for c in first..=last {
            let cstart = c << self.chunk_shift;
            let s = offset.max(cstart);
            let e = end.min(cstart + u64::from(self.chunk_size));
            let part = &data[(s - offset) as usize..(e - offset) as usize];
            let in_chunk = (s - cstart) as usize;
            if held.peek().is_some_and(|p| p.chunk == c) {
                let p = held.next().expect("peeked");
                flush_direct(&mut direct)?;
                // Only the bytes written are held; the rest of the chunk stays on the volume.
                let l = self
                    .pending
                    .hold(c, self.chunk_len(c), p.hold_until.expect("filtered"), in_chunk, part, &|at, b| self.volume.read_at(b, at))
                    .map_err(Error::volume("reading the volume"))?;
                if l == Logged::No {
                    logged = Logged::No;
                }
            } else if let Some(l) =
                self.pending.update(c, in_chunk, part, &|at, b| self.volume.read_at(b, at)).map_err(Error::volume("reading the volume"))?
            {
                flush_direct(&mut direct)?;
                if l == Logged::No {
                    logged = Logged::No;
                }
            } else {
                direct = match direct {
                    Some((ds, de)) if de == s => Some((ds, e)),
                    other => {
                        let mut other = other;
                        flush_direct(&mut other)?;
                        Some((s, e))
                    }
                };
            }
        }
        flush_direct(&mut direct)?;
        self.cache.invalidate(first, last);
        Ok(logged)
    }
}
