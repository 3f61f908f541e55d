//! Typed errors of the library. Each variant's message says what failed and, where it can, what
//! to do about it.

use std::io;

use thiserror::Error;
use uuid::Uuid;

/// Which structure of the diff area a corruption was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiffAreaPart {
    /// The header of a journal file (both copies were checked).
    JournalHeader,
    /// The checkpointed index file (`index.0`/`index.1`).
    Index,
}

impl std::fmt::Display for DiffAreaPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiffAreaPart::JournalHeader => "journal header",
            DiffAreaPart::Index => "checkpointed index",
        })
    }
}

/// Failures of the diff area itself (its files, its format).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiffAreaError {
    /// An I/O call on a diff-area file failed.
    #[error("diff-area I/O failed while {what}: {source}")]
    Io {
        /// What the call was doing.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A structure on disk does not decode.
    #[error("the diff area's {what} is damaged: {detail}")]
    Corrupt {
        /// Which structure.
        what: DiffAreaPart,
        /// Byte offset of the structure in its file, where one is known.
        offset: Option<u64>,
        /// What is wrong with it.
        detail: String,
    },
    /// Written by a newer shadowcopy.
    #[error("the diff area was written by format version {found}; this shadowcopy reads up to version {supported} — upgrade shadowcopy to open it")]
    NewerFormat {
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An earlier write or sync failed; the diff area refuses further use until reopened.
    #[error("the diff area stopped after an earlier failure ({0}); reopen it once the cause is fixed")]
    Stopped(String),
}

/// Errors of the engine's API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on the volume failed.
    #[error("volume I/O failed while {what}: {source}")]
    VolumeIo {
        /// What the call was doing.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The diff area failed.
    #[error(transparent)]
    DiffArea(#[from] DiffAreaError),
    /// A range beyond the end of the volume.
    #[error("range {offset}+{len} is beyond the end of the {size}-byte volume")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The volume's size.
        size: u64,
    },
    /// No shadow copy with this id on this volume.
    #[error("no shadow copy {0} on this volume (list the copies to see which exist)")]
    NoSuchCopy(Uuid),
    /// The copy is marked failed and cannot be read.
    #[error("shadow copy {id} has failed and cannot be read: {reason}")]
    CopyFailed {
        /// The copy.
        id: Uuid,
        /// Why it failed.
        reason: String,
    },
    /// The copy was deleted while the call was using it.
    #[error("shadow copy {0} was deleted while it was being used")]
    CopyDeleted(Uuid),
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The diff area belongs to a volume of another size.
    #[error("the volume is {found} bytes but this diff area was made for a {expected}-byte volume; use the diff area of this volume, or create a new one")]
    VolumeSizeMismatch {
        /// The size the diff area was made for.
        expected: u64,
        /// The volume's size now.
        found: u64,
    },
    /// The diff area stopped after an I/O failure; live writes go on, copies cannot be made.
    #[error("shadow copies are unavailable on this volume: {0}")]
    Unavailable(String),
    /// The directory holds no diff area.
    #[error("there is no diff area in {0}; create one first")]
    NoDiffArea(String),
    /// The volume image could not be opened exclusively.
    #[error(transparent)]
    Open(#[from] crate::volume::OpenError),
    /// Another process has the diff area open.
    #[error("the diff area {0} is in use by another process")]
    Locked(String),
}

impl Error {
    pub(crate) fn volume(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::VolumeIo { what, source }
    }
}
