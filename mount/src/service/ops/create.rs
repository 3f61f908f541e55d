//! Taking a set: the writers' sequence around the instant (the library's coordinator), flush
//! and hold (FIFREEZE on the filesystems on the set's live files, the engine's commit, FITHAW),
//! backup sessions, BackupComplete, and the release of auto-release sets.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use shadowcopy::coordinator::{self, Limits, Sequence};
use shadowcopy::hold;
use shadowcopy::protocol::{self, attributes, Answer, DeleteTarget, EventKind, SetView};
use shadowcopy::{create_set, CreateOptions, ShadowVolume};
use uuid::Uuid;

use super::super::model::unique_name;
use super::super::{system_of, OpResult, Service, ServiceError, ShadowCopy, Volume, HOLD_LIMIT};

/// A set taken under flush and hold: the set, how long filesystems were frozen, and which.
struct Held {
    set: shadowcopy::SetInfo,
    held: Duration,
    mount_points: Vec<PathBuf>,
}

/// Bounds on what people write on a copy (the state file keeps it).
fn check_notes(n: &crate::state::CopyNotes) -> Result<(), ServiceError> {
    if n.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(ServiceError::BadRequest("a description may have at most 1024 bytes".into()));
    }
    if n.labels.len() > 64 {
        return Err(ServiceError::BadRequest("a copy may have at most 64 labels".into()));
    }
    for (k, v) in &n.labels {
        let key_ok = !k.is_empty() && k.len() <= 128 && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok || v.len() > 1024 {
            return Err(ServiceError::BadRequest(format!(
                "invalid label `{k}`: a key has 1-128 letters, digits, `.`, `_`, `-`, `/`; a value at most 1024 bytes"
            )));
        }
    }
    Ok(())
}

impl Service {
    /// Takes a set with these notes on its copies (the schedule's own copies).
    pub(in crate::service) fn create_with_notes(&self, req: &protocol::CreateRequest, notes: crate::state::CopyNotes) -> OpResult {
        self.create_inner(req, notes, &mut |_| {}, &|| true)
    }

    pub(in crate::service) fn create(
        &self,
        req: &protocol::CreateRequest,
        stage: &mut dyn FnMut(&str),
        requester_alive: &dyn Fn() -> bool,
    ) -> OpResult {
        let notes = crate::state::CopyNotes {
            description: req.description.clone().filter(|d| !d.is_empty()),
            labels: req.labels.clone(),
            cleanup: req.cleanup,
            timeline: false,
        };
        self.create_inner(req, notes, stage, requester_alive)
    }

    fn create_inner(
        &self,
        req: &protocol::CreateRequest,
        notes: crate::state::CopyNotes,
        stage: &mut dyn FnMut(&str),
        requester_alive: &dyn Fn() -> bool,
    ) -> OpResult {
        let names = &req.volumes;
        let volatile = !req.is_persistent();
        check_notes(&notes)?;
        let context = req.context;
        if names.is_empty() {
            return Err(ServiceError::BadRequest("name at least one volume".into()));
        }
        let _admin = self.admin.lock();
        let mut vols: Vec<Arc<Volume>> = Vec::new();
        for n in names {
            let v = self.volume_named(n)?;
            if vols.iter().any(|x| x.name == v.name) {
                return Err(ServiceError::BadRequest(format!("volume `{n}` is named twice")));
            }
            vols.push(v);
        }
        let mut engines: Vec<&ShadowVolume> = Vec::new();
        for v in &vols {
            engines.push(system_of(v)?);
        }
        let no_writers = protocol::WriterSelection { none: true, ..Default::default() };
        let selection = if context.with_writers() {
            &req.writers
        } else if req.writers.only.is_empty() {
            &no_writers
        } else {
            return Err(ServiceError::BadRequest(format!(
                "context `{}` takes no writers; choose a context with writers (backup, app_rollback, client_accessible_writers)",
                context.as_str()
            )));
        };
        let chosen = self.writers.choose(names, selection).map_err(ServiceError::NoWriter)?;
        for s in &chosen.skipped {
            tracing::warn!(writer = %s, "writer left out of the set");
        }
        let lives: Vec<PathBuf> = vols.iter().map(|v| self.live_path(v)).collect();
        let mut attrs = attributes::with_context(0, context);
        if context.client_accessible() {
            attrs |= attributes::CLIENT_ACCESSIBLE;
        }
        if chosen.writers.is_empty() {
            attrs |= attributes::NO_WRITERS;
        }
        if volatile && !req.keep_after_disconnect {
            attrs |= attributes::AUTO_RELEASE;
        }
        // Flush and hold, between the writers' Freeze and Thaw.
        let hold = || -> Result<Held, ServiceError> {
            let filesystems = hold::filesystems_on(&lives).map_err(|e| ServiceError::Failed(e.to_string()))?;
            // The keeper freezes and thaws (see `crate::keeper` for why not this process); a
            // worker that dies in between leaves the thawing to it.
            let frozen = if filesystems.is_empty() {
                None
            } else {
                let keeper = self.keeper.get().ok_or_else(|| ServiceError::Failed("no thaw keeper: refusing to freeze".into()))?;
                Some(keeper.hold(&filesystems, HOLD_LIMIT).map_err(|e| match e {
                    crate::keeper::KeeperError::FreezeTimeout(m) => ServiceError::FreezeTimeout(m),
                    e => ServiceError::Failed(e.to_string()),
                })?)
            };
            if !filesystems.is_empty() {
                crate::failpoints::stall("stall-after-freeze");
            }
            let attrs = if filesystems.is_empty() { attrs } else { attrs | attributes::FS_FROZEN };
            let set = create_set(&engines, CreateOptions { volatile, attributes: attrs });
            let mount_points = frozen.as_ref().map_or(Vec::new(), |f| f.mount_points().to_vec());
            let (held, expired) = frozen.map_or((Duration::ZERO, false), |f| f.release());
            let set = set?;
            if expired {
                for (e, c) in engines.iter().zip(&set.copies) {
                    let _ = e.delete(c.id);
                }
                return Err(ServiceError::HoldExpired(HOLD_LIMIT));
            }
            Ok(Held { set, held, mount_points })
        };
        let sequence =
            Sequence { writers: &chosen.writers, volumes: names, limits: Limits::VSS, defer_backup_complete: req.defer_backup_complete };
        let taken = match coordinator::run_set(
            &sequence,
            stage,
            requester_alive,
            || {
                hold().map(|h| {
                    let (id, ids) = (h.set.set_id, h.set.copies.iter().map(|c| c.id).collect());
                    (h, id, ids)
                })
            },
            |h: &Held| {
                for (e, c) in engines.iter().zip(&h.set.copies) {
                    let _ = e.delete(c.id);
                }
            },
        ) {
            Ok(t) => t,
            Err(e) => {
                if let ServiceError::SetAborted(coordinator::SetError::WriterFailed { writer, .. }) = &e {
                    self.record(
                        EventKind::WriterFailed,
                        None,
                        None,
                        None,
                        format!("writer `{writer}`: {e} (volumes {})", names.join(", ")),
                    );
                }
                return Err(e);
            }
        };
        let Held { set, held, mount_points } = taken.result;
        if !chosen.writers.is_empty() {
            if req.defer_backup_complete {
                // Kept beside the connection, so that a worker that replaces this one can still
                // send the BackupComplete (the writers reconnect to it by name).
                let pending = crate::ledger::PendingSession {
                    writers: chosen.writers.iter().map(|(w, comps)| (w.registration.name.clone(), comps.clone())).collect(),
                    volumes: names.clone(),
                    copy_ids: taken.copy_ids.clone(),
                };
                self.settings.ledger.session_opened(taken.set_id, &pending);
            }
            self.sessions.open(taken.set_id, chosen.writers.clone(), names.clone(), taken.copy_ids, !req.defer_backup_complete);
        }
        let mut views = Vec::new();
        for (v, info) in vols.iter().zip(set.copies) {
            let mut copies = v.copies.write();
            let name = unique_name(v, &copies, &info);
            let c = Arc::new(ShadowCopy {
                serial: self.copy_serial(&info, &name),
                name: name.clone(),
                notes: notes.clone(),
                info,
                volume: Arc::downgrade(v),
                tree: OnceLock::new(),
                damage_logged: Default::default(),
            });
            copies.insert(name, Arc::clone(&c));
            drop(copies);
            self.copies_by_serial.write().insert(c.serial, Arc::clone(&c));
            views.push(self.copy_view(v, &c));
            self.record(
                EventKind::CopyCreated,
                Some(&v.name),
                Some(c.info.id),
                None,
                format!(
                    "shadow copy {} ({}) of volume `{}` created{}",
                    c.info.id,
                    c.name,
                    v.name,
                    match &c.notes.description {
                        Some(d) => format!(": {d}"),
                        None => String::new(),
                    }
                ),
            );
        }
        if notes.is_empty() {
            self.save_names_later();
        } else {
            // Now: what retention may delete, and what people wrote, cannot be rebuilt.
            self.save_state();
        }
        Ok(Answer::Set(SetView {
            set_id: set.set_id,
            copies: views,
            hold_us: set.hold.as_micros() as u64,
            frozen_us: if mount_points.is_empty() { 0 } else { held.as_micros() as u64 },
            frozen: mount_points.iter().map(|p| p.display().to_string()).collect(),
            writers: chosen.writers.iter().map(|(w, _)| w.registration.name.clone()).collect(),
            skipped_writers: chosen.skipped,
        }))
    }

    pub(in crate::service) fn backup_complete(&self, set_id: Uuid) -> OpResult {
        if self.set_copies(set_id).is_empty() {
            return Err(ServiceError::NoSet(set_id));
        }
        if let Some(pending) = self.settings.ledger.pending_session(set_id) {
            self.adopt_session(set_id, pending);
        }
        let r = self.sessions.backup_complete(set_id);
        self.settings.ledger.session_ended(set_id);
        match r {
            Ok(m) => Ok(Answer::Done(m)),
            Err(coordinator::NoSession) => {
                Ok(Answer::Done(format!("set {set_id} has no writers waiting for BackupComplete; nothing to tell")))
            }
        }
    }

    /// Takes over the deferred session of a set that an earlier worker (since replaced) took:
    /// its writers, found again by name once they reconnected (up to 10 s). Its requester's
    /// connection went with that worker.
    fn adopt_session(&self, set_id: Uuid, pending: crate::ledger::PendingSession) {
        if self.sessions.is_open(set_id) {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let writers = loop {
            let found: Vec<_> =
                pending.writers.iter().filter_map(|(name, comps)| self.writers.connected_named(name).map(|w| (w, comps.clone()))).collect();
            if found.len() == pending.writers.len() || std::time::Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        for (name, _) in &pending.writers {
            if !writers.iter().any(|(w, _)| &w.registration.name == name) {
                tracing::warn!(writer = %name, set = %set_id, "writer did not reconnect after the worker restart: it gets no BackupComplete");
            }
        }
        tracing::info!(set = %set_id, writers = writers.len(), "took over the backup session of a set taken by the previous worker");
        self.sessions.open(set_id, writers, pending.volumes, pending.copy_ids, false);
        self.sessions.requester_gone(set_id);
    }

    /// The requester that created `sets` disconnected: auto-release sets are deleted, and the
    /// sets' backup sessions learn the requester is gone.
    pub fn requester_gone(&self, sets: &[Uuid]) {
        for &set_id in sets {
            let auto_release = self.set_copies(set_id).iter().any(|(_, c)| c.info.attributes & attributes::AUTO_RELEASE != 0);
            if auto_release {
                match self.delete_for(DeleteTarget::Set(set_id), "released") {
                    Ok(_) => tracing::info!(set = %set_id, "auto-release set released: its requester disconnected"),
                    Err(e) => tracing::warn!(set = %set_id, error = %e, "releasing an auto-release set failed"),
                }
                self.flush_departures();
            }
            self.sessions.requester_gone(set_id);
        }
    }
}

impl Service {
    /// Sets of several volumes that a crash cut short (no `SetComplete` mark; see the diff-area
    /// format): a set whose copies all exist, or one of whose copies was marked complete, had
    /// every copy durable, and is completed; any other is dropped whole, so that a set is never
    /// kept on some of its volumes only. Runs at start, before anyone can ask for anything.
    pub(in crate::service) fn resolve_unfinished_sets(&self) {
        let mut unfinished: std::collections::BTreeMap<Uuid, Vec<Uuid>> = Default::default();
        for v in self.volumes() {
            let Some(engine) = v.system() else { continue };
            for c in engine.unfinished_set_copies() {
                unfinished.entry(c.set_id).or_default().push(c.id);
            }
        }
        for (set_id, ids) in unfinished {
            let copies = self.set_copies(set_id);
            let set_size = copies.first().map_or(0, |(_, c)| c.info.set_size as usize);
            let one_marked = copies.iter().any(|(_, c)| !ids.contains(&c.info.id));
            if copies.len() == set_size || one_marked {
                for (v, c) in copies.iter().filter(|(_, c)| ids.contains(&c.info.id)) {
                    match v.system().map(|e| e.complete_set(c.info.id)) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            tracing::error!(set = %set_id, volume = %v.name, error = %e, "cannot mark an interrupted set complete")
                        }
                        None => {}
                    }
                }
                tracing::info!(set = %set_id, copies = copies.len(), "completed a set that a crash interrupted after every copy was durable");
            } else if !self.unopened.lock().is_empty() {
                tracing::warn!(
                    set = %set_id,
                    found = copies.len(),
                    set_size,
                    "a set that a crash may have cut short has copies on volumes that could not be opened; it is decided once they open"
                );
            } else {
                let volumes: Vec<String> = copies.iter().map(|(v, _)| v.name.clone()).collect();
                match self.delete_for(DeleteTarget::Set(set_id), "interrupted") {
                    Ok(_) => tracing::warn!(
                        set = %set_id,
                        found = copies.len(),
                        set_size,
                        ?volumes,
                        "dropped a set that a crash cut short: only some of its volumes had their copy"
                    ),
                    Err(e) => tracing::error!(set = %set_id, error = %e, "cannot drop the copies of a set that a crash cut short"),
                }
            }
        }
    }
}
