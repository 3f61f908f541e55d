//! The daemon's persistent state: which volumes are registered (name, image, diff area) and the
//! exposed name of each of their copies, in `<state-dir>/volumes.json`, replaced atomically
//! (write, fsync, rename, fsync the directory). Also the lock that keeps a second daemon off the
//! same state directory.
//!
//! Never holds shadow copy data: the diff areas are the engine's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const FORMAT: u32 = 1;

/// One registered volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    /// The volume's name.
    pub name: String,
    /// Its image.
    pub image: PathBuf,
    /// Empty for a read-only volume.
    pub diff_area: PathBuf,
    /// Exposed read-only with the Windows shadow copies found on it (no diff area).
    #[serde(default)]
    pub read_only: bool,
    /// Exposed name (`@GMT-…`) of each copy, so that names stay stable across restarts even
    /// when two copies were taken within one second.
    #[serde(default)]
    pub exposed: BTreeMap<Uuid, String>,
    /// The newest exposed name ever given on this volume, as seconds since the epoch: a name,
    /// once used, is never given to another copy (Samba clients and people keep names).
    #[serde(default)]
    pub last_name_secs: Option<u64>,
    /// For a block device: what identifies it beyond its path (checked at every open, so that
    /// another disk given the same path is refused, not served with this volume's diff area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<shadowcopy::probe::DeviceIdentity>,
    /// Its schedule and retention policy, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<shadowcopy::protocol::Policy>,
    /// What people said about its copies (description, labels) and which the policy owns; a
    /// copy with none of these has no entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<Uuid, CopyNotes>,
}

/// What the daemon keeps about a copy besides the engine's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CopyNotes {
    /// What it is for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `key=value` labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The volume's retention policy may delete it.
    #[serde(default)]
    pub cleanup: bool,
    /// Taken by the volume's schedule (the newest one decides when the next is due).
    #[serde(default)]
    pub timeline: bool,
}

impl CopyNotes {
    /// Nothing to keep.
    pub fn is_empty(&self) -> bool {
        *self == CopyNotes::default()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    volumes: Vec<VolumeRecord>,
}

/// The state directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates (if needed) and locks `dir`; fails with a clear message if another daemon holds it.
    pub fn lock(dir: &Path) -> Result<StateDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
        let lock_path = dir.join("daemon.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
            bail!(
                "another shadowcopyd (pid {}) is using the state directory {}; stop it first, or give this one another --state-dir",
                pid.trim(),
                dir.display()
            );
        }
        lock.set_len(0).ok();
        (&lock).write_all(format!("{}\n", std::process::id()).as_bytes()).ok();
        Ok(StateDir { dir: dir.to_path_buf(), _lock: lock })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where a volume's diff area goes unless the user chose a place.
    pub fn default_diff_area(&self, volume: &str) -> PathBuf {
        self.dir.join("diffareas").join(volume)
    }

    /// The registered volumes (none if the state file does not exist yet).
    pub fn load(&self) -> Result<Vec<VolumeRecord>> {
        let p = self.dir.join("volumes.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let s: StateFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is damaged; restore it from a backup or remove it and add the volumes again", p.display()))?;
        if s.format > FORMAT {
            bail!("{} was written by a newer shadowcopyd (format {}; this one reads {FORMAT}); upgrade", p.display(), s.format);
        }
        Ok(s.volumes)
    }

    /// Writes the registered volumes atomically (a new file renamed over the old).
    pub fn save(&self, volumes: &[VolumeRecord]) -> Result<()> {
        let p = self.dir.join("volumes.json");
        let tmp = self.dir.join("volumes.json.tmp");
        let text = serde_json::to_string_pretty(&StateFile { format: FORMAT, volumes: volumes.to_vec() }).context("encoding the state")?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            File::open(&self.dir)?.sync_all()
        };
        write().with_context(|| format!("writing {}", p.display()))
    }
}
