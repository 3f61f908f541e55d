//! `shadowcopyd`, the mount daemon: hosts the engine and the coordinator, serves the control
//! socket and presents volumes and their shadow copies through FUSE (`fuser`).
//!
//! Not built yet: the daemon issue fills this crate. It must never reach into the diff-area
//! format; it talks to the library's `engine` API only.
