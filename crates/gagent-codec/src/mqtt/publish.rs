//! PUBLISH, an application message in either direction (`device-protocol.md#mqtt-login`,
//! `device-protocol.md#worked-example-v41-push-publish`).
//!
//! ```text
//! 3 | DUP RETAIN QoS (4 bits) | remaining length | topic (2-byte length + UTF-8)
//!   | [packet id (2 BE), only when QoS > 0] | payload (the rest)
//! ```
//!
//! Every Gizwits publish in either direction is QoS 0 without DUP or RETAIN (`30 …`,
//! `device-protocol.md#subscriptions-one-at-a-time`), and the payload is one standard or legacy
//! frame. The other QoS levels are decoded anyway, since an MQTT test tool or a non-GAgent client
//! may use them. A QoS 0 publish with DUP set is accepted though 3.1.1 forbids it: 3.1 did not, and
//! the flag changes nothing at QoS 0.
//!
//! Remember `device-protocol.md#inbound-limit-1-kb-one-packet-per-read` when encoding for a device:
//! GAgent throws away any packet over [`DEVICE_RECV_LIMIT`](super::DEVICE_RECV_LIMIT) bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Body, check_pkid, check_topic_name, prefixed_len, put_prefixed};
use crate::error::CodecError;

const DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;
const QOS: u8 = 0x06;
const RETAIN: u8 = 0x01;

/// A PUBLISH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// 0, 1 or 2. Always 0 for GAgent.
    pub qos: u8,
    /// Retain flag. Always false for GAgent.
    pub retain: bool,
    /// Topic name: non-empty, no wildcards.
    pub topic: String,
    /// Packet id: present exactly when `qos > 0`, never 0.
    pub pkid: Option<u16>,
    /// The application message (for Gizwits, one frame of `device-protocol.md#frames`).
    pub payload: Bytes,
}

impl Publish {
    /// A QoS 0 publish without DUP and RETAIN, the only kind GAgent sends and expects.
    pub fn qos0(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Publish { dup: false, qos: 0, retain: false, topic: topic.into(), pkid: None, payload: payload.into() }
    }

    pub(super) fn fixed_header_flags(&self) -> u8 {
        let mut flags = (self.qos << QOS_SHIFT) & QOS;
        if self.dup {
            flags |= DUP;
        }
        if self.retain {
            flags |= RETAIN;
        }
        flags
    }

    pub(super) fn body_len(&self) -> Result<usize, CodecError> {
        if self.qos > 2 {
            return Err(CodecError::InvalidQos { packet: "PUBLISH", qos: self.qos });
        }
        match (self.qos, self.pkid) {
            (0, None) => {}
            (1..=2, Some(pkid)) => check_pkid("PUBLISH", pkid)?,
            (qos, pkid) => return Err(CodecError::PublishPacketId { qos, pkid }),
        }
        check_topic_name(&self.topic)?;
        let pkid_len = if self.pkid.is_some() { 2 } else { 0 };
        Ok(prefixed_len("topic", self.topic.len())?.saturating_add(pkid_len).saturating_add(self.payload.len()))
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        put_prefixed(out, "topic", self.topic.as_bytes())?;
        if let Some(pkid) = self.pkid {
            out.put_u16(pkid);
        }
        out.put_slice(&self.payload);
        Ok(())
    }

    pub(super) fn read(flags: u8, r: &mut Body) -> Result<Self, CodecError> {
        check_flags(flags)?;
        let qos = (flags & QOS) >> QOS_SHIFT;
        let topic = r.string("topic")?;
        check_topic_name(&topic)?;
        let pkid = if qos > 0 { Some(r.pkid()?) } else { None };
        Ok(Publish { dup: flags & DUP != 0, qos, retain: flags & RETAIN != 0, topic, pkid, payload: r.rest() })
    }
}

/// The fixed-header flags of a PUBLISH are DUP, QoS and RETAIN; only QoS 3 is invalid.
pub(super) fn check_flags(flags: u8) -> Result<(), CodecError> {
    match (flags & QOS) >> QOS_SHIFT {
        3 => Err(CodecError::InvalidQos { packet: "PUBLISH", qos: 3 }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{FW_TYPE_WIFI, ServiceMessage};
    use crate::mqtt::{Packet, decode};
    use crate::publish_qos0;

    fn decode_one(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        decode(&mut BytesMut::from(bytes), usize::MAX)
    }

    /// `device-protocol.md#worked-example-v41-push-publish` byte for byte, through
    /// `Packet::Publish`, and identical to `publish_qos0`.
    #[test]
    fn golden_worked_v41_push_publish() {
        let expected = hex::decode(
            [
                "30 43",
                "00 22 73 65 72 32 63 6C 69 5F 72 65 73 2F 41 62 43 64 45 66 47 68 49 6A 4B 6C 4D 6E 4F 70 51 72 53 74 55 76",
                "00 00 00 03 02 11 01 00 16",
                "41 62 43 64 45 66 47 68 49 6A 4B 6C 4D 6E 4F 70 51 72 53 74 55 76",
            ]
            .concat()
            .replace(' ', ""),
        )
        .unwrap();
        let push = ServiceMessage::OtaPushV41 { fw_type: FW_TYPE_WIFI, did: Some("AbCdEfGhIjKlMnOpQrStUv".into()) }
            .encode()
            .unwrap();
        let topic = "ser2cli_res/AbCdEfGhIjKlMnOpQrStUv";
        let packet = Packet::Publish(Publish::qos0(topic, push.clone()));
        let wire = packet.encode().unwrap();
        assert_eq!(hex::encode_upper(&wire), hex::encode_upper(&expected));
        assert_eq!(wire, publish_qos0(topic, &push).unwrap());
        assert_eq!(decode_one(&expected), Ok(Some(packet)));
    }

    #[test]
    fn qos_dup_retain_and_pkid() {
        let publish = Publish {
            dup: true,
            qos: 2,
            retain: true,
            topic: "a/b".into(),
            pkid: Some(0x1234),
            payload: Bytes::from_static(b"hi"),
        };
        let wire = Packet::Publish(publish.clone()).encode().unwrap();
        assert_eq!(hex::encode(&wire), "3d090003612f6212346869");
        assert_eq!(decode_one(&wire), Ok(Some(Packet::Publish(publish))));
    }

    #[test]
    fn bad_publishes() {
        // QoS 3 fails on the first byte alone.
        assert_eq!(decode_one(&[0x36]), Err(CodecError::InvalidQos { packet: "PUBLISH", qos: 3 }));
        for (topic, hex_topic) in [("", ""), ("a/+", "612f2b"), ("#", "23")] {
            let len = hex_topic.len() / 2;
            let wire = hex::decode(format!("30{:02x}{len:04x}{hex_topic}", len + 2)).unwrap();
            assert!(
                matches!(decode_one(&wire), Err(CodecError::InvalidTopic { topic: t, .. }) if t == topic),
                "{topic:?}"
            );
            let err = Packet::Publish(Publish::qos0(topic, Bytes::new())).encode();
            assert!(matches!(err, Err(CodecError::InvalidTopic { .. })));
        }
        // QoS 1 with packet id 0, and without room for a packet id.
        assert_eq!(decode_one(&[0x32, 0x05, 0, 1, b'a', 0, 0]), Err(CodecError::PacketIdZero { packet: "PUBLISH" }));
        assert_eq!(decode_one(&[0x32, 0x04, 0, 1, b'a', 0]), Err(CodecError::Truncated { needed: 5, have: 4 }));
        assert_eq!(decode_one(&[0x30, 0x03, 0, 1, 0xff]), Err(CodecError::InvalidUtf8 { field: "topic" }));
    }

    #[test]
    fn encode_checks_pkid_against_qos() {
        let mut p = Publish::qos0("t", Bytes::new());
        p.pkid = Some(1);
        assert_eq!(Packet::Publish(p.clone()).encode(), Err(CodecError::PublishPacketId { qos: 0, pkid: Some(1) }));
        p.qos = 1;
        p.pkid = None;
        assert_eq!(Packet::Publish(p.clone()).encode(), Err(CodecError::PublishPacketId { qos: 1, pkid: None }));
        p.pkid = Some(0);
        assert_eq!(Packet::Publish(p.clone()).encode(), Err(CodecError::PacketIdZero { packet: "PUBLISH" }));
        p.qos = 3;
        assert_eq!(Packet::Publish(p).encode(), Err(CodecError::InvalidQos { packet: "PUBLISH", qos: 3 }));
    }

    #[test]
    fn payload_shares_the_input_buffer() {
        let wire = Packet::Publish(Publish::qos0("t", vec![7; 100])).encode().unwrap();
        let mut buf = BytesMut::from(&wire[..]);
        let start = buf.as_ptr() as usize;
        let Ok(Some(Packet::Publish(p))) = decode(&mut buf, 1024) else { panic!() };
        assert_eq!(p.payload.as_ptr() as usize, start + 2 + 3);
    }
}
