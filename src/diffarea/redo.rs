//! The redo log: live writes that were answered while their bytes were still held back
//! ([`crate::engine`]'s `Pending`), kept where the death of the process cannot lose them.
//!
//! A held write's bytes may not reach the volume before the record that preserves the chunk's
//! old content is durable (a power loss would otherwise leave a copy without its chunk). Held
//! only in the process's memory, they would die with the process although the write was
//! answered. So every change to a held chunk is also appended here, with `pwrite` and no sync,
//! before the write is answered: the kernel's page cache keeps it through any death of the
//! process. At the next open on the same boot, the writes still held are replayed through the
//! normal write path. After a reboot the log is discarded, as a disk discards a write it was
//! never asked to flush: its unsynced tail may have survived in any order, and replaying an old
//! entry whose release was lost would overwrite newer data.
//!
//! Two files, `redo.0` and `redo.1`, each a header and entries appended back to back (one
//! appender at a time per file):
//!
//! ```text
//! header (REDO_HEADER_LEN = 512 bytes, only the first 64 used)
//!   0  magic         [u8; 8]  "SHCPREDO"
//!   8  version       u32      2 (1: no first_seq, read as 0)
//!  12  boot_id       [u8;16]  the kernel's boot id when the file was started
//!  28  diff_area_id  [u8;16]  the journal's diff-area id
//!  44  first_seq     u64      entries of this file have a greater seq (version 2)
//!  52  nonce         u64      random, new at every start of the file (version 2)
//!  60  crc32c        u32      of bytes 0..60 (version 1: of 0..44, at 44)
//!
//! entry
//!   0  magic         u32      ENTRY_MAGIC
//!   4  kind          u8       1 = held bytes, 2 = released chunks
//!   5  reserved      [u8; 3]  0
//!   8  seq           u64      global order of entries in both files
//!  16  offset        u64      held bytes: byte offset on the volume; released: 0
//!  24  len           u32      payload bytes (released: 8 per chunk, each a u64 chunk number)
//!  28  crc32c        u32      of the header's nonce (version 2), bytes 0..28, the payload
//!  32  payload
//! ```
//!
//! Replay rule: for each chunk, the bytes of its held entries newer (by `seq`) than the last
//! release entry naming it are applied in `seq` order. A chunk is released (written to the
//! volume from memory) before its release entry is appended, and a release entry is appended
//! before the chunk stops being held, so a write straight to the volume always comes after the
//! release entry that retires older held bytes. The first entry that does not decode ends a
//! file (a torn tail: a process killed in the middle of an append), and so does the first entry
//! whose seq is not above the header's `first_seq`.
//!
//! Emptying a file at a checkpoint (the hot path) rewrites its header with a new `first_seq`,
//! taken from the counter under the file's lock, and keeps the file's bytes: later appends
//! overwrite pages the page cache already has, instead of allocating them again after a
//! truncation. The old entries past the new end are stale, and a scan must stop at the first
//! byte past the last entry of this start, wherever in the old bytes it falls:
//! - an old entry's seq is below `first_seq`;
//! - an entry's checksum covers the header's `nonce`, new and random at every start. A scan
//!   that lands inside an old entry's payload — bytes of the volume, which whoever writes the
//!   volume chooses, and could shape as a complete entry — cannot find an entry that checks
//!   without knowing the nonce, which only the diff area's files hold.
//!
//! An open, which is rare, still cuts a file at its end.
//!
//! Owns the files' bytes only; never reads the volume and never decides what is held.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::bytes::le;
use crate::volume::Storage;

/// Bytes of a redo file's header.
pub(crate) const REDO_HEADER_LEN: u64 = 512;
const MAGIC: &[u8; 8] = b"SHCPREDO";
const VERSION: u32 = 2;
const ENTRY_MAGIC: u32 = 0x3144_4552; // "RED1"
const ENTRY_LEN: usize = 32;
const KIND_HELD: u8 = 1;
const KIND_RELEASED: u8 = 2;

/// Bytes a file emptied in place keeps at least (a checkpoint is due from 8 MiB). Beyond this
/// it keeps what its last round of entries used, so that steady work reuses its pages while the
/// space of a one-off burst of held bytes goes back to the filesystem at the round after it.
const KEEP_MIN: u64 = 32 << 20;

/// Bytes of a file scanned at open, at most: a working log stays within a few times the held
/// bytes (tens of MiB), so a longer file is damage, and its rest is treated as a torn tail. This
/// bounds the memory and time of a replay.
const SCAN_MAX: u64 = 1 << 30;

/// Where the kernel says which boot this is.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel's id of the running boot. `None` where it cannot be read: then a log is never
/// replayed by a later process, since nothing can tell that the page cache survived.
pub fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    uuid::Uuid::parse_str(text.trim()).ok().map(|u| *u.as_bytes())
}

/// A header for a file started with entries above `first_seq`, checksummed with `nonce`.
fn header(boot_id: [u8; 16], diff_area_id: [u8; 16], first_seq: u64, nonce: u64) -> Vec<u8> {
    let mut h = vec![0u8; REDO_HEADER_LEN as usize];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..28].copy_from_slice(&boot_id);
    h[28..44].copy_from_slice(&diff_area_id);
    h[44..52].copy_from_slice(&first_seq.to_le_bytes());
    h[52..60].copy_from_slice(&nonce.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a file's header says.
struct Header {
    boot_id: [u8; 16],
    diff_area_id: [u8; 16],
    first_seq: u64,
    /// `None` in version 1, whose entries' checksums have no nonce.
    nonce: Option<u64>,
}

/// Reads a file's header, if it is one. Version 1 (files that were always truncated when
/// emptied) reads as `first_seq` 0, without a nonce: a newer binary replays what an older one
/// left, as a planned restart into an upgrade needs.
fn parse_header(h: &[u8]) -> Option<Header> {
    if h.len() < 64 || &h[0..8] != MAGIC {
        return None;
    }
    let (first_seq, nonce) = match le::u32(h, 8) {
        1 if crc32c::crc32c(&h[0..44]) == le::u32(h, 44) => (0, None),
        2 if crc32c::crc32c(&h[0..60]) == le::u32(h, 60) => (le::u64(h, 44), Some(le::u64(h, 52))),
        _ => return None,
    };
    let mut boot_id = [0u8; 16];
    let mut diff_area_id = [0u8; 16];
    boot_id.copy_from_slice(&h[12..28]);
    diff_area_id.copy_from_slice(&h[28..44]);
    Some(Header { boot_id, diff_area_id, first_seq, nonce })
}

/// An entry's checksum: the file's nonce (if it has one), the entry's first 28 bytes, the payload.
fn entry_crc(nonce: Option<u64>, head: &[u8], payload: &[u8]) -> u32 {
    let seed = nonce.map_or(0, |n| crc32c::crc32c(&n.to_le_bytes()));
    crc32c::crc32c_append(crc32c::crc32c_append(seed, &head[0..28]), payload)
}

fn entry_header(nonce: Option<u64>, kind: u8, seq: u64, offset: u64, payload: &[u8]) -> [u8; ENTRY_LEN] {
    let mut h = [0u8; ENTRY_LEN];
    h[0..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    h[4] = kind;
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&offset.to_le_bytes());
    h[24..28].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = entry_crc(nonce, &h, payload);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The redo log of one diff area, open for appending.
#[derive(Debug)]
pub(crate) struct RedoLog {
    files: [Arc<dyn Storage>; 2],
    /// Where the next entry of each file goes, and its entries' nonce (one appender at a time
    /// per file).
    tails: [Mutex<Tail>; 2],
    seq: AtomicU64,
    boot_id: [u8; 16],
    diff_area_id: [u8; 16],
}

/// The end of a file's entries and the nonce their checksums cover.
#[derive(Debug, Clone, Copy)]
struct Tail {
    end: u64,
    /// `None` for a version-1 file kept by an open, until its next start.
    nonce: Option<u64>,
}

impl Tail {
    const EMPTY: Tail = Tail { end: REDO_HEADER_LEN, nonce: None };
}

/// The writes a dead process had answered but not yet written to the volume, in order.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// `(byte offset on the volume, bytes)`, to apply in this order.
    pub(crate) writes: Vec<(u64, Vec<u8>)>,
    /// Why the files' content was not used, when it was not (another boot, another diff area).
    pub(crate) discarded: Option<String>,
    /// Bytes past the last good entry of a file (a torn append), summed over both files.
    pub(crate) torn_bytes: u64,
}

/// One entry found by the scan.
struct Found {
    seq: u64,
    file: usize,
    /// Offset of the payload in its file.
    at: u64,
    offset: u64,
    len: u32,
}

impl RedoLog {
    /// Starts both files afresh (what they held is dropped).
    pub(crate) fn create(files: [Arc<dyn Storage>; 2], boot_id: [u8; 16], diff_area_id: [u8; 16]) -> io::Result<Self> {
        let log =
            RedoLog { files, tails: [Mutex::new(Tail::EMPTY), Mutex::new(Tail::EMPTY)], seq: AtomicU64::new(1), boot_id, diff_area_id };
        for i in 0..2 {
            log.clear(i)?;
        }
        Ok(log)
    }

    /// Reads what the files hold for a diff area of `chunk_size`-byte chunks on a volume of
    /// `volume_size` bytes, and opens them for appending after their last good entry, so that a
    /// death during the replay loses nothing: the replay's own entries come after the old ones.
    /// Files of another boot or diff area are started afresh and nothing is replayed.
    pub(crate) fn open(
        files: [Arc<dyn Storage>; 2],
        boot_id: Option<[u8; 16]>,
        diff_area_id: [u8; 16],
        chunk_size: u32,
        volume_size: u64,
    ) -> io::Result<(Self, Recovered)> {
        let mut found = Vec::new();
        let mut released: HashMap<u64, u64> = HashMap::new();
        let mut tails = [Tail::EMPTY; 2];
        let mut discarded = None;
        let mut torn_bytes = 0;
        let mut max_seq = 0;
        for (i, file) in files.iter().enumerate() {
            let len = file.len()?;
            if len == 0 {
                continue;
            }
            let mut h = vec![0u8; REDO_HEADER_LEN.min(len) as usize];
            file.read_at(&mut h, 0)?;
            match parse_header(&h) {
                Some(h) if h.diff_area_id != diff_area_id => {
                    discarded = Some(format!("redo.{i} belongs to another diff area"));
                }
                Some(_) if boot_id.is_none() => {
                    discarded = Some("the kernel's boot id cannot be read, so nothing tells whether the page cache survived".into());
                }
                Some(h) if Some(h.boot_id) != boot_id => {
                    discarded = Some(
                        "the redo log is from an earlier boot (its unsynced writes are not replayed, as on a disk after a power loss)"
                            .into(),
                    );
                }
                Some(h) => {
                    max_seq = max_seq.max(h.first_seq);
                    let end = scan(file.as_ref(), len, i, &h, (chunk_size, volume_size), &mut found, &mut released)?;
                    torn_bytes += len - end;
                    tails[i] = Tail { end, nonce: h.nonce };
                }
                None if len > 0 => discarded = Some(format!("redo.{i} has no valid header")),
                None => {}
            }
        }
        let mut recovered = Recovered { discarded, torn_bytes, ..Default::default() };
        let Some(boot) = boot_id.filter(|_| recovered.discarded.is_none()) else {
            let log = Self::create(files, boot_id.unwrap_or([0; 16]), diff_area_id)?;
            return Ok((log, recovered));
        };
        found.sort_unstable_by_key(|f| f.seq);
        let shift = chunk_size.trailing_zeros();
        for f in &found {
            max_seq = max_seq.max(f.seq);
            let mut data = vec![0u8; f.len as usize];
            files[f.file].read_at(&mut data, f.at)?;
            // The entry's bytes chunk by chunk: only chunks not released after it count.
            let end = f.offset + u64::from(f.len);
            let mut pos = f.offset;
            while pos < end {
                let chunk = pos >> shift;
                let next = ((chunk + 1) << shift).min(end);
                let live = released.get(&chunk).is_none_or(|r| *r < f.seq);
                if live {
                    let part = data[(pos - f.offset) as usize..(next - f.offset) as usize].to_vec();
                    match recovered.writes.last_mut() {
                        Some((o, d)) if *o + d.len() as u64 == pos => d.extend_from_slice(&part),
                        _ => recovered.writes.push((pos, part)),
                    }
                }
                pos = next;
            }
        }
        max_seq = max_seq.max(released.values().copied().max().unwrap_or(0));
        let log = RedoLog {
            files,
            tails: [Mutex::new(tails[0]), Mutex::new(tails[1])],
            seq: AtomicU64::new(max_seq + 1),
            boot_id: boot,
            diff_area_id,
        };
        for (i, tail) in tails.iter().enumerate() {
            // Cut a torn tail or stale entries, so that nothing after the next append can be
            // mistaken for an entry.
            if log.files[i].len()? != tail.end {
                log.files[i].set_len(tail.end)?;
            }
            if tail.end == REDO_HEADER_LEN {
                log.clear(i)?;
            }
        }
        Ok((log, recovered))
    }

    /// Empties file `i` and keeps its bytes for the next appends (see the module docs): its
    /// header is rewritten with a `first_seq` above every entry it holds and a new nonce.
    /// It keeps what this round of entries used, and at least [`KEEP_MIN`]: the bytes of an
    /// earlier, longer round (a burst of held bytes) go back to the filesystem.
    pub(crate) fn reset(&self, i: usize) -> io::Result<()> {
        self.start(i, Some(KEEP_MIN))
    }

    /// Empties file `i` and gives its space back: cut to nothing (which retires every entry
    /// even if what follows fails), then a new header.
    pub(crate) fn clear(&self, i: usize) -> io::Result<()> {
        self.start(i, None)
    }

    /// Starts file `i` afresh, keeping the bytes this round used and at least `keep_min` of
    /// them; nothing with `None`.
    ///
    /// When bytes are kept, the new header goes first: it retires every entry the file holds at
    /// once. Cutting the file first would not: a death before the header write would leave the
    /// old header over the entries below the cut, without the release entries above it that
    /// retired some of them — and a replay would put their old bytes over newer ones.
    fn start(&self, i: usize, keep_min: Option<u64>) -> io::Result<()> {
        let mut tail = self.tails[i].lock();
        let keep = keep_min.map_or(0, |min| min.max(tail.end));
        let first_seq = self.seq.fetch_add(1, Ordering::AcqRel);
        // From the system's random source (a v4 UUID's random bits): not guessable by a writer.
        let nonce = uuid::Uuid::new_v4().as_u64_pair().0;
        let file = &self.files[i];
        if keep == 0 {
            file.set_len(0)?;
        }
        file.write_at(&header(self.boot_id, self.diff_area_id, first_seq, nonce), 0)?;
        *tail = Tail { end: REDO_HEADER_LEN, nonce: Some(nonce) };
        if keep > 0 && file.len()? > keep {
            file.set_len(keep)?;
        }
        Ok(())
    }

    /// Bytes in file `i`.
    pub(crate) fn len(&self, i: usize) -> u64 {
        self.tails[i].lock().end
    }

    /// Appends the bytes of a write to a held chunk to file `i`.
    pub(crate) fn append_held(&self, i: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        self.append(i, KIND_HELD, offset, data)
    }

    /// Appends to file `i` that `chunks` were written to the volume and are held no more.
    pub(crate) fn append_released(&self, i: usize, chunks: &[u64]) -> io::Result<()> {
        let payload: Vec<u8> = chunks.iter().flat_map(|c| c.to_le_bytes()).collect();
        self.append(i, KIND_RELEASED, 0, &payload)
    }

    fn append(&self, i: usize, kind: u8, offset: u64, payload: &[u8]) -> io::Result<()> {
        let mut tail = self.tails[i].lock();
        // The sequence number is taken under the file's lock and the caller's shard lock, so
        // that entries of one chunk are numbered in the order they happened.
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let h = entry_header(tail.nonce, kind, seq, offset, payload);
        self.files[i].write_vectored_at(&[&h, payload], tail.end)?;
        tail.end += (ENTRY_LEN + payload.len()) as u64;
        Ok(())
    }
}

/// Scans one file's entries from the header on; returns where its last good entry ends. An
/// entry whose seq is not above the header's `first_seq`, or whose checksum does not cover the
/// header's nonce, is not of this start of the file and ends it.
fn scan(
    file: &dyn Storage,
    len: u64,
    i: usize,
    header: &Header,
    (chunk_size, volume_size): (u32, u64),
    found: &mut Vec<Found>,
    released: &mut HashMap<u64, u64>,
) -> io::Result<u64> {
    let mut pos = REDO_HEADER_LEN;
    let mut h = [0u8; ENTRY_LEN];
    // A held entry covers one chunk at most; a release entry names at most a run of chunks.
    let max_payload = u64::from(chunk_size).max(8 << 16);
    let len = len.min(SCAN_MAX);
    loop {
        if pos + ENTRY_LEN as u64 > len {
            return Ok(pos);
        }
        file.read_at(&mut h, pos)?;
        let plen = u64::from(le::u32(&h, 24));
        let kind = h[4];
        if le::u32(&h, 0) != ENTRY_MAGIC || plen > max_payload || pos + ENTRY_LEN as u64 + plen > len {
            return Ok(pos);
        }
        let mut payload = vec![0u8; plen as usize];
        file.read_at(&mut payload, pos + ENTRY_LEN as u64)?;
        if entry_crc(header.nonce, &h, &payload) != le::u32(&h, 28) {
            return Ok(pos);
        }
        let seq = le::u64(&h, 8);
        if seq <= header.first_seq {
            return Ok(pos);
        }
        let offset = le::u64(&h, 16);
        match kind {
            KIND_HELD if offset.checked_add(plen).is_some_and(|e| e <= volume_size) && plen > 0 => {
                found.push(Found { seq, file: i, at: pos + ENTRY_LEN as u64, offset, len: plen as u32 });
            }
            KIND_RELEASED if plen.is_multiple_of(8) => {
                for c in payload.chunks_exact(8) {
                    let chunk = le::u64(c, 0);
                    let r = released.entry(chunk).or_insert(0);
                    *r = (*r).max(seq);
                }
            }
            _ => return Ok(pos), // checksummed yet senseless: treat as the end
        }
        pos += ENTRY_LEN as u64 + plen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStorage;

    const BOOT: [u8; 16] = [7; 16];
    const DA: [u8; 16] = [9; 16];

    fn files() -> [Arc<dyn Storage>; 2] {
        [Arc::new(MemStorage::default()), Arc::new(MemStorage::default())]
    }

    #[test]
    fn held_bytes_replay_in_order_until_released() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        log.append_held(0, 4096, &[1; 100]).unwrap(); // chunk 1
        log.append_held(0, 4096 + 50, &[2; 10]).unwrap(); // chunk 1, newer
        log.append_held(1, 8192, &[3; 4096]).unwrap(); // chunk 2, in the other file
        log.append_released(0, &[2]).unwrap(); // chunk 2 reached the volume
        log.append_held(0, 8192 + 5, &[4; 5]).unwrap(); // chunk 2 held again
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert!(rec.discarded.is_none());
        assert_eq!(rec.writes, vec![(4096, vec![1; 100]), (4096 + 50, vec![2; 10]), (8192 + 5, vec![4; 5])]);
    }

    #[test]
    fn another_boot_or_diff_area_replays_nothing() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        log.append_held(0, 0, &[1; 10]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f.clone(), Some([8; 16]), DA, 4096, 1 << 20).unwrap();
        assert!(rec.writes.is_empty());
        assert!(rec.discarded.as_deref().unwrap().contains("earlier boot"));
        // ... and the files were started afresh for this boot.
        let (_log, rec) = RedoLog::open(f.clone(), Some([8; 16]), DA, 4096, 1 << 20).unwrap();
        assert!(rec.writes.is_empty() && rec.discarded.is_none());
        let (_log, rec) = RedoLog::open(f, Some([8; 16]), [1; 16], 4096, 1 << 20).unwrap();
        assert!(rec.discarded.as_deref().unwrap().contains("another diff area"));
    }

    #[test]
    fn a_torn_tail_ends_the_file_and_is_cut() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        log.append_held(0, 0, &[1; 10]).unwrap();
        let good_end = log.len(0);
        log.append_held(0, 100, &[2; 1000]).unwrap();
        drop(log);
        f[0].set_len(good_end + 500).unwrap(); // the second append was cut short
        let (log, rec) = RedoLog::open(f.clone(), Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(0, vec![1; 10])]);
        assert_eq!(rec.torn_bytes, 500);
        assert_eq!(f[0].len().unwrap(), good_end);
        // Appending after a replay keeps the old entries and orders the new ones after them.
        log.append_held(0, 5, &[3; 2]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(0, vec![1; 10]), (5, vec![3; 2])]);
    }

    #[test]
    fn an_entry_beyond_the_volume_or_too_long_ends_the_file() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        log.append_held(0, 0, &[1; 10]).unwrap();
        log.append_held(0, (1 << 20) - 5, &[2; 10]).unwrap(); // past the end of a 1 MiB volume
        log.append_held(0, 20, &[3; 10]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(0, vec![1; 10])]);
    }

    #[test]
    fn no_boot_id_never_replays() {
        let f = files();
        let log = RedoLog::create(f.clone(), [0; 16], DA).unwrap();
        log.append_held(0, 0, &[1; 10]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, None, DA, 4096, 1 << 20).unwrap();
        assert!(rec.writes.is_empty());
    }

    #[test]
    fn a_reset_keeps_the_bytes_and_its_stale_entries_are_never_replayed() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        for k in 0..8u8 {
            log.append_held(0, u64::from(k) * 4096, &[k + 1; 4096]).unwrap();
        }
        let high_water = f[0].len().unwrap();
        log.reset(0).unwrap();
        assert_eq!(f[0].len().unwrap(), high_water, "a reset keeps the file's bytes for the next appends");
        assert_eq!(log.len(0), REDO_HEADER_LEN);
        // One new entry, shorter than the first old one: the scan then meets old bytes twice, at
        // the old first entry's payload and (after more appends) at old entries' headers.
        log.append_held(0, 100, &[0xAA; 16]).unwrap();
        drop(log);
        let (log, rec) = RedoLog::open(f.clone(), Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(100, vec![0xAA; 16])]);
        assert_eq!(f[0].len().unwrap(), REDO_HEADER_LEN + ENTRY_LEN as u64 + 16, "an open cuts the stale entries");
        // Entries that end exactly where an old entry starts: the old one is complete and
        // checksummed, but of an earlier start of the file.
        log.reset(0).unwrap();
        log.append_held(0, 0, &[1; 4096]).unwrap();
        log.append_held(0, 4096, &[2; 4096]).unwrap();
        log.reset(0).unwrap();
        log.append_held(0, 8192, &[3; 4096]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(8192, vec![3; 4096])], "the old second entry, whole after the new first one, is not replayed");
    }

    #[test]
    fn a_reset_keeps_what_the_round_used_and_gives_back_a_burst_later() {
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        let chunk = vec![1u8; 1 << 20];
        while log.len(0) <= KEEP_MIN + (4 << 20) {
            log.append_held(0, 0, &chunk).unwrap();
        }
        let burst = log.len(0);
        log.reset(0).unwrap();
        assert_eq!(f[0].len().unwrap(), burst, "the round that just ended used it all: kept");
        for _ in 0..3 {
            log.append_held(0, 0, &chunk).unwrap();
        }
        log.reset(0).unwrap();
        assert_eq!(f[0].len().unwrap(), KEEP_MIN, "a short round after the burst: its space goes back");
        log.append_held(0, 0, &[2; 10]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 1 << 20, 1 << 30).unwrap();
        assert_eq!(rec.writes, vec![(0, vec![2; 10])]);
    }

    /// Storage whose header writes "die" once armed: the process is gone at that step, so
    /// nothing after it happens (steps before it did).
    #[derive(Debug, Default)]
    struct DiesAtHeaderWrite {
        inner: MemStorage,
        dead: std::sync::atomic::AtomicBool,
    }

    impl Storage for DiesAtHeaderWrite {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if offset == 0 && self.dead.load(Ordering::Acquire) {
                return Err(io::Error::other("the process died here"));
            }
            self.inner.write_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
    }

    #[test]
    fn a_death_while_a_grown_file_is_emptied_replays_nothing_it_retired() {
        // Chunk 0 held early, then more than KEEP_MIN of other entries, then chunk 0 released.
        let dying = Arc::new(DiesAtHeaderWrite::default());
        let f: [Arc<dyn Storage>; 2] = [dying.clone(), Arc::new(MemStorage::default())];
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        log.append_held(0, 0, &[1; 100]).unwrap();
        let filler = vec![2u8; 1 << 20];
        while log.len(0) <= KEEP_MIN + (1 << 20) {
            log.append_held(0, 1 << 20, &filler).unwrap();
        }
        log.append_released(0, &[0, 1]).unwrap();
        // The process dies as the checkpoint empties the file.
        dying.dead.store(true, Ordering::Release);
        assert!(log.reset(0).is_err());
        drop(log);
        dying.dead.store(false, Ordering::Release);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 1 << 20, 1 << 30).unwrap();
        assert_eq!(rec.writes, vec![], "the held bytes of chunk 0 were released: replaying them would undo newer writes");
    }

    #[test]
    fn an_entry_forged_in_a_written_payload_is_not_replayed() {
        // A writer of the volume controls held bytes, so it can shape them as a complete entry
        // with any seq. Where a reset leaves such bytes right after the new entries, the scan
        // meets them; their checksum cannot cover the nonce the writer never saw.
        let f = files();
        let log = RedoLog::create(f.clone(), BOOT, DA).unwrap();
        let forged_payload = [0x66u8; 64];
        let forged = |nonce: Option<u64>| {
            let mut e = entry_header(nonce, KIND_HELD, u64::MAX / 2, 0, &forged_payload).to_vec();
            e.extend_from_slice(&forged_payload);
            e
        };
        // The held write: 32 bytes of padding, then the forged entry, at the payload's start.
        let mut written = vec![0u8; 32];
        written.extend(forged(None));
        log.append_held(0, 0, &written).unwrap();
        log.reset(0).unwrap();
        // A new entry of 32 bytes of payload ends where the forged one starts.
        log.append_held(0, 4096, &[5; 32]).unwrap();
        assert_eq!(log.len(0), REDO_HEADER_LEN + (ENTRY_LEN + 32) as u64);
        drop(log);
        let (_log, rec) = RedoLog::open(f.clone(), Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(4096, vec![5; 32])], "the forged entry is not replayed");
        // The check is the nonce: the same bytes checksummed with the file's nonce would pass.
        let mut h = vec![0u8; REDO_HEADER_LEN as usize];
        f[0].read_at(&mut h, 0).unwrap();
        let nonce = parse_header(&h).unwrap().nonce;
        assert!(nonce.is_some());
        let at = REDO_HEADER_LEN + (ENTRY_LEN + 32) as u64;
        f[0].write_at(&forged(nonce), at).unwrap();
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(4096, vec![5; 32]), (0, forged_payload.to_vec())], "a good entry at the same place is replayed");
    }

    #[test]
    fn a_version_1_log_left_by_an_older_binary_is_replayed() {
        let f = files();
        let mut h = vec![0u8; REDO_HEADER_LEN as usize];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..28].copy_from_slice(&BOOT);
        h[28..44].copy_from_slice(&DA);
        let crc = crc32c::crc32c(&h[0..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        f[0].write_at(&h, 0).unwrap();
        let payload = [9u8; 10];
        let mut e = entry_header(None, KIND_HELD, 1, 300, &payload).to_vec();
        e.extend_from_slice(&payload);
        f[0].write_at(&e, REDO_HEADER_LEN).unwrap();
        f[1].write_at(&h, 0).unwrap();
        let (log, rec) = RedoLog::open(f.clone(), Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert!(rec.discarded.is_none());
        assert_eq!(rec.writes, vec![(300, payload.to_vec())]);
        // Appends after the replay keep the file's version until its next start.
        log.append_held(0, 400, &[8; 4]).unwrap();
        drop(log);
        let (_log, rec) = RedoLog::open(f, Some(BOOT), DA, 4096, 1 << 20).unwrap();
        assert_eq!(rec.writes, vec![(300, payload.to_vec()), (400, vec![8; 4])]);
    }
}
