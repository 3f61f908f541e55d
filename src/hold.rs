//! Flush and hold: freezing the filesystems that live on a volume for the instant of a set.
//!
//! A volume's `live` file may back a loop device with a mounted filesystem. Before a set's
//! instant, each such filesystem is frozen (`FIFREEZE`: its dirty data reaches the loop device,
//! and so the engine, and new writes block), and thawed after. Which filesystems: every loop
//! device whose backing file is one of the set's live files (`/sys/block/loop*/loop/backing_file`),
//! and the mounts of those devices in this mount namespace (`/proc/self/mountinfo`).
//!
//! The hold has a hard limit: a [`Frozen`] guard thaws everything when dropped, and a watchdog
//! thaws at the deadline even if the caller is stuck. A freeze that does not return in time is
//! abandoned (and thawed as soon as it does return).
//!
//! Never touches the volume's bytes; never holds anything past its deadline.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use thiserror::Error;

use crate::{probe, sys};

/// A mounted filesystem that lives on a loop device backed by a live file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountedFs {
    /// `/dev/loopN`.
    pub device: String,
    /// `major:minor` of the device.
    pub dev: String,
    /// Where it is mounted (one of the places, if several).
    pub mount_point: PathBuf,
}

/// Why a hold failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HoldError {
    /// Reading what the kernel says about loop devices and mounts failed.
    #[error("reading {what}: {source}")]
    Probe {
        /// What was read.
        what: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// FIFREEZE failed.
    #[error("freezing the filesystem at {mount_point} failed: {source}")]
    Freeze {
        /// The filesystem.
        mount_point: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// FIFREEZE did not return within the hold limit.
    #[error("freezing the filesystem at {mount_point} took longer than the {limit:?} hold limit; everything was thawed")]
    FreezeTimeout {
        /// The filesystem.
        mount_point: String,
        /// The hold limit.
        limit: Duration,
    },
}

/// The filesystems mounted (in this mount namespace) from loop devices backed by any of `files`.
/// Each filesystem appears once, even if mounted at several places.
pub fn filesystems_on(files: &[PathBuf]) -> Result<Vec<MountedFs>, HoldError> {
    let devices: Vec<probe::LoopDevice> = probe::loop_devices()
        .map_err(|source| HoldError::Probe { what: "/sys/block".into(), source })?
        .into_iter()
        .filter(|l| files.contains(&l.backing_file))
        .collect();
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let mounts = probe::mounts().map_err(|source| HoldError::Probe { what: "/proc/self/mountinfo".into(), source })?;
    let mut found: Vec<MountedFs> = Vec::new();
    for m in mounts {
        if let Some(l) = devices.iter().find(|l| l.dev == m.dev) {
            if !found.iter().any(|f| f.dev == l.dev) {
                found.push(MountedFs { device: l.device.clone(), dev: l.dev.clone(), mount_point: m.mount_point });
            }
        }
    }
    Ok(found)
}

/// Thaws the filesystem the open directory `dir` is on: `true` if it was frozen, `false` if it
/// was not (the kernel's `EINVAL`).
pub fn thaw(dir: &File) -> io::Result<bool> {
    match sys::thaw_filesystem(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

struct Shared {
    /// Open directories of the frozen filesystems.
    frozen: Mutex<Vec<(PathBuf, File)>>,
    /// Set when the hold ended (released or expired): late freezes thaw at once.
    ended: AtomicBool,
    expired: AtomicBool,
    done: (Mutex<bool>, Condvar),
}

impl Shared {
    fn thaw_all(&self) {
        let frozen = std::mem::take(&mut *self.frozen.lock());
        for (mp, dir) in frozen {
            match sys::thaw_filesystem(&dir) {
                Ok(()) => tracing::debug!(mount_point = %mp.display(), "thawed"),
                Err(e) => tracing::error!(mount_point = %mp.display(), error = %e, "thawing failed"),
            }
        }
    }
}

/// Filesystems frozen for a set; thawed on drop, or by the watchdog at the deadline.
pub struct Frozen {
    shared: Arc<Shared>,
    started: Instant,
    /// Where the frozen filesystems are mounted.
    pub mount_points: Vec<PathBuf>,
}

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frozen").field("mount_points", &self.mount_points).finish()
    }
}

impl Frozen {
    /// Whether the watchdog already thawed because the limit passed.
    pub fn expired(&self) -> bool {
        self.shared.expired.load(Ordering::Acquire)
    }

    /// Thaws now; returns how long the filesystems were held.
    pub fn release(self) -> (Duration, bool) {
        let held = self.started.elapsed();
        let expired = self.expired();
        drop(self);
        (held, expired)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.shared.ended.store(true, Ordering::Release);
        self.shared.thaw_all();
        let (lock, cv) = &self.shared.done;
        *lock.lock() = true;
        cv.notify_all();
    }
}

/// Freezes `filesystems`; all are thawed when the returned guard drops, or at `limit` after the
/// first freeze was asked for, whichever comes first. If a freeze fails or does not return
/// within the limit, everything frozen so far is thawed and the error says which.
pub fn freeze(filesystems: &[MountedFs], limit: Duration) -> Result<Frozen, HoldError> {
    let started = Instant::now();
    let deadline = started + limit;
    let shared = Arc::new(Shared {
        frozen: Mutex::new(Vec::new()),
        ended: AtomicBool::new(false),
        expired: AtomicBool::new(false),
        done: (Mutex::new(false), Condvar::new()),
    });
    let watchdog = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("shadowcopy-hold-watchdog".into())
        .spawn(move || {
            let (lock, cv) = &watchdog.done;
            let mut done = lock.lock();
            while !*done {
                if cv.wait_until(&mut done, deadline).timed_out() {
                    if !*done {
                        tracing::error!(?limit, "hold limit reached: thawing every filesystem of the set");
                        watchdog.expired.store(true, Ordering::Release);
                        watchdog.ended.store(true, Ordering::Release);
                        drop(done);
                        watchdog.thaw_all();
                    }
                    return;
                }
            }
        })
        .map_err(|source| HoldError::Probe { what: "spawning the hold watchdog".into(), source })?;
    let guard = Frozen { shared: Arc::clone(&shared), started, mount_points: filesystems.iter().map(|f| f.mount_point.clone()).collect() };
    for fs in filesystems {
        let mp = fs.mount_point.clone();
        let dir = File::open(&mp).map_err(|source| HoldError::Freeze { mount_point: mp.display().to_string(), source })?;
        // FIFREEZE can block (writeback of a stuck device): it runs on its own thread, so that the
        // hold limit holds whatever the kernel does.
        let (tx, rx) = mpsc::channel();
        let late = Arc::clone(&shared);
        let mp2 = mp.clone();
        std::thread::spawn(move || {
            let r = sys::freeze_filesystem(&dir);
            let mut frozen = late.frozen.lock();
            match r {
                Ok(()) if late.ended.load(Ordering::Acquire) => {
                    drop(frozen);
                    let _ = sys::thaw_filesystem(&dir);
                    tracing::warn!(mount_point = %mp2.display(), "a freeze returned after the hold ended; thawed it");
                }
                Ok(()) => {
                    frozen.push((mp2, dir));
                    drop(frozen);
                    let _ = tx.send(Ok(()));
                }
                Err(e) => {
                    drop(frozen);
                    let _ = tx.send(Err(e));
                }
            }
        });
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => tracing::debug!(mount_point = %mp.display(), device = %fs.device, "frozen"),
            Ok(Err(source)) => return Err(HoldError::Freeze { mount_point: mp.display().to_string(), source }),
            Err(_) => return Err(HoldError::FreezeTimeout { mount_point: mp.display().to_string(), limit }),
        }
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_to_freeze_is_an_empty_hold() {
        let none = filesystems_on(&[PathBuf::from("/nonexistent/live")]).unwrap();
        assert!(none.is_empty());
        let g = freeze(&none, Duration::from_secs(1)).unwrap();
        let (_, expired) = g.release();
        assert!(!expired);
    }
}
