//! The system provider's side of the seam: [`ShadowVolume`] as a [`Provider`].

use uuid::Uuid;

use super::ShadowVolume;
use crate::error::Error;
use crate::provider::{CopyInfo, Provider};

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
