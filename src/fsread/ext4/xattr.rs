//! Extended attributes: in the inode after its extra fields, and in one external block. Values
//! may live in an EA inode (`ea_inode`). POSIX ACLs are converted from ext4's compact form to the
//! `system.posix_acl_*` form the kernel shows.

use crate::bytes::le;
use crate::fsread::{CorruptKind, FsError};

const MAGIC: u32 = 0xEA02_0000;

/// An entry before its value is fetched.
#[derive(Debug, Clone)]
pub(super) struct RawXattr {
    pub name: Vec<u8>,
    /// The value's bytes when stored in place.
    pub value: Vec<u8>,
    /// Inode holding the value (`ea_inode`), with the value's size.
    pub value_inode: Option<(u32, u32)>,
}

fn prefix(index: u8) -> Option<&'static str> {
    Some(match index {
        1 => "user.",
        2 => "system.posix_acl_access",
        3 => "system.posix_acl_default",
        4 => "trusted.",
        6 => "security.",
        7 => "system.",
        8 => "system.richacl",
        _ => return None,
    })
}

/// Parses entries starting at `entries` in `area`; value offsets count from `value_base`.
fn parse_entries(area: &[u8], entries: usize, value_base: usize, ino: u32, out: &mut Vec<RawXattr>) -> Result<(), FsError> {
    let bad = || FsError::corrupt(CorruptKind::Xattr, Some(u64::from(ino)), format!("inode {ino}: damaged extended attribute"));
    let mut at = entries;
    while at + 4 <= area.len() && le::u32(area, at) != 0 {
        if at + 16 > area.len() {
            return Err(bad());
        }
        let name_len = usize::from(area[at]);
        let index = area[at + 1];
        let value_offs = usize::from(le::u16(area, at + 2));
        let value_inum = le::u32(area, at + 4);
        let value_size = le::u32(area, at + 8);
        let name = area.get(at + 16..at + 16 + name_len).ok_or_else(bad)?;
        if let Some(p) = prefix(index) {
            let mut full = p.as_bytes().to_vec();
            full.extend_from_slice(name);
            let (value, value_inode) = if value_inum != 0 {
                (Vec::new(), Some((value_inum, value_size)))
            } else {
                let start = value_base + value_offs;
                let v = area.get(start..start + value_size as usize).ok_or_else(bad)?;
                (if index == 2 || index == 3 { acl_to_xattr(v).ok_or_else(bad)? } else { v.to_vec() }, None)
            };
            out.push(RawXattr { name: full, value, value_inode });
        }
        at += (16 + name_len + 3) & !3;
    }
    Ok(())
}

/// Attributes stored inside the inode (`area` is the space after `i_extra_isize`).
pub(super) fn in_inode(area: &[u8], ino: u32, out: &mut Vec<RawXattr>) -> Result<(), FsError> {
    if area.len() < 4 || le::u32(area, 0) != MAGIC {
        return Ok(());
    }
    parse_entries(area, 4, 4, ino, out)
}

/// Attributes of an external xattr block.
pub(super) fn in_block(block: &[u8], ino: u32, out: &mut Vec<RawXattr>) -> Result<(), FsError> {
    if le::u32(block, 0) != MAGIC {
        return Err(FsError::corrupt(
            CorruptKind::Xattr,
            Some(u64::from(ino)),
            format!("inode {ino}: its extended attribute block has no magic"),
        ));
    }
    parse_entries(block, 32, 0, ino, out)
}

/// ext4's ACL (version 1; short entries for the owner/group/mask/other tags) to the
/// `posix_acl_xattr` form (version 2; every entry 8 bytes).
fn acl_to_xattr(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || le::u32(v, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut at = 4;
    while at < v.len() {
        let tag = le::u16(v, at);
        let perm = le::u16(v, at + 2);
        let (id, len) = match tag {
            // ACL_USER, ACL_GROUP carry an id.
            0x02 | 0x08 => (le::u32(v, at + 4), 8),
            0x01 | 0x04 | 0x10 | 0x20 => (u32::MAX, 4),
            _ => return None,
        };
        if at + len > v.len() {
            return None;
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
        at += len;
    }
    Some(out)
}
