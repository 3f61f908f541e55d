//! Opening a diff area whose journal files and checkpointed index hold arbitrary bytes (recovery
//! end to end), then reading every copy it claims: an error is fine, a panic or hang is a
//! finding. The input's first two thirds are the journals (half each), the last third both
//! index files.
#![no_main]

use std::sync::Arc;

use shadowcopy::testing::MemStorage;
use shadowcopy::volume::Storage;
use shadowcopy::{DiffAreaFiles, EngineOptions, ShadowVolume};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let third = data.len() / 3;
    let (journals, index) = data.split_at(2 * third);
    let half = journals.len() / 2;
    let mem = |v: &[u8]| -> Arc<dyn Storage> { Arc::new(MemStorage::from_vec(v.to_vec())) };
    let files = DiffAreaFiles::new(mem(&[0; 1 << 16]), [mem(&journals[..half]), mem(&journals[half..])], [mem(index), mem(index)]);
    let volume = Arc::new(MemStorage::new(1 << 20));
    let engine = EngineOptions { cache_chunks: 16, ..EngineOptions::default() };
    if let Ok(vol) = ShadowVolume::open(volume, files, engine) {
        let mut buf = vec![0u8; 4096];
        for c in vol.copies() {
            let _ = vol.read_copy(c.id, &mut buf, 0);
        }
    }
});
