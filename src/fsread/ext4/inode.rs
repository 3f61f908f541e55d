//! The on-disk inode: mode, owners, times, size, flags and the 60-byte `i_block` area.

use crate::bytes::le;
use crate::fsread::{CorruptKind, FileKind, FsError, Timestamp};

pub(super) const FLAG_HUGE_FILE: u32 = 0x4_0000;
pub(super) const FLAG_EXTENTS: u32 = 0x8_0000;
pub(super) const FLAG_INLINE_DATA: u32 = 0x1000_0000;

#[derive(Debug, Clone)]
pub(super) struct Inode {
    pub ino: u32,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    /// `i_blocks` as stored (48 bits), and whether it counts filesystem blocks (huge_file).
    pub blocks_raw: u64,
    pub flags: u32,
    pub block: [u8; 60],
    pub file_acl: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Bytes after the 128-byte base (`i_extra_isize` and in-inode xattrs).
    pub extra: Vec<u8>,
    pub extra_isize: u16,
}

fn time(base: u32, extra: Option<u32>) -> Timestamp {
    let mut secs = i64::from(base as i32);
    let mut nanos = 0;
    if let Some(x) = extra {
        secs += i64::from(x & 3) << 32;
        nanos = x >> 2;
    }
    Timestamp { secs, nanos: nanos.min(999_999_999) }
}

impl Inode {
    pub(super) fn parse(ino: u32, b: &[u8]) -> Result<Inode, FsError> {
        if b.len() < 128 {
            return Err(FsError::corrupt(CorruptKind::Inode, Some(u64::from(ino)), format!("inode {ino} is truncated")));
        }
        let extra_isize = if b.len() > 128 { le::u16(b, 0x80) } else { 0 };
        if 128 + usize::from(extra_isize) > b.len() || extra_isize % 4 != 0 {
            return Err(FsError::corrupt(
                CorruptKind::Inode,
                Some(u64::from(ino)),
                format!("inode {ino} has an invalid extra size {extra_isize}"),
            ));
        }
        let has = |off: usize| usize::from(extra_isize) >= off + 4 - 128;
        let ext = |off: usize| has(off).then(|| le::u32(b, off));
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x28 + 60]);
        Ok(Inode {
            ino,
            mode: le::u16(b, 0x0),
            uid: u32::from(le::u16(b, 0x2)) | u32::from(le::u16(b, 0x78)) << 16,
            gid: u32::from(le::u16(b, 0x18)) | u32::from(le::u16(b, 0x7A)) << 16,
            size: u64::from(le::u32(b, 0x4)) | u64::from(le::u32(b, 0x6C)) << 32,
            links: le::u16(b, 0x1A),
            blocks_raw: u64::from(le::u32(b, 0x1C)) | u64::from(le::u16(b, 0x74)) << 32,
            flags: le::u32(b, 0x20),
            block,
            file_acl: u64::from(le::u32(b, 0x68)) | u64::from(le::u16(b, 0x76)) << 32,
            atime: time(le::u32(b, 0x8), ext(0x8C)),
            ctime: time(le::u32(b, 0xC), ext(0x84)),
            mtime: time(le::u32(b, 0x10), ext(0x88)),
            crtime: if has(0x90) { time(le::u32(b, 0x90), ext(0x94)) } else { Timestamp::default() },
            extra: b[128..].to_vec(),
            extra_isize,
        })
    }

    pub(super) fn kind(&self) -> Result<FileKind, FsError> {
        FileKind::from_mode(u32::from(self.mode)).ok_or_else(|| {
            FsError::corrupt(
                CorruptKind::Inode,
                Some(u64::from(self.ino)),
                format!("inode {} has an invalid mode {:o}", self.ino, self.mode),
            )
        })
    }

    /// 512-byte blocks, as `stat` shows them.
    pub(super) fn blocks_512(&self, huge_file_fs: bool, block_size: u32) -> u64 {
        if huge_file_fs && self.flags & FLAG_HUGE_FILE != 0 {
            self.blocks_raw.saturating_mul(u64::from(block_size / 512))
        } else {
            self.blocks_raw
        }
    }

    /// The device number of a device node (kernel `new_encode_dev` form).
    pub(super) fn rdev(&self) -> u32 {
        let b0 = le::u32(&self.block, 0);
        if b0 != 0 {
            // Old encoding: major in bits 8..16, minor in 0..8; the same number in the new form.
            b0 & 0xFFFF
        } else {
            le::u32(&self.block, 4)
        }
    }

    /// Bytes of xattr space inside the inode (after the extra fields).
    pub(super) fn inline_xattr_area(&self) -> &[u8] {
        self.extra.get(usize::from(self.extra_isize)..).unwrap_or(&[])
    }
}
