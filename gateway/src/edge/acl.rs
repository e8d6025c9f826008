//! Which topics a device may use: its own and nothing else (pure, table-tested).
//!
//! GAgent subscribes `ser2cli_noti/<product_key>`, `ser2cli_res/<did>` and `app2dev/<did>/#`
//! (`device-protocol.md#subscriptions-one-at-a-time`) and publishes on `cli2ser_req` (the did is
//! not in the topic: the edge takes it from the session, and
//! `device-protocol.md#open-question-the-cli2ser_req-topic` adds `cli2ser` and `cli2ser_req/<did>`)
//! and `dev2app/<did>[/<app client id>]` (`device-protocol.md#topics`). Everything else is refused:
//! for a subscription, how depends on the MQTT version (see `edge`), and [`is_own`] tells a
//! filter that stays within the device's own topics (LUAT's `app2module/<did>/#`) from one that
//! reaches another device's; a PUBLISH is dropped and counted.

/// What a device's PUBLISH is, once its topic passed the ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// A legacy service frame for the gateway itself (0x0205, 0x0207, 0x020F).
    Service,
    /// A report or reply for apps, forwarded to the broker unchanged.
    Uplink,
}

/// Whether `filter` is one of the device's own subscriptions.
pub fn may_subscribe(filter: &str, did: &str, product_key: &str) -> bool {
    if let Some(pk) = filter.strip_prefix("ser2cli_noti/") {
        return pk == product_key;
    }
    if let Some(d) = filter.strip_prefix("ser2cli_res/") {
        return d == did;
    }
    if let Some(rest) = filter.strip_prefix("app2dev/") {
        let (d, tail) = rest.split_once('/').unwrap_or((rest, ""));
        // `app2dev/<did>/#`, `app2dev/<did>/+` or one app's topic; never another did.
        return d == did && (matches!(tail, "#" | "+") || !tail.is_empty() && !tail.contains(['+', '#', '/']));
    }
    false
}

/// Whether every topic `filter` can match belongs to this device: its first level is a plain
/// name and its second is the device's own did (or, under `ser2cli_noti`, its product key).
/// `product_key` may be empty while it is not known (a provisional session).
pub fn is_own(filter: &str, did: &str, product_key: &str) -> bool {
    let mut levels = filter.split('/');
    let (Some(first), Some(second)) = (levels.next(), levels.next()) else { return false };
    let plain = |l: &str| !l.is_empty() && !l.contains(['+', '#']);
    plain(first) && (second == did || first == "ser2cli_noti" && !product_key.is_empty() && second == product_key)
}

/// Where a device may publish; `None` means refused.
pub fn classify_publish(topic: &str, did: &str) -> Option<Inbound> {
    match topic {
        "cli2ser_req" | "cli2ser" => return Some(Inbound::Service),
        _ => {}
    }
    if let Some(d) = topic.strip_prefix("cli2ser_req/") {
        return (d == did).then_some(Inbound::Service);
    }
    if let Some(rest) = topic.strip_prefix("dev2app/") {
        let (d, tail) = rest.split_once('/').map_or((rest, None), |(d, t)| (d, Some(t)));
        let tail_ok = tail.is_none_or(|t| !t.is_empty() && !t.contains('/'));
        return (d == did && tail_ok).then_some(Inbound::Uplink);
    }
    None
}

/// Whether a subscription filter matches a topic (MQTT `+` and `#`).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "AbCdEfGhIjKlMnOpQrStUv";
    const OTHER: &str = "ZZCdEfGhIjKlMnOpQrStUv";
    const PK: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn subscriptions_are_confined_to_the_device() {
        let table: &[(&str, bool)] = &[
            ("ser2cli_noti/0123456789abcdef0123456789abcdef", true),
            ("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", true),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv/#", true),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv/+", true),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv/usr6U9jtyINX27hmwBGLV05", true),
            ("ser2cli_noti/ffffffffffffffffffffffffffffffff", false),
            ("ser2cli_res/ZZCdEfGhIjKlMnOpQrStUv", false),
            ("ser2cli_res/+", false),
            ("ser2cli_res/#", false),
            ("app2dev/ZZCdEfGhIjKlMnOpQrStUv/#", false),
            ("app2dev/+/#", false),
            ("app2dev/#", false),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv", false),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv/x/#", false),
            ("#", false),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv", false),
            ("app2module/AbCdEfGhIjKlMnOpQrStUv/#", false),
        ];
        for (filter, expected) in table {
            assert_eq!(may_subscribe(filter, DID, PK), *expected, "{filter}");
        }
    }

    #[test]
    fn own_filters_are_told_from_foreign_ones() {
        let table: &[(&str, bool)] = &[
            ("app2module/AbCdEfGhIjKlMnOpQrStUv/#", true),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv", true),
            ("app2dev/AbCdEfGhIjKlMnOpQrStUv/x/#", true),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv", true),
            ("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", true),
            ("ser2cli_noti/0123456789abcdef0123456789abcdef", true),
            ("ser2cli_noti/0123456789abcdef0123456789abcdef/#", true),
            ("app2module/ZZCdEfGhIjKlMnOpQrStUv/#", false),
            ("ser2cli_res/ZZCdEfGhIjKlMnOpQrStUv", false),
            ("ser2cli_noti/ffffffffffffffffffffffffffffffff", false),
            ("ser2cli_res/+", false),
            ("+/AbCdEfGhIjKlMnOpQrStUv", false),
            ("#", false),
            ("app2dev/#", false),
            ("AbCdEfGhIjKlMnOpQrStUv", false),
        ];
        for (filter, expected) in table {
            assert_eq!(is_own(filter, DID, PK), *expected, "{filter}");
            if *expected {
                assert!(may_subscribe(filter, DID, PK) || !may_subscribe(filter, OTHER, PK), "{filter}");
            }
        }
        // Before the product is known, product-level filters are nobody's own.
        assert!(!is_own("ser2cli_noti/0123456789abcdef0123456789abcdef", DID, ""));
    }

    #[test]
    fn publishes_are_confined_to_the_device() {
        let table: &[(&str, Option<Inbound>)] = &[
            ("cli2ser_req", Some(Inbound::Service)),
            ("cli2ser", Some(Inbound::Service)),
            ("cli2ser_req/AbCdEfGhIjKlMnOpQrStUv", Some(Inbound::Service)),
            ("cli2ser_req/ZZCdEfGhIjKlMnOpQrStUv", None),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv", Some(Inbound::Uplink)),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv/usr6U9jtyINX27hmwBGLV05", Some(Inbound::Uplink)),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv/", None),
            ("dev2app/AbCdEfGhIjKlMnOpQrStUv/a/b", None),
            ("dev2app/ZZCdEfGhIjKlMnOpQrStUv", None),
            ("ser2cli_res/AbCdEfGhIjKlMnOpQrStUv", None),
            ("app2dev/ZZCdEfGhIjKlMnOpQrStUv/x", None),
            ("anything", None),
        ];
        for (topic, expected) in table {
            assert_eq!(classify_publish(topic, DID), *expected, "{topic}");
        }
        assert_eq!(classify_publish("dev2app/AbCdEfGhIjKlMnOpQrStUv", OTHER), None);
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("app2dev/d/#", "app2dev/d/usr1"));
        assert!(filter_matches("app2dev/d/+", "app2dev/d/usr1"));
        assert!(!filter_matches("app2dev/d/+", "app2dev/d/usr1/x"));
        assert!(filter_matches("ser2cli_res/d", "ser2cli_res/d"));
        assert!(!filter_matches("ser2cli_res/d", "ser2cli_res/e"));
        assert!(!filter_matches("ser2cli_res/d", "ser2cli_res/d/x"));
    }
}
