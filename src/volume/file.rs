//! The file backend of [`Storage`]: image files and block devices through `pread`/`pwrite`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::Storage;

/// An image file or block device.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    /// Block devices cannot change size; their size comes from `BLKGETSIZE64`.
    block_device_len: Option<u64>,
}

impl FileStorage {
    /// Wraps an open file; a block device's size is asked from the kernel once.
    pub fn new(file: File) -> io::Result<Self> {
        let block_device_len =
            if file.metadata()?.file_type().is_block_device() { Some(crate::sys::block_device_size(&file)?) } else { None };
        Ok(FileStorage { file, block_device_len })
    }

    /// Whether this is a block device (fixed size).
    pub fn is_block_device(&self) -> bool {
        self.block_device_len.is_some()
    }
}

/// Why a volume image could not be opened exclusively.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The path cannot be looked at (missing, no permission).
    #[error("the image {path} cannot be opened: {source}")]
    Missing {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A directory, socket or character device.
    #[error("{0} is neither an image file nor a block device")]
    NotAnImage(PathBuf),
    /// A loop device already reads and writes the image: writes through it would bypass the engine.
    #[error("{path} is attached to {device}: writes through it would bypass shadow copies; detach it (losetup -d {device}) and use the volume's live file instead")]
    AttachedToLoop {
        /// The image.
        path: PathBuf,
        /// `/dev/loopN`.
        device: String,
    },
    /// The exclusive open failed: a block device that is mounted or held by another opener.
    #[error("opening {path} exclusively failed (is it mounted or in use?): {source}")]
    InUse {
        /// The image.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the image file's lock.
    #[error("{0} is locked by another process (another shadowcopyd, or a `shadowcopy offline` command?)")]
    Locked(PathBuf),
}

/// Opens a volume image the way every user of a volume must: exclusively, so that nothing else
/// writes it behind the engine's back. A block device is opened with `O_EXCL` (the kernel then
/// refuses mounts and other exclusive openers); an image file gets an exclusive `flock` held as
/// long as the returned storage lives. An image already attached to a loop device is refused.
pub fn open_image(path: &Path, writable: bool) -> Result<FileStorage, OpenError> {
    let md = std::fs::metadata(path).map_err(|source| OpenError::Missing { path: path.to_path_buf(), source })?;
    let is_block = md.file_type().is_block_device();
    if !is_block && !md.is_file() {
        return Err(OpenError::NotAnImage(path.to_path_buf()));
    }
    if let Some(l) = crate::probe::loop_devices_backed_by(path).unwrap_or_default().into_iter().next() {
        return Err(OpenError::AttachedToLoop { path: path.to_path_buf(), device: l.device });
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(writable);
    if is_block {
        opts.custom_flags(libc::O_EXCL);
    }
    let file = opts.open(path).map_err(|source| OpenError::InUse { path: path.to_path_buf(), source })?;
    if !is_block && file.try_lock().is_err() {
        return Err(OpenError::Locked(path.to_path_buf()));
    }
    FileStorage::new(file).map_err(|source| OpenError::Missing { path: path.to_path_buf(), source })
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        match self.block_device_len {
            Some(len) => Ok(len),
            None => Ok(self.file.metadata()?.len()),
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
        let mut at = offset;
        while !rest.is_empty() {
            let n = nix::sys::uio::pwritev(&self.file, rest, at as i64)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n as u64;
            io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.block_device_len.is_some() {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a block device has a fixed size"));
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if self.block_device_len.is_none() {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            if fallocate(&self.file, flags, offset as i64, len as i64).is_ok() {
                return Ok(());
            }
        }
        // Filesystems without hole punching, and block devices: write zeros.
        super::write_zeros(self, offset, len)
    }
}
