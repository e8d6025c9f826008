//! encode → decode is the identity, for every frame type.

use bytes::Bytes;
use gagent_codec::serial::{FileOffer, FilePiece, FileReady, SerialDecoder, SerialFrame};
use gagent_codec::{ServiceMessage, StandardFrame, publish_qos0, varlen};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::strategies::*;

fn drain(decoder: &mut SerialDecoder) -> Vec<Result<SerialFrame, gagent_codec::CodecError>> {
    std::iter::from_fn(|| decoder.next_frame()).collect()
}

proptest! {
    #[test]
    fn varlen_roundtrip(value in prop_oneof![0usize..=0x3FFF, 0usize..=varlen::MAX]) {
        let mut buf = bytes::BytesMut::new();
        varlen::encode(value, &mut buf).unwrap();
        prop_assert_eq!(Some(buf.len()), varlen::encoded_len(value));
        prop_assert_eq!(varlen::decode(&buf), Ok((value, buf.len())));
    }

    #[test]
    fn standard_roundtrip(frame in standard_frame()) {
        let wire = frame.encode().unwrap();
        prop_assert_eq!(StandardFrame::decode(&wire), Ok(frame));
    }

    #[test]
    fn legacy_roundtrip(msg in service_message()) {
        let wire = msg.encode().unwrap();
        prop_assert_eq!(&wire[..4], &[0, 0, 0, 3]);
        prop_assert_eq!(ServiceMessage::decode(&wire), Ok(msg));
    }

    #[test]
    fn publish_layout(topic in "[ -~]{0,80}", payload in bytes(400)) {
        let packet = publish_qos0(&topic, &payload).unwrap();
        prop_assert_eq!(packet[0], 0x30);
        let (remaining, used) = varlen::decode(&packet[1..]).unwrap();
        let rest = &packet[1 + used..];
        prop_assert_eq!(remaining, rest.len());
        prop_assert_eq!(usize::from(u16::from_be_bytes([rest[0], rest[1]])), topic.len());
        prop_assert_eq!(&rest[2..2 + topic.len()], topic.as_bytes());
        prop_assert_eq!(&rest[2 + topic.len()..], &payload[..]);
    }

    #[test]
    fn serial_roundtrip(frame in serial_frame()) {
        let wire = frame.encode().unwrap();
        // Stuffing leaves no FF FF pair after the header.
        prop_assert!(!wire[2..].windows(2).any(|w| w == [0xFF, 0xFF]));
        prop_assert_eq!(SerialFrame::decode(&wire), Ok(frame));
    }

    #[test]
    fn serial_helpers_roundtrip(
        offer in file_offer(),
        ready in file_ready(),
        piece in file_piece(),
        sn in any::<u8>(),
        flags in any::<u16>(),
    ) {
        let wire = offer.to_frame(sn).unwrap().encode().unwrap();
        prop_assert_eq!(FileOffer::from_frame(&SerialFrame::decode(&wire).unwrap()), Ok(offer));
        let wire = ready.to_frame(sn).unwrap().encode().unwrap();
        prop_assert_eq!(FileReady::from_frame(&SerialFrame::decode(&wire).unwrap()), Ok(ready));
        let wire = piece.to_frame(sn, flags).encode().unwrap();
        let frame = SerialFrame::decode(&wire).unwrap();
        prop_assert_eq!(frame.flags, flags);
        prop_assert_eq!(FilePiece::from_frame(&frame), Ok(piece));
    }

    /// Frames separated by FF-free noise and cut into random chunks come out intact, in order.
    #[test]
    fn serial_decoder_reassembles_chunks(
        frames in vec((serial_frame(), vec(0u8..0xFF, 0..8)), 1..6),
        cuts in vec(any::<usize>(), 0..40),
    ) {
        let mut stream = Vec::new();
        for (frame, noise) in &frames {
            stream.extend_from_slice(noise);
            stream.extend_from_slice(&frame.encode().unwrap());
        }
        let mut decoder = SerialDecoder::new();
        let mut got = Vec::new();
        for chunk in split_at_cuts(&stream, &cuts) {
            decoder.push(&chunk);
            got.extend(drain(&mut decoder));
        }
        let want: Vec<_> = frames.into_iter().map(|(f, _)| Ok(f)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    /// Whatever garbage came before, a valid frame that follows it is recovered, and it is the
    /// last thing the decoder reports.
    #[test]
    fn serial_decoder_resyncs_after_any_garbage(
        garbage in vec(wire_byte(), 0..120),
        frame in serial_frame(),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let mut stream = garbage.clone();
        stream.extend_from_slice(&frame.encode().unwrap());
        let mut decoder = SerialDecoder::new();
        let mut got = Vec::new();
        for chunk in split_at_cuts(&stream, &cuts) {
            decoder.push(&chunk);
            got.extend(drain(&mut decoder));
        }
        prop_assert_eq!(got.last(), Some(&Ok(frame)));
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    /// A corrupted frame costs one error, never the frame after it.
    #[test]
    fn serial_decoder_resyncs_after_bad_checksum(a in serial_frame(), b in serial_frame(), delta in 1u8..=0xFF) {
        let mut bad = a.encode().unwrap().to_vec();
        // Re-stuff a corrupted checksum so that only the checksum is wrong.
        let body = gagent_codec::serial::unstuff(&bad[2..]).unwrap();
        let (checksum, rest) = body.split_last().unwrap();
        let mut corrupted = rest.to_vec();
        corrupted.push(checksum.wrapping_add(delta));
        let mut stuffed = bytes::BytesMut::new();
        gagent_codec::serial::stuff_into(&corrupted, &mut stuffed);
        bad.truncate(2);
        bad.extend_from_slice(&stuffed);

        let mut decoder = SerialDecoder::new();
        decoder.push(&bad);
        decoder.push(&b.encode().unwrap());
        let got = drain(&mut decoder);
        prop_assert_eq!(got.len(), 2);
        let is_bad_checksum = matches!(got[0], Err(gagent_codec::CodecError::BadChecksum { .. }));
        prop_assert!(is_bad_checksum);
        prop_assert_eq!(&got[1], &Ok(b));
    }
}

#[test]
fn empty_payloads_roundtrip() {
    let frame = SerialFrame::new(0x01, 0, Bytes::new());
    assert_eq!(SerialFrame::decode(&frame.encode().unwrap()), Ok(frame));
}
