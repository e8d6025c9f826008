//! MQTT 3.1 / 3.1.1 packets: typed values, encoding, and a streaming decoder
//! (`device-protocol.md#mqtt-login`, `device-protocol.md#worked-example-v41-push-publish`,
//! `device-protocol.md#observed-connect-and-suback-bytes`).
//!
//! GAgent speaks MQTT 3.1 (`MQIsdp`, level 3) and the Gizwits broker never spoke anything else;
//! newer clients and test tools speak 3.1.1 (`MQTT`, level 4). The wire format of the two is
//! the same for everything a GAgent device uses, so one codec decodes both and [`Connect`]
//! remembers which one the client asked for ([`Protocol`]). MQTT 5 is refused at CONNECT with
//! [`CodecError::UnsupportedProtocol`] so a server can answer CONNACK code 1.
//!
//! ```text
//! type (4 bits) | flags (4 bits) | remaining length (varlen, 1-4) | variable header | payload
//! ```
//!
//! One file per packet type, as in rumqtt: [`connect`], [`connack`], [`publish`], [`ack`]
//! (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: a packet id and nothing else), [`subscribe`],
//! [`suback`], [`unsubscribe`], [`ping`] and [`disconnect`].
//!
//! Where the codec is strict and where it is lenient:
//! - **Strict** about framing: reserved packet types 0 and 15, fixed-header flags other than
//!   the spec's (`0x2` for PUBREL, SUBSCRIBE, UNSUBSCRIBE, `0x0` for the rest but PUBLISH),
//!   QoS 3, packet id 0, bytes after the last field. A framing error means the byte stream can
//!   no longer be trusted, and MQTT's answer to that is to close the connection.
//! - **Lenient** where real 3.1 clients differ from 3.1.1 without endangering the framing:
//!   password without user name, client ids longer than 23 characters, empty client ids (the
//!   server decides whether to answer `IdentifierRejected`), and a 3.1 CONNECT whose user
//!   name / password flag is set but whose packet ends before that field (see [`connect`]).
//! - Topic filter syntax (where `+` and `#` may stand) is the broker's business, not the
//!   codec's: a filter only has to be non-empty UTF-8.
//!
//! ```
//! use bytes::BytesMut;
//! use gagent_codec::mqtt::{self, Packet};
//!
//! // device-protocol.md#observed-connect-and-suback-bytes: SUBACK for message id 1, granted
//! // QoS 0, then a PINGREQ, in one read.
//! let mut buf = BytesMut::from(&[0x90, 0x03, 0x00, 0x01, 0x00, 0xC0, 0x00][..]);
//! let suback = mqtt::Suback { pkid: 1, return_codes: vec![0] };
//! assert_eq!(mqtt::decode(&mut buf, 1024)?, Some(Packet::Suback(suback)));
//! assert_eq!(mqtt::decode(&mut buf, 1024)?, Some(Packet::PingReq));
//! assert_eq!(mqtt::decode(&mut buf, 1024)?, None);
//! assert_eq!(Packet::PingResp.encode()?.as_ref(), &[0xD0, 0x00]);
//! # Ok::<(), gagent_codec::CodecError>(())
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::varlen;

pub mod ack;
pub mod connack;
pub mod connect;
pub mod disconnect;
pub mod ping;
pub mod publish;
pub mod suback;
pub mod subscribe;
pub mod unsubscribe;

pub use connack::{Connack, ConnectReturnCode};
pub use connect::{Connect, Protocol, Will};
pub use publish::Publish;
pub use suback::Suback;
pub use subscribe::Subscribe;
pub use unsubscribe::Unsubscribe;

/// The packet size GAgent can receive
/// (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`): every read is one `recv` into a
/// 1024-byte buffer and a longer packet is thrown away. Anything a gateway sends to a device must
/// fit.
pub const DEVICE_RECV_LIMIT: usize = 1024;

/// Largest value of a 2-byte length prefix: the longest string or binary field.
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// Packet type numbers, the high nibble of the first byte.
pub mod packet_type {
    /// Client → server, first packet of a connection.
    pub const CONNECT: u8 = 1;
    /// Server → client, answer to CONNECT.
    pub const CONNACK: u8 = 2;
    /// Either way: an application message.
    pub const PUBLISH: u8 = 3;
    /// QoS 1 acknowledgement.
    pub const PUBACK: u8 = 4;
    /// QoS 2, step 1.
    pub const PUBREC: u8 = 5;
    /// QoS 2, step 2.
    pub const PUBREL: u8 = 6;
    /// QoS 2, step 3.
    pub const PUBCOMP: u8 = 7;
    /// Client → server.
    pub const SUBSCRIBE: u8 = 8;
    /// Server → client.
    pub const SUBACK: u8 = 9;
    /// Client → server.
    pub const UNSUBSCRIBE: u8 = 10;
    /// Server → client.
    pub const UNSUBACK: u8 = 11;
    /// Client → server keep-alive.
    pub const PINGREQ: u8 = 12;
    /// Server → client keep-alive answer.
    pub const PINGRESP: u8 = 13;
    /// Client → server, clean close.
    pub const DISCONNECT: u8 = 14;
}

/// One MQTT 3.1 / 3.1.1 control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Connect),
    /// CONNACK.
    Connack(Connack),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK with its packet id.
    Puback(u16),
    /// PUBREC with its packet id.
    Pubrec(u16),
    /// PUBREL with its packet id.
    Pubrel(u16),
    /// PUBCOMP with its packet id.
    Pubcomp(u16),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    Suback(Suback),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK with its packet id.
    Unsuback(u16),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
}

impl Packet {
    /// The packet type name, as used in error messages (`"PUBLISH"`, …).
    pub fn name(&self) -> &'static str {
        type_name(self.packet_type())
    }

    /// The packet type number (see [`packet_type`]).
    pub fn packet_type(&self) -> u8 {
        use crate::mqtt::packet_type as t;
        match self {
            Packet::Connect(_) => t::CONNECT,
            Packet::Connack(_) => t::CONNACK,
            Packet::Publish(_) => t::PUBLISH,
            Packet::Puback(_) => t::PUBACK,
            Packet::Pubrec(_) => t::PUBREC,
            Packet::Pubrel(_) => t::PUBREL,
            Packet::Pubcomp(_) => t::PUBCOMP,
            Packet::Subscribe(_) => t::SUBSCRIBE,
            Packet::Suback(_) => t::SUBACK,
            Packet::Unsubscribe(_) => t::UNSUBSCRIBE,
            Packet::Unsuback(_) => t::UNSUBACK,
            Packet::PingReq => t::PINGREQ,
            Packet::PingResp => t::PINGRESP,
            Packet::Disconnect => t::DISCONNECT,
        }
    }

    /// The first byte of the fixed header: type and flags.
    fn first_byte(&self) -> u8 {
        let flags = match self {
            Packet::Publish(p) => p.fixed_header_flags(),
            other => required_flags(other.packet_type()),
        };
        (self.packet_type() << 4) | flags
    }

    /// Checks every field and returns the remaining length.
    fn remaining_len(&self) -> Result<usize, CodecError> {
        match self {
            Packet::Connect(c) => c.body_len(),
            Packet::Connack(_) => Ok(2),
            Packet::Publish(p) => p.body_len(),
            Packet::Puback(id)
            | Packet::Pubrec(id)
            | Packet::Pubrel(id)
            | Packet::Pubcomp(id)
            | Packet::Unsuback(id) => ack::body_len(self.name(), *id),
            Packet::Subscribe(s) => s.body_len(),
            Packet::Suback(s) => s.body_len(),
            Packet::Unsubscribe(u) => u.body_len(),
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => Ok(0),
        }
    }

    fn write_body(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            Packet::Connect(c) => c.write_body(out),
            Packet::Connack(c) => {
                c.write_body(out);
                Ok(())
            }
            Packet::Publish(p) => p.write_body(out),
            Packet::Puback(id)
            | Packet::Pubrec(id)
            | Packet::Pubrel(id)
            | Packet::Pubcomp(id)
            | Packet::Unsuback(id) => {
                out.put_u16(*id);
                Ok(())
            }
            Packet::Subscribe(s) => s.write_body(out),
            Packet::Suback(s) => {
                s.write_body(out);
                Ok(())
            }
            Packet::Unsubscribe(u) => u.write_body(out),
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => Ok(()),
        }
    }

    /// Encodes the packet.
    ///
    /// Refuses, rather than writes, anything [`decode`] would reject: strings and binary
    /// fields over 65 535 bytes ([`CodecError::FieldTooLong`]), packets whose remaining length
    /// does not fit 4 bytes ([`CodecError::VarLenOverflow`]), QoS 3, packet id 0, a PUBLISH
    /// whose packet id does not match its QoS, wildcard or empty PUBLISH topics, empty
    /// SUBSCRIBE / UNSUBSCRIBE / SUBACK lists and invalid SUBACK return codes.
    ///
    /// A QoS 0 PUBLISH without DUP and RETAIN is byte for byte what
    /// [`publish_qos0`](crate::publish_qos0) writes.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let remaining = self.remaining_len()?;
        let len_bytes = varlen::encoded_len(remaining).ok_or(CodecError::VarLenOverflow { value: remaining })?;
        let mut out = BytesMut::with_capacity(remaining.saturating_add(1 + len_bytes));
        out.put_u8(self.first_byte());
        varlen::encode(remaining, &mut out)?;
        self.write_body(&mut out)?;
        Ok(out.freeze())
    }
}

/// Name of a packet type number, for errors.
fn type_name(packet_type: u8) -> &'static str {
    use crate::mqtt::packet_type as t;
    match packet_type {
        t::CONNECT => "CONNECT",
        t::CONNACK => "CONNACK",
        t::PUBLISH => "PUBLISH",
        t::PUBACK => "PUBACK",
        t::PUBREC => "PUBREC",
        t::PUBREL => "PUBREL",
        t::PUBCOMP => "PUBCOMP",
        t::SUBSCRIBE => "SUBSCRIBE",
        t::SUBACK => "SUBACK",
        t::UNSUBSCRIBE => "UNSUBSCRIBE",
        t::UNSUBACK => "UNSUBACK",
        t::PINGREQ => "PINGREQ",
        t::PINGRESP => "PINGRESP",
        t::DISCONNECT => "DISCONNECT",
        _ => "reserved",
    }
}

/// The fixed-header flags every packet type but PUBLISH must carry (MQTT 3.1.1 §2.2.2).
///
/// PUBREL, SUBSCRIBE and UNSUBSCRIBE are `0x2` ("QoS 1") because in 3.1 they were sent at QoS 1;
/// 3.1.1 froze that value. A 3.1 client could in theory set DUP on a retransmitted SUBSCRIBE
/// (`0xA`); GAgent never retransmits (it waits for each SUBACK), so that is rejected like any
/// other flag value.
fn required_flags(packet_type: u8) -> u8 {
    use crate::mqtt::packet_type as t;
    match packet_type {
        t::PUBREL | t::SUBSCRIBE | t::UNSUBSCRIBE => 0x2,
        _ => 0x0,
    }
}

/// Checks the first byte of a fixed header: known type, and flags as the spec requires.
fn check_first_byte(first_byte: u8) -> Result<(), CodecError> {
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0F;
    match packet_type {
        0 | 15 => Err(CodecError::UnknownPacketType { first_byte }),
        packet_type::PUBLISH => publish::check_flags(flags),
        _ if flags == required_flags(packet_type) => Ok(()),
        _ => {
            Err(CodecError::ReservedBits { packet: type_name(packet_type), field: "fixed header flags", value: flags })
        }
    }
}

/// Reads the fixed header at the start of `buf`.
///
/// Returns `Some((first_byte, remaining_length, header_len))` once the whole fixed header is
/// there (`header_len` is 2 to 5), `None` while it is not. The first byte is checked as soon
/// as it arrives (reserved types 0 and 15, fixed-header flags, PUBLISH QoS 3), and a fifth
/// length byte is [`CodecError::VarLenTooLong`] without waiting for it.
pub fn peek_fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, CodecError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    check_first_byte(first_byte)?;
    match varlen::decode(rest) {
        Ok((remaining, used)) => Ok(Some((first_byte, remaining, used.saturating_add(1)))),
        Err(CodecError::Truncated { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Streaming decode: if `buf` holds a whole packet, removes it from `buf` and returns it; if it
/// holds only part of one, returns `Ok(None)` and leaves `buf` untouched.
///
/// `max_packet` limits the whole packet (fixed header included). A larger declared size is
/// [`CodecError::PacketTooLarge`] as soon as the fixed header is readable, before the body
/// arrives, so a server can drop the connection without buffering it.
///
/// On an error in the fixed header (including the size check) nothing is removed: the packet
/// boundary is unknown or the packet is unwanted. On an error in the body the packet has been
/// removed, since its length was known. Either way MQTT's answer to a malformed packet is to
/// close the connection. Inside a complete packet, [`CodecError::Truncated`] means the
/// remaining length was too short for the fields it announced (offsets count from the start
/// of the variable header).
///
/// Payloads are not copied: [`Publish::payload`] and the like share `buf`'s memory.
pub fn decode(buf: &mut BytesMut, max_packet: usize) -> Result<Option<Packet>, CodecError> {
    let Some((first_byte, remaining, header_len)) = peek_fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len.saturating_add(remaining);
    if size > max_packet {
        return Err(CodecError::PacketTooLarge { size, max: max_packet });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    // `header_len <= size == body.len()`, so this cannot fail; it is written without a panic
    // path all the same.
    let _header = body.split_to(header_len.min(body.len()));
    decode_body(first_byte, body).map(Some)
}

/// Decodes the variable header and payload of a packet whose first byte is `first_byte`.
fn decode_body(first_byte: u8, body: Bytes) -> Result<Packet, CodecError> {
    use crate::mqtt::packet_type as t;
    let packet_type = first_byte >> 4;
    let mut r = Body::new(body, type_name(packet_type));
    let packet = match packet_type {
        t::CONNECT => Packet::Connect(Connect::read(&mut r)?),
        t::CONNACK => Packet::Connack(Connack::read(&mut r)?),
        t::PUBLISH => Packet::Publish(Publish::read(first_byte & 0x0F, &mut r)?),
        t::PUBACK => Packet::Puback(r.pkid()?),
        t::PUBREC => Packet::Pubrec(r.pkid()?),
        t::PUBREL => Packet::Pubrel(r.pkid()?),
        t::PUBCOMP => Packet::Pubcomp(r.pkid()?),
        t::SUBSCRIBE => Packet::Subscribe(Subscribe::read(&mut r)?),
        t::SUBACK => Packet::Suback(Suback::read(&mut r)?),
        t::UNSUBSCRIBE => Packet::Unsubscribe(Unsubscribe::read(&mut r)?),
        t::UNSUBACK => Packet::Unsuback(r.pkid()?),
        t::PINGREQ => Packet::PingReq,
        t::PINGRESP => Packet::PingResp,
        t::DISCONNECT => Packet::Disconnect,
        _ => return Err(CodecError::UnknownPacketType { first_byte }),
    };
    r.finish()?;
    Ok(packet)
}

/// A bounds-checked cursor over the body of one packet (everything after the fixed header).
///
/// Like [`crate::reader::Reader`], but over [`Bytes`] so binary fields and payloads come out
/// without a copy, and with the packet name at hand for errors.
pub(crate) struct Body {
    rest: Bytes,
    total: usize,
    packet: &'static str,
}

impl Body {
    fn new(body: Bytes, packet: &'static str) -> Self {
        Body { total: body.len(), rest: body, packet }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, CodecError> {
        if n > self.rest.len() {
            let pos = self.total.saturating_sub(self.rest.len());
            return Err(CodecError::Truncated { needed: pos.saturating_add(n), have: self.total });
        }
        Ok(self.rest.split_to(n))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let b = self.take(1)?;
        b.first().copied().ok_or(CodecError::Truncated { needed: 1, have: 0 })
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        let pair = <[u8; 2]>::try_from(b.as_ref()).map_err(|_| CodecError::Truncated { needed: 2, have: b.len() })?;
        Ok(u16::from_be_bytes(pair))
    }

    /// A packet identifier; 0 is reserved in 3.1 and forbidden in 3.1.1.
    pub(crate) fn pkid(&mut self) -> Result<u16, CodecError> {
        match self.u16()? {
            0 => Err(CodecError::PacketIdZero { packet: self.packet }),
            id => Ok(id),
        }
    }

    /// A 2-byte length-prefixed binary field.
    pub(crate) fn binary(&mut self) -> Result<Bytes, CodecError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A 2-byte length-prefixed UTF-8 string.
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let raw = self.binary()?;
        std::str::from_utf8(&raw).map(str::to_owned).map_err(|_| CodecError::InvalidUtf8 { field })
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.rest)
    }

    /// For closed layouts: any byte left over is an error.
    fn finish(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::TrailingPacketBytes { packet: self.packet, extra: self.rest.len() })
        }
    }
}

/// Length on the wire of a 2-byte length-prefixed field, or [`CodecError::FieldTooLong`].
pub(crate) fn prefixed_len(field: &'static str, len: usize) -> Result<usize, CodecError> {
    if len > MAX_FIELD_LEN {
        Err(CodecError::FieldTooLong { field, len, max: MAX_FIELD_LEN })
    } else {
        Ok(len.saturating_add(2))
    }
}

/// Writes a 2-byte length-prefixed field.
pub(crate) fn put_prefixed(out: &mut BytesMut, field: &'static str, value: &[u8]) -> Result<(), CodecError> {
    let len = u16::try_from(value.len()).map_err(|_| CodecError::FieldTooLong {
        field,
        len: value.len(),
        max: MAX_FIELD_LEN,
    })?;
    out.put_u16(len);
    out.put_slice(value);
    Ok(())
}

/// Checks a packet identifier to encode.
pub(crate) fn check_pkid(packet: &'static str, pkid: u16) -> Result<(), CodecError> {
    if pkid == 0 { Err(CodecError::PacketIdZero { packet }) } else { Ok(()) }
}

/// A topic *name* (PUBLISH, will): at least one character, no wildcards (MQTT 3.1.1 §4.7).
pub(crate) fn check_topic_name(topic: &str) -> Result<(), CodecError> {
    let reason = if topic.is_empty() {
        "a topic name must not be empty"
    } else if topic.contains(['+', '#']) {
        "a topic name must not contain the wildcards + or #"
    } else {
        return Ok(());
    };
    Err(CodecError::InvalidTopic { topic: topic.to_owned(), reason })
}

/// A topic *filter* (SUBSCRIBE, UNSUBSCRIBE): at least one character. Wildcard placement is
/// left to the broker, which has to parse filters anyway.
pub(crate) fn check_topic_filter(filter: &str) -> Result<(), CodecError> {
    if filter.is_empty() {
        Err(CodecError::InvalidTopic { topic: String::new(), reason: "a topic filter must not be empty" })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_header_is_peeked_without_the_body() {
        assert_eq!(peek_fixed_header(&[]), Ok(None));
        assert_eq!(peek_fixed_header(&[0x30]), Ok(None));
        assert_eq!(peek_fixed_header(&[0x30, 0xCB]), Ok(None));
        assert_eq!(peek_fixed_header(&[0x30, 0xCB, 0x01]), Ok(Some((0x30, 203, 3))));
        assert_eq!(peek_fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]), Ok(Some((0x30, varlen::MAX, 5))));
        assert_eq!(peek_fixed_header(&[0x30, 0x80, 0x80, 0x80, 0x80]), Err(CodecError::VarLenTooLong));
    }

    #[test]
    fn reserved_packet_types_fail_on_the_first_byte() {
        assert_eq!(peek_fixed_header(&[0x00]), Err(CodecError::UnknownPacketType { first_byte: 0x00 }));
        assert_eq!(peek_fixed_header(&[0xF0, 0x00]), Err(CodecError::UnknownPacketType { first_byte: 0xF0 }));
        let mut buf = BytesMut::from(&[0xF0, 0x00][..]);
        assert_eq!(decode(&mut buf, 16), Err(CodecError::UnknownPacketType { first_byte: 0xF0 }));
        assert_eq!(buf.len(), 2, "a fixed-header error removes nothing");
    }

    #[test]
    fn oversized_packet_fails_before_its_body_arrives() {
        // PUBLISH announcing 2000 bytes; only the fixed header has arrived.
        let mut buf = BytesMut::from(&[0x30, 0xD0, 0x0F][..]);
        assert_eq!(decode(&mut buf, DEVICE_RECV_LIMIT), Err(CodecError::PacketTooLarge { size: 2003, max: 1024 }));
        assert_eq!(buf.len(), 3);
        // The limit counts the fixed header: 3 + 1021 fits 1024, and not 1023.
        let fits = Packet::Publish(Publish::qos0("t", vec![0; 1018])).encode().unwrap();
        assert_eq!(fits.len(), 1024);
        let mut buf = BytesMut::from(&fits[..]);
        assert!(matches!(decode(&mut buf, 1024), Ok(Some(Packet::Publish(_)))));
        let mut buf = BytesMut::from(&fits[..]);
        assert_eq!(decode(&mut buf, 1023), Err(CodecError::PacketTooLarge { size: 1024, max: 1023 }));
    }

    #[test]
    fn partial_packet_leaves_the_buffer_untouched() {
        let wire = Packet::Suback(Suback { pkid: 1, return_codes: vec![0] }).encode().unwrap();
        for end in 0..wire.len() {
            let mut buf = BytesMut::from(wire.get(..end).unwrap());
            assert_eq!(decode(&mut buf, 1024), Ok(None));
            assert_eq!(buf.as_ref(), wire.get(..end).unwrap());
        }
    }

    #[test]
    fn body_error_removes_the_bad_packet() {
        let mut buf = BytesMut::from(&[0xC0, 0x01, 0x00, 0xD0, 0x00][..]);
        assert_eq!(decode(&mut buf, 1024), Err(CodecError::TrailingPacketBytes { packet: "PINGREQ", extra: 1 }));
        assert_eq!(decode(&mut buf, 1024), Ok(Some(Packet::PingResp)));
    }

    #[test]
    fn packet_names_and_types() {
        assert_eq!(Packet::PingReq.name(), "PINGREQ");
        assert_eq!(Packet::Pubrel(1).packet_type(), packet_type::PUBREL);
        assert_eq!(crate::MqttPacket::Disconnect.name(), "DISCONNECT");
    }

    #[test]
    fn encode_refuses_oversized_packets() {
        let huge = Packet::Publish(Publish::qos0("t", vec![0; varlen::MAX]));
        assert_eq!(huge.encode(), Err(CodecError::VarLenOverflow { value: varlen::MAX + 3 }));
    }
}
