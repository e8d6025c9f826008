//! Arbitrary bytes never panic a decoder; whatever decodes re-encodes to the same frame.

use bytes::BytesMut;
use gagent_codec::serial::SerialDecoder;
use gagent_codec::{CodecError, MqttPacket, SerialFrame, ServiceMessage, StandardFrame, mqtt, varlen};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::strategies::{split_at_cuts, wire_byte};

/// Prefixes that get random bytes past the header checks.
fn prefixed_input() -> impl Strategy<Value = Vec<u8>> {
    let prefix = prop_oneof![
        Just(vec![]),
        Just(vec![0, 0, 0, 3]),
        Just(vec![0, 0, 0, 3, 2, 5]),
        Just(vec![0, 0, 0, 3, 2, 8]),
        Just(vec![0, 0, 0, 3, 2, 0x11]),
        Just(vec![0xFF, 0xFF]),
        Just(vec![0xFF, 0xFF, 0x00]),
        // MQTT: PUBLISH, CONNECT up to the protocol level, SUBSCRIBE, SUBACK.
        Just(vec![0x30]),
        Just(vec![0x10, 0x20, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03]),
        Just(vec![0x10, 0x20, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]),
        Just(vec![0x82, 0x10, 0x00, 0x01]),
        Just(vec![0x90, 0x03, 0x00, 0x01]),
    ];
    (prefix, vec(wire_byte(), 0..200)).prop_map(|(mut p, rest)| {
        p.extend(rest);
        p
    })
}

/// How many inputs each decoder accepted, to show the random inputs reach the success paths.
#[derive(Debug, Default)]
pub struct Accepted {
    pub varlen: u64,
    pub standard: u64,
    pub legacy: u64,
    pub serial_strict: u64,
    pub serial_stream: u64,
    pub mqtt: u64,
}

/// The MQTT packet limit the no-panic tests decode with.
pub const MQTT_MAX_PACKET: usize = 1024;

/// Decodes MQTT packets from `buf` until it needs more bytes or fails.
fn drain_mqtt(buf: &mut BytesMut, out: &mut Vec<Result<MqttPacket, CodecError>>) -> bool {
    loop {
        match mqtt::decode(buf, MQTT_MAX_PACKET) {
            Ok(Some(packet)) => out.push(Ok(packet)),
            Ok(None) => return true,
            Err(e) => {
                out.push(Err(e));
                return false;
            }
        }
    }
}

/// MQTT: decoding all at once and in chunks gives the same packets and the same first error;
/// each packet re-encodes to itself.
fn exercise_mqtt(input: &[u8], cuts: &[usize], seen: &mut Accepted) {
    let mut whole = Vec::new();
    drain_mqtt(&mut BytesMut::from(input), &mut whole);
    let mut chunked = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in split_at_cuts(input, cuts) {
        buf.extend_from_slice(&chunk);
        if !drain_mqtt(&mut buf, &mut chunked) {
            break;
        }
    }
    assert_eq!(whole, chunked, "chunked MQTT decode differs");
    for packet in whole.into_iter().flatten() {
        seen.mqtt += 1;
        let again = packet.encode().expect("a decoded MQTT packet re-encodes");
        assert_eq!(mqtt::decode(&mut BytesMut::from(&again[..]), usize::MAX), Ok(Some(packet)));
    }
}

/// Runs every decoder on `input`; used by the soak test too.
pub fn exercise_all(input: &[u8], decoder: &mut SerialDecoder, cuts: &[usize], seen: &mut Accepted) {
    if varlen::decode(input).is_ok() {
        seen.varlen += 1;
    }
    if let Ok(frame) = StandardFrame::decode(input) {
        seen.standard += 1;
        let again = frame.encode().expect("a decoded standard frame re-encodes");
        assert_eq!(StandardFrame::decode(&again), Ok(frame));
    }
    if let Ok(msg) = ServiceMessage::decode(input) {
        seen.legacy += 1;
        let again = msg.encode().expect("a decoded legacy message re-encodes");
        assert_eq!(ServiceMessage::decode(&again), Ok(msg));
    }
    if let Ok(frame) = SerialFrame::decode(input) {
        seen.serial_strict += 1;
        let again = frame.encode().expect("a decoded serial frame re-encodes");
        assert_eq!(again.as_ref(), input, "strict serial decode is canonical");
    }
    exercise_mqtt(input, cuts, seen);
    for chunk in split_at_cuts(input, cuts) {
        decoder.push(&chunk);
        while let Some(result) = decoder.next_frame() {
            if let Ok(frame) = result {
                seen.serial_stream += 1;
                frame.encode().expect("a decoded serial frame re-encodes");
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in vec(any::<u8>(), 0..300), cuts in vec(any::<usize>(), 0..8)) {
        exercise_all(&input, &mut SerialDecoder::new(), &cuts, &mut Accepted::default());
    }

    #[test]
    fn prefixed_bytes_never_panic(input in prefixed_input(), cuts in vec(any::<usize>(), 0..8)) {
        exercise_all(&input, &mut SerialDecoder::with_max_len(64), &cuts, &mut Accepted::default());
    }
}
