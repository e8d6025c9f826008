//! MQTT packets: encode → decode is the identity, and the streaming decoder waits for whole
//! packets, takes them one at a time, and never looks past the one it returns.

use bytes::BytesMut;
use gagent_codec::mqtt::{self, Packet, Publish};
use gagent_codec::{CodecError, publish_qos0};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::strategies::*;

/// Decodes a whole buffer; the packet must take all of it.
fn decode_exact(wire: &[u8]) -> Result<Option<Packet>, CodecError> {
    let mut buf = BytesMut::from(wire);
    let packet = mqtt::decode(&mut buf, usize::MAX);
    assert!(buf.is_empty(), "{} bytes left after one packet", buf.len());
    packet
}

proptest! {
    #[test]
    fn mqtt_roundtrip(packet in mqtt_packet(2000)) {
        let wire = packet.encode().unwrap();
        let (first, remaining, header_len) = mqtt::peek_fixed_header(&wire).unwrap().unwrap();
        prop_assert_eq!(first >> 4, packet.packet_type());
        prop_assert_eq!(header_len + remaining, wire.len());
        prop_assert_eq!(decode_exact(&wire), Ok(Some(packet)));
    }

    /// `Packet::Publish` at QoS 0 writes exactly what `publish_qos0` writes.
    #[test]
    fn qos0_publish_matches_publish_qos0(topic in mqtt_topic(), payload in bytes(3000)) {
        let packet = Packet::Publish(Publish::qos0(topic.clone(), payload.clone())).encode().unwrap();
        prop_assert_eq!(packet, publish_qos0(&topic, &payload).unwrap());
    }

    /// Every proper prefix is `None` and stays in the buffer; the whole packet comes out whole.
    #[test]
    fn split_at_every_byte_boundary(packet in mqtt_packet(200)) {
        let wire = packet.encode().unwrap();
        for end in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..end]);
            prop_assert_eq!(mqtt::decode(&mut buf, usize::MAX), Ok(None), "prefix of {} bytes", end);
            prop_assert_eq!(&buf[..], &wire[..end]);
        }
        // Byte by byte into one buffer, as a socket reader would.
        let mut buf = BytesMut::new();
        for (i, byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let got = mqtt::decode(&mut buf, usize::MAX).unwrap();
            if i + 1 < wire.len() {
                prop_assert_eq!(got, None);
            } else {
                prop_assert_eq!(got.as_ref(), Some(&packet));
                prop_assert!(buf.is_empty());
            }
        }
    }

    /// Packets back to back, in random chunks, come out one at a time, in order.
    #[test]
    fn packets_back_to_back(packets in vec(mqtt_packet(300), 1..6), cuts in vec(any::<usize>(), 0..20)) {
        let mut stream = Vec::new();
        for packet in &packets {
            stream.extend_from_slice(&packet.encode().unwrap());
        }
        // All at once: one packet per call, the rest stays.
        let mut buf = BytesMut::from(&stream[..]);
        for packet in &packets {
            prop_assert_eq!(mqtt::decode(&mut buf, usize::MAX), Ok(Some(packet.clone())));
        }
        prop_assert_eq!(mqtt::decode(&mut buf, usize::MAX), Ok(None));
        prop_assert!(buf.is_empty());
        // In chunks.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in split_at_cuts(&stream, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(packet) = mqtt::decode(&mut buf, usize::MAX).unwrap() {
                got.push(packet);
            }
        }
        prop_assert_eq!(got, packets);
    }

    /// The size limit is checked on the fixed header alone, whatever follows.
    #[test]
    fn size_limit_needs_only_the_fixed_header(packet in mqtt_packet(2000), slack in 1usize..10) {
        let wire = packet.encode().unwrap();
        let (_, _, header_len) = mqtt::peek_fixed_header(&wire).unwrap().unwrap();
        let max = wire.len().saturating_sub(slack);
        let mut buf = BytesMut::from(&wire[..header_len]);
        prop_assert_eq!(
            mqtt::decode(&mut buf, max),
            Err(CodecError::PacketTooLarge { size: wire.len(), max })
        );
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(mqtt::decode(&mut buf, wire.len()), Ok(Some(packet)));
    }
}
