//! A push on its way to a device, as it travels on the bus: topic `ota/push/<did>`, payload
//! an envelope around the device frame that names the upgrade record it belongs to, so the
//! edge that delivers it can say so (a push counts once it is on the device's socket; see
//! `ota_domain::lifecycle`).
//!
//! ```text
//! 4F 54 50 31            "OTP1"
//! <8 bytes, BE>          upgrade record id
//! <8 bytes, BE>          window opening (Unix ms) of a rule's push; i64::MIN for none
//! <8 bytes, BE>          deadline (Unix ms): the push's delivery timeout ends then
//! <rest>                 the legacy frame for ser2cli_res/<did> (0x0211, 0x020E or 0x0206)
//! ```
//!
//! **Past its deadline a push is dropped, not delivered.** The scheduler counts a push not
//! delivered by then as never sent and may send it again; a stale copy that a broker queued
//! through an outage and hands over late must not reach the device as a second push. (So the
//! nodes' clocks must agree to well within the delivery timeout, as NTP keeps them.)
//!
//! Backends may still publish plain frames on `ser2cli_res/<did>`; those are delivered the
//! same way, with nothing to acknowledge.

use bytes::{BufMut, Bytes, BytesMut};

/// Topic prefix of pushes on the bus; every gateway subscribes `ota/push/+`.
pub const PUSH_TOPIC_PREFIX: &str = "ota/push/";
const MAGIC: &[u8; 4] = b"OTP1";
const HEADER: usize = 4 + 8 + 8 + 8;
const NO_OPENING: i64 = i64::MIN;

/// One push and the record it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEnvelope {
    pub upgrade_id: i64,
    pub opening: Option<i64>,
    pub deadline_ms: i64,
    pub frame: Bytes,
}

impl PushEnvelope {
    pub fn topic(did: &str) -> String {
        format!("{PUSH_TOPIC_PREFIX}{did}")
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + self.frame.len());
        out.put_slice(MAGIC);
        out.put_i64(self.upgrade_id);
        out.put_i64(self.opening.unwrap_or(NO_OPENING));
        out.put_i64(self.deadline_ms);
        out.put_slice(&self.frame);
        out.freeze()
    }

    /// `None` for anything that is not an envelope.
    pub fn decode(payload: &Bytes) -> Option<PushEnvelope> {
        if payload.len() < HEADER || &payload[..4] != MAGIC {
            return None;
        }
        let int = |at: usize| payload.get(at..at + 8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes);
        let upgrade_id = int(4)?;
        let opening = int(12)?;
        let deadline_ms = int(20)?;
        Some(PushEnvelope {
            upgrade_id,
            opening: (opening != NO_OPENING).then_some(opening),
            deadline_ms,
            frame: payload.slice(HEADER..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_anything_else_is_refused() {
        let e = PushEnvelope {
            upgrade_id: 7,
            opening: Some(1_767_225_600_000),
            deadline_ms: 1_767_225_610_000,
            frame: Bytes::from_static(b"\0\0\0\x03\x02\x11\x01"),
        };
        let wire = e.encode();
        assert_eq!(&wire[..4], b"OTP1");
        assert_eq!(PushEnvelope::decode(&wire), Some(e.clone()));
        let none = PushEnvelope { opening: None, ..e };
        assert_eq!(PushEnvelope::decode(&none.encode()), Some(none));
        assert_eq!(PushEnvelope::decode(&Bytes::from_static(b"\0\0\0\x03\x02\x11\x01")), None);
        assert_eq!(PushEnvelope::decode(&Bytes::from_static(b"OTP1\0\0")), None);
    }
}
