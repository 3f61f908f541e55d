//! The system provider: shadow copies of a live volume kept in a copy-on-write diff area.
//!
//! A [`ShadowVolume`] owns one volume and its diff area. Every live write passes through it:
//! before a chunk that the newest shadow copy still shares with the volume is overwritten, its
//! content is copied into a diff-area slot and indexed (copy-before-write). A copy reads a chunk
//! from its slot if one serves it, else from the volume through the [`ChunkCache`].
//!
//! Concurrency (see `docs/design.md`, "Concurrency"):
//! - `stripes`: per-chunk locks; a write holds its chunks' stripes exclusively from before it is
//!   ordered until its bytes are written; writes to different chunks proceed in parallel.
//! - `catalog` (RwLock): copies + index. A write is ordered against copies by one read of it
//!   (under its stripes); a set takes the catalogs of all its volumes exclusively for the O(1)
//!   instant (epoch bump). So a write is wholly before or wholly after the instant, and the hold
//!   never waits for a write's I/O. `inflight` lets a persistent copy wait for the writes ordered
//!   before it before it syncs the volume.
//! - `log` (Mutex): records waiting for the next commit.
//!
//! The lock order, and the full table of locks, is stated once, in `docs/design.md`
//! ("Concurrency"): stripes → catalog → in-flight/log → slots; `journal` is taken with none of
//! catalog/log/slots held.
//!
//! Durability (see "Crash safety"): records serving persistent copies are journaled by group
//! commits; the new content of a chunk whose record is not yet durable waits in [`Pending`].
//!
//! Never interprets the bytes it moves.

mod commit;
mod inflight;
mod ops;
mod pending;
mod provider;
mod read;
mod set;
mod stripes;
mod write;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock};
use uuid::Uuid;

use crate::cache::ChunkCache;
use crate::diffarea::base::{BaseIndex, PageCache, PageCacheStats};
use crate::diffarea::catalog::{Catalog, CopyMeta};
use crate::diffarea::format::{self, Header, Record};
use crate::diffarea::journal::Journal;
use crate::diffarea::layered::LayeredIndex;
use crate::diffarea::recovery;
use crate::diffarea::redo::RedoLog;
use crate::diffarea::slots::SlotAllocator;
use crate::error::{DiffAreaError, Error};
use crate::volume::{FileStorage, Storage};

use crate::provider::CopyInfo;
pub use ops::ChangedRange;
use pending::Pending;
pub use set::{create_set, set_hooks, CreateOptions, SetInfo, SetStep};
use stripes::Stripes;

/// The maximum size of a diff area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSize {
    /// At most this many bytes on disk (store and journal together).
    Bytes(u64),
    /// A percentage of the volume's size (the default is 10).
    PercentOfVolume(u8),
    /// No limit.
    Unbounded,
}

impl MaxSize {
    /// Parses `10%` (of the volume), `2G` (bytes, with K/M/G/T suffixes) or `unbounded`.
    pub fn parse(s: &str) -> Result<MaxSize, String> {
        if s.eq_ignore_ascii_case("unbounded") {
            return Ok(MaxSize::Unbounded);
        }
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| format!("`{s}` is not a percentage"))?;
            if !(1..=100).contains(&p) {
                return Err("a percentage must be 1..100".into());
            }
            return Ok(MaxSize::PercentOfVolume(p));
        }
        Ok(MaxSize::Bytes(crate::size::parse_size(s)?))
    }

    fn resolve(self, volume_size: u64) -> Option<u64> {
        match self {
            MaxSize::Bytes(b) => Some(b),
            MaxSize::PercentOfVolume(p) => Some(volume_size / 100 * u64::from(p)),
            MaxSize::Unbounded => None,
        }
    }
}

/// Settings fixed when a diff area is created.
#[derive(Debug, Clone, Copy)]
pub struct DiffAreaOptions {
    /// Bytes per chunk: a power of two from 4 KiB to 1 MiB (default 16 KiB, as VSS).
    pub chunk_size: u32,
    /// The most the diff area may take; past it, the oldest copies are deleted.
    pub max_size: MaxSize,
}

impl Default for DiffAreaOptions {
    fn default() -> Self {
        DiffAreaOptions { chunk_size: 16 << 10, max_size: MaxSize::PercentOfVolume(10) }
    }
}

/// Run-time settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Chunks the base-volume cache keeps.
    pub cache_chunks: usize,
    /// Bytes of held-back live data before writers commit themselves (back-pressure).
    pub pending_limit: u64,
    /// How often the background committer makes held-back data durable.
    pub commit_interval: Duration,
    /// Compact the journal when its active file passes this many bytes (default: derived from
    /// the maximum size; tests set it low to exercise compaction).
    pub journal_compact_bytes: Option<u64>,
    /// The time a copy is stamped with when it is taken. The daemon passes its own clock, so
    /// that retention and schedules can be tested with time made to pass.
    pub clock: fn() -> SystemTime,
    /// Bytes of checkpointed-index pages kept in memory (`--index-cache`).
    pub index_cache_bytes: u64,
    /// The least a redo file grows to before a checkpoint moves the held chunks to the other
    /// one (default: 8 MiB; tests set it low so that deaths land around checkpoints).
    pub redo_checkpoint_bytes: Option<u64>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_chunks: 4096,
            pending_limit: 64 << 20,
            commit_interval: Duration::from_millis(5),
            journal_compact_bytes: None,
            clock: SystemTime::now,
            index_cache_bytes: 64 << 20,
            redo_checkpoint_bytes: None,
        }
    }
}

/// The redo log's two files and the boot they were written on.
type RedoFiles = ([Arc<dyn Storage>; 2], Option<[u8; 16]>);

/// The files of a diff area. [`DiffAreaFiles::in_dir`] opens them in a directory; tests hand in
/// test doubles.
#[derive(Debug)]
pub struct DiffAreaFiles {
    /// The preserved chunks.
    pub store: Arc<dyn Storage>,
    /// The two journal files.
    pub journal: [Arc<dyn Storage>; 2],
    /// The two checkpointed-index files.
    pub index: [Arc<dyn Storage>; 2],
    /// The two redo files, and the boot they are replayed on (see [`DiffAreaFiles::with_redo`]).
    redo: Option<RedoFiles>,
    /// Held while open so that a second process cannot open the same diff area.
    lock: Option<File>,
}

impl DiffAreaFiles {
    /// Files from any storage (no inter-process lock, no redo log: held live bytes then live in
    /// memory only, which only a test that models power loss alone may want).
    pub fn new(store: Arc<dyn Storage>, journal: [Arc<dyn Storage>; 2], index: [Arc<dyn Storage>; 2]) -> Self {
        DiffAreaFiles { store, journal, index, redo: None, lock: None }
    }

    /// Adds the redo log's two files: answered live writes whose bytes are still held back are
    /// kept there, so that a death of the process loses none of them. `boot_id` is the boot
    /// they belong to ([`crate::diffarea::redo::boot_id`] for the running kernel): the log is
    /// replayed at open on the same boot only. `None` never replays.
    pub fn with_redo(mut self, files: [Arc<dyn Storage>; 2], boot_id: Option<[u8; 16]>) -> Self {
        self.redo = Some((files, boot_id));
        self
    }

    /// Opens (creating if `create`) the files in `dir` and takes its lock.
    pub fn in_dir(dir: &Path, create: bool) -> Result<Self, Error> {
        let io = |what| move |source| Error::DiffArea(DiffAreaError::Io { what, source });
        if !create && !dir.join("journal.0").exists() {
            return Err(Error::NoDiffArea(dir.display().to_string()));
        }
        if create {
            std::fs::create_dir_all(dir).map_err(io("creating the diff-area directory"))?;
        }
        let open = |name: &str, create: bool| -> Result<File, Error> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(dir.join(name))
                .map_err(io("opening a diff-area file"))
        };
        let lock = open("lock", create)?;
        lock.try_lock().map_err(|_| Error::Locked(dir.display().to_string()))?;
        let wrap =
            |f: File| -> Result<Arc<dyn Storage>, Error> { Ok(Arc::new(FileStorage::new(f).map_err(io("opening a diff-area file"))?)) };
        // The redo and index files are made when missing: a diff area from before they existed
        // has none.
        let files = DiffAreaFiles {
            store: wrap(open("store", create)?)?,
            journal: [wrap(open("journal.0", create)?)?, wrap(open("journal.1", create)?)?],
            index: [wrap(open("index.0", true)?)?, wrap(open("index.1", true)?)?],
            redo: Some(([wrap(open("redo.0", true)?)?, wrap(open("redo.1", true)?)?], crate::diffarea::redo::boot_id())),
            lock: Some(lock),
        };
        if create {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing the diff-area directory"))?;
        }
        Ok(files)
    }
}

/// What the last open of a diff area found in its redo log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedoReport {
    /// Runs of bytes replayed: writes that the previous process had answered and that were
    /// still held back when it died.
    pub replayed_writes: usize,
    /// Bytes replayed.
    pub replayed_bytes: u64,
    /// Bytes past the last good entry of a file, dropped: a torn last entry (a process killed in
    /// the middle of an append), or entries from before the file was last emptied.
    pub torn_bytes: u64,
    /// Why the log was not replayed, when it was not (written on an earlier boot, …).
    pub discarded: Option<String>,
}

/// Why a copy went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Asked for.
    Requested,
    /// The diff area was full and this was the oldest copy.
    DiffAreaFull,
}

/// Something the engine did on its own that the daemon should report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A copy was deleted by the engine (for space, or on request).
    CopyDeleted {
        /// The copy.
        id: Uuid,
        /// Why.
        reason: DeleteReason,
    },
    /// A copy was found damaged and can no longer be read.
    CopyFailed {
        /// The copy.
        id: Uuid,
        /// Why it cannot be read.
        reason: String,
    },
}

impl CopyInfo {
    pub(crate) fn from_meta(m: &CopyMeta) -> Self {
        CopyInfo {
            id: Uuid::from_bytes(m.record.id),
            set_id: Uuid::from_bytes(m.record.set_id),
            epoch: m.record.epoch,
            created: UNIX_EPOCH + Duration::from_nanos(m.record.created_ns),
            persistent: m.persistent,
            attributes: m.record.attributes,
            set_size: m.record.set_size,
            failed: m.failed.clone(),
            stale: m.stale.clone(),
        }
    }
}

/// Space used by a diff area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of slots in use plus the journal.
    pub used_bytes: u64,
    /// Bytes the diff-area files take (store file length plus journal).
    pub allocated_bytes: u64,
    /// The maximum, if bounded.
    pub max_bytes: Option<u64>,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Copies on the volume.
    pub copies: usize,
    /// Chunks preserved in the store (records in the index).
    pub preserved_chunks: usize,
    /// Chunks in use in the store, and how many it may hold (`None`: unbounded) before the
    /// oldest copy is deleted to make room (the journal's share of the maximum is apart).
    pub slots_in_use: u32,
    /// See `slots_in_use`.
    pub slot_capacity: Option<u32>,
    /// Heap bytes of the index kept in memory besides its page cache: the records added since
    /// the last checkpoint, the checkpoint's fence keys, the free-slot bitmap.
    pub index_bytes: usize,
    /// Bytes of the checkpointed index file.
    pub index_disk_bytes: u64,
    /// Records in the checkpoint (the rest are in memory, and in the journal's tail).
    pub checkpointed_chunks: u64,
    /// The checkpoint's page cache.
    pub index_cache: PageCacheStats,
    /// How long the last open took (journal replay and recovery), if this handle was opened.
    pub open_duration: Option<Duration>,
}

/// Records waiting for the next commit.
#[derive(Debug, Default)]
struct LogBuffer {
    payload: Vec<u8>,
    /// The number of the commit that will carry `payload`.
    commit_no: u64,
}

struct Inner {
    volume: Arc<dyn Storage>,
    store: Arc<dyn Storage>,
    volume_size: u64,
    chunk_size: u32,
    chunk_shift: u32,
    diff_area_id: Uuid,
    options: EngineOptions,
    inflight: inflight::InFlight,
    stripes: Stripes,
    catalog: RwLock<Catalog>,
    log: Mutex<LogBuffer>,
    slots: Mutex<SlotAllocator>,
    journal: Mutex<Journal>,
    index_files: [Arc<dyn Storage>; 2],
    /// The index file the journal's checkpoint names (the next merge writes the other).
    index_file: AtomicU8,
    page_cache: Arc<PageCache>,
    open_duration: Mutex<Option<Duration>>,
    pending: Pending,
    cache: ChunkCache,
    max_size: Mutex<Option<u64>>,
    events: Mutex<Vec<Event>>,
    redo_report: Mutex<RedoReport>,
    /// Set once the diff area failed: copies are gone, live writes go straight to the volume.
    failure: Mutex<Option<String>>,
    shutdown: AtomicBool,
    wake: (Mutex<()>, Condvar),
    _lock: Option<File>,
}

/// A volume with its diff area: live I/O and shadow copies.
pub struct ShadowVolume {
    inner: Arc<Inner>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ShadowVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowVolume").field("diff_area", &self.inner.diff_area_id).field("size", &self.inner.volume_size).finish()
    }
}

/// Bytes kept aside for the journal and the checkpointed index in a bounded diff area of `max`
/// bytes: the journal's budget (32 bytes a slot) and two index files (16 bytes a slot each,
/// both present during a merge).
fn journal_reserve(max: u64, chunk: u32) -> u64 {
    (384 << 10) + (max / u64::from(chunk)) * 64
}

/// Slots a diff area of `max` bytes may use.
fn slot_capacity(max: Option<u64>, chunk: u32) -> Result<Option<u32>, Error> {
    let Some(max) = max else { return Ok(None) };
    let reserve = journal_reserve(max, chunk);
    let least = reserve + 8 * u64::from(chunk);
    if max < least {
        return Err(Error::Config(format!(
            "a diff area of {} is too small for {} chunks; allow at least {}",
            crate::size::format_size(max),
            crate::size::format_size(chunk.into()),
            crate::size::format_size(least)
        )));
    }
    Ok(Some(u32::try_from((max - reserve) / u64::from(chunk)).unwrap_or(u32::MAX)))
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl ShadowVolume {
    /// Creates a new, empty diff area for `volume` and opens it.
    pub fn create(volume: Arc<dyn Storage>, files: DiffAreaFiles, options: DiffAreaOptions, engine: EngineOptions) -> Result<Self, Error> {
        if !format::valid_chunk_size(options.chunk_size) {
            return Err(Error::Config(format!("chunk size {} is not a power of two from 4 KiB to 1 MiB", options.chunk_size)));
        }
        let volume_size = volume.len().map_err(Error::volume("reading the volume size"))?;
        if volume_size == 0 {
            return Err(Error::Config("the volume is empty".into()));
        }
        let max_size = options.max_size.resolve(volume_size);
        let capacity = slot_capacity(max_size, options.chunk_size)?;
        let header = Header {
            version: format::FORMAT_VERSION,
            generation: 1,
            diff_area_id: *Uuid::new_v4().as_bytes(),
            chunk_size: options.chunk_size,
            volume_size,
            created_ns: now_ns(),
        };
        files.store.set_len(0).map_err(|source| DiffAreaError::Io { what: "creating the store", source })?;
        let journal = Journal::create(files.journal.clone(), header)?;
        let redo = match &files.redo {
            Some((redo_files, boot)) => Some(
                RedoLog::create(redo_files.clone(), boot.unwrap_or([0; 16]), header.diff_area_id)
                    .map_err(|source| DiffAreaError::Io { what: "creating the redo log", source })?,
            ),
            None => None,
        };
        let page_cache = Arc::new(PageCache::new(engine.index_cache_bytes));
        let catalog = Catalog::from_parts(Default::default(), LayeredIndex::over(BaseIndex::empty(Arc::clone(&page_cache))), 1);
        for f in &files.index {
            f.set_len(0).map_err(|source| DiffAreaError::Io { what: "creating the index", source })?;
        }
        let vol = Self::assemble(volume, files, redo, journal, catalog, (SlotAllocator::empty(capacity), 1, page_cache), max_size, engine);
        vol.inner.push_record(&Record::Config { max_size: max_size.unwrap_or(u64::MAX) });
        vol.inner.commit()?;
        vol.inner.pending.allow_checkpoints();
        tracing::info!(diff_area = %vol.inner.diff_area_id, chunk_size = options.chunk_size, max_size = ?max_size, "diff area created");
        Ok(vol)
    }

    /// Creates a diff area in directory `dir` for the image or block device at `volume`, which
    /// is opened exclusively ([`crate::volume::open_image`]), as the daemon opens it.
    pub fn create_at(volume: &Path, dir: &Path, options: DiffAreaOptions, engine: EngineOptions) -> Result<Self, Error> {
        // The diff area's lock first: a second opener is told the diff area is in use.
        let files = DiffAreaFiles::in_dir(dir, true)?;
        let vol = crate::volume::open_image(volume, true)?;
        Self::create(Arc::new(vol), files, options, engine)
    }

    /// Opens the diff area in `dir` for the image or block device at `volume`, which is opened
    /// exclusively ([`crate::volume::open_image`]), as the daemon opens it.
    pub fn open_at(volume: &Path, dir: &Path, engine: EngineOptions) -> Result<Self, Error> {
        let files = DiffAreaFiles::in_dir(dir, false)?;
        let vol = crate::volume::open_image(volume, true)?;
        Self::open(Arc::new(vol), files, engine)
    }

    /// Opens an existing diff area: replays its journal, drops volatile copies, marks damaged
    /// copies failed (reported as [`Event::CopyFailed`]) and keeps the rest.
    pub fn open(volume: Arc<dyn Storage>, files: DiffAreaFiles, engine: EngineOptions) -> Result<Self, Error> {
        let started = Instant::now();
        let (journal, items) = Journal::open(files.journal.clone())?;
        let header = *journal.header();
        let volume_size = volume.len().map_err(Error::volume("reading the volume size"))?;
        if volume_size != header.volume_size {
            return Err(Error::VolumeSizeMismatch { expected: header.volume_size, found: volume_size });
        }
        let chunk = u64::from(header.chunk_size);
        let store_len = files.store.len().map_err(|source| DiffAreaError::Io { what: "reading the store size", source })?;
        let page_cache = Arc::new(PageCache::new(engine.index_cache_bytes));
        let (base, free, index_file) = match recovery::checkpoint_of(&items) {
            Some((file, generation)) => {
                let f = Arc::clone(&files.index[usize::from(file)]);
                let (base, free) = BaseIndex::open(f, generation, header.diff_area_id, Arc::clone(&page_cache), store_len.div_ceil(chunk))?;
                (base, free, file)
            }
            None => (BaseIndex::empty(Arc::clone(&page_cache)), Vec::new(), 1),
        };
        let recovered = recovery::recover(items, base, free, volume_size.div_ceil(chunk), store_len.div_ceil(chunk))?;
        let max_size = match recovered.max_size {
            Some(u64::MAX) => None,
            Some(m) => Some(m),
            None => MaxSize::PercentOfVolume(10).resolve(volume_size),
        };
        let capacity = slot_capacity(max_size, header.chunk_size)?;
        let slots = SlotAllocator::from_free(recovered.free, recovered.high_water, capacity);
        let failed: Vec<Event> = recovered
            .catalog
            .copies()
            .values()
            .filter_map(|m| m.failed.as_ref().map(|r| Event::CopyFailed { id: Uuid::from_bytes(m.record.id), reason: r.clone() }))
            .collect();
        for d in &recovered.damage {
            tracing::error!(diff_area = %Uuid::from_bytes(header.diff_area_id), damage = %d, "diff area damaged");
        }
        let damaged = recovered.needs_merge;
        let seal = recovered.seal;
        let replayed = recovered.replayed;
        let (redo, redone) = match &files.redo {
            Some((redo_files, boot)) => {
                let (log, found) = RedoLog::open(redo_files.clone(), *boot, header.diff_area_id, header.chunk_size, volume_size)
                    .map_err(|source| DiffAreaError::Io { what: "reading the redo log", source })?;
                (Some(log), found)
            }
            None => (None, Default::default()),
        };
        let vol = Self::assemble(volume, files, redo, journal, recovered.catalog, (slots, index_file, page_cache), max_size, engine);
        vol.check_seal(seal)?;
        vol.replay_redo(redone)?;
        for e in &failed {
            if let Event::CopyFailed { id, reason } = e {
                tracing::error!(copy = %id, %reason, "shadow copy failed");
            }
        }
        vol.inner.events.lock().extend(failed);
        // Fold damage into a fresh journal so that the failed marks are durable, and a
        // collection over the whole index into a fresh checkpoint; give back store space that no
        // record names.
        if damaged {
            vol.inner.commit_compacting()?;
        }
        vol.inner.trim_store();
        // Recovery's maps are gone; what they took would otherwise stay resident.
        crate::sys::release_free_heap();
        let took = started.elapsed();
        *vol.inner.open_duration.lock() = Some(took);
        tracing::info!(
            diff_area = %vol.inner.diff_area_id,
            copies = vol.inner.catalog.read().copies().len(),
            checkpointed = vol.inner.catalog.read().index().base().len(),
            replayed,
            ms = took.as_millis() as u64,
            "diff area opened"
        );
        Ok(vol)
    }

    /// Applies the writes a dead process had answered but still held back, through the normal
    /// write path (so copies are preserved for as usual), makes them durable and empties the
    /// redo log. The old entries stay in the log until then: a death during the replay replays
    /// them again, with this replay's own entries after them.
    fn replay_redo(&self, found: crate::diffarea::redo::Recovered) -> Result<(), Error> {
        let inner = &self.inner;
        let mut report = RedoReport { torn_bytes: found.torn_bytes, discarded: found.discarded, ..Default::default() };
        if let Some(why) = &report.discarded {
            tracing::info!(diff_area = %inner.diff_area_id, reason = %why, "redo log not replayed");
        }
        for (offset, data) in &found.writes {
            inner.write_at(data, *offset)?;
            report.replayed_writes += 1;
            report.replayed_bytes += data.len() as u64;
        }
        if report.replayed_writes > 0 {
            self.flush()?;
            tracing::warn!(
                diff_area = %inner.diff_area_id,
                writes = report.replayed_writes,
                bytes = report.replayed_bytes,
                "replayed live writes that the previous process had answered but not yet written to the volume when it died"
            );
        }
        inner.pending.reset_log();
        inner.pending.allow_checkpoints();
        *inner.redo_report.lock() = report;
        Ok(())
    }

    /// What the last open found in the redo log (see [`RedoReport`]).
    pub fn redo_report(&self) -> RedoReport {
        self.inner.redo_report.lock().clone()
    }

    /// Compares the volume with its fingerprint at the last clean stop (`seal`): if they differ,
    /// the volume was written while nobody served it, and every copy taken before is marked
    /// stale (durably). Then journals that the volume is served again, before any write.
    fn check_seal(&self, seal: Option<crate::fingerprint::Fingerprint>) -> Result<(), Error> {
        let inner = &self.inner;
        let Some(sealed) = seal else {
            if !inner.catalog.read().copies().is_empty() {
                tracing::info!(
                    diff_area = %inner.diff_area_id,
                    "the volume was not released cleanly last time (a crash or kill): writes made to it since cannot be detected"
                );
            }
            return Ok(());
        };
        let now = crate::fingerprint::fingerprint(inner.volume.as_ref(), inner.volume_size)
            .map_err(Error::volume("reading the volume's fingerprint"))?;
        {
            let mut cat = inner.catalog.write();
            if now != sealed {
                let reason = "the volume was written while shadowcopy was not serving it, after this copy was taken: blocks changed \
                              then were not preserved, so this copy may show some of those changes instead of the volume as it was"
                    .to_string();
                let epochs: Vec<u32> = cat.copies().iter().filter(|(_, m)| m.persistent && m.stale.is_none()).map(|(e, _)| *e).collect();
                for epoch in &epochs {
                    if let Some(m) = cat.copy_mut(*epoch) {
                        m.stale = Some(reason.clone());
                        inner.push_record(&Record::SnapshotStale { epoch: *epoch, reason: reason.clone() });
                    }
                }
                tracing::warn!(
                    diff_area = %inner.diff_area_id,
                    copies = epochs.len(),
                    "the volume changed while shadowcopy was not serving it: its copies are marked stale"
                );
            }
            inner.push_record(&Record::Unsealed);
        }
        inner.commit()?;
        Ok(())
    }

    /// Seals the volume for a clean stop: makes everything durable, then journals the volume's
    /// fingerprint, against which the next open checks for writes made while nobody served it.
    /// Call it last, once nothing writes any more: a write after the seal that needs no record
    /// would look, at the next open, like a write made behind shadowcopy's back.
    pub fn seal(&self) -> Result<(), Error> {
        self.flush()?;
        let inner = &self.inner;
        let fingerprint = crate::fingerprint::fingerprint(inner.volume.as_ref(), inner.volume_size)
            .map_err(Error::volume("reading the volume's fingerprint"))?;
        {
            let _cat = inner.catalog.read();
            inner.push_record(&Record::Sealed { fingerprint });
        }
        inner.commit()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        volume: Arc<dyn Storage>,
        files: DiffAreaFiles,
        redo: Option<RedoLog>,
        journal: Journal,
        catalog: Catalog,
        (slots, index_file, page_cache): (SlotAllocator, u8, Arc<PageCache>),
        max_size: Option<u64>,
        options: EngineOptions,
    ) -> Self {
        let header = *journal.header();
        let inner = Arc::new(Inner {
            volume_size: header.volume_size,
            chunk_size: header.chunk_size,
            chunk_shift: header.chunk_size.trailing_zeros(),
            diff_area_id: Uuid::from_bytes(header.diff_area_id),
            volume,
            store: files.store,
            options,
            inflight: inflight::InFlight::default(),
            stripes: Stripes::default(),
            catalog: RwLock::new(catalog),
            log: Mutex::new(LogBuffer { payload: Vec::new(), commit_no: 1 }),
            slots: Mutex::new(slots),
            journal: Mutex::new(journal),
            index_files: files.index,
            index_file: AtomicU8::new(index_file),
            page_cache,
            open_duration: Mutex::new(None),
            pending: Pending::new(
                header.chunk_size.trailing_zeros(),
                (options.pending_limit / u64::from(header.chunk_size)).min(1 << 16) as usize,
                redo,
                options.redo_checkpoint_bytes.unwrap_or(pending::CHECKPOINT_MIN),
            ),
            cache: ChunkCache::new(options.cache_chunks),
            max_size: Mutex::new(max_size),
            events: Mutex::new(Vec::new()),
            redo_report: Mutex::new(RedoReport::default()),
            failure: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            _lock: files.lock,
        });
        let bg = Arc::clone(&inner);
        let committer = std::thread::Builder::new()
            .name("shadowcopy-commit".into())
            .spawn(move || bg.run_committer())
            .expect("spawning the committer thread");
        ShadowVolume { inner, committer: Some(committer) }
    }

    /// Size of the volume in bytes.
    pub fn size(&self) -> u64 {
        self.inner.volume_size
    }

    /// The diff area's chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.inner.chunk_size
    }

    /// The diff area's id.
    pub fn diff_area_id(&self) -> Uuid {
        self.inner.diff_area_id
    }

    /// Writes live data (copy-before-write for every chunk a copy still shares).
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<(), Error> {
        self.inner.write_at(data, offset)
    }

    /// Deallocates a live range (zeroes it), preserving what copies need first.
    pub fn punch_zero(&self, offset: u64, len: u64) -> Result<(), Error> {
        self.inner.punch_zero(offset, len)
    }

    /// Reads the live volume.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.inner.read_live(buf, offset)
    }

    /// Makes every record durable, so that the held bytes reach the volume, without waiting
    /// for the volume's own writes to reach the disk: for handing the volume to another process
    /// on the same machine (a planned restart of the daemon's worker), which sees the same page
    /// cache. What a power loss may lose is what it would have lost without the handover.
    pub fn hand_over(&self) -> Result<(), Error> {
        self.inner.commit().map(|_| ())
    }

    /// Makes every write acknowledged so far durable.
    pub fn flush(&self) -> Result<(), Error> {
        if let Err(e) = self.inner.commit() {
            // A failed diff area has handed all held data to the volume: the live data can
            // still be made durable, and that is what a flush promises.
            if self.inner.failure.lock().is_none() {
                return Err(e);
            }
        }
        self.inner.volume.sync_data().map_err(Error::volume("flushing the volume"))
    }

    /// The copies, oldest first.
    pub fn copies(&self) -> Vec<CopyInfo> {
        self.inner.catalog.read().copies().values().map(CopyInfo::from_meta).collect()
    }

    /// One copy.
    pub fn copy(&self, id: Uuid) -> Result<CopyInfo, Error> {
        let cat = self.inner.catalog.read();
        let epoch = find_epoch(&cat, id)?;
        Ok(CopyInfo::from_meta(cat.copy(epoch).expect("found above")))
    }

    /// Reads a copy: bytes of the volume as they were at the copy's instant.
    pub fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.inner.read_copy(id, buf, offset)
    }

    /// Deletes a copy (any one: oldest, middle or newest); its space is reclaimed.
    pub fn delete(&self, id: Uuid) -> Result<CopyInfo, Error> {
        let epoch = find_epoch(&self.inner.catalog.read(), id)?;
        self.inner.delete_epoch(epoch, DeleteReason::Requested)?.ok_or(Error::NoSuchCopy(id))
    }

    /// Changes the maximum size; deletes oldest copies until the diff area fits.
    pub fn resize(&self, max: MaxSize) -> Result<Usage, Error> {
        self.inner.resize(max)
    }

    /// Space used.
    pub fn usage(&self) -> Usage {
        self.inner.usage()
    }

    /// Events since the last call (copies deleted for space, copies found failed).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.inner.events.lock())
    }

    /// Whether the diff area stopped after a failure (copies unavailable), and why.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.lock().clone()
    }

    /// Stops background work, makes everything durable and seals the volume (see
    /// [`ShadowVolume::seal`]).
    pub fn close(mut self) -> Result<(), Error> {
        self.stop_committer();
        self.seal()?;
        self.inner.pending.reset_log();
        Ok(())
    }

    fn stop_committer(&mut self) {
        {
            // Under the lock: the committer checks the flag and waits under it, so the wake-up
            // cannot fall between its check and its wait.
            let _g = self.inner.wake.0.lock();
            self.inner.shutdown.store(true, Ordering::Release);
            self.inner.wake.1.notify_all();
        }
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ShadowVolume {
    fn drop(&mut self) {
        if self.committer.is_some() {
            self.stop_committer();
            match self.flush() {
                Ok(()) => self.inner.pending.reset_log(),
                Err(e) => tracing::error!(error = %e, "flushing on close failed"),
            }
        }
    }
}

fn find_epoch(cat: &Catalog, id: Uuid) -> Result<u32, Error> {
    cat.epoch_of(id.as_bytes()).ok_or(Error::NoSuchCopy(id))
}

impl Inner {
    fn chunk_len(&self, chunk: u64) -> usize {
        let start = chunk << self.chunk_shift;
        (self.volume_size - start).min(u64::from(self.chunk_size)) as usize
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), Error> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.volume_size => Ok(()),
            _ => Err(Error::OutOfRange { offset, len: len as u64, size: self.volume_size }),
        }
    }

    /// Appends a record to the next commit; returns that commit's number.
    fn push_record(&self, r: &Record) -> u64 {
        let mut log = self.log.lock();
        r.encode_into(&mut log.payload);
        log.commit_no
    }

    fn usage(&self) -> Usage {
        // The journal and the checkpointed index count together (`journal_reserve` covers both).
        let journal = self.journal.lock().disk_bytes() + self.index_files.iter().map(|f| f.len().unwrap_or(0)).sum::<u64>();
        let store = self.store.len().unwrap_or(0);
        let (slots, slot_capacity, slot_bytes) = {
            let s = self.slots.lock();
            (s.in_use(), s.capacity(), s.heap_bytes())
        };
        let cat = self.catalog.read();
        Usage {
            used_bytes: u64::from(slots) * u64::from(self.chunk_size) + journal,
            allocated_bytes: store + journal,
            max_bytes: *self.max_size.lock(),
            chunk_size: self.chunk_size,
            copies: cat.copies().len(),
            preserved_chunks: cat.index().len() as usize,
            index_bytes: cat.index().heap_bytes() + slot_bytes,
            index_disk_bytes: cat.index().base().disk_bytes(),
            checkpointed_chunks: cat.index().base().len(),
            index_cache: self.page_cache.stats(),
            open_duration: *self.open_duration.lock(),
            slots_in_use: slots,
            slot_capacity,
        }
    }

    /// Removes a copy; its slots become free after the commit that records the deletion. A
    /// persistent copy's records may be in the checkpoint: the deletion's commit is a merge,
    /// which drops them (a read of the whole checkpoint, and a write of what stays). A volatile
    /// copy's own records are all in memory (a checkpoint keeps only records that serve a
    /// persistent copy): they are collected there.
    fn delete_epoch(&self, epoch: u32, reason: DeleteReason) -> Result<Option<CopyInfo>, Error> {
        let (info, n, persistent) = {
            let mut cat = self.catalog.write();
            let Some(meta) = cat.remove_copy(epoch) else { return Ok(None) };
            let mut log = self.log.lock();
            if meta.persistent && meta.journaled {
                Record::SnapshotDeleted { epoch }.encode_into(&mut log.payload);
            }
            (CopyInfo::from_meta(&meta), log.commit_no, meta.persistent)
        };
        match reason {
            DeleteReason::Requested => tracing::info!(copy = %info.id, "shadow copy deleted"),
            DeleteReason::DiffAreaFull => tracing::warn!(copy = %info.id, "diff area full: deleted the oldest shadow copy"),
        }
        self.events.lock().push(Event::CopyDeleted { id: info.id, reason });
        if persistent {
            self.commit_compacting()?;
        } else {
            self.collect_memory_garbage(n);
            self.commit()?;
        }
        Ok(Some(info))
    }

    /// Drops records held in memory that no copy needs, a bounded step at a time so that
    /// writers and readers are never held for a whole scan; their slots become free after
    /// commit `n`.
    fn collect_memory_garbage(&self, n: u64) {
        const STEP: usize = 4096;
        let mut from = Some((0u64, 0u32));
        while let Some(start) = from {
            let (garbage, next) = self.catalog.write().collect_memory_garbage_step(start, STEP);
            if !garbage.is_empty() {
                let mut slots = self.slots.lock();
                garbage.iter().for_each(|e| slots.release(e.slot, n));
            }
            from = next;
        }
    }

    fn resize(&self, max: MaxSize) -> Result<Usage, Error> {
        let max_size = max.resolve(self.volume_size);
        let capacity = slot_capacity(max_size, self.chunk_size)?;
        *self.max_size.lock() = max_size;
        self.slots.lock().set_capacity(capacity);
        self.push_record(&Record::Config { max_size: max_size.unwrap_or(u64::MAX) });
        self.commit()?;
        // Shrinking: the oldest copies go until no slot lies beyond the new capacity.
        loop {
            let hw = {
                let mut s = self.slots.lock();
                s.trim()
            };
            if capacity.is_none_or(|c| hw <= c) {
                break;
            }
            let oldest = self.catalog.read().oldest();
            match oldest {
                Some(e) => {
                    self.delete_epoch(e, DeleteReason::DiffAreaFull)?;
                }
                None => break,
            }
        }
        self.trim_store();
        Ok(self.usage())
    }

    /// Shrinks the store file to the slots in use (under the slots lock, so that no slot being
    /// allocated can be cut), never below a slot the checkpointed index names (garbage there
    /// goes at the next merge; the journal's lock keeps a merge from installing meanwhile).
    fn trim_store(&self) {
        let _no_merge = self.journal.lock();
        let cat = self.catalog.read();
        let floor = cat.index().base().high_water();
        let mut slots = self.slots.lock();
        let want = u64::from(slots.trim().max(floor)) * u64::from(self.chunk_size);
        if self.store.len().is_ok_and(|len| len > want) {
            if let Err(e) = self.store.set_len(want) {
                tracing::warn!(error = %e, "could not shrink the diff-area store");
            }
        }
    }

    /// Gives up on the diff area after an I/O failure: every copy is marked failed (durably if the
    /// journal still works, else the journal is made unreadable so no copy can come back wrong),
    /// held-back data goes to the volume, and live writes carry on without copy-before-write.
    fn fail_diff_area(&self, reason: String) {
        tracing::error!(%reason, "diff area failed: shadow copies of this volume are lost; live writes continue");
        *self.failure.lock() = Some(reason.clone());
        let events: Vec<Event> = {
            let mut cat = self.catalog.write();
            let epochs: Vec<u32> = cat.copies().keys().copied().collect();
            let mut log = self.log.lock();
            let mut events = Vec::new();
            for e in &epochs {
                let m = cat.copy(*e).expect("listed above");
                if m.persistent && m.journaled {
                    Record::SnapshotFailed { epoch: *e, reason: reason.clone() }.encode_into(&mut log.payload);
                }
                events.push(Event::CopyFailed { id: Uuid::from_bytes(m.record.id), reason: reason.clone() });
            }
            drop(log);
            for e in epochs {
                cat.fail_copy(e, reason.clone());
            }
            // Every copy failed: every record is garbage. The index starts over empty, and so do
            // the slots (nothing is preserved for anyone any more).
            cat.clear_index(LayeredIndex::over(BaseIndex::empty(Arc::clone(&self.page_cache))));
            let mut slots = self.slots.lock();
            let capacity = slots.capacity();
            *slots = SlotAllocator::empty(capacity);
            events
        };
        self.events.lock().extend(events);
        let journaled = {
            let mut j = self.journal.lock();
            let payload = std::mem::take(&mut self.log.lock().payload);
            j.append(&payload).is_ok()
        };
        if !journaled {
            self.poison_journal();
        }
        if let Err(e) = self.pending.release(None, |at, bufs| self.volume.write_vectored_at(bufs, at)) {
            tracing::error!(error = %e, "writing held-back data to the volume failed");
        }
    }

    /// Overwrites both journal headers in place (no new space needed) so that the diff area
    /// refuses to open instead of serving copies whose chunks were never preserved.
    fn poison_journal(&self) {
        tracing::error!("the journal cannot record the failure: invalidating it so that no copy comes back wrong");
        self.journal.lock().poison();
    }
}
