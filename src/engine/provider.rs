//! The provider seam: what the daemon and the CLI need from anything that keeps shadow copies.
//!
//! The system provider is [`ShadowVolume`] (our diff area). Others — a read-only provider for
//! Windows VSS stores, reflink or thin-LVM providers — implement the same trait so that the
//! daemon, the mount and the CLI treat them alike. Taking a *set* is provider-specific (the
//! system provider's is [`super::create_set`]).

use uuid::Uuid;

use super::{CopyInfo, ShadowVolume};
use crate::error::Error;

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

impl Provider for ShadowVolume {
    fn name(&self) -> &'static str {
        "system"
    }
    fn volume_size(&self) -> u64 {
        self.size()
    }
    fn copies(&self) -> Vec<CopyInfo> {
        ShadowVolume::copies(self)
    }
    fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        ShadowVolume::read_copy(self, id, buf, offset)
    }
    fn delete_copy(&self, id: Uuid) -> Result<CopyInfo, Error> {
        self.delete(id)
    }
}
