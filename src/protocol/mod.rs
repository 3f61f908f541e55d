//! The control-socket protocol between `shadowcopyd` and its clients (the CLI, writers, scripts).
//!
//! Owns the wire types and their framing; `docs/protocol.md` is the specification. Each message
//! is one line of JSON (UTF-8, at most [`MAX_MESSAGE`] bytes). A client sends a [`Request`]; the
//! daemon answers with zero or more [`Reply::Progress`] and [`Reply::Stage`] lines, then exactly one
//! [`Reply::Ok`] or [`Reply::Error`]. Unknown fields and unknown operations are refused, so a
//! typo never silently means something else.
//!
//! Never performs an operation: the daemon decides, this module only describes.

mod client;

pub use client::{default_socket_path, Client, ClientError};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this build speaks. A request with another version gets an error reply
/// naming both.
pub const VERSION: u32 = 1;

/// The largest message either side accepts, in bytes (newline included).
pub const MAX_MESSAGE: usize = 1 << 20;

/// One request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// The operation and its arguments (`op`, `args`).
    #[serde(flatten)]
    pub op: Op,
}

/// What a client asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// The daemon's version and paths.
    Status,
    /// Registers a volume (an image file or block device) and creates its diff area.
    VolumeAdd {
        /// The volume's name: its folder in the mount.
        name: String,
        /// An image file or block device (absolute path on the daemon's host).
        image: String,
        /// Where the diff area goes (default: under the state directory).
        diff_area: Option<String>,
        /// `10%`, `2G`, `unbounded`.
        max_size: Option<String>,
        /// Chunk size in bytes: a power of two from 4 KiB to 1 MiB (default 16 KiB).
        chunk_size: Option<u64>,
        /// Expose the image read-only (no diff area; `live` refuses writes) and serve the
        /// Windows shadow copies found on it.
        #[serde(default)]
        read_only: bool,
        /// Also attach a loop device over its `live` now and at every start (written to the
        /// daemon's configuration file), optionally with a filesystem mounted from it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attach: Option<AttachSpec>,
    },
    /// Attaches a registered volume now and at every start (see [`AttachSpec`]); replaces the
    /// attachment the configuration had for it.
    VolumeAttach {
        /// The volume.
        name: String,
        /// What to attach.
        spec: AttachSpec,
    },
    /// Unmounts what was mounted from a volume's attached loop device, detaches it and takes
    /// the attachment out of the configuration file.
    VolumeDetach {
        /// The volume.
        name: String,
    },
    /// The registered volumes.
    VolumeList,
    /// Unregisters a volume and deletes its diff area (its copies are lost).
    VolumeRemove {
        /// The volume.
        name: String,
    },
    /// Takes one shadow copy set (see [`CreateRequest`]).
    Create(CreateRequest),
    /// The requester has read the set's copies: the set's writers get BackupComplete (for a set
    /// created with `defer_backup_complete`).
    BackupComplete {
        /// The set.
        set_id: Uuid,
    },
    /// Registers the calling connection as a writer; the daemon then sends it [`Reply::Event`]
    /// lines, which it answers with [`Op::WriterAnswer`].
    WriterRegister(WriterRegistration),
    /// A writer's answer to event `seq`.
    WriterAnswer {
        /// The event's sequence number.
        seq: u64,
        /// Whether the writer succeeded.
        outcome: WriterOutcome,
    },
    /// The writers and their states.
    Writers,
    /// Lists shadow copies (of one volume, or all).
    List {
        /// Only this volume's copies.
        volume: Option<String>,
    },
    /// Deletes shadow copies.
    Delete {
        /// Which copies.
        target: DeleteTarget,
    },
    /// Diff-area space per volume.
    StorageList,
    /// Changes a volume's maximum diff-area size.
    StorageResize {
        /// The volume.
        volume: String,
        /// `10%`, `2G`, `unbounded`.
        max_size: String,
    },
    /// Writes a copy to a sparse image file (a path on the daemon's host).
    Export {
        /// The copy.
        id: Uuid,
        /// A new file on the daemon's host.
        path: String,
    },
    /// Rolls a volume back to a copy (the volume must not be in use).
    Revert {
        /// The copy to go back to.
        id: Uuid,
    },
    /// Byte ranges that differ between a copy and a later one (or the live volume).
    Diff {
        /// The earlier copy.
        id: Uuid,
        /// The later copy, or `None` for the live volume.
        to: Option<Uuid>,
    },
    /// The inodes whose on-disk records differ between copy `id` and the later copy `to` of the
    /// same volume (ext2/3/4 only), found from the chunks that changed between them: what
    /// `shadowcopy changes` needs to stat instead of every file.
    ChangedInodes {
        /// The earlier copy.
        id: Uuid,
        /// The later copy.
        to: Uuid,
    },
    /// The files and folders added, deleted, modified or with changed metadata between copy
    /// `id` and the later copy `to` of the same volume, found inside the daemon through the
    /// filesystem readers (for ext2/3/4 from the inode records in the chunks that changed).
    Changes {
        /// The earlier copy.
        id: Uuid,
        /// The later copy.
        to: Uuid,
    },
    /// Makes a copy visible outside the mount: its tree bind-mounted on the directory `at`, or
    /// (`device`) its raw image on a read-only loop device. Lasts until `unexpose` or the
    /// daemon stops.
    Expose {
        /// The copy.
        id: Uuid,
        /// An existing directory outside the mount.
        #[serde(default)]
        at: Option<String>,
        /// Attach the raw image to a read-only loop device instead.
        #[serde(default)]
        device: bool,
        /// Expose on a directory that is not empty (its contents are hidden until unexposed).
        #[serde(default)]
        force: bool,
    },
    /// Undoes the exposure at a directory or device path.
    Unexpose {
        /// The directory or device it is exposed at.
        path: String,
    },
    /// Stops the daemon: refused while any `live` file is open (a loop device, a program),
    /// unless `force`.
    DaemonStop {
        /// Stop even though users of `live` then get I/O errors.
        #[serde(default)]
        force: bool,
        /// First unmount the filesystems the configuration mounted (in reverse order) and
        /// detach their loop devices; the stop is refused if one of them is busy.
        #[serde(default)]
        unmount: bool,
    },
    /// Replaces the daemon's worker by a fresh start of its program file (which may be a newer
    /// version) without unmounting anything: in-flight I/O waits, nothing fails.
    DaemonRestart,
    /// Sets (or with `policy: null` removes) a volume's schedule and retention policy.
    PolicySet {
        /// The volume.
        volume: String,
        /// The new policy; `None` removes it (copies it owns stay, as ordinary copies).
        policy: Option<Policy>,
    },
    /// Every volume's policy, with when its next scheduled copy is due.
    PolicyList,
    /// Deletes the copies a volume's retention policy no longer keeps (the daemon does this on
    /// its own after each scheduled copy; this runs it now). With `dry_run`, only says which.
    Cleanup {
        /// The volume.
        volume: String,
        /// Say what would be deleted, delete nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// The daemon's recent events, oldest first: those after `after` (a sequence number), or
    /// the last `limit`. With `follow`, the answer is a stream of [`Reply::Record`] lines, the
    /// backlog first, then each new event as it happens, until the client disconnects.
    Events {
        /// Only events with a greater sequence number.
        #[serde(default)]
        after: Option<u64>,
        /// At most this many (the newest) [default: 100].
        #[serde(default)]
        limit: Option<usize>,
        /// Keep the connection open and send new events as they happen.
        #[serde(default)]
        follow: bool,
    },
}

impl Op {
    /// Whether the operation changes state (and so needs an administrator).
    pub fn changes_state(&self) -> bool {
        match self {
            Op::Status
            | Op::VolumeList
            | Op::List { .. }
            | Op::StorageList
            | Op::Diff { .. }
            | Op::Writers
            | Op::ChangedInodes { .. }
            | Op::Changes { .. }
            | Op::PolicyList
            | Op::Events { .. }
            | Op::Cleanup { dry_run: true, .. } => false,
            // A writer takes part in sets: it must be trusted like an administrator.
            Op::WriterRegister(_) | Op::WriterAnswer { .. } => true,
            Op::VolumeAdd { .. }
            | Op::VolumeAttach { .. }
            | Op::VolumeDetach { .. }
            | Op::VolumeRemove { .. }
            | Op::Create(_)
            | Op::BackupComplete { .. }
            | Op::Delete { .. }
            | Op::StorageResize { .. }
            | Op::Export { .. }
            | Op::Revert { .. }
            | Op::Expose { .. }
            | Op::Unexpose { .. }
            | Op::DaemonStop { .. }
            | Op::DaemonRestart
            | Op::PolicySet { .. }
            | Op::Cleanup { .. } => true,
        }
    }

    /// The volumes the operation names, where it names them by volume name (`None`: it
    /// concerns every volume, or names copies by id). Notices about a volume (a copy deleted
    /// because its diff area was full) go with the answer to the next operation that names it.
    pub fn volumes(&self) -> Option<Vec<String>> {
        match self {
            Op::VolumeAdd { name, .. } | Op::VolumeAttach { name, .. } | Op::VolumeDetach { name } | Op::VolumeRemove { name } => {
                Some(vec![name.clone()])
            }
            Op::Create(req) => Some(req.volumes.clone()),
            Op::List { volume: Some(v) } => Some(vec![v.clone()]),
            Op::Delete { target: DeleteTarget::Oldest(v) | DeleteTarget::All(v) } => Some(vec![v.clone()]),
            Op::StorageResize { volume, .. } | Op::PolicySet { volume, .. } | Op::Cleanup { volume, .. } => Some(vec![volume.clone()]),
            _ => None,
        }
    }
}

/// A volume's schedule and retention policy, like snapper's `TIMELINE_CREATE` and
/// `TIMELINE_LIMIT_*` or sanoid's templates. Retention only ever deletes copies the policy owns
/// (those taken by the schedule, and those created with `cleanup`), never an exposed one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// How often the daemon takes a copy: `hourly`, `daily`, `weekly`, or an interval such as
    /// `15m`, `6h`, `2d` (aligned to UTC: an hourly copy is due at each full hour). `None`: no
    /// schedule, retention only.
    #[serde(default)]
    pub schedule: Option<String>,
    /// What retention keeps.
    #[serde(default)]
    pub keep: Keep,
}

/// Which of the copies a policy owns are kept: the first copy of each of the newest `hourly`
/// hours (`daily` days, `weekly` ISO weeks, `monthly` months, `yearly` years) that have one,
/// plus the newest `min_count` copies, plus every copy younger than `min_age_secs`. Everything
/// else the policy owns is deleted (unless exposed).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Keep {
    /// Hours that keep their first copy.
    #[serde(default)]
    pub hourly: u32,
    /// Days (UTC) that keep their first copy.
    #[serde(default)]
    pub daily: u32,
    /// ISO weeks (Monday to Sunday, UTC) that keep their first copy.
    #[serde(default)]
    pub weekly: u32,
    /// Months that keep their first copy.
    #[serde(default)]
    pub monthly: u32,
    /// Years that keep their first copy.
    #[serde(default)]
    pub yearly: u32,
    /// The newest copies kept whatever their age.
    #[serde(default)]
    pub min_count: u32,
    /// Copies younger than this (seconds) are kept.
    #[serde(default)]
    pub min_age_secs: u64,
}

/// `30s`, `15m`, `6h`, `2d`, `1w` as seconds (schedules and `--min-age`); zero is refused.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("`{s}` is not a number followed by s, m, h, d or w"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h, d or w")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("`{s}` is out of range")),
        Some(secs) => Ok(secs),
    }
}

/// A volume's policy as `policy list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyView {
    /// The volume.
    pub volume: String,
    /// Its policy.
    pub policy: Policy,
    /// When the next scheduled copy is due (Unix seconds, UTC), if there is a schedule.
    pub next_copy_unix: Option<u64>,
    /// Copies the policy owns now.
    pub owned_copies: usize,
}

/// What a cleanup deleted (or, for a dry run, would delete).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupView {
    /// The volume.
    pub volume: String,
    /// Nothing was deleted: `deleted` is what would have been.
    pub dry_run: bool,
    /// The copies deleted.
    pub deleted: Vec<CopyView>,
    /// Copies the policy owns that it keeps.
    pub kept: usize,
    /// Copies the policy would delete but keeps because they are exposed.
    pub kept_exposed: usize,
}

/// What happened, as `shadowcopy events` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventView {
    /// Increases by one per event (across restarts).
    pub seq: u64,
    /// When, Unix seconds (UTC).
    pub time_unix: f64,
    /// What kind of thing happened.
    pub kind: EventKind,
    /// The volume it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The copy it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<Uuid>,
    /// For `copy_deleted`: `request`, `retention`, `diff_area_full`, `released` (an
    /// auto-release set whose requester left), `interrupted` (a set a crash cut short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, in words.
    pub message: String,
}

/// Kinds of [`EventView`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A copy was taken.
    CopyCreated,
    /// A copy was deleted (see `reason`).
    CopyDeleted,
    /// A copy can no longer be read.
    CopyFailed,
    /// A volume could not be opened, or its diff area stopped.
    VolumeFailed,
    /// A writer failed an event, or disconnected in the middle of a set.
    WriterFailed,
    /// A scheduled copy could not be taken.
    ScheduleFailed,
    /// A diff area passed the warning threshold (a share of its maximum).
    DiffAreaNearlyFull,
}

/// A request for one shadow copy set of the named volumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The volumes, by name (one copy of each, at one instant).
    pub volumes: Vec<String>,
    /// What the set is for; decides persistence, writers and visibility.
    #[serde(default)]
    pub context: Context,
    /// Overrides the context's persistence (`VSS_VOLSNAP_ATTR_PERSISTENT`).
    #[serde(default)]
    pub persistent: Option<bool>,
    /// Which writers take part.
    #[serde(default)]
    pub writers: WriterSelection,
    /// Keep a non-persistent set after the requester's connection ends (until it is deleted or
    /// the daemon stops). Without it, a non-persistent set is released with the connection.
    #[serde(default)]
    pub keep_after_disconnect: bool,
    /// Do not send BackupComplete now: the requester sends [`Op::BackupComplete`] once it has
    /// read the copies.
    #[serde(default)]
    pub defer_backup_complete: bool,
    /// What the copies are for, in words (`list` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `key=value` labels for scripts (`list` shows them; nothing in the daemon reads them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The volume's retention policy may delete these copies once it no longer keeps them
    /// (copies taken by the schedule always are the policy's).
    #[serde(default)]
    pub cleanup: bool,
}

impl CreateRequest {
    /// A set of `volumes` with every default (context `client_accessible_writers`: persistent,
    /// with writers, listed in the mount).
    pub fn new(volumes: Vec<String>) -> CreateRequest {
        CreateRequest {
            volumes,
            context: Context::default(),
            persistent: None,
            writers: WriterSelection::default(),
            keep_after_disconnect: false,
            defer_backup_complete: false,
            description: None,
            labels: BTreeMap::new(),
            cleanup: false,
        }
    }

    /// Whether the set outlives a daemon restart.
    pub fn is_persistent(&self) -> bool {
        self.persistent.unwrap_or(self.context.persistent())
    }
}

/// What a set is for, like VSS's `_VSS_SNAPSHOT_CONTEXT`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    /// `VSS_CTX_BACKUP`: for a backup tool; with writers, released when the requester's
    /// connection ends, reachable by path but not listed.
    Backup,
    /// `VSS_CTX_FILE_SHARE_BACKUP`: like `backup` without writers.
    FileShareBackup,
    /// `VSS_CTX_NAS_ROLLBACK`: persistent, no writers, not listed; kept for reverting.
    NasRollback,
    /// `VSS_CTX_APP_ROLLBACK`: persistent, with writers, not listed.
    AppRollback,
    /// `VSS_CTX_CLIENT_ACCESSIBLE`: persistent, no writers, listed (Previous Versions, Samba).
    ClientAccessible,
    /// `VSS_CTX_CLIENT_ACCESSIBLE_WRITERS`: persistent, with writers, listed.
    #[default]
    ClientAccessibleWriters,
}

impl Context {
    /// Every context, in the order the CLI lists them.
    pub const ALL: [Context; 6] = [
        Context::Backup,
        Context::FileShareBackup,
        Context::NasRollback,
        Context::AppRollback,
        Context::ClientAccessible,
        Context::ClientAccessibleWriters,
    ];

    /// The context's wire name (`client_accessible_writers`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Backup => "backup",
            Context::FileShareBackup => "file_share_backup",
            Context::NasRollback => "nas_rollback",
            Context::AppRollback => "app_rollback",
            Context::ClientAccessible => "client_accessible",
            Context::ClientAccessibleWriters => "client_accessible_writers",
        }
    }

    /// Persistent unless asked otherwise.
    pub fn persistent(self) -> bool {
        !matches!(self, Context::Backup | Context::FileShareBackup)
    }

    /// Writers take part.
    pub fn with_writers(self) -> bool {
        matches!(self, Context::Backup | Context::AppRollback | Context::ClientAccessibleWriters)
    }

    /// Listed in the volume's folder of the mount (otherwise reachable only by its path).
    pub fn client_accessible(self) -> bool {
        matches!(self, Context::ClientAccessible | Context::ClientAccessibleWriters)
    }

    /// The code kept in a copy's attribute bits (0: none recorded).
    fn code(self) -> u32 {
        Context::ALL.iter().position(|c| *c == self).map_or(0, |i| i as u32 + 1)
    }

    fn from_code(code: u32) -> Option<Context> {
        Context::ALL.get((code as usize).checked_sub(1)?).copied()
    }
}

/// Which writers take part in a set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSelection {
    /// No writers at all (a crash-consistent set).
    #[serde(default)]
    pub none: bool,
    /// Only these writers (by name); empty: those with components on the set's volumes.
    #[serde(default)]
    pub only: Vec<String>,
    /// Writers to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// What a writer tells the daemon when it registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterRegistration {
    /// The writer's name (unique among connected writers).
    pub name: String,
    /// Identifies the kind of writer (VSS: writer class id).
    pub class_id: Uuid,
    /// Identifies this instance of it.
    pub instance_id: Uuid,
    /// What it writes.
    #[serde(default)]
    pub components: Vec<Component>,
}

/// A part of an application's data a writer is responsible for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// The component's name.
    pub name: String,
    /// Files or folders it covers (informational).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Volumes (names) the component's files live on.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// How a restore of it is done (informational).
    #[serde(default)]
    pub restore_method: Option<String>,
}

/// The events a writer answers, in VSS's order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriterEvent {
    /// Who are you and what do you write (always sent first).
    Identify,
    /// A backup is being prepared.
    PrepareForBackup,
    /// Get ready: flush what can be flushed, the freeze follows.
    PrepareForSnapshot,
    /// Hold writes: the instant follows within the freeze window.
    Freeze,
    /// The instant is over: writes may go on.
    Thaw,
    /// The set exists (its ids are in the event).
    PostSnapshot,
    /// The set was given up: undo what was prepared.
    Abort,
    /// The copies were read (the backup is complete).
    BackupComplete,
    /// The set's backup session is over.
    BackupShutdown,
    /// A copy is about to be restored onto the volume (may refuse it).
    PreRestore,
    /// The restore is done.
    PostRestore,
}

impl WriterEvent {
    /// The event's wire name (`prepare_for_snapshot`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WriterEvent::Identify => "identify",
            WriterEvent::PrepareForBackup => "prepare_for_backup",
            WriterEvent::PrepareForSnapshot => "prepare_for_snapshot",
            WriterEvent::Freeze => "freeze",
            WriterEvent::Thaw => "thaw",
            WriterEvent::PostSnapshot => "post_snapshot",
            WriterEvent::Abort => "abort",
            WriterEvent::BackupComplete => "backup_complete",
            WriterEvent::BackupShutdown => "backup_shutdown",
            WriterEvent::PreRestore => "pre_restore",
            WriterEvent::PostRestore => "post_restore",
        }
    }
}

/// An event sent to a writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMessage {
    /// Sequence number; the answer carries it back.
    pub seq: u64,
    /// Which event.
    pub event: WriterEvent,
    /// The set, once it exists (from Thaw on).
    pub set_id: Option<Uuid>,
    /// The set's volumes.
    pub volumes: Vec<String>,
    /// The set's copies, once they exist.
    pub copy_ids: Vec<Uuid>,
    /// The writer's components selected for the set.
    pub components: Vec<String>,
}

/// A writer's answer to an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WriterOutcome {
    /// Done.
    Ok,
    /// Failed; the set is aborted (before the instant).
    Failed {
        /// What went wrong.
        message: String,
        /// Like `VSS_E_WRITERERROR_RETRYABLE`: trying again later may work.
        #[serde(default)]
        retryable: bool,
    },
}

/// A writer's state, like `VSS_WS_*`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriterState {
    /// Idle, or done with the last event.
    Stable,
    /// Prepared; Freeze comes next.
    WaitingForFreeze,
    /// Frozen; Thaw comes next.
    WaitingForThaw,
    /// Thawed; PostSnapshot comes next.
    WaitingForPostSnapshot,
    /// Waiting for the requester's BackupComplete.
    WaitingForBackupComplete,
    /// Failed at Identify.
    FailedAtIdentify,
    /// Failed at PrepareForBackup.
    FailedAtPrepareBackup,
    /// Failed at PrepareForSnapshot.
    FailedAtPrepareSnapshot,
    /// Failed at Freeze.
    FailedAtFreeze,
    /// Failed at Thaw.
    FailedAtThaw,
    /// Failed at PostSnapshot.
    FailedAtPostSnapshot,
    /// Failed at BackupComplete (or Abort).
    FailedAtBackupComplete,
    /// Failed at BackupShutdown.
    FailedAtBackupShutdown,
    /// Failed at PreRestore.
    FailedAtPreRestore,
    /// Failed at PostRestore.
    FailedAtPostRestore,
    /// The writer's connection ended (it exited or crashed).
    Disconnected,
}

/// A writer as `shadowcopy writers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterView {
    /// Its name.
    pub name: String,
    /// Its class id.
    pub class_id: Uuid,
    /// Its instance id.
    pub instance_id: Uuid,
    /// Where it is in the sequence (`VSS_WS_*`).
    pub state: WriterState,
    /// The last failure, as it said it.
    pub last_error: Option<String>,
    /// What it writes.
    pub components: Vec<Component>,
}

/// Which copies [`Op::Delete`] removes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DeleteTarget {
    /// One copy, by id.
    Id(Uuid),
    /// Every copy of a set.
    Set(Uuid),
    /// The oldest copy of a volume.
    Oldest(String),
    /// Every copy of a volume.
    All(String),
}

/// One reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Work in progress (long operations only).
    Progress {
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// What a long request is doing now (for `create`: which event which writer is answering).
    Stage {
        /// What it is doing now.
        message: String,
    },
    /// An event for a registered writer (on its own connection only).
    Event(EventMessage),
    /// Something the client should be told besides the answer (a copy of a volume the request
    /// names was deleted because its diff area was full), before the final line.
    Notice {
        /// What happened.
        message: String,
    },
    /// One event of an [`Op::Events`] request with `follow`.
    Record(EventView),
    /// The request succeeded.
    Ok(Answer),
    /// The request failed; nothing was changed unless the message says so.
    Error(ErrorReply),
}

/// Why a request failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// The kind, for scripts.
    pub kind: ErrorKind,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// Classes of failure a client may act on.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line is not a valid request (bad JSON, unknown operation or field, too long).
    BadRequest,
    /// The request's protocol version is not this daemon's.
    Version,
    /// The caller may not do this.
    PermissionDenied,
    /// A named volume or copy does not exist.
    NotFound,
    /// The name or thing already exists.
    AlreadyExists,
    /// The volume is busy (in use, or being changed by another request).
    Busy,
    /// Writes could not be held in time; the set was aborted and everything thawed.
    Timeout,
    /// The daemon is replacing its worker (`daemon restart`): nothing was done; the same
    /// request succeeds on the next worker ([`Client::call`] retries by itself).
    Restarting,
    /// Anything else (I/O, a damaged diff area, …).
    Failed,
}

/// A successful answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    /// The daemon's status.
    Status(StatusInfo),
    /// The registered volumes.
    Volumes(Vec<VolumeInfo>),
    /// One volume (the one just added).
    Volume(VolumeInfo),
    /// Shadow copies (listed, or deleted).
    Copies(Vec<CopyView>),
    /// A set just taken.
    Set(SetView),
    /// Diff-area space.
    Storage(Vec<StorageInfo>),
    /// Changed byte ranges.
    Ranges(Vec<RangeView>),
    /// Writers and their states.
    Writers(Vec<WriterView>),
    /// Volumes' policies (one, after `policy_set`).
    Policies(Vec<PolicyView>),
    /// What a cleanup deleted.
    Cleanup(CleanupView),
    /// Events, oldest first.
    Events(Vec<EventView>),
    /// Inode numbers (see [`Op::ChangedInodes`]); `None`: cannot be told for these copies (not
    /// ext2/3/4, a new filesystem between them, too many), so compare every file.
    Inodes(Option<Vec<u64>>),
    /// What changed between two copies ([`Op::Changes`]), in path order; `None`: the daemon
    /// cannot say (a copy without a readable filesystem, or more than fits a reply), so the
    /// client compares the trees itself.
    Changes(Option<Vec<ChangeView>>),
    /// Done; the message says what happened.
    Done(String),
}

/// The daemon's version and where it keeps things.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusInfo {
    /// shadowcopyd's version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// The mount point.
    pub mount: String,
    /// The state directory.
    pub state_dir: String,
    /// Registered volumes that are served.
    pub volumes: usize,
    /// The daemon's process id (its main process, the holder).
    #[serde(default)]
    pub pid: u32,
    /// When it started (its first worker), seconds since the Unix epoch (UTC).
    #[serde(default)]
    pub started_unix: f64,
    /// The thaw keeper's process id, if it is running (it thaws frozen filesystems should the
    /// daemon die mid-hold; started again when needed).
    #[serde(default)]
    pub thaw_keeper: Option<u32>,
    /// `live` files in use, and by what: a stop is refused while there are any.
    #[serde(default)]
    pub live_in_use: Vec<String>,
    /// Whether other users than the daemon's may see the mount (`--allow-other`; Samba's
    /// users need it).
    #[serde(default)]
    pub allow_other: bool,
    /// The worker that answers (the holder keeps the mount and the socket across workers).
    #[serde(default)]
    pub worker: Option<WorkerStatus>,
    /// The configuration file the daemon read at start, if any.
    #[serde(default)]
    pub config: Option<String>,
    /// What was wrong in it (`file:line: what to change`); the rest was used.
    #[serde(default)]
    pub config_errors: Vec<String>,
    /// The index of each volume with a diff area.
    #[serde(default)]
    pub indexes: Vec<IndexStatus>,
}

/// A volume's index of preserved chunks: a checkpoint on disk read through a bounded page
/// cache, plus the records added since in memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexStatus {
    /// The volume.
    pub volume: String,
    /// Chunks preserved (records in the index).
    pub preserved_chunks: u64,
    /// Of them, in the checkpoint on disk.
    pub checkpointed_chunks: u64,
    /// Bytes of the checkpoint file.
    pub disk_bytes: u64,
    /// Bytes in memory besides the page cache (records since the checkpoint, fence keys,
    /// free-slot bitmap).
    pub memory_bytes: u64,
    /// The page cache's size (`--index-cache`), and what it holds now.
    pub cache_bytes: u64,
    /// See `cache_bytes`.
    pub cache_resident_bytes: u64,
    /// Lookups the cache answered, and those that read a page.
    pub cache_hits: u64,
    /// See `cache_hits`.
    pub cache_misses: u64,
    /// `cache_hits / (cache_hits + cache_misses)`, when there was a lookup.
    pub cache_hit_rate: Option<f64>,
    /// How long opening the diff area took at the last start (journal tail replayed, checkpoint
    /// opened), in seconds.
    pub open_seconds: Option<f64>,
}

/// What to attach at start for a volume: a loop device over its `live` file and, optionally,
/// a filesystem mounted from it (`mount -o loop`, so unmounting it detaches the device too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSpec {
    /// Where to mount the filesystem on the volume (an absolute directory outside the mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Its type (`mount -t`); found by `mount` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Its mount options (`mount -o`, e.g. `noatime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_options: Option<String>,
}

/// A volume's attachment as configured, and what is attached now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInfo {
    /// What the configuration asks for.
    pub spec: AttachSpec,
    /// The loop devices over the volume's `live` file now.
    pub devices: Vec<String>,
    /// Where the configured filesystem is mounted now (`None`: not mounted).
    pub mounted_at: Option<String>,
    /// Why the last attempt to attach failed, if it did.
    pub problem: Option<String>,
}

/// The daemon's current worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerStatus {
    /// 1 for the first worker, one more for each replacement.
    pub generation: u64,
    /// The worker's process id (`pid` of the status is the holder's: the daemon's main
    /// process, which systemd tracks).
    pub pid: u32,
    /// When this worker started, seconds since the Unix epoch (UTC).
    pub started_unix: f64,
    /// Why it started: `start`, a planned restart, or how the previous worker died.
    pub reason: String,
    /// `resend` (a crash delays I/O, fails nothing) or `replace-clones` (a crash fails the
    /// requests the dead worker was answering; the kernel lacks FUSE_NOTIFY_RESEND).
    pub crash_route: String,
}

/// A registered volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// The image file or block device.
    pub image: String,
    /// Its diff area (empty for a read-only volume).
    pub diff_area: String,
    /// Bytes.
    pub size: u64,
    /// Who keeps its copies (`system`, `windows-vss`, `none`).
    pub provider: String,
    /// Whether `live` refuses writes.
    pub read_only: bool,
    /// How many copies it has.
    pub copies: usize,
    /// The live file in the mount.
    pub live: String,
    /// Why the diff area stopped, if it did.
    pub failure: Option<String>,
    /// What the configuration attaches for it at start, and what is attached now.
    #[serde(default)]
    pub attachment: Option<AttachmentInfo>,
}

/// A shadow copy as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyView {
    /// The copy's id.
    pub id: Uuid,
    /// Its set's id.
    pub set_id: Uuid,
    /// Its volume.
    pub volume: String,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created_unix: f64,
    /// The folder name in the mount, `@GMT-YYYY.MM.DD-HH.MM.SS`.
    pub exposed_name: String,
    /// Whether it survives a restart.
    pub persistent: bool,
    /// The set's context (`backup`, `client_accessible_writers`, …), if recorded.
    #[serde(default)]
    pub context: Option<String>,
    /// Attribute names (`persistent`/`volatile`, `client_accessible`, …).
    pub attributes: Vec<String>,
    /// The attribute bits as stored (ours, or Windows' `VSS_VOLSNAP_ATTR_*` flags).
    pub attribute_flags: u32,
    /// Who keeps the copy: `system` (our diff area) or `windows-vss` (a Windows store).
    pub provider: String,
    /// The filesystem found in the copy (`ext4`, `vfat`, `ntfs`, `raw`), once it was looked at.
    pub filesystem: Option<String>,
    /// Bytes of the diff area the volume's copies use together.
    pub diff_area_used: u64,
    /// Where the copy is exposed outside the mount (directories, loop devices).
    #[serde(default)]
    pub exposed_at: Vec<String>,
    /// Why it cannot be read, if it cannot.
    pub failed: Option<String>,
    /// Why it is stale, if it is: the volume was written while nobody served it, after the copy
    /// was taken; blocks changed then were not preserved, so the copy may show some of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// Why the filesystem in it is damaged, once a request found it so (its raw image and the
    /// rest of its tree stay readable; the damaged parts give EIO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_damage: Option<String>,
    /// What it is for, in words (`create --description`; `timeline` for scheduled copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its `key=value` labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The volume's retention policy may delete it (taken by the schedule, or created with
    /// `cleanup`).
    #[serde(default)]
    pub cleanup: bool,
}

/// One changed path ([`Answer::Changes`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChangeView {
    /// `added`, `deleted`, `modified` or `metadata`.
    pub change: String,
    /// From the filesystem's root, e.g. `/dir/file`.
    pub path: String,
}

/// A set just taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetView {
    /// The set's id.
    pub set_id: Uuid,
    /// One copy per volume.
    pub copies: Vec<CopyView>,
    /// Microseconds live writes were held by the engine.
    pub hold_us: u64,
    /// Microseconds from the first filesystem freeze to the last thaw.
    pub frozen_us: u64,
    /// Mount points whose filesystems were frozen for the set.
    pub frozen: Vec<String>,
    /// Writers that took part.
    #[serde(default)]
    pub writers: Vec<String>,
    /// Writers left out, and why (disconnected, failed earlier, excluded).
    #[serde(default)]
    pub skipped_writers: Vec<String>,
}

/// A volume's diff area.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageInfo {
    /// The volume.
    pub volume: String,
    /// The diff area's directory.
    pub diff_area: String,
    /// Bytes of preserved chunks.
    pub used_bytes: u64,
    /// Bytes the store file takes.
    pub allocated_bytes: u64,
    /// `None`: unbounded.
    pub max_bytes: Option<u64>,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Copies it serves.
    pub copies: usize,
}

/// A byte range of the volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeView {
    /// Start.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

impl Reply {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error(ErrorReply { kind, message: message.into() })
    }
}

/// Context and attribute bits kept with each copy (stored by the engine, read by nobody below).
pub mod attributes {
    /// Exposed in the mount (`VSS_VOLSNAP_ATTR_CLIENT_ACCESSIBLE`).
    pub const CLIENT_ACCESSIBLE: u32 = 1 << 0;
    /// Taken without writers (`VSS_VOLSNAP_ATTR_NO_WRITERS`).
    pub const NO_WRITERS: u32 = 1 << 1;
    /// Filesystems on the volume were frozen for the instant.
    pub const FS_FROZEN: u32 = 1 << 2;
    /// Released when the requester's connection ends (the opposite of
    /// `VSS_VOLSNAP_ATTR_NO_AUTO_RELEASE`).
    pub const AUTO_RELEASE: u32 = 1 << 3;
    const CONTEXT_SHIFT: u32 = 8;
    const CONTEXT_MASK: u32 = 0xf << CONTEXT_SHIFT;

    /// The bits for a set of `context`.
    pub fn with_context(bits: u32, context: super::Context) -> u32 {
        (bits & !CONTEXT_MASK) | (context.code() << CONTEXT_SHIFT)
    }

    /// The context recorded in `bits`.
    pub fn context(bits: u32) -> Option<super::Context> {
        super::Context::from_code((bits & CONTEXT_MASK) >> CONTEXT_SHIFT)
    }

    /// Names of the bits set in `bits`, plus `persistent` or `volatile`.
    pub fn names(bits: u32, persistent: bool) -> Vec<String> {
        let mut v = vec![if persistent { "persistent" } else { "volatile" }.to_string()];
        for (bit, name) in
            [(CLIENT_ACCESSIBLE, "client_accessible"), (NO_WRITERS, "no_writers"), (FS_FROZEN, "fs_frozen"), (AUTO_RELEASE, "auto_release")]
        {
            if bits & bit != 0 {
                v.push(name.to_string());
            }
        }
        v
    }
}

/// Names of Windows' `VSS_VOLSNAP_ATTR_*` flags.
pub fn windows_attribute_names(flags: u32) -> Vec<String> {
    const NAMES: [(u32, &str); 18] = [
        (0x1, "persistent"),
        (0x2, "no_auto_recovery"),
        (0x4, "client_accessible"),
        (0x8, "no_auto_release"),
        (0x10, "no_writers"),
        (0x20, "transportable"),
        (0x40, "not_surfaced"),
        (0x80, "not_transacted"),
        (0x1_0000, "hardware_assisted"),
        (0x2_0000, "differential"),
        (0x4_0000, "plex"),
        (0x8_0000, "imported"),
        (0x10_0000, "exposed_locally"),
        (0x20_0000, "exposed_remotely"),
        (0x40_0000, "autorecover"),
        (0x80_0000, "rollback_recovery"),
        (0x100_0000, "delayed_postsnapshot"),
        (0x200_0000, "txf_recovery"),
    ];
    NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| n.to_string()).collect()
}

/// `@GMT-YYYY.MM.DD-HH.MM.SS` for Unix seconds (UTC), the name Samba's `vfs_shadow_copy2` and
/// Windows "Previous Versions" use.
pub fn gmt_name(secs: u64) -> String {
    let (y, m, d) = civil_date(secs);
    let rem = secs % 86400;
    format!("@GMT-{y:04}.{m:02}.{d:02}-{:02}.{:02}.{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The UTC date (year, month 1-12, day 1-31) of Unix seconds `secs`.
pub fn civil_date(secs: u64) -> (i64, u32, u32) {
    let days = secs / 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// The Unix seconds of a `@GMT-…` name.
pub fn parse_gmt_name(name: &str) -> Option<u64> {
    let s = name.strip_prefix("@GMT-")?;
    let b = s.as_bytes();
    if b.len() != 19 || b[4] != b'.' || b[7] != b'.' || b[10] != b'-' || b[13] != b'.' || b[16] != b'.' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmt_names_round_trip() {
        assert_eq!(gmt_name(0), "@GMT-1970.01.01-00.00.00");
        assert_eq!(gmt_name(1_795_500_600), "@GMT-2026.11.24-06.10.00");
        for s in [0u64, 951_782_400, 1_795_500_600, 4_102_444_799] {
            assert_eq!(parse_gmt_name(&gmt_name(s)), Some(s));
        }
        assert_eq!(parse_gmt_name("@GMT-2026.13.01-00.00.00"), None);
        assert_eq!(parse_gmt_name("GMT-2026.11.24-06.10.00"), None);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_ops() {
        let ok: Request = serde_json::from_str(r#"{"v":1,"op":"list","args":{"volume":null}}"#).unwrap();
        assert!(matches!(ok.op, Op::List { volume: None }));
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"list","args":{"volume":null,"x":1}}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"v":1,"op":"format_disk"}"#).is_err());
        let unit: Request = serde_json::from_str(r#"{"v":1,"op":"volume_list"}"#).unwrap();
        assert!(matches!(unit.op, Op::VolumeList));
    }

    #[test]
    fn create_defaults_and_contexts() {
        let r: Request = serde_json::from_str(r#"{"v":1,"op":"create","args":{"volumes":["a"]}}"#).unwrap();
        let Op::Create(c) = r.op else { panic!("not a create: {:?}", r.op) };
        assert_eq!(c.context, Context::ClientAccessibleWriters);
        assert!(c.is_persistent() && !c.keep_after_disconnect && !c.defer_backup_complete);
        let r: Request = serde_json::from_str(r#"{"v":1,"op":"create","args":{"volumes":["a"],"context":"backup"}}"#).unwrap();
        let Op::Create(c) = r.op else { panic!() };
        assert!(!c.is_persistent() && c.context.with_writers() && !c.context.client_accessible());
        for ctx in Context::ALL {
            let bits = attributes::with_context(attributes::CLIENT_ACCESSIBLE | attributes::AUTO_RELEASE, ctx);
            assert_eq!(attributes::context(bits), Some(ctx));
            assert_eq!(bits & 0xff, attributes::CLIENT_ACCESSIBLE | attributes::AUTO_RELEASE);
        }
        assert_eq!(attributes::context(attributes::CLIENT_ACCESSIBLE), None);
    }
}
