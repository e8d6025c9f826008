//! PINGREQ and PINGRESP: a fixed header and nothing else.
//!
//! ```text
//! C0 00    PINGREQ   client → server
//! D0 00    PINGRESP  server → client
//! ```
//!
//! GAgent sends a PINGREQ about 2 s after its third SUBACK and then every 50 s, and logs in again
//! after three unanswered pings (`device-protocol.md#keep-alive`,
//! `device-protocol.md#observed-first-pingreq`). A non-zero remaining length is an error
//! ([`CodecError::TrailingPacketBytes`](crate::CodecError::TrailingPacketBytes)): the packet has a
//! closed layout, and bytes there mean the stream is out of step.

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::error::CodecError;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    /// The PINGREQ and PINGRESP of a GAgent session: `c0 00` and `d0 00`.
    #[test]
    fn golden_pings() {
        assert_eq!(Packet::PingReq.encode().unwrap().as_ref(), &[0xC0, 0x00]);
        assert_eq!(Packet::PingResp.encode().unwrap().as_ref(), &[0xD0, 0x00]);
        assert_eq!(decode_one(&[0xC0, 0x00]), Ok(Some(Packet::PingReq)));
        assert_eq!(decode_one(&[0xD0, 0x00]), Ok(Some(Packet::PingResp)));
    }

    #[test]
    fn ping_with_a_body_is_an_error() {
        assert_eq!(
            decode_one(&[0xC0, 0x02, 0x00, 0x00]),
            Err(CodecError::TrailingPacketBytes { packet: "PINGREQ", extra: 2 })
        );
        assert_eq!(
            decode_one(&[0xC1, 0x00]),
            Err(CodecError::ReservedBits { packet: "PINGREQ", field: "fixed header flags", value: 1 })
        );
    }
}
