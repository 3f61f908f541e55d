//! Whole-volume operations of the system provider over a copy: changed ranges (incremental
//! backup), export to an image file (through [`crate::provider::export_copy`]), revert. Long ones report progress as `(bytes done, bytes total)`.

use std::path::Path;

use uuid::Uuid;

use super::ShadowVolume;
use crate::error::Error;
use crate::provider::{export_copy, Progress};

/// A byte range that may differ between two points in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedRange {
    /// Start, in bytes.
    pub offset: u64,
    /// Length, in bytes.
    pub len: u64,
}

/// Bytes moved per step of a revert.
const STEP: u64 = 1 << 20;

impl ShadowVolume {
    /// Ranges written between copy `from` and copy `to` (or the live volume when `to` is `None`),
    /// at chunk granularity: the basis of an incremental backup. A range that was written with
    /// the same bytes is still listed.
    pub fn changed_ranges(&self, from: Uuid, to: Option<Uuid>) -> Result<Vec<ChangedRange>, Error> {
        let cat = self.inner.catalog.read();
        let mut a = super::find_epoch(&cat, from)?;
        let mut b = match to {
            Some(id) => super::find_epoch(&cat, id)?,
            None => u32::MAX,
        };
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        let chunk = u64::from(self.inner.chunk_size);
        let mut out: Vec<ChangedRange> = Vec::new();
        let mut last_chunk = None;
        cat.index()
            .for_each(|e| {
                if e.upper < a || e.upper >= b || last_chunk == Some(e.chunk) {
                    return;
                }
                last_chunk = Some(e.chunk);
                let offset = e.chunk * chunk;
                let len = chunk.min(self.inner.volume_size - offset);
                match out.last_mut() {
                    Some(r) if r.offset + r.len == offset => r.len += len,
                    _ => out.push(ChangedRange { offset, len }),
                }
            })
            .map_err(Error::DiffArea)?;
        Ok(out)
    }

    /// Exports copy `id` to a new image file at `path`.
    pub fn export(&self, id: Uuid, path: &Path, progress: Progress<'_>) -> Result<(), Error> {
        export_copy(self, id, path, progress)
    }

    /// Makes the live volume read as copy `id` again. The volume must not be in use (nothing
    /// mounted from it). Other copies, and `id` itself, stay as they were: the rewrite goes
    /// through copy-before-write like any live write.
    pub fn revert(&self, id: Uuid, progress: Progress<'_>) -> Result<(), Error> {
        let ranges = self.changed_ranges(id, None)?;
        let total: u64 = ranges.iter().map(|r| r.len).sum();
        let mut done = 0;
        let mut buf = vec![0u8; STEP as usize];
        for r in ranges {
            let mut pos = r.offset;
            while pos < r.offset + r.len {
                let n = (r.offset + r.len - pos).min(STEP) as usize;
                self.read_copy(id, &mut buf[..n], pos)?;
                self.write_at(&buf[..n], pos)?;
                pos += n as u64;
                done += n as u64;
                progress(done, total);
            }
        }
        self.flush()?;
        tracing::info!(copy = %id, bytes = total, "volume reverted to shadow copy");
        Ok(())
    }
}
