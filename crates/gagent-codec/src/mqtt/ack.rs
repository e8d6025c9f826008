//! PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK: a packet id and nothing else.
//!
//! ```text
//! 40 / 50 / 62 / 70 / B0 | 02 | packet id (2 BE)
//! ```
//!
//! GAgent publishes and subscribes at QoS 0 only
//! (`device-protocol.md#subscriptions-one-at-a-time`), so none of these appear in a GAgent session;
//! they are here so that any MQTT 3.1 / 3.1.1 client can be decoded. PUBREL carries fixed-header
//! flags `0x2`, the others `0x0`. A remaining length other than 2 is an error: 3.1.1 gives these
//! packets a closed layout (the properties of MQTT 5 are not accepted).

use crate::error::CodecError;

use super::check_pkid;

/// The remaining length of an ack with packet id `pkid`, after checking the id is not 0.
pub(super) fn body_len(packet: &'static str, pkid: u16) -> Result<usize, CodecError> {
    check_pkid(packet, pkid)?;
    Ok(2)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use crate::error::CodecError;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    #[test]
    fn every_ack_roundtrips() {
        for (packet, first) in [
            (Packet::Puback(0x0102), 0x40),
            (Packet::Pubrec(0x0102), 0x50),
            (Packet::Pubrel(0x0102), 0x62),
            (Packet::Pubcomp(0x0102), 0x70),
            (Packet::Unsuback(0x0102), 0xB0),
        ] {
            let wire = [first, 0x02, 0x01, 0x02];
            assert_eq!(packet.encode().unwrap().as_ref(), &wire);
            assert_eq!(decode_one(&wire), Ok(Some(packet)));
        }
    }

    #[test]
    fn bad_acks() {
        assert_eq!(
            decode_one(&[0x60, 0x02, 0, 1]),
            Err(CodecError::ReservedBits { packet: "PUBREL", field: "fixed header flags", value: 0 })
        );
        assert_eq!(
            decode_one(&[0x42, 0x02, 0, 1]),
            Err(CodecError::ReservedBits { packet: "PUBACK", field: "fixed header flags", value: 2 })
        );
        assert_eq!(decode_one(&[0x40, 0x02, 0, 0]), Err(CodecError::PacketIdZero { packet: "PUBACK" }));
        assert_eq!(decode_one(&[0x40, 0x01, 0]), Err(CodecError::Truncated { needed: 2, have: 1 }));
        assert_eq!(
            decode_one(&[0xB0, 0x03, 0, 1, 0]),
            Err(CodecError::TrailingPacketBytes { packet: "UNSUBACK", extra: 1 })
        );
        assert_eq!(Packet::Pubcomp(0).encode(), Err(CodecError::PacketIdZero { packet: "PUBCOMP" }));
    }
}
