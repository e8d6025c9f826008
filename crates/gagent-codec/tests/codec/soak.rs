//! One million pseudo-random inputs through every decoder. Slow; run with
//! `cargo test -p gagent-codec --release -- --ignored`.

use bytes::Bytes;
use gagent_codec::legacy::ServiceMessage;
use gagent_codec::mqtt::{Connect, Packet, Protocol, Publish, Subscribe};
use gagent_codec::serial::{SerialDecoder, SerialFrame};
use gagent_codec::standard::{StandardFrame, cmd_has_sn};

use crate::no_panic::{Accepted, exercise_all};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    fn byte(&mut self) -> u8 {
        // One byte in four is FF or 00 so headers, stuffing and zero lengths come up often.
        match self.next() % 8 {
            0 => 0xFF,
            1 => 0x00,
            _ => (self.next() >> 24) as u8,
        }
    }
}

impl Rng {
    fn bytes(&mut self, max: u64) -> Bytes {
        let len = self.below(max);
        (0..len).map(|_| self.byte()).collect()
    }

    /// A valid frame of a random kind, then 0–2 random byte changes and maybe a cut: inputs
    /// that get deep into the decoders instead of failing at the header.
    fn mutated_frame(&mut self, out: &mut Vec<u8>) {
        let wire = match self.below(7) {
            0 => {
                let cmd = [0x90, 0x91, 0x93, 0x94][self.below(4)];
                StandardFrame::new(cmd, cmd_has_sn(cmd).then_some(7), self.bytes(200)).encode()
            }
            1 => SerialFrame::new(self.byte(), self.byte(), self.bytes(80)).encode(),
            2 => ServiceMessage::AskFirmware {
                product_key: "0123456789abcdef0123456789abcdef".into(),
                firmware_id: [1; 8],
                busi_ver: self.bytes(300),
            }
            .encode(),
            3 => Packet::Connect(Connect::gagent(Protocol::V31, "AbCdEfGhIjKlMnOpQrStUv", "KQXBDTRLMA", 120)).encode(),
            4 => Packet::Publish(Publish::qos0("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", self.bytes(200))).encode(),
            5 => Packet::Subscribe(Subscribe { pkid: 1, filters: vec![("app2dev/x/#".into(), 0)] }).encode(),
            _ => ServiceMessage::FirmwareBlob {
                firmware_id: [2; 8],
                fw_ver: self.bytes(33),
                md5: [3; 16],
                image: self.bytes(100),
            }
            .encode(),
        };
        out.extend_from_slice(&wire.unwrap_or_default());
        for _ in 0..self.below(3) {
            if !out.is_empty() {
                let at = self.below(out.len() as u64);
                out[at] = self.byte();
            }
        }
        if self.below(4) == 0 {
            let keep = self.below(out.len() as u64 + 1);
            out.truncate(keep);
        }
    }
}

const PREFIXES: [&[u8]; 12] = [
    &[],
    &[0, 0, 0, 3],
    &[0, 0, 0, 3, 2, 5, 0],
    &[0, 0, 0, 3, 2, 8],
    &[0, 0, 0, 3, 2, 0x11, 1],
    &[0, 0, 0, 3, 2, 0x0E],
    &[0xFF, 0xFF, 0x00],
    &[0xFF, 0xFF],
    &[0x30],
    &[0x10, 0x20, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03],
    &[0x82, 0x10, 0x00, 0x01],
    &[0x90, 0x03, 0x00, 0x01],
];

#[test]
#[ignore = "soak test: run with --release -- --ignored"]
fn no_panic_million_random_inputs() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // One long-lived decoder sees all inputs back to back, like a noisy UART; a second one
    // with a small max_len resets now and then, like a caller with a timeout.
    let mut stream = SerialDecoder::new();
    let mut capped = SerialDecoder::with_max_len(64);
    let mut input = Vec::with_capacity(256);
    let mut seen = Accepted::default();
    for i in 0..1_000_000u32 {
        input.clear();
        if i % 4 == 0 {
            rng.mutated_frame(&mut input);
        } else {
            input.extend_from_slice(PREFIXES[rng.below(PREFIXES.len() as u64)]);
            let len = rng.below(if i % 16 == 1 { 1024 } else { 96 });
            input.extend((0..len).map(|_| rng.byte()));
        }
        let cuts = [rng.below(128), rng.below(128)];
        exercise_all(&input, &mut stream, &cuts, &mut seen);
        exercise_all(&input, &mut capped, &cuts[..1], &mut seen);
        if i % 1000 == 0 {
            capped.reset();
        }
    }
    println!("accepted: {seen:?}");
    // The inputs must reach past the header checks, or the soak proves little.
    assert!(seen.varlen > 0 && seen.standard > 0 && seen.legacy > 0);
    assert!(seen.serial_strict > 0 && seen.serial_stream > 0 && seen.mqtt > 0);
}
