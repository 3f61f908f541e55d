//! The persistent diff area: where chunks overwritten after a shadow copy are kept.
//!
//! - [`format`]: the on-disk layout (the specification lives in its module docs).
//! - [`journal`]: the two-file, checksummed, compacting journal.
//! - [`index`]: `(chunk, epoch) → slot` in RAM: the layers added since the last merge.
//! - [`base`]: the checkpointed index file, opened without being read whole.
//! - [`layered`]: the index as one map: in-memory layers over the checkpoint.
//! - [`catalog`]: copies + index + the rules that tie them (what to preserve, what is garbage).
//! - [`slots`]: free and in-use slots of the `store` file.
//! - [`recovery`]: the catalog rebuilt from the journal.
//! - [`redo`]: answered live writes still held back, kept through a death of the process.
//!
//! The diff area never reads the base volume and never decides when to commit; the engine does.

pub mod base;
pub(crate) mod catalog;
pub(crate) mod format;
pub mod index;
pub(crate) mod journal;
pub(crate) mod layered;
pub(crate) mod recovery;
pub mod redo;
pub(crate) mod slots;
