//! The jbd2 journal, replayed in memory. A copy of a mounted ext4 that was not frozen (a
//! crash-consistent copy) holds committed transactions not yet written home; the kernel replays
//! them at mount. This reader does the same without writing: the result is an overlay of
//! filesystem blocks that every later read consults first.
//!
//! Three passes like the kernel's recovery: find the last committed transaction, collect the
//! revoked blocks, then copy each logged block of a committed transaction unless a later (or
//! the same) transaction revoked it. Fast-commit areas are not replayed (the copy then reads as
//! of the last full commit).

use std::collections::HashMap;
use std::sync::Arc;

use crate::bytes::be;
use crate::fsread::{CorruptKind, FsError};

const MAGIC: u32 = 0xC03B_3998;
const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const REVOKE: u32 = 5;

const INCOMPAT_64BIT: u32 = 0x2;
const INCOMPAT_CSUM_V2: u32 = 0x8;
const INCOMPAT_CSUM_V3: u32 = 0x10;

const TAG_ESCAPE: u32 = 1;
const TAG_SAME_UUID: u32 = 2;
const TAG_LAST: u32 = 8;

/// Reads journal block `n` (a block number inside the journal file).
pub(super) trait JournalReader {
    fn journal_block(&self, n: u64) -> Result<Arc<[u8]>, FsError>;
}

/// The blocks to overlay: filesystem block number → its newest committed content.
pub(super) fn replay(reader: &dyn JournalReader, fs_block_size: u32) -> Result<HashMap<u64, Arc<[u8]>>, FsError> {
    let sb = reader.journal_block(0)?;
    if be::u32(&sb, 0) != MAGIC {
        return Err(FsError::corrupt(CorruptKind::Journal, None, "the journal superblock has no jbd2 magic"));
    }
    let block_size = be::u32(&sb, 0xC);
    let maxlen = u64::from(be::u32(&sb, 0x10));
    let first = u64::from(be::u32(&sb, 0x14));
    let mut sequence = be::u32(&sb, 0x18);
    let start = u64::from(be::u32(&sb, 0x1C));
    let incompat = if be::u32(&sb, 4) == 4 { be::u32(&sb, 0x28) } else { 0 };
    if start == 0 {
        return Ok(HashMap::new());
    }
    if block_size != fs_block_size || first == 0 || first >= maxlen || start < first || start >= maxlen {
        return Err(FsError::corrupt(CorruptKind::Journal, None, "the journal superblock is out of range"));
    }
    let wrap = |n: u64| if n >= maxlen { first + (n - maxlen) } else { n };
    let tag_bytes: usize = if incompat & INCOMPAT_CSUM_V3 != 0 {
        16
    } else {
        let base = if incompat & INCOMPAT_CSUM_V2 != 0 { 14 } else { 12 };
        if incompat & INCOMPAT_64BIT != 0 {
            base
        } else {
            base - 4
        }
    };
    let tail = if incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0 { 4 } else { 0 };

    // Pass 1+2: walk committed transactions, collecting logged blocks and revokes.
    struct Logged {
        seq: u32,
        target: u64,
        at: u64,
        escaped: bool,
    }
    let mut logged: Vec<Logged> = Vec::new();
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    let mut pos = start;
    let mut steps = 0u64;
    'transactions: loop {
        let mut tx_logged: Vec<Logged> = Vec::new();
        let mut tx_revoked: Vec<u64> = Vec::new();
        loop {
            steps += 1;
            if steps > maxlen * 2 {
                break 'transactions;
            }
            let b = reader.journal_block(pos)?;
            if be::u32(&b, 0) != MAGIC || be::u32(&b, 8) != sequence {
                break 'transactions;
            }
            match be::u32(&b, 4) {
                DESCRIPTOR => {
                    let mut at = 12usize;
                    let end = b.len() - tail;
                    let mut data = pos;
                    loop {
                        if at + tag_bytes > end {
                            break;
                        }
                        let t = &b[at..at + tag_bytes];
                        let lo = u64::from(be::u32(t, 0));
                        let (flags, hi) = if tag_bytes == 16 {
                            (be::u32(t, 4), u64::from(be::u32(t, 8)))
                        } else {
                            (u32::from(be::u16(t, 6)), if incompat & INCOMPAT_64BIT != 0 { u64::from(be::u32(t, 8)) } else { 0 })
                        };
                        data = wrap(data + 1);
                        tx_logged.push(Logged { seq: sequence, target: lo | hi << 32, at: data, escaped: flags & TAG_ESCAPE != 0 });
                        at += tag_bytes;
                        if flags & TAG_SAME_UUID == 0 {
                            at += 16;
                        }
                        if flags & TAG_LAST != 0 {
                            break;
                        }
                    }
                    pos = wrap(data + 1);
                }
                REVOKE => {
                    let count = (be::u32(&b, 12) as usize).min(b.len());
                    let width = if incompat & INCOMPAT_64BIT != 0 { 8 } else { 4 };
                    let mut at = 16;
                    while at + width <= count {
                        let blk = if width == 8 {
                            u64::from(be::u32(&b, at)) << 32 | u64::from(be::u32(&b, at + 4))
                        } else {
                            u64::from(be::u32(&b, at))
                        };
                        tx_revoked.push(blk);
                        at += width;
                    }
                    pos = wrap(pos + 1);
                }
                COMMIT => {
                    logged.extend(tx_logged);
                    for blk in tx_revoked {
                        let e = revoked.entry(blk).or_insert(sequence);
                        *e = (*e).max(sequence);
                    }
                    sequence = sequence.wrapping_add(1);
                    pos = wrap(pos + 1);
                    continue 'transactions;
                }
                _ => break 'transactions,
            }
        }
    }
    // Pass 3: newest committed content of each block, unless revoked at or after its transaction.
    let mut overlay: HashMap<u64, Arc<[u8]>> = HashMap::new();
    for l in logged {
        if revoked.get(&l.target).is_some_and(|&r| r >= l.seq) {
            continue;
        }
        let data = reader.journal_block(l.at)?;
        let data: Arc<[u8]> = if l.escaped {
            let mut v = data.to_vec();
            v[..4].copy_from_slice(&MAGIC.to_be_bytes());
            v.into()
        } else {
            data
        };
        overlay.insert(l.target, data);
    }
    tracing::debug!(blocks = overlay.len(), "ext4 journal replayed in memory");
    Ok(overlay)
}
