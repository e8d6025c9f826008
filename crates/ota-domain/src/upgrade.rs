//! Which image may go to which device: pure rules, table-tested
//! (`device-protocol.md#v41-target-choice`, `device-protocol.md#series-and-versions`,
//! `device-protocol.md#open-question-version-comparison-across-series`,
//! `device-protocol.md#open-question-hardware-version-in-v41`).
//!
//! - **Series:** the same firmware type, the same hardware version (the device never checks it, so
//!   the server must: `device-protocol.md#open-question-hardware-version-in-v41`), and the same
//!   first four characters of the software version.
//! - **Order:** GAgent applies an offer only when `strcmp(current, target) < 0`, so versions
//!   compare byte-wise, exactly as the device does.
//! - **Exception:** GAgent 04020004's changelog allows Wi-Fi modules on 0400/0401 to move to
//!   0402, which would otherwise be another series; configurable, on by default.

use ota_wire::dto::{FirmwareType, PushMethod};

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

/// What a device says it runs, for one target, in one check.
///
/// - V4.1: `hard` / `soft` from `update_and_check`;
/// - V4: `hard` / `soft` / `fid` (`current_fid`) from `target_fid`;
/// - V1V3: `fid` is the 8-byte firmware id of 0x0205.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report<'a> {
    pub method: PushMethod,
    pub fw_type: FirmwareType,
    pub hard: Option<&'a str>,
    pub soft: Option<&'a str>,
    pub fid: Option<i64>,
}

/// One firmware a device could be offered.
///
/// For V4 the firmware's `hard` / `soft` are the versions of the devices it is for (its fid
/// series, as the console asks for them at upload) and `fid` is what it moves them to; for
/// V4.1 they are the image's own versions; V1V3 compares firmware ids only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub key: i64,
    pub method: PushMethod,
    pub fw_type: FirmwareType,
    pub hard: Option<&'a str>,
    pub soft: Option<&'a str>,
    pub fid: Option<i64>,
}

/// Why a device cannot take a firmware; the text is shown to operators.
pub type Refusal = &'static str;

impl SeriesRules {
    /// Whether the device, as reported, would take this firmware (and the server may offer it).
    pub fn check_offer(&self, report: &Report<'_>, c: &Candidate<'_>) -> Result<(), Refusal> {
        if report.method != c.method {
            return Err("the device uses another push method than the firmware");
        }
        // V1V3's 0x0205 names no target: one firmware id covers the device.
        if report.method != PushMethod::V1V3 && report.fw_type != c.fw_type {
            return Err("the firmware is for the other target (wifi / mcu)");
        }
        match c.method {
            PushMethod::V41 => {
                let (Some(hard), Some(soft)) = (report.hard, report.soft) else {
                    return Err("the device has not reported versions for this target");
                };
                let (Some(img_hard), Some(img_soft)) = (c.hard, c.soft) else {
                    return Err("the firmware has no versions");
                };
                let (device, image) = (Versions { hard, soft }, Versions { hard: img_hard, soft: img_soft });
                if hard != img_hard {
                    return Err("the device has another hardware version");
                }
                if !self.same_series(c.fw_type, device, image) {
                    return Err("the device runs another firmware series");
                }
                if !is_newer(img_soft, soft) {
                    return Err("the device already runs this version or a newer one");
                }
                Ok(())
            }
            PushMethod::V4 => {
                if report.hard.is_none() || report.soft.is_none() {
                    return Err("the device has not reported versions for this target");
                }
                if report.hard != c.hard || report.soft != c.soft {
                    return Err("the device runs another firmware series");
                }
                if report.fid == c.fid {
                    return Err("the device already runs this firmware");
                }
                Ok(())
            }
            PushMethod::V1V3 => match report.fid {
                None => Err("the device has not reported its firmware id"),
                Some(id) if Some(id) == c.fid => Err("the device already runs this firmware"),
                Some(_) => Ok(()),
            },
        }
    }

    /// Whether a report speaks about the target a firmware is for: the same push method and
    /// (V1V3 names no target) the same firmware type.
    pub fn concerns(&self, report: &Report<'_>, c: &Candidate<'_>) -> bool {
        report.method == c.method && (report.method == PushMethod::V1V3 || report.fw_type == c.fw_type)
    }

    /// Whether the report shows the device now runs the candidate (or, for V4.1, a newer
    /// version of its series).
    pub fn reached(&self, report: &Report<'_>, c: &Candidate<'_>) -> bool {
        if !self.concerns(report, c) {
            return false;
        }
        match c.method {
            PushMethod::V41 => match (report.hard, report.soft, c.hard, c.soft) {
                (Some(hard), Some(soft), Some(img_hard), Some(img_soft)) => {
                    hard == img_hard
                        && soft.get(..4) == img_soft.get(..4)
                        && (soft == img_soft || is_newer(soft, img_soft))
                }
                _ => false,
            },
            PushMethod::V4 => report.fid.is_some() && report.fid == c.fid,
            PushMethod::V1V3 => report.fid.is_some() && report.fid == c.fid,
        }
    }

    /// Of the candidates the device would take, the highest version (V4.1) or fid (V4, V1V3).
    pub fn choose<'c, 'a>(&self, report: &Report<'_>, candidates: &'c [Candidate<'a>]) -> Option<&'c Candidate<'a>> {
        candidates.iter().filter(|c| self.check_offer(report, c).is_ok()).max_by(|a, b| match a.method {
            PushMethod::V41 => a.soft.unwrap_or_default().as_bytes().cmp(b.soft.unwrap_or_default().as_bytes()),
            PushMethod::V4 | PushMethod::V1V3 => a.fid.cmp(&b.fid),
        })
    }
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
            (on, Wifi, "04020019", "04020021", "00ESP827", false), // other hardware
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

    fn report(
        method: PushMethod,
        fw_type: FirmwareType,
        soft: Option<&'static str>,
        fid: Option<i64>,
    ) -> Report<'static> {
        Report { method, fw_type, hard: Some(HW), soft, fid }
    }

    fn cand(key: i64, method: PushMethod, soft: &'static str, fid: Option<i64>) -> Candidate<'static> {
        Candidate { key, method, fw_type: FirmwareType::Wifi, hard: Some(HW), soft: Some(soft), fid }
    }

    #[test]
    fn offers_per_push_method() {
        use FirmwareType::{Mcu, Wifi};
        use PushMethod::{V1V3, V4, V41};
        let rules = SeriesRules::default();
        // (report, candidate, expected refusal or None)
        let table: &[(Report<'static>, Candidate<'static>, Option<&str>)] = &[
            (report(V41, Wifi, Some("04020019"), None), cand(1, V41, "04020021", None), None),
            (report(V41, Wifi, Some("04020021"), None), cand(1, V41, "04020021", None), Some("already")),
            (report(V41, Wifi, Some("04030001"), None), cand(1, V41, "04040001", None), Some("series")),
            (report(V41, Wifi, None, None), cand(1, V41, "04020021", None), Some("not reported")),
            (report(V41, Mcu, Some("04020019"), None), cand(1, V41, "04020021", None), Some("other target")),
            (report(V4, Wifi, Some("04020021"), None), cand(1, V41, "04020021", None), Some("push method")),
            // V4: the firmware names the devices' current versions and a fid.
            (report(V4, Wifi, Some("04000002"), Some(0)), cand(1, V4, "04000002", Some(1)), None),
            (report(V4, Wifi, Some("04000002"), Some(1)), cand(1, V4, "04000002", Some(1)), Some("already")),
            (report(V4, Wifi, Some("04000003"), Some(0)), cand(1, V4, "04000002", Some(1)), Some("series")),
            // V1V3: any other firmware id.
            (report(V1V3, Wifi, None, Some(1)), cand(1, V1V3, "v1.1", Some(2)), None),
            (report(V1V3, Wifi, None, Some(2)), cand(1, V1V3, "v1.1", Some(2)), Some("already")),
            (report(V1V3, Wifi, None, None), cand(1, V1V3, "v1.1", Some(2)), Some("firmware id")),
        ];
        for (i, (r, c, expected)) in table.iter().enumerate() {
            match (rules.check_offer(r, c), expected) {
                (Ok(()), None) => {}
                (Err(why), Some(part)) => assert!(why.contains(part), "row {i}: {why:?} lacks {part:?}"),
                (got, _) => panic!("row {i}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn reaching_the_target() {
        use FirmwareType::Wifi;
        use PushMethod::{V1V3, V4, V41};
        let rules = SeriesRules::default();
        let target = cand(1, V41, "04020021", None);
        assert!(rules.reached(&report(V41, Wifi, Some("04020021"), None), &target));
        assert!(rules.reached(&report(V41, Wifi, Some("04020022"), None), &target));
        assert!(!rules.reached(&report(V41, Wifi, Some("04020019"), None), &target));
        assert!(!rules.reached(&report(V41, Wifi, Some("04030000"), None), &target), "another series is not success");
        assert!(rules.reached(&report(V4, Wifi, Some("04000002"), Some(3)), &cand(1, V4, "04000002", Some(3))));
        assert!(!rules.reached(&report(V4, Wifi, Some("04000002"), Some(2)), &cand(1, V4, "04000002", Some(3))));
        assert!(rules.reached(&report(V1V3, Wifi, None, Some(7)), &cand(1, V1V3, "x", Some(7))));
    }

    #[test]
    fn the_highest_applicable_version_wins() {
        use FirmwareType::Wifi;
        use PushMethod::{V4, V41};
        let rules = SeriesRules::default();
        let r = report(V41, Wifi, Some("04020019"), None);
        let cands = [cand(1, V41, "04020021", None), cand(2, V41, "04020030", None), cand(3, V41, "04030000", None)];
        assert_eq!(rules.choose(&r, &cands).map(|c| c.key), Some(2));
        let r4 = report(V4, Wifi, Some("04000002"), Some(0));
        let cands = [cand(1, V4, "04000002", Some(1)), cand(2, V4, "04000002", Some(2))];
        assert_eq!(rules.choose(&r4, &cands).map(|c| c.key), Some(2));
        assert_eq!(rules.choose(&r4, &[]), None);
    }
}
