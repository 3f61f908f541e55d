//! Copies: listing (as the protocol shows them) and deleting, by id, set, oldest or all.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use shadowcopy::protocol::{self, attributes, Answer, CopyView, DeleteTarget, EventKind};

use super::super::{OpResult, Service, ServiceError, ShadowCopy, Volume};

impl Service {
    /// A copy as `list` and `create` show it.
    pub(in crate::service) fn copy_view(&self, v: &Volume, c: &ShadowCopy) -> CopyView {
        let system = v.system().is_some();
        CopyView {
            id: c.info.id,
            set_id: c.info.set_id,
            volume: v.name.clone(),
            created_unix: c.info.created.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            exposed_name: c.name.clone(),
            persistent: c.info.persistent,
            context: if system { attributes::context(c.info.attributes).map(|c| c.as_str().to_string()) } else { None },
            attributes: if system {
                attributes::names(c.info.attributes, c.info.persistent)
            } else {
                protocol::windows_attribute_names(c.info.attributes)
            },
            attribute_flags: c.info.attributes,
            provider: v.provider().map_or("none", |p| p.name()).into(),
            filesystem: c.tree_kind(),
            diff_area_used: v.system().map_or(0, |e| e.usage().used_bytes),
            exposed_at: self.exposures.of(c.info.id),
            failed: c.info.failed.clone(),
            stale: c.info.stale.clone(),
            tree_damage: c.tree_damage(),
            description: c.notes.description.clone(),
            labels: c.notes.labels.clone(),
            cleanup: c.notes.cleanup,
        }
    }

    /// The copies of a volume, oldest first.
    pub(in crate::service) fn copies_oldest_first(v: &Volume) -> Vec<Arc<ShadowCopy>> {
        let mut copies: Vec<Arc<ShadowCopy>> = v.copies.read().values().cloned().collect();
        copies.sort_by_key(|c| c.info.epoch);
        copies
    }

    pub(in crate::service) fn list(&self, volume: Option<&str>) -> OpResult {
        let vols = match volume {
            Some(n) => vec![self.volume_named(n)?],
            None => self.volumes(),
        };
        let mut out = Vec::new();
        for v in &vols {
            out.extend(Self::copies_oldest_first(v).iter().map(|c| self.copy_view(v, c)));
        }
        Ok(Answer::Copies(out))
    }

    /// Deletes copies on request (the `delete` operation).
    pub(in crate::service) fn delete(&self, target: DeleteTarget) -> OpResult {
        self.delete_for(target, "request")
    }

    /// Deletes copies, recording `reason` with each (`request`, `released`, `retention`,
    /// `interrupted`). An exposed copy refuses the whole deletion.
    pub(in crate::service) fn delete_for(&self, target: DeleteTarget, reason: &'static str) -> OpResult {
        let _admin = self.admin.lock();
        let victims: Vec<(Arc<Volume>, Arc<ShadowCopy>)> = match &target {
            DeleteTarget::Id(id) => vec![self.find_copy(*id)?],
            DeleteTarget::Set(set) => {
                let v = self.set_copies(*set);
                if v.is_empty() {
                    return Err(ServiceError::NoSet(*set));
                }
                v
            }
            DeleteTarget::Oldest(name) | DeleteTarget::All(name) => {
                let v = self.volume_named(name)?;
                let mut copies = Self::copies_oldest_first(&v);
                if matches!(target, DeleteTarget::Oldest(_)) {
                    copies.truncate(1);
                }
                // A volume without copies has nothing to delete: that is done, not an error
                // (scripts that clean up run on empty volumes too).
                copies.into_iter().map(|c| (Arc::clone(&v), c)).collect()
            }
        };
        if let Some((copy, at)) = victims.iter().map(|(_, c)| (c.info.id, self.exposures.of(c.info.id))).find(|(_, at)| !at.is_empty()) {
            return Err(ServiceError::CopyExposed { copy, at: at.join(", ") });
        }
        let mut views = Vec::new();
        for (v, c) in &victims {
            views.push(self.copy_view(v, c));
            let provider = v.provider().ok_or_else(|| ServiceError::NoCopies(v.name.clone()))?;
            match provider.delete_copy(c.info.id) {
                Ok(_) | Err(shadowcopy::Error::NoSuchCopy(_)) => {}
                Err(e) => {
                    self.save_names_later();
                    return Err(e.into());
                }
            }
            // The engine reports the deletion as an event too; drop it from the model now.
            if let Some(e) = v.system() {
                let _ = e.take_events();
            }
            self.forget_copy(v, c.info.id);
            self.sessions.released(c.info.set_id);
            self.settings.ledger.session_ended(c.info.set_id);
            let why = match reason {
                "retention" => "its volume's retention policy no longer keeps it",
                "released" => "the requester of its auto-release set disconnected",
                "interrupted" => "a crash cut its set short on other volumes",
                _ => "it was asked to",
            };
            self.record(
                EventKind::CopyDeleted,
                Some(&v.name),
                Some(c.info.id),
                Some(reason),
                format!("shadow copy {} ({}) of volume `{}` was deleted because {why}", c.info.id, c.name, v.name),
            );
        }
        // Now, not later: the state file's name high-water mark must cover the deleted copies'
        // names before anyone could be given one of them again (after a crash and restart).
        self.save_state();
        Ok(Answer::Copies(views))
    }
}
