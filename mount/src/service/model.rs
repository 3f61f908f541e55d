//! The daemon's model: registered volumes with their provider, and their shadow copies with
//! exposed names and (lazily opened) filesystem views.
//!
//! Owns what a volume and a copy are while the daemon serves them. Never changes the registry
//! (that is [`super::registry`]) and never answers a request.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::UNIX_EPOCH;

use parking_lot::RwLock;
use shadowcopy::fsread::{self, ByteSource, ForeignOwner, ReadOnlyFs};
use shadowcopy::protocol::{self, attributes};
use shadowcopy::volume::{FileStorage, Storage};
use shadowcopy::vss::WindowsStores;
use shadowcopy::{CopyInfo, Provider, ShadowVolume};
use uuid::Uuid;

/// Ownership of the image file, copied onto `live` and the raw copy images.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// The image's owner.
    pub uid: u32,
    /// The image's group.
    pub gid: u32,
    /// The image's mode bits.
    pub mode: u32,
}

/// A registered volume.
pub struct Volume {
    /// Its name (its folder in the mount).
    pub name: String,
    /// A serial never reused while the daemon runs (part of FUSE node ids; not a diff-area slot).
    pub serial: u32,
    /// The image file or block device.
    pub image: PathBuf,
    /// Its diff area (empty for a read-only volume).
    pub diff_area: PathBuf,
    /// What serves its bytes and copies.
    pub backend: Backend,
    /// The image's owner and mode.
    pub owner: Owner,
    /// Copies by exposed name.
    pub copies: RwLock<BTreeMap<String, Arc<ShadowCopy>>>,
    /// The connection's ledger: where this volume's open handles on `live` are counted
    /// (revert, remove and stop refuse while any is open), so a replacement worker knows them.
    pub(super) ledger: Arc<crate::ledger::NodeLedger>,
    /// For a block device: what identifies it (see `VolumeRecord::identity`).
    pub identity: Option<shadowcopy::probe::DeviceIdentity>,
    /// The newest exposed name ever given on this volume (seconds since the epoch); new names
    /// come after it, so a deleted copy's name is never reused.
    pub(super) last_name_secs: parking_lot::Mutex<Option<u64>>,
    /// Its schedule and retention policy.
    pub(super) policy: parking_lot::Mutex<Option<shadowcopy::protocol::Policy>>,
    /// Whether its diff area is past the warning threshold (the event is sent once per
    /// crossing).
    pub(super) nearly_full: std::sync::atomic::AtomicBool,
    /// Whether the failure of its diff area was reported (once).
    pub(super) failure_reported: std::sync::atomic::AtomicBool,
}

/// What serves a volume's bytes and copies: one provider per volume.
pub enum Backend {
    /// Read-write, through our copy-on-write engine (the system provider).
    System(ShadowVolume),
    /// Read-only: the image as it is, and the Windows shadow copies found on it (if any).
    ReadOnly {
        /// The image.
        image: Arc<ImageSource>,
        /// Windows' shadow copies on it, if any.
        windows: Option<WindowsStores>,
    },
}

/// A read-only image as a byte source (block devices sized by the kernel).
pub struct ImageSource {
    pub(super) storage: FileStorage,
    pub(super) size: u64,
}

impl ByteSource for ImageSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.storage.read_at(buf, offset)
    }
}

impl Volume {
    /// Bytes of the volume.
    pub fn size(&self) -> u64 {
        match &self.backend {
            Backend::System(e) => e.size(),
            Backend::ReadOnly { image, .. } => image.size,
        }
    }

    /// The engine, for operations only the system provider has (create, export, revert, …).
    pub fn system(&self) -> Option<&ShadowVolume> {
        match &self.backend {
            Backend::System(e) => Some(e),
            Backend::ReadOnly { .. } => None,
        }
    }

    /// The provider of this volume's copies, if it has one.
    pub fn provider(&self) -> Option<&dyn Provider> {
        match &self.backend {
            Backend::System(e) => Some(e),
            Backend::ReadOnly { windows, .. } => windows.as_ref().map(|w| w as &dyn Provider),
        }
    }

    /// Whether `live` refuses writes.
    pub fn read_only(&self) -> bool {
        matches!(self.backend, Backend::ReadOnly { .. })
    }

    /// Reads the live volume.
    pub fn read_live(&self, buf: &mut [u8], offset: u64) -> Result<(), shadowcopy::Error> {
        match &self.backend {
            Backend::System(e) => e.read_at(buf, offset),
            Backend::ReadOnly { image, .. } => {
                image.storage.read_at(buf, offset).map_err(|source| shadowcopy::Error::VolumeIo { what: "reading the volume", source })
            }
        }
    }

    /// Reads a copy's image.
    pub fn read_copy(&self, id: Uuid, buf: &mut [u8], offset: u64) -> Result<(), shadowcopy::Error> {
        match self.provider() {
            Some(p) => p.read_copy(id, buf, offset),
            None => Err(shadowcopy::Error::NoSuchCopy(id)),
        }
    }

    /// How many handles on its `live` file are open.
    pub fn live_opens(&self) -> usize {
        self.ledger.live_opens(self.serial)
    }

    /// A handle on its `live` file was opened (by `request`, if the frontend names requests).
    pub fn live_opened(&self, request: Option<crate::ledger::OpenRequest>) {
        self.ledger.live_opened(self.serial, request);
    }

    /// A handle on its `live` file was released.
    pub fn live_released(&self) {
        self.ledger.live_released(self.serial);
    }

    pub(super) fn copies_now(&self) -> Vec<CopyInfo> {
        self.provider().map(|p| p.copies()).unwrap_or_default()
    }
}

/// A shadow copy as the daemon serves it.
pub struct ShadowCopy {
    /// A serial never reused while the daemon runs (part of FUSE node ids).
    pub serial: u32,
    /// Its exposed name (`@GMT-…`).
    pub name: String,
    /// What the provider says about it.
    pub info: CopyInfo,
    /// Its volume (a copy does not keep a removed volume alive).
    pub volume: Weak<Volume>,
    /// Its description, labels, and whether the volume's policy owns it.
    pub notes: crate::state::CopyNotes,
    /// The filesystem inside, once looked at (`None` inside: raw only).
    pub(super) tree: OnceLock<Option<Arc<dyn ReadOnlyFs>>>,
    /// Inodes whose damage was logged already (at most [`DAMAGE_LOG_LIMIT`]).
    pub(super) damage_logged: parking_lot::Mutex<std::collections::HashSet<Option<u64>>>,
}

/// Damaged inodes logged per copy; past that, damage is still an error but no longer logged.
const DAMAGE_LOG_LIMIT: usize = 1024;

impl ShadowCopy {
    /// The filesystem in the copy, detected on first use. A damaged or unknown filesystem gives
    /// `None` (the raw image stays readable) and a log line.
    pub fn tree(&self, fs_owner: ForeignOwner) -> Option<Arc<dyn ReadOnlyFs>> {
        self.tree
            .get_or_init(|| {
                let volume = self.volume.upgrade()?;
                crate::failpoints::stall_tree_open(&volume.name);
                let source: Arc<dyn ByteSource> = Arc::new(CopySource { volume: Arc::downgrade(&volume), id: self.info.id, size: volume.size() });
                match fsread::open(source, fs_owner) {
                    Ok(Some(fs)) => {
                        tracing::info!(copy = %self.info.id, name = %self.name, filesystem = fs.kind(), "filesystem found in the shadow copy");
                        Some(fs)
                    }
                    Ok(None) => {
                        tracing::info!(copy = %self.info.id, name = %self.name, "no known filesystem in the shadow copy: only its raw image is served");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(copy = %self.info.id, name = %self.name, error = %e, "the filesystem in the shadow copy cannot be read: only its raw image is served");
                        None
                    }
                }
            })
            .clone()
    }

    /// Whether the mount serves it (a copy that cannot be read is only listed, with its error).
    pub fn exposed(&self) -> bool {
        self.info.failed.is_none()
    }

    /// Whether its tree is listed in the volume's folder (client-accessible contexts, and
    /// Windows copies); other exposed copies are reachable by their path only.
    pub fn listed(&self, windows: bool) -> bool {
        self.exposed() && (windows || self.info.attributes & attributes::CLIENT_ACCESSIBLE != 0)
    }

    /// Whether damage at inode `ino` should be logged: the first time for each inode, up to
    /// [`DAMAGE_LOG_LIMIT`] inodes.
    pub fn first_report_of_damage(&self, ino: Option<u64>) -> bool {
        let mut seen = self.damage_logged.lock();
        seen.len() < DAMAGE_LOG_LIMIT && seen.insert(ino)
    }

    /// Why its filesystem is damaged, once a request found it so.
    pub fn tree_damage(&self) -> Option<String> {
        match self.tree.get() {
            Some(Some(fs)) => fs.damage(),
            _ => None,
        }
    }

    /// The filesystem's kind if it was already looked at.
    pub fn tree_kind(&self) -> Option<String> {
        match self.tree.get() {
            Some(Some(fs)) => Some(fs.kind().to_string()),
            Some(None) => Some("raw".into()),
            None => None,
        }
    }
}

/// The bytes of one copy, for the filesystem readers.
struct CopySource {
    volume: Weak<Volume>,
    id: Uuid,
    size: u64,
}

impl ByteSource for CopySource {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let v = self.volume.upgrade().ok_or_else(|| std::io::Error::other("the volume was removed"))?;
        v.read_copy(self.id, buf, offset).map_err(std::io::Error::other)
    }
}

/// The exposed name for a new copy of `volume`: its creation second, or, if that name was ever
/// given on the volume (to a copy still there or one deleted since), the next second after the
/// newest name ever given (names stay unique, valid `@GMT` tokens and never reused; the real
/// creation time is in `list`). Records the name as the volume's newest.
pub(super) fn unique_name(volume: &Volume, existing: &BTreeMap<String, Arc<ShadowCopy>>, info: &CopyInfo) -> String {
    let mut last = volume.last_name_secs.lock();
    let mut secs = info.created.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if let Some(l) = *last {
        secs = secs.max(l + 1);
    }
    let name = loop {
        let name = protocol::gmt_name(secs);
        if !existing.contains_key(&name) {
            break name;
        }
        secs += 1;
    };
    *last = Some(secs.max(last.unwrap_or(0)));
    name
}
