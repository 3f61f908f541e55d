//! Attachments: what the configuration attaches for each volume at start (in file order), and
//! `volume attach`/`volume detach`, which change it now and in the file. The commands run with
//! no lock held (see [`crate::attach`]); `admin` only orders the file's edits.

use shadowcopy::protocol::{Answer, AttachSpec, AttachmentInfo};
use uuid::Uuid;

use super::super::{OpResult, Service, ServiceError, Volume};
use crate::attach;
use crate::config::{self, ExposeEntry, VolumeEntry};

impl Service {
    /// Attaches every configured volume in file order, then restores its exposures. Returns
    /// how many could not be attached; each problem is logged, kept for `volume list`, and
    /// never keeps the next volume from coming up.
    pub fn attach_configured(&self) -> usize {
        let entries = self.config.lock().volumes.clone();
        let mut failed = 0;
        for entry in &entries {
            match self.attach_entry(entry) {
                Ok(done) => {
                    tracing::info!(volume = %entry.name, "{done}");
                    self.attach_problems.lock().remove(&entry.name);
                }
                Err(e) => {
                    failed += 1;
                    tracing::error!(volume = %entry.name, config = %self.config.lock().path.display(), line = entry.line, "not attached: {e}");
                    self.attach_problems.lock().insert(entry.name.clone(), e.to_string());
                }
            }
        }
        failed
    }

    fn attach_entry(&self, entry: &VolumeEntry) -> Result<String, ServiceError> {
        let v = self.volume(&entry.name).ok_or_else(|| match self.unopened.lock().iter().find(|(r, _)| r.name == entry.name) {
            Some((_, why)) => ServiceError::Failed(format!("volume `{}` could not be opened: {why}", entry.name)),
            None => ServiceError::Failed(format!(
                "no volume `{}` is registered; register it (`shadowcopy volume add {} IMAGE`) or take it out of the configuration",
                entry.name, entry.name
            )),
        })?;
        let mut done = self.attach_now(&v, &entry.spec())?;
        for e in &entry.expose {
            match self.expose_configured(&v, e) {
                Ok(at) => done.push_str(&format!("; exposed {} at {at}", e.copy)),
                Err(err) => {
                    tracing::warn!(volume = %v.name, copy = %e.copy, "a configured exposure was not restored: {err}");
                    done.push_str(&format!("; {} not exposed: {err}", e.copy));
                }
            }
        }
        Ok(done)
    }

    fn attach_now(&self, v: &Volume, spec: &AttachSpec) -> Result<String, ServiceError> {
        attach::attach(&self.live_path(v), v.read_only(), spec, &self.settings.mount)
            .map_err(|source| ServiceError::Attach { volume: v.name.clone(), source })
    }

    fn expose_configured(&self, v: &Volume, e: &ExposeEntry) -> Result<String, ServiceError> {
        let copies = v.copies.read();
        let id = if e.copy == "newest" {
            copies.values().max_by(|a, b| a.info.created.cmp(&b.info.created)).map(|c| c.info.id)
        } else {
            copies.values().find(|c| c.name == e.copy || c.info.id.to_string() == e.copy).map(|c| c.info.id)
        };
        drop(copies);
        let id: Uuid = id.ok_or_else(|| ServiceError::NoCopies(format!("{}: no copy `{}`", v.name, e.copy)))?;
        if let Some(at) = e.at.as_ref() {
            if self.exposures.of(id).iter().any(|p| std::path::Path::new(p) == at) {
                return Ok(at.display().to_string());
            }
        }
        let at = e.at.as_ref().map(|p| p.display().to_string());
        match self.expose(id, at.as_deref(), e.device, false)? {
            Answer::Done(_) => Ok(self.exposures.of(id).last().cloned().unwrap_or_default()),
            _ => Ok(String::new()),
        }
    }

    /// `volume attach` (and `volume add --attach`): attaches now, then records it in the file.
    pub(in crate::service) fn volume_attach(&self, name: &str, spec: AttachSpec) -> OpResult {
        config::check_spec(&spec).map_err(ServiceError::BadRequest)?;
        let v = self.volume(name).ok_or_else(|| ServiceError::NoVolume(name.to_string()))?;
        let previous = self.config.lock().volumes.iter().find(|e| e.name == name).map(VolumeEntry::spec);
        if let Some(old) = previous.as_ref().filter(|old| old.mount != spec.mount && old.mount.is_some()) {
            // A different mount point: the old filesystem goes first.
            attach::detach(&self.live_path(&v), old).map_err(|source| ServiceError::Attach { volume: name.to_string(), source })?;
        }
        let done = self.attach_now(&v, &spec)?;
        let path = {
            let _admin = self.admin.lock();
            let path = self.config.lock().path.clone();
            config::set_attachment(&path, name, &spec)?;
            let mut c = self.config.lock();
            match c.volumes.iter_mut().find(|e| e.name == name) {
                Some(e) => {
                    (e.mount, e.fs_type, e.fs_options) = (spec.mount.clone(), spec.fs_type.clone(), spec.fs_options.clone());
                }
                None => c.volumes.push(VolumeEntry {
                    name: name.to_string(),
                    mount: spec.mount.clone(),
                    fs_type: spec.fs_type.clone(),
                    fs_options: spec.fs_options.clone(),
                    expose: Vec::new(),
                    line: 0,
                }),
            }
            path
        };
        self.attach_problems.lock().remove(name);
        Ok(Answer::Done(format!("volume `{name}`: {done}; {} attaches it at every start", path.display())))
    }

    /// `volume detach`: unmounts and detaches now, then takes it out of the file.
    pub(in crate::service) fn volume_detach(&self, name: &str) -> OpResult {
        let v = self.volume(name).ok_or_else(|| ServiceError::NoVolume(name.to_string()))?;
        let spec = self.config.lock().volumes.iter().find(|e| e.name == name).map(VolumeEntry::spec).unwrap_or_default();
        let done =
            attach::detach(&self.live_path(&v), &spec).map_err(|source| ServiceError::Attach { volume: name.to_string(), source })?;
        let _admin = self.admin.lock();
        let path = self.config.lock().path.clone();
        let removed = config::remove_attachment(&path, name)?;
        self.config.lock().volumes.retain(|e| e.name != name);
        self.attach_problems.lock().remove(name);
        let file = if removed { format!("; taken out of {}", path.display()) } else { String::new() };
        Ok(Answer::Done(format!("volume `{name}`: {done}{file}")))
    }

    /// Undoes the configured attachments in reverse file order (`daemon stop --unmount`, or a
    /// stop with `unmount_at_stop`). Stops at the first that cannot be undone (busy), so that
    /// nothing mounted later over an earlier one is pulled.
    pub fn detach_configured(&self) -> Result<(), ServiceError> {
        let entries = self.config.lock().volumes.clone();
        for entry in entries.iter().rev() {
            let Some(v) = self.volume(&entry.name) else { continue };
            let done = attach::detach(&self.live_path(&v), &entry.spec())
                .map_err(|source| ServiceError::Attach { volume: entry.name.clone(), source })?;
            tracing::info!(volume = %entry.name, "{done}");
        }
        Ok(())
    }

    /// What was wrong in the file at start, and the entries for volumes that are not served
    /// (`volume list` cannot show those), as `file:line: …`.
    pub(in crate::service) fn config_problems(&self) -> Vec<String> {
        let mut out = self.settings.config.errors.clone();
        let config = self.config.lock();
        let problems = self.attach_problems.lock();
        for e in config.volumes.iter().filter(|e| self.volume(&e.name).is_none()) {
            if let Some(p) = problems.get(&e.name) {
                out.push(format!("{}:{}: {p}", config.path.display(), e.line));
            }
        }
        out
    }

    /// The attachment of `v` for `volume list`: the configured one and what is there now.
    pub(in crate::service) fn attachment_info(&self, v: &Volume) -> Option<AttachmentInfo> {
        let spec = self.config.lock().volumes.iter().find(|e| e.name == v.name).map(VolumeEntry::spec)?;
        let now = attach::current(&self.live_path(v), &spec).unwrap_or_default();
        Some(AttachmentInfo {
            devices: now.devices.iter().map(|d| d.device.clone()).collect(),
            mounted_at: now.mounted_at.map(|p| p.display().to_string()),
            problem: self.attach_problems.lock().get(&v.name).cloned(),
            spec,
        })
    }
}
