//! Exposures: a shadow copy made visible outside the mount, like diskshadow's `expose` — its
//! tree bind-mounted on a directory, or its raw image attached to a read-only loop device (a
//! block device the kernel's own filesystem drivers can mount).
//!
//! Owns the list of exposures and the system calls that make and undo them. An exposure lives
//! until it is undone or the daemon stops (the daemon undoes them all before it unmounts).
//! Never decides which copies exist or may be exposed: the service does.

use std::path::{Path, PathBuf};
use std::process::Command;

use parking_lot::Mutex;
use uuid::Uuid;

/// Where a copy is exposed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// The copy's tree, bind-mounted on this directory.
    Folder(PathBuf),
    /// The copy's raw image, on this read-only loop device.
    Device(String),
}

impl Place {
    /// The directory or device, as people name it.
    pub fn path(&self) -> String {
        match self {
            Place::Folder(p) => p.display().to_string(),
            Place::Device(d) => d.clone(),
        }
    }
}

/// A copy exposed somewhere.
#[derive(Debug, Clone)]
pub struct Exposure {
    /// The copy.
    pub copy: Uuid,
    /// Where.
    pub place: Place,
}

/// The exposures made by this daemon (and by the workers before this one on the same FUSE
/// connection: the ledger keeps them).
pub struct Exposures {
    list: Mutex<Vec<Exposure>>,
    ledger: std::sync::Arc<crate::ledger::NodeLedger>,
}

impl Exposures {
    /// The exposures the ledger knows of.
    pub fn new(ledger: std::sync::Arc<crate::ledger::NodeLedger>) -> Exposures {
        let list = ledger.exposures().into_iter().map(|(copy, place)| Exposure { copy, place }).collect();
        Exposures { list: Mutex::new(list), ledger }
    }

    fn add(&self, copy: Uuid, place: &Place) {
        self.ledger.exposed(copy, place);
        self.list.lock().push(Exposure { copy, place: place.clone() });
    }

    fn remove(&self, place: &Place) {
        self.ledger.unexposed(place);
        self.list.lock().retain(|x| &x.place != place);
    }

    /// Bind-mounts `tree` on the directory `at`. A directory that holds anything is refused
    /// unless `force`: the mount would hide what is in it.
    pub fn folder(&self, copy: Uuid, tree: &Path, at: &Path, force: bool) -> Result<Place, String> {
        let meta = std::fs::metadata(at).map_err(|e| format!("{}: {e}; give an existing directory", at.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", at.display()));
        }
        let mut entries = std::fs::read_dir(at).map_err(|e| format!("{}: {e}", at.display()))?;
        if !force && entries.next().is_some() {
            return Err(format!(
                "{} is not empty: the copy would hide what is in it until unexposed; give an empty directory, or --force",
                at.display()
            ));
        }
        let at = at.canonicalize().map_err(|e| format!("{}: {e}", at.display()))?;
        if self.list.lock().iter().any(|e| e.place == Place::Folder(at.clone())) {
            return Err(format!("a shadow copy is already exposed at {}", at.display()));
        }
        nix::mount::mount(Some(tree), &at, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| format!("bind-mounting {} on {}: {e}", tree.display(), at.display()))?;
        let place = Place::Folder(at);
        self.add(copy, &place);
        Ok(place)
    }

    /// Attaches `image` to a free read-only loop device.
    pub fn device(&self, copy: Uuid, image: &Path) -> Result<Place, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .map_err(|e| format!("running losetup (util-linux): {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup --read-only {}: {}", image.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        let place = Place::Device(String::from_utf8_lossy(&out.stdout).trim().to_string());
        self.add(copy, &place);
        Ok(place)
    }

    /// Undoes the exposure at `path` (a folder or a device); returns what it was.
    pub fn undo(&self, path: &str) -> Result<Exposure, String> {
        let canonical = Path::new(path).canonicalize().map(|p| p.display().to_string()).unwrap_or_else(|_| path.to_string());
        let e = self
            .list
            .lock()
            .iter()
            .find(|e| e.place.path() == path || e.place.path() == canonical)
            .cloned()
            .ok_or_else(|| format!("nothing is exposed at {path} (see `shadowcopy list`)"))?;
        release(&e.place, false)?;
        self.remove(&e.place);
        Ok(e)
    }

    /// Records an exposure without making it (the service's tests, which run without root).
    #[cfg(test)]
    pub(crate) fn record(&self, copy: Uuid, place: Place) {
        self.add(copy, &place);
    }

    /// Where `copy` is exposed.
    pub fn of(&self, copy: Uuid) -> Vec<String> {
        self.list.lock().iter().filter(|e| e.copy == copy).map(|e| e.place.path()).collect()
    }

    /// Undoes every exposure (at shutdown): folders still in use are detached lazily.
    pub fn undo_all(&self) {
        let all = self.list.lock().clone();
        for e in all {
            if let Err(err) = release(&e.place, true) {
                tracing::warn!(at = %e.place.path(), error = %err, "undoing an exposure failed");
            }
            self.remove(&e.place);
        }
    }
}

fn release(place: &Place, lazy: bool) -> Result<(), String> {
    match place {
        Place::Folder(at) => {
            let flags = if lazy { nix::mount::MntFlags::MNT_DETACH } else { nix::mount::MntFlags::empty() };
            nix::mount::umount2(at, flags).map_err(|e| match e {
                nix::errno::Errno::EBUSY => format!("{} is in use; close what uses it and try again", at.display()),
                e => format!("unmounting {}: {e}", at.display()),
            })
        }
        // A mounted device would be detached under its filesystem: refused, with where.
        Place::Device(dev) if !lazy => {
            if let Some(points) = mounted_at(dev) {
                return Err(format!("{dev} is mounted at {points}; unmount it first, then unexpose"));
            }
            detach(dev)
        }
        Place::Device(dev) => detach(dev),
    }
}

/// Where the block device `dev` is mounted, if it is (`None`: nowhere, or it cannot be told).
fn mounted_at(dev: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev).ok()?.rdev();
    let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    let points: Vec<String> =
        shadowcopy::probe::mounts().ok()?.into_iter().filter(|m| m.dev == id).map(|m| m.mount_point.display().to_string()).collect();
    (!points.is_empty()).then(|| points.join(", "))
}

/// Detaches a loop device (a busy one is detached when its last user closes it).
fn detach(dev: &str) -> Result<(), String> {
    match Command::new("losetup").args(["-d", dev]).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("losetup -d {dev}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("running losetup: {e}")),
    }
}
