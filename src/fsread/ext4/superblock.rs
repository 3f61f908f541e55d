//! The ext2/3/4 superblock (1024 bytes at byte 1024) and the features this reader accepts.

use crate::bytes::le;
use crate::fsread::{CorruptKind, FsError};

pub(super) const INCOMPAT_COMPRESSION: u32 = 0x1;
pub(super) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(super) const INCOMPAT_RECOVER: u32 = 0x4;
pub(super) const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
pub(super) const INCOMPAT_META_BG: u32 = 0x10;
pub(super) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(super) const INCOMPAT_64BIT: u32 = 0x80;
pub(super) const INCOMPAT_MMP: u32 = 0x100;
pub(super) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(super) const INCOMPAT_EA_INODE: u32 = 0x400;
pub(super) const INCOMPAT_DIRDATA: u32 = 0x1000;
pub(super) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(super) const INCOMPAT_LARGEDIR: u32 = 0x4000;
pub(super) const INCOMPAT_INLINE_DATA: u32 = 0x8000;
pub(super) const INCOMPAT_ENCRYPT: u32 = 0x10000;
pub(super) const INCOMPAT_CASEFOLD: u32 = 0x20000;

/// Features whose on-disk layout this reader understands.
const SUPPORTED_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_EA_INODE
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA
    | INCOMPAT_CASEFOLD;

pub(super) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(super) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(super) const COMPAT_HAS_JOURNAL: u32 = 0x4;

#[derive(Debug, Clone)]
pub(super) struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub first_data_block: u32,
    pub block_size: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub inode_size: u16,
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
    pub journal_inum: u32,
    pub desc_size: u16,
    pub first_meta_bg: u32,
}

impl Superblock {
    pub(super) fn parse(b: &[u8]) -> Result<Superblock, FsError> {
        if le::u16(b, 0x38) != 0xEF53 {
            return Err(FsError::corrupt(CorruptKind::Superblock, None, "no ext2/3/4 superblock magic"));
        }
        let log = le::u32(b, 0x18);
        if log > 6 {
            return Err(FsError::corrupt(CorruptKind::Superblock, None, format!("block size 2^(10+{log}) is out of range")));
        }
        let incompat = le::u32(b, 0x60);
        let rev = le::u32(b, 0x4C);
        let sb = Superblock {
            inodes_count: le::u32(b, 0x0),
            blocks_count: u64::from(le::u32(b, 0x4)) | if incompat & INCOMPAT_64BIT != 0 { u64::from(le::u32(b, 0x150)) << 32 } else { 0 },
            free_blocks: u64::from(le::u32(b, 0xC)) | if incompat & INCOMPAT_64BIT != 0 { u64::from(le::u32(b, 0x158)) << 32 } else { 0 },
            free_inodes: le::u32(b, 0x10),
            first_data_block: le::u32(b, 0x14),
            block_size: 1024 << log,
            blocks_per_group: le::u32(b, 0x20),
            inodes_per_group: le::u32(b, 0x28),
            inode_size: if rev == 0 { 128 } else { le::u16(b, 0x58) },
            compat: le::u32(b, 0x5C),
            incompat,
            ro_compat: le::u32(b, 0x64),
            journal_inum: le::u32(b, 0xE0),
            desc_size: if incompat & INCOMPAT_64BIT != 0 { le::u16(b, 0xFE) } else { 32 },
            first_meta_bg: le::u32(b, 0x104),
        };
        if sb.blocks_per_group == 0 || sb.inodes_per_group == 0 || sb.inodes_count == 0 {
            return Err(FsError::corrupt(CorruptKind::Superblock, None, "zero blocks or inodes per group"));
        }
        if sb.inode_size < 128 || !sb.inode_size.is_power_of_two() || u32::from(sb.inode_size) > sb.block_size {
            return Err(FsError::corrupt(CorruptKind::Superblock, None, format!("inode size {} is invalid", sb.inode_size)));
        }
        if sb.desc_size < 32 || !sb.desc_size.is_power_of_two() || u32::from(sb.desc_size) > sb.block_size {
            return Err(FsError::corrupt(CorruptKind::Superblock, None, format!("group descriptor size {} is invalid", sb.desc_size)));
        }
        let unsupported = sb.incompat & !SUPPORTED_INCOMPAT;
        if unsupported != 0 {
            let names: Vec<&str> = [
                (INCOMPAT_COMPRESSION, "compression"),
                (INCOMPAT_JOURNAL_DEV, "journal_dev"),
                (INCOMPAT_DIRDATA, "dirdata"),
                (INCOMPAT_ENCRYPT, "encrypt"),
            ]
            .iter()
            .filter(|(bit, _)| unsupported & bit != 0)
            .map(|(_, n)| *n)
            .collect();
            return Err(FsError::Unsupported(format!("ext4 features {names:?} (incompat bits {unsupported:#x})")));
        }
        Ok(sb)
    }

    pub(super) fn group_count(&self) -> u64 {
        (self.blocks_count.saturating_sub(u64::from(self.first_data_block))).div_ceil(u64::from(self.blocks_per_group))
    }

    /// Whether group `g` holds a superblock backup (and so group descriptors).
    pub(super) fn group_has_super(&self, g: u64) -> bool {
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                p = p.saturating_mul(base);
            }
            p == g
        })
    }

    /// `ext4`, `ext3` or `ext2`, the way `blkid` would call it.
    pub(super) fn kind(&self) -> &'static str {
        if self.incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG | INCOMPAT_INLINE_DATA) != 0 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }
}
