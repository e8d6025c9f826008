//! The device's MQTT receive path, as GA `MQTT_readPacket` does it
//! (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`,
//! `device-protocol.md#observed-pacing`): one `recv` into a 1024-byte buffer; the first packet in
//! it is handled; anything after it in the same read is lost; a packet longer than what the read
//! returned is thrown away (V1V3 devices instead hand an oversized PUBLISH to
//! `DRV_OTAPacketHandle`, which reads the rest of it).

use bytes::{Bytes, BytesMut};
use gagent_codec::CodecError;
use gagent_codec::mqtt::{self, Connect, Packet, Protocol, Subscribe};

use crate::spec::{DeviceSpec, MqttProtocol};

/// GA's MQTT receive buffer.
pub const RECV_LEN: usize = mqtt::DEVICE_RECV_LIMIT;

/// The biggest V1V3 firmware PUBLISH the simulator will read (the module's OTA flash area).
pub const MAX_BLOB: usize = 16 << 20;

/// What the first bytes of one read turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// A whole packet, decoded.
    Packet(Packet),
    /// The fixed header announces more than the read returned.
    Oversize {
        /// First byte of the fixed header.
        first_byte: u8,
        /// Fixed header plus remaining length.
        total: usize,
    },
    /// Not a decodable packet (for example the tail of an earlier, discarded one).
    Garbage(String),
}

/// One read split the device's way: the first packet, and how many more packets (whole or
/// partial) were in the same read and are lost.
pub fn split_read(data: &[u8]) -> (FirstPacket, u32) {
    let (first_byte, remaining, header_len) = match mqtt::peek_fixed_header(data) {
        Ok(Some(h)) => h,
        Ok(None) => return (FirstPacket::Garbage("incomplete fixed header".into()), 0),
        Err(e) => return (FirstPacket::Garbage(e.to_string()), 0),
    };
    let total = header_len.saturating_add(remaining);
    if total > data.len() {
        return (FirstPacket::Oversize { first_byte, total }, 0);
    }
    let (head, rest) = data.split_at(total);
    let first = match decode_whole(head) {
        Ok(packet) => FirstPacket::Packet(packet),
        Err(e) => FirstPacket::Garbage(e.to_string()),
    };
    (first, count_packets(rest))
}

/// Decodes a buffer that holds exactly one packet.
pub fn decode_whole(bytes: &[u8]) -> Result<Packet, CodecError> {
    let mut buf = BytesMut::from(bytes);
    match mqtt::decode(&mut buf, bytes.len().max(1))? {
        Some(packet) => Ok(packet),
        None => Err(CodecError::Truncated { needed: bytes.len() + 1, have: bytes.len() }),
    }
}

/// Packets (a partial or undecodable tail counts as one) in bytes the device never looks at.
pub fn count_packets(mut rest: &[u8]) -> u32 {
    let mut count = 0;
    while !rest.is_empty() {
        count += 1;
        match mqtt::peek_fixed_header(rest) {
            Ok(Some((_, remaining, header_len))) => {
                let total = header_len.saturating_add(remaining);
                if total >= rest.len() {
                    break;
                }
                rest = &rest[total..];
            }
            _ => break,
        }
    }
    count
}

/// The CONNECT as GA writes it (`10 48 00 06 4d 51 49 73 64 70 03 c2 00 78` …,
/// `device-protocol.md#observed-connect-and-suback-bytes`).
pub fn connect_bytes(spec: &DeviceSpec, did: &str) -> Result<Bytes, CodecError> {
    let protocol = match spec.mqtt_protocol {
        MqttProtocol::V31 => Protocol::V31,
        MqttProtocol::V311 => Protocol::V311,
    };
    Packet::Connect(Connect::gagent(protocol, did, &spec.passcode, spec.keep_alive)).encode()
}

/// One SUBSCRIBE with requested QoS 0.
pub fn subscribe_bytes(pkid: u16, topic: &str) -> Result<Bytes, CodecError> {
    Packet::Subscribe(Subscribe { pkid, filters: vec![(topic.to_owned(), 0)] }).encode()
}

/// The three subscriptions of GA, in order (`device-protocol.md#subscriptions-one-at-a-time`).
pub fn topics(product_key: &str, did: &str) -> [String; 3] {
    [format!("ser2cli_noti/{product_key}"), format!("ser2cli_res/{did}"), format!("app2dev/{did}/#")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Method;

    const DID: &str = "AbCdEfGhIjKlMnOpQrStUv";

    #[test]
    fn connect_matches_the_observed_prefix() {
        let mut spec = DeviceSpec::new("0123456789abcdef0123456789abcdef", "5CCF7F0A1B2C", Method::V41);
        spec.passcode = "KQXBDTRLMA".into();
        let wire = connect_bytes(&spec, DID).unwrap();
        assert_eq!(&wire[..14], &[0x10, 0x48, 0x00, 0x06, 0x4d, 0x51, 0x49, 0x73, 0x64, 0x70, 0x03, 0xc2, 0x00, 0x78]);
        let mut tail = Vec::new();
        for field in [DID, DID, "KQXBDTRLMA"] {
            tail.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
            tail.extend_from_slice(field.as_bytes());
        }
        assert_eq!(&wire[14..], &tail[..]);
    }

    #[test]
    fn subscribe_and_suback_shapes() {
        let wire = subscribe_bytes(2, &format!("ser2cli_res/{DID}")).unwrap();
        assert_eq!(wire[0], 0x82);
        assert_eq!(&wire[2..4], &[0, 2]);
        assert_eq!(*wire.last().unwrap(), 0, "requested QoS 0");
    }

    #[test]
    fn second_packet_in_one_read_is_lost() {
        let mut data = vec![0x90, 0x03, 0x00, 0x01, 0x00];
        data.extend_from_slice(&gagent_codec::publish_qos0("t", b"x").unwrap());
        data.extend_from_slice(&[0xD0, 0x00, 0x30]);
        let (first, lost) = split_read(&data);
        assert!(matches!(first, FirstPacket::Packet(Packet::Suback(ref s)) if s.pkid == 1), "{first:?}");
        assert_eq!(lost, 3, "publish, pingresp and a partial packet");
    }

    #[test]
    fn publish_longer_than_the_read_is_oversize() {
        let packet = gagent_codec::publish_qos0("t", &[7; 2000]).unwrap();
        let (first, lost) = split_read(&packet[..RECV_LEN]);
        assert_eq!(first, FirstPacket::Oversize { first_byte: 0x30, total: packet.len() });
        assert_eq!(lost, 0);
        let (first, _) = split_read(&[0x00, 0x00, 0x00]);
        assert!(matches!(first, FirstPacket::Garbage(_)));
    }
}
