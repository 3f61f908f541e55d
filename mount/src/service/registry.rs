//! The registry: which volumes are served, opening them (at start and on `volume add`), and the
//! state file that makes the registry and the copies' exposed names survive a restart.
//!
//! Owns serials, the open path of a volume (the library's exclusive open, the engine or
//! the Windows stores) and the saver thread. Never decides whether an operation is allowed: the
//! operations in [`super::ops`] do, under the service's admin lock.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use shadowcopy::fsread::ByteSource;
use shadowcopy::protocol;
use shadowcopy::volume::Storage;
use shadowcopy::vss::WindowsStores;
use shadowcopy::{DiffAreaFiles, DiffAreaOptions, EngineOptions, ShadowVolume};

use super::error::ServiceError;
use super::model::{unique_name, Backend, ImageSource, Owner, ShadowCopy, Volume};
use super::Service;
use crate::state::VolumeRecord;

/// Volume names become folder names: keep them plain.
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '@', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidVolumeName(name.to_string()))
    }
}

impl Service {
    /// The serial of volume `name`: the one the kernel knows it by on this connection, else a
    /// new one (serials are part of FUSE node ids and never name two objects).
    pub(super) fn volume_serial(&self, name: &str) -> u32 {
        self.settings.ledger.volume_serial(name)
    }

    /// The serial of copy `info` served as `name` (see [`Service::volume_serial`]).
    pub(super) fn copy_serial(&self, info: &shadowcopy::CopyInfo, name: &str) -> u32 {
        self.settings.ledger.copy_serial(info.id, name)
    }

    /// The name a copy had on this connection (a worker that replaced a dead one keeps it),
    /// when it is still free.
    pub(super) fn kept_name(&self, copies: &BTreeMap<String, Arc<ShadowCopy>>, info: &shadowcopy::CopyInfo) -> Option<String> {
        self.settings.ledger.copy_name(info.id).filter(|n| !copies.contains_key(n))
    }

    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            cache_chunks: self.settings.cache_chunks,
            clock: self.settings.clock,
            index_cache_bytes: self.settings.index_cache_bytes,
            ..EngineOptions::default()
        }
    }

    /// Opens a volume: its engine (creating the diff area with `create`), or for a read-only
    /// volume the image and the Windows stores on it; then builds its copies.
    pub(super) fn open_volume(&self, rec: &VolumeRecord, create: Option<DiffAreaOptions>) -> Result<Arc<Volume>, ServiceError> {
        let failed = |what: String| ServiceError::OpenFailed(what);
        // A block device is checked to be the one registered before anything reads it.
        let identity = shadowcopy::probe::device_identity(&rec.image).map_err(|e| failed(format!("{}: {e}", rec.image.display())))?;
        if let (Some(registered), Some(found)) = (&rec.identity, &identity) {
            if let Some(why) = registered.mismatch(found) {
                return Err(failed(format!(
                    "{} is not the device registered as volume `{}`: {why}. Its diff area was left untouched; put the right device \
                     back at that path (or find it under /dev/disk/by-id) and restart the daemon",
                    rec.image.display(),
                    rec.name
                )));
            }
        }
        let storage = shadowcopy::volume::open_image(&rec.image, !rec.read_only).map_err(|e| failed(e.to_string()))?;
        let md = std::fs::metadata(&rec.image).map_err(|e| failed(format!("{}: {e}", rec.image.display())))?;
        let backend = if rec.read_only {
            let size = storage.len().map_err(|e| failed(format!("{}: {e}", rec.image.display())))?;
            let image = Arc::new(ImageSource { storage, size });
            let windows = WindowsStores::open(Arc::clone(&image) as Arc<dyn ByteSource>, self.settings.cache_chunks)
                .map_err(|e| failed(format!("looking for Windows shadow copies on {}: {e}", rec.image.display())))?;
            if let Some(w) = &windows {
                if let Some(reason) = &w.catalog_damage {
                    tracing::error!(volume = %rec.name, %reason, "the Windows shadow copy catalog is damaged: no Windows copy can be read");
                }
                tracing::info!(volume = %rec.name, stores = w.copies().len(), "Windows shadow copies found");
            }
            Backend::ReadOnly { image, windows }
        } else {
            let storage = Arc::new(storage);
            let context =
                |e: shadowcopy::Error| failed(format!("opening the diff area {} of {}: {e}", rec.diff_area.display(), rec.image.display()));
            let engine = match create {
                Some(options) => DiffAreaFiles::in_dir(&rec.diff_area, true)
                    .and_then(|files| ShadowVolume::create(storage, files, options, self.engine_options())),
                None => {
                    DiffAreaFiles::in_dir(&rec.diff_area, false).and_then(|files| ShadowVolume::open(storage, files, self.engine_options()))
                }
            }
            .map_err(context)?;
            for e in engine.take_events() {
                tracing::warn!(volume = %rec.name, event = ?e, "found while opening the diff area");
            }
            Backend::System(engine)
        };
        let vol = Arc::new(Volume {
            name: rec.name.clone(),
            serial: self.volume_serial(&rec.name),
            image: rec.image.clone(),
            diff_area: rec.diff_area.clone(),
            backend,
            owner: Owner { uid: md.uid(), gid: md.gid(), mode: md.mode() },
            copies: RwLock::new(BTreeMap::new()),
            ledger: Arc::clone(&self.settings.ledger),
            last_name_secs: parking_lot::Mutex::new(rec.last_name_secs),
            // Registered before this was recorded: the device found now is trusted from now on.
            identity: rec.identity.clone().or(identity),
            policy: parking_lot::Mutex::new(rec.policy.clone()),
            nearly_full: Default::default(),
            failure_reported: Default::default(),
        });
        let mut copies = vol.copies.write();
        // Names kept from before come back first; they raise the high-water mark too.
        for n in rec.exposed.values().filter_map(|n| protocol::parse_gmt_name(n)) {
            let mut last = vol.last_name_secs.lock();
            *last = Some(last.map_or(n, |l| l.max(n)));
        }
        let mut infos = vol.copies_now();
        infos.sort_by_key(|i| !rec.exposed.contains_key(&i.id));
        for info in infos {
            let name = match (self.kept_name(&copies, &info), rec.exposed.get(&info.id)) {
                (Some(kept), _) => kept,
                (None, Some(n)) if !copies.contains_key(n) => n.clone(),
                _ => unique_name(&vol, &copies, &info),
            };
            copies.insert(
                name.clone(),
                Arc::new(ShadowCopy {
                    serial: self.copy_serial(&info, &name),
                    name,
                    notes: rec.notes.get(&info.id).cloned().unwrap_or_default(),
                    info,
                    volume: Arc::downgrade(&vol),
                    tree: OnceLock::new(),
                    damage_logged: Default::default(),
                }),
            );
        }
        drop(copies);
        Ok(vol)
    }

    /// Serves an opened volume (and its copies).
    pub(super) fn insert_volume(&self, v: Arc<Volume>) {
        let mut serials = self.copies_by_serial.write();
        for c in v.copies.read().values() {
            serials.insert(c.serial, Arc::clone(c));
        }
        self.volumes_by_serial.write().insert(v.serial, Arc::clone(&v));
        self.volumes.write().insert(v.name.clone(), v);
    }

    /// Asks the saver thread to rewrite the state file soon (exposed names changed).
    pub(super) fn save_names_later(&self) {
        *self.names_dirty.0.lock() = true;
        self.names_dirty.1.notify_one();
    }

    /// The saver thread's loop: writes the state file whenever names changed.
    pub fn run_state_saver(&self) {
        loop {
            {
                let mut dirty = self.names_dirty.0.lock();
                while !*dirty {
                    self.names_dirty.1.wait(&mut dirty);
                }
                *dirty = false;
            }
            let _admin = self.admin.lock();
            self.save_state();
        }
    }

    /// Writes the registry and every copy's exposed name to the state file.
    pub(super) fn save_state(&self) {
        let records: Vec<VolumeRecord> = self
            .volumes
            .read()
            .values()
            .map(|v| VolumeRecord {
                name: v.name.clone(),
                image: v.image.clone(),
                diff_area: v.diff_area.clone(),
                read_only: v.read_only(),
                exposed: v.copies.read().values().map(|c| (c.info.id, c.name.clone())).collect(),
                last_name_secs: *v.last_name_secs.lock(),
                identity: v.identity.clone(),
                policy: v.policy.lock().clone(),
                notes: v.copies.read().values().filter(|c| !c.notes.is_empty()).map(|c| (c.info.id, c.notes.clone())).collect(),
            })
            .collect();
        // Volumes that failed to open stay registered.
        let mut all: Vec<VolumeRecord> = self.unopened.lock().iter().map(|(r, _)| r.clone()).collect();
        all.extend(records);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(e) = self.state.save(&all) {
            tracing::error!(error = %format!("{e:#}"), "saving the daemon state failed");
        }
    }
}
