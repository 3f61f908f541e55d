//! NTFS through the `ntfs` crate. The parsed [`ntfs::Ntfs`] is shared by every thread; each call
//! reads through its own cursor. Inode numbers are MFT file record numbers (shared by hard
//! links; the root directory is record 5). NTFS metafiles (records below 16) are hidden, as
//! ntfs-3g hides them.
//!
//! NTFS has no POSIX owners: every file shows the [`ForeignOwner`]'s ids and read-only bits.
//! Bytes past a file's initialized size (its valid data length) read as zeros, as NTFS requires
//! (the crate does not apply it; the size is read from the attribute's own file record).
//! Compressed files are decompressed (LZNT1, one compression unit at a time, from the attribute's
//! data runs); one whose data spans several file records (an attribute list) is refused with an
//! error (EIO) rather than served as its compressed bytes. Alternate data streams are xattrs
//! `user.NAME`, as ntfs-3g shows them. Interix symlinks (what ntfs-3g creates) and relative
//! Windows symlinks are symlinks; absolute Windows symlinks and junctions (whose targets name
//! other volumes) show as what their records hold.
//! The `$LogFile` is not replayed (copies of a cleanly flushed volume read fully).

use std::io::SeekFrom;
use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsAttributeFlags, NtfsAttributeType, NtfsFile, NtfsReadSeek};
use parking_lot::Mutex;

use super::cursor::{Cursor, ReadBudget};
use super::{ByteSource, CorruptKind, DirEntry, FileKind, ForeignOwner, FsError, FsStats, ReadOnlyFs, Stat, Timestamp, Xattrs};
use crate::bytes::le;

const ROOT: u64 = 5;
const FIRST_USER_RECORD: u64 = 16;
/// The longest stream shown as an xattr (the kernel's limit for an xattr value).
const MAX_STREAM_XATTR: u64 = 65536;

/// An open NTFS filesystem.
pub struct NtfsFs {
    ntfs: Ntfs,
    source: Arc<dyn ByteSource>,
    owner: ForeignOwner,
    dirs: Mutex<LruCache<u64, Arc<Vec<DirEntry>>>>,
}

fn corrupt(e: ntfs::NtfsError) -> FsError {
    FsError::corrupt(CorruptKind::Ntfs, None, format!("NTFS: {e}"))
}

/// 100 ns intervals since 1601 → Unix time.
fn nt_time(t: ntfs::NtfsTime) -> Timestamp {
    const EPOCH_DIFF_SECS: i64 = 11_644_473_600;
    let ts = t.nt_timestamp();
    Timestamp { secs: (ts / 10_000_000) as i64 - EPOCH_DIFF_SECS, nanos: (ts % 10_000_000) as u32 * 100 }
}

impl NtfsFs {
    /// Opens the NTFS filesystem in `source`; files show `owner`.
    pub fn open(source: Arc<dyn ByteSource>, owner: ForeignOwner) -> Result<NtfsFs, FsError> {
        let mut c = Cursor::with_budget(Arc::clone(&source), ReadBudget::new(ReadBudget::per_request(source.size())));
        let mut ntfs = Ntfs::new(&mut c).map_err(corrupt)?;
        ntfs.read_upcase_table(&mut c).map_err(corrupt)?;
        let fs = NtfsFs { ntfs, source, owner, dirs: Mutex::new(LruCache::new(NonZeroUsize::new(1024).expect("non-zero"))) };
        // The root must parse, or there is nothing to show.
        fs.ntfs.root_directory(&mut fs.cursor()).map_err(corrupt)?;
        Ok(fs)
    }

    /// A cursor for one request, with that request's read budget.
    fn cursor(&self) -> Cursor {
        Cursor::with_budget(Arc::clone(&self.source), ReadBudget::new(ReadBudget::per_request(self.source.size())))
    }

    fn file(&self, c: &mut Cursor, ino: u64) -> Result<NtfsFile<'_>, FsError> {
        if ino < FIRST_USER_RECORD && ino != ROOT {
            return Err(FsError::NotFound);
        }
        self.ntfs.file(c, ino).map_err(|e| match e {
            ntfs::NtfsError::InvalidFileRecordNumber { .. } => FsError::NotFound,
            e => corrupt(e),
        })
    }

    /// The unnamed $DATA attribute's length and whether it is compressed.
    fn data_info(&self, c: &mut Cursor, file: &NtfsFile<'_>) -> Result<(u64, bool), FsError> {
        match file.data(c, "") {
            None => Ok((0, false)),
            Some(item) => {
                let item = item.map_err(corrupt)?;
                let attr = item.to_attribute().map_err(corrupt)?;
                Ok((attr.value_length(), attr.flags().contains(NtfsAttributeFlags::COMPRESSED)))
            }
        }
    }

    /// The whole value of `file`'s first attribute of type `ty` (and name `name`), if it is
    /// at most `max` bytes.
    fn small_value(
        &self,
        c: &mut Cursor,
        file: &NtfsFile<'_>,
        ty: NtfsAttributeType,
        name: &str,
        max: u64,
    ) -> Result<Option<Vec<u8>>, FsError> {
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(c) {
            let item = item.map_err(corrupt)?;
            let attr = item.to_attribute().map_err(corrupt)?;
            if attr.ty().map_err(corrupt)? != ty || attr.name().map_err(corrupt)?.to_string_lossy() != name {
                continue;
            }
            if attr.value_length() > max || attr.flags().contains(NtfsAttributeFlags::COMPRESSED) {
                return Ok(None);
            }
            return self.whole_value(c, &attr);
        }
        Ok(None)
    }

    /// Every byte of an uncompressed attribute's value; `None` if it ends before its length.
    fn whole_value(&self, c: &mut Cursor, attr: &ntfs::NtfsAttribute<'_, '_>) -> Result<Option<Vec<u8>>, FsError> {
        let mut data = vec![0u8; attr.value_length() as usize];
        let mut value = attr.value(c).map_err(corrupt)?;
        let mut done = 0;
        while done < data.len() {
            match value.read(c, &mut data[done..]).map_err(corrupt)? {
                0 => return Ok(None),
                n => done += n,
            }
        }
        Ok(Some(data))
    }

    /// The target of a symbolic link, for the two kinds ntfs-3g shows as symlinks and that need
    /// no knowledge of other volumes: Interix links (a system file holding `IntxLNK\1` and the
    /// target in UTF-16), which ntfs-3g itself creates, and relative Windows symlinks (reparse
    /// tag `IO_REPARSE_TAG_SYMLINK`). `None`: not a symlink (absolute Windows links and
    /// junctions are shown as what they hold).
    fn symlink_target(&self, c: &mut Cursor, file: &NtfsFile<'_>, attributes: NtfsFileAttributeFlags) -> Result<Option<Vec<u8>>, FsError> {
        let utf16 = |b: &[u8]| -> Vec<u8> {
            let units: Vec<u16> = b.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
            String::from_utf16_lossy(&units).into_bytes()
        };
        if attributes.contains(NtfsFileAttributeFlags::REPARSE_POINT) {
            const IO_REPARSE_TAG_SYMLINK: u32 = 0xa000_000c;
            const SYMLINK_FLAG_RELATIVE: u32 = 1;
            let Some(r) = self.small_value(c, file, NtfsAttributeType::ReparsePoint, "", 16 << 10)? else { return Ok(None) };
            let u16_at = |i: usize| le::get_u16(&r, i).map(usize::from);
            let u32_at = |i: usize| le::get_u32(&r, i);
            if u32_at(0) != Some(IO_REPARSE_TAG_SYMLINK) || u32_at(16).map(|f| f & SYMLINK_FLAG_RELATIVE) != Some(SYMLINK_FLAG_RELATIVE) {
                return Ok(None);
            }
            let (Some(off), Some(len)) = (u16_at(8), u16_at(10)) else { return Ok(None) };
            let Some(name) = r.get(20 + off..20 + off + len) else { return Ok(None) };
            let target: Vec<u8> = utf16(name).into_iter().map(|b| if b == b'\\' { b'/' } else { b }).collect();
            return Ok((!target.is_empty()).then_some(target));
        }
        if attributes.contains(NtfsFileAttributeFlags::SYSTEM) {
            let Some(d) = self.small_value(c, file, NtfsAttributeType::Data, "", 4096)? else { return Ok(None) };
            if let Some(rest) = d.strip_prefix(b"IntxLNK\x01") {
                return Ok((!rest.is_empty()).then(|| utf16(rest)));
            }
        }
        Ok(None)
    }

    /// The initialized size of a non-resident attribute, read from its file record on disk.
    /// `None`: resident, or the record could not be read.
    fn initialized_size(&self, attr: &ntfs::NtfsAttribute<'_, '_>) -> Option<u64> {
        let (rec, at) = self.attribute_header(attr)?;
        le::get_u64(&rec, at + 0x38)
    }

    /// The compression unit of a non-resident attribute, in bytes (header field 0x22: a power
    /// of two of clusters).
    fn compression_unit(&self, attr: &ntfs::NtfsAttribute<'_, '_>) -> Option<u64> {
        let (rec, at) = self.attribute_header(attr)?;
        let exp = le::get_u16(&rec, at + 0x22)?;
        // NTFS compresses only with clusters up to 4 KiB and 16-cluster units; anything much
        // larger is damage (and must not make us allocate gigabytes).
        let unit = u64::from(self.ntfs.cluster_size()) << exp;
        ((1..=8).contains(&exp) && unit <= 1 << 20).then_some(unit)
    }

    /// The file record holding a non-resident attribute, read from disk with its fixups applied,
    /// and the attribute's offset in it (the crate does not expose every header field).
    fn attribute_header(&self, attr: &ntfs::NtfsAttribute<'_, '_>) -> Option<(Vec<u8>, usize)> {
        if attr.is_resident() {
            return None;
        }
        let pos = attr.position().value()?.get();
        let rs = u64::from(self.ntfs.file_record_size());
        if !(512..=65536).contains(&rs) {
            return None;
        }
        let start = pos - pos % rs;
        let mut rec = vec![0u8; rs as usize];
        self.source.read_exact_at(&mut rec, start).ok()?;
        if &rec[..4] != b"FILE" {
            return None;
        }
        // Update sequence array: the last two bytes of every 512-byte sector were replaced by
        // the sequence number; the originals are in the array.
        let usa = usize::from(le::u16(&rec, 4));
        let count = usize::from(le::u16(&rec, 6));
        for i in 1..count {
            let (from, to) = (usa + 2 * i, i * 512 - 2);
            if from + 2 > rec.len() || to + 2 > rec.len() {
                return None;
            }
            let v = [rec[from], rec[from + 1]];
            rec[to..to + 2].copy_from_slice(&v);
        }
        Some((rec, (pos - start) as usize))
    }

    /// Reads `out.len()` bytes at `offset` of a compressed (LZNT1) value: each compression unit
    /// is stored whole (all clusters allocated), not at all (sparse: zeros), or compressed into
    /// its first clusters.
    fn read_compressed(
        &self,
        c: &mut Cursor,
        ino: u64,
        attr: &ntfs::NtfsAttribute<'_, '_>,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), FsError> {
        let cu = self.compression_unit(attr).ok_or_else(|| {
            FsError::corrupt(CorruptKind::Compression, Some(ino), format!("NTFS file {ino}: compressed, without a valid compression unit"))
        })?;
        let runs: Vec<(u64, u64, Option<u64>)> = match attr.value(c).map_err(corrupt)? {
            ntfs::attribute_value::NtfsAttributeValue::NonResident(v) => {
                let mut runs = Vec::new();
                let mut start = 0u64;
                for run in v.data_runs() {
                    let run = run.map_err(corrupt)?;
                    let len = run.allocated_size();
                    runs.push((start, len, run.data_position().value().map(|p| p.get())));
                    start += len;
                }
                runs
            }
            _ => {
                return Err(FsError::Unsupported(format!(
                    "NTFS file {ino} is compressed and spread over several file records, which this reader does not decompress"
                )))
            }
        };
        let (mut unit, mut stored) = (vec![0u8; cu as usize], Vec::with_capacity(cu as usize));
        let end = offset + out.len() as u64;
        let mut pos = offset;
        while pos < end {
            let unit_start = pos - pos % cu;
            stored.clear();
            for &(start, len, disk) in &runs {
                let (lo, hi) = (start.max(unit_start), (start + len).min(unit_start + cu));
                if let (true, Some(disk)) = (lo < hi, disk) {
                    let at = stored.len();
                    stored.resize(at + (hi - lo) as usize, 0);
                    self.source.read_exact_at(&mut stored[at..], disk + (lo - start))?;
                }
            }
            match stored.len() as u64 {
                0 => unit.fill(0),
                n if n >= cu => unit.copy_from_slice(&stored[..cu as usize]),
                _ => super::lznt1::decompress(&stored, &mut unit)
                    .map_err(|e| FsError::corrupt(CorruptKind::Compression, Some(ino), format!("NTFS file {ino}: {e}")))?,
            }
            let from = (pos - unit_start) as usize;
            let n = ((unit_start + cu).min(end) - pos) as usize;
            let to = (pos - offset) as usize;
            out[to..to + n].copy_from_slice(&unit[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    fn listing(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        if let Some(l) = self.dirs.lock().get(&dir) {
            return Ok(Arc::clone(l));
        }
        let mut c = self.cursor();
        let file = self.file(&mut c, dir)?;
        if !file.is_directory() {
            return Err(FsError::NotDir);
        }
        let index = file.directory_index(&mut c).map_err(corrupt)?;
        let mut entries = index.entries();
        let mut out = Vec::new();
        while let Some(entry) = entries.next(&mut c) {
            let entry = entry.map_err(corrupt)?;
            let Some(key) = entry.key() else { continue };
            let name = key.map_err(corrupt)?;
            if name.namespace() == NtfsFileNamespace::Dos {
                continue;
            }
            let ino = entry.file_reference().file_record_number();
            if ino < FIRST_USER_RECORD {
                continue;
            }
            let kind = if name.is_directory() {
                FileKind::Dir
            } else if name.file_attributes().intersects(NtfsFileAttributeFlags::SYSTEM | NtfsFileAttributeFlags::REPARSE_POINT) {
                // Maybe a symbolic link: the record decides.
                self.stat(ino).map_or(FileKind::File, |s| s.kind)
            } else {
                FileKind::File
            };
            out.push(DirEntry { name: name.name().to_string_lossy().into_bytes(), ino, kind });
            if out.len() > 1 << 22 {
                return Err(FsError::corrupt(CorruptKind::Directory, Some(dir), format!("directory {dir} has too many entries")));
            }
        }
        let out = Arc::new(out);
        self.dirs.lock().put(dir, Arc::clone(&out));
        Ok(out)
    }
}

impl ReadOnlyFs for NtfsFs {
    fn kind(&self) -> &'static str {
        "ntfs"
    }

    fn root(&self) -> u64 {
        ROOT
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        let mut c = self.cursor();
        let file = self.file(&mut c, ino)?;
        let info = file.info().map_err(corrupt)?;
        let dir = file.is_directory();
        let link = if dir { None } else { self.symlink_target(&mut c, &file, info.file_attributes())? };
        let (size, _) = match &link {
            Some(target) => (target.len() as u64, false),
            None if dir => (0, false),
            None => self.data_info(&mut c, &file)?,
        };
        Ok(Stat {
            ino,
            kind: if dir {
                FileKind::Dir
            } else if link.is_some() {
                FileKind::Symlink
            } else {
                FileKind::File
            },
            perm: if dir {
                self.owner.dir_perm
            } else if link.is_some() {
                0o777
            } else {
                self.owner.file_perm
            },
            // The record's link count, as ntfs-3g shows it (a DOS short name counts).
            nlink: if dir { 1 } else { u32::from(file.hard_link_count().max(1)) },
            uid: self.owner.uid,
            gid: self.owner.gid,
            size,
            blocks: size.div_ceil(512),
            atime: nt_time(info.access_time()),
            mtime: nt_time(info.modification_time()),
            ctime: nt_time(info.mft_record_modification_time()),
            crtime: nt_time(info.creation_time()),
            rdev: 0,
        })
    }

    fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64, FsError> {
        self.listing(dir)?.iter().find(|e| e.name == name).map(|e| e.ino).ok_or(FsError::NotFound)
    }

    fn read_dir(&self, dir: u64) -> Result<Arc<Vec<DirEntry>>, FsError> {
        self.listing(dir)
    }

    fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let mut c = self.cursor();
        let file = self.file(&mut c, ino)?;
        if file.is_directory() {
            return Err(FsError::IsDir);
        }
        let Some(item) = file.data(&mut c, "") else { return Ok(0) };
        let item = item.map_err(corrupt)?;
        let attr = item.to_attribute().map_err(corrupt)?;
        let len = attr.value_length();
        if offset >= len {
            return Ok(0);
        }
        let want = (len - offset).min(buf.len() as u64) as usize;
        // Past the initialized size (valid data length) a file reads as zeros.
        let valid = self.initialized_size(&attr).unwrap_or(len).min(len);
        let stored = (valid.saturating_sub(offset)).min(want as u64) as usize;
        buf[stored..want].fill(0);
        if attr.flags().contains(NtfsAttributeFlags::COMPRESSED) && !attr.is_resident() {
            self.read_compressed(&mut c, ino, &attr, offset, &mut buf[..stored])?;
            return Ok((len - offset).min(buf.len() as u64) as usize);
        }
        let want = stored;
        let mut value = attr.value(&mut c).map_err(corrupt)?;
        value.seek(&mut c, SeekFrom::Start(offset)).map_err(corrupt)?;
        let mut done = 0;
        while done < want {
            let n = value.read(&mut c, &mut buf[done..want]).map_err(corrupt)?;
            if n == 0 {
                return Err(FsError::corrupt(CorruptKind::Ntfs, Some(ino), format!("NTFS file {ino}: data ends before its length")));
            }
            done += n;
        }
        Ok((len - offset).min(buf.len() as u64) as usize)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let mut c = self.cursor();
        let file = self.file(&mut c, ino)?;
        let attributes = file.info().map_err(corrupt)?.file_attributes();
        self.symlink_target(&mut c, &file, attributes)?.ok_or(FsError::Invalid("not a symbolic link"))
    }

    /// Named data streams (alternate data streams), as `user.NAME`, the way ntfs-3g shows
    /// them (`streams_interface=xattr`). Streams longer than an xattr may be are left out.
    fn xattrs(&self, ino: u64) -> Result<Xattrs, FsError> {
        let mut c = self.cursor();
        let file = self.file(&mut c, ino)?;
        let mut out = Vec::new();
        let mut attrs = file.attributes();
        while let Some(item) = attrs.next(&mut c) {
            let item = item.map_err(corrupt)?;
            let attr = item.to_attribute().map_err(corrupt)?;
            if attr.name_length() == 0 || attr.ty().map_err(corrupt)? != NtfsAttributeType::Data {
                continue;
            }
            let name = attr.name().map_err(corrupt)?.to_string_lossy();
            let len = attr.value_length();
            if len > MAX_STREAM_XATTR || attr.flags().contains(NtfsAttributeFlags::COMPRESSED) {
                tracing::debug!(ino, stream = %name, len, "alternate data stream not shown (too long for an xattr, or compressed)");
                continue;
            }
            let data = self.whole_value(&mut c, &attr)?.ok_or_else(|| {
                FsError::corrupt(CorruptKind::Ntfs, Some(ino), format!("NTFS file {ino}: stream {name} ends before its length"))
            })?;
            out.push((format!("user.{name}").into_bytes(), data));
        }
        Ok(out)
    }

    fn stats(&self) -> FsStats {
        let cluster = self.ntfs.cluster_size();
        FsStats {
            block_size: cluster,
            blocks: self.ntfs.size() / u64::from(cluster.max(1)),
            free_blocks: 0,
            files: 0,
            free_files: 0,
            name_max: 255,
        }
    }
}
