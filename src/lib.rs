//! shadowcopy: Volume Shadow Copy for Linux.
//!
//! Point-in-time, read-only shadow copies of live volumes, kept in a copy-on-write diff area.
//! The library is layered; dependencies point one way (down this list):
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`engine`] | the system provider: copy-before-write of live writes, the instant of shadow copy sets, group commit, reads of copies, delete/revert/export/diff | knows file formats of filesystems inside volumes |
//! | [`cache`] | the LRU chunk cache in front of the base volume | caches diff-area slots |
//! | [`diffarea`] | the diff area: on-disk format, journal, index, slots, recovery | reads the base volume |
//! | [`volume`] | raw bytes: the [`volume::Storage`] seam and its file backend | knows copies exist |
//! | `sys` | the only `unsafe`: kernel ioctls | grows beyond single calls |
//!
//! Beside the engine, for the daemon and the CLI:
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`coordinator`] | registered writers and their states, the requester sequence around a set's instant, its timeouts, backup sessions | touches volume bytes (the hold is handed in) |
//! | [`hold`] | flush and hold: finding filesystems on live files, FIFREEZE/FITHAW with a watchdog | takes copies |
//! | [`protocol`] | the control-socket wire types and a client | performs an operation |
//! | [`writer`] | the writer SDK (a trait with a default per event, a reconnecting runner) | decides the order of events |
//! | [`fsread`] | read-only filesystem readers over a copy (ext2/3/4, FAT, NTFS) | writes |
//! | [`vss`] | Windows' VSS stores on NTFS volumes, as a read-only provider | writes |
//!
//! `docs/design.md` is the specification: format, algorithms, crash-safety argument and
//! concurrency rules.

pub mod cache;
pub mod coordinator;
pub mod diffarea;
pub mod engine;
mod error;
pub mod fsread;
pub mod hold;
pub mod probe;
pub mod protocol;
pub mod size;
#[allow(unsafe_code)] // the one home of `unsafe` (workspace lint: denied everywhere else)
pub(crate) mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod volume;
pub mod vss;
pub mod writer;

pub use engine::{
    create_set, ChangedRange, CopyInfo, CreateOptions, DeleteReason, DiffAreaFiles, DiffAreaOptions, EngineOptions, Event, MaxSize,
    SetInfo, ShadowVolume, Usage,
};
pub use error::{DiffAreaError, DiffAreaPart, Error};
