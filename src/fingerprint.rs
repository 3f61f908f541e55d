//! A volume's fingerprint: checksums of the places a filesystem rewrites whenever it is mounted
//! read-write or written, so that writes made while shadowcopy was not serving the volume (the
//! raw device mounted at boot by an old fstab line, a `dd`) can be noticed at the next open.
//!
//! Regions, each checksummed on its own (CRC-32C):
//! - the first 64 KiB: the ext2/3/4 superblock (write time, mount count, kbytes written) and
//!   group descriptors, the XFS primary superblock (free-block and inode counters), the FAT boot
//!   sector, FS info and the start of the first FAT, the NTFS boot sector;
//! - the last 64 KiB: backup boot sectors and GPT headers;
//! - NTFS only: the first 16 MFT records (`$MFT` … `$Extend`; `$Volume`'s record changes on every
//!   read-write mount: its update sequence number and dirty flag), found from the boot sector.
//!
//! What it does not see: a write that touches none of these (a raw `dd` into the middle, an XFS
//! overwrite in place that allocates nothing). `docs/design.md` says so.
//!
//! Reads only; never interprets more than the NTFS boot sector's MFT position.

use std::io;

use crate::volume::Storage;

/// Bytes of each edge region.
const EDGE: u64 = 64 << 10;

/// A fingerprint: one CRC-32C per region (zero for a region the volume does not have).
pub(crate) type Fingerprint = [u32; 4];

/// The fingerprint of the `size` bytes of `volume`.
pub(crate) fn fingerprint(volume: &dyn Storage, size: u64) -> io::Result<Fingerprint> {
    let mut fp = [0u32; 4];
    let head = read(volume, 0, EDGE.min(size))?;
    fp[0] = crc32c::crc32c(&head);
    if size > EDGE {
        fp[1] = crc32c::crc32c(&read(volume, size - EDGE, EDGE)?);
    }
    if let Some((at, len)) = ntfs_system_records(&head, size) {
        fp[2] = crc32c::crc32c(&read(volume, at, len)?);
    }
    Ok(fp)
}

fn read(volume: &dyn Storage, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    volume.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// Where NTFS keeps its first 16 MFT records, if `boot` is an NTFS boot sector whose numbers
/// make sense for a volume of `size` bytes.
fn ntfs_system_records(boot: &[u8], size: u64) -> Option<(u64, u64)> {
    if boot.len() < 512 || &boot[3..11] != b"NTFS    " {
        return None;
    }
    let bytes_per_sector = u64::from(u16::from_le_bytes([boot[0x0b], boot[0x0c]]));
    let sectors_per_cluster = u64::from(boot[0x0d]);
    let cluster = bytes_per_sector.checked_mul(sectors_per_cluster).filter(|c| c.is_power_of_two() && *c <= 2 << 20)?;
    let mft_lcn = u64::from_le_bytes(boot[0x30..0x38].try_into().ok()?);
    // Clusters per MFT record: positive is clusters, negative is a power of two in bytes.
    let per_record = boot[0x40] as i8;
    let record =
        if per_record > 0 { cluster.checked_mul(per_record as u64)? } else { 1u64.checked_shl(u32::from(per_record.unsigned_abs()))? };
    let at = mft_lcn.checked_mul(cluster)?;
    let len = record.checked_mul(16).filter(|l| *l <= 1 << 20)?;
    (at.checked_add(len)? <= size).then_some((at, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfs_records_are_found_only_in_a_sane_ntfs_boot_sector() {
        let mut boot = vec![0u8; 512];
        boot[3..11].copy_from_slice(b"NTFS    ");
        boot[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        boot[0x0d] = 8;
        boot[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
        boot[0x40] = 0xf6; // -10: 1 KiB records
        assert_eq!(ntfs_system_records(&boot, 1 << 20), Some((4 * 4096, 16 * 1024)));
        assert_eq!(ntfs_system_records(&boot, 16 * 1024), None, "beyond the volume");
        boot[0x0d] = 3; // 1.5 KiB clusters
        assert_eq!(ntfs_system_records(&boot, 1 << 20), None);
        boot[3] = b'X';
        assert_eq!(ntfs_system_records(&boot, 1 << 20), None);
    }
}
