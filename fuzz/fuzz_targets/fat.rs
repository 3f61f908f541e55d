//! The fat reader on arbitrary images (seeds: small images made with mkfs, in corpus/fat).
#![no_main]

mod walk;

libfuzzer_sys::fuzz_target!(|data: &[u8]| walk::walk(data));
