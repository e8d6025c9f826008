//! Which image may go to which device: pure rules, table-tested (protocol reference §3.3.3,
//! §5 and gaps G7, G15).
//!
//! - **Series:** the same firmware type, the same hardware version (the device never checks
//!   it, so the server must: G15), and the same first four characters of the software version.
//! - **Order:** GAgent applies an offer only when `strcmp(current, target) < 0`, so versions
//!   compare byte-wise, exactly as the device does.
//! - **Exception:** GAgent 04020004's changelog allows Wi-Fi modules on 0400/0401 to move to
//!   0402, which would otherwise be another series; configurable, on by default.

use ota_wire::dto::FirmwareType;

/// The 8-character versions a device reports for one of its two targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions<'a> {
    pub hard: &'a str,
    pub soft: &'a str,
}

/// Upgrade-compatibility settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesRules {
    /// Treat Wi-Fi 0400xxxx / 0401xxxx → 0402xxxx as one series.
    pub allow_v4_to_v41_wifi: bool,
}

impl Default for SeriesRules {
    fn default() -> Self {
        SeriesRules { allow_v4_to_v41_wifi: true }
    }
}

fn series(soft: &str) -> &[u8] {
    &soft.as_bytes()[..soft.len().min(4)]
}

impl SeriesRules {
    /// True when an image of `image` versions belongs to the device's series.
    pub fn same_series(&self, fw_type: FirmwareType, device: Versions<'_>, image: Versions<'_>) -> bool {
        if device.hard != image.hard || device.soft.len() != 8 || image.soft.len() != 8 {
            return false;
        }
        let (from, to) = (series(device.soft), series(image.soft));
        from == to
            || (self.allow_v4_to_v41_wifi
                && fw_type == FirmwareType::Wifi
                && matches!(from, b"0400" | b"0401")
                && to == b"0402")
    }

    /// True when the device would accept and flash this image: same series and newer.
    pub fn offer_applies(&self, fw_type: FirmwareType, device: Versions<'_>, image: Versions<'_>) -> bool {
        self.same_series(fw_type, device, image) && is_newer(image.soft, device.soft)
    }
}

/// `target > current` compared byte by byte, as GAgent's `strcmp` does.
pub fn is_newer(target: &str, current: &str) -> bool {
    target.as_bytes() > current.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HW: &str = "00ESP826";

    fn v(soft: &'static str) -> Versions<'static> {
        Versions { hard: HW, soft }
    }

    #[test]
    fn offers_follow_series_order_and_the_exception() {
        let on = SeriesRules::default();
        let off = SeriesRules { allow_v4_to_v41_wifi: false };
        use FirmwareType::{Mcu, Wifi};
        // (rules, type, device sw, image sw, image hw, expected)
        let table: &[(SeriesRules, FirmwareType, &str, &str, &str, bool)] = &[
            (on, Wifi, "04020019", "04020021", HW, true),
            (on, Wifi, "04020021", "04020021", HW, false), // same version
            (on, Wifi, "04020021", "04020019", HW, false), // older
            (on, Wifi, "04020019", "04030001", HW, false), // other series
            (on, Wifi, "04020019", "04020021", "00ESP827", false), // other hardware (G15)
            (on, Wifi, "04000008", "04020021", HW, true),  // 0400 → 0402 exception
            (on, Wifi, "04010004", "04020006", HW, true),  // 0401 → 0402 exception
            (off, Wifi, "04000008", "04020021", HW, false),
            (on, Mcu, "04000008", "04020021", HW, false), // exception is Wi-Fi only
            (on, Wifi, "04020000", "04030000", HW, false), // no exception past 0402
            (on, Mcu, "0001000a", "0001000B", HW, false), // 'B' < 'a' byte-wise
            (on, Mcu, "0001000B", "0001000a", HW, true),
            (on, Wifi, "0402001", "04020021", HW, false), // malformed report
        ];
        for (i, &(rules, ty, device, image, image_hw, expected)) in table.iter().enumerate() {
            let got = rules.offer_applies(ty, v(device), Versions { hard: image_hw, soft: image });
            assert_eq!(got, expected, "row {i}: {ty:?} {device} -> {image_hw}/{image}");
        }
    }

    #[test]
    fn byte_wise_order() {
        assert!(is_newer("04020021", "04020019"));
        assert!(is_newer("0402001a", "04020019"));
        assert!(!is_newer("04020019", "04020019"));
        assert!(is_newer("a", "B"));
    }
}
