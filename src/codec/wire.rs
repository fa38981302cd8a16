//! Wire primitives shared by every packet: the Variable Byte Integer, two- and
//! four-byte integers, UTF-8 encoded strings, string pairs and binary data
//! (MQTT 5.0 §1.5, MQTT 3.1.1 §1.5).
//!
//! Readers take a [`Bytes`] cursor and split values off it, so strings and
//! binary data are slices of the read buffer, never copies.

use bytes::{Buf, BufMut, Bytes};

use super::DecodeError;
use crate::ByteStr;

/// The largest value a Variable Byte Integer can carry (268,435,455).
pub const VARINT_MAX: u32 = 268_435_455;

/// The largest length a string or binary field can carry (two-byte prefix).
pub const LEN_PREFIX_MAX: usize = u16::MAX as usize;

/// Outcome of reading a Variable Byte Integer from a possibly partial buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and the number of bytes it took.
    Complete(u32, usize),
    /// The buffer ends inside the integer.
    Incomplete,
}

/// Reads a Variable Byte Integer from the start of `buf` without consuming.
///
/// Rejects a fifth byte (§1.5.5: at most four bytes) and non-minimal encodings
/// ([MQTT-1.5.5-1]: the minimum number of bytes MUST be used).
pub(crate) fn peek_varint(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(i) else {
            return Ok(VarInt::Incomplete);
        };
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after at least one continuation byte means the
            // value fitted in fewer bytes.
            if i > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVarInt);
            }
            return Ok(VarInt::Complete(value, i + 1));
        }
    }
    Err(DecodeError::VarIntTooLong)
}

/// Reads and consumes a Variable Byte Integer inside a packet body.
pub(crate) fn read_varint(buf: &mut Bytes) -> Result<u32, DecodeError> {
    match peek_varint(buf)? {
        VarInt::Complete(value, len) => {
            buf.advance(len);
            Ok(value)
        }
        VarInt::Incomplete => Err(DecodeError::Truncated),
    }
}

/// The number of bytes `value` takes as a Variable Byte Integer.
pub(crate) const fn varint_len(value: u32) -> usize {
    if value < 128 {
        1
    } else if value < 16_384 {
        2
    } else if value < 2_097_152 {
        3
    } else {
        4
    }
}

/// Writes `value` as a Variable Byte Integer; `value` must be ≤ [`VARINT_MAX`].
pub(crate) fn put_varint(buf: &mut impl BufMut, mut value: u32) {
    debug_assert!(value <= VARINT_MAX);
    loop {
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Reads one byte.
pub(crate) fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u8())
}

/// Reads a big-endian two-byte integer.
pub(crate) fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u16())
}

/// Reads a big-endian four-byte integer.
pub(crate) fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.get_u32())
}

/// Reads Binary Data: a two-byte length and that many bytes (a slice).
pub(crate) fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = usize::from(read_u16(buf)?);
    if buf.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok(buf.split_to(len))
}

/// Reads a UTF-8 Encoded String (§1.5.4): well-formed UTF-8 (which excludes
/// the surrogates U+D800..U+DFFF, [MQTT-1.5.4-1]) and no U+0000
/// ([MQTT-1.5.4-2]).
pub(crate) fn read_string(buf: &mut Bytes) -> Result<ByteStr, DecodeError> {
    let raw = read_binary(buf)?;
    if memchr::memchr(0, &raw).is_some() {
        return Err(DecodeError::NulInString);
    }
    ByteStr::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// Writes a two-byte length prefix and `data`; the caller has checked the length.
pub(crate) fn put_binary(buf: &mut impl BufMut, data: &[u8]) {
    debug_assert!(data.len() <= LEN_PREFIX_MAX);
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

/// The encoded size of a length-prefixed field.
pub(crate) const fn prefixed_len(len: usize) -> usize {
    2 + len
}

/// Checks that a length-prefixed field fits in its two-byte prefix.
pub(crate) fn check_prefixed(len: usize, what: &'static str) -> Result<(), super::EncodeError> {
    if len > LEN_PREFIX_MAX {
        Err(super::EncodeError::FieldTooLong { field: what, len })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_vectors_from_the_spec() {
        // §1.5.5 table: boundaries of each length.
        let cases: &[(u32, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xff, 0x7f]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xff, 0xff, 0x7f]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
        ];
        for &(value, bytes) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "encode {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(peek_varint(bytes), Ok(VarInt::Complete(value, bytes.len())));
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_non_minimal() {
        assert_eq!(
            peek_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(
            peek_varint(&[0x80, 0x00]),
            Err(DecodeError::NonMinimalVarInt)
        );
        assert_eq!(
            peek_varint(&[0x80, 0x80, 0x00]),
            Err(DecodeError::NonMinimalVarInt)
        );
        assert_eq!(peek_varint(&[0x80]), Ok(VarInt::Incomplete));
        assert_eq!(peek_varint(&[]), Ok(VarInt::Incomplete));
    }

    #[test]
    fn strings_reject_nul_bad_utf8_and_surrogates() {
        let mut b = Bytes::from_static(b"\x00\x03a\x00b");
        assert_eq!(read_string(&mut b), Err(DecodeError::NulInString));
        let mut b = Bytes::from_static(b"\x00\x02\xc3\x28");
        assert_eq!(read_string(&mut b), Err(DecodeError::InvalidUtf8));
        let mut b = Bytes::from_static(b"\x00\x03\xed\xbf\xbf");
        assert_eq!(read_string(&mut b), Err(DecodeError::InvalidUtf8));
        let mut b = Bytes::from_static(b"\x00\x05ab");
        assert_eq!(read_string(&mut b), Err(DecodeError::Truncated));
        let mut b = Bytes::from_static(b"\x00\x02\xc3\xa9rest");
        assert_eq!(read_string(&mut b).unwrap(), "é");
        assert_eq!(&b[..], b"rest");
    }

    #[test]
    fn string_slices_share_the_buffer() {
        let src = Bytes::from_static(b"\x00\x03abcXYZ");
        let mut b = src.clone();
        let s = read_string(&mut b).unwrap();
        assert_eq!(s.as_bytes().as_ptr(), src[2..].as_ptr());
    }
}
