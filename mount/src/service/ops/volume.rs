//! Volumes: status, adding (registering an image and creating its diff area), listing and
//! removing. A failed add leaves no volume registered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use shadowcopy::protocol::{self, Answer, VolumeInfo};
use shadowcopy::{DiffAreaOptions, MaxSize};

use super::super::registry::check_name;
use super::super::{Departure, OpResult, Service, ServiceError, Volume};
use crate::state::VolumeRecord;

/// The arguments of `volume_add`.
pub(in crate::service) struct AddRequest {
    pub(in crate::service) name: String,
    pub(in crate::service) image: String,
    pub(in crate::service) diff_area: Option<String>,
    pub(in crate::service) max_size: Option<String>,
    pub(in crate::service) chunk_size: Option<u64>,
    pub(in crate::service) read_only: bool,
}

impl Service {
    pub(in crate::service) fn status(&self) -> Answer {
        Answer::Status(protocol::StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: protocol::VERSION,
            mount: self.settings.mount.display().to_string(),
            state_dir: self.state.path().display().to_string(),
            volumes: self.volumes.read().len(),
            pid: self.worker.get().map_or(std::process::id(), |w| w.holder_pid),
            started_unix: self.worker.get().map_or_else(
                || self.started.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
                |w| w.daemon_started_unix,
            ),
            thaw_keeper: self.keeper.get().and_then(|k| k.pid()),
            allow_other: self.settings.allow_other,
            live_in_use: self.live_in_use(false).into_iter().map(|(volume, users)| format!("{volume}: {users}")).collect(),
            worker: self.worker.get().map(|w| w.status.clone()),
            config: {
                let c = self.config.lock();
                c.found.then(|| c.path.display().to_string())
            },
            config_errors: self.config_problems(),
            indexes: self
                .volumes
                .read()
                .values()
                .filter_map(|v| {
                    let u = v.system()?.usage();
                    let c = u.index_cache;
                    let lookups = c.hits + c.misses;
                    Some(protocol::IndexStatus {
                        volume: v.name.clone(),
                        preserved_chunks: u.preserved_chunks as u64,
                        checkpointed_chunks: u.checkpointed_chunks,
                        disk_bytes: u.index_disk_bytes,
                        memory_bytes: u.index_bytes as u64,
                        cache_bytes: c.capacity_bytes,
                        cache_resident_bytes: c.resident_bytes,
                        cache_hits: c.hits,
                        cache_misses: c.misses,
                        cache_hit_rate: (lookups > 0).then(|| c.hits as f64 / lookups as f64),
                        open_seconds: u.open_duration.map(|d| d.as_secs_f64()),
                    })
                })
                .collect(),
        })
    }

    /// Every registered volume, those that could not be opened included (with why).
    pub(in crate::service) fn volume_list(&self) -> Answer {
        let mut all: Vec<VolumeInfo> = self.volumes().iter().map(|v| self.volume_info(v)).collect();
        for (rec, why) in self.unopened.lock().iter() {
            all.push(VolumeInfo {
                name: rec.name.clone(),
                image: rec.image.display().to_string(),
                diff_area: rec.diff_area.display().to_string(),
                size: rec.identity.as_ref().map_or(0, |i| i.size),
                provider: "none".into(),
                read_only: rec.read_only,
                copies: 0,
                live: String::new(),
                failure: Some(format!("not opened: {why}")),
                attachment: None,
            });
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Answer::Volumes(all)
    }

    pub(in crate::service) fn volume_info(&self, v: &Volume) -> VolumeInfo {
        VolumeInfo {
            name: v.name.clone(),
            image: v.image.display().to_string(),
            diff_area: v.diff_area.display().to_string(),
            size: v.size(),
            provider: v.provider().map_or("none", |p| p.name()).into(),
            read_only: v.read_only(),
            copies: v.copies.read().len(),
            live: self.live_path(v).display().to_string(),
            failure: v.system().and_then(|e| e.failure()),
            attachment: self.attachment_info(v),
        }
    }

    pub(in crate::service) fn volume_add(&self, req: AddRequest) -> OpResult {
        let AddRequest { name, image, diff_area, max_size, chunk_size, read_only } = req;
        check_name(&name)?;
        let _admin = self.admin.lock();
        if self.volumes.read().contains_key(&name) || self.unopened.lock().iter().any(|(r, _)| r.name == name) {
            return Err(ServiceError::VolumeNameTaken(name));
        }
        let image = PathBuf::from(&image).canonicalize().map_err(|source| ServiceError::ImageUnreadable { image, source })?;
        if image.starts_with(&self.settings.mount) {
            return Err(ServiceError::InsideMount { what: "the image", path: image, why: "the daemon would serve itself" });
        }
        if let Some(other) = self.volumes.read().values().find(|v| v.image == image) {
            return Err(ServiceError::ImageRegistered { image, volume: other.name.clone() });
        }
        if read_only && (diff_area.is_some() || max_size.is_some() || chunk_size.is_some()) {
            return Err(ServiceError::ReadOnlyOptions);
        }
        let diff_area = match diff_area {
            _ if read_only => PathBuf::new(),
            Some(d) => PathBuf::from(d),
            None => self.state.default_diff_area(&name),
        };
        if diff_area.starts_with(&self.settings.mount) {
            return Err(ServiceError::InsideMount { what: "the diff area", path: diff_area, why: "its writes would wait on themselves" });
        }
        if !read_only && diff_area.join("journal.0").exists() {
            return Err(ServiceError::DiffAreaExists(diff_area));
        }
        let mut options = DiffAreaOptions::default();
        if let Some(m) = max_size {
            options.max_size = MaxSize::parse(&m).map_err(ServiceError::InvalidSetting)?;
        }
        if let Some(c) = chunk_size {
            options.chunk_size = u32::try_from(c).map_err(|_| ServiceError::InvalidSetting("chunk size too large".into()))?;
        }
        let fresh_dir = !read_only && !diff_area.exists();
        let rec = VolumeRecord {
            name: name.clone(),
            image,
            diff_area,
            read_only,
            exposed: BTreeMap::new(),
            last_name_secs: None,
            identity: None,
            policy: None,
            notes: BTreeMap::new(),
        };
        let v = match self.open_volume(&rec, Some(options)) {
            Ok(v) => v,
            Err(e) => {
                // A failed add leaves nothing behind: a half-made diff area would block every
                // retry ("already holds a diff area").
                if fresh_dir {
                    if let Err(rm) = std::fs::remove_dir_all(&rec.diff_area) {
                        tracing::warn!(path = %rec.diff_area.display(), error = %rm, "could not remove the diff area of a failed volume add");
                    }
                }
                return Err(e);
            }
        };
        self.insert_volume(Arc::clone(&v));
        self.save_state();
        tracing::info!(volume = %name, image = %v.image.display(), "volume added");
        Ok(Answer::Volume(self.volume_info(&v)))
    }

    pub(in crate::service) fn volume_remove(&self, name: &str) -> OpResult {
        let _admin = self.admin.lock();
        {
            let mut unopened = self.unopened.lock();
            if let Some(i) = unopened.iter().position(|(r, _)| r.name == name) {
                unopened.remove(i);
                drop(unopened);
                self.save_state();
                return Ok(Answer::Done(format!(
                    "volume `{name}` (which could not be opened) unregistered; its diff area was left in place"
                )));
            }
        }
        let v = self.volume_named(name)?;
        if v.live_opens() > 0 {
            return Err(ServiceError::LiveInUse { live: self.live_path(&v), action: "removing the volume" });
        }
        if let Some((copy, at)) = v.copies.read().values().map(|c| (c.info.id, self.exposures.of(c.info.id))).find(|(_, at)| !at.is_empty())
        {
            return Err(ServiceError::CopyExposed { copy, at: at.join(", ") });
        }
        self.volumes.write().remove(name);
        self.volumes_by_serial.write().remove(&v.serial);
        self.settings.ledger.retire_volume(v.serial);
        {
            let mut serials = self.copies_by_serial.write();
            for c in v.copies.read().values() {
                serials.remove(&c.serial);
                self.departures.lock().push(Departure::Copy { volume_serial: v.serial, name: c.name.clone() });
            }
        }
        self.departures.lock().push(Departure::Volume { name: name.to_string() });
        self.save_state();
        let config_path = self.config.lock().path.clone();
        if self.config.lock().volumes.iter().any(|e| e.name == name) {
            if let Err(e) = crate::config::remove_attachment(&config_path, name) {
                tracing::warn!(volume = %name, error = %e, "the removed volume's attachment stays in the configuration");
            }
            self.config.lock().volumes.retain(|e| e.name != name);
        }
        let diff_area = v.diff_area.clone();
        let n = v.copies.read().len();
        let has_diff_area = v.system().is_some();
        // Last reference: the engine closes (flushes) when the volume drops.
        drop(v);
        if has_diff_area {
            if let Err(e) = std::fs::remove_dir_all(&diff_area) {
                tracing::warn!(path = %diff_area.display(), error = %e, "could not remove the diff area");
            }
        }
        Ok(Answer::Done(format!("volume `{name}` removed with its {n} shadow copies")))
    }
}
