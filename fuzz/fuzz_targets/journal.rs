//! The diff area's journal decoders (header, batch header, records) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shadowcopy::fuzzing::journal(data));
