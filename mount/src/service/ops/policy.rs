//! Schedules and retention in the daemon: setting and listing a volume's policy, cleanup on
//! request, and the tick that takes scheduled copies and applies retention (once a second,
//! from the daemon's timer thread; tests call [`Service::tick`] with their own clock).
//!
//! The decisions are [`crate::retention`]'s; this file only gathers the copies, deletes what
//! it names (never an exposed copy, never one the policy does not own) and reports it.

use std::sync::Arc;

use shadowcopy::protocol::{Answer, CleanupView, CreateRequest, DeleteTarget, EventKind, Policy, PolicyView};

use super::super::{OpResult, Service, ServiceError, Volume};
use crate::retention::{self, Candidate, Decision, Schedule};
use crate::state::CopyNotes;

impl Service {
    pub(in crate::service) fn policy_set(&self, name: &str, policy: Option<Policy>) -> OpResult {
        let admin = self.admin.lock();
        let v = self.volume_named(name)?;
        if v.system().is_none() {
            return Err(ServiceError::ReadOnlyVolume(v.name.clone()));
        }
        if let Some(p) = &policy {
            retention::validate(p).map_err(ServiceError::BadRequest)?;
        }
        *v.policy.lock() = policy;
        self.save_state();
        drop(admin);
        tracing::info!(volume = %v.name, policy = ?v.policy.lock(), "policy set");
        Ok(Answer::Policies(self.policy_view(&v).into_iter().collect()))
    }

    pub(in crate::service) fn policy_list(&self) -> Answer {
        Answer::Policies(self.volumes().iter().filter_map(|v| self.policy_view(v)).collect())
    }

    fn policy_view(&self, v: &Volume) -> Option<PolicyView> {
        let policy = v.policy.lock().clone()?;
        let now = self.settings.now_secs();
        let tried = self.schedule_tried.lock().get(&v.name).copied();
        let next_copy_unix = policy.schedule.as_deref().and_then(|s| Schedule::parse(s).ok()).map(|s| {
            // A slot tried already (and failed) is not tried again.
            if tried == Some(s.slot(now)) {
                s.slot(now) + s.every
            } else {
                s.next(newest_scheduled(v), now)
            }
        });
        let owned_copies = v.copies.read().values().filter(|c| c.notes.cleanup).count();
        Some(PolicyView { volume: v.name.clone(), policy, next_copy_unix, owned_copies })
    }

    pub(in crate::service) fn cleanup(&self, name: &str, dry_run: bool) -> OpResult {
        let v = self.volume_named(name)?;
        let Some(policy) = v.policy.lock().clone() else {
            return Err(ServiceError::BadRequest(format!(
                "volume `{name}` has no retention policy; set one with `shadowcopy policy set {name} --keep-…`"
            )));
        };
        Ok(Answer::Cleanup(self.apply_retention(&v, &policy, dry_run)?))
    }

    /// Deletes (or with `dry_run` only names) the owned copies `policy` no longer keeps.
    fn apply_retention(&self, v: &Arc<Volume>, policy: &Policy, dry_run: bool) -> Result<CleanupView, ServiceError> {
        let copies = Self::copies_oldest_first(v);
        let candidates: Vec<Candidate> = copies
            .iter()
            .map(|c| Candidate {
                id: c.info.id,
                created: c.info.created.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                owned: c.notes.cleanup,
                exposed: !self.exposures.of(c.info.id).is_empty(),
            })
            .collect();
        let Decision { delete, kept, kept_exposed } = retention::decide(&policy.keep, &candidates, self.settings.now_secs());
        let mut deleted = Vec::new();
        for id in delete {
            let Some(c) = copies.iter().find(|c| c.info.id == id) else { continue };
            if dry_run {
                deleted.push(self.copy_view(v, c));
                continue;
            }
            match self.delete_for(DeleteTarget::Id(id), "retention") {
                Ok(Answer::Copies(mut gone)) => deleted.append(&mut gone),
                Ok(_) => {}
                // Exposed meanwhile, or gone for space: left to the next round.
                Err(e) => tracing::warn!(volume = %v.name, copy = %id, error = %e, "retention could not delete a copy"),
            }
        }
        if !dry_run && !deleted.is_empty() {
            tracing::info!(volume = %v.name, deleted = deleted.len(), kept, "retention deleted copies its policy no longer keeps");
        }
        Ok(CleanupView { volume: v.name.clone(), dry_run, deleted, kept, kept_exposed })
    }

    /// One round of the timer: for each volume with a policy, take the scheduled copy if one is
    /// due (one attempt per slot), then apply retention.
    pub fn tick(&self) {
        self.unless_quiesced(|| self.tick_now());
    }

    fn tick_now(&self) {
        self.poll_events();
        let now = self.settings.now_secs();
        for v in self.volumes() {
            let Some(policy) = v.policy.lock().clone() else { continue };
            if let Some(schedule) = policy.schedule.as_deref().and_then(|s| Schedule::parse(s).ok()) {
                let slot = schedule.slot(now);
                let tried = self.schedule_tried.lock().get(&v.name).copied();
                if schedule.due(newest_scheduled(&v), now) && tried.is_none_or(|t| t < slot) {
                    self.schedule_tried.lock().insert(v.name.clone(), slot);
                    self.take_scheduled(&v, policy.schedule.as_deref().unwrap_or_default());
                }
            }
            if let Err(e) = self.apply_retention(&v, &policy, false) {
                tracing::warn!(volume = %v.name, error = %e, "retention failed");
            }
        }
        self.flush_departures();
    }

    fn take_scheduled(&self, v: &Volume, schedule: &str) {
        let req = CreateRequest::new(vec![v.name.clone()]);
        let notes =
            CopyNotes { description: Some(format!("timeline ({schedule})")), labels: Default::default(), cleanup: true, timeline: true };
        if let Err(e) = self.create_with_notes(&req, notes) {
            self.record(
                EventKind::ScheduleFailed,
                Some(&v.name),
                None,
                None,
                format!(
                    "the scheduled ({schedule}) copy of volume `{}` could not be taken: {e}; the next is tried at the next slot",
                    v.name
                ),
            );
        }
    }
}

/// When the newest copy the schedule took was taken (Unix seconds).
fn newest_scheduled(v: &Volume) -> Option<u64> {
    v.copies
        .read()
        .values()
        .filter(|c| c.notes.timeline)
        .filter_map(|c| c.info.created.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs()))
        .max()
}
