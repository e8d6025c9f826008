//! SUBACK, the answer to SUBSCRIBE (`device-protocol.md#subscriptions-one-at-a-time`,
//! `device-protocol.md#observed-connect-and-suback-bytes`).
//!
//! ```text
//! 90 | remaining length | packet id (2 BE) | return code per filter
//! ```
//!
//! GAgent 04020006 waits for `90 03 00 0n 00` after each of its three SUBSCRIBEs
//! (`device-protocol.md#observed-connect-and-suback-bytes`) and matches the packet id. Return codes
//! are the granted QoS 0–2, or `0x80` for a refused filter; 3.1 knew only 0–2, 3.1.1 added `0x80`,
//! and both are accepted in either version. Remember
//! `device-protocol.md#inbound-limit-1-kb-one-packet-per-read` and
//! `device-protocol.md#observed-pacing`: a SUBACK must not share a TCP write with the next packet
//! to a device.

use bytes::{BufMut, BytesMut};

use super::{Body, check_pkid};
use crate::error::CodecError;

/// The SUBACK return code of a refused filter.
pub const FAILURE: u8 = 0x80;

/// A SUBACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suback {
    /// The packet id of the SUBSCRIBE answered, never 0.
    pub pkid: u16,
    /// One per filter of the SUBSCRIBE, in order: granted QoS 0–2, or [`FAILURE`].
    pub return_codes: Vec<u8>,
}

fn check_code(code: u8) -> Result<(), CodecError> {
    match code {
        0..=2 | FAILURE => Ok(()),
        _ => Err(CodecError::InvalidReturnCode { packet: "SUBACK", code }),
    }
}

impl Suback {
    pub(super) fn body_len(&self) -> Result<usize, CodecError> {
        check_pkid("SUBACK", self.pkid)?;
        if self.return_codes.is_empty() {
            return Err(CodecError::EmptyList { packet: "SUBACK" });
        }
        self.return_codes.iter().try_for_each(|&code| check_code(code))?;
        Ok(self.return_codes.len().saturating_add(2))
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) {
        out.put_u16(self.pkid);
        out.put_slice(&self.return_codes);
    }

    pub(super) fn read(r: &mut Body) -> Result<Self, CodecError> {
        let pkid = r.pkid()?;
        let return_codes = r.rest().to_vec();
        if return_codes.is_empty() {
            return Err(CodecError::EmptyList { packet: "SUBACK" });
        }
        return_codes.iter().try_for_each(|&code| check_code(code))?;
        Ok(Suback { pkid, return_codes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    /// `device-protocol.md#observed-connect-and-suback-bytes`: `90 03 00 01 00`.
    #[test]
    fn golden_gagent_suback() {
        let packet = Packet::Suback(Suback { pkid: 1, return_codes: vec![0] });
        assert_eq!(packet.encode().unwrap().as_ref(), &[0x90, 0x03, 0x00, 0x01, 0x00]);
        assert_eq!(decode_one(&[0x90, 0x03, 0x00, 0x01, 0x00]), Ok(Some(packet)));
    }

    #[test]
    fn failure_code_and_bad_codes() {
        let packet = Packet::Suback(Suback { pkid: 7, return_codes: vec![0, 1, 2, FAILURE] });
        assert_eq!(decode_one(&packet.encode().unwrap()), Ok(Some(packet)));
        assert_eq!(
            decode_one(&[0x90, 0x03, 0, 1, 3]),
            Err(CodecError::InvalidReturnCode { packet: "SUBACK", code: 3 })
        );
        assert_eq!(decode_one(&[0x90, 0x02, 0, 1]), Err(CodecError::EmptyList { packet: "SUBACK" }));
        let bad = Packet::Suback(Suback { pkid: 1, return_codes: vec![0x81] });
        assert_eq!(bad.encode(), Err(CodecError::InvalidReturnCode { packet: "SUBACK", code: 0x81 }));
    }
}
