//! Fault injection for end-to-end tests, off unless `SHADOWCOPYD_FAILPOINTS_DIR` names a
//! directory when the daemon starts. A fail point is active while a file of its name exists in
//! that directory, so a test can switch it on and off from outside:
//!
//! - `stall-live-writes`: writes to any `live` file wait until the file is removed (a device that
//!   stops answering; lets a test make a filesystem freeze hang).
//! - `stall-live-open-answer`: an open of a `live` file, once counted, waits before its answer
//!   until the file is removed (lets a test kill the worker between the two).
//! - `stall-tree-open-<volume>`: opening the filesystem in a copy of that volume waits until the
//!   file is removed (a copy whose parsing never ends; lets a test check that other volumes are
//!   served meanwhile).
//! - `stall-after-freeze`: a set's filesystems stay frozen (after `FIFREEZE`, before the
//!   instant) until the file is removed (lets a test kill the daemon mid-hold).
//!
//! - `stall-set-between-volumes`, `stall-set-before-complete`: a persistent set of several
//!   volumes stops after its first copy is durable, or once every copy is durable but none is
//!   marked complete (lets a test kill the daemon there; see `shadowcopy::SetStep`).
//!
//! A stalled fail point `NAME` creates `NAME.reached` in the directory, so a test can wait
//! until the daemon is there.
//!
//! Never active in normal use: without the variable every check is one relaxed atomic load.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Reads the environment once, at start.
pub fn init() {
    let dir = std::env::var_os("SHADOWCOPYD_FAILPOINTS_DIR").map(PathBuf::from);
    if let Some(d) = &dir {
        tracing::warn!(dir = %d.display(), "fail points are enabled (tests only)");
    }
    if dir.is_some() {
        shadowcopy::set_hooks::install(|step| match step {
            shadowcopy::SetStep::BetweenVolumes => stall("stall-set-between-volumes"),
            shadowcopy::SetStep::BeforeComplete => stall("stall-set-before-complete"),
        });
    }
    let _ = DIR.set(dir);
}

fn active(name: &str) -> bool {
    match DIR.get() {
        Some(Some(dir)) => dir.join(name).exists(),
        _ => false,
    }
}

/// Waits while fail point `name` is active; says it was reached (`NAME.reached`).
pub fn stall(name: &str) {
    if !active(name) {
        return;
    }
    if let Some(Some(dir)) = DIR.get() {
        let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
    }
    while active(name) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits while `stall-live-writes` is active.
pub fn stall_live_write() {
    stall("stall-live-writes");
}

/// Waits while `stall-live-open-answer` is active.
pub fn stall_live_open_answer() {
    stall("stall-live-open-answer");
}

/// Waits while `stall-tree-open-<volume>` is active.
pub fn stall_tree_open(volume: &str) {
    stall(&format!("stall-tree-open-{volume}"));
}
