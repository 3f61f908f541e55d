//! Test support shared by unit and integration tests and benchmarks (feature `testing`).
//!
//! - [`alloc`]: a counting global allocator for benchmarks' memory figures.
//! - [`doubles`]: in-memory and power-loss-simulating [`crate::volume::Storage`] backends.
//! - [`hostile`]: images damaged the way attackers damage them (for the readers' and the daemon's
//!   regression tests).
//! - [`system`]: guards for real system resources (temporary directories, loop devices, mounts,
//!   child processes) that clean up on drop, also when a test fails, and prerequisite checks that
//!   fail loudly instead of skipping.

#[allow(unsafe_code)] // a GlobalAlloc is an unsafe impl; see the module's docs
pub mod alloc;
pub mod doubles;
pub mod hostile;
pub mod system;

pub use doubles::*;
