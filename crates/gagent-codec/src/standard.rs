//! The standard Gizwits frame of `app2dev` / `dev2app` (`device-protocol.md#standard-frame`).
//!
//! ```text
//! 00 00 00 03 | len (varlen, 1-4) | flag (1) | cmd (2 BE) | [sn (4 BE)] | payload (P0)
//! ```
//!
//! Quirks the code follows:
//! - `len` counts every byte after the len field itself: flag, cmd, sn and payload.
//! - `sn` exists **only** for 0x0093 (app control, ACK wanted) and 0x0094 (its ACK); no field
//!   in the frame says whether it is there, so the cmd decides.
//! - There is no checksum; `len` is the only integrity check, so the decoder insists that it
//!   matches exactly (see [`StandardFrame::decode`]).
//! - The flag is always `00` in every source, but it is kept as-is rather than rejected so a
//!   frame from an unknown client survives decode and re-encode unchanged.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::reader::Reader;
use crate::varlen;

/// Command words of the standard frame (`device-protocol.md#command-words`).
pub mod cmd {
    /// App → device P0, no ACK wanted.
    pub const P0_NO_ACK: u16 = 0x0090;
    /// Device → apps: status report, or the reply to 0x0090.
    pub const P0_REPORT: u16 = 0x0091;
    /// App → device P0 with sn; the device must ACK with 0x0094.
    pub const P0_ACK_WANTED: u16 = 0x0093;
    /// Device → one app: the ACK of 0x0093, same sn.
    pub const P0_ACK: u16 = 0x0094;
}

/// Whether frames with this cmd carry the 4-byte sn after the cmd (0x0093 and 0x0094 only).
pub fn cmd_has_sn(cmd: u16) -> bool {
    matches!(cmd, cmd::P0_ACK_WANTED | cmd::P0_ACK)
}

/// One standard frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardFrame {
    /// Always `00` in practice.
    pub flag: u8,
    /// Command word.
    pub cmd: u16,
    /// Sequence number: `Some` exactly when [`cmd_has_sn`] is true for `cmd`.
    pub sn: Option<u32>,
    /// P0 bytes.
    pub payload: Bytes,
}

impl StandardFrame {
    /// A frame with flag `00`.
    pub fn new(cmd: u16, sn: Option<u32>, payload: impl Into<Bytes>) -> Self {
        StandardFrame { flag: 0, cmd, sn, payload: payload.into() }
    }

    /// The value of the `len` field: flag + cmd + optional sn + payload.
    fn body_len(&self) -> usize {
        let sn_len = if self.sn.is_some() { 4 } else { 0 };
        self.payload.len().saturating_add(3 + sn_len)
    }

    /// Encodes the frame.
    ///
    /// Fails when `sn` does not agree with `cmd` ([`CodecError::MissingSn`],
    /// [`CodecError::UnexpectedSn`]) or when the frame is too long for a 4-byte `len`.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        match (cmd_has_sn(self.cmd), self.sn) {
            (true, None) => return Err(CodecError::MissingSn { cmd: self.cmd }),
            (false, Some(_)) => return Err(CodecError::UnexpectedSn { cmd: self.cmd }),
            _ => {}
        }
        let len = self.body_len();
        let len_bytes = varlen::encoded_len(len).ok_or(CodecError::VarLenOverflow { value: len })?;
        let mut out = BytesMut::with_capacity(4 + len_bytes + len);
        out.put_slice(&crate::GIZWITS_HEADER);
        varlen::encode(len, &mut out)?;
        out.put_u8(self.flag);
        out.put_u16(self.cmd);
        if let Some(sn) = self.sn {
            out.put_u32(sn);
        }
        out.put_slice(&self.payload);
        Ok(out.freeze())
    }

    /// Decodes exactly one frame.
    ///
    /// `len` must equal the number of bytes after the len field: fewer is
    /// [`CodecError::LengthMismatch`], and so is **more** — trailing bytes are not skipped,
    /// because the frame has no checksum and a disagreeing `len` is the only sign of a framing
    /// error. (An MQTT PUBLISH carries exactly one frame, so nothing legitimate follows it.)
    pub fn decode(input: &[u8]) -> Result<StandardFrame, CodecError> {
        let mut r = Reader::new(input);
        r.gizwits_header()?;
        let len = r.varlen()?;
        if len != r.remaining() {
            return Err(CodecError::LengthMismatch { declared: len, actual: r.remaining() });
        }
        let flag = r.u8()?;
        let cmd = r.u16()?;
        let sn = if cmd_has_sn(cmd) { Some(r.u32()?) } else { None };
        let payload = Bytes::copy_from_slice(r.rest());
        Ok(StandardFrame { flag, cmd, sn, payload })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(wire: &str, frame: StandardFrame) {
        let bytes = hex::decode(wire.replace(' ', "")).unwrap();
        assert_eq!(StandardFrame::decode(&bytes), Ok(frame.clone()), "decode {wire}");
        assert_eq!(frame.encode().unwrap().as_ref(), &bytes[..], "encode {wire}");
    }

    #[test]
    fn golden_device_report_0091() {
        roundtrip("00 00 00 03 05 00 00 91 04 01", StandardFrame::new(cmd::P0_REPORT, None, vec![0x04, 0x01]));
    }

    #[test]
    fn golden_app_control_0093() {
        roundtrip(
            "00 00 00 03 0A 00 00 93 00 00 00 01 01 01 01",
            StandardFrame::new(cmd::P0_ACK_WANTED, Some(1), vec![1, 1, 1]),
        );
    }

    #[test]
    fn golden_device_ack_0094() {
        roundtrip("00 00 00 03 07 00 00 94 00 00 00 01", StandardFrame::new(cmd::P0_ACK, Some(1), Bytes::new()));
    }

    /// The real capture from LITE: "read status" sent to the device.
    #[test]
    fn golden_lite_capture_0090() {
        roundtrip("00 00 00 03 04 00 00 90 02", StandardFrame::new(cmd::P0_NO_ACK, None, vec![0x02]));
    }

    #[test]
    fn multi_byte_len() {
        let frame = StandardFrame::new(cmd::P0_REPORT, None, vec![0xAB; 200]);
        let wire = frame.encode().unwrap();
        // 3 + 200 = 203 = 0xCB -> CB 01
        assert_eq!(&wire[..7], &[0, 0, 0, 3, 0xCB, 0x01, 0x00]);
        assert_eq!(StandardFrame::decode(&wire), Ok(frame));
    }

    #[test]
    fn bad_header() {
        assert_eq!(
            StandardFrame::decode(&hex::decode("0000000405000091").unwrap()),
            Err(CodecError::BadHeader { expected: 3, found: 4 })
        );
    }

    #[test]
    fn trailing_bytes_are_a_length_mismatch() {
        assert_eq!(
            StandardFrame::decode(&hex::decode("0000000304000090020A").unwrap()),
            Err(CodecError::LengthMismatch { declared: 4, actual: 5 })
        );
    }

    #[test]
    fn short_body_is_a_length_mismatch() {
        assert_eq!(
            StandardFrame::decode(&hex::decode("000000030500009102").unwrap()),
            Err(CodecError::LengthMismatch { declared: 5, actual: 4 })
        );
    }

    #[test]
    fn sn_cmd_without_room_for_sn() {
        assert_eq!(
            StandardFrame::decode(&hex::decode("000000030500009400").unwrap()),
            Err(CodecError::LengthMismatch { declared: 5, actual: 4 })
        );
        assert_eq!(
            StandardFrame::decode(&hex::decode("00000003050000940000").unwrap()),
            Err(CodecError::Truncated { needed: 12, have: 10 })
        );
    }

    #[test]
    fn len_too_small_for_cmd() {
        assert_eq!(
            StandardFrame::decode(&hex::decode("00000003020000").unwrap()),
            Err(CodecError::Truncated { needed: 8, have: 7 })
        );
    }

    #[test]
    fn encode_checks_sn_against_cmd() {
        assert_eq!(
            StandardFrame::new(cmd::P0_ACK_WANTED, None, Bytes::new()).encode(),
            Err(CodecError::MissingSn { cmd: 0x0093 })
        );
        assert_eq!(
            StandardFrame::new(cmd::P0_REPORT, Some(7), Bytes::new()).encode(),
            Err(CodecError::UnexpectedSn { cmd: 0x0091 })
        );
    }
}
