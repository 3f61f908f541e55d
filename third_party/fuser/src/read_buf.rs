use std::mem::align_of;

use crate::ll::fuse_abi as abi;
use crate::session::MAX_WRITE_SIZE;

/// Size of the buffer for reading a request from the kernel. Since the kernel may send
/// up to `MAX_WRITE_SIZE` bytes in a write request, we use that value plus some extra space.
const BUFFER_SIZE: usize = MAX_WRITE_SIZE + 4096;

/// A buffer that provides an aligned sub-slice for FUSE operations.
///
/// This struct wraps a `Vec<u8>` and provides access to an aligned portion
/// of the buffer, ensuring proper alignment for `fuse_in_header`.
#[derive(Debug)]
pub(crate) struct FuseReadBuf {
    buffer: Vec<u8>,
}

impl FuseReadBuf {
    /// Creates a new `FuseReadBuf` with the default buffer size.
    ///
    /// The actual buffer may be slightly larger to accommodate alignment requirements.
    pub(crate) fn new() -> Self {
        let mut buf = Self {
            buffer: vec![0; BUFFER_SIZE],
        };
        buf.make_resident();
        buf
    }

    /// shadowcopy patch: makes the part of the buffer a request can fill resident and
    /// writable before the first read, and keeps it so (`mlock`, else a write to each page).
    ///
    /// The kernel copies a request into this buffer during `read(2)` and, if the copy fails,
    /// ends the request with EIO (`fuse_dev_do_read`). A page the copy has to fault in fails
    /// the copy when the reading process has a fatal signal pending (`__get_user_pages`
    /// returns EINTR), so a server SIGKILLed while it reads a large write into pages not yet
    /// touched fails that write with EIO instead of leaving it for `FUSE_NOTIFY_RESEND`. With
    /// the pages resident the copy takes the fast path that never checks for signals.
    fn make_resident(&mut self) {
        let page = page_size::get();
        // The kernel's limit on pages per request, the header and the alignment: what a
        // request can fill.
        let max_pages = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(256);
        let len = ((max_pages + 2) * page).min(self.buffer.len());
        let start = self.buffer.as_mut_ptr();
        // SAFETY: `start..start + len` lies inside `self.buffer`, which lives as long as the
        // lock (munlock is implicit when the allocation is freed and unmapped).
        let locked = unsafe { libc::mlock(start.cast(), len) } == 0;
        if !locked {
            // Without the privilege to lock: touch each page with a write (volatile, so that
            // a store of zero into zeroed memory is not optimized away).
            for offset in (0..len).step_by(page) {
                // SAFETY: `offset < len <= self.buffer.len()`.
                unsafe { std::ptr::write_volatile(start.add(offset), 0) };
            }
        }
    }

    /// Returns a mutable reference to the aligned portion of the buffer.
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        let alignment = align_of::<abi::fuse_in_header>();
        let off = alignment - (self.buffer.as_ptr() as usize) % alignment;
        if off == alignment {
            &mut self.buffer
        } else {
            &mut self.buffer[off..]
        }
    }
}
