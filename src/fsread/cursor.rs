//! A `Read + Write + Seek` cursor over a [`ByteSource`], for filesystem crates that want a
//! stream. Writes are refused: a shadow copy is read-only.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use super::ByteSource;

/// A read-only cursor over a [`ByteSource`]; writes are refused.
pub(super) struct Cursor {
    source: Arc<dyn ByteSource>,
    pos: u64,
}

impl Cursor {
    pub(super) fn new(source: Arc<dyn ByteSource>) -> Cursor {
        Cursor { source, pos: 0 }
    }
}

impl Read for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.source.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.source.read_exact_at(&mut buf[..n], self.pos)?;
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
        let size = self.source.size() as i128;
        let new = match to {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        self.pos = u64::try_from(new).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}
