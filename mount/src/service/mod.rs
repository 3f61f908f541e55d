//! The daemon's service: the model of what it serves and every operation of the control
//! protocol, run against the library's engine and coordinator.
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`model`] | volumes, copies, exposed names, lazily opened filesystem views | changes the registry |
//! | [`registry`] | opening volumes, serials, the state file and its saver | decides what is allowed |
//! | [`error`] | [`ServiceError`]: each failure's message, once, and its protocol kind | decides that something fails |
//! | [`ops`] | one file per group of operations (volume, create, copies, storage, image, daemon) | parses wire bytes |
//!
//! The control server calls [`Service::handle`]; the FUSE frontend reads the model through the
//! lookups here. Never parses wire bytes and never answers FUSE requests itself.

pub mod error;
pub mod model;
mod ops;
mod registry;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use shadowcopy::fsread::ForeignOwner;
use shadowcopy::protocol::{Answer, EventKind, Op, Reply};
use shadowcopy::Event;
use uuid::Uuid;

pub use self::error::ServiceError;
pub use self::model::{Backend, ImageSource, Owner, ShadowCopy, Volume};
pub use self::ops::daemon::describe_in_use;
pub use self::registry::check_name as check_volume_name;
use crate::state::{StateDir, VolumeRecord};

/// The hard limit on holding writes (filesystems frozen) for one set, as VSS's 10 s.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// Settings the daemon was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the FUSE mount is.
    pub mount: PathBuf,
    /// Chunks of each volume's base-volume cache.
    pub cache_chunks: usize,
    /// Bytes of each volume's checkpointed-index pages kept in memory.
    pub index_cache_bytes: u64,
    /// Owner shown for files of filesystems without POSIX owners.
    pub fs_owner: ForeignOwner,
    /// Whether users other than the daemon's may see the mount (`--allow-other`; Samba needs it).
    pub allow_other: bool,
    /// The time: copies are stamped with it, schedules and retention run on it (tests make
    /// time pass).
    pub clock: fn() -> std::time::SystemTime,
    /// A diff area this full (percent of its maximum) is reported as nearly full.
    pub nearly_full_percent: u8,
    /// The serials, names and `live` opens the kernel knows on this FUSE connection (kept by
    /// the holder across workers).
    pub ledger: std::sync::Arc<crate::ledger::NodeLedger>,
    /// The configuration file as read at start (what to attach per volume).
    pub config: crate::config::Config,
}

impl Settings {
    /// Settings with every default for a daemon whose mount is at `mount`.
    pub fn new(mount: PathBuf) -> Settings {
        Settings {
            mount,
            cache_chunks: 4096,
            index_cache_bytes: 64 << 20,
            fs_owner: ForeignOwner::default(),
            allow_other: false,
            clock: std::time::SystemTime::now,
            nearly_full_percent: 90,
            ledger: Default::default(),
            config: crate::config::Config::default(),
        }
    }

    /// Now, in Unix seconds, by the service's clock.
    pub fn now_secs(&self) -> u64 {
        (self.clock)().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// Something leaving the mount: the frontend drops its entries from the kernel's caches.
#[derive(Debug, Clone)]
pub enum Departure {
    /// A copy left its volume's folder.
    Copy {
        /// The volume's serial.
        volume_serial: u32,
        /// The copy's exposed name.
        name: String,
    },
    /// A volume left the mount's root.
    Volume {
        /// Its name.
        name: String,
    },
}

/// Called with what left the mount, to drop it from the kernel's caches.
pub type DepartureHook = Box<dyn Fn(&[Departure]) + Send + Sync>;

/// The result of one operation.
type OpResult = Result<Answer, ServiceError>;

/// The worker this service runs in, and the daemon around it (`status`).
#[derive(Debug, Clone)]
pub struct WorkerIncarnation {
    /// What `status` says about the worker.
    pub status: shadowcopy::protocol::WorkerStatus,
    /// The holder's process id: the daemon's main process.
    pub holder_pid: u32,
    /// When the daemon (its first worker) started, seconds since the Unix epoch.
    pub daemon_started_unix: f64,
}

/// Everything the daemon serves, and the operations on it.
pub struct Service {
    /// Settings the daemon was started with.
    pub settings: Settings,
    state: StateDir,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    volumes_by_serial: RwLock<HashMap<u32, Arc<Volume>>>,
    copies_by_serial: RwLock<HashMap<u32, Arc<ShadowCopy>>>,
    /// Registered volumes that could not be opened at start, and why: kept registered, listed
    /// by `volume list` as failed with the reason.
    unopened: Mutex<Vec<(VolumeRecord, String)>>,
    /// Serialises changes to the registry and the state file.
    admin: Mutex<()>,
    /// Held shared by every state-changing operation and timer run; `true` once the worker
    /// quiesced for a restart or stop (see [`Service::quiesce`]): nothing changes after that.
    quiesced: parking_lot::RwLock<bool>,
    /// Set when exposed names changed and the state file should be rewritten (by the saver
    /// thread, off the path of `create`: names can be rebuilt from the copies if lost).
    names_dirty: (Mutex<bool>, parking_lot::Condvar),
    /// Told about copies that leave (deleted, or gone for space).
    departures: Mutex<Vec<Departure>>,
    /// The frontend's cache invalidation, once the mount is up.
    pub notify: OnceLock<DepartureHook>,
    /// Registered writers.
    pub writers: shadowcopy::coordinator::Writers,
    /// Backup sessions of sets taken with writers (until BackupShutdown).
    sessions: shadowcopy::coordinator::Sessions,
    /// Copies exposed outside the mount.
    pub exposures: crate::expose::Exposures,
    /// When the service started.
    pub started: std::time::SystemTime,
    /// Keeps frozen filesystems from staying frozen if the daemon dies mid-hold (set by `main`;
    /// a hold that has filesystems to freeze refuses to run without it).
    pub keeper: OnceLock<crate::keeper::ThawKeeper>,
    /// This worker, when a holder runs it (set by `main`; `daemon restart` needs it).
    pub worker: OnceLock<WorkerIncarnation>,
    /// Where `daemon stop` goes: the main thread's wait ([`crate::lifecycle`]).
    pub stop_requests: OnceLock<Mutex<std::sync::mpsc::Sender<crate::lifecycle::StopRequest>>>,
    /// What happened (`shadowcopy events`).
    pub events: crate::events::EventLog,
    /// Per volume, what the next request that names it is told (copies deleted because the
    /// diff area was full).
    notices: Mutex<BTreeMap<String, Vec<String>>>,
    /// Per volume, the schedule slot last tried (one attempt per slot, also when it fails).
    schedule_tried: Mutex<HashMap<String, u64>>,
    /// The configuration: what to attach per volume (changed by `volume attach`/`detach`).
    config: Mutex<crate::config::Config>,
    /// Per volume, why its configured attachment failed last.
    attach_problems: Mutex<BTreeMap<String, String>>,
}

impl Service {
    /// Reopens every registered volume of the state directory. A volume that cannot be opened
    /// is logged and left registered (it comes back once fixed), never a reason not to start.
    pub fn start(state: StateDir, settings: Settings) -> Service {
        let events = crate::events::EventLog::open(Some(state.path().join("events.jsonl")), settings.clock);
        let exposures = crate::expose::Exposures::new(std::sync::Arc::clone(&settings.ledger));
        let svc = Service {
            events,
            notices: Mutex::new(BTreeMap::new()),
            schedule_tried: Mutex::new(HashMap::new()),
            config: Mutex::new(settings.config.clone()),
            attach_problems: Mutex::new(BTreeMap::new()),
            settings,
            state,
            volumes: RwLock::new(BTreeMap::new()),
            volumes_by_serial: RwLock::new(HashMap::new()),
            copies_by_serial: RwLock::new(HashMap::new()),
            unopened: Mutex::new(Vec::new()),
            admin: Mutex::new(()),
            quiesced: parking_lot::RwLock::new(false),
            names_dirty: (Mutex::new(false), parking_lot::Condvar::new()),
            departures: Mutex::new(Vec::new()),
            notify: OnceLock::new(),
            writers: shadowcopy::coordinator::Writers::default(),
            sessions: shadowcopy::coordinator::Sessions::default(),
            exposures,
            stop_requests: OnceLock::new(),
            keeper: OnceLock::new(),
            worker: OnceLock::new(),
            started: std::time::SystemTime::now(),
        };
        let records = match svc.state.load() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot read the registered volumes; starting with none");
                Vec::new()
            }
        };
        for rec in records {
            match svc.open_volume(&rec, None) {
                Ok(v) => {
                    tracing::info!(volume = %v.name, copies = v.copies.read().len(), "volume reopened");
                    svc.insert_volume(v);
                }
                Err(e) => {
                    svc.events.record(crate::events::NewEvent {
                        kind: shadowcopy::protocol::EventKind::VolumeFailed,
                        volume: Some(&rec.name),
                        copy: None,
                        reason: None,
                        message: format!("volume `{}` cannot be opened: {e}; fix the cause and restart the daemon", rec.name),
                    });
                    svc.unopened.lock().push((rec, e.to_string()));
                }
            }
        }
        svc.resolve_unfinished_sets();
        svc.save_state();
        svc
    }

    // ---- lookups for the frontend ----

    /// Registered volumes that could not be opened at start.
    pub fn unopened_count(&self) -> usize {
        self.unopened.lock().len()
    }

    /// Every served volume, by name.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes.read().values().cloned().collect()
    }

    /// The volume named `name`.
    pub fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes.read().get(name).cloned()
    }

    /// The volume with this serial.
    pub fn volume_by_serial(&self, serial: u32) -> Option<Arc<Volume>> {
        self.volumes_by_serial.read().get(&serial).cloned()
    }

    /// The copy with this serial.
    pub fn copy_by_serial(&self, serial: u32) -> Option<Arc<ShadowCopy>> {
        self.copies_by_serial.read().get(&serial).cloned()
    }

    /// The volume named `name`, or the error that says there is none.
    fn volume_named(&self, name: &str) -> Result<Arc<Volume>, ServiceError> {
        self.volume(name).ok_or_else(|| ServiceError::NoVolume(name.to_string()))
    }

    /// The copy with id `id`, with its volume, or the error that says there is none.
    fn find_copy(&self, id: Uuid) -> Result<(Arc<Volume>, Arc<ShadowCopy>), ServiceError> {
        for v in self.volumes.read().values() {
            if let Some(c) = v.copies.read().values().find(|c| c.info.id == id) {
                return Ok((Arc::clone(v), Arc::clone(c)));
            }
        }
        Err(ServiceError::NoCopy(id))
    }

    /// The copies of set `set_id`, with their volumes.
    fn set_copies(&self, set_id: Uuid) -> Vec<(Arc<Volume>, Arc<ShadowCopy>)> {
        self.volumes()
            .into_iter()
            .flat_map(|v| {
                v.copies.read().values().filter(|c| c.info.set_id == set_id).map(|c| (Arc::clone(&v), Arc::clone(c))).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Where a volume's live file is.
    fn live_path(&self, v: &Volume) -> PathBuf {
        self.settings.mount.join(&v.name).join("live")
    }

    // ---- engine events ----

    /// Applies what the engines did on their own (copies deleted for space, copies failed).
    pub fn poll_events(&self) {
        let mut changed = false;
        for v in self.volumes() {
            let Some(engine) = v.system() else { continue };
            for e in engine.take_events() {
                match e {
                    Event::CopyDeleted { id, reason } => {
                        let name = v.copies.read().values().find(|c| c.info.id == id).map(|c| c.name.clone());
                        let (why, words) = match reason {
                            shadowcopy::DeleteReason::DiffAreaFull => ("diff_area_full", "its diff area was full"),
                            shadowcopy::DeleteReason::Requested => ("request", "it was asked to"),
                        };
                        let message = format!(
                            "shadow copy {id} ({}) of volume `{}` was deleted because {words}",
                            name.as_deref().unwrap_or("unnamed"),
                            v.name
                        );
                        self.record(EventKind::CopyDeleted, Some(&v.name), Some(id), Some(why), message.clone());
                        if matches!(reason, shadowcopy::DeleteReason::DiffAreaFull) {
                            self.notices.lock().entry(v.name.clone()).or_default().push(format!(
                                "{message}; make it larger (`shadowcopy shadowstorage resize {} …`) to keep more copies",
                                v.name
                            ));
                        }
                        changed |= self.forget_copy(&v, id);
                    }
                    Event::CopyFailed { id, reason } => {
                        self.record(
                            EventKind::CopyFailed,
                            Some(&v.name),
                            Some(id),
                            None,
                            format!("shadow copy {id} of volume `{}` failed: {reason}", v.name),
                        );
                    }
                }
            }
            self.check_nearly_full(&v, engine);
            if let Some(reason) = engine.failure() {
                if !v.failure_reported.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    self.record(
                        EventKind::VolumeFailed,
                        Some(&v.name),
                        None,
                        None,
                        format!("the diff area of volume `{}` stopped: {reason}; its copies cannot be read until this is fixed", v.name),
                    );
                }
            }
        }
        if changed {
            // At once (see `delete`): the deleted copies' names must stay retired.
            let _admin = self.admin.lock();
            self.save_state();
        }
        self.flush_departures();
    }

    /// Records an event (see [`crate::events`]).
    fn record(&self, kind: EventKind, volume: Option<&str>, copy: Option<Uuid>, reason: Option<&'static str>, message: String) {
        self.events.record(crate::events::NewEvent { kind, volume, copy, reason, message });
    }

    /// Reports a diff area that passed the warning threshold, once per crossing (it must fall
    /// 5 points below the threshold to be reported again).
    fn check_nearly_full(&self, v: &Volume, engine: &shadowcopy::ShadowVolume) {
        use std::sync::atomic::Ordering;
        let u = engine.usage();
        // Of the room for preserved chunks: the oldest copy goes when that is full.
        let (Some(max), Some(capacity)) = (u.max_bytes, u.slot_capacity.filter(|c| *c > 0)) else { return };
        let percent = u64::from(u.slots_in_use) * 100 / u64::from(capacity);
        let threshold = u64::from(self.settings.nearly_full_percent);
        if percent >= threshold && !v.nearly_full.swap(true, Ordering::AcqRel) {
            self.record(
                EventKind::DiffAreaNearlyFull,
                Some(&v.name),
                None,
                None,
                format!(
                    "the diff area of volume `{}` is {percent}% full ({} of {}); once full, the oldest copies are deleted. \
                     Make it larger with `shadowcopy shadowstorage resize {} SIZE`, or delete copies",
                    v.name,
                    shadowcopy::size::format_size(u.used_bytes),
                    shadowcopy::size::format_size(max),
                    v.name
                ),
            );
        } else if percent + 5 < threshold {
            v.nearly_full.store(false, Ordering::Release);
        }
    }

    /// The notices for the volumes `op` names (all volumes if it names none), taken.
    fn take_notices(&self, op_volumes: Option<Vec<String>>) -> Vec<String> {
        let mut notices = self.notices.lock();
        match op_volumes {
            None => std::mem::take(&mut *notices).into_values().flatten().collect(),
            Some(names) => names.iter().filter_map(|n| notices.remove(n)).flatten().collect(),
        }
    }

    /// Drops a copy from the model; true if it was there.
    fn forget_copy(&self, v: &Volume, id: Uuid) -> bool {
        let mut copies = v.copies.write();
        let Some(name) = copies.iter().find(|(_, c)| c.info.id == id).map(|(n, _)| n.clone()) else { return false };
        let Some(c) = copies.remove(&name) else { return false };
        self.copies_by_serial.write().remove(&c.serial);
        self.departures.lock().push(Departure::Copy { volume_serial: v.serial, name });
        true
    }

    fn flush_departures(&self) {
        let d = std::mem::take(&mut *self.departures.lock());
        if !d.is_empty() {
            if let Some(n) = self.notify.get() {
                n(&d);
            }
        }
    }

    // ---- the protocol ----

    /// Runs one request. `progress` receives (done, total) during long operations.
    /// `requester_alive` says whether the client is still connected (a set is aborted when it
    /// is not).
    /// `notice` receives what the client should be told besides the answer, before it.
    pub fn handle(
        &self,
        op: Op,
        progress: &mut dyn FnMut(u64, u64),
        stage: &mut dyn FnMut(&str),
        notice: &mut dyn FnMut(&str),
        requester_alive: &dyn Fn() -> bool,
    ) -> Reply {
        self.poll_events();
        let named = op.volumes();
        let gate = self.quiesced.read_recursive();
        let r = if *gate && op.changes_state() { Err(ServiceError::Restarting) } else { self.run(op, progress, stage, requester_alive) };
        drop(gate);
        self.poll_events();
        self.flush_departures();
        for n in self.take_notices(named) {
            notice(&n);
        }
        match r {
            Ok(a) => Reply::Ok(a),
            Err(e) => Reply::error(e.kind(), e.to_string()),
        }
    }

    /// Dispatch: one arm per operation, no catch-all, so a new operation forces a decision.
    fn run(&self, op: Op, progress: &mut dyn FnMut(u64, u64), stage: &mut dyn FnMut(&str), requester_alive: &dyn Fn() -> bool) -> OpResult {
        match op {
            Op::Status => Ok(self.status()),
            Op::VolumeAdd { name, image, diff_area, max_size, chunk_size, read_only, attach } => {
                let added =
                    self.volume_add(ops::volume::AddRequest { name: name.clone(), image, diff_area, max_size, chunk_size, read_only })?;
                match attach {
                    None => Ok(added),
                    Some(spec) => self.volume_attach(&name, spec).map_err(|e| {
                        ServiceError::Failed(format!(
                            "volume `{name}` was added, but not attached: {e}; once that is fixed, `shadowcopy volume attach {name}` attaches it"
                        ))
                    }),
                }
            }
            Op::VolumeAttach { name, spec } => self.volume_attach(&name, spec),
            Op::VolumeDetach { name } => self.volume_detach(&name),
            Op::VolumeList => Ok(self.volume_list()),
            Op::VolumeRemove { name } => self.volume_remove(&name),
            Op::Create(req) => self.create(&req, stage, requester_alive),
            Op::BackupComplete { set_id } => self.backup_complete(set_id),
            Op::Writers => Ok(Answer::Writers(self.writers.views())),
            // Handled by the control server, which owns the writer's connection.
            Op::WriterRegister(_) | Op::WriterAnswer { .. } => {
                Err(ServiceError::BadRequest("writer messages are only valid on a writer's own connection".into()))
            }
            Op::List { volume } => self.list(volume.as_deref()),
            Op::Delete { target } => self.delete(target),
            Op::StorageList => Ok(self.storage_list()),
            Op::StorageResize { volume, max_size } => self.resize(&volume, &max_size),
            Op::Export { id, path } => self.export(id, &path, progress),
            Op::Revert { id } => self.revert(id, progress),
            Op::Diff { id, to } => self.diff(id, to),
            Op::ChangedInodes { id, to } => self.changed_inodes(id, to),
            Op::Changes { id, to } => self.changes(id, to),
            Op::Expose { id, at, device, force } => self.expose(id, at.as_deref(), device, force),
            Op::Unexpose { path } => self.unexpose(&path),
            Op::DaemonStop { force, unmount } => self.daemon_stop(force, unmount),
            Op::DaemonRestart => self.daemon_restart(),
            Op::PolicySet { volume, policy } => self.policy_set(&volume, policy),
            Op::PolicyList => Ok(self.policy_list()),
            Op::Cleanup { volume, dry_run } => self.cleanup(&volume, dry_run),
            // Followers are served by the control server, which owns the connection.
            Op::Events { after, limit, follow: false } => Ok(Answer::Events(self.events.since(after, limit.unwrap_or(100)))),
            Op::Events { follow: true, .. } => {
                Err(ServiceError::BadRequest("events with `follow` are a stream: the control server serves them".into()))
            }
        }
    }

    /// Seals every volume for a clean stop (flushed, fingerprint journaled: see
    /// `ShadowVolume::seal`). Only once nothing can write any more: after the unmount.
    pub fn seal_all(&self) {
        self.save_state_and_each_engine("sealing the volume at stop (writes made to it before the next start cannot be detected)", |e| {
            e.seal()
        });
    }

    /// Flushes every volume and the state file (on shutdown).
    pub fn flush_all(&self) {
        self.save_state_and_each_engine("flushing the volume", |e| e.flush());
    }

    /// Readies every volume for the next worker of a planned restart: records durable and held
    /// bytes on the volume, without waiting for the disk (the next worker shares the page
    /// cache; see `ShadowVolume::hand_over`).
    pub fn hand_over_all(&self) {
        self.save_state_and_each_engine("handing the volume over", |e| e.hand_over());
    }

    /// Saves the state file, then runs `f` on every volume's engine, logging failures as `what`.
    fn save_state_and_each_engine(&self, what: &str, f: impl Fn(&shadowcopy::ShadowVolume) -> Result<(), shadowcopy::Error>) {
        {
            let _admin = self.admin.lock();
            self.save_state();
        }
        for v in self.volumes() {
            let Some(engine) = v.system() else { continue };
            if let Err(e) = f(engine) {
                tracing::error!(volume = %v.name, error = %e, "{what} failed");
            }
        }
    }
}

/// The engine of a volume, or the error that says it has none.
fn system_of(v: &Volume) -> Result<&shadowcopy::ShadowVolume, ServiceError> {
    v.system().ok_or_else(|| ServiceError::ReadOnlyVolume(v.name.clone()))
}
