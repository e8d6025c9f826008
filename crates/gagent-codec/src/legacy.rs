//! The legacy "service" frame of `ser2cli_res` / `cli2ser_req`
//! (`device-protocol.md#legacy-service-frame`, `device-protocol.md#command-words`,
//! `device-protocol.md#v1v3-ota`, `device-protocol.md#v4-push`).
//!
//! ```text
//! 00 00 00 03 | cmd (2 BE) | payload laid out per command
//! ```
//!
//! Unlike the standard frame there is **no len and no flag**: the payload ends where the MQTT
//! PUBLISH ends (0x020F is six bytes on the wire, `00 00 00 03 02 0F`). Each command's payload
//! therefore has to delimit itself, and [`ServiceMessage::decode`] decides per command whether
//! bytes after the last field are an error; the rule is on each variant.
//!
//! The cloud sends this layout on `ser2cli_res/<did>` even though RTT parses those messages as
//! standard frames (`device-protocol.md#open-question-framing-of-ser2cli_res`): it is what the
//! official V4.1 firmware parses.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::reader::Reader;

/// Command words of the legacy frame (`device-protocol.md#command-words`).
pub mod cmd {
    /// d→c, V1V3: "which firmware is there for me?".
    pub const ASK_FIRMWARE: u16 = 0x0205;
    /// c→d, V1V3: the newest firmware id (all zeros = none).
    pub const FIRMWARE_ID_REPLY: u16 = 0x0206;
    /// d→c, V1V3: "send me this binary".
    pub const REQUEST_FIRMWARE: u16 = 0x0207;
    /// c→d, V1V3: the firmware image inside one large PUBLISH.
    ///
    /// **INFERRED** (`device-protocol.md#open-question-the-v1v3-blob-command`). No source shows the
    /// command value of the blob: GK only has the struct `xpgota_upgrate_t` and hands the oversized
    /// packet to `DRV_OTAPacketHandle`, whose implementation was never published. 0x0208 is the
    /// free value after 0x0207 in the request/reply numbering; the device protocol chose it. Keep
    /// V1V3 behind a flag.
    pub const FIRMWARE_BLOB: u16 = 0x0208;
    /// c→d, V4: OTA push with fid and URL. GA 0402 ignores it ("V4.1 Don't use this cmd").
    pub const OTA_PUSH_V4: u16 = 0x020E;
    /// d→c: "how many apps are online?". No payload.
    pub const APP_COUNT_QUERY: u16 = 0x020F;
    /// c→d: online app count, as the reply to 0x020F or pushed unasked.
    pub const APP_COUNT: u16 = 0x0210;
    /// c→d, V4.1: OTA push; makes the device run `update_and_check` for the type.
    pub const OTA_PUSH_V41: u16 = 0x0211;
}

/// Firmware type byte of 0x020E / 0x0211: the Wi-Fi module (GAgent) itself.
pub const FW_TYPE_WIFI: u8 = 1;
/// Firmware type byte of 0x020E / 0x0211: the MCU.
pub const FW_TYPE_MCU: u8 = 2;

/// The 8-byte firmware id meaning "no firmware" in 0x0206.
pub const NO_FIRMWARE: [u8; 8] = [0; 8];

/// Size of the fixed `fw_ver` slot of the 0x0208 blob.
pub const FW_VER_SLOT: usize = 32;

/// Largest `busi_ver` length the GK `(len / 255, len % 255)` encoding can express.
pub const BUSI_VER_MAX: usize = 255 * 255 + 254;

/// One message of the legacy frame, typed by command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceMessage {
    /// 0x0205, d→c (V1V3, GK `GetAskOtaPayload`):
    /// `pk_len(2 BE) pk | firmware_id(8) | 00 00 00 03 | busi_ver_len(2) busi_ver`.
    ///
    /// GK writes `busi_ver_len` as the two bytes `(len / 255, len % 255)` — base 255, not 256.
    /// It is decoded as `hi * 255 + lo` and encoded the same way: below 255 that is identical to
    /// 16-bit big-endian (and `00 FF` still reads as 255), and above it it is what GK actually
    /// sends. Closed layout: trailing bytes are an error, since a miscount here most likely means
    /// the length quirk was misread.
    AskFirmware {
        /// 32-char product key.
        product_key: String,
        /// Firmware id the device runs.
        firmware_id: [u8; 8],
        /// Business version, e.g. `"00000001"`.
        busi_ver: Bytes,
    },
    /// 0x0206, c→d: `firmware_id(8)`; [`NO_FIRMWARE`] means none. Closed layout.
    FirmwareIdReply {
        /// Newest firmware id.
        firmware_id: [u8; 8],
    },
    /// 0x0207, d→c: `firmware_id(8)`, the binary the device wants. Closed layout.
    RequestFirmware {
        /// Firmware id asked for.
        firmware_id: [u8; 8],
    },
    /// 0x0208 (**INFERRED**, see [`cmd::FIRMWARE_BLOB`]), c→d, in GK struct order:
    /// `firmware_id(8) | fw_ver_len(2 BE) | fw_ver(32, zero-padded) | md5(16 raw) |
    /// bin_len(4 BE) | bin`.
    ///
    /// `fw_ver` is taken to be the first `fw_ver_len` bytes of a fixed 32-byte slot (the sources
    /// leave open whether it is fixed or length-prefixed; the GK struct has both a length and a
    /// 32-byte array). The padding is ignored on decode and written as zeros on encode; the 16-bit
    /// fields are taken as big-endian like every other field of the protocol. Closed layout:
    /// `bin_len` must account for every remaining byte.
    FirmwareBlob {
        /// Firmware id of the image.
        firmware_id: [u8; 8],
        /// Version text, at most 32 bytes.
        fw_ver: Bytes,
        /// MD5 of `image`, 16 raw bytes.
        md5: [u8; 16],
        /// The image.
        image: Bytes,
    },
    /// 0x020E, c→d (V4, GK `P0_OTA_*`): `type(1) | fid(4 BE) | url_len(2 BE) url`. Closed layout.
    OtaPushV4 {
        /// [`FW_TYPE_WIFI`] or [`FW_TYPE_MCU`].
        fw_type: u8,
        /// Firmware file id; the device acts when it is non-zero and differs from its own.
        fid: u32,
        /// Download URL; the device cuts it from `/dev/ota/download` onwards.
        url: String,
    },
    /// 0x020F, d→c: no payload. Closed layout: exactly `00 00 00 03 02 0F`.
    AppCountQuery,
    /// 0x0210, c→d: `app_count(2 BE)`. Closed layout.
    AppCount {
        /// Number of apps online.
        count: u16,
    },
    /// 0x0211, c→d (V4.1): `type(1) [| did_len(2 BE) did]`.
    ///
    /// GA reads only the type byte (and 0401 builds sent the bare type as a "check again" trigger);
    /// the real cloud appends `did_len + did`
    /// (`device-protocol.md#open-question-payload-of-0x0211`), so encode with `Some(did)`. This
    /// layout is open-ended on the device side, so decoding tolerates it: a lone type byte gives
    /// `did: None`, and bytes after a well-formed did are ignored. A did part that is present but
    /// cut short is still an error.
    OtaPushV41 {
        /// [`FW_TYPE_WIFI`] or [`FW_TYPE_MCU`]; never send 0 or ≥ 3
        /// (`device-protocol.md#v41-push-sequence`).
        fw_type: u8,
        /// The device's did (22 chars).
        did: Option<String>,
    },
    /// Any other command, payload kept verbatim.
    ///
    /// Encoding an `Unknown` whose `cmd` is one of the known commands is allowed (it is an escape
    /// hatch for sending malformed frames in tests); decoding such bytes gives the typed variant.
    Unknown {
        /// Command word.
        cmd: u16,
        /// Everything after the cmd.
        payload: Bytes,
    },
}

impl ServiceMessage {
    /// The command word of this message.
    pub fn cmd(&self) -> u16 {
        match self {
            ServiceMessage::AskFirmware { .. } => cmd::ASK_FIRMWARE,
            ServiceMessage::FirmwareIdReply { .. } => cmd::FIRMWARE_ID_REPLY,
            ServiceMessage::RequestFirmware { .. } => cmd::REQUEST_FIRMWARE,
            ServiceMessage::FirmwareBlob { .. } => cmd::FIRMWARE_BLOB,
            ServiceMessage::OtaPushV4 { .. } => cmd::OTA_PUSH_V4,
            ServiceMessage::AppCountQuery => cmd::APP_COUNT_QUERY,
            ServiceMessage::AppCount { .. } => cmd::APP_COUNT,
            ServiceMessage::OtaPushV41 { .. } => cmd::OTA_PUSH_V41,
            ServiceMessage::Unknown { cmd, .. } => *cmd,
        }
    }

    /// Encodes the whole frame, header included.
    ///
    /// Fails with [`CodecError::FieldTooLong`] when a field does not fit its length prefix.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(&crate::GIZWITS_HEADER);
        out.put_u16(self.cmd());
        match self {
            ServiceMessage::AskFirmware { product_key, firmware_id, busi_ver } => {
                put_u16_prefixed(&mut out, "product_key", product_key.as_bytes())?;
                out.put_slice(firmware_id);
                // A version marker inside the payload, same bytes as the frame header.
                out.put_slice(&crate::GIZWITS_HEADER);
                let len = busi_ver.len();
                if len > BUSI_VER_MAX {
                    return Err(CodecError::FieldTooLong { field: "busi_ver", len, max: BUSI_VER_MAX });
                }
                // GK quirk: base-255 length, see the variant doc. Both digits fit a byte
                // because len <= 255 * 255 + 254.
                out.put_u8(u8::try_from(len / 255).unwrap_or(u8::MAX));
                out.put_u8(u8::try_from(len % 255).unwrap_or(u8::MAX));
                out.put_slice(busi_ver);
            }
            ServiceMessage::FirmwareIdReply { firmware_id } | ServiceMessage::RequestFirmware { firmware_id } => {
                out.put_slice(firmware_id)
            }
            ServiceMessage::FirmwareBlob { firmware_id, fw_ver, md5, image } => {
                out.put_slice(firmware_id);
                if fw_ver.len() > FW_VER_SLOT {
                    return Err(CodecError::FieldTooLong { field: "fw_ver", len: fw_ver.len(), max: FW_VER_SLOT });
                }
                // Cannot truncate: checked against FW_VER_SLOT just above.
                out.put_u16(u16::try_from(fw_ver.len()).unwrap_or(u16::MAX));
                out.put_slice(fw_ver);
                out.put_bytes(0, FW_VER_SLOT - fw_ver.len());
                out.put_slice(md5);
                let bin_len = u32::try_from(image.len()).map_err(|_| CodecError::FieldTooLong {
                    field: "bin",
                    len: image.len(),
                    max: u32::MAX as usize,
                })?;
                out.put_u32(bin_len);
                out.put_slice(image);
            }
            ServiceMessage::OtaPushV4 { fw_type, fid, url } => {
                out.put_u8(*fw_type);
                out.put_u32(*fid);
                put_u16_prefixed(&mut out, "url", url.as_bytes())?;
            }
            ServiceMessage::AppCountQuery => {}
            ServiceMessage::AppCount { count } => out.put_u16(*count),
            ServiceMessage::OtaPushV41 { fw_type, did } => {
                out.put_u8(*fw_type);
                if let Some(did) = did {
                    put_u16_prefixed(&mut out, "did", did.as_bytes())?;
                }
            }
            ServiceMessage::Unknown { payload, .. } => out.put_slice(payload),
        }
        Ok(out.freeze())
    }

    /// Decodes one legacy frame (the whole PUBLISH payload).
    ///
    /// Known commands with a malformed payload are an error, not [`ServiceMessage::Unknown`].
    /// Which commands accept trailing bytes is documented on each variant.
    pub fn decode(input: &[u8]) -> Result<ServiceMessage, CodecError> {
        let mut r = Reader::new(input);
        r.gizwits_header()?;
        let cmd = r.u16()?;
        let msg = match cmd {
            cmd::ASK_FIRMWARE => {
                let pk_len = usize::from(r.u16()?);
                let product_key = text(r.take(pk_len)?, "product_key")?;
                let firmware_id = r.array()?;
                r.gizwits_header()?;
                let [hi, lo] = r.array()?;
                let busi_ver_len = usize::from(hi) * 255 + usize::from(lo);
                let busi_ver = Bytes::copy_from_slice(r.take(busi_ver_len)?);
                r.finish(cmd)?;
                ServiceMessage::AskFirmware { product_key, firmware_id, busi_ver }
            }
            cmd::FIRMWARE_ID_REPLY => {
                let firmware_id = r.array()?;
                r.finish(cmd)?;
                ServiceMessage::FirmwareIdReply { firmware_id }
            }
            cmd::REQUEST_FIRMWARE => {
                let firmware_id = r.array()?;
                r.finish(cmd)?;
                ServiceMessage::RequestFirmware { firmware_id }
            }
            cmd::FIRMWARE_BLOB => {
                let firmware_id = r.array()?;
                let fw_ver_len = usize::from(r.u16()?);
                if fw_ver_len > FW_VER_SLOT {
                    return Err(CodecError::FieldTooLong { field: "fw_ver", len: fw_ver_len, max: FW_VER_SLOT });
                }
                let slot = r.take(FW_VER_SLOT)?;
                let fw_ver = Bytes::copy_from_slice(slot.get(..fw_ver_len).unwrap_or(slot));
                let md5 = r.array()?;
                let bin_len = r.u32()?;
                // On a 16-bit target a length that does not fit usize cannot be present anyway.
                let bin_len = usize::try_from(bin_len).unwrap_or(usize::MAX);
                let image = Bytes::copy_from_slice(r.take(bin_len)?);
                r.finish(cmd)?;
                ServiceMessage::FirmwareBlob { firmware_id, fw_ver, md5, image }
            }
            cmd::OTA_PUSH_V4 => {
                let fw_type = r.u8()?;
                let fid = r.u32()?;
                let url_len = usize::from(r.u16()?);
                let url = text(r.take(url_len)?, "url")?;
                r.finish(cmd)?;
                ServiceMessage::OtaPushV4 { fw_type, fid, url }
            }
            cmd::APP_COUNT_QUERY => {
                r.finish(cmd)?;
                ServiceMessage::AppCountQuery
            }
            cmd::APP_COUNT => {
                let count = r.u16()?;
                r.finish(cmd)?;
                ServiceMessage::AppCount { count }
            }
            cmd::OTA_PUSH_V41 => {
                let fw_type = r.u8()?;
                let did = if r.remaining() == 0 {
                    None
                } else {
                    let did_len = usize::from(r.u16()?);
                    Some(text(r.take(did_len)?, "did")?)
                };
                // Open-ended on the device side
                // (`device-protocol.md#open-question-payload-of-0x0211`): anything after the did is
                // ignored.
                ServiceMessage::OtaPushV41 { fw_type, did }
            }
            other => ServiceMessage::Unknown { cmd: other, payload: Bytes::copy_from_slice(r.rest()) },
        };
        Ok(msg)
    }
}

fn put_u16_prefixed(out: &mut BytesMut, field: &'static str, value: &[u8]) -> Result<(), CodecError> {
    let len = u16::try_from(value.len()).map_err(|_| CodecError::FieldTooLong {
        field,
        len: value.len(),
        max: usize::from(u16::MAX),
    })?;
    out.put_u16(len);
    out.put_slice(value);
    Ok(())
}

fn text(bytes: &[u8], field: &'static str) -> Result<String, CodecError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| CodecError::InvalidUtf8 { field })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "0123456789abcdef0123456789abcdef";
    const DID: &str = "AbCdEfGhIjKlMnOpQrStUv";

    fn bytes_of(wire: &str) -> Vec<u8> {
        hex::decode(wire.replace(' ', "")).unwrap()
    }

    fn roundtrip(wire: &[u8], msg: &ServiceMessage) {
        assert_eq!(ServiceMessage::decode(wire).as_ref(), Ok(msg), "decode");
        assert_eq!(msg.encode().unwrap().as_ref(), wire, "encode");
    }

    /// `device-protocol.md#v1v3-handshake` step 2: 62 bytes, pk length 32, firmware id …01,
    /// business version "00000001".
    #[test]
    fn golden_ask_firmware_0205() {
        let wire = bytes_of(&format!(
            "00 00 00 03 02 05 00 20 {} 00 00 00 00 00 00 00 01 00 00 00 03 00 08 30 30 30 30 30 30 30 31",
            hex::encode(PK)
        ));
        assert_eq!(wire.len(), 62);
        roundtrip(
            &wire,
            &ServiceMessage::AskFirmware {
                product_key: PK.into(),
                firmware_id: [0, 0, 0, 0, 0, 0, 0, 1],
                busi_ver: Bytes::from_static(b"00000001"),
            },
        );
    }

    /// GK writes the business-version length in base 255: 300 = 1 * 255 + 45.
    #[test]
    fn ask_firmware_busi_ver_len_is_base_255() {
        let msg = ServiceMessage::AskFirmware {
            product_key: PK.into(),
            firmware_id: [9; 8],
            busi_ver: Bytes::from(vec![b'x'; 300]),
        };
        let wire = msg.encode().unwrap();
        let len_at = 4 + 2 + 2 + 32 + 8 + 4;
        assert_eq!(&wire[len_at..len_at + 2], &[0x01, 0x2D]);
        assert_eq!(ServiceMessage::decode(&wire), Ok(msg));
    }

    /// Below 255 the base-255 reading equals big-endian, including the BE spelling `00 FF`.
    #[test]
    fn ask_firmware_busi_ver_len_255_written_big_endian() {
        let mut wire = bytes_of(&format!("00000003 0205 0020 {} 0000000000000001 00000003 00FF", hex::encode(PK)));
        wire.extend(std::iter::repeat_n(b'v', 255));
        let ServiceMessage::AskFirmware { busi_ver, .. } = ServiceMessage::decode(&wire).unwrap() else {
            panic!("wrong variant");
        };
        assert_eq!(busi_ver.len(), 255);
    }

    #[test]
    fn ask_firmware_checks_inner_version_marker() {
        let wire = bytes_of(&format!("00000003 0205 0020 {} 0000000000000001 00000004 0000", hex::encode(PK)));
        assert_eq!(ServiceMessage::decode(&wire), Err(CodecError::BadHeader { expected: 3, found: 4 }));
    }

    /// `device-protocol.md#v1v3-handshake` step 3.
    #[test]
    fn golden_firmware_id_reply_0206() {
        roundtrip(
            &bytes_of("00 00 00 03 02 06 00 00 00 00 00 00 00 02"),
            &ServiceMessage::FirmwareIdReply { firmware_id: [0, 0, 0, 0, 0, 0, 0, 2] },
        );
    }

    /// `device-protocol.md#v1v3-handshake` step 4: `00 00 00 03 02 07 <id8>`.
    #[test]
    fn golden_request_firmware_0207() {
        roundtrip(
            &bytes_of("00 00 00 03 02 07 00 00 00 00 00 00 00 02"),
            &ServiceMessage::RequestFirmware { firmware_id: [0, 0, 0, 0, 0, 0, 0, 2] },
        );
    }

    /// `device-protocol.md#legacy-service-frame`: the proof that the legacy frame has no len byte.
    #[test]
    fn golden_app_count_query_020f() {
        roundtrip(&bytes_of("00 00 00 03 02 0F"), &ServiceMessage::AppCountQuery);
    }

    /// `device-protocol.md#app-count`: two apps online.
    #[test]
    fn golden_app_count_0210() {
        roundtrip(&bytes_of("00 00 00 03 02 10 00 02"), &ServiceMessage::AppCount { count: 2 });
    }

    /// The Gizwits part of the worked PUBLISH of
    /// `device-protocol.md#worked-example-v41-push-publish`.
    #[test]
    fn golden_ota_push_v41_0211() {
        let wire = bytes_of(&format!("00 00 00 03 02 11 01 00 16 {}", hex::encode(DID)));
        assert_eq!(wire.len(), 31);
        roundtrip(&wire, &ServiceMessage::OtaPushV41 { fw_type: FW_TYPE_WIFI, did: Some(DID.into()) });
    }

    /// GA 0401 sent a bare type byte; GA only reads the type, so extra bytes are tolerated.
    #[test]
    fn ota_push_v41_is_open_ended() {
        roundtrip(&bytes_of("00 00 00 03 02 11 02"), &ServiceMessage::OtaPushV41 { fw_type: FW_TYPE_MCU, did: None });
        let mut wire = bytes_of(&format!("00 00 00 03 02 11 01 00 16 {}", hex::encode(DID)));
        wire.extend_from_slice(b"&more");
        assert_eq!(
            ServiceMessage::decode(&wire),
            Ok(ServiceMessage::OtaPushV41 { fw_type: FW_TYPE_WIFI, did: Some(DID.into()) })
        );
        assert_eq!(
            ServiceMessage::decode(&bytes_of("00 00 00 03 02 11 01 00 16 41")),
            Err(CodecError::Truncated { needed: 31, have: 10 })
        );
    }

    /// No worked example in the device protocol; layout from GK `mqttxpg.h`
    /// (`device-protocol.md#v4-push`).
    #[test]
    fn ota_push_v4_020e_layout() {
        let url = "http://api.gizwits.com/dev/ota/download/x";
        let mut wire = bytes_of("00 00 00 03 02 0E 02 00 00 00 39");
        wire.extend_from_slice(&u16::try_from(url.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(url.as_bytes());
        roundtrip(&wire, &ServiceMessage::OtaPushV4 { fw_type: FW_TYPE_MCU, fid: 57, url: url.into() });
    }

    /// INFERRED layout (`device-protocol.md#open-question-the-v1v3-blob-command`), GK struct order.
    #[test]
    fn firmware_blob_0208_layout() {
        let msg = ServiceMessage::FirmwareBlob {
            firmware_id: [0, 0, 0, 0, 0, 0, 0, 2],
            fw_ver: Bytes::from_static(b"04000002"),
            md5: [0xAA; 16],
            image: Bytes::from_static(&[1, 2, 3]),
        };
        let mut wire = bytes_of("00 00 00 03 02 08 00 00 00 00 00 00 00 02 00 08");
        wire.extend_from_slice(b"04000002");
        wire.extend_from_slice(&[0; 24]);
        wire.extend_from_slice(&[0xAA; 16]);
        wire.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
        roundtrip(&wire, &msg);
        assert_eq!(wire.len(), 6 + 8 + 2 + 32 + 16 + 4 + 3);
    }

    #[test]
    fn firmware_blob_fw_ver_longer_than_slot() {
        let msg = ServiceMessage::FirmwareBlob {
            firmware_id: [0; 8],
            fw_ver: Bytes::from(vec![b'1'; 33]),
            md5: [0; 16],
            image: Bytes::new(),
        };
        assert_eq!(msg.encode(), Err(CodecError::FieldTooLong { field: "fw_ver", len: 33, max: 32 }));
        let mut wire = bytes_of("00 00 00 03 02 08 00 00 00 00 00 00 00 02 00 21");
        wire.extend_from_slice(&[0; 52]);
        assert!(matches!(ServiceMessage::decode(&wire), Err(CodecError::FieldTooLong { field: "fw_ver", .. })));
    }

    #[test]
    fn closed_layouts_reject_trailing_bytes() {
        assert_eq!(
            ServiceMessage::decode(&bytes_of("00 00 00 03 02 0F 00")),
            Err(CodecError::TrailingBytes { cmd: 0x020F, extra: 1 })
        );
        assert_eq!(
            ServiceMessage::decode(&bytes_of("00 00 00 03 02 10 00 02 00")),
            Err(CodecError::TrailingBytes { cmd: 0x0210, extra: 1 })
        );
    }

    #[test]
    fn unknown_commands_keep_their_payload() {
        roundtrip(
            &bytes_of("00 00 00 03 02 20 01 02 03"),
            &ServiceMessage::Unknown { cmd: 0x0220, payload: Bytes::from_static(&[1, 2, 3]) },
        );
    }

    #[test]
    fn invalid_utf8_in_text_fields() {
        assert_eq!(
            ServiceMessage::decode(&bytes_of("00 00 00 03 02 11 01 00 01 FF")),
            Err(CodecError::InvalidUtf8 { field: "did" })
        );
    }

    #[test]
    fn too_short_for_cmd() {
        assert_eq!(
            ServiceMessage::decode(&bytes_of("00 00 00 03 02")),
            Err(CodecError::Truncated { needed: 6, have: 5 })
        );
    }
}
