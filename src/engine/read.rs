//! Reads: the live volume, and shadow copies.
//!
//! A copy reads each chunk under that chunk's stripe lock (shared): the index says whether a
//! slot serves the copy; if not, the chunk is unchanged since the copy and comes from the live
//! view (held-back data, else the volume) through the block cache. After the read, the copy must
//! still exist: a slot can be reused only after its copy was deleted, so a copy that is still
//! there afterwards was read whole.

use std::sync::Arc;

use uuid::Uuid;

use super::{find_epoch, Inner};
use crate::error::{DiffAreaError, Error};

impl Inner {
    /// Reads the live volume (held-back chunks included).
    pub(super) fn read_live(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.check_range(offset, buf.len())?;
        self.read_live_locked(buf, offset)
    }

    /// The live view; callers that must not race a write hold the stripes.
    ///
    /// Held-back chunks are looked up *before* the volume is read: the commit writes a chunk to
    /// the volume before it stops holding it, so a chunk found not held is already on the
    /// volume. (Reading the volume first could miss a chunk released in between.)
    pub(super) fn read_live_locked(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.pending.is_empty() {
            return self.volume.read_at(buf, offset).map_err(Error::volume("reading the volume"));
        }
        let end = offset + buf.len() as u64;
        let first = offset >> self.chunk_shift;
        let last = (end - 1) >> self.chunk_shift;
        // Byte ranges (relative to `offset`) still to read from the volume, merged.
        let mut from_volume: Vec<(usize, usize)> = Vec::new();
        for c in first..=last {
            let cstart = c << self.chunk_shift;
            let s = offset.max(cstart);
            let e = end.min(cstart + u64::from(self.chunk_size));
            let (lo, hi) = ((s - offset) as usize, (e - offset) as usize);
            let held = self
                .pending
                .read(c, (s - cstart) as usize, &mut buf[lo..hi], &|at, b| self.volume.read_at(b, at))
                .map_err(Error::volume("reading the volume"))?;
            if !held {
                match from_volume.last_mut() {
                    Some(r) if r.1 == lo => r.1 = hi,
                    _ => from_volume.push((lo, hi)),
                }
            }
        }
        for (lo, hi) in from_volume {
            self.volume.read_at(&mut buf[lo..hi], offset + lo as u64).map_err(Error::volume("reading the volume"))?;
        }
        Ok(())
    }

    /// Reads copy `id`.
    ///
    /// Every chunk of the request is held shared for the whole read (in the writers' stripe
    /// order). Chunks that slots serve come from the store (consecutive slots in one call); a run
    /// of unchanged chunks is read from the live view in one call. A single unchanged chunk goes through the block cache
    /// (metadata-sized reads repeat); longer runs bypass it (sequential reads are served by the
    /// kernel's page cache above us, and would only evict the cache's useful entries).
    pub(super) fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.check_range(offset, buf.len())?;
        let epoch = self.readable_epoch(id)?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let first = offset >> self.chunk_shift;
        let last = (end - 1) >> self.chunk_shift;
        let _stripes = self.stripes.read_range(first, last);
        let slots: Vec<Option<u32>> = {
            let cat = self.catalog.read();
            (first..=last).map(|c| cat.lookup(c, epoch)).collect::<Result<_, _>>().map_err(Error::DiffArea)?
        };
        // Byte range of chunk `c` within the request, relative to `offset`.
        let span = |c: u64| -> (usize, usize) {
            let cstart = c << self.chunk_shift;
            ((offset.max(cstart) - offset) as usize, (end.min(cstart + u64::from(self.chunk_size)) - offset) as usize)
        };
        let mut c = first;
        while c <= last {
            let (lo, hi) = span(c);
            if let Some(slot) = slots[(c - first) as usize] {
                // Chunks preserved in consecutive slots are read with one call.
                let mut run_end = c;
                while run_end < last && slots[(run_end + 1 - first) as usize] == Some(slot + (run_end + 1 - c) as u32) {
                    run_end += 1;
                }
                let hi = span(run_end).1;
                let at = (u64::from(slot) << self.chunk_shift) + (offset + lo as u64 - (c << self.chunk_shift));
                self.store
                    .read_at(&mut buf[lo..hi], at)
                    .map_err(|source| DiffAreaError::Io { what: "reading a preserved chunk", source })?;
                c = run_end + 1;
                continue;
            }
            let mut run_end = c;
            while run_end < last && slots[(run_end + 1 - first) as usize].is_none() {
                run_end += 1;
            }
            if run_end == c {
                let in_chunk = offset as usize + lo - (c << self.chunk_shift) as usize;
                let data = match self.cache.get(c) {
                    Some(d) => d,
                    None => {
                        let mut whole = vec![0u8; self.chunk_len(c)];
                        self.read_live_locked(&mut whole, c << self.chunk_shift)?;
                        let d: Arc<[u8]> = whole.into();
                        self.cache.insert(c, Arc::clone(&d));
                        d
                    }
                };
                buf[lo..hi].copy_from_slice(&data[in_chunk..in_chunk + (hi - lo)]);
            } else {
                let hi = span(run_end).1;
                self.read_live_locked(&mut buf[lo..hi], offset + lo as u64)?;
            }
            c = run_end + 1;
        }
        // Still there and still good: nothing it read can have been reused meanwhile.
        self.readable_epoch(id).map(|_| ()).map_err(|e| match e {
            Error::NoSuchCopy(id) => Error::CopyDeleted(id),
            other => other,
        })
    }

    fn readable_epoch(&self, id: Uuid) -> Result<u32, Error> {
        let cat = self.catalog.read();
        let epoch = find_epoch(&cat, id)?;
        match &cat.copy(epoch).expect("found").failed {
            Some(reason) => Err(Error::CopyFailed { id, reason: reason.clone() }),
            None => Ok(epoch),
        }
    }
}
