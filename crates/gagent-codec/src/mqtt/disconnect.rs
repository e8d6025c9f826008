//! DISCONNECT: a fixed header and nothing else, `E0 00`.
//!
//! A client that sends it is leaving on purpose, so a server discards its will. GAgent never
//! sends it: it simply drops the TCP connection. A non-zero remaining length is an error
//! ([`CodecError::TrailingPacketBytes`](crate::CodecError::TrailingPacketBytes)); MQTT 5's
//! reason code and properties are not accepted.

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::error::CodecError;
    use crate::mqtt::{Packet, decode};

    #[test]
    fn disconnect_roundtrip_and_trailing_bytes() {
        assert_eq!(Packet::Disconnect.encode().unwrap().as_ref(), &[0xE0, 0x00]);
        assert_eq!(decode(&mut BytesMut::from(&[0xE0, 0x00][..]), 2), Ok(Some(Packet::Disconnect)));
        assert_eq!(
            decode(&mut BytesMut::from(&[0xE0, 0x01, 0x00][..]), 3),
            Err(CodecError::TrailingPacketBytes { packet: "DISCONNECT", extra: 1 })
        );
    }
}
