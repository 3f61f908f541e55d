//! The file backend of [`Storage`]: image files and block devices through `pread`/`pwrite`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

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

/// Opens an image file or block device read-write (or read-only).
pub fn open_image(path: &Path, writable: bool) -> io::Result<FileStorage> {
    let file = OpenOptions::new().read(true).write(writable).open(path)?;
    FileStorage::new(file)
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
            let n = rustix::io::pwritev(&self.file, rest, at)?;
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
        use rustix::fs::{fallocate, FallocateFlags};
        if self.block_device_len.is_none() {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if fallocate(&self.file, flags, offset, len).is_ok() {
                return Ok(());
            }
        }
        // Filesystems without hole punching, and block devices: write zeros.
        super::write_zeros(self, offset, len)
    }
}
