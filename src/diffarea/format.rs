//! The diff area's on-disk format: encoding and decoding only, no I/O.
//!
//! A diff area is a directory with eight files:
//!
//! | file | content |
//! |---|---|
//! | `store` | preserved chunks; slot *n* is the bytes `[n*chunk_size, (n+1)*chunk_size)` |
//! | `journal.0`, `journal.1` | two journal files; the one with the higher valid generation is active |
//! | `index.0`, `index.1` | two checkpointed index files; the journal's `IndexCheckpoint` names the live one |
//! | `redo.0`, `redo.1` | the redo log of answered live writes still held back (format in [`super::redo`]) |
//! | `lock` | held with `flock` by the process that has the diff area open |
//!
//! All integers are little-endian. A journal file is one header block followed by batches:
//!
//! ```text
//! header (HEADER_LEN = 4096 bytes, only the first 68 used)
//!   0  magic         [u8; 8]  "SHCPJRNL"
//!   8  version       u32      FORMAT_VERSION
//!  12  header_len    u32      4096
//!  16  generation    u64      bumped by every compaction; 0 = file unused
//!  24  diff_area_id  [u8;16]  UUID, the same in both files
//!  40  chunk_size    u32      power of two, 4 KiB ..= 1 MiB
//!  44  reserved      u32      0
//!  48  volume_size   u64      bytes of the volume this diff area belongs to
//!  56  created_ns    u64      creation time of the diff area, ns since the Unix epoch
//!  64  crc32c        u32      of bytes 0..64
//!
//! batch (starts at a multiple of BATCH_ALIGN = 512, padded with zeros to the next one)
//!   0  magic         u32      BATCH_MAGIC
//!   4  payload_len   u32
//!   8  generation    u64      must equal the header's (stale batches of an older use are ignored)
//!  16  seq           u64      1, 2, 3, … within a generation
//!  24  crc32c        u32      of the header with this field zero, then the payload
//!  28  reserved      u32
//!  32  payload       records, back to back
//! ```
//!
//! Records (first byte is the tag):
//!
//! | tag | record | body |
//! |---|---|---|
//! | 1 | `Config` | `max_size u64` (`u64::MAX` = unbounded) |
//! | 2 | `SnapshotCreated` | `epoch u32, id [16], set_id [16], created_ns u64, set_size u32, attributes u32` |
//! | 3 | `SnapshotDeleted` | `epoch u32` |
//! | 4 | `Preserved` | `chunk u64, upper u32, slot u32`: slot holds the chunk's content for every copy with epoch in `(previous upper of this chunk, upper]` |
//! | 5 | `SnapshotFailed` | `epoch u32, len u16, reason [len]` (UTF-8) |
//! | 6 | `SetComplete` | `epoch u32`: every copy of this copy's set (`set_size` > 1) was durable on its volume; without it, such a copy is of a set a crash may have cut short, and the daemon decides at open (all copies there: complete it; some missing: drop them) |
//! | 7 | `Sealed` | `crc [u32; 4]`: the daemon stopped cleanly and the volume's fingerprint (see `fingerprint.rs`) was this; any later record unseals |
//! | 8 | `SnapshotStale` | `epoch u32, len u16, reason [len]`: the volume was written while nobody served it, after this copy was taken: blocks changed then were not preserved, so the copy may show them |
//! | 9 | `Unsealed` | (empty): the volume is served again |
//! | 10 | `IndexCheckpoint` | `file u8, generation u64`: the records so far are in `index.<file>` (format in [`super::base`]), whose header carries `generation`; the journal holds the records since. Only first in a journal (format version 2) |
//!
//! A reader that finds a `version` above [`FORMAT_VERSION`] refuses the diff area; an unknown tag
//! inside a batch whose checksum is good is corruption.

use thiserror::Error;

use crate::bytes::{le, Reader};

/// The format version this build writes and the newest it reads (2: the journal may start with
/// an `IndexCheckpoint`; version 1 journals hold every record and are read as they are).
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Bytes reserved for the journal header.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Batches start on multiples of this.
pub(crate) const BATCH_ALIGN: u64 = 512;
/// Size of a batch header.
pub(crate) const BATCH_HEADER_LEN: usize = 32;
/// Largest payload a batch may declare (bounds what a corrupt length can make us read).
pub(crate) const MAX_BATCH_PAYLOAD: u32 = 64 << 20;

const MAGIC: &[u8; 8] = b"SHCPJRNL";
const BATCH_MAGIC: u32 = 0x4843_5442; // "BTCH"
const HEADER_USED: usize = 68;

/// The journal header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub generation: u64,
    pub diff_area_id: [u8; 16],
    pub chunk_size: u32,
    pub volume_size: u64,
    pub created_ns: u64,
}

/// Why a header or batch does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum DecodeError {
    /// not a shadowcopy journal (bad magic)
    #[error("not a shadowcopy journal (bad magic)")]
    BadMagic,
    /// checksum mismatch
    #[error("checksum mismatch")]
    BadChecksum,
    /// the diff area was written by a newer format
    #[error("written by format version {found}; this build reads up to version {FORMAT_VERSION}")]
    NewerVersion { found: u32 },
    /// a field holds an impossible value
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// a record is cut short or has an unknown tag
    #[error("malformed record at payload byte {0}")]
    BadRecord(usize),
}

impl Header {
    /// Encodes into a full header block.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        b[24..40].copy_from_slice(&self.diff_area_id);
        b[40..44].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.volume_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.created_ns.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header block.
    pub(crate) fn decode(b: &[u8]) -> Result<Header, DecodeError> {
        if b.len() < HEADER_USED {
            return Err(DecodeError::Invalid("header too short"));
        }
        if &b[0..8] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if crc32c::crc32c(&b[0..64]) != le::u32(b, 64) {
            return Err(DecodeError::BadChecksum);
        }
        let version = le::u32(b, 8);
        if version > FORMAT_VERSION {
            return Err(DecodeError::NewerVersion { found: version });
        }
        if version == 0 || u64::from(le::u32(b, 12)) != HEADER_LEN {
            return Err(DecodeError::Invalid("version or header length"));
        }
        let chunk_size = le::u32(b, 40);
        if !valid_chunk_size(chunk_size) {
            return Err(DecodeError::Invalid("chunk size"));
        }
        Ok(Header {
            version,
            generation: le::u64(b, 16),
            diff_area_id: b[24..40].try_into().map_err(|_| DecodeError::Invalid("id"))?,
            chunk_size,
            volume_size: le::u64(b, 48),
            created_ns: le::u64(b, 56),
        })
    }
}

/// Whether `size` is an allowed chunk size: a power of two from 4 KiB to 1 MiB.
pub(crate) fn valid_chunk_size(size: u32) -> bool {
    size.is_power_of_two() && (4096..=1 << 20).contains(&size)
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Config { max_size: u64 },
    SnapshotCreated(SnapshotRecord),
    SnapshotDeleted { epoch: u32 },
    Preserved { chunk: u64, upper: u32, slot: u32 },
    SnapshotFailed { epoch: u32, reason: String },
    SetComplete { epoch: u32 },
    Sealed { fingerprint: [u32; 4] },
    SnapshotStale { epoch: u32, reason: String },
    Unsealed,
    IndexCheckpoint { file: u8, generation: u64 },
}

/// What the journal keeps of a shadow copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotRecord {
    pub epoch: u32,
    pub id: [u8; 16],
    pub set_id: [u8; 16],
    pub created_ns: u64,
    pub set_size: u32,
    pub attributes: u32,
}

const TAG_CONFIG: u8 = 1;
const TAG_CREATED: u8 = 2;
const TAG_DELETED: u8 = 3;
const TAG_PRESERVED: u8 = 4;
const TAG_FAILED: u8 = 5;
const TAG_SET_COMPLETE: u8 = 6;
const TAG_SEALED: u8 = 7;
const TAG_STALE: u8 = 8;
const TAG_UNSEALED: u8 = 9;
const TAG_CHECKPOINT: u8 = 10;

impl Record {
    /// Appends the encoding of this record to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Record::Config { max_size } => {
                out.push(TAG_CONFIG);
                out.extend_from_slice(&max_size.to_le_bytes());
            }
            Record::SnapshotCreated(s) => {
                out.push(TAG_CREATED);
                out.extend_from_slice(&s.epoch.to_le_bytes());
                out.extend_from_slice(&s.id);
                out.extend_from_slice(&s.set_id);
                out.extend_from_slice(&s.created_ns.to_le_bytes());
                out.extend_from_slice(&s.set_size.to_le_bytes());
                out.extend_from_slice(&s.attributes.to_le_bytes());
            }
            Record::SnapshotDeleted { epoch } => {
                out.push(TAG_DELETED);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Record::Preserved { chunk, upper, slot } => {
                out.push(TAG_PRESERVED);
                out.extend_from_slice(&chunk.to_le_bytes());
                out.extend_from_slice(&upper.to_le_bytes());
                out.extend_from_slice(&slot.to_le_bytes());
            }
            Record::SnapshotFailed { epoch, reason } => {
                out.push(TAG_FAILED);
                encode_epoch_reason(out, *epoch, reason);
            }
            Record::SnapshotStale { epoch, reason } => {
                out.push(TAG_STALE);
                encode_epoch_reason(out, *epoch, reason);
            }
            Record::Sealed { fingerprint } => {
                out.push(TAG_SEALED);
                for c in fingerprint {
                    out.extend_from_slice(&c.to_le_bytes());
                }
            }
            Record::Unsealed => out.push(TAG_UNSEALED),
            Record::IndexCheckpoint { file, generation } => {
                out.push(TAG_CHECKPOINT);
                out.push(*file);
                out.extend_from_slice(&generation.to_le_bytes());
            }
            Record::SetComplete { epoch } => {
                out.push(TAG_SET_COMPLETE);
                out.extend_from_slice(&epoch.to_le_bytes());
            }
        }
    }

    /// Decodes every record of a payload.
    pub(crate) fn decode_all(payload: &[u8]) -> Result<Vec<Record>, DecodeError> {
        let mut records = Vec::new();
        let mut r = Reader::new(payload);
        while r.position() < payload.len() {
            let start = r.position();
            let bad = || DecodeError::BadRecord(start);
            let tag = r.u8().ok_or_else(bad)?;
            let record = match tag {
                TAG_CONFIG => Record::Config { max_size: r.u64().ok_or_else(bad)? },
                TAG_CREATED => Record::SnapshotCreated(SnapshotRecord {
                    epoch: r.u32().ok_or_else(bad)?,
                    id: r.array().ok_or_else(bad)?,
                    set_id: r.array().ok_or_else(bad)?,
                    created_ns: r.u64().ok_or_else(bad)?,
                    set_size: r.u32().ok_or_else(bad)?,
                    attributes: r.u32().ok_or_else(bad)?,
                }),
                TAG_DELETED => Record::SnapshotDeleted { epoch: r.u32().ok_or_else(bad)? },
                TAG_PRESERVED => {
                    Record::Preserved { chunk: r.u64().ok_or_else(bad)?, upper: r.u32().ok_or_else(bad)?, slot: r.u32().ok_or_else(bad)? }
                }
                TAG_FAILED => {
                    let epoch = r.u32().ok_or_else(bad)?;
                    let len = r.u16().ok_or_else(bad)? as usize;
                    let bytes = r.take(len).ok_or_else(bad)?;
                    Record::SnapshotFailed { epoch, reason: String::from_utf8_lossy(bytes).into_owned() }
                }
                TAG_SET_COMPLETE => Record::SetComplete { epoch: r.u32().ok_or_else(bad)? },
                TAG_SEALED => {
                    let mut fingerprint = [0u32; 4];
                    for c in &mut fingerprint {
                        *c = r.u32().ok_or_else(bad)?;
                    }
                    Record::Sealed { fingerprint }
                }
                TAG_STALE => {
                    let epoch = r.u32().ok_or_else(bad)?;
                    let len = r.u16().ok_or_else(bad)? as usize;
                    let bytes = r.take(len).ok_or_else(bad)?;
                    Record::SnapshotStale { epoch, reason: String::from_utf8_lossy(bytes).into_owned() }
                }
                TAG_UNSEALED => Record::Unsealed,
                TAG_CHECKPOINT => {
                    let file = r.u8().ok_or_else(bad)?;
                    if file > 1 {
                        return Err(bad());
                    }
                    Record::IndexCheckpoint { file, generation: r.u64().ok_or_else(bad)? }
                }
                _ => return Err(bad()),
            };
            records.push(record);
        }
        Ok(records)
    }
}

/// `epoch u32, len u16, reason [len]` (UTF-8, cut at 64 KiB).
fn encode_epoch_reason(out: &mut Vec<u8>, epoch: u32, reason: &str) {
    out.extend_from_slice(&epoch.to_le_bytes());
    let bytes = reason.as_bytes();
    let len = bytes.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&bytes[..len]);
}

/// Frames a payload as a batch, padded to [`BATCH_ALIGN`].
pub(crate) fn encode_batch(generation: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let total = (BATCH_HEADER_LEN + payload.len()).next_multiple_of(BATCH_ALIGN as usize);
    let mut b = vec![0u8; total];
    b[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[8..16].copy_from_slice(&generation.to_le_bytes());
    b[16..24].copy_from_slice(&seq.to_le_bytes());
    b[BATCH_HEADER_LEN..BATCH_HEADER_LEN + payload.len()].copy_from_slice(payload);
    let crc = batch_crc(&b[..BATCH_HEADER_LEN], payload);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A batch header that passed its own sanity checks (the payload is checked by [`check_batch`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchHeader {
    pub payload_len: u32,
    pub generation: u64,
    pub seq: u64,
    crc: u32,
}

impl BatchHeader {
    /// Bytes the whole batch takes, padding included.
    pub(crate) fn framed_len(&self) -> u64 {
        (BATCH_HEADER_LEN as u64 + u64::from(self.payload_len)).next_multiple_of(BATCH_ALIGN)
    }
}

/// Parses a batch header; `None` when it cannot be one.
pub(crate) fn parse_batch_header(b: &[u8]) -> Option<BatchHeader> {
    if b.len() < BATCH_HEADER_LEN || le::u32(b, 0) != BATCH_MAGIC {
        return None;
    }
    let payload_len = le::u32(b, 4);
    if payload_len > MAX_BATCH_PAYLOAD {
        return None;
    }
    Some(BatchHeader { payload_len, generation: le::u64(b, 8), seq: le::u64(b, 16), crc: le::u32(b, 24) })
}

/// Verifies a batch's checksum over its header bytes and payload.
pub(crate) fn check_batch(header_bytes: &[u8], header: &BatchHeader, payload: &[u8]) -> bool {
    header_bytes.len() >= BATCH_HEADER_LEN && batch_crc(&header_bytes[..BATCH_HEADER_LEN], payload) == header.crc
}

fn batch_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = [0u8; BATCH_HEADER_LEN];
    h.copy_from_slice(&header[..BATCH_HEADER_LEN]);
    h[24..28].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&h), payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_newer_versions() {
        let h = Header { version: 1, generation: 7, diff_area_id: [3; 16], chunk_size: 16384, volume_size: 1 << 30, created_ns: 42 };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        let mut newer = Header { version: FORMAT_VERSION + 1, ..h }.encode();
        assert_eq!(Header::decode(&newer), Err(DecodeError::NewerVersion { found: FORMAT_VERSION + 1 }));
        newer[20] ^= 1;
        assert_eq!(Header::decode(&newer), Err(DecodeError::BadChecksum));
    }

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let records = vec![
            Record::Config { max_size: u64::MAX },
            Record::SnapshotCreated(SnapshotRecord { epoch: 9, id: [1; 16], set_id: [2; 16], created_ns: 5, set_size: 2, attributes: 3 }),
            Record::Preserved { chunk: 1 << 40, upper: 9, slot: 77 },
            Record::SnapshotDeleted { epoch: 9 },
            Record::SnapshotFailed { epoch: 4, reason: "journal batch 3 damaged".into() },
            Record::Unsealed,
            Record::IndexCheckpoint { file: 1, generation: 12 },
            Record::SetComplete { epoch: 9 },
            Record::SnapshotStale { epoch: 9, reason: "written while nobody served it".into() },
            // Last: cutting one byte off must break a record, not end the payload cleanly.
            Record::Sealed { fingerprint: [1, 2, 3, u32::MAX] },
        ];
        let mut payload = Vec::new();
        records.iter().for_each(|r| r.encode_into(&mut payload));
        assert_eq!(Record::decode_all(&payload).unwrap(), records);
        assert!(Record::decode_all(&payload[..payload.len() - 1]).is_err());
    }

    #[test]
    fn batch_checksum_detects_a_flipped_bit() {
        let b = encode_batch(3, 1, b"\x03\x01\x00\x00\x00");
        assert_eq!(b.len() as u64 % BATCH_ALIGN, 0);
        let h = parse_batch_header(&b).unwrap();
        let payload = &b[BATCH_HEADER_LEN..BATCH_HEADER_LEN + h.payload_len as usize];
        assert!(check_batch(&b, &h, payload));
        let mut bad = payload.to_vec();
        bad[0] ^= 0x10;
        assert!(!check_batch(&b, &h, &bad));
    }
}
