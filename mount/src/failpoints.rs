//! Fault injection for end-to-end tests, off unless `SHADOWCOPYD_FAILPOINTS_DIR` names a
//! directory when the daemon starts. A fail point is active while a file of its name exists in
//! that directory, so a test can switch it on and off from outside:
//!
//! - `stall-live-writes`: writes to any `live` file wait until the file is removed (a device that
//!   stops answering; lets a test make a filesystem freeze hang).
//! - `stall-tree-open-<volume>`: opening the filesystem in a copy of that volume waits until the
//!   file is removed (a copy whose parsing never ends; lets a test check that other volumes are
//!   served meanwhile).
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
    let _ = DIR.set(dir);
}

fn active(name: &str) -> bool {
    match DIR.get() {
        Some(Some(dir)) => dir.join(name).exists(),
        _ => false,
    }
}

/// Waits while `stall-live-writes` is active.
pub fn stall_live_write() {
    while active("stall-live-writes") {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits while `stall-tree-open-<volume>` is active.
pub fn stall_tree_open(volume: &str) {
    let name = format!("stall-tree-open-{volume}");
    while active(&name) {
        std::thread::sleep(Duration::from_millis(20));
    }
}
