//! Typed payloads of the big-file commands 0x19, 0x1B and 0x1D
//! (`device-protocol.md#serial-commands`, `device-protocol.md#serial-ota-sequence`,
//! `device-protocol.md#mcu-uploads-over-1-kb`).
//!
//! The same three commands carry MCU OTA (GAgent → MCU) and MCU → cloud uploads (MCU →
//! GAgent). Each helper converts to and from a whole [`SerialFrame`] because 0x1B keeps part of
//! its meaning (binary or HEX mode) in the frame flags rather than the payload.
//!
//! The MD5 travels as **text** (32 ASCII hex digits) and GA compares the MCU's echo with `strcmp`,
//! so it is kept as raw bytes here, exactly as received: letter case matters
//! (`device-protocol.md#open-question-md5-letter-case`). Its length is on the wire (`md5_len`,
//! always 0x0020 in practice), so other lengths are carried faithfully rather than rejected.

use bytes::{BufMut, Bytes, BytesMut};

use super::{SerialFrame, cmd};
use crate::error::CodecError;
use crate::reader::Reader;

/// Piece size that a 0x1B `piece_size` of 0 stands for.
pub const DEFAULT_PIECE_SIZE: u16 = 256;

/// Frame flag bit of 0x1B: the receiver wants HEX lines instead of binary pieces.
pub const FLAG_HEX_MODE: u16 = 0x0001;

/// Frame flags of a HEX-mode piece that is not the last line.
pub const FLAGS_HEX_LINE: u16 = 0x0001;

/// Frame flags of the last HEX-mode line.
pub const FLAGS_HEX_LAST_LINE: u16 = 0x0003;

/// 0x19 "big file coming": `file_size(4 BE) | md5_len(2 BE) | md5`. Closed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// Size of the whole file in bytes.
    pub file_size: u32,
    /// MD5 of the file as lowercase hex text.
    pub md5: Bytes,
}

impl FileOffer {
    /// The frame for this payload, flags 0.
    pub fn to_frame(&self, sn: u8) -> Result<SerialFrame, CodecError> {
        let mut payload = BytesMut::with_capacity(6 + self.md5.len());
        payload.put_u32(self.file_size);
        put_md5(&mut payload, &self.md5)?;
        Ok(SerialFrame::new(cmd::FILE_OFFER, sn, payload.freeze()))
    }

    /// Reads the payload of a 0x19 frame; trailing bytes are an error.
    pub fn from_frame(frame: &SerialFrame) -> Result<Self, CodecError> {
        expect_cmd(frame, cmd::FILE_OFFER)?;
        let mut r = Reader::new(&frame.payload);
        let file_size = r.u32()?;
        let md5 = read_md5(&mut r)?;
        r.finish(u16::from(cmd::FILE_OFFER))?;
        Ok(FileOffer { file_size, md5 })
    }
}

/// 0x1B "ready": `md5_len(2 BE) | md5 | piece_size(2 BE)`, mode in frame flags bit0.
/// Closed layout. Flag bits other than bit0 are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReady {
    /// Flags bit0: HEX line mode (true) or binary pieces (false).
    pub hex_mode: bool,
    /// The MD5 text echoed back; GA compares it byte for byte with the one from HTTP.
    pub md5: Bytes,
    /// Wanted piece size; 0 means [`DEFAULT_PIECE_SIZE`]. The docs recommend 128.
    pub piece_size: u16,
}

impl FileReady {
    /// The piece size the sender will actually use.
    pub fn effective_piece_size(&self) -> u16 {
        if self.piece_size == 0 { DEFAULT_PIECE_SIZE } else { self.piece_size }
    }

    /// The frame for this payload, with flags bit0 set in HEX mode.
    pub fn to_frame(&self, sn: u8) -> Result<SerialFrame, CodecError> {
        let mut payload = BytesMut::with_capacity(4 + self.md5.len());
        put_md5(&mut payload, &self.md5)?;
        payload.put_u16(self.piece_size);
        Ok(SerialFrame {
            cmd: cmd::FILE_READY,
            sn,
            flags: if self.hex_mode { FLAG_HEX_MODE } else { 0 },
            payload: payload.freeze(),
        })
    }

    /// Reads a 0x1B frame; trailing bytes are an error.
    pub fn from_frame(frame: &SerialFrame) -> Result<Self, CodecError> {
        expect_cmd(frame, cmd::FILE_READY)?;
        let mut r = Reader::new(&frame.payload);
        let md5 = read_md5(&mut r)?;
        let piece_size = r.u16()?;
        r.finish(u16::from(cmd::FILE_READY))?;
        Ok(FileReady { hex_mode: frame.flags & FLAG_HEX_MODE != 0, md5, piece_size })
    }
}

/// 0x1D piece: `piece_no(2 BE, from 1) | piece_total(2 BE) | data`; the data runs to the end
/// of the payload.
///
/// Binary mode: `piece_total` = ceil(size / piece_size), flags 0, last piece short.
/// HEX mode: one text line per piece (CRLF included, ≤ 263 bytes), `piece_total` 0, flags
/// [`FLAGS_HEX_LINE`] and [`FLAGS_HEX_LAST_LINE`] on the last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePiece {
    /// Piece number, starting at 1.
    pub piece_no: u16,
    /// Number of pieces, 0 in HEX mode.
    pub piece_total: u16,
    /// The bytes of this piece.
    pub data: Bytes,
}

impl FilePiece {
    /// The frame for this piece with the given frame flags (0 in binary mode).
    ///
    /// A `data` longer than [`super::MAX_PAYLOAD`] − 4 is refused by [`SerialFrame::encode`].
    pub fn to_frame(&self, sn: u8, flags: u16) -> SerialFrame {
        let mut payload = BytesMut::with_capacity(4 + self.data.len());
        payload.put_u16(self.piece_no);
        payload.put_u16(self.piece_total);
        payload.put_slice(&self.data);
        SerialFrame { cmd: cmd::FILE_PIECE, sn, flags, payload: payload.freeze() }
    }

    /// Reads a 0x1D frame (the flags stay on the frame).
    pub fn from_frame(frame: &SerialFrame) -> Result<Self, CodecError> {
        expect_cmd(frame, cmd::FILE_PIECE)?;
        let mut r = Reader::new(&frame.payload);
        let piece_no = r.u16()?;
        let piece_total = r.u16()?;
        let data = Bytes::copy_from_slice(r.rest());
        Ok(FilePiece { piece_no, piece_total, data })
    }
}

fn expect_cmd(frame: &SerialFrame, expected: u8) -> Result<(), CodecError> {
    if frame.cmd == expected {
        Ok(())
    } else {
        Err(CodecError::UnexpectedCmd { expected: u16::from(expected), found: u16::from(frame.cmd) })
    }
}

fn put_md5(out: &mut BytesMut, md5: &[u8]) -> Result<(), CodecError> {
    let len = u16::try_from(md5.len()).map_err(|_| CodecError::FieldTooLong {
        field: "md5",
        len: md5.len(),
        max: usize::from(u16::MAX),
    })?;
    out.put_u16(len);
    out.put_slice(md5);
    Ok(())
}

fn read_md5(r: &mut Reader<'_>) -> Result<Bytes, CodecError> {
    let len = usize::from(r.u16()?);
    Ok(Bytes::copy_from_slice(r.take(len)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD5: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn bytes_of(wire: &str) -> Vec<u8> {
        hex::decode(wire.replace(' ', "")).unwrap()
    }

    fn check(wire: &[u8], frame: &SerialFrame) {
        assert_eq!(frame.encode().unwrap().as_ref(), wire, "encode");
        assert_eq!(SerialFrame::decode(wire).as_ref(), Ok(frame), "decode");
    }

    /// `device-protocol.md#serial-ota-sequence` step 2: 26 624-byte image, sn 5. The documented
    /// checksum 0x95 matches.
    #[test]
    fn golden_file_offer_19() {
        let wire = bytes_of(
            "FF FF 00 2B 19 05 00 00 00 00 68 00 00 20 30 31 32 33 34 35 36 37 38 39 61 62 63 64 \
             65 66 30 31 32 33 34 35 36 37 38 39 61 62 63 64 65 66 95",
        );
        let offer = FileOffer { file_size: 26_624, md5: Bytes::from_static(MD5) };
        let frame = offer.to_frame(5).unwrap();
        check(&wire, &frame);
        assert_eq!(FileOffer::from_frame(&frame), Ok(offer));
    }

    /// `device-protocol.md#serial-ota-sequence` step 4: binary mode, piece size 128. With this MD5
    /// text the documented checksum 0xA9 matches.
    #[test]
    fn golden_file_ready_1b() {
        let wire = bytes_of(&format!("FF FF 00 29 1B 01 00 00 00 20 {} 00 80 A9", hex::encode(MD5)));
        let ready = FileReady { hex_mode: false, md5: Bytes::from_static(MD5), piece_size: 128 };
        let frame = ready.to_frame(1).unwrap();
        check(&wire, &frame);
        assert_eq!(FileReady::from_frame(&frame), Ok(ready));
    }

    #[test]
    fn file_ready_hex_mode_is_flag_bit0() {
        let ready = FileReady { hex_mode: true, md5: Bytes::from_static(MD5), piece_size: 0 };
        let frame = ready.to_frame(2).unwrap();
        assert_eq!(frame.flags, 0x0001);
        assert_eq!(ready.effective_piece_size(), 256);
        let mut with_other_bits = frame.clone();
        with_other_bits.flags = 0x8001;
        assert_eq!(FileReady::from_frame(&with_other_bits), Ok(ready));
    }

    /// `device-protocol.md#serial-ota-sequence` step 5: piece 1 of 208 with 4 data bytes, sn 6. The
    /// documented checksum 0x71 matches.
    #[test]
    fn golden_file_piece_1d() {
        let wire = bytes_of("FF FF 00 0D 1D 06 00 00 00 01 00 D0 00 50 00 20 71");
        let piece = FilePiece { piece_no: 1, piece_total: 208, data: Bytes::from_static(&[0x00, 0x50, 0x00, 0x20]) };
        let frame = piece.to_frame(6, 0);
        check(&wire, &frame);
        assert_eq!(FilePiece::from_frame(&frame), Ok(piece));
    }

    #[test]
    fn helpers_check_the_cmd() {
        let frame = SerialFrame::new(cmd::FILE_PIECE, 1, vec![0; 4]);
        assert_eq!(FileOffer::from_frame(&frame), Err(CodecError::UnexpectedCmd { expected: 0x19, found: 0x1D }));
    }

    #[test]
    fn closed_layouts_reject_trailing_bytes() {
        let mut frame = FileOffer { file_size: 1, md5: Bytes::from_static(MD5) }.to_frame(1).unwrap();
        let mut payload = frame.payload.to_vec();
        payload.push(0);
        frame.payload = payload.into();
        assert_eq!(FileOffer::from_frame(&frame), Err(CodecError::TrailingBytes { cmd: 0x19, extra: 1 }));
    }

    #[test]
    fn short_payloads_are_truncated() {
        let frame = SerialFrame::new(cmd::FILE_READY, 1, vec![0x00, 0x20, b'0']);
        assert_eq!(FileReady::from_frame(&frame), Err(CodecError::Truncated { needed: 34, have: 3 }));
    }
}
