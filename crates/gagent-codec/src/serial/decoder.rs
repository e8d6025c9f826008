//! Streaming decoder for serial frames.
//!
//! Bytes arrive from a UART in arbitrary pieces, possibly with line noise in between, so the
//! decoder keeps state across [`SerialDecoder::push`] calls and unstuffs incrementally (each
//! wire byte is looked at once, however small the chunks).
//!
//! Resynchronisation relies on the stuffing rule: inside a frame an `FF` is always followed by
//! `55`, so `FF FF` is always the start of a frame.
//! - Bytes before a header are garbage and are dropped silently (counted in
//!   [`SerialDecoder::discarded_bytes`]).
//! - A run of `FF`s before a header: `FF FF FF x` with `x != 55` cannot be a header followed
//!   by a stuffed `FF`, so the first `FF` is garbage and the search moves on by one byte. The
//!   decoder therefore commits to a header only once it has seen the byte after it (and, if
//!   that is `FF`, the one after that).
//! - A broken frame yields one `Err` and decoding resumes after it: at the new `FF FF` when the
//!   frame was cut short ([`CodecError::InterruptedFrame`]), after the offending `FF` on
//!   [`CodecError::BadStuffing`], after the len field on [`CodecError::InvalidLength`], after
//!   the checksum on [`CodecError::BadChecksum`]. Bytes of a broken frame are not rescanned
//!   for a header: they cannot hold one.
//!
//! A corrupted `len` that is too large makes the decoder wait for bytes that are not coming
//! until the next frame's header interrupts it; GA bounds this with a 15 s serial timeout, so
//! callers should [`SerialDecoder::reset`] after their own timeout, and may cap `len` with
//! [`SerialDecoder::with_max_len`].

use bytes::{Buf, BufMut, BytesMut};

use super::{HEADER, MIN_LEN, STUFFING, SerialFrame, parse_body};
use crate::error::CodecError;

/// Incremental decoder: [`push`](Self::push) bytes in, pull frames out with
/// [`next_frame`](Self::next_frame).
#[derive(Debug, Clone)]
pub struct SerialDecoder {
    /// Wire bytes not examined yet.
    raw: BytesMut,
    /// Unstuffed bytes after the header of the frame in progress, if any.
    frame: Option<BytesMut>,
    max_len: usize,
    discarded: u64,
}

impl Default for SerialDecoder {
    fn default() -> Self {
        SerialDecoder::new()
    }
}

enum Step {
    NeedMore,
    Complete,
    Broken(CodecError),
}

impl SerialDecoder {
    /// A decoder that accepts any `len` the 16-bit field can hold.
    pub fn new() -> Self {
        SerialDecoder::with_max_len(usize::from(u16::MAX))
    }

    /// A decoder that rejects frames whose `len` exceeds `max_len` as soon as the len field
    /// has arrived (reported as [`CodecError::InvalidLength`]).
    pub fn with_max_len(max_len: usize) -> Self {
        SerialDecoder {
            raw: BytesMut::new(),
            frame: None,
            max_len: max_len.clamp(MIN_LEN, usize::from(u16::MAX)),
            discarded: 0,
        }
    }

    /// Appends bytes received from the wire.
    pub fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// Drops everything buffered, including a partial frame (e.g. after a receive timeout).
    pub fn reset(&mut self) {
        self.raw.clear();
        self.frame = None;
    }

    /// Number of garbage bytes dropped while looking for a header, since creation.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// Number of wire bytes held that have not been turned into frames yet (approximately: a
    /// partial frame is counted unstuffed).
    pub fn buffered_len(&self) -> usize {
        self.raw.len() + self.frame.as_ref().map_or(0, |f| f.len().saturating_add(HEADER.len()))
    }

    /// The next complete frame, an error for a broken one, or `None` when more bytes are needed.
    ///
    /// After an `Err` the decoder has already resynchronised; keep calling.
    pub fn next_frame(&mut self) -> Option<Result<SerialFrame, CodecError>> {
        loop {
            let Some(frame) = self.frame.as_mut() else {
                if !self.hunt() {
                    return None;
                }
                self.frame = Some(BytesMut::with_capacity(32));
                continue;
            };
            let step = fill(&mut self.raw, frame, self.max_len);
            return match step {
                Step::NeedMore => None,
                Step::Complete => {
                    let body = self.frame.take().unwrap_or_default();
                    Some(parse_body(&body))
                }
                Step::Broken(e) => {
                    self.frame = None;
                    Some(Err(e))
                }
            };
        }
    }

    /// Looks for a header; on success consumes it and returns true.
    fn hunt(&mut self) -> bool {
        let mut from = 0;
        loop {
            let found =
                self.raw.get(from..).and_then(|rest| rest.windows(2).position(|w| w == HEADER)).map(|p| p + from);
            let Some(start) = found else {
                // Keep a trailing FF: it may be the first half of a header.
                let keep = usize::from(self.raw.last() == Some(&0xFF));
                self.drop_garbage(self.raw.len().saturating_sub(keep));
                return false;
            };
            match (self.raw.get(start + 2), self.raw.get(start + 3)) {
                // `FF FF` or `FF FF FF` at the end of what has arrived: a following `FF` (then
                // not `55`) would make this FF garbage, so wait before committing.
                (None, _) | (Some(0xFF), None) => {
                    self.drop_garbage(start);
                    return false;
                }
                // `FF FF FF x`, x != 55: the first FF is garbage before a real header.
                (Some(0xFF), Some(&next)) if next != STUFFING => {
                    from = start + 1;
                }
                _ => {
                    self.drop_garbage(start);
                    self.raw.advance(HEADER.len());
                    return true;
                }
            }
        }
    }

    fn drop_garbage(&mut self, n: usize) {
        let n = n.min(self.raw.len());
        self.raw.advance(n);
        self.discarded = self.discarded.saturating_add(n as u64);
    }
}

/// Moves unstuffed bytes from `raw` into `frame` until the frame is complete or `raw` runs dry.
fn fill(raw: &mut BytesMut, frame: &mut BytesMut, max_len: usize) -> Step {
    loop {
        if let Some(&[hi, lo]) = frame.get(..2) {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if frame.len() == 2 && !(MIN_LEN..=max_len).contains(&len) {
                return Step::Broken(CodecError::InvalidLength { len, min: MIN_LEN, max: max_len });
            }
            if frame.len() >= 2 + len {
                return Step::Complete;
            }
        }
        let Some(&b) = raw.first() else {
            return Step::NeedMore;
        };
        if b == 0xFF {
            match raw.get(1) {
                None => return Step::NeedMore,
                Some(&STUFFING) => raw.advance(2),
                // Leave the new header in `raw` for the next hunt.
                Some(0xFF) => {
                    return Step::Broken(CodecError::InterruptedFrame { have: frame.len() });
                }
                Some(&next) => {
                    raw.advance(1);
                    return Step::Broken(CodecError::BadStuffing { next });
                }
            }
        } else {
            raw.advance(1);
        }
        frame.put_u8(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn bytes_of(wire: &str) -> Vec<u8> {
        hex::decode(wire.replace(' ', "")).unwrap()
    }

    fn drain(d: &mut SerialDecoder) -> Vec<Result<SerialFrame, CodecError>> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    fn ack() -> SerialFrame {
        SerialFrame::new(0x1A, 5, Bytes::new())
    }

    #[test]
    fn byte_by_byte() {
        let mut d = SerialDecoder::new();
        let wire = bytes_of("FF FF 00 05 1A 05 00 00 24");
        for (i, b) in wire.iter().enumerate() {
            d.push(&[*b]);
            let got = d.next_frame();
            if i + 1 < wire.len() {
                assert_eq!(got, None, "byte {i}");
            } else {
                assert_eq!(got, Some(Ok(ack())));
            }
        }
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.buffered_len(), 0);
    }

    #[test]
    fn skips_garbage_silently() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("00 13 FF 37 FF FF 00 05 1A 05 00 00 24 42 FF"));
        assert_eq!(drain(&mut d), vec![Ok(ack())]);
        assert_eq!(d.discarded_bytes(), 5);
        d.push(&bytes_of("FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Ok(ack())]);
    }

    #[test]
    fn run_of_ff_before_a_header() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("FF FF FF FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Ok(ack())]);
        assert_eq!(d.discarded_bytes(), 3);
    }

    /// Found by proptest: garbage `FF`, then a header split after its first byte.
    #[test]
    fn garbage_ff_then_header_split_across_pushes() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("00 FF FF"));
        assert_eq!(d.next_frame(), None);
        d.push(&bytes_of("FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Ok(ack())]);
        assert_eq!(d.discarded_bytes(), 2);
    }

    #[test]
    fn resyncs_after_bad_checksum() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("FF FF 00 05 1A 05 00 00 99  FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Err(CodecError::BadChecksum { computed: 0x24, received: 0x99 }), Ok(ack())]);
    }

    #[test]
    fn resyncs_after_interrupted_frame() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("FF FF 00 09 1D 01 00  FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Err(CodecError::InterruptedFrame { have: 5 }), Ok(ack())]);
    }

    #[test]
    fn resyncs_after_bad_stuffing() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("FF FF 00 06 1D FF 01 00  FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Err(CodecError::BadStuffing { next: 0x01 }), Ok(ack())]);
    }

    #[test]
    fn resyncs_after_invalid_length() {
        let mut d = SerialDecoder::with_max_len(300);
        d.push(&bytes_of("FF FF 00 02 77  FF FF 10 00 1A  FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(
            drain(&mut d),
            vec![
                Err(CodecError::InvalidLength { len: 2, min: 5, max: 300 }),
                Err(CodecError::InvalidLength { len: 0x1000, min: 5, max: 300 }),
                Ok(ack())
            ]
        );
    }

    #[test]
    fn stuffed_bytes_split_across_pushes() {
        let frame = SerialFrame::new(0x1D, 0xFF, vec![0xFF, 0xFF, 0x00]);
        let wire = frame.encode().unwrap();
        let mut d = SerialDecoder::new();
        for chunk in wire.chunks(3) {
            assert_eq!(d.next_frame(), None);
            d.push(chunk);
        }
        assert_eq!(drain(&mut d), vec![Ok(frame)]);
    }

    #[test]
    fn reset_drops_partial_frame() {
        let mut d = SerialDecoder::new();
        d.push(&bytes_of("FF FF 00 05 1A"));
        assert_eq!(d.next_frame(), None);
        d.reset();
        d.push(&bytes_of("FF FF 00 05 1A 05 00 00 24"));
        assert_eq!(drain(&mut d), vec![Ok(ack())]);
    }
}
