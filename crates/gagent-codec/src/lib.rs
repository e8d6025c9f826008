//! Pure codecs for the Gizwits GAgent wire formats: no I/O, no allocation beyond the frames
//! themselves, and no panics — every decoder returns `Result<_, CodecError>` for any input.
//!
//! Citations such as `device-protocol.md#standard-frame` name a heading of the repository's
//! `proto-docs/device-protocol.md`, the device protocol in our own words.
//!
//! | module | what | device protocol |
//! |---|---|---|
//! | [`varlen`] | MQTT-style variable length integers (the Gizwits `len`, MQTT remaining length) | `device-protocol.md#standard-frame` |
//! | [`standard`] | the standard frame of `app2dev` / `dev2app`: header, len, flag, cmd, sn for 0x0093/0x0094, P0 | `device-protocol.md#standard-frame`, `device-protocol.md#command-words` |
//! | [`legacy`] | the legacy service frame of `ser2cli_res` / `cli2ser_req` (no len, no flag) and its typed commands 0x0205–0x0211 | `device-protocol.md#legacy-service-frame`, `device-protocol.md#command-words`, `device-protocol.md#v1v3-ota`, `device-protocol.md#v4-push`, `device-protocol.md#open-question-payload-of-0x0211`, `device-protocol.md#open-question-the-v1v3-blob-command` |
//! | [`mqtt`] | MQTT 3.1 / 3.1.1 packets (CONNECT … DISCONNECT), encoding and a streaming decoder with a size limit | `device-protocol.md#mqtt-login`, `device-protocol.md#observed-connect-and-suback-bytes` |
//! | [`mqtt_publish`] | a whole MQTT 3.1 PUBLISH, QoS 0, for golden tests and device simulators | `device-protocol.md#worked-example-v41-push-publish` |
//! | [`serial`] | the GAgent ↔ MCU serial frame with byte stuffing, a streaming decoder, and the 0x19 / 0x1B / 0x1D OTA payloads | `device-protocol.md#mcu-serial-ota`, `device-protocol.md#mcu-uploads-over-1-kb` |
//!
//! Encoders are fallible too: the protocol is full of 1-, 2- and 4-byte length prefixes, and a
//! field that does not fit is refused ([`CodecError::FieldTooLong`] and friends) instead of
//! being cut short on the wire.
//!
//! ```
//! use gagent_codec::{SerialDecoder, SerialFrame, ServiceMessage, StandardFrame};
//!
//! // device-protocol.md#standard-frame: a device report.
//! let frame = StandardFrame::decode(&[0, 0, 0, 3, 5, 0, 0, 0x91, 4, 1])?;
//! assert_eq!((frame.cmd, frame.payload.as_ref()), (0x0091, &[4u8, 1][..]));
//!
//! // device-protocol.md#worked-example-v41-push-publish: the V4.1 push, ready to be the
//! // payload of a PUBLISH on `ser2cli_res/<did>`.
//! let push = ServiceMessage::OtaPushV41 { fw_type: 1, did: Some("AbCdEfGhIjKlMnOpQrStUv".into()) };
//! let publish = gagent_codec::publish_qos0("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", &push.encode()?)?;
//! assert_eq!(publish.len(), 69);
//!
//! // device-protocol.md#serial-frame: serial bytes in arbitrary pieces, with line noise in front.
//! let mut decoder = SerialDecoder::new();
//! decoder.push(&[0x13, 0x37, 0xFF, 0xFF, 0x00, 0x05]);
//! assert!(decoder.next_frame().is_none());
//! decoder.push(&[0x1A, 0x05, 0x00, 0x00, 0x24]);
//! assert_eq!(decoder.next_frame(), Some(Ok(SerialFrame::new(0x1A, 5, vec![]))));
//! # Ok::<(), gagent_codec::CodecError>(())
//! ```
//!
//! Which topic carries which frame is not this crate's business (see `device-protocol.md#topics`
//! and `device-protocol.md#open-question-the-cli2ser_req-topic` for the `cli2ser` / `cli2ser_req`
//! spellings); it only turns bytes into typed frames and back.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented
    )
)]
#![warn(missing_docs)]

pub mod error;
pub mod legacy;
pub mod mqtt;
pub mod mqtt_publish;
mod reader;
pub mod serial;
pub mod standard;
pub mod varlen;

pub use error::CodecError;
pub use legacy::ServiceMessage;
pub use mqtt::Packet as MqttPacket;
pub use mqtt_publish::publish_qos0;
pub use serial::{SerialDecoder, SerialFrame};
pub use standard::StandardFrame;

/// The first four bytes of every standard and legacy frame, and the version marker inside
/// 0x0205 and the 0x0208 blob: protocol version 3, big-endian.
pub const GIZWITS_HEADER: [u8; 4] = [0x00, 0x00, 0x00, 0x03];
