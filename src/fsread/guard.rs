//! Panic containment at the request boundary: a panic inside any reader (ours or a crate's, on
//! a damaged image) becomes an error for that request, never a dead worker thread.
//!
//! Owns [`Guarded`], which wraps every reader [`super::open`] returns, and remembers the first
//! panic as the tree's damage (shown by `list`). Never retries, never hides the error: the
//! request that met the panic gets [`FsError::Corrupt`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use super::{CorruptKind, DirEntry, FsError, FsStats, ReadOnlyFs, Stat, Xattrs};

/// A reader whose panics are errors.
pub struct Guarded {
    inner: Arc<dyn ReadOnlyFs>,
    /// The first panic's message: the tree is damaged.
    damage: OnceLock<String>,
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a panic".into())
}

/// Runs `f`; a panic becomes a corruption error whose message says where (`what`, `ino`).
pub(super) fn contain<T>(what: &str, ino: Option<u64>, f: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = panic_message(&*p);
            tracing::error!(what, ?ino, panic = %msg, "a filesystem reader panicked on damaged data; the request gets EIO");
            Err(FsError::corrupt(CorruptKind::Panic, ino, format!("the reader failed on damaged data while {what}: {msg}")))
        }
    }
}

impl Guarded {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ReadOnlyFs>) -> Guarded {
        Guarded { inner, damage: OnceLock::new() }
    }

    fn run<T>(&self, what: &str, ino: Option<u64>, f: impl FnOnce(&dyn ReadOnlyFs) -> Result<T, FsError>) -> Result<T, FsError> {
        let r = contain(what, ino, || f(&*self.inner));
        if let Err(FsError::Corrupt(c)) = &r {
            if c.kind == CorruptKind::Panic {
                let _ = self.damage.set(c.detail().to_string());
            }
        }
        r
    }
}

impl ReadOnlyFs for Guarded {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn root(&self) -> u64 {
        self.inner.root()
    }
    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        self.run("reading an inode", Some(ino), |fs| fs.stat(ino))
    }
    fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, FsError> {
        self.run("looking up a name", Some(dir), |fs| fs.lookup(dir, name))
    }
    fn read_dir(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        self.run("listing a directory", Some(dir), |fs| fs.read_dir(dir))
    }
    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.run("reading a file", Some(ino), |fs| fs.read(ino, offset, buf))
    }
    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.run("reading a symbolic link", Some(ino), |fs| fs.read_link(ino))
    }
    fn xattrs(&self, ino: u64) -> Result<Xattrs, FsError> {
        self.run("reading extended attributes", Some(ino), |fs| fs.xattrs(ino))
    }
    fn xattr_names(&self, ino: u64) -> Result<Vec<Vec<u8>>, FsError> {
        self.run("listing extended attributes", Some(ino), |fs| fs.xattr_names(ino))
    }
    fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Vec<u8>>, FsError> {
        self.run("reading an extended attribute", Some(ino), |fs| fs.xattr(ino, name))
    }
    fn stats(&self) -> FsStats {
        self.run("reading statistics", None, |fs| Ok(fs.stats())).unwrap_or(FsStats {
            block_size: 4096,
            blocks: 0,
            free_blocks: 0,
            files: 0,
            free_files: 0,
            name_max: 255,
        })
    }
    fn inode_tables(&self) -> Option<super::InodeTables> {
        self.run("locating the inode tables", None, |fs| Ok(fs.inode_tables())).ok().flatten()
    }
    fn inode_record(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        self.run("reading an inode record", Some(ino), |fs| fs.inode_record(ino))
    }
    fn damage(&self) -> Option<String> {
        self.damage.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that panics the way the `ntfs` crate did on a damaged index (a slice out of range).
    struct Panicky;

    impl ReadOnlyFs for Panicky {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn root(&self) -> u64 {
            1
        }
        fn stat(&self, _: u64) -> Result<Stat, FsError> {
            Err(FsError::NotFound)
        }
        fn lookup(&self, _: u64, _: &[u8]) -> Result<u64, FsError> {
            Err(FsError::NotFound)
        }
        #[allow(clippy::out_of_bounds_indexing, unconditional_panic)]
        fn read_dir(&self, _: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
            let v: Vec<u8> = vec![1, 2, 3];
            let end = v.len() + 2;
            Ok(Arc::new(vec![DirEntry { name: v[1..end].to_vec(), ino: 2, kind: super::super::FileKind::File }]))
        }
        fn read(&self, _: u64, _: u64, _: &mut [u8]) -> Result<usize, FsError> {
            Ok(0)
        }
        fn read_link(&self, _: u64) -> Result<Vec<u8>, FsError> {
            Err(FsError::Invalid("no"))
        }
        fn xattrs(&self, _: u64) -> Result<Xattrs, FsError> {
            Ok(Vec::new())
        }
        fn stats(&self) -> FsStats {
            FsStats { block_size: 4096, blocks: 0, free_blocks: 0, files: 0, free_files: 0, name_max: 255 }
        }
    }

    /// Pins the bug where a panic in the `ntfs` crate (index_entry.rs, a slice out of range on a
    /// damaged index) killed the FUSE worker thread that ran the request.
    #[test]
    fn a_panicking_reader_gives_an_error_and_marks_the_tree_damaged() {
        let fs = Guarded::new(Arc::new(Panicky));
        assert!(fs.damage().is_none());
        for _ in 0..3 {
            match fs.read_dir(1) {
                Err(FsError::Corrupt(c)) => {
                    assert_eq!(c.kind, CorruptKind::Panic);
                    assert!(c.detail().contains("listing a directory") && c.detail().contains("out of range"), "{c}");
                }
                other => panic!("expected a corruption error, got {other:?}"),
            }
        }
        assert!(fs.damage().is_some_and(|d| d.contains("out of range")));
        // The rest of the tree still answers.
        assert_eq!(fs.read(1, 0, &mut [0u8; 4]).unwrap(), 0);
    }
}
