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

/// Clears close-on-exec on `fds` in the child `cmd` starts, between fork and exec, so that the
/// program it runs inherits them (and nothing else this process has open).
pub(crate) fn keep_across_exec(cmd: &mut std::process::Command, fds: Vec<std::os::fd::RawFd>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only fcntl, which is
    // async-signal-safe; it allocates nothing (the vector was made before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Descriptor numbers already taken by [`own_inherited`].
static TAKEN: std::sync::Mutex<Vec<std::os::fd::RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of descriptor `fd`, which this process inherited from its parent for it to
/// own, and marks it close-on-exec. A number that is not open, or was taken already, is refused.
pub(crate) fn own_inherited(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    if fd < 0 || taken.contains(&fd) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is not an inherited one")));
    }
    // SAFETY: fcntl on a descriptor number reads or sets its flags only; a closed number gives
    // EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    taken.push(fd);
    // SAFETY: the descriptor is open (fcntl succeeded), was inherited for this process to own
    // (the caller's parent named it), and is taken once (TAKEN): nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Gives the C allocator's free memory back to the kernel (`malloc_trim(0)`): after a large
/// transient allocation, such as the maps of a diff area's recovery, freed memory would
/// otherwise stay resident. glibc only; elsewhere nothing happens.
pub(crate) fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own structures,
    // under its own locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
