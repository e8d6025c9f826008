//! Arbitrary bytes never panic a decoder; whatever decodes re-encodes to the same frame.

use gagent_codec::serial::SerialDecoder;
use gagent_codec::{SerialFrame, ServiceMessage, StandardFrame, varlen};
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
