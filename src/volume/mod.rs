//! Raw bytes of volumes and of the diff area's files.
//!
//! Owns the one narrow storage seam every byte passes through ([`Storage`]: positional read,
//! positional write, length, set length, durable flush) and its file backend. Test backends
//! (in memory, power-loss simulation, fault injection) live in [`crate::testing`].
//!
//! Never knows that shadow copies exist: no copy-on-write, no caching, no interpretation.

mod file;

pub use file::{open_image, FileStorage, OpenError};

use std::fmt::Debug;
use std::io;

/// Positional byte storage: an image file, a block device, or a test double.
///
/// All methods take `&self` so that writes to different ranges proceed in parallel.
/// Implementations must make every write that completed before `sync_data` returned durable;
/// writes not followed by `sync_data` may be lost, partly or wholly, by a power loss.
#[allow(clippy::len_without_is_empty)] // a volume is never asked whether it is empty
pub trait Storage: Send + Sync + Debug {
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; reading past the end is an error (`UnexpectedEof`).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` back to back from `offset` (one `pwritev` on files).
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Truncates or extends (with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn sync_data(&self) -> io::Result<()>;
    /// The underlying file, when there is one (lets the engine ask the kernel to copy between
    /// two files without passing the bytes through user space).
    fn as_file(&self) -> Option<&std::fs::File> {
        None
    }
    /// Deallocates a range so that it reads as zeros (punch hole); the default writes zeros.
    fn punch_zero(&self, offset: u64, len: u64) -> io::Result<()> {
        write_zeros(self, offset, len)
    }
}

/// Writes `len` zero bytes at `offset`, 1 MiB at a time.
pub fn write_zeros<S: Storage + ?Sized>(storage: &S, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        storage.write_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}
