//! The on-disk structures of Windows VSS (the "Microsoft Software Shadow Copy provider 1.0"),
//! as libyal's libvshadow documentation describes them. All integers are little-endian; GUIDs
//! are in Windows' mixed-endian layout; times are FILETIMEs (100 ns since 1601, UTC).
//!
//! - volume header at byte 0x1e00 of the NTFS volume: where the catalog starts;
//! - catalog: 16 KiB blocks (record type 2) of 128-byte entries; type 2 describes a store
//!   (volume size, store id, creation time), type 3 locates it (block list, store header, bitmaps);
//! - store header (record type 4) followed by the store information (shadow copy id, set id,
//!   attribute flags);
//! - block list: 16 KiB blocks (record type 3) of 32-byte block descriptors;
//! - bitmaps: 16 KiB blocks (record type 6), one bit per 16 KiB block of the volume.
//!
//! Every block starts with a 128-byte header: the VSS identifier, version, record type, its
//! offsets, and the next block's offset (0 at the end of a chain).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::bytes::le;

/// The VSS identifier `3808876b-c176-4e48-b7ae-04046e6cc752` as stored.
pub(super) const VSS_IDENTIFIER: [u8; 16] =
    [0x6b, 0x87, 0x08, 0x38, 0x76, 0xc1, 0x48, 0x4e, 0xb7, 0xae, 0x04, 0x04, 0x6e, 0x6c, 0xc7, 0x52];

pub(super) const VOLUME_HEADER_OFFSET: u64 = 0x1e00;
/// Catalog, block list and bitmap blocks, and store data blocks.
pub(super) const BLOCK_SIZE: u64 = 0x4000;
pub(super) const BLOCK_HEADER_SIZE: usize = 128;

pub(super) const RECORD_VOLUME_HEADER: u32 = 1;
pub(super) const RECORD_CATALOG: u32 = 2;
pub(super) const RECORD_BLOCK_LIST: u32 = 3;
pub(super) const RECORD_STORE_HEADER: u32 = 4;
pub(super) const RECORD_BITMAP: u32 = 6;

pub(super) const FLAG_FORWARDER: u32 = 0x1;
pub(super) const FLAG_OVERLAY: u32 = 0x2;
pub(super) const FLAG_NOT_USED: u32 = 0x4;

pub(super) fn guid(b: &[u8], at: usize) -> Uuid {
    let mut g = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        g.copy_from_slice(s);
    }
    Uuid::from_bytes_le(g)
}

pub(super) fn filetime(t: u64) -> SystemTime {
    const EPOCH_DIFF_100NS: u64 = 116_444_736_000_000_000;
    match t.checked_sub(EPOCH_DIFF_100NS) {
        Some(since) => UNIX_EPOCH + Duration::from_nanos(since.saturating_mul(100)),
        None => UNIX_EPOCH,
    }
}

/// The 128-byte header of a VSS block: the next block of its chain (the record type is checked
/// when it is parsed).
#[derive(Debug, Clone, Copy)]
pub(super) struct BlockHeader {
    pub next: u64,
}

impl BlockHeader {
    /// Parses and checks the identifier; `expected` is the record type the chain must carry.
    pub(super) fn parse(b: &[u8], expected: u32) -> Result<BlockHeader, String> {
        if b.len() < BLOCK_HEADER_SIZE || b[..16] != VSS_IDENTIFIER {
            return Err("the block has no VSS identifier".into());
        }
        let record_type = le::u32(b, 20);
        if record_type != expected {
            return Err(format!("the block has record type {record_type}, expected {expected}"));
        }
        Ok(BlockHeader { next: le::u64(b, 40) })
    }
}

/// The volume header at 0x1e00: where the catalog is (the version, 1 or 2, is checked when it is
/// parsed).
#[derive(Debug, Clone, Copy)]
pub(super) struct VolumeHeader {
    pub catalog_offset: u64,
}

impl VolumeHeader {
    /// `None`: the volume has no VSS header (no shadow copies were ever kept).
    pub(super) fn parse(b: &[u8]) -> Result<Option<VolumeHeader>, String> {
        if b.len() < 64 || b[..16] != VSS_IDENTIFIER {
            return Ok(None);
        }
        let version = le::u32(b, 16);
        if le::u32(b, 20) != RECORD_VOLUME_HEADER {
            return Err("the VSS volume header has a wrong record type".into());
        }
        if !(1..=2).contains(&version) {
            return Err(format!("VSS version {version} is not supported (1 and 2 are)"));
        }
        Ok(Some(VolumeHeader { catalog_offset: le::u64(b, 48) }))
    }
}

/// A catalog entry of type 2: what a store is.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreEntry {
    pub volume_size: u64,
    pub store_id: Uuid,
    pub sequence: u64,
    pub created: u64,
}

/// A catalog entry of type 3: where a store's structures are.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreLocation {
    pub block_list: u64,
    pub store_id: Uuid,
    pub header: u64,
    pub current_bitmap: u64,
    pub previous_bitmap: u64,
}

/// One 128-byte catalog entry.
#[derive(Debug, Clone, Copy)]
pub(super) enum CatalogEntry {
    Store(StoreEntry),
    Location(StoreLocation),
    Other,
}

pub(super) fn catalog_entry(e: &[u8]) -> CatalogEntry {
    match le::u64(e, 0) {
        2 => CatalogEntry::Store(StoreEntry {
            volume_size: le::u64(e, 8),
            store_id: guid(e, 16),
            sequence: le::u64(e, 32),
            created: le::u64(e, 48),
        }),
        3 => CatalogEntry::Location(StoreLocation {
            block_list: le::u64(e, 8),
            store_id: guid(e, 16),
            header: le::u64(e, 32),
            current_bitmap: le::u64(e, 48),
            previous_bitmap: le::u64(e, 72),
        }),
        _ => CatalogEntry::Other,
    }
}

/// The store information after the store header.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreInfo {
    pub copy_id: Uuid,
    pub set_id: Uuid,
    pub attributes: u32,
}

pub(super) fn store_info(b: &[u8]) -> StoreInfo {
    let i = BLOCK_HEADER_SIZE;
    StoreInfo { copy_id: guid(b, i + 16), set_id: guid(b, i + 32), attributes: le::u32(b, i + 56) }
}

/// A 32-byte block descriptor of a store's block list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BlockDescriptor {
    /// Where the block lives in the original volume.
    pub original: u64,
    /// For a forwarder: the original offset of the block in the next store.
    pub relative: u64,
    /// Where the block's old content is stored (relative to the volume).
    pub store: u64,
    pub flags: u32,
    /// For an overlay: which 512-byte sectors it holds (LSB first).
    pub bitmap: u32,
    /// An overlay applied on top of this descriptor.
    pub overlay: Option<Box<BlockDescriptor>>,
}

impl BlockDescriptor {
    pub(super) fn parse(b: &[u8]) -> Option<BlockDescriptor> {
        if b.iter().all(|&x| x == 0) {
            return None;
        }
        Some(BlockDescriptor {
            original: le::u64(b, 0),
            relative: le::u64(b, 8),
            store: le::u64(b, 16),
            flags: le::u32(b, 24),
            bitmap: le::u32(b, 28),
            overlay: None,
        })
    }
    pub(super) fn is_overlay(&self) -> bool {
        self.flags & FLAG_OVERLAY != 0
    }
    pub(super) fn is_forwarder(&self) -> bool {
        self.flags & FLAG_FORWARDER != 0
    }
}
