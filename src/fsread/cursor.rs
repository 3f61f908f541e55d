//! A `Read + Write + Seek` cursor over a [`ByteSource`], for filesystem crates that want a
//! stream. Writes are refused: a shadow copy is read-only.
//!
//! Every cursor carries a [`ReadBudget`]: the bytes a crate may read for one request (or one
//! open). A crate that follows a loop on disk (a FAT cluster chain pointing at itself) runs the
//! budget out and gets an I/O error instead of spinning forever.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::ByteSource;

/// Bytes a reader may still read; shared by a cursor and whoever resets it per request.
#[derive(Clone)]
pub(super) struct ReadBudget(Arc<AtomicU64>);

impl ReadBudget {
    /// A budget of `bytes`.
    pub(super) fn new(bytes: u64) -> ReadBudget {
        ReadBudget(Arc::new(AtomicU64::new(bytes)))
    }
    /// Starts a new request with `bytes` to spend.
    #[cfg_attr(not(feature = "fat"), allow(dead_code))] // the FAT reader's thread reuses one budget
    pub(super) fn reset(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Relaxed);
    }
    fn spend(&self, n: u64) -> io::Result<()> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n))
            .map(|_| ())
            .map_err(|_| io::Error::other("read more than the filesystem can hold for one request (a loop in its structures?)"))
    }
    /// The most one request may read from a volume of `size` bytes: all of it twice over
    /// (metadata and data), plus slack for small volumes.
    pub(super) fn per_request(size: u64) -> u64 {
        size.saturating_mul(2).saturating_add(64 << 20)
    }
}

/// Small reads are served from one buffered window of this many bytes (crates read directory
/// entries and FAT cells a few bytes at a time).
const WINDOW: u64 = 4 << 10;

/// A read-only cursor over a [`ByteSource`]; writes are refused.
pub(super) struct Cursor {
    source: Arc<dyn ByteSource>,
    /// The source's size, asked once.
    size: u64,
    pos: u64,
    budget: ReadBudget,
    /// The buffered window and where it starts.
    window: Vec<u8>,
    window_start: u64,
}

impl Cursor {
    /// A cursor whose reads spend `budget`.
    pub(super) fn with_budget(source: Arc<dyn ByteSource>, budget: ReadBudget) -> Cursor {
        let size = source.size();
        Cursor { source, size, pos: 0, budget, window: Vec::new(), window_start: 0 }
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.size;
        let n = (size.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        // Every byte asked for is spent, buffered or not: a loop over one cached cluster runs
        // the budget out as surely as one over the disk.
        self.budget.spend(n as u64)?;
        if n == 0 {
            // At or past the end (a crate may seek anywhere).
            return Ok(0);
        }
        if n as u64 >= WINDOW {
            self.source.read_exact_at(&mut buf[..n], self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        let in_window = self.pos >= self.window_start && self.pos + n as u64 <= self.window_start + self.window.len() as u64;
        if !in_window {
            let start = self.pos - self.pos % WINDOW;
            let len = (size - start).min(2 * WINDOW) as usize;
            self.window.resize(len, 0);
            self.source.read_exact_at(&mut self.window, start)?;
            self.window_start = start;
        }
        let at = (self.pos - self.window_start) as usize;
        buf[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Cursor {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "a shadow copy is read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Cursor {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.size as i128;
        let new = match to {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        self.pos = u64::try_from(new).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes(Vec<u8>);
    impl ByteSource for Bytes {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let s = self.0.get(offset as usize..offset as usize + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(s);
            Ok(())
        }
    }

    /// Pins a panic the FAT and NTFS fuzz targets found (corpus `regression-cursor-past-end`):
    /// a crate that seeks past the end and reads indexed the window out of range.
    #[test]
    fn reads_past_the_end_give_nothing_and_reads_inside_are_exact() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut c = Cursor::with_budget(Arc::new(Bytes(data.clone())), ReadBudget::new(1 << 20));
        for at in [10_000u64, 10_001, 12_289, 1 << 40] {
            c.seek(SeekFrom::Start(at)).unwrap();
            assert_eq!(c.read(&mut [0u8; 32]).unwrap(), 0, "at {at}");
        }
        for (at, len) in [(0u64, 32usize), (4090, 20), (8191, 2), (9_990, 32), (100, 9000)] {
            c.seek(SeekFrom::Start(at)).unwrap();
            let mut buf = vec![0u8; len];
            let n = c.read(&mut buf).unwrap();
            assert_eq!(&buf[..n], &data[at as usize..at as usize + n], "at {at}");
            assert_eq!(n, len.min(10_000 - at as usize));
        }
    }

    #[test]
    fn a_spent_budget_is_an_error() {
        let mut c = Cursor::with_budget(Arc::new(Bytes(vec![7u8; 4096])), ReadBudget::new(100));
        assert_eq!(c.read(&mut [0u8; 64]).unwrap(), 64);
        c.seek(SeekFrom::Start(0)).unwrap();
        let e = c.read(&mut [0u8; 64]).unwrap_err();
        assert!(e.to_string().contains("loop"), "{e}");
    }
}
