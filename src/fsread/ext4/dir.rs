//! Directory entries (`ext4_dir_entry_2`). Hashed (htree) directories need no special case: their
//! index blocks look like one empty entry spanning the block, so a linear walk of every block
//! sees exactly the leaf entries. The metadata_csum tail (inode 0) is skipped the same way.

use crate::bytes::le;
use crate::fsread::{CorruptKind, FileKind, FsError};

/// One raw entry: name, inode and the type byte (0 when the filesystem lacks `filetype`).
#[derive(Debug, Clone)]
pub(super) struct RawEntry {
    pub name: Vec<u8>,
    pub ino: u32,
    pub file_type: u8,
}

/// Parses the entries of one directory block (or inline-data area), appending to `out`.
pub(super) fn parse_block(b: &[u8], has_filetype: bool, dir_ino: u32, out: &mut Vec<RawEntry>) -> Result<(), FsError> {
    let mut at = 0usize;
    while at + 8 <= b.len() {
        let ino = le::u32(b, at);
        let mut rec_len = usize::from(le::u16(b, at + 4));
        if rec_len == 0 || rec_len == 65535 {
            // 64 KiB blocks encode a full-block record this way.
            rec_len = b.len() - at;
        }
        let name_len = if has_filetype { usize::from(b[at + 6]) } else { usize::from(le::u16(b, at + 6)) };
        if rec_len < 8 || rec_len % 4 != 0 || at + rec_len > b.len() || 8 + name_len > rec_len {
            return Err(FsError::corrupt(
                CorruptKind::Directory,
                Some(u64::from(dir_ino)),
                format!("directory {dir_ino}: bad entry at byte {at}"),
            ));
        }
        if ino != 0 && name_len > 0 {
            let name = b[at + 8..at + 8 + name_len].to_vec();
            if name != b"." && name != b".." {
                out.push(RawEntry { name, ino, file_type: if has_filetype { b[at + 7] } else { 0 } });
            }
        }
        at += rec_len;
    }
    Ok(())
}

/// The kind a directory entry's type byte names (`None`: unknown, ask the inode).
pub(super) fn kind_of(file_type: u8) -> Option<FileKind> {
    Some(match file_type {
        1 => FileKind::File,
        2 => FileKind::Dir,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_entries_are_errors_not_panics() {
        let mut b = vec![0u8; 64];
        b[0] = 12; // inode 12
        b[4] = 3; // rec_len 3: invalid
        let mut out = Vec::new();
        assert!(parse_block(&b, true, 2, &mut out).is_err());
        b[4] = 64;
        b[6] = 200; // name longer than the record
        assert!(parse_block(&b, true, 2, &mut out).is_err());
        b[6] = 4;
        b[7] = 1;
        b[8..12].copy_from_slice(b"abcd");
        parse_block(&b, true, 2, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, b"abcd");
    }
}
