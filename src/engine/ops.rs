//! Whole-volume operations over a copy: changed ranges (incremental backup), export to an image
//! file, revert. Long ones report progress as `(bytes done, bytes total)`.

use std::path::Path;

use uuid::Uuid;

use super::provider::Provider;
use super::ShadowVolume;
use crate::error::Error;
use crate::volume::Storage;

/// Progress callback: `(done, total)` in bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A byte range that may differ between two points in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedRange {
    pub offset: u64,
    pub len: u64,
}

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
        for e in cat.index().iter() {
            if e.upper < a || e.upper >= b || last_chunk == Some(e.chunk) {
                continue;
            }
            last_chunk = Some(e.chunk);
            let offset = e.chunk * chunk;
            let len = chunk.min(self.inner.volume_size - offset);
            match out.last_mut() {
                Some(r) if r.offset + r.len == offset => r.len += len,
                _ => out.push(ChangedRange { offset, len }),
            }
        }
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

/// Granularity of the holes an export leaves: all-zero blocks of this size are not written.
const EXPORT_BLOCK: usize = 4096;

/// Writes copy `id` of any provider to `dest` (sized to the volume), leaving all-zero blocks as
/// holes so the file stays sparse.
fn export_copy_to(provider: &dyn Provider, id: Uuid, dest: &dyn Storage, progress: Progress<'_>) -> Result<(), Error> {
    let size = provider.volume_size();
    let io = Error::volume;
    dest.set_len(0).and_then(|()| dest.set_len(size)).map_err(io("sizing the export file"))?;
    let mut buf = vec![0u8; STEP as usize];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(STEP) as usize;
        provider.read_copy(id, &mut buf[..n], pos)?;
        for (i, piece) in buf[..n].chunks(EXPORT_BLOCK).enumerate() {
            if piece.iter().any(|b| *b != 0) {
                dest.write_at(piece, pos + (i * EXPORT_BLOCK) as u64).map_err(io("writing the export file"))?;
            }
        }
        pos += n as u64;
        progress(pos, size);
    }
    dest.sync_data().map_err(io("syncing the export file"))
}

/// Exports copy `id` of any provider to a new image file at `path`.
pub fn export_copy(provider: &dyn Provider, id: Uuid, path: &Path, progress: Progress<'_>) -> Result<(), Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(Error::volume("creating the export file"))?;
    let dest = crate::volume::FileStorage::new(file).map_err(Error::volume("opening the export file"))?;
    export_copy_to(provider, id, &dest, progress)
}
