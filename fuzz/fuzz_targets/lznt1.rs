//! LZNT1 decompression (NTFS compressed files) on arbitrary compression units.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shadowcopy::fuzzing::lznt1(data));
