//! Block group descriptors: where each group's inode table lies (the only field this reader
//! needs), with the `meta_bg` layout.

use super::superblock::{Superblock, INCOMPAT_META_BG};
use crate::bytes::le;
use crate::fsread::{CorruptKind, FsError};

/// Block numbers of the group descriptor blocks, in order.
pub(super) fn descriptor_blocks(sb: &Superblock) -> Vec<u64> {
    let per_block = u64::from(sb.block_size / u32::from(sb.desc_size));
    let blocks = sb.group_count().div_ceil(per_block);
    let first = u64::from(sb.first_data_block) + 1;
    (0..blocks)
        .map(|i| {
            if sb.incompat & INCOMPAT_META_BG != 0 && i >= u64::from(sb.first_meta_bg) {
                let group = i * per_block;
                let start = group * u64::from(sb.blocks_per_group) + u64::from(sb.first_data_block);
                start + u64::from(sb.group_has_super(group))
            } else {
                first + i
            }
        })
        .collect()
}

/// The inode table's first block of each group, from the descriptor blocks' bytes.
pub(super) fn inode_tables(sb: &Superblock, desc_blocks: &[Vec<u8>]) -> Result<Vec<u64>, FsError> {
    let ds = usize::from(sb.desc_size);
    let groups = sb.group_count() as usize;
    let mut tables = Vec::with_capacity(groups);
    'outer: for b in desc_blocks {
        for d in b.chunks_exact(ds) {
            if tables.len() == groups {
                break 'outer;
            }
            let lo = u64::from(le::u32(d, 0x8));
            let hi = if ds >= 64 { u64::from(le::u32(d, 0x28)) } else { 0 };
            let t = lo | hi << 32;
            if t >= sb.blocks_count {
                return Err(FsError::corrupt(
                    CorruptKind::GroupDescriptors,
                    None,
                    format!("group {} inode table at block {t}, beyond the filesystem", tables.len()),
                ));
            }
            tables.push(t);
        }
    }
    if tables.len() != groups {
        return Err(FsError::corrupt(CorruptKind::GroupDescriptors, None, "the group descriptors are truncated"));
    }
    Ok(tables)
}
