//! Shadow storage (the diff areas): listing their use and resizing their maximum.

use shadowcopy::protocol::{Answer, StorageInfo};
use shadowcopy::MaxSize;

use super::super::{system_of, OpResult, Service, ServiceError, Volume};

/// A volume's diff area as `storage list` shows it; `None` for a read-only volume.
fn storage_info(v: &Volume) -> Option<StorageInfo> {
    let u = v.system()?.usage();
    Some(StorageInfo {
        volume: v.name.clone(),
        diff_area: v.diff_area.display().to_string(),
        used_bytes: u.used_bytes,
        allocated_bytes: u.allocated_bytes,
        max_bytes: u.max_bytes,
        chunk_size: u.chunk_size,
        copies: u.copies,
    })
}

impl Service {
    pub(in crate::service) fn storage_list(&self) -> Answer {
        Answer::Storage(self.volumes().iter().filter_map(|v| storage_info(v)).collect())
    }

    pub(in crate::service) fn resize(&self, name: &str, max: &str) -> OpResult {
        let admin = self.admin.lock();
        let v = self.volume_named(name)?;
        let max = MaxSize::parse(max).map_err(ServiceError::InvalidSetting)?;
        system_of(&v)?.resize(max)?;
        drop(admin);
        self.poll_events();
        Ok(Answer::Storage(storage_info(&v).into_iter().collect()))
    }
}
