//! Entry points for coverage-guided fuzzing (feature `fuzzing`, used by `fuzz/`): the decoders
//! of untrusted bytes that are private to the crate, reachable from outside only here.
//!
//! Never used by the daemon or the CLI; each function only decodes and discards.

/// LZNT1 (NTFS compression): decompresses `input` as one compression unit of up to 64 KiB.
#[cfg(feature = "ntfs")]
pub fn lznt1(input: &[u8]) {
    let mut out = vec![0u8; 64 << 10];
    let _ = crate::fsread::lznt1::decompress(input, &mut out);
}

/// The diff area's journal: a header block, a batch header, and a batch payload's records.
pub fn journal(input: &[u8]) {
    use crate::diffarea::format;
    let _ = format::Header::decode(input);
    if let Some(h) = format::parse_batch_header(input) {
        let payload = input.get(32..).unwrap_or(&[]);
        let _ = format::check_batch(input, &h, payload);
    }
    let _ = format::Record::decode_all(input);
}
