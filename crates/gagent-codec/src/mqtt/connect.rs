//! CONNECT, the first packet of every connection (`device-protocol.md#connect`,
//! `device-protocol.md#observed-connect-and-suback-bytes`).
//!
//! ```text
//! 10 | remaining length | 00 06 "MQIsdp" 03 | flags | keep-alive (2 BE)
//!    | client id | [will topic | will message] | [user name] | [password]
//! ```
//!
//! Every field after the keep-alive is 2-byte length-prefixed; which ones are present is told
//! by the flags byte:
//!
//! | bit | 7 | 6 | 5 | 4–3 | 2 | 1 | 0 |
//! |---|---|---|---|---|---|---|---|
//! | | user name | password | will retain | will QoS | will | clean session | reserved, 0 |
//!
//! GAgent 04020006 sends exactly `10 48 00 06 4d 51 49 73 64 70 03 c2 00 78`, then the did as
//! client id, the did as user name and the passcode as password
//! (`device-protocol.md#observed-connect-and-suback-bytes`): MQTT 3.1, flags `C2` (user name,
//! password, clean session, no will), keep-alive 120 s.
//!
//! Leniency, and why:
//! - The client id is not capped at 23 characters (a 3.1 rule that 3.1.1 dropped); a did is
//!   22, but other GAgent builds and test tools may use longer ids. An empty client id is
//!   decoded too: whether to accept it (3.1.1 allows it with clean session) or to answer
//!   [`ConnectReturnCode::IdentifierRejected`](super::ConnectReturnCode::IdentifierRejected)
//!   is the server's decision.
//! - A password without a user name is accepted in both versions: 3.1 allowed it, only 3.1.1
//!   forbade it, and refusing it gains nothing. The encoder writes it the same way.
//! - In 3.1 only, a user name or password flag whose field is missing because the packet ends
//!   right there decodes as "no user name" / "no password", as mosquitto does for 3.1 clients
//!   (some old 3.1 libraries set the flags and leave the fields out).

use bytes::{BufMut, Bytes, BytesMut};

use super::{Body, check_topic_name, prefixed_len, put_prefixed};
use crate::error::CodecError;

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_QOS: u8 = 0x18;
const WILL: u8 = 0x04;
const CLEAN_SESSION: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// The protocol a client asked for in its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3. What GAgent speaks
    /// (`device-protocol.md#connect`).
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
}

impl Protocol {
    /// The protocol name field.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            Protocol::V311 => "MQTT",
        }
    }

    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
        }
    }
}

/// The last will of a CONNECT: published by the server if the client goes away unannounced.
/// GAgent sends none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic name: non-empty, no wildcards.
    pub topic: String,
    /// The message. A UTF-8 string in the 3.1 text, binary data in 3.1.1; kept as bytes.
    pub payload: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    /// Whether the will is published retained.
    pub retain: bool,
}

/// A CONNECT packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// MQTT 3.1 or 3.1.1.
    pub protocol: Protocol,
    /// Clean-session flag; GAgent always sets it.
    pub clean_session: bool,
    /// Keep-alive in seconds (GAgent: 120, `device-protocol.md#connect`); 0 turns the mechanism
    /// off.
    pub keep_alive: u16,
    /// For GAgent: the did.
    pub client_id: String,
    /// For GAgent: the did again.
    pub username: Option<String>,
    /// For GAgent: the passcode. Binary in 3.1.1, so bytes.
    pub password: Option<Bytes>,
    /// Last will, if any.
    pub will: Option<Will>,
}

impl Connect {
    /// A clean-session CONNECT with user name and password and no will, the way GAgent logs in
    /// (`device-protocol.md#connect`): client id and user name are both `did`.
    pub fn gagent(protocol: Protocol, did: &str, passcode: &str, keep_alive: u16) -> Self {
        Connect {
            protocol,
            clean_session: true,
            keep_alive,
            client_id: did.to_owned(),
            username: Some(did.to_owned()),
            password: Some(Bytes::copy_from_slice(passcode.as_bytes())),
            will: None,
        }
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        if let Some(will) = &self.will {
            flags |= WILL | ((will.qos << WILL_QOS_SHIFT) & WILL_QOS);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.clean_session {
            flags |= CLEAN_SESSION;
        }
        flags
    }

    pub(super) fn body_len(&self) -> Result<usize, CodecError> {
        // Protocol name, level, flags, keep-alive.
        let mut len = 2 + self.protocol.name().len() + 1 + 1 + 2;
        len = len.saturating_add(prefixed_len("client_id", self.client_id.len())?);
        if let Some(will) = &self.will {
            if will.qos > 2 {
                return Err(CodecError::InvalidQos { packet: "CONNECT", qos: will.qos });
            }
            check_topic_name(&will.topic)?;
            len = len.saturating_add(prefixed_len("will_topic", will.topic.len())?);
            len = len.saturating_add(prefixed_len("will_payload", will.payload.len())?);
        }
        if let Some(username) = &self.username {
            len = len.saturating_add(prefixed_len("username", username.len())?);
        }
        if let Some(password) = &self.password {
            len = len.saturating_add(prefixed_len("password", password.len())?);
        }
        Ok(len)
    }

    pub(super) fn write_body(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        put_prefixed(out, "protocol_name", self.protocol.name().as_bytes())?;
        out.put_u8(self.protocol.level());
        out.put_u8(self.flags());
        out.put_u16(self.keep_alive);
        put_prefixed(out, "client_id", self.client_id.as_bytes())?;
        if let Some(will) = &self.will {
            put_prefixed(out, "will_topic", will.topic.as_bytes())?;
            put_prefixed(out, "will_payload", &will.payload)?;
        }
        if let Some(username) = &self.username {
            put_prefixed(out, "username", username.as_bytes())?;
        }
        if let Some(password) = &self.password {
            put_prefixed(out, "password", password)?;
        }
        Ok(())
    }

    pub(super) fn read(r: &mut Body) -> Result<Self, CodecError> {
        let name = r.binary()?;
        let level = r.u8()?;
        let protocol = match (name.as_ref(), level) {
            (b"MQIsdp", 3) => Protocol::V31,
            (b"MQTT", 4) => Protocol::V311,
            // Checked before anything else so that a server can still answer CONNACK code 1
            // to, say, an MQTT 5 client whose flags and properties this codec does not know.
            _ => {
                return Err(CodecError::UnsupportedProtocol {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    level,
                });
            }
        };
        let flags = r.u8()?;
        let reserved = || CodecError::ReservedBits { packet: "CONNECT", field: "connect flags", value: flags };
        if flags & RESERVED != 0 {
            return Err(reserved());
        }
        let will_qos = (flags & WILL_QOS) >> WILL_QOS_SHIFT;
        if will_qos > 2 {
            return Err(CodecError::InvalidQos { packet: "CONNECT", qos: will_qos });
        }
        let has_will = flags & WILL != 0;
        if !has_will && flags & (WILL_QOS | WILL_RETAIN) != 0 {
            return Err(reserved());
        }
        let keep_alive = r.u16()?;
        let client_id = r.string("client_id")?;
        let will = if has_will {
            let topic = r.string("will_topic")?;
            check_topic_name(&topic)?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: flags & WILL_RETAIN != 0 })
        } else {
            None
        };
        let lenient_absent = |r: &Body| protocol == Protocol::V31 && r.is_empty();
        let username = if flags & USERNAME != 0 && !lenient_absent(r) { Some(r.string("username")?) } else { None };
        let password = if flags & PASSWORD != 0 && !lenient_absent(r) { Some(r.binary()?) } else { None };
        Ok(Connect {
            protocol,
            clean_session: flags & CLEAN_SESSION != 0,
            keep_alive,
            client_id,
            username,
            password,
            will,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Packet, decode};

    const DID: &str = "AbCdEfGhIjKlMnOpQrStUv";

    fn wire(hex: &str) -> Vec<u8> {
        hex::decode(hex.replace(' ', "")).unwrap()
    }

    fn decode_all(bytes: &[u8]) -> Result<Option<Packet>, CodecError> {
        let mut buf = BytesMut::from(bytes);
        let packet = decode(&mut buf, usize::MAX)?;
        assert!(buf.is_empty() || packet.is_none());
        Ok(packet)
    }

    /// `device-protocol.md#observed-connect-and-suback-bytes` byte for byte: GAgent 04020006's
    /// CONNECT.
    #[test]
    fn golden_gagent_connect_as_observed() {
        let hex_did = hex::encode(DID);
        let expected = wire(&format!(
            "10 48 00 06 4d 51 49 73 64 70 03 c2 00 78 0016{hex_did} 0016{hex_did} 000a{}",
            hex::encode("KQXBDTRLMA")
        ));
        // Variable header 12 (2 + 6 + 1 + 1 + 2), then 2 + 22, 2 + 22, 2 + 10: 72 = 0x48.
        assert_eq!(expected.len(), 2 + 72);
        let connect = Connect::gagent(Protocol::V31, DID, "KQXBDTRLMA", 120);
        let packet = Packet::Connect(connect.clone());
        assert_eq!(hex::encode(packet.encode().unwrap()), hex::encode(&expected));
        assert_eq!(decode_all(&expected), Ok(Some(packet)));
        assert_eq!(connect.flags(), 0xC2);
    }

    #[test]
    fn mqtt_311_with_will() {
        let connect = Connect {
            protocol: Protocol::V311,
            clean_session: false,
            keep_alive: 0,
            client_id: String::new(),
            username: None,
            password: None,
            will: Some(Will { topic: "gone".into(), payload: Bytes::from_static(b"\x00\xff"), qos: 2, retain: true }),
        };
        let bytes = Packet::Connect(connect.clone()).encode().unwrap();
        assert_eq!(hex::encode(&bytes), "101600044d5154540434000000000004676f6e65000200ff");
        assert_eq!(decode_all(&bytes), Ok(Some(Packet::Connect(connect))));
    }

    #[test]
    fn unsupported_protocols_get_their_own_error() {
        // MQTT 5 ("MQTT", 5), and "MQIsdp" with the 3.1.1 level.
        for (bytes, name, level) in [
            (wire("10 0c 0004 4d515454 05 02 003c 0000"), "MQTT", 5),
            (wire("10 0e 0006 4d5149736470 04 02 003c 0000"), "MQIsdp", 4),
            (wire("10 05 0001 ff 03 02"), "\u{fffd}", 3),
        ] {
            assert_eq!(decode_all(&bytes), Err(CodecError::UnsupportedProtocol { name: name.into(), level }));
        }
    }

    #[test]
    fn reserved_flag_and_inconsistent_will_flags() {
        for (flags, err) in [
            (0x03, CodecError::ReservedBits { packet: "CONNECT", field: "connect flags", value: 0x03 }),
            (0x22, CodecError::ReservedBits { packet: "CONNECT", field: "connect flags", value: 0x22 }),
            (0x0A, CodecError::ReservedBits { packet: "CONNECT", field: "connect flags", value: 0x0A }),
            (0x1E, CodecError::InvalidQos { packet: "CONNECT", qos: 3 }),
        ] {
            let bytes = wire(&format!("10 0c 0004 4d515454 04 {flags:02x} 003c 0000"));
            assert_eq!(decode_all(&bytes), Err(err));
        }
    }

    #[test]
    fn password_without_username_is_accepted() {
        let bytes = wire("10 12 0004 4d515454 04 42 003c 0001 61 0003 707764");
        let Ok(Some(Packet::Connect(c))) = decode_all(&bytes) else { panic!() };
        assert_eq!((c.username, c.password), (None, Some(Bytes::from_static(b"pwd"))));
        let c = Packet::Connect(Connect { username: None, ..Connect::gagent(Protocol::V311, "a", "pwd", 60) });
        assert_eq!(c.encode().unwrap().as_ref(), &bytes[..]);
    }

    #[test]
    fn long_client_ids_are_accepted() {
        let id = "x".repeat(300);
        let connect = Packet::Connect(Connect::gagent(Protocol::V31, &id, "p", 30));
        assert_eq!(decode_all(&connect.encode().unwrap()), Ok(Some(connect)));
    }

    #[test]
    fn v31_missing_credentials_with_flags_set_are_absent() {
        // Flags C2 but the packet ends after the client id.
        let bytes = wire("10 0f 0006 4d5149736470 03 c2 0078 0001 61");
        let Ok(Some(Packet::Connect(c))) = decode_all(&bytes) else { panic!() };
        assert_eq!((c.username, c.password), (None, None));
        // Not in 3.1.1.
        let bytes = wire("10 0d 0004 4d515454 04 c2 0078 0001 61");
        assert_eq!(decode_all(&bytes), Err(CodecError::Truncated { needed: 15, have: 13 }));
    }

    #[test]
    fn invalid_utf8_and_trailing_bytes() {
        let bytes = wire("10 0d 0004 4d515454 04 02 003c 0001 ff");
        assert_eq!(decode_all(&bytes), Err(CodecError::InvalidUtf8 { field: "client_id" }));
        let bytes = wire("10 0e 0004 4d515454 04 02 003c 0001 61 00");
        assert_eq!(decode_all(&bytes), Err(CodecError::TrailingPacketBytes { packet: "CONNECT", extra: 1 }));
    }

    #[test]
    fn encode_refuses_bad_fields() {
        let mut c = Connect::gagent(Protocol::V31, DID, "p", 120);
        c.password = Some(Bytes::from(vec![0; 70_000]));
        assert_eq!(
            Packet::Connect(c.clone()).encode(),
            Err(CodecError::FieldTooLong { field: "password", len: 70_000, max: 65_535 })
        );
        c.password = None;
        c.will = Some(Will { topic: "a/#".into(), payload: Bytes::new(), qos: 0, retain: false });
        assert!(matches!(Packet::Connect(c.clone()).encode(), Err(CodecError::InvalidTopic { .. })));
        c.will = Some(Will { topic: "a".into(), payload: Bytes::new(), qos: 3, retain: false });
        assert_eq!(Packet::Connect(c).encode(), Err(CodecError::InvalidQos { packet: "CONNECT", qos: 3 }));
    }
}
