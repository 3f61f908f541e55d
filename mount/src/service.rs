//! The daemon's model: registered volumes with their engines, their shadow copies with exposed
//! names and (lazily opened) filesystem views, and every operation of the control protocol.
//!
//! Owns the mapping from protocol requests to engine calls and the lifetime of volumes and
//! copies. The FUSE frontend reads this model; the control server calls [`Service::handle`].
//! Never parses wire bytes and never answers FUSE requests itself.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use shadowcopy::fsread::{self, ByteSource, ForeignOwner, ReadOnlyFs};
use shadowcopy::protocol::{
    self, attributes, Answer, CopyView, DeleteTarget, ErrorKind, Op, RangeView, Reply, SetView, StorageInfo, VolumeInfo,
};
use shadowcopy::provider::Provider;
use shadowcopy::volume::{FileStorage, Storage};
use shadowcopy::vss::WindowsStores;
use shadowcopy::{create_set, CopyInfo, CreateOptions, DiffAreaFiles, DiffAreaOptions, EngineOptions, Event, MaxSize, ShadowVolume};
use uuid::Uuid;

use crate::state::{StateDir, VolumeRecord};

/// The hard limit on holding writes (filesystems frozen) for one set, as VSS's 10 s.
pub const HOLD_LIMIT: Duration = Duration::from_secs(10);

/// Ownership of the image file, copied onto `live` and the raw copy images.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// A registered volume.
pub struct Volume {
    pub name: String,
    /// Never reused while the daemon runs: part of FUSE node ids.
    pub slot: u32,
    pub image: PathBuf,
    pub diff_area: PathBuf,
    pub backend: Backend,
    pub owner: Owner,
    /// Copies by exposed name.
    pub copies: RwLock<BTreeMap<String, Arc<Copy>>>,
    /// Open handles on `live` (revert refuses while any is open).
    pub live_opens: AtomicUsize,
}

/// What serves a volume's bytes and copies: one provider per volume.
pub enum Backend {
    /// Read-write, through our copy-on-write engine (the system provider).
    System(ShadowVolume),
    /// Read-only: the image as it is, and the Windows shadow copies found on it (if any).
    ReadOnly { image: Arc<ImageSource>, windows: Option<WindowsStores> },
}

/// A read-only image as a byte source (block devices sized by the kernel).
pub struct ImageSource {
    storage: FileStorage,
    size: u64,
}

impl ByteSource for ImageSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.storage.read_at(buf, offset)
    }
}

impl Volume {
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::System(e) => e.size(),
            Backend::ReadOnly { image, .. } => image.size,
        }
    }

    /// The engine, for operations only the system provider has (create, export, revert, …).
    pub fn system(&self) -> Option<&ShadowVolume> {
        match &self.backend {
            Backend::System(e) => Some(e),
            Backend::ReadOnly { .. } => None,
        }
    }

    /// The provider of this volume's copies, if it has one.
    pub fn provider(&self) -> Option<&dyn Provider> {
        match &self.backend {
            Backend::System(e) => Some(e),
            Backend::ReadOnly { windows, .. } => windows.as_ref().map(|w| w as &dyn Provider),
        }
    }

    pub fn read_only(&self) -> bool {
        matches!(self.backend, Backend::ReadOnly { .. })
    }

    /// Reads the live volume.
    pub fn read_live(&self, buf: &mut [u8], offset: u64) -> Result<(), shadowcopy::Error> {
        match &self.backend {
            Backend::System(e) => e.read_at(buf, offset),
            Backend::ReadOnly { image, .. } => {
                image.storage.read_at(buf, offset).map_err(|source| shadowcopy::Error::VolumeIo { what: "reading the volume", source })
            }
        }
    }

    /// Reads a copy's image.
    pub fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), shadowcopy::Error> {
        match self.provider() {
            Some(p) => p.read_copy(id, buf, offset),
            None => Err(shadowcopy::Error::NoSuchCopy(id)),
        }
    }

    fn copies_now(&self) -> Vec<CopyInfo> {
        self.provider().map(|p| p.copies()).unwrap_or_default()
    }
}

/// A shadow copy as the daemon serves it.
pub struct Copy {
    pub slot: u32,
    pub name: String,
    pub info: CopyInfo,
    pub volume: Weak<Volume>,
    /// The filesystem inside, once looked at (`None` inside: raw only).
    tree: OnceLock<Option<Arc<dyn ReadOnlyFs>>>,
}

impl Copy {
    /// The filesystem in the copy, detected on first use. A damaged or unknown filesystem gives
    /// `None` (the raw image stays readable) and a log line.
    pub fn tree(&self, fs_owner: ForeignOwner) -> Option<Arc<dyn ReadOnlyFs>> {
        self.tree
            .get_or_init(|| {
                let volume = self.volume.upgrade()?;
                let source: Arc<dyn ByteSource> = Arc::new(CopySource { volume: Arc::downgrade(&volume), id: self.info.id, size: volume.size() });
                match fsread::open(source, fs_owner) {
                    Ok(Some(fs)) => {
                        tracing::info!(copy = %self.info.id, name = %self.name, filesystem = fs.kind(), "filesystem found in the shadow copy");
                        Some(fs)
                    }
                    Ok(None) => {
                        tracing::info!(copy = %self.info.id, name = %self.name, "no known filesystem in the shadow copy: only its raw image is served");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(copy = %self.info.id, name = %self.name, error = %e, "the filesystem in the shadow copy cannot be read: only its raw image is served");
                        None
                    }
                }
            })
            .clone()
    }

    /// Whether the mount serves it (a copy that cannot be read is only listed, with its error).
    pub fn exposed(&self) -> bool {
        self.info.failed.is_none()
    }

    /// Whether its tree is listed in the volume's folder (client-accessible contexts, and
    /// Windows copies); other exposed copies are reachable by their path only.
    pub fn listed(&self, windows: bool) -> bool {
        self.exposed() && (windows || self.info.attributes & attributes::CLIENT_ACCESSIBLE != 0)
    }

    /// The filesystem's kind if it was already looked at.
    pub fn tree_kind(&self) -> Option<String> {
        match self.tree.get() {
            Some(Some(fs)) => Some(fs.kind().to_string()),
            Some(None) => Some("raw".into()),
            None => None,
        }
    }
}

/// The bytes of one copy, for the filesystem readers.
struct CopySource {
    volume: Weak<Volume>,
    id: Uuid,
    size: u64,
}

impl ByteSource for CopySource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let v = self.volume.upgrade().ok_or_else(|| std::io::Error::other("the volume was removed"))?;
        v.read_copy(self.id, buf, offset).map_err(std::io::Error::other)
    }
}

/// A set taken under flush and hold: the set, how long filesystems were frozen, and which.
struct Held {
    set: shadowcopy::SetInfo,
    held: Duration,
    mount_points: Vec<PathBuf>,
}

/// Settings the daemon was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mount: PathBuf,
    pub cache_chunks: usize,
    pub fs_owner: ForeignOwner,
}

/// Something leaving the mount: the frontend drops its entries from the kernel's caches.
#[derive(Debug, Clone)]
pub enum Departure {
    Copy { volume_slot: u32, name: String },
    Volume { name: String },
}

/// Called with what left the mount, to drop it from the kernel's caches.
pub type DepartureHook = Box<dyn Fn(&[Departure]) + Send + Sync>;

pub struct Service {
    pub settings: Settings,
    state: StateDir,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    by_slot: RwLock<HashMap<u32, Arc<Volume>>>,
    copies_by_slot: RwLock<HashMap<u32, Arc<Copy>>>,
    next_slot: AtomicU32,
    /// Registered volumes that could not be opened at start: kept registered, shown in logs.
    unopened: Mutex<Vec<VolumeRecord>>,
    /// Serialises changes to the registry and the state file.
    admin: Mutex<()>,
    /// Set when exposed names changed and the state file should be rewritten (by the saver
    /// thread, off the path of `create`: names can be rebuilt from the copies if lost).
    names_dirty: (Mutex<bool>, parking_lot::Condvar),
    /// Told about copies that leave (deleted, or gone for space).
    departures: Mutex<Vec<Departure>>,
    pub notify: OnceLock<DepartureHook>,
    pub writers: shadowcopy::coordinator::Writers,
    /// Backup sessions of sets taken with writers (until BackupShutdown).
    sessions: shadowcopy::coordinator::Sessions,
    /// Copies exposed outside the mount.
    pub exposures: crate::expose::Exposures,
}

type OpResult = Result<Answer, (ErrorKind, String)>;

fn failed(e: impl std::fmt::Display) -> (ErrorKind, String) {
    (ErrorKind::Failed, e.to_string())
}

fn engine_error(e: shadowcopy::Error) -> (ErrorKind, String) {
    let kind = match e {
        shadowcopy::Error::NoSuchCopy(_) => ErrorKind::NotFound,
        shadowcopy::Error::Config(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Failed,
    };
    (kind, e.to_string())
}

/// Volume names become folder names: keep them plain.
fn check_name(name: &str) -> Result<(), (ErrorKind, String)> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '@', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err((
            ErrorKind::BadRequest,
            format!("invalid volume name `{name}`: use 1-64 letters, digits, `.`, `_`, `-`, not starting with `.`, `@` or `-`"),
        ))
    }
}

impl Service {
    /// Reopens every registered volume of the state directory. A volume that cannot be opened
    /// is logged and left registered (it comes back once fixed), never a reason not to start.
    pub fn start(state: StateDir, settings: Settings) -> Service {
        let svc = Service {
            settings,
            state,
            volumes: RwLock::new(BTreeMap::new()),
            by_slot: RwLock::new(HashMap::new()),
            copies_by_slot: RwLock::new(HashMap::new()),
            next_slot: AtomicU32::new(1),
            unopened: Mutex::new(Vec::new()),
            admin: Mutex::new(()),
            names_dirty: (Mutex::new(false), parking_lot::Condvar::new()),
            departures: Mutex::new(Vec::new()),
            notify: OnceLock::new(),
            writers: shadowcopy::coordinator::Writers::default(),
            sessions: shadowcopy::coordinator::Sessions::default(),
            exposures: crate::expose::Exposures::default(),
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
                    tracing::error!(volume = %rec.name, error = %format!("{e:#}"), "cannot reopen the volume; fix the cause and restart the daemon");
                    svc.unopened.lock().push(rec);
                }
            }
        }
        svc.save_state();
        svc
    }

    fn slot(&self) -> u32 {
        self.next_slot.fetch_add(1, Ordering::Relaxed)
    }

    fn engine_options(&self) -> EngineOptions {
        EngineOptions { cache_chunks: self.settings.cache_chunks, ..EngineOptions::default() }
    }

    /// Opens a volume: its engine (creating the diff area with `create`), or for a read-only
    /// volume the image and the Windows stores on it; then builds its copies.
    fn open_volume(&self, rec: &VolumeRecord, create: Option<DiffAreaOptions>) -> anyhow::Result<Arc<Volume>> {
        let storage = shadowcopy::volume::open_image(&rec.image, !rec.read_only)?;
        let md = std::fs::metadata(&rec.image)?;
        let backend = if rec.read_only {
            let size = storage.len()?;
            let image = Arc::new(ImageSource { storage, size });
            let windows = WindowsStores::open(Arc::clone(&image) as Arc<dyn ByteSource>, self.settings.cache_chunks)
                .with_context(|| format!("looking for Windows shadow copies on {}", rec.image.display()))?;
            if let Some(w) = &windows {
                if let Some(reason) = &w.catalog_damage {
                    tracing::error!(volume = %rec.name, %reason, "the Windows shadow copy catalog is damaged: no Windows copy can be read");
                }
                tracing::info!(volume = %rec.name, stores = w.copies().len(), "Windows shadow copies found");
            }
            Backend::ReadOnly { image, windows }
        } else {
            let storage = Arc::new(storage);
            let engine = match create {
                Some(options) => {
                    ShadowVolume::create(storage, DiffAreaFiles::in_dir(&rec.diff_area, true)?, options, self.engine_options())
                }
                None => ShadowVolume::open(storage, DiffAreaFiles::in_dir(&rec.diff_area, false)?, self.engine_options()),
            }
            .with_context(|| format!("opening the diff area {} of {}", rec.diff_area.display(), rec.image.display()))?;
            for e in engine.take_events() {
                tracing::warn!(volume = %rec.name, event = ?e, "found while opening the diff area");
            }
            Backend::System(engine)
        };
        let vol = Arc::new(Volume {
            name: rec.name.clone(),
            slot: self.slot(),
            image: rec.image.clone(),
            diff_area: rec.diff_area.clone(),
            backend,
            owner: Owner { uid: md.uid(), gid: md.gid(), mode: md.mode() },
            copies: RwLock::new(BTreeMap::new()),
            live_opens: AtomicUsize::new(0),
        });
        let mut copies = vol.copies.write();
        for info in vol.copies_now() {
            let name = match rec.exposed.get(&info.id) {
                Some(n) if !copies.contains_key(n) => n.clone(),
                _ => unique_name(&copies, &info),
            };
            copies.insert(
                name.clone(),
                Arc::new(Copy { slot: self.slot(), name, info, volume: Arc::downgrade(&vol), tree: OnceLock::new() }),
            );
        }
        drop(copies);
        Ok(vol)
    }

    fn insert_volume(&self, v: Arc<Volume>) {
        let mut slots = self.copies_by_slot.write();
        for c in v.copies.read().values() {
            slots.insert(c.slot, Arc::clone(c));
        }
        self.by_slot.write().insert(v.slot, Arc::clone(&v));
        self.volumes.write().insert(v.name.clone(), v);
    }

    /// Asks the saver thread to rewrite the state file soon (exposed names changed).
    fn save_names_later(&self) {
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

    fn save_state(&self) {
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
            })
            .collect();
        // Volumes that failed to open stay registered.
        let mut all = self.unopened.lock().clone();
        all.extend(records);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(e) = self.state.save(&all) {
            tracing::error!(error = %format!("{e:#}"), "saving the daemon state failed");
        }
    }

    // ---- lookups for the frontend ----

    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes.read().values().cloned().collect()
    }

    pub fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes.read().get(name).cloned()
    }

    pub fn volume_by_slot(&self, slot: u32) -> Option<Arc<Volume>> {
        self.by_slot.read().get(&slot).cloned()
    }

    pub fn copy_by_slot(&self, slot: u32) -> Option<Arc<Copy>> {
        self.copies_by_slot.read().get(&slot).cloned()
    }

    fn find_copy(&self, id: Uuid) -> Option<(Arc<Volume>, Arc<Copy>)> {
        for v in self.volumes.read().values() {
            if let Some(c) = v.copies.read().values().find(|c| c.info.id == id) {
                return Some((Arc::clone(v), Arc::clone(c)));
            }
        }
        None
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
                        tracing::warn!(volume = %v.name, copy = %id, ?reason, "shadow copy deleted by the engine");
                        changed |= self.forget_copy(&v, id);
                    }
                    Event::CopyFailed { id, reason } => {
                        tracing::error!(volume = %v.name, copy = %id, %reason, "shadow copy failed");
                    }
                }
            }
        }
        if changed {
            self.save_names_later();
        }
        self.flush_departures();
    }

    /// Drops a copy from the model; true if it was there.
    fn forget_copy(&self, v: &Volume, id: Uuid) -> bool {
        let mut copies = v.copies.write();
        let Some(name) = copies.iter().find(|(_, c)| c.info.id == id).map(|(n, _)| n.clone()) else { return false };
        let c = copies.remove(&name).expect("found above");
        self.copies_by_slot.write().remove(&c.slot);
        self.departures.lock().push(Departure::Copy { volume_slot: v.slot, name });
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
    pub fn handle(
        &self,
        op: Op,
        progress: &mut dyn FnMut(u64, u64),
        stage: &mut dyn FnMut(&str),
        requester_alive: &dyn Fn() -> bool,
    ) -> Reply {
        self.poll_events();
        let r = match op {
            Op::Status => Ok(Answer::Status(protocol::StatusInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: protocol::VERSION,
                mount: self.settings.mount.display().to_string(),
                state_dir: self.state.path().display().to_string(),
                volumes: self.volumes.read().len(),
            })),
            Op::VolumeAdd { name, image, diff_area, max_size, chunk_size, read_only } => {
                self.volume_add(name, image, diff_area, max_size, chunk_size, read_only)
            }
            Op::VolumeList => Ok(Answer::Volumes(self.volumes().iter().map(|v| self.volume_info(v)).collect())),
            Op::VolumeRemove { name } => self.volume_remove(&name),
            Op::Create(req) => self.create(&req, stage, requester_alive),
            Op::BackupComplete { set_id } => self.backup_complete(set_id),
            Op::Writers => Ok(Answer::Writers(self.writers.views())),
            // Handled by the control server, which owns the writer's connection.
            Op::WriterRegister(_) | Op::WriterAnswer { .. } => {
                Err((ErrorKind::BadRequest, "writer messages are only valid on a writer's own connection".into()))
            }
            Op::List { volume } => self.list(volume.as_deref()),
            Op::Delete { target } => self.delete(target),
            Op::StorageList => Ok(Answer::Storage(self.volumes().iter().filter_map(|v| storage_info(v)).collect())),
            Op::StorageResize { volume, max_size } => self.resize(&volume, &max_size),
            Op::Export { id, path } => self.export(id, &path, progress),
            Op::Revert { id } => self.revert(id, progress),
            Op::Diff { id, to } => self.diff(id, to),
            Op::Expose { id, at, device } => self.expose(id, at.as_deref(), device),
            Op::Unexpose { path } => {
                let _admin = self.admin.lock();
                self.exposures
                    .undo(&path)
                    .map(|e| Answer::Done(format!("shadow copy {} is no longer exposed at {path}", e.copy)))
                    .map_err(|e| (ErrorKind::Failed, e))
            }
        };
        self.flush_departures();
        match r {
            Ok(a) => Reply::Ok(a),
            Err((kind, message)) => Reply::error(kind, message),
        }
    }

    fn live_path(&self, v: &Volume) -> PathBuf {
        self.settings.mount.join(&v.name).join("live")
    }

    fn volume_info(&self, v: &Volume) -> VolumeInfo {
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
        }
    }

    fn copy_view(&self, v: &Volume, c: &Copy) -> CopyView {
        CopyView {
            id: c.info.id,
            set_id: c.info.set_id,
            volume: v.name.clone(),
            created_unix: c.info.created.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            exposed_name: c.name.clone(),
            persistent: c.info.persistent,
            context: if v.system().is_some() { attributes::context(c.info.attributes).map(|c| c.as_str().to_string()) } else { None },
            attributes: if v.system().is_some() {
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
        }
    }

    fn volume_add(
        &self,
        name: String,
        image: String,
        diff_area: Option<String>,
        max_size: Option<String>,
        chunk_size: Option<u64>,
        read_only: bool,
    ) -> OpResult {
        check_name(&name)?;
        let _admin = self.admin.lock();
        if self.volumes.read().contains_key(&name) || self.unopened.lock().iter().any(|r| r.name == name) {
            return Err((ErrorKind::AlreadyExists, format!("a volume named `{name}` is already registered")));
        }
        let image =
            PathBuf::from(&image).canonicalize().map_err(|e| (ErrorKind::NotFound, format!("the image {image} cannot be opened: {e}")))?;
        if image.starts_with(&self.settings.mount) {
            return Err((ErrorKind::BadRequest, "the image lies inside the daemon's own mount".into()));
        }
        if let Some(other) = self.volumes.read().values().find(|v| v.image == image) {
            return Err((ErrorKind::AlreadyExists, format!("{} is already registered as volume `{}`", image.display(), other.name)));
        }
        if read_only && (diff_area.is_some() || max_size.is_some() || chunk_size.is_some()) {
            return Err((
                ErrorKind::BadRequest,
                "a read-only volume has no diff area: drop --diff-area, --max-size and --chunk-size".into(),
            ));
        }
        let diff_area = match diff_area {
            _ if read_only => PathBuf::new(),
            Some(d) => PathBuf::from(d),
            None => self.state.default_diff_area(&name),
        };
        if diff_area.starts_with(&self.settings.mount) {
            return Err((
                ErrorKind::BadRequest,
                "the diff area must not lie inside the daemon's mount (its writes would wait on themselves)".into(),
            ));
        }
        if !read_only && diff_area.join("journal.0").exists() {
            return Err((
                ErrorKind::AlreadyExists,
                format!("{} already holds a diff area; choose another --diff-area or remove it", diff_area.display()),
            ));
        }
        let mut options = DiffAreaOptions::default();
        if let Some(m) = max_size {
            options.max_size = MaxSize::parse(&m).map_err(|e| (ErrorKind::BadRequest, e))?;
        }
        if let Some(c) = chunk_size {
            options.chunk_size = u32::try_from(c).map_err(|_| (ErrorKind::BadRequest, "chunk size too large".to_string()))?;
        }
        let rec = VolumeRecord { name: name.clone(), image, diff_area, read_only, exposed: BTreeMap::new() };
        let v = self.open_volume(&rec, Some(options)).map_err(|e| failed(format!("{e:#}")))?;
        self.insert_volume(Arc::clone(&v));
        self.save_state();
        tracing::info!(volume = %name, image = %v.image.display(), "volume added");
        Ok(Answer::Volume(self.volume_info(&v)))
    }

    fn volume_remove(&self, name: &str) -> OpResult {
        let _admin = self.admin.lock();
        {
            let mut unopened = self.unopened.lock();
            if let Some(i) = unopened.iter().position(|r| r.name == name) {
                unopened.remove(i);
                drop(unopened);
                self.save_state();
                return Ok(Answer::Done(format!(
                    "volume `{name}` (which could not be opened) unregistered; its diff area was left in place"
                )));
            }
        }
        let v =
            self.volume(name).ok_or_else(|| (ErrorKind::NotFound, format!("no volume named `{name}` (see `shadowcopy volume list`)")))?;
        if v.live_opens.load(Ordering::Acquire) > 0 {
            return Err((
                ErrorKind::Busy,
                format!("{} is open (a loop device or program uses it); detach and close it first", self.live_path(&v).display()),
            ));
        }
        let exposed: Vec<String> = v.copies.read().values().flat_map(|c| self.exposures.of(c.info.id)).collect();
        if !exposed.is_empty() {
            return Err((
                ErrorKind::Busy,
                format!("copies of `{name}` are exposed at {}; undo that first (`shadowcopy unexpose PATH`)", exposed.join(", ")),
            ));
        }
        self.volumes.write().remove(name);
        self.by_slot.write().remove(&v.slot);
        {
            let mut slots = self.copies_by_slot.write();
            for c in v.copies.read().values() {
                slots.remove(&c.slot);
                self.departures.lock().push(Departure::Copy { volume_slot: v.slot, name: c.name.clone() });
            }
        }
        self.departures.lock().push(Departure::Volume { name: name.to_string() });
        self.save_state();
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

    fn create(&self, req: &protocol::CreateRequest, stage: &mut dyn FnMut(&str), requester_alive: &dyn Fn() -> bool) -> OpResult {
        let names = &req.volumes;
        let volatile = !req.is_persistent();
        let context = req.context;
        if names.is_empty() {
            return Err((ErrorKind::BadRequest, "name at least one volume".into()));
        }
        let _admin = self.admin.lock();
        let mut vols = Vec::new();
        for n in names {
            let v = self.volume(n).ok_or_else(|| (ErrorKind::NotFound, format!("no volume named `{n}` (see `shadowcopy volume list`)")))?;
            if vols.iter().any(|x: &Arc<Volume>| x.name == v.name) {
                return Err((ErrorKind::BadRequest, format!("volume `{n}` is named twice")));
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
            return Err((
                ErrorKind::BadRequest,
                format!(
                    "context `{}` takes no writers; choose a context with writers (backup, app_rollback, client_accessible_writers)",
                    context.as_str()
                ),
            ));
        };
        let chosen = self.writers.choose(names, selection).map_err(|e| (ErrorKind::NotFound, e))?;
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
        let hold = || -> Result<Held, (ErrorKind, String)> {
            let filesystems = shadowcopy::hold::filesystems_on(&lives).map_err(failed)?;
            let frozen = shadowcopy::hold::freeze(&filesystems, HOLD_LIMIT).map_err(|e| match e {
                shadowcopy::hold::HoldError::FreezeTimeout { .. } => (ErrorKind::Timeout, e.to_string()),
                _ => failed(e),
            })?;
            let attrs = if filesystems.is_empty() { attrs } else { attrs | attributes::FS_FROZEN };
            let set = create_set(&engines, CreateOptions { volatile, attributes: attrs });
            let mount_points = frozen.mount_points.clone();
            let (held, expired) = frozen.release();
            let set = set.map_err(engine_error)?;
            if expired {
                for (e, c) in engines.iter().zip(&set.copies) {
                    let _ = e.delete(c.id);
                }
                return Err((
                    ErrorKind::Timeout,
                    format!("writes were held longer than the {HOLD_LIMIT:?} limit; the set was aborted and everything thawed"),
                ));
            }
            Ok(Held { set, held, mount_points })
        };
        let sequence = shadowcopy::coordinator::Sequence {
            writers: &chosen.writers,
            volumes: names,
            limits: shadowcopy::coordinator::Limits::VSS,
            defer_backup_complete: req.defer_backup_complete,
        };
        let taken = shadowcopy::coordinator::run_set(
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
        )?;
        let Held { set, held, mount_points } = taken.result;
        if !chosen.writers.is_empty() {
            self.sessions.open(taken.set_id, chosen.writers.clone(), names.clone(), taken.copy_ids, !req.defer_backup_complete);
        }
        let mut views = Vec::new();
        for (v, info) in vols.iter().zip(set.copies) {
            let mut copies = v.copies.write();
            let name = unique_name(&copies, &info);
            let c = Arc::new(Copy { slot: self.slot(), name: name.clone(), info, volume: Arc::downgrade(v), tree: OnceLock::new() });
            copies.insert(name, Arc::clone(&c));
            drop(copies);
            self.copies_by_slot.write().insert(c.slot, Arc::clone(&c));
            views.push(self.copy_view(v, &c));
        }
        self.save_names_later();
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

    /// The copies of set `set_id`, with their volumes.
    fn set_copies(&self, set_id: Uuid) -> Vec<(Arc<Volume>, Arc<Copy>)> {
        self.volumes()
            .into_iter()
            .flat_map(|v| {
                v.copies.read().values().filter(|c| c.info.set_id == set_id).map(|c| (Arc::clone(&v), Arc::clone(c))).collect::<Vec<_>>()
            })
            .collect()
    }

    fn backup_complete(&self, set_id: Uuid) -> OpResult {
        if self.set_copies(set_id).is_empty() {
            return Err((ErrorKind::NotFound, format!("no shadow copy set {set_id} (see `shadowcopy list`)")));
        }
        match self.sessions.backup_complete(set_id) {
            Ok(m) => Ok(Answer::Done(m)),
            Err(shadowcopy::coordinator::NoSession) => {
                Ok(Answer::Done(format!("set {set_id} has no writers waiting for BackupComplete; nothing to tell")))
            }
        }
    }

    /// The requester that created `sets` disconnected: auto-release sets are deleted, and the
    /// sets' backup sessions learn the requester is gone.
    pub fn requester_gone(&self, sets: &[Uuid]) {
        for &set_id in sets {
            let auto_release = self.set_copies(set_id).iter().any(|(_, c)| c.info.attributes & attributes::AUTO_RELEASE != 0);
            if auto_release {
                match self.delete(DeleteTarget::Set(set_id)) {
                    Ok(_) => tracing::info!(set = %set_id, "auto-release set released: its requester disconnected"),
                    Err((_, e)) => tracing::warn!(set = %set_id, error = %e, "releasing an auto-release set failed"),
                }
                self.flush_departures();
            }
            self.sessions.requester_gone(set_id);
        }
    }

    fn list(&self, volume: Option<&str>) -> OpResult {
        let vols = match volume {
            Some(n) => vec![self.volume(n).ok_or_else(|| (ErrorKind::NotFound, format!("no volume named `{n}`")))?],
            None => self.volumes(),
        };
        let mut out = Vec::new();
        for v in &vols {
            let mut copies: Vec<Arc<Copy>> = v.copies.read().values().cloned().collect();
            copies.sort_by_key(|c| c.info.epoch);
            out.extend(copies.iter().map(|c| self.copy_view(v, c)));
        }
        Ok(Answer::Copies(out))
    }

    fn delete(&self, target: DeleteTarget) -> OpResult {
        let _admin = self.admin.lock();
        let victims: Vec<(Arc<Volume>, Arc<Copy>)> = match &target {
            DeleteTarget::Id(id) => {
                vec![self.find_copy(*id).ok_or_else(|| (ErrorKind::NotFound, format!("no shadow copy {id} (see `shadowcopy list`)")))?]
            }
            DeleteTarget::Set(set) => {
                let v = self.set_copies(*set);
                if v.is_empty() {
                    return Err((ErrorKind::NotFound, format!("no shadow copy set {set}")));
                }
                v
            }
            DeleteTarget::Oldest(name) | DeleteTarget::All(name) => {
                let v = self.volume(name).ok_or_else(|| (ErrorKind::NotFound, format!("no volume named `{name}`")))?;
                let mut copies: Vec<Arc<Copy>> = v.copies.read().values().cloned().collect();
                copies.sort_by_key(|c| c.info.epoch);
                if matches!(target, DeleteTarget::Oldest(_)) {
                    copies.truncate(1);
                }
                if copies.is_empty() {
                    return Err((ErrorKind::NotFound, format!("volume `{name}` has no shadow copies")));
                }
                copies.into_iter().map(|c| (Arc::clone(&v), c)).collect()
            }
        };
        if let Some((id, at)) = victims.iter().map(|(_, c)| (c.info.id, self.exposures.of(c.info.id))).find(|(_, at)| !at.is_empty()) {
            return Err((
                ErrorKind::Busy,
                format!("shadow copy {id} is exposed at {}; undo that first (`shadowcopy unexpose PATH`)", at.join(", ")),
            ));
        }
        let mut views = Vec::new();
        for (v, c) in &victims {
            views.push(self.copy_view(v, c));
            let provider = v.provider().ok_or_else(|| (ErrorKind::NotFound, format!("volume `{}` has no shadow copies", v.name)))?;
            match provider.delete_copy(c.info.id) {
                Ok(_) | Err(shadowcopy::Error::NoSuchCopy(_)) => {}
                Err(e) => {
                    self.save_names_later();
                    return Err(engine_error(e));
                }
            }
            // The engine reports the deletion as an event too; drop it from the model now.
            if let Some(e) = v.system() {
                let _ = e.take_events();
            }
            self.forget_copy(v, c.info.id);
            self.sessions.released(c.info.set_id);
        }
        self.save_names_later();
        Ok(Answer::Copies(views))
    }

    fn resize(&self, name: &str, max: &str) -> OpResult {
        let _admin = self.admin.lock();
        let v = self.volume(name).ok_or_else(|| (ErrorKind::NotFound, format!("no volume named `{name}`")))?;
        let max = MaxSize::parse(max).map_err(|e| (ErrorKind::BadRequest, e))?;
        system_of(&v)?.resize(max).map_err(engine_error)?;
        drop(_admin);
        self.poll_events();
        Ok(Answer::Storage(storage_info(&v).into_iter().collect()))
    }

    fn export(&self, id: Uuid, path: &str, progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        let (v, _) = self.find_copy(id).ok_or_else(|| (ErrorKind::NotFound, format!("no shadow copy {id}")))?;
        let dest = PathBuf::from(path);
        if dest.exists() {
            return Err((ErrorKind::AlreadyExists, format!("{path} exists; choose a new file name")));
        }
        // Any provider's copy can be exported (Windows copies too): it is a read of the copy.
        let provider = v.provider().ok_or_else(|| (ErrorKind::NotFound, format!("volume `{}` has no shadow copies", v.name)))?;
        shadowcopy::provider::export_copy(provider, id, &dest, progress).map_err(engine_error)?;
        Ok(Answer::Done(format!("exported shadow copy {id} to {path}")))
    }

    fn revert(&self, id: Uuid, progress: &mut dyn FnMut(u64, u64)) -> OpResult {
        let _admin = self.admin.lock();
        let (v, copy) = self.find_copy(id).ok_or_else(|| (ErrorKind::NotFound, format!("no shadow copy {id}")))?;
        if v.live_opens.load(Ordering::Acquire) > 0 {
            return Err((
                ErrorKind::Busy,
                format!("{} is open: unmount and detach what uses it (umount, losetup -d) before reverting", self.live_path(&v).display()),
            ));
        }
        let engine = system_of(&v)?;
        let volumes = vec![v.name.clone()];
        let chosen = self.writers.choose(&volumes, &protocol::WriterSelection::default()).map_err(|e| (ErrorKind::NotFound, e))?;
        shadowcopy::coordinator::pre_restore(&chosen.writers, copy.info.set_id, &volumes, id).map_err(|e| (ErrorKind::Failed, e))?;
        let reverted = engine.revert(id, progress).map_err(engine_error);
        let failures = shadowcopy::coordinator::post_restore(&chosen.writers, copy.info.set_id, &volumes, id);
        reverted?;
        let mut msg = format!("volume `{}` reverted to shadow copy {id}", v.name);
        if !chosen.writers.is_empty() {
            msg += &format!("; {} writer(s) told (pre_restore, post_restore)", chosen.writers.len());
        }
        for f in failures {
            msg += &format!("; {f}");
        }
        Ok(Answer::Done(msg))
    }

    fn expose(&self, id: Uuid, at: Option<&str>, device: bool) -> OpResult {
        let _admin = self.admin.lock();
        let (v, c) = self.find_copy(id).ok_or_else(|| (ErrorKind::NotFound, format!("no shadow copy {id} (see `shadowcopy list`)")))?;
        if let Some(reason) = &c.info.failed {
            return Err((ErrorKind::Failed, format!("shadow copy {id} cannot be read: {reason}")));
        }
        let dir = self.settings.mount.join(&v.name);
        let place = match (at, device) {
            (Some(_), true) | (None, false) => {
                return Err((ErrorKind::BadRequest, "give a directory to expose the copy's files at, or ask for a device".into()))
            }
            (None, true) => self.exposures.device(id, &dir.join(".images").join(format!("{}.img", c.name))),
            (Some(at), false) => {
                let at = PathBuf::from(at);
                if at.starts_with(&self.settings.mount) {
                    return Err((ErrorKind::BadRequest, format!("{} is inside the mount; choose a directory outside it", at.display())));
                }
                if c.tree(self.settings.fs_owner).is_none() {
                    return Err((
                        ErrorKind::BadRequest,
                        format!("no filesystem was recognized in shadow copy {id}; expose it as a device instead"),
                    ));
                }
                self.exposures.folder(id, &dir.join(&c.name), &at)
            }
        }
        .map_err(|e| (ErrorKind::Failed, e))?;
        Ok(Answer::Done(format!("shadow copy {id} exposed at {}", place.path())))
    }

    fn diff(&self, id: Uuid, to: Option<Uuid>) -> OpResult {
        let (v, _) = self.find_copy(id).ok_or_else(|| (ErrorKind::NotFound, format!("no shadow copy {id}")))?;
        let ranges = system_of(&v)?.changed_ranges(id, to).map_err(engine_error)?;
        Ok(Answer::Ranges(ranges.iter().map(|r| RangeView { offset: r.offset, len: r.len }).collect()))
    }

    /// Flushes every volume and the state file (on shutdown).
    pub fn flush_all(&self) {
        {
            let _admin = self.admin.lock();
            self.save_state();
        }
        for v in self.volumes() {
            let Some(engine) = v.system() else { continue };
            if let Err(e) = engine.flush() {
                tracing::error!(volume = %v.name, error = %e, "flushing the volume failed");
            }
        }
    }
}

/// The engine of a volume, or the error that says it has none.
fn system_of(v: &Volume) -> Result<&ShadowVolume, (ErrorKind, String)> {
    v.system().ok_or_else(|| {
        (ErrorKind::BadRequest, format!("volume `{}` is read-only (it serves the shadow copies Windows left on it); shadowcopy takes, exports, reverts and diffs copies of read-write volumes only", v.name))
    })
}

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

/// The exposed name for a copy: its creation second, or, if a copy of the volume already has
/// that name, the next free second after it (names stay unique and valid `@GMT` tokens; the
/// real creation time is in `list`).
fn unique_name(existing: &BTreeMap<String, Arc<Copy>>, info: &CopyInfo) -> String {
    let mut secs = info.created.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    loop {
        let name = protocol::gmt_name(secs);
        if !existing.contains_key(&name) {
            return name;
        }
        secs += 1;
    }
}
