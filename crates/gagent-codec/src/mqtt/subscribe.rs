//! SUBSCRIBE (`device-protocol.md#subscriptions-one-at-a-time`,
//! `device-protocol.md#observed-connect-and-suback-bytes`).
//!
//! ```text
//! 82 | remaining length | packet id (2 BE) | (topic filter (2-byte length + UTF-8) | QoS)+
//! ```
//!
//! GAgent sends three SUBSCRIBEs one at a time, each with one filter and requested QoS 0, with
//! packet ids counting up from 1: `ser2cli_noti/<product_key>`, `ser2cli_res/<did>`,
//! `app2dev/<did>/#` (`device-protocol.md#subscriptions-one-at-a-time`). Each waits for the SUBACK
//! with its own id.
//!
//! The requested-QoS byte must be 0, 1 or 2: its upper six bits are reserved in 3.1.1 and were
//! never used in 3.1. The filter's wildcard syntax is left to the broker.

use bytes::{BufMut, BytesMut};

use super::{Body, check_pkid, check_topic_filter, prefixed_len, put_prefixed};
use crate::error::CodecError;

/// A SUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet id, never 0; the SUBACK carries the same.
    pub pkid: u16,
    /// At least one `(topic filter, requested QoS)`.
    pub filters: Vec<(String, u8)>,
}

impl Subscribe {
    pub(super) fn body_len(&self) -> Result<usize, CodecError> {
        check_pkid("SUBSCRIBE", self.pkid)?;
        if self.filters.is_empty() {
            return Err(CodecError::EmptyList { packet: "SUBSCRIBE" });
        }
        let mut len = 2usize;
        for (filter, qos) in &self.filters {
            check_topic_filter(filter)?;
            if *qos > 2 {
                return Err(CodecError::InvalidQos { packet: "SUBSCRIBE", qos: *qos });
            }
            len = len.saturating_add(prefixed_len("topic_filter", filter.len())?).saturating_add(1);
        }
        Ok(len)
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        out.put_u16(self.pkid);
        for (filter, qos) in &self.filters {
            put_prefixed(out, "topic_filter", filter.as_bytes())?;
            out.put_u8(*qos);
        }
        Ok(())
    }

    pub(super) fn read(r: &mut Body) -> Result<Self, CodecError> {
        let pkid = r.pkid()?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic_filter")?;
            check_topic_filter(&filter)?;
            let qos = r.u8()?;
            if qos > 2 {
                return Err(CodecError::InvalidQos { packet: "SUBSCRIBE", qos });
            }
            filters.push((filter, qos));
        }
        if filters.is_empty() {
            return Err(CodecError::EmptyList { packet: "SUBSCRIBE" });
        }
        Ok(Subscribe { pkid, filters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    /// The third SUBSCRIBE of `device-protocol.md#subscriptions-one-at-a-time`.
    #[test]
    fn golden_gagent_subscribe() {
        let packet =
            Packet::Subscribe(Subscribe { pkid: 3, filters: vec![("app2dev/AbCdEfGhIjKlMnOpQrStUv/#".into(), 0)] });
        let wire = packet.encode().unwrap();
        let expected =
            format!("8225 0003 0020 {} 00", hex::encode("app2dev/AbCdEfGhIjKlMnOpQrStUv/#")).replace(' ', "");
        assert_eq!(hex::encode(&wire), expected);
        assert_eq!(decode_one(&wire), Ok(Some(packet)));
    }

    #[test]
    fn bad_subscribes() {
        assert_eq!(
            decode_one(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0]),
            Err(CodecError::ReservedBits { packet: "SUBSCRIBE", field: "fixed header flags", value: 0 })
        );
        assert_eq!(decode_one(&[0x82, 0x02, 0, 1]), Err(CodecError::EmptyList { packet: "SUBSCRIBE" }));
        assert_eq!(
            decode_one(&[0x82, 0x06, 0, 1, 0, 1, b'a', 3]),
            Err(CodecError::InvalidQos { packet: "SUBSCRIBE", qos: 3 })
        );
        assert_eq!(
            decode_one(&[0x82, 0x06, 0, 0, 0, 1, b'a', 0]),
            Err(CodecError::PacketIdZero { packet: "SUBSCRIBE" })
        );
        assert!(matches!(decode_one(&[0x82, 0x05, 0, 1, 0, 0, 0]), Err(CodecError::InvalidTopic { .. })));
        assert_eq!(decode_one(&[0x82, 0x05, 0, 1, 0, 1, b'a']), Err(CodecError::Truncated { needed: 6, have: 5 }));
        let empty = Packet::Subscribe(Subscribe { pkid: 1, filters: vec![] });
        assert_eq!(empty.encode(), Err(CodecError::EmptyList { packet: "SUBSCRIBE" }));
    }
}
