//! Test support shared by unit and integration tests and benchmarks (feature `testing`).
//!
//! - [`doubles`]: in-memory and power-loss-simulating [`crate::volume::Storage`] backends.
//! - [`system`]: guards for real system resources (temporary directories, loop devices, mounts,
//!   child processes) that clean up on drop, also when a test fails, and prerequisite checks that
//!   fail loudly instead of skipping.

pub mod doubles;
pub mod system;

pub use doubles::*;
