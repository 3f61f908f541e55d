//! The control protocol's request and reply decoders on arbitrary lines.
#![no_main]

use shadowcopy::protocol::{Reply, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Request>(data);
    let _ = serde_json::from_slice::<Reply>(data);
});
