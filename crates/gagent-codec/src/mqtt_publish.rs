//! A complete MQTT PUBLISH packet, QoS 0, for golden tests and raw-socket device simulators
//! (`device-protocol.md#mqtt-login`, `device-protocol.md#worked-example-v41-push-publish`).
//!
//! ```text
//! 30 | remaining length (varlen) | topic_len (2 BE) topic | payload
//! ```
//!
//! Every Gizwits publish in either direction is QoS 0 with retain 0, so there is no packet id and
//! the fixed header byte is always `0x30`. Note the device-side limit of
//! `device-protocol.md#inbound-limit-1-kb-one-packet-per-read`: GA reads each packet with one
//! 1024-byte `recv`, so anything sent to a device must stay within 1 KB; this function does not
//! enforce that (device → cloud uploads, `device-protocol.md#mcu-uploads-over-1-kb`, are far
//! larger).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::varlen;

/// Fixed header byte: PUBLISH, DUP 0, QoS 0, RETAIN 0.
pub const PUBLISH_QOS0: u8 = 0x30;

/// Builds the bytes of a QoS 0 PUBLISH of `payload` on `topic`.
///
/// Fails when the topic is longer than 65 535 bytes or the packet exceeds the 4-byte remaining
/// length.
pub fn publish_qos0(topic: &str, payload: &[u8]) -> Result<Bytes, CodecError> {
    let topic_len = u16::try_from(topic.len()).map_err(|_| CodecError::FieldTooLong {
        field: "topic",
        len: topic.len(),
        max: usize::from(u16::MAX),
    })?;
    let remaining = payload.len().saturating_add(2 + topic.len());
    let len_bytes = varlen::encoded_len(remaining).ok_or(CodecError::VarLenOverflow { value: remaining })?;
    let mut out = BytesMut::with_capacity(1 + len_bytes + remaining);
    out.put_u8(PUBLISH_QOS0);
    varlen::encode(remaining, &mut out)?;
    out.put_u16(topic_len);
    out.put_slice(topic.as_bytes());
    out.put_slice(payload);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{FW_TYPE_WIFI, ServiceMessage};

    /// `device-protocol.md#worked-example-v41-push-publish` byte for byte: V4.1 push of Wi-Fi
    /// firmware to did `AbCdEfGhIjKlMnOpQrStUv`.
    #[test]
    fn golden_worked_v41_push_publish() {
        // Copied from the listing of `device-protocol.md#worked-example-v41-push-publish`.
        let expected = hex::decode(
            [
                "30 43",
                "00 22 73 65 72 32 63 6C 69 5F 72 65 73 2F 41 62 43 64 45 66 47 68 49 6A 4B 6C 4D 6E 4F 70 51 72 53 74 55 76",
                "00 00 00 03",
                "02 11",
                "01",
                "00 16",
                "41 62 43 64 45 66 47 68 49 6A 4B 6C 4D 6E 4F 70 51 72 53 74 55 76",
            ]
            .concat()
            .replace(' ', ""),
        )
        .unwrap();
        let push = ServiceMessage::OtaPushV41 { fw_type: FW_TYPE_WIFI, did: Some("AbCdEfGhIjKlMnOpQrStUv".into()) }
            .encode()
            .unwrap();
        let packet = publish_qos0("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", &push).unwrap();
        assert_eq!(hex::encode_upper(&packet), hex::encode_upper(&expected));
        assert_eq!(packet.len(), 2 + 67);
    }

    #[test]
    fn two_byte_remaining_length() {
        let packet = publish_qos0("t", &[0; 200]).unwrap();
        // 2 + 1 + 200 = 203 -> CB 01
        assert_eq!(&packet[..5], &[0x30, 0xCB, 0x01, 0x00, 0x01]);
    }

    #[test]
    fn topic_too_long() {
        let topic = "x".repeat(70_000);
        assert_eq!(
            publish_qos0(&topic, &[]),
            Err(CodecError::FieldTooLong { field: "topic", len: 70_000, max: 65_535 })
        );
    }
}
