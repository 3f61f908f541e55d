//! The provider seam: what the daemon and the CLI need from anything that keeps shadow copies,
//! and the operations that work over any provider (export).
//!
//! The system provider is [`crate::ShadowVolume`] (our diff area, [`crate::engine`]). Others — a
//! read-only provider for Windows VSS stores ([`crate::vss`]), reflink or thin-LVM providers
//! later — implement the same trait beside it, so that the daemon, the mount and the CLI treat
//! them alike. Taking a *set* is provider-specific (the system provider's is
//! [`crate::create_set`]).
//!
//! Never depends on a provider: providers depend on this module, not the other way round.

use std::path::Path;
use std::time::SystemTime;

use uuid::Uuid;

use crate::error::Error;
use crate::volume::Storage;

/// Progress callback: `(done, total)` in bytes.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A shadow copy as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInfo {
    /// The copy's id.
    pub id: Uuid,
    /// Its set's id (shared by the copies taken at one instant).
    pub set_id: Uuid,
    /// Position in the volume's sequence of copies (1, 2, …); never reused while the diff area
    /// lives, except by volatile copies after a reopen.
    pub epoch: u32,
    /// When it was taken.
    pub created: SystemTime,
    /// Whether it survives a restart (volatile copies vanish).
    pub persistent: bool,
    /// Context and attribute bits, kept for the coordinator; the engine does not read them.
    pub attributes: u32,
    /// Copies in the set (one per volume).
    pub set_size: u32,
    /// Why the copy cannot be read, if it cannot.
    pub failed: Option<String>,
    /// Why the copy is stale, if it is: the volume was written while nobody served it, after
    /// the copy was taken, so blocks changed then were not preserved and the copy may show them.
    pub stale: Option<String>,
}

/// A source of shadow copies of one volume.
pub trait Provider: Send + Sync {
    /// Short name shown to users (`system`, `windows-vss`, …).
    fn name(&self) -> &'static str;
    /// Bytes of the volume (and of each copy's image).
    fn volume_size(&self) -> u64;
    /// The copies, oldest first.
    fn copies(&self) -> Vec<CopyInfo>;
    /// Reads a copy's image.
    fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), Error>;
    /// Deletes a copy.
    fn delete_copy(&self, id: Uuid) -> Result<CopyInfo, Error>;
}

/// Bytes read from a copy per step of an export.
const STEP: u64 = 1 << 20;

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
