//! Fixed-width integers out of byte buffers that came from disk: the one copy of these readers.
//!
//! [`le`] and [`be`] read at an offset and give 0 when the buffer is too short (callers validate
//! what they get, as parsers of untrusted bytes must anyway); [`Reader`] walks a buffer and gives
//! `None` at its end.
//!
//! Never panics, whatever the buffer and offset.

/// `N` bytes at `at`, or zeros when the buffer is too short.
fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N).and_then(|end| b.get(at..end)).and_then(|s| s.try_into().ok()).unwrap_or([0; N])
}

/// Little-endian fields at a byte offset; out-of-range reads give 0.
pub(crate) mod le {
    use super::array;

    /// The `u16` at `at`.
    pub(crate) fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(array(b, at))
    }
    /// The `u32` at `at`.
    pub(crate) fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(array(b, at))
    }
    /// The `u64` at `at`.
    pub(crate) fn u64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(array(b, at))
    }
    /// The `u16` at `at`, or `None` when the buffer is too short.
    #[cfg_attr(not(feature = "ntfs"), allow(dead_code))] // the NTFS reader's
    pub(crate) fn get_u16(b: &[u8], at: usize) -> Option<u16> {
        at.checked_add(2).and_then(|end| b.get(at..end)).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    /// The `u32` at `at`, or `None` when the buffer is too short.
    #[cfg_attr(not(feature = "ntfs"), allow(dead_code))] // the NTFS reader's
    pub(crate) fn get_u32(b: &[u8], at: usize) -> Option<u32> {
        at.checked_add(4).and_then(|end| b.get(at..end)).map(|_| u32(b, at))
    }
    /// The `u64` at `at`, or `None` when the buffer is too short.
    #[cfg_attr(not(feature = "ntfs"), allow(dead_code))] // the NTFS reader's
    pub(crate) fn get_u64(b: &[u8], at: usize) -> Option<u64> {
        at.checked_add(8).and_then(|end| b.get(at..end)).map(|_| u64(b, at))
    }
}

/// Big-endian fields at a byte offset (jbd2 is big-endian); out-of-range reads give 0.
pub(crate) mod be {
    /// The `u16` at `at`.
    pub(crate) fn u16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes(super::array(b, at))
    }
    /// The `u32` at `at`.
    pub(crate) fn u32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(super::array(b, at))
    }
}

/// A cursor over a buffer of little-endian fields; every read past the end is `None`.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `b`.
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b, pos: 0 }
    }
    /// Bytes read so far.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }
    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    /// The next byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    /// The next little-endian `u16`.
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    /// The next little-endian `u32`.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    /// The next little-endian `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_give_zero_or_none_never_a_panic() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(le::u16(&b, 0), 0x0201);
        assert_eq!(le::u32(&b, 1), 0x0504_0302);
        assert_eq!(le::u64(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(be::u32(&b, 0), 0x0102_0304);
        assert_eq!(be::u16(&b, 7), 0x0809);
        assert_eq!(le::u64(&b, 2), 0, "one byte short");
        assert_eq!(le::u32(&b, usize::MAX - 1), 0, "an offset that overflows");
        assert_eq!((le::get_u16(&b, 7), le::get_u16(&b, 8)), (Some(0x0908), None));
        assert_eq!((le::get_u32(&b, 5), le::get_u32(&b, 6)), (Some(0x0908_0706), None));
        assert_eq!((le::get_u64(&b, 1), le::get_u64(&b, 2), le::get_u64(&b, usize::MAX)), (Some(0x0908_0706_0504_0302), None, None));
        let mut r = Reader::new(&b);
        assert_eq!(r.u8(), Some(1));
        assert_eq!(r.u64(), Some(0x0908_0706_0504_0302));
        assert_eq!(r.u8(), None);
        let mut r = Reader::new(&b);
        assert_eq!(r.take(usize::MAX), None);
    }
}
