//! UNSUBSCRIBE. GAgent never sends it; here for completeness and test clients.
//!
//! ```text
//! A2 | remaining length | packet id (2 BE) | (topic filter (2-byte length + UTF-8))+
//! ```

use bytes::{BufMut, BytesMut};

use super::{Body, check_pkid, check_topic_filter, prefixed_len, put_prefixed};
use crate::error::CodecError;

/// An UNSUBSCRIBE packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet id, never 0; the UNSUBACK carries the same.
    pub pkid: u16,
    /// At least one topic filter.
    pub filters: Vec<String>,
}

impl Unsubscribe {
    pub(super) fn body_len(&self) -> Result<usize, CodecError> {
        check_pkid("UNSUBSCRIBE", self.pkid)?;
        if self.filters.is_empty() {
            return Err(CodecError::EmptyList { packet: "UNSUBSCRIBE" });
        }
        let mut len = 2usize;
        for filter in &self.filters {
            check_topic_filter(filter)?;
            len = len.saturating_add(prefixed_len("topic_filter", filter.len())?);
        }
        Ok(len)
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        out.put_u16(self.pkid);
        for filter in &self.filters {
            put_prefixed(out, "topic_filter", filter.as_bytes())?;
        }
        Ok(())
    }

    pub(super) fn read(r: &mut Body) -> Result<Self, CodecError> {
        let pkid = r.pkid()?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic_filter")?;
            check_topic_filter(&filter)?;
            filters.push(filter);
        }
        if filters.is_empty() {
            return Err(CodecError::EmptyList { packet: "UNSUBSCRIBE" });
        }
        Ok(Unsubscribe { pkid, filters })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Packet, decode};

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), 1024)
    }

    #[test]
    fn roundtrip_two_filters() {
        let packet = Packet::Unsubscribe(Unsubscribe { pkid: 9, filters: vec!["a/#".into(), "b".into()] });
        let wire = packet.encode().unwrap();
        assert_eq!(hex::encode(&wire), "a20a00090003612f23000162");
        assert_eq!(decode_one(&wire), Ok(Some(packet)));
    }

    #[test]
    fn bad_unsubscribes() {
        assert_eq!(
            decode_one(&[0xA0, 0x05, 0, 1, 0, 1, b'a']),
            Err(CodecError::ReservedBits { packet: "UNSUBSCRIBE", field: "fixed header flags", value: 0 })
        );
        assert_eq!(decode_one(&[0xA2, 0x02, 0, 1]), Err(CodecError::EmptyList { packet: "UNSUBSCRIBE" }));
        assert_eq!(decode_one(&[0xA2, 0x05, 0, 1, 0, 1, 0xC3]), Err(CodecError::InvalidUtf8 { field: "topic_filter" }));
        let empty = Packet::Unsubscribe(Unsubscribe { pkid: 1, filters: vec![] });
        assert_eq!(empty.encode(), Err(CodecError::EmptyList { packet: "UNSUBSCRIBE" }));
    }
}
