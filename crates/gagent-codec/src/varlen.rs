//! MQTT-style variable length integers (`device-protocol.md#standard-frame`).
//!
//! Seven bits per byte, least-significant group first, bit 7 set on every byte but the last,
//! at most four bytes. The Gizwits `len` of the standard frame and the MQTT "remaining length"
//! use the same scheme, so both go through here.
//!
//! Decoding accepts non-minimal encodings (`80 00` for 0): GAgent's own decoder (GA
//! `utilcoding.c`) does, and MQTT 3.1 does not forbid them. Encoding always writes the minimal
//! form, so `encode` then `decode` is the identity.

use bytes::BufMut;

use crate::error::CodecError;

/// Largest encodable value: four groups of seven bits.
pub const MAX: usize = 0x0FFF_FFFF;

/// Longest encoding in bytes.
pub const MAX_BYTES: usize = 4;

/// Number of bytes `encode` writes for `value`, or `None` when it is above [`MAX`].
pub fn encoded_len(value: usize) -> Option<usize> {
    match value {
        0..=0x7F => Some(1),
        0x80..=0x3FFF => Some(2),
        0x4000..=0x1F_FFFF => Some(3),
        0x20_0000..=MAX => Some(4),
        _ => None,
    }
}

/// Appends the minimal encoding of `value` to `dst`.
pub fn encode<B: BufMut>(value: usize, dst: &mut B) -> Result<(), CodecError> {
    if value > MAX {
        return Err(CodecError::VarLenOverflow { value });
    }
    let mut rest = value;
    loop {
        // Truncation to the low seven bits is the point of the scheme.
        let group = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest == 0 {
            dst.put_u8(group);
            return Ok(());
        }
        dst.put_u8(group | 0x80);
    }
}

/// Decodes a variable length integer at the start of `src`.
///
/// Returns the value and the number of bytes it took. Input that ends while the continuation
/// bit is still set is [`CodecError::Truncated`]; a fourth byte with the continuation bit set is
/// [`CodecError::VarLenTooLong`], even if no fifth byte is present yet.
pub fn decode(src: &[u8]) -> Result<(usize, usize), CodecError> {
    let mut value = 0usize;
    for (i, &byte) in src.iter().take(MAX_BYTES).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if src.len() >= MAX_BYTES {
        Err(CodecError::VarLenTooLong)
    } else {
        Err(CodecError::Truncated { needed: src.len() + 1, have: src.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn enc(value: usize) -> String {
        let mut buf = BytesMut::new();
        encode(value, &mut buf).unwrap();
        hex::encode_upper(&buf)
    }

    /// The length examples of `device-protocol.md#standard-frame`.
    #[test]
    fn golden_length_examples() {
        for (value, wire) in [(5, "05"), (127, "7F"), (128, "8001"), (300, "AC02"), (16384, "808001")] {
            assert_eq!(enc(value), wire, "encode {value}");
            let bytes = hex::decode(wire).unwrap();
            assert_eq!(decode(&bytes), Ok((value, bytes.len())), "decode {wire}");
            assert_eq!(encoded_len(value), Some(bytes.len()));
        }
    }

    #[test]
    fn boundaries() {
        assert_eq!(enc(0), "00");
        assert_eq!(enc(MAX), "FFFFFF7F");
        assert_eq!(decode(&[0xFF, 0xFF, 0xFF, 0x7F]), Ok((MAX, 4)));
        assert_eq!(encode(MAX + 1, &mut BytesMut::new()), Err(CodecError::VarLenOverflow { value: MAX + 1 }));
        assert_eq!(encoded_len(MAX + 1), None);
    }

    #[test]
    fn decode_stops_at_the_last_byte() {
        assert_eq!(decode(&[0xAC, 0x02, 0x99]), Ok((300, 2)));
    }

    #[test]
    fn decode_accepts_non_minimal() {
        assert_eq!(decode(&[0x80, 0x00]), Ok((0, 2)));
    }

    #[test]
    fn more_than_four_bytes_is_an_error() {
        assert_eq!(decode(&[0x80, 0x80, 0x80, 0x80, 0x01]), Err(CodecError::VarLenTooLong));
        assert_eq!(decode(&[0x80, 0x80, 0x80, 0x80]), Err(CodecError::VarLenTooLong));
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert_eq!(decode(&[]), Err(CodecError::Truncated { needed: 1, have: 0 }));
        assert_eq!(decode(&[0x80, 0x80]), Err(CodecError::Truncated { needed: 3, have: 2 }));
    }
}
