//! The GAgent ↔ MCU serial frame (`device-protocol.md#serial-frame`).
//!
//! ```text
//! FF FF | len (2 BE) | cmd (1) | sn (1) | flags (2 BE) | payload | checksum (1)
//! ```
//!
//! Quirks the code follows:
//! - `len` counts cmd through checksum, so it is `payload.len() + 5` and never below 5.
//! - `checksum` is the 8-bit wrapping sum of the bytes from `len` to the end of the payload.
//! - After the `FF FF` header every `FF` goes on the wire as `FF 55` — in `len`, the payload
//!   and the checksum alike. `len` and the checksum are computed on the **unstuffed** bytes.
//!   Stuffing is what makes resynchronisation possible: an `FF FF` pair can only ever be a
//!   header, never the inside of a frame.
//!
//! [`SerialFrame::decode`] takes exactly one frame; [`SerialDecoder`] takes a byte stream in
//! arbitrary chunks, skips garbage and resynchronises. The OTA payloads of 0x19, 0x1B and 0x1D
//! have typed helpers in [`file_transfer`].

mod decoder;
pub mod file_transfer;

pub use decoder::SerialDecoder;
pub use file_transfer::{FileOffer, FilePiece, FileReady};

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::reader::Reader;

/// The two header bytes.
pub const HEADER: [u8; 2] = [0xFF, 0xFF];

/// The byte that follows every `FF` after the header.
pub const STUFFING: u8 = 0x55;

/// Smallest `len`: cmd + sn + flags + checksum.
pub const MIN_LEN: usize = 5;

/// Largest payload: `len` is 16 bits and includes the five fixed bytes.
pub const MAX_PAYLOAD: usize = u16::MAX as usize - MIN_LEN;

/// Serial command bytes used by the OTA and big-file flows (`device-protocol.md#serial-commands`).
/// An ACK is always cmd + 1.
pub mod cmd {
    /// "Big file coming": file size and MD5 text. ACK 0x1A.
    pub const FILE_OFFER: u8 = 0x19;
    /// "Ready": MD5 echo and piece size; flags bit0 = HEX mode. ACK 0x1C.
    pub const FILE_READY: u8 = 0x1B;
    /// One piece of the file. ACK 0x1E.
    pub const FILE_PIECE: u8 = 0x1D;
    /// The sender gives up. ACK 0x20.
    pub const SENDER_CANCEL: u8 = 0x1F;
    /// The receiver gives up (e.g. not enough flash). ACK 0x28.
    pub const RECEIVER_CANCEL: u8 = 0x27;
    /// MCU → GAgent: "restart the module" after an MCU OTA. ACK 0x2A.
    pub const RESTART_MODULE: u8 = 0x29;
    /// Illegal-packet notice; payload is one error byte.
    pub const ILLEGAL_PACKET: u8 = 0x11;
    /// Its reply.
    pub const ILLEGAL_PACKET_ACK: u8 = 0x12;
}

/// Error bytes of the 0x11 illegal-packet notice.
pub mod illegal {
    /// Bad checksum.
    pub const CHECKSUM: u8 = 1;
    /// Unknown command.
    pub const CMD: u8 = 2;
    /// Anything else.
    pub const OTHER: u8 = 3;
    /// HEX mode asked for but the file is not `.hex`.
    pub const FILE_TYPE: u8 = 4;
}

/// One serial frame, unstuffed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialFrame {
    /// Command byte.
    pub cmd: u8,
    /// Sequence number; an ACK repeats it.
    pub sn: u8,
    /// Frame flags (bit0 of 0x1B = HEX mode; 0x0001 / 0x0003 on HEX-mode pieces).
    pub flags: u16,
    /// Command payload.
    pub payload: Bytes,
}

impl SerialFrame {
    /// A frame with flags 0.
    pub fn new(cmd: u8, sn: u8, payload: impl Into<Bytes>) -> Self {
        SerialFrame { cmd, sn, flags: 0, payload: payload.into() }
    }

    /// The ACK of this frame: cmd + 1, the same sn, flags 0, no payload.
    pub fn ack(&self) -> SerialFrame {
        SerialFrame::new(self.cmd.wrapping_add(1), self.sn, Bytes::new())
    }

    /// Encodes the frame with its checksum, stuffed and ready for the wire.
    ///
    /// Fails with [`CodecError::FieldTooLong`] when the payload exceeds [`MAX_PAYLOAD`].
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let len = u16::try_from(self.payload.len().saturating_add(MIN_LEN)).map_err(|_| CodecError::FieldTooLong {
            field: "payload",
            len: self.payload.len(),
            max: MAX_PAYLOAD,
        })?;
        let mut body = BytesMut::with_capacity(self.payload.len() + 7);
        body.put_u16(len);
        body.put_u8(self.cmd);
        body.put_u8(self.sn);
        body.put_u16(self.flags);
        body.put_slice(&self.payload);
        body.put_u8(checksum(&body));

        let mut out = BytesMut::with_capacity(2 + body.len() + body.len() / 8);
        out.put_slice(&HEADER);
        stuff_into(&body, &mut out);
        Ok(out.freeze())
    }

    /// Decodes exactly one stuffed frame, header included.
    ///
    /// Strict: `len` must cover exactly the bytes present, and nothing may follow the checksum.
    /// Use [`SerialDecoder`] for a stream that may hold garbage or several frames.
    pub fn decode(wire: &[u8]) -> Result<SerialFrame, CodecError> {
        let mut r = Reader::new(wire);
        let header = r.array::<2>()?;
        if header != HEADER {
            return Err(CodecError::BadHeader {
                expected: u32::from(u16::from_be_bytes(HEADER)),
                found: u32::from(u16::from_be_bytes(header)),
            });
        }
        let body = unstuff(r.rest())?;
        parse_body(&body)
    }
}

/// 8-bit wrapping sum: the serial checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// Appends `bytes` to `out`, writing every `FF` as `FF 55`.
pub fn stuff_into(bytes: &[u8], out: &mut BytesMut) {
    for &b in bytes {
        out.put_u8(b);
        if b == 0xFF {
            out.put_u8(STUFFING);
        }
    }
}

/// Reverses [`stuff_into`] for a complete frame body. An `FF` must be followed by `55`.
pub fn unstuff(wire: &[u8]) -> Result<Bytes, CodecError> {
    let mut out = BytesMut::with_capacity(wire.len());
    let mut bytes = wire.iter();
    while let Some(&b) = bytes.next() {
        if b == 0xFF {
            match bytes.next() {
                Some(&STUFFING) => {}
                Some(&next) => return Err(CodecError::BadStuffing { next }),
                None => {
                    return Err(CodecError::Truncated { needed: wire.len() + 1, have: wire.len() });
                }
            }
        }
        out.put_u8(b);
    }
    Ok(out.freeze())
}

/// Parses an unstuffed frame from `len` through the checksum.
pub(crate) fn parse_body(body: &[u8]) -> Result<SerialFrame, CodecError> {
    let mut r = Reader::new(body);
    let len = usize::from(r.u16()?);
    if len != r.remaining() {
        return Err(CodecError::LengthMismatch { declared: len, actual: r.remaining() });
    }
    if len < MIN_LEN {
        return Err(CodecError::InvalidLength { len, min: MIN_LEN, max: usize::from(u16::MAX) });
    }
    let Some((&received, covered)) = body.split_last() else {
        return Err(CodecError::Truncated { needed: 1, have: 0 });
    };
    let computed = checksum(covered);
    if computed != received {
        return Err(CodecError::BadChecksum { computed, received });
    }
    let cmd = r.u8()?;
    let sn = r.u8()?;
    let flags = r.u16()?;
    let payload = Bytes::copy_from_slice(r.take(len - MIN_LEN)?);
    Ok(SerialFrame { cmd, sn, flags, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(wire: &str) -> Vec<u8> {
        hex::decode(wire.replace(' ', "")).unwrap()
    }

    /// `device-protocol.md#serial-frame`: the ACK of a 0x19 with sn 5.
    #[test]
    fn golden_ack_1a() {
        let wire = bytes_of("FF FF 00 05 1A 05 00 00 24");
        let frame = SerialFrame::new(0x1A, 5, Bytes::new());
        assert_eq!(frame.encode().unwrap().as_ref(), &wire[..]);
        assert_eq!(SerialFrame::decode(&wire), Ok(frame.clone()));
        assert_eq!(SerialFrame::new(cmd::FILE_OFFER, 5, Bytes::new()).ack(), frame);
    }

    /// `device-protocol.md#serial-frame`: data `12 FF 34` goes on the wire as `12 FF 55 34`.
    #[test]
    fn golden_stuffing_example() {
        let mut out = BytesMut::new();
        stuff_into(&[0x12, 0xFF, 0x34], &mut out);
        assert_eq!(out.as_ref(), &[0x12, 0xFF, 0x55, 0x34]);
        assert_eq!(unstuff(&out).unwrap().as_ref(), &[0x12, 0xFF, 0x34]);

        let frame = SerialFrame::new(cmd::FILE_PIECE, 1, vec![0x12, 0xFF, 0x34]);
        let wire = frame.encode().unwrap();
        // len 8, 1D 01 00 00, data, checksum = 08+1D+01+12+FF+34 = 0x16B -> 6B
        assert_eq!(hex::encode_upper(&wire), "FFFF00081D01000012FF55346B");
        assert_eq!(SerialFrame::decode(&wire), Ok(frame));
    }

    /// len, flags and checksum are stuffed too, and computed before stuffing.
    #[test]
    fn stuffing_applies_to_len_flags_and_checksum() {
        // An FF in the flags.
        let frame = SerialFrame { cmd: 0x01, sn: 0x02, flags: 0x00FF, payload: Bytes::from_static(&[0xF6, 0x01]) };
        let wire = frame.encode().unwrap();
        // len 7; 07+01+02+00+FF+F6+01 = 0x200 -> checksum 00
        assert_eq!(hex::encode_upper(&wire), "FFFF0007010200FF55F60100");
        assert_eq!(SerialFrame::decode(&wire), Ok(frame));

        // An FF checksum.
        let frame = SerialFrame::new(0x03, 0x00, vec![0xF6]);
        // 00 06 03 00 00 00 F6 -> sum FF
        let wire = frame.encode().unwrap();
        assert_eq!(hex::encode_upper(&wire), "FFFF0006030000 00F6FF55".replace(' ', ""));
        assert_eq!(SerialFrame::decode(&wire), Ok(frame));

        // An FF in len.
        let frame = SerialFrame::new(0x03, 0x00, vec![0; 0xFF00 - 5]);
        let wire = frame.encode().unwrap();
        assert_eq!(&wire[..5], &[0xFF, 0xFF, 0xFF, 0x55, 0x00]);
        assert_eq!(SerialFrame::decode(&wire), Ok(frame));
    }

    #[test]
    fn checksum_mismatch() {
        assert_eq!(
            SerialFrame::decode(&bytes_of("FF FF 00 05 1A 05 00 00 25")),
            Err(CodecError::BadChecksum { computed: 0x24, received: 0x25 })
        );
    }

    #[test]
    fn strict_decode_rejects_bad_stuffing_and_trailing_bytes() {
        assert_eq!(
            SerialFrame::decode(&bytes_of("FF FF 00 05 1A 05 FF 00 00 24")),
            Err(CodecError::BadStuffing { next: 0x00 })
        );
        assert_eq!(
            SerialFrame::decode(&bytes_of("FF FF 00 05 1A 05 00 00 24 00")),
            Err(CodecError::LengthMismatch { declared: 5, actual: 6 })
        );
        assert_eq!(
            SerialFrame::decode(&bytes_of("FF FE 00 05 1A 05 00 00 24")),
            Err(CodecError::BadHeader { expected: 0xFFFF, found: 0xFFFE })
        );
        assert_eq!(
            SerialFrame::decode(&bytes_of("FF FF 00 04 1A 05 00 23")),
            Err(CodecError::InvalidLength { len: 4, min: 5, max: 65535 })
        );
    }

    #[test]
    fn payload_too_long() {
        let frame = SerialFrame::new(1, 1, vec![0; MAX_PAYLOAD + 1]);
        assert_eq!(
            frame.encode(),
            Err(CodecError::FieldTooLong { field: "payload", len: MAX_PAYLOAD + 1, max: MAX_PAYLOAD })
        );
        assert!(SerialFrame::new(1, 1, vec![0; MAX_PAYLOAD]).encode().is_ok());
    }
}
