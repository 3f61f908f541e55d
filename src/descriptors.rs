//! Descriptors a process hands to a program it starts: which ones the program inherits, and
//! how it takes ownership of those its parent named (the daemon's holder and workers).
//!
//! Never decides which descriptors to pass; the callers do.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::process::{Child, Command};

/// Starts `cmd` with `fds` inherited (everything else close-on-exec stays closed).
pub fn spawn_keeping(cmd: &mut Command, fds: &[RawFd]) -> io::Result<Child> {
    crate::sys::keep_across_exec(cmd, fds.to_vec());
    cmd.spawn()
}

/// Replaces this process by `cmd` with `fds` inherited; returns only on failure.
pub fn exec_keeping(cmd: &mut Command, fds: &[RawFd]) -> io::Error {
    use std::os::unix::process::CommandExt;
    crate::sys::keep_across_exec(cmd, fds.to_vec());
    cmd.exec()
}

/// Takes ownership of `fd`, inherited from the parent for this process to own, and marks it
/// close-on-exec so nothing this process starts inherits it. Each number can be taken once.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    crate::sys::own_inherited(fd)
}
