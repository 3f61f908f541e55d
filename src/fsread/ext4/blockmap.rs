//! Where a file's blocks are: the extent tree (ext4) or the indirect block map (ext2/3),
//! flattened once into sorted runs so that a read at any offset is one binary search.

use crate::bytes::le;
use crate::fsread::{CorruptKind, FsError};

/// `len` logical blocks from `logical` live at `physical..` (never a hole; holes are gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub logical: u64,
    pub len: u64,
    pub physical: u64,
    /// Allocated but not written (reads as zeros).
    pub uninit: bool,
}

/// Finds the run holding logical block `lblk`, or the index of the next run after a hole.
pub(super) fn find(runs: &[Run], lblk: u64) -> Result<usize, usize> {
    match runs.binary_search_by(|r| r.logical.cmp(&lblk)) {
        Ok(i) => Ok(i),
        Err(0) => Err(0),
        Err(i) => {
            let r = &runs[i - 1];
            if lblk < r.logical + r.len {
                Ok(i - 1)
            } else {
                Err(i)
            }
        }
    }
}

const EXTENT_MAGIC: u16 = 0xF30A;

/// Reads a block by number (used for the tree's interior nodes and indirect blocks).
pub(super) trait BlockReader {
    fn block(&self, blk: u64) -> Result<std::sync::Arc<[u8]>, FsError>;
    fn blocks_count(&self) -> u64;
}

/// Flattens the extent tree rooted in `i_block`.
///
/// Bounded by the tree itself: every interior node is a distinct block (a node reached twice is
/// a loop or a shared subtree, i.e. damage), so the walk reads each block of the filesystem at
/// most once, whatever the entry counts say.
pub(super) fn extent_runs(root: &[u8], reader: &dyn BlockReader, ino: u32) -> Result<Vec<Run>, FsError> {
    let mut runs = Vec::new();
    let mut visited = std::collections::HashSet::new();
    walk_extent_node(root, reader, ino, 0, &mut Walk { runs: &mut runs, visited: &mut visited })?;
    runs.sort_by_key(|r| r.logical);
    if runs.windows(2).any(|w| w[0].logical + w[0].len > w[1].logical) {
        return Err(FsError::corrupt(CorruptKind::BlockMap, Some(u64::from(ino)), format!("inode {ino}: overlapping extents")));
    }
    Ok(runs)
}

/// What a walk of an extent tree has found so far.
struct Walk<'a> {
    runs: &'a mut Vec<Run>,
    /// Interior nodes already read.
    visited: &'a mut std::collections::HashSet<u64>,
}

fn walk_extent_node(node: &[u8], reader: &dyn BlockReader, ino: u32, level: u32, walk: &mut Walk<'_>) -> Result<(), FsError> {
    let bad = |what: &str| FsError::corrupt(CorruptKind::BlockMap, Some(u64::from(ino)), format!("inode {ino}: {what}"));
    if le::u16(node, 0) != EXTENT_MAGIC {
        return Err(bad("bad extent header magic"));
    }
    let entries = usize::from(le::u16(node, 2));
    let depth = le::u16(node, 6);
    if depth > 5 || level > 5 || 12 + entries * 12 > node.len() {
        return Err(bad("extent header out of range"));
    }
    for i in 0..entries {
        let e = &node[12 + i * 12..24 + i * 12];
        if depth == 0 {
            let logical = u64::from(le::u32(e, 0));
            let raw_len = le::u16(e, 4);
            let (len, uninit) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
            let physical = u64::from(le::u16(e, 6)) << 32 | u64::from(le::u32(e, 8));
            if len == 0 {
                continue;
            }
            if physical.checked_add(u64::from(len)).is_none_or(|end| end > reader.blocks_count()) {
                return Err(bad("extent beyond the end of the filesystem"));
            }
            walk.runs.push(Run { logical, len: u64::from(len), physical, uninit });
        } else {
            let child = u64::from(le::u16(e, 8)) << 32 | u64::from(le::u32(e, 4));
            if child >= reader.blocks_count() {
                return Err(bad("extent index beyond the end of the filesystem"));
            }
            if !walk.visited.insert(child) {
                return Err(bad("an extent tree node is reached twice (a loop in the tree)"));
            }
            let block = reader.block(child)?;
            walk_extent_node(&block, reader, ino, level + 1, walk)?;
        }
        if walk.runs.len() > 1 << 24 {
            return Err(bad("too many extents"));
        }
    }
    Ok(())
}

/// Flattens the ext2/3 block map: 12 direct blocks, then single, double and triple indirect.
pub(super) fn indirect_runs(iblock: &[u8], reader: &dyn BlockReader, block_size: u32, size: u64, ino: u32) -> Result<Vec<Run>, FsError> {
    let per = u64::from(block_size / 4);
    let needed = size.div_ceil(u64::from(block_size));
    let mut runs: Vec<Run> = Vec::new();
    let mut push = |lblk: u64, pblk: u64| {
        if let Some(last) = runs.last_mut() {
            if last.logical + last.len == lblk && last.physical + last.len == pblk {
                last.len += 1;
                return;
            }
        }
        runs.push(Run { logical: lblk, len: 1, physical: pblk, uninit: false });
    };
    let check = |b: u64| -> Result<u64, FsError> {
        if b >= reader.blocks_count() {
            Err(FsError::corrupt(
                CorruptKind::BlockMap,
                Some(u64::from(ino)),
                format!("inode {ino}: block {b} beyond the end of the filesystem"),
            ))
        } else {
            Ok(b)
        }
    };
    for i in 0..12u64 {
        if i >= needed {
            return Ok(runs);
        }
        let b = u64::from(le::u32(iblock, i as usize * 4));
        if b != 0 {
            push(i, check(b)?);
        }
    }
    // (first logical block covered, pointer, depth)
    let mut start = 12u64;
    for (slot, depth) in [(12usize, 1u32), (13, 2), (14, 3)] {
        let span = per.pow(depth);
        let ptr = u64::from(le::u32(iblock, slot * 4));
        if ptr != 0 && start < needed {
            walk_indirect(check(ptr)?, depth, start, per, needed, reader, &check, &mut push)?;
        }
        start += span;
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
fn walk_indirect(
    blk: u64,
    depth: u32,
    first: u64,
    per: u64,
    needed: u64,
    reader: &dyn BlockReader,
    check: &dyn Fn(u64) -> Result<u64, FsError>,
    push: &mut dyn FnMut(u64, u64),
) -> Result<(), FsError> {
    let data = reader.block(blk)?;
    let span = per.pow(depth - 1);
    for i in 0..per {
        let lblk = first + i * span;
        if lblk >= needed {
            break;
        }
        let b = u64::from(le::u32(&data, i as usize * 4));
        if b == 0 {
            continue;
        }
        let b = check(b)?;
        if depth == 1 {
            push(lblk, b);
        } else {
            walk_indirect(b, depth - 1, lblk, per, needed, reader, check, push)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_runs_and_holes() {
        let runs = [Run { logical: 0, len: 2, physical: 10, uninit: false }, Run { logical: 5, len: 3, physical: 20, uninit: false }];
        assert_eq!(find(&runs, 0), Ok(0));
        assert_eq!(find(&runs, 1), Ok(0));
        assert_eq!(find(&runs, 2), Err(1));
        assert_eq!(find(&runs, 7), Ok(1));
        assert_eq!(find(&runs, 8), Err(2));
    }
}
