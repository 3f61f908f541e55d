//! The Windows VSS store reader on arbitrary volumes (seed: the start of the test image's
//! stores, corpus/vss), then reads of every copy it finds.
#![no_main]

mod walk;

use std::sync::Arc;

use shadowcopy::vss::WindowsStores;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The VSS header lives at 0x1e00; short inputs are placed there so the fuzzer need not
    // grow them to reach it.
    let mut image = vec![0u8; 0x1e00];
    image.extend_from_slice(data);
    image.resize(image.len().max(1 << 20), 0);
    if let Ok(Some(stores)) = WindowsStores::open(Arc::new(walk::Bytes(image)), 16) {
        use shadowcopy::Provider;
        let mut buf = vec![0u8; 16384];
        for c in Provider::copies(&stores) {
            let _ = stores.read_copy(c.id, &mut buf, 0);
            let _ = stores.read_copy(c.id, &mut buf, 0x1e00);
        }
    }
});
