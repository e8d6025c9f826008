//! MCU OTA over the serial link, in process: GAgent's sender side and a simulated MCU, joined by an
//! in-memory byte pipe carrying real, stuffed serial frames (`device-protocol.md#mcu-serial-ota`).
//!
//! Baud-rate timing is not simulated; ACK timeouts and retries are.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use gagent_codec::serial::file_transfer::{FLAGS_HEX_LAST_LINE, FLAGS_HEX_LINE};
use gagent_codec::serial::{FileOffer, FilePiece, FileReady};
use gagent_codec::serial::{cmd, illegal};
use gagent_codec::{SerialDecoder, SerialFrame};
use md5::{Digest, Md5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use crate::spec::Timing;

/// How the simulated MCU answers a 0x19 offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McuBehaviour {
    /// Piece size asked for in 0x1B (0 = GA default 256; the docs recommend 128).
    pub piece_size: u16,
    /// Ask for HEX lines instead of binary pieces.
    pub hex_mode: bool,
    /// Take the whole file, then fail to flash it (its own check, a bad bootloader): no 0x29,
    /// no reboot, the MCU keeps its version while GAgent's RAM copy holds the served one.
    pub fails_to_flash: bool,
}

impl Default for McuBehaviour {
    fn default() -> Self {
        McuBehaviour { piece_size: 128, hex_mode: false, fails_to_flash: false }
    }
}

/// What happened on the serial link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McuTransfer {
    /// The MCU took the image, checked its MD5, flashed it and sent 0x29; GAgent ACKed and will
    /// reboot. Carries the MCU's new software version.
    Restarted {
        /// Version the MCU now runs.
        new_sw: String,
    },
    /// The transfer stopped; GAgent does not reboot.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Runs GAgent's side of `device-protocol.md#serial-ota-sequence` against a fresh simulated MCU.
/// `new_sw` is the version the image carries (the served `Soft-Version`), which the MCU reports
/// after its reboot.
pub async fn transfer(
    image: &[u8],
    md5_text: &str,
    is_hex: bool,
    new_sw: &str,
    behaviour: &McuBehaviour,
    timing: &Timing,
) -> McuTransfer {
    let (ga_end, mcu_end) = tokio::io::duplex(8192);
    let mcu = tokio::spawn(run_mcu(mcu_end, behaviour.clone(), new_sw.to_owned(), timing.clone()));
    let sent = send_file(ga_end, image, md5_text, is_hex, timing).await;
    let flashed = mcu.await.ok().flatten();
    match (sent, flashed) {
        (Ok(()), Some(new_sw)) => McuTransfer::Restarted { new_sw },
        (Ok(()), None) => McuTransfer::Failed { reason: "the MCU took the file but did not flash it".into() },
        (Err(reason), _) => McuTransfer::Failed { reason },
    }
}

/// Frames in and out of one end of the serial pipe.
struct Link<S> {
    io: S,
    decoder: SerialDecoder,
    pending: VecDeque<SerialFrame>,
    sn: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    fn new(io: S) -> Self {
        Link { io, decoder: SerialDecoder::new(), pending: VecDeque::new(), sn: 0 }
    }

    fn next_sn(&mut self) -> u8 {
        self.sn = self.sn.wrapping_add(1);
        self.sn
    }

    async fn send(&mut self, frame: &SerialFrame) -> Result<(), String> {
        let wire = frame.encode().map_err(|e| format!("encode serial frame: {e}"))?;
        self.io.write_all(&wire).await.map_err(|e| format!("serial write: {e}"))
    }

    /// The next frame matching `want`, others kept for later; `None` on timeout or EOF.
    async fn expect(&mut self, wait: Duration, want: impl Fn(&SerialFrame) -> bool) -> Option<SerialFrame> {
        if let Some(at) = self.pending.iter().position(&want) {
            return self.pending.remove(at);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(next) = self.decoder.next_frame() {
                // Corrupt frames are what a real UART drops; the sender's retry covers them.
                if let Ok(frame) = next {
                    if want(&frame) {
                        return Some(frame);
                    }
                    self.pending.push_back(frame);
                }
            }
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout_at(deadline, self.io.read(&mut buf)).await.ok()?.ok()?;
            if n == 0 {
                return None;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Sends and waits for the ACK (cmd + 1, same sn), `tries` sends in all.
    async fn send_acked(&mut self, frame: &SerialFrame, wait: Duration, tries: u32) -> Result<(), String> {
        let ack_cmd = frame.cmd.wrapping_add(1);
        for _ in 0..tries {
            self.send(frame).await?;
            if self.expect(wait, |f| f.cmd == ack_cmd && f.sn == frame.sn).await.is_some() {
                return Ok(());
            }
        }
        Err(format!("no ACK 0x{ack_cmd:02X} for sn {} after {tries} sends", frame.sn))
    }
}

/// GAgent's side (GA `GAgent_LocalSendUpgrade`, `GAgent_LocalSendbyHex`).
async fn send_file(
    io: DuplexStream,
    image: &[u8],
    md5_text: &str,
    is_hex: bool,
    timing: &Timing,
) -> Result<(), String> {
    let mut link = Link::new(io);
    let size = u32::try_from(image.len()).map_err(|_| "image larger than 4 GiB".to_owned())?;
    let sn = link.next_sn();
    let offer = FileOffer { file_size: size, md5: Bytes::copy_from_slice(md5_text.as_bytes()) }
        .to_frame(sn)
        .map_err(|e| e.to_string())?;
    link.send_acked(&offer, timing.serial_ack, 3).await?;

    let ready_frame = link
        .expect(timing.mcu_restart_wait, |f| f.cmd == cmd::FILE_READY || f.cmd == cmd::RECEIVER_CANCEL)
        .await
        .ok_or("MCU never answered the offer with 0x1B")?;
    if ready_frame.cmd == cmd::RECEIVER_CANCEL {
        link.send(&ready_frame.ack()).await?;
        return Err("MCU cancelled (0x27)".into());
    }
    let ready = FileReady::from_frame(&ready_frame).map_err(|e| format!("bad 0x1B: {e}"))?;
    if ready.hex_mode && !is_hex {
        let sn = link.next_sn();
        link.send(&SerialFrame::new(cmd::ILLEGAL_PACKET, sn, vec![illegal::FILE_TYPE])).await?;
        return Err("MCU asked for HEX mode but the file is not .hex (0x11, error 4)".into());
    }
    link.send(&ready_frame.ack()).await?;
    // GA compares the echo with strcmp: letter case matters
    // (device-protocol.md#open-question-md5-letter-case).
    if ready.md5.as_ref() != md5_text.as_bytes() {
        return Err("MCU echoed a different MD5 text; GAgent stops after the ACK".into());
    }

    let pieces: Vec<(FilePiece, u16)> = if ready.hex_mode {
        let lines: Vec<&[u8]> = image.split_inclusive(|b| *b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let piece_no = u16::try_from(i + 1).unwrap_or(u16::MAX);
                let flags = if i == last { FLAGS_HEX_LAST_LINE } else { FLAGS_HEX_LINE };
                (FilePiece { piece_no, piece_total: 0, data: Bytes::copy_from_slice(line) }, flags)
            })
            .collect()
    } else {
        let size = usize::from(ready.effective_piece_size());
        let chunks: Vec<&[u8]> = image.chunks(size).collect();
        if chunks.len() <= 1 {
            // GA quirk (device-protocol.md#serial-ota-sequence): an image that fits in one piece is
            // never sent.
            return Err("image fits in one piece: GA sends nothing".into());
        }
        let total = u16::try_from(chunks.len()).map_err(|_| "more than 65535 pieces".to_owned())?;
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let piece_no = u16::try_from(i + 1).unwrap_or(u16::MAX);
                (FilePiece { piece_no, piece_total: total, data: Bytes::copy_from_slice(c) }, 0)
            })
            .collect()
    };
    for (piece, flags) in pieces {
        let sn = link.next_sn();
        let frame = piece.to_frame(sn, flags);
        if let Err(reason) = link.send_acked(&frame, timing.serial_piece_ack, 3).await {
            let sn = link.next_sn();
            let _ = link.send(&SerialFrame::new(cmd::SENDER_CANCEL, sn, Bytes::new())).await;
            return Err(format!("piece {}: {reason}; sent 0x1F", piece.piece_no));
        }
    }

    let restart = link
        .expect(timing.mcu_restart_wait, |f| f.cmd == cmd::RESTART_MODULE)
        .await
        .ok_or("MCU did not ask for a restart (no 0x29)")?;
    link.send(&restart.ack()).await?;
    Ok(())
}

/// The simulated MCU: receives the file, checks its MD5, "flashes" and sends 0x29. Returns its
/// new version when it flashed.
async fn run_mcu(io: DuplexStream, behaviour: McuBehaviour, new_sw: String, timing: Timing) -> Option<String> {
    let mut link = Link::new(io);
    let offer_frame = link.expect(timing.mcu_restart_wait, |f| f.cmd == cmd::FILE_OFFER).await?;
    link.send(&offer_frame.ack()).await.ok()?;
    let offer = FileOffer::from_frame(&offer_frame).ok()?;

    let sn = link.next_sn();
    let ready = FileReady { hex_mode: behaviour.hex_mode, md5: offer.md5.clone(), piece_size: behaviour.piece_size }
        .to_frame(sn)
        .ok()?;
    link.send_acked(&ready, timing.serial_ack, 3).await.ok()?;

    let capacity = usize::try_from(offer.file_size).unwrap_or(0).min(64 << 20);
    let mut received = Vec::with_capacity(capacity);
    let mut last_piece = 0u16;
    loop {
        let frame =
            link.expect(timing.mcu_restart_wait, |f| f.cmd == cmd::FILE_PIECE || f.cmd == cmd::SENDER_CANCEL).await?;
        link.send(&frame.ack()).await.ok()?;
        if frame.cmd == cmd::SENDER_CANCEL {
            return None;
        }
        let piece = FilePiece::from_frame(&frame).ok()?;
        // A resend after a lost ACK repeats the piece number: keep it once.
        if piece.piece_no == last_piece.wrapping_add(1) {
            received.extend_from_slice(&piece.data);
            last_piece = piece.piece_no;
        }
        let done =
            if behaviour.hex_mode { frame.flags == FLAGS_HEX_LAST_LINE } else { piece.piece_no >= piece.piece_total };
        if done {
            break;
        }
    }
    let md5 = hex::encode(Md5::digest(&received));
    if received.len() != capacity || !md5.as_bytes().eq_ignore_ascii_case(&offer.md5) || behaviour.fails_to_flash {
        return None;
    }
    let sn = link.next_sn();
    link.send_acked(&SerialFrame::new(cmd::RESTART_MODULE, sn, Bytes::new()), timing.serial_ack, 3).await.ok()?;
    Some(new_sw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> (Vec<u8>, String) {
        // Plenty of 0xFF so byte stuffing is exercised.
        let image: Vec<u8> = (0..len).map(|i| if i % 7 == 0 { 0xFF } else { (i % 256) as u8 }).collect();
        let md5 = hex::encode(Md5::digest(&image));
        (image, md5)
    }

    #[tokio::test]
    async fn binary_transfer_end_to_end() {
        let (img, md5) = image(26_624);
        let out = transfer(&img, &md5, false, "04020021", &McuBehaviour::default(), &Timing::default()).await;
        assert_eq!(out, McuTransfer::Restarted { new_sw: "04020021".into() });
    }

    #[tokio::test]
    async fn default_piece_size_and_short_last_piece() {
        let (img, md5) = image(1000);
        let behaviour = McuBehaviour { piece_size: 0, ..McuBehaviour::default() };
        let out = transfer(&img, &md5, false, "0002", &behaviour, &Timing::default()).await;
        assert_eq!(out, McuTransfer::Restarted { new_sw: "0002".into() });
    }

    #[tokio::test]
    async fn wrong_md5_is_not_flashed() {
        let (img, _) = image(2000);
        let wrong = "0123456789abcdef0123456789abcdef";
        let out = transfer(&img, wrong, false, "x", &McuBehaviour::default(), &Timing::fast()).await;
        assert!(matches!(out, McuTransfer::Failed { .. }), "{out:?}");
    }

    #[tokio::test]
    async fn single_piece_image_is_never_sent() {
        let (img, md5) = image(100);
        let out = transfer(&img, &md5, false, "x", &McuBehaviour::default(), &Timing::fast()).await;
        assert!(matches!(out, McuTransfer::Failed { ref reason } if reason.contains("one piece")), "{out:?}");
    }

    #[tokio::test]
    async fn hex_mode_needs_a_hex_file() {
        let text = b":10010000214601360121470136007EFE09D2190140\r\n:00000001FF\r\n".repeat(3);
        let md5 = hex::encode(Md5::digest(&text));
        let behaviour = McuBehaviour { piece_size: 0, hex_mode: true, ..McuBehaviour::default() };
        let out = transfer(&text, &md5, true, "h", &behaviour, &Timing::fast()).await;
        assert_eq!(out, McuTransfer::Restarted { new_sw: "h".into() });
        let out = transfer(&text, &md5, false, "h", &behaviour, &Timing::fast()).await;
        assert!(matches!(out, McuTransfer::Failed { ref reason } if reason.contains("error 4")), "{out:?}");
    }
}
