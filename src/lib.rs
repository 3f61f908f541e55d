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
//! | `fingerprint` | checksums of where filesystems record being mounted or written (edges, NTFS system records), to notice writes made while nobody served the volume | writes, or reads more than those regions |
//! | `sys` | the only `unsafe`: kernel ioctls | grows beyond single calls |
//!
//! Beside the engine, for the daemon and the CLI:
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`provider`] | the seam every provider implements ([`Provider`], [`CopyInfo`]) and export over any provider; the engine and `vss` are its siblings | depends on a provider |
//! | [`probe`] | what the kernel says about loop devices and mounts (`/sys/block`, mountinfo, unescaped) | changes anything |
//! | `bytes` | little/big-endian readers over untrusted buffers, once | panics |
//! | [`coordinator`] | registered writers and their states, the requester sequence around a set's instant, its timeouts, backup sessions | touches volume bytes (the hold is handed in) |
//! | [`hold`] | flush and hold: finding filesystems on live files, FIFREEZE/FITHAW with a watchdog | takes copies |
//! | [`protocol`] | the control-socket wire types and a client | performs an operation |
//! | [`writer`] | the writer SDK (a trait with a default per event, a reconnecting runner) | decides the order of events |
//! | [`fsread`] | read-only filesystem readers over a copy (ext2/3/4, FAT, NTFS) | writes |
//! | [`vss`] | Windows' VSS stores on NTFS volumes, as a read-only provider | writes |
//!
//! Cargo features: `cli` (the `shadowcopy` command), `fat` and `ntfs` (readers beside ext2/3/4),
//! all on by default; a writer depends on the library with `default-features = false` and
//! compiles none of them. `testing` adds the test doubles, system-test guards and a counting
//! allocator for benchmarks.
//!
//! `docs/design.md` is the specification: format, algorithms, crash-safety argument and
//! concurrency rules.

#![warn(missing_docs)]

mod bytes;
pub mod cache;
pub mod coordinator;
pub mod descriptors;
pub mod diffarea;
pub mod engine;
mod error;
mod fingerprint;
pub mod fsread;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hold;
pub mod probe;
pub mod protocol;
pub mod provider;
pub mod size;
#[allow(unsafe_code)] // the one home of `unsafe` (workspace lint: denied everywhere else)
pub(crate) mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod volume;
pub mod vss;
pub mod writer;

pub use engine::{
    create_set, set_hooks, ChangedRange, CreateOptions, DeleteReason, DiffAreaFiles, DiffAreaOptions, EngineOptions, Event, MaxSize,
    RedoReport, SetInfo, SetStep, ShadowVolume, Usage,
};
pub use error::{DiffAreaError, DiffAreaPart, Error};
pub use provider::{CopyInfo, Provider};
