//! Every way a control-socket operation can fail, each message written once.
//!
//! Owns the wording people see and the [`ErrorKind`] scripts match on ([`ServiceError::kind`]),
//! which is the table in `docs/protocol.md`. Never decides whether an operation fails: the
//! operations do, and name the variant.

use std::path::PathBuf;
use std::time::Duration;

use shadowcopy::protocol::ErrorKind;
use thiserror::Error;
use uuid::Uuid;

/// Why an operation was refused or failed.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The worker is handing over to a new one (or stopping): state changes wait for it.
    #[error("shadowcopyd is restarting its worker; try again in a moment")]
    Restarting,
    /// A request that cannot be valid (a missing or contradictory argument).
    #[error("{0}")]
    BadRequest(String),
    /// A volume name that cannot be a folder name.
    #[error("invalid volume name `{0}`: use 1-64 letters, digits, `.`, `_`, `-`, not starting with `.`, `@` or `-`")]
    InvalidVolumeName(String),
    /// No registered volume has this name.
    #[error("no volume named `{0}` (see `shadowcopy volume list`)")]
    NoVolume(String),
    /// No copy has this id.
    #[error("no shadow copy {0} (see `shadowcopy list`)")]
    NoCopy(Uuid),
    /// No copy belongs to this set.
    #[error("no shadow copy set {0} (see `shadowcopy list`)")]
    NoSet(Uuid),
    /// The volume has no copies (or no provider of copies).
    #[error("volume `{0}` has no shadow copies")]
    NoCopies(String),
    /// The name is registered already.
    #[error("a volume named `{0}` is already registered")]
    VolumeNameTaken(String),
    /// The image is registered already, under another name.
    #[error("{image} is already registered as volume `{volume}`")]
    ImageRegistered {
        /// The image.
        image: PathBuf,
        /// The volume it belongs to.
        volume: String,
    },
    /// The image path cannot be resolved.
    #[error("the image {image} cannot be opened: {source}")]
    ImageUnreadable {
        /// The image as given.
        image: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A path the daemon must not serve from, or write to, lies inside its own mount.
    #[error("{what} {path} is inside the daemon's mount; choose a place outside it ({why})")]
    InsideMount {
        /// What the path is for (`the image`, `the diff area`, `the directory`).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why that cannot work.
        why: &'static str,
    },
    /// Diff-area options given for a read-only volume.
    #[error("a read-only volume has no diff area: drop --diff-area, --max-size and --chunk-size")]
    ReadOnlyOptions,
    /// The diff-area directory already holds one.
    #[error("{0} already holds a diff area; choose another --diff-area or remove it")]
    DiffAreaExists(PathBuf),
    /// A setting out of range (`--max-size`, `--chunk-size`).
    #[error("invalid setting: {0}")]
    InvalidSetting(String),
    /// The volume could not be opened (its image, its diff area, the stores on it).
    #[error("{0}")]
    OpenFailed(String),
    /// An operation only the system provider has, asked of a read-only volume.
    #[error("volume `{0}` is read-only (it serves the shadow copies Windows left on it); shadowcopy takes, exports, reverts and diffs copies of read-write volumes only")]
    ReadOnlyVolume(String),
    /// A stop asked while `live` files are open.
    #[error(
        "not stopping: {0}. Unmount and detach what uses them (umount, losetup -d) and ask again, or stop anyway with `shadowcopy daemon stop --force` (their filesystems then fail)"
    )]
    InUseAtStop(String),
    /// `live` is open (a loop device, a program) and the operation needs it closed.
    #[error("{live} is open (a loop device or program uses it): unmount and detach what uses it (umount, losetup -d) before {action}")]
    LiveInUse {
        /// The live file.
        live: PathBuf,
        /// What was asked (`removing the volume`, `reverting`).
        action: &'static str,
    },
    /// A copy that is exposed outside the mount.
    #[error("shadow copy {copy} is exposed at {at}; undo that first (`shadowcopy unexpose PATH`)")]
    CopyExposed {
        /// The copy.
        copy: Uuid,
        /// Where (comma-separated).
        at: String,
    },
    /// A copy that is marked failed.
    #[error("shadow copy {copy} cannot be read: {reason}")]
    CopyFailed {
        /// The copy.
        copy: Uuid,
        /// Why.
        reason: String,
    },
    /// No filesystem was recognised in the copy, so there are no files to expose.
    #[error("no filesystem was recognized in shadow copy {0}; expose it as a device instead")]
    NoFilesystem(Uuid),
    /// The export's destination exists.
    #[error("{0} exists; choose a new file name")]
    ExportExists(String),
    /// Writes were held past the limit; the set was aborted.
    #[error("writes were held longer than the {0:?} limit; the set was aborted and everything thawed")]
    HoldExpired(Duration),
    /// Freezing a filesystem did not finish in time.
    #[error("{0}")]
    FreezeTimeout(String),
    /// The writers' side of a set failed; the set was aborted.
    #[error(transparent)]
    SetAborted(#[from] shadowcopy::coordinator::SetError),
    /// A writer refused a restore (PreRestore); nothing changed.
    #[error("{0}")]
    RestoreRefused(String),
    /// A writer selection that names writers that do not exist.
    #[error("{0}")]
    NoWriter(String),
    /// Making or undoing an exposure failed.
    #[error("{0}")]
    Expose(String),
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] shadowcopy::Error),
    /// Attaching or detaching a volume's loop device or filesystem failed.
    #[error("volume `{volume}`: {source}")]
    Attach {
        /// The volume.
        volume: String,
        /// What failed.
        source: crate::attach::AttachError,
    },
    /// The configuration file could not be changed.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigWriteError),
    /// Something else failed (flush and hold, the system).
    #[error("{0}")]
    Failed(String),
}

impl ServiceError {
    /// The kind a client sees (and scripts match on): one row of the table in `docs/protocol.md`.
    pub fn kind(&self) -> ErrorKind {
        use ServiceError as E;
        match self {
            E::BadRequest(_)
            | E::InvalidVolumeName(_)
            | E::InsideMount { .. }
            | E::ReadOnlyOptions
            | E::InvalidSetting(_)
            | E::ReadOnlyVolume(_)
            | E::NoFilesystem(_) => ErrorKind::BadRequest,
            E::NoVolume(_) | E::NoCopy(_) | E::NoSet(_) | E::NoCopies(_) | E::ImageUnreadable { .. } | E::NoWriter(_) => {
                ErrorKind::NotFound
            }
            E::VolumeNameTaken(_) | E::ImageRegistered { .. } | E::DiffAreaExists(_) | E::ExportExists(_) => ErrorKind::AlreadyExists,
            E::LiveInUse { .. } | E::CopyExposed { .. } | E::InUseAtStop(_) => ErrorKind::Busy,
            E::HoldExpired(_) | E::FreezeTimeout(_) => ErrorKind::Timeout,
            E::Restarting => ErrorKind::Restarting,
            E::Engine(e) => match e {
                shadowcopy::Error::NoSuchCopy(_) => ErrorKind::NotFound,
                shadowcopy::Error::Config(_) => ErrorKind::BadRequest,
                _ => ErrorKind::Failed,
            },
            E::SetAborted(e) => e.kind(),
            E::Attach { source: crate::attach::AttachError::Busy { .. } | crate::attach::AttachError::MountedElsewhere { .. }, .. } => {
                ErrorKind::Busy
            }
            E::OpenFailed(_)
            | E::CopyFailed { .. }
            | E::RestoreRefused(_)
            | E::Expose(_)
            | E::Attach { .. }
            | E::Config(_)
            | E::Failed(_) => ErrorKind::Failed,
        }
    }
}
