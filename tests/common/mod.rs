//! Shared helpers for the engine's integration tests: a volume and its diff area on one
//! simulated disk, so a test can lose power at any sync and reopen what a reboot would find.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use shadowcopy::testing::SimDisk;
use shadowcopy::volume::Storage;
use shadowcopy::{DiffAreaFiles, DiffAreaOptions, EngineOptions, ShadowVolume};

/// File ids on the simulated disk.
pub(crate) const VOLUME: usize = 0;
pub(crate) const STORE: usize = 1;

/// Engine options for deterministic tests: no background commits.
pub(crate) fn quiet_engine() -> EngineOptions {
    EngineOptions {
        cache_chunks: 64,
        pending_limit: 1 << 20,
        commit_interval: Duration::from_secs(3600),
        journal_compact_bytes: Some(6 << 10),
        ..EngineOptions::default()
    }
}

/// The diff area's files on the disk: store, journal and the redo log for the disk's boot.
fn files(disk: &Arc<SimDisk>) -> DiffAreaFiles {
    let f = |i| -> Arc<dyn Storage> { disk.file(i) };
    DiffAreaFiles::new(f(STORE), [f(2), f(3)], [f(6), f(7)]).with_redo([f(4), f(5)], Some(disk.boot_id()))
}

/// A new disk holding a volume with `initial` content and an empty diff area.
pub(crate) fn create(initial: Vec<u8>, options: DiffAreaOptions, engine: EngineOptions) -> (Arc<SimDisk>, ShadowVolume) {
    let disk = SimDisk::new();
    disk.add_file(initial);
    for _ in 0..7 {
        disk.add_file(Vec::new());
    }
    let vol = ShadowVolume::create(disk.file(VOLUME), files(&disk), options, engine).expect("create diff area");
    (disk, vol)
}

/// Opens the volume and diff area on `disk`.
pub(crate) fn open(disk: &Arc<SimDisk>, engine: EngineOptions) -> Result<ShadowVolume, shadowcopy::Error> {
    ShadowVolume::open(disk.file(VOLUME), files(disk), engine)
}

/// Deterministic pseudo-random bytes.
pub(crate) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
