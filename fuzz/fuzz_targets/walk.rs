//! Shared by the filesystem targets: open an image from the fuzzer's bytes and walk it the way
//! the mount does (list, stat, read, xattrs, links), within a fixed number of visits.

use std::sync::Arc;

use shadowcopy::fsread::{self, ByteSource, FileKind, ForeignOwner};

/// The fuzzer's bytes as an image.
pub struct Bytes(pub Vec<u8>);

impl ByteSource for Bytes {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = start.checked_add(buf.len()).and_then(|end| self.0.get(start..end)).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Opens and walks; every error is fine, a panic, hang or huge allocation is a finding.
#[allow(dead_code)] // the vss target uses only `Bytes`
pub fn walk(data: &[u8]) {
    let Ok(Some(fs)) = fsread::open(Arc::new(Bytes(data.to_vec())), ForeignOwner::default()) else { return };
    let mut stack = vec![fs.root()];
    let mut visits = 0;
    let mut buf = vec![0u8; 8192];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs.read_dir(dir) else { continue };
        for e in entries.iter() {
            visits += 1;
            if visits > 256 {
                return;
            }
            let _ = fs.lookup(dir, &e.name);
            let _ = fs.stat(e.ino);
            let _ = fs.xattr_names(e.ino);
            let _ = fs.xattrs(e.ino);
            match e.kind {
                FileKind::Dir => stack.push(e.ino),
                FileKind::File => {
                    let _ = fs.read(e.ino, 0, &mut buf);
                    let _ = fs.read(e.ino, 1 << 20, &mut buf);
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(e.ino);
                }
                _ => {}
            }
        }
    }
    let _ = fs.stats();
}
