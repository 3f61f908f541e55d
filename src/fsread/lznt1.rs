//! LZNT1, the compression NTFS uses for compressed files: decompresses one compression unit.
//!
//! A unit is a run of chunks, each a 2-byte header (bit 15: compressed; bits 0–11: the bytes
//! after the header, minus one) that yields up to 4 KiB of output. A compressed
//! chunk is groups of a flag byte and eight tokens: a literal byte, or a 2-byte back-reference
//! whose split between offset and length bits depends on how far into the chunk it is.
//!
//! Owns only the format; never reads the disk. Bad input is an error, never a panic.

/// Output bytes per chunk.
const CHUNK: usize = 4096;

/// Decompresses `input` (the stored clusters of one compression unit) into `out`, which is
/// filled completely: what the unit does not produce reads as zeros. Errors name what is wrong.
pub(crate) fn decompress(input: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    out.fill(0);
    let (mut i, mut o) = (0usize, 0usize);
    while i + 2 <= input.len() && o < out.len() {
        let header = u16::from_le_bytes([input[i], input[i + 1]]);
        if header == 0 {
            break; // end of the unit's data
        }
        let size = usize::from(header & 0x0fff) + 1;
        let data = input.get(i + 2..i + 2 + size).ok_or("an LZNT1 chunk runs past the compressed data")?;
        let end = (o + CHUNK).min(out.len());
        if header & 0x8000 == 0 {
            let n = data.len().min(end - o);
            out[o..o + n].copy_from_slice(&data[..n]);
        } else {
            chunk(data, &mut out[o..end])?;
        }
        // A chunk that produced less than 4 KiB is padded with zeros (already there).
        o = end;
        i += 2 + size;
    }
    Ok(())
}

/// Decompresses one compressed chunk into `out` (at most 4 KiB).
fn chunk(data: &[u8], out: &mut [u8]) -> Result<(), &'static str> {
    let (mut i, mut o) = (0usize, 0usize);
    while i < data.len() {
        let flags = data[i];
        i += 1;
        for bit in 0..8 {
            if i >= data.len() || o >= out.len() {
                return Ok(());
            }
            if flags & (1 << bit) == 0 {
                out[o] = data[i];
                o += 1;
                i += 1;
                continue;
            }
            let token = u16::from_le_bytes([data[i], *data.get(i + 1).ok_or("an LZNT1 back-reference is cut short")?]);
            i += 2;
            if o == 0 {
                return Err("an LZNT1 back-reference before any output");
            }
            // The further into the chunk, the more bits the offset takes.
            let mut length_bits = 12u32;
            let mut p = o - 1;
            while p >= 0x10 {
                p >>= 1;
                length_bits -= 1;
            }
            let offset = usize::from(token >> length_bits) + 1;
            let length = usize::from(token & ((1u16 << length_bits) - 1)) + 3;
            if offset > o {
                return Err("an LZNT1 back-reference points before the chunk");
            }
            for _ in 0..length {
                if o >= out.len() {
                    return Err("an LZNT1 back-reference runs past the chunk");
                }
                out[o] = out[o - offset];
                o += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_an_overlapping_back_reference() {
        // "abc", then (offset 3, length 9): "abcabcabcabc". Flags 0b1000: three literals, a token.
        let token: u16 = (2 << 12) | 6;
        let body = [0x08, b'a', b'b', b'c', token.to_le_bytes()[0], token.to_le_bytes()[1]];
        let mut input = (0xb000u16 | (body.len() as u16 - 1)).to_le_bytes().to_vec();
        input.extend_from_slice(&body);
        let mut out = vec![0xffu8; 8192];
        decompress(&input, &mut out).unwrap();
        assert_eq!(&out[..12], b"abcabcabcabc");
        assert!(out[12..].iter().all(|b| *b == 0), "the rest of the unit reads as zeros");
    }

    #[test]
    fn an_uncompressed_chunk_is_copied() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut input = (0x3000u16 | 4095).to_le_bytes().to_vec();
        input.extend_from_slice(&data);
        let mut out = vec![0u8; 4096];
        decompress(&input, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 4096];
        // A back-reference first; a chunk longer than the data; a token cut in half.
        assert!(decompress(&[0x02, 0xb0, 0x01, 0x00, 0x10], &mut out).is_err());
        assert!(decompress(&[0xff, 0xbf, 0x00], &mut out).is_err());
        assert!(decompress(&[0x02, 0xb0, 0x02, b'a', 0x00], &mut out).is_err());
        for seed in 0..2000u32 {
            let input: Vec<u8> = (0..64u32).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8).collect();
            let _ = decompress(&input, &mut out);
        }
    }
}
