//! CONNACK, the server's answer to CONNECT (`device-protocol.md#connack-handling`,
//! `device-protocol.md#observed-refused-connack`).
//!
//! ```text
//! 20 02 | acknowledge flags (bit 0: session present) | return code
//! ```
//!
//! GAgent checks only that the first two bytes are non-zero and that the return code is 0
//! (`device-protocol.md#connack-handling`); any other code makes it retry about every 6 s, for ever
//! (`device-protocol.md#observed-refused-connack`). The acknowledge flags byte is "reserved" in 3.1
//! and carries session-present in 3.1.1: a server answering a 3.1 client should leave
//! [`Connack::session_present`] false, which gives `20 02 00 00`.

use bytes::{BufMut, BytesMut};

use super::Body;
use crate::error::CodecError;

/// The return code of a CONNACK. Codes 1–5 are refusals; the server closes the connection
/// after sending one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// Connection accepted.
    Accepted = 0,
    /// The protocol name / level is not supported (answer to
    /// [`CodecError::UnsupportedProtocol`]).
    UnacceptableProtocol = 1,
    /// The client id is not allowed.
    IdentifierRejected = 2,
    /// The service is not available.
    ServerUnavailable = 3,
    /// Unknown user name or wrong password (for GAgent: did / passcode).
    BadUsernameOrPassword = 4,
    /// The client may not connect.
    NotAuthorized = 5,
}

impl TryFrom<u8> for ConnectReturnCode {
    type Error = CodecError;

    fn try_from(code: u8) -> Result<Self, CodecError> {
        Ok(match code {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocol,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUsernameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return Err(CodecError::InvalidReturnCode { packet: "CONNACK", code }),
        })
    }
}

/// A CONNACK packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connack {
    /// 3.1.1 only: the server kept a session for this client. Always false towards GAgent,
    /// which connects with clean session.
    pub session_present: bool,
    /// Accepted, or why not.
    pub code: ConnectReturnCode,
}

impl Connack {
    /// A CONNACK with session-present false: `20 02 00 <code>`.
    pub fn new(code: ConnectReturnCode) -> Self {
        Connack { session_present: false, code }
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) {
        out.put_u8(u8::from(self.session_present));
        out.put_u8(self.code as u8);
    }

    pub(super) fn read(r: &mut Body) -> Result<Self, CodecError> {
        let flags = r.u8()?;
        if flags & !0x01 != 0 {
            return Err(CodecError::ReservedBits { packet: "CONNACK", field: "connack flags", value: flags });
        }
        let code = ConnectReturnCode::try_from(r.u8()?)?;
        Ok(Connack { session_present: flags == 1, code })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    /// `device-protocol.md#connack-handling`: the accepting CONNACK GAgent waits for.
    #[test]
    fn golden_accepted() {
        let packet = Packet::Connack(Connack::new(ConnectReturnCode::Accepted));
        assert_eq!(packet.encode().unwrap().as_ref(), &[0x20, 0x02, 0x00, 0x00]);
        assert_eq!(decode_one(&[0x20, 0x02, 0x00, 0x00]), Ok(Some(packet)));
    }

    #[test]
    fn every_code_and_session_present() {
        for code in 0..=5u8 {
            let rc = ConnectReturnCode::try_from(code).unwrap();
            assert_eq!(rc as u8, code);
            let packet = Packet::Connack(Connack { session_present: true, code: rc });
            assert_eq!(packet.encode().unwrap().as_ref(), &[0x20, 0x02, 0x01, code]);
            assert_eq!(decode_one(&[0x20, 0x02, 0x01, code]), Ok(Some(packet)));
        }
    }

    #[test]
    fn bad_connacks() {
        assert_eq!(
            decode_one(&[0x20, 0x02, 0x00, 0x06]),
            Err(CodecError::InvalidReturnCode { packet: "CONNACK", code: 6 })
        );
        assert_eq!(
            decode_one(&[0x20, 0x02, 0x02, 0x00]),
            Err(CodecError::ReservedBits { packet: "CONNACK", field: "connack flags", value: 2 })
        );
        assert_eq!(decode_one(&[0x20, 0x01, 0x00]), Err(CodecError::Truncated { needed: 2, have: 1 }));
        assert_eq!(
            decode_one(&[0x20, 0x03, 0x00, 0x00, 0x00]),
            Err(CodecError::TrailingPacketBytes { packet: "CONNACK", extra: 1 })
        );
        assert_eq!(
            decode_one(&[0x21, 0x02, 0x00, 0x00]),
            Err(CodecError::ReservedBits { packet: "CONNACK", field: "fixed header flags", value: 1 })
        );
    }
}
