//! The one home of `unsafe`: kernel interfaces that no safe wrapper covers.
//!
//! Must stay tiny: each function wraps one system call and says why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `BLKGETSIZE64` from `<linux/fs.h>`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Size in bytes of a block device.
pub(crate) fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live u64;
    // the descriptor is open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// `FIFREEZE` and `FITHAW` from `<linux/fs.h>`: `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)`.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// Freezes the filesystem mounted at the directory `dir` is open on (flushes it and blocks
/// new writes until [`thaw_filesystem`]).
pub(crate) fn freeze_filesystem(dir: &File) -> io::Result<()> {
    fs_ioctl(dir, FIFREEZE)
}

/// Thaws a filesystem frozen by [`freeze_filesystem`].
pub(crate) fn thaw_filesystem(dir: &File) -> io::Result<()> {
    fs_ioctl(dir, FITHAW)
}

fn fs_ioctl(dir: &File, request: libc::c_ulong) -> io::Result<()> {
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE/FITHAW take a pointer to an int that the kernel ignores; it points at a
    // live c_int and the descriptor is open for the duration of the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), request as _, &mut arg as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
