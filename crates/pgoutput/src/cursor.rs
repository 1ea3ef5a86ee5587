//! A bounds-checked reader over one payload.
//!
//! This is the only place that takes bytes out of the payload. Every read checks the remaining
//! length first and reports the offset it started at, so the rest of the crate never indexes or
//! slices with numbers that came from the input.

use bytes::{Buf, Bytes};

use crate::DecodeError;

/// Reads big-endian fields from the front of a payload, tracking the offset consumed so far.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// What has not been read yet.
    rest: Bytes,
    /// Offset of `rest`'s first byte within the original payload.
    offset: usize,
}

impl Cursor {
    pub(crate) fn new(payload: Bytes) -> Self {
        Cursor { rest: payload, offset: 0 }
    }

    /// Offset of the next byte to be read.
    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails with `UnexpectedEof` unless at least `needed` bytes are left.
    pub(crate) fn need(&self, needed: usize) -> Result<(), DecodeError> {
        if self.rest.len() < needed {
            return Err(DecodeError::UnexpectedEof { offset: self.offset, needed });
        }
        Ok(())
    }

    fn read_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.need(N)?;
        let mut out = [0u8; N];
        // `need` has checked the length; `try_` keeps this path panic-free regardless.
        self.rest
            .try_copy_to_slice(&mut out)
            .map_err(|_| DecodeError::UnexpectedEof { offset: self.offset, needed: N })?;
        self.offset += N;
        Ok(out)
    }

    pub(crate) fn read_u8(&mut self) -> Result<u8, DecodeError> {
        self.read_array::<1>().map(|[b]| b)
    }

    pub(crate) fn read_u16(&mut self) -> Result<u16, DecodeError> {
        self.read_array().map(u16::from_be_bytes)
    }

    pub(crate) fn read_i32(&mut self) -> Result<i32, DecodeError> {
        self.read_array().map(i32::from_be_bytes)
    }

    pub(crate) fn read_u32(&mut self) -> Result<u32, DecodeError> {
        self.read_array().map(u32::from_be_bytes)
    }

    pub(crate) fn read_i64(&mut self) -> Result<i64, DecodeError> {
        self.read_array().map(i64::from_be_bytes)
    }

    pub(crate) fn read_u64(&mut self) -> Result<u64, DecodeError> {
        self.read_array().map(u64::from_be_bytes)
    }

    /// Reads an `Int32` length or count, rejecting negative values.
    pub(crate) fn read_len_i32(&mut self) -> Result<usize, DecodeError> {
        let offset = self.offset;
        let length = self.read_i32()?;
        usize::try_from(length).map_err(|_| DecodeError::NegativeLength { offset, length })
    }

    /// Takes the next `len` bytes as a zero-copy slice of the payload.
    pub(crate) fn read_bytes(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        let out = self.rest.split_to(len);
        self.offset += len;
        Ok(out)
    }

    /// Reads a NUL-terminated UTF-8 string and consumes its terminator.
    pub(crate) fn read_cstr(&mut self) -> Result<String, DecodeError> {
        let start = self.offset;
        let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnexpectedEof { offset: start, needed: self.rest.len().saturating_add(1) });
        };
        let raw = self.read_bytes(nul)?;
        self.read_u8()?; // the terminator found above
        match std::str::from_utf8(&raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 { offset: start }),
        }
    }

    /// Ends the message: anything left over is an error, never silently ignored.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { offset: self.offset, remaining: self.rest.len() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_and_tracks_offsets() {
        let mut cur = Cursor::new(Bytes::from_static(&[
            1, 0, 2, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0, 0, 0, 0, 0, 0, 9, b'h', b'i', 0, 7,
        ]));
        assert_eq!(cur.read_u8(), Ok(1));
        assert_eq!(cur.read_u16(), Ok(2));
        assert_eq!(cur.read_i32(), Ok(-2));
        assert_eq!(cur.read_u64(), Ok(9));
        assert_eq!(cur.offset(), 15);
        assert_eq!(cur.read_cstr().as_deref(), Ok("hi"));
        assert_eq!(cur.remaining(), 1);
        assert_eq!(cur.read_u32(), Err(DecodeError::UnexpectedEof { offset: 18, needed: 4 }));
        assert_eq!(cur.finish(), Err(DecodeError::TrailingBytes { offset: 18, remaining: 1 }));
    }

    #[test]
    fn unterminated_string_is_eof() {
        let mut cur = Cursor::new(Bytes::from_static(b"\x01abc"));
        cur.read_u8().unwrap();
        assert_eq!(cur.read_cstr(), Err(DecodeError::UnexpectedEof { offset: 1, needed: 4 }));
    }

    #[test]
    fn invalid_utf8_reports_string_start() {
        let mut cur = Cursor::new(Bytes::from_static(b"ok\0\xFF\xFE\0"));
        assert_eq!(cur.read_cstr().as_deref(), Ok("ok"));
        assert_eq!(cur.read_cstr(), Err(DecodeError::InvalidUtf8 { offset: 3 }));
    }

    #[test]
    fn negative_length_is_rejected() {
        let mut cur = Cursor::new(Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF]));
        assert_eq!(cur.read_len_i32(), Err(DecodeError::NegativeLength { offset: 0, length: -1 }));
    }

    #[test]
    fn read_bytes_is_bounded() {
        let mut cur = Cursor::new(Bytes::from_static(b"abc"));
        assert_eq!(cur.read_bytes(usize::MAX), Err(DecodeError::UnexpectedEof { offset: 0, needed: usize::MAX }));
        assert_eq!(cur.read_bytes(3).as_deref(), Ok(&b"abc"[..]));
        assert!(cur.finish().is_ok());
    }
}
