//! Topic and filter checks done before anything reaches a broker.
//!
//! Both brokers punish a bad packet by dropping the whole connection: rumqttd disconnects a
//! link that publishes to a wildcard or `$` topic, or subscribes to a `$` filter other than
//! `$share/…`; Mosquitto closes a session that subscribes to a malformed filter, and the
//! external mode would then re-subscribe to it after every reconnect, for ever. So the bus
//! refuses such topics and filters itself, and the connection stays up.

use super::{BusError, MAX_PACKET_SIZE};

/// MQTT strings carry a 16-bit length (MQTT 3.1.1 §1.5.3).
const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Fixed header (1 byte + up to 4 bytes of remaining length) and the topic's 2-byte length
/// prefix of a QoS 0 PUBLISH (no packet id).
const PUBLISH_OVERHEAD: usize = 1 + 4 + 2;

/// A topic name the bus may publish to: no wildcards (MQTT 3.1.1 §4.7.1), no `$` topics
/// (reserved for the broker, and rumqttd's catch-all `#` log does not match them,
/// MQTT 3.1.1 §4.7.2), no NUL (MQTT 3.1.1 §1.5.3).
pub(crate) fn validate_topic(topic: &str) -> Result<(), BusError> {
    let reason = if topic.is_empty() {
        Some("empty topic")
    } else if topic.len() > MAX_TOPIC_LEN {
        Some("longer than 65,535 bytes")
    } else if topic.contains(['+', '#']) {
        Some("wildcards are not allowed in a topic name")
    } else if topic.starts_with('$') {
        Some("`$` topics are reserved for the broker")
    } else if topic.contains('\0') {
        Some("contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(BusError::InvalidTopic { topic: topic.to_owned(), reason }),
        None => Ok(()),
    }
}

/// The encoded size of a QoS 0 PUBLISH must fit the packet limit of both sides.
pub(crate) fn check_publish_size(topic: &str, payload_len: usize) -> Result<(), BusError> {
    let size = PUBLISH_OVERHEAD + topic.len() + payload_len;
    if size > MAX_PACKET_SIZE {
        return Err(BusError::PayloadTooLarge { topic: topic.to_owned(), size: payload_len, max: max_payload(topic) });
    }
    Ok(())
}

fn max_payload(topic: &str) -> usize {
    MAX_PACKET_SIZE.saturating_sub(PUBLISH_OVERHEAD + topic.len())
}

/// A subscription filter (MQTT 3.1.1 §4.7.1): `#` only as the whole last level, `+` only as a whole
/// level; `$` filters only in the shared form `$share/<group>/<filter>`.
pub(crate) fn validate_filter(filter: &str) -> Result<(), BusError> {
    let invalid = |reason: &'static str| Err(BusError::InvalidFilter { filter: filter.to_owned(), reason });
    if filter.len() > MAX_TOPIC_LEN {
        return invalid("longer than 65,535 bytes");
    }
    if filter.contains('\0') {
        return invalid("contains NUL");
    }
    let plain = if filter.starts_with('$') {
        let Some(rest) = filter.strip_prefix("$share/") else {
            return invalid("`$` filters other than `$share/<group>/<filter>` are reserved for the broker");
        };
        match rest.split_once('/') {
            Some((group, plain)) if !group.is_empty() && !group.contains(['+', '#']) => plain,
            _ => return invalid("a shared subscription needs a group name without wildcards and a filter"),
        }
    } else {
        filter
    };
    if plain.is_empty() {
        return invalid("empty filter");
    }
    let levels: Vec<&str> = plain.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return invalid("`#` must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return invalid("`+` must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_the_gateway_uses_are_valid() {
        for topic in
            ["ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", "app2dev/did/usr6U9jtyINX27hmwBGLV05", "dev2app/did", "cli2ser_req"]
        {
            assert!(validate_topic(topic).is_ok(), "{topic}");
        }
    }

    #[test]
    fn wildcard_dollar_empty_and_nul_topics_are_refused() {
        for topic in ["", "ser2cli_res/+", "app2dev/#", "a/b#", "$SYS/x", "a\0b"] {
            assert!(matches!(validate_topic(topic), Err(BusError::InvalidTopic { .. })), "{topic:?}");
        }
    }

    #[test]
    fn filters_follow_the_wildcard_rules() {
        for filter in ["ser2cli_res/+", "app2dev/#", "#", "+", "+/x/#", "dev2app/d", "$share/gw/dev2app/#"] {
            assert!(validate_filter(filter).is_ok(), "{filter}");
        }
        for filter in ["", "a/#/b", "a/b#", "a+/b", "$SYS/#", "$share/", "$share/g", "$share//a", "$share/g+/a", "a\0"]
        {
            assert!(matches!(validate_filter(filter), Err(BusError::InvalidFilter { .. })), "{filter:?}");
        }
    }

    #[test]
    fn publish_size_limit_counts_the_topic_and_headers() {
        let topic = "ser2cli_res/did";
        let max = max_payload(topic);
        assert!(check_publish_size(topic, max).is_ok());
        match check_publish_size(topic, max + 1) {
            Err(BusError::PayloadTooLarge { size, max: reported, .. }) => {
                assert_eq!(size, max + 1);
                assert_eq!(reported, max);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        assert!(check_publish_size(topic, 1024 * 1024).is_ok(), "a 1 MiB firmware blob fits");
    }
}
