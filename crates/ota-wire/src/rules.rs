//! Push rules (the console's step 3–5): who gets a verified firmware, when, and how it went.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::dto::{AttemptView, FailureView, Region, UpgradeStage, UpgradeTimes};

/// Where a rule stands. `stopped` rules can be started again; `completed` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    NotStarted,
    Pushing,
    Stopped,
    Completed,
}

impl RuleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleStatus::NotStarted => "not_started",
            RuleStatus::Pushing => "pushing",
            RuleStatus::Stopped => "stopped",
            RuleStatus::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "not_started" => Some(RuleStatus::NotStarted),
            "pushing" => Some(RuleStatus::Pushing),
            "stopped" => Some(RuleStatus::Stopped),
            "completed" => Some(RuleStatus::Completed),
            _ => None,
        }
    }
}

/// Which devices of the product a rule is for (before `old_versions` narrows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// Every device of the product.
    All,
    /// Devices in any of `regions`.
    Regions,
    /// Devices whose MAC is in the rule's MAC list.
    Macs,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::All => "all",
            TargetKind::Regions => "regions",
            TargetKind::Macs => "macs",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(TargetKind::All),
            "regions" => Some(TargetKind::Regions),
            "macs" => Some(TargetKind::Macs),
            _ => None,
        }
    }
}

/// Inclusive UTC dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Period {
    /// `YYYY-MM-DD` (UTC), the first day pushes may go out.
    pub start: String,
    /// `YYYY-MM-DD` (UTC), the last day; on or after `start`.
    pub end: String,
}

/// Whole UTC hours. `start_hour` 0–23, `end_hour` 0–24, different; `22`→`2` crosses midnight
/// and is one opening, from 22:00 to 02:00 the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DailyWindow {
    pub start_hour: u8,
    pub end_hour: u8,
}

/// How a rule retries targets whose attempt failed. Attempts count per window opening: a new
/// opening starts again at attempt 1 (the console re-pushes every day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts per window opening, the first push included: 1–10 (default 3).
    #[serde(default = "RetryPolicy::default_attempts")]
    #[schema(minimum = 1, maximum = 10)]
    pub attempts: u32,
    /// Seconds from a failure to the next push, 0–86400 (default 120).
    #[serde(default = "RetryPolicy::default_backoff")]
    #[schema(maximum = 86400)]
    pub backoff_s: u32,
    /// `true` (default): retry inside the same window opening. `false`: the console's strict
    /// behaviour, a failed target waits for the next opening.
    #[serde(default = "RetryPolicy::default_within")]
    pub within_opening: bool,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        3
    }
    fn default_backoff() -> u32 {
        120
    }
    fn default_within() -> bool {
        true
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: Self::default_attempts(),
            backoff_s: Self::default_backoff(),
            within_opening: Self::default_within(),
        }
    }
}

/// How long a target may stay in each stage before its attempt fails with a timeout, in
/// seconds, 10–86400 each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StageTimeouts {
    /// Push delivered → the device checks (V4.1), fetches the image (V4) or asks for it
    /// (V1V3). Default 120.
    #[serde(default = "StageTimeouts::default_notified")]
    #[schema(minimum = 10, maximum = 86400)]
    pub notified_s: u32,
    /// Image offered → the download starts. Default 60.
    #[serde(default = "StageTimeouts::default_checked")]
    #[schema(minimum = 10, maximum = 86400)]
    pub checked_s: u32,
    /// Download started → the whole image sent. Default 600.
    #[serde(default = "StageTimeouts::default_downloading")]
    #[schema(minimum = 10, maximum = 86400)]
    pub downloading_s: u32,
    /// Wi-Fi image downloaded → the device reports the target version (it flashes and
    /// reboots first). Default 300.
    #[serde(default = "StageTimeouts::default_downloaded_wifi")]
    #[schema(minimum = 10, maximum = 86400)]
    pub downloaded_wifi_s: u32,
    /// MCU image downloaded → the device reports the target version after the serial
    /// transfer (9600 baud) and the MCU's reboot. Default 1800.
    #[serde(default = "StageTimeouts::default_downloaded_mcu")]
    #[schema(minimum = 10, maximum = 86400)]
    pub downloaded_mcu_s: u32,
}

impl StageTimeouts {
    fn default_notified() -> u32 {
        120
    }
    fn default_checked() -> u32 {
        60
    }
    fn default_downloading() -> u32 {
        600
    }
    fn default_downloaded_wifi() -> u32 {
        300
    }
    fn default_downloaded_mcu() -> u32 {
        1800
    }
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts {
            notified_s: Self::default_notified(),
            checked_s: Self::default_checked(),
            downloading_s: Self::default_downloading(),
            downloaded_wifi_s: Self::default_downloaded_wifi(),
            downloaded_mcu_s: Self::default_downloaded_mcu(),
        }
    }
}

/// A rule's retry policy and stage timeouts; every field has a default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub timeouts: StageTimeouts,
}

/// A rule as created, or as a draft to preview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// Free text for people, up to 64 characters.
    pub name: Option<String>,
    pub target: TargetKind,
    /// With `target: regions`: `country/province/city` (trailing parts optional) or the
    /// console's `province-city` form (`广东省-广州市`).
    #[serde(default)]
    pub regions: Vec<String>,
    /// With `target: macs`, a short list inline: MACs separated by newlines, spaces or commas.
    pub macs: Option<String>,
    /// With `target: macs`, a list uploaded with `POST /products/{product_key}/mac-lists`.
    pub mac_list_id: Option<i64>,
    /// The versions (V1V3: firmware names) devices must run to be targets; see
    /// `GET /firmware/{id}/old-versions`.
    pub old_versions: Vec<String>,
    pub period: Period,
    pub daily_window: DailyWindow,
    /// Retries and stage timeouts; the defaults when left out.
    #[serde(default)]
    pub policy: Option<RolloutPolicy>,
}

/// `PATCH /rules/{request_id}`: fields to change. Before a rule starts everything may change;
/// once started only `name` and `period.end` (extending or shortening, never before today).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRuleRequest {
    pub name: Option<String>,
    pub target: Option<TargetKind>,
    pub regions: Option<Vec<String>>,
    pub macs: Option<String>,
    pub mac_list_id: Option<i64>,
    pub old_versions: Option<Vec<String>>,
    pub period: Option<Period>,
    pub daily_window: Option<DailyWindow>,
    /// Replaces the whole policy (fields left out take their defaults); any time before the
    /// rule completes, taking effect from the next failure or stage.
    pub policy: Option<RolloutPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuleCounts {
    /// Devices the rule pushes to.
    pub targets: i64,
    pub succeeded: i64,
    /// Targets not (yet) succeeded: `targets - succeeded`.
    pub not_succeeded: i64,
    /// Targets pushed at least once (a push an edge delivered, or a check the device made).
    pub notified: i64,
    /// Targets not reached yet in the current attempt (stage `pending`).
    pub pending: i64,
    /// Targets on their way: `notified`, `checked`, `downloading` or `downloaded` now.
    pub in_progress: i64,
    /// Targets whose current attempt failed (timeout, download cut, old version reported),
    /// waiting for a retry or the next window opening.
    pub failed: i64,
    /// Targets notified or checked that went silent until the period ended.
    pub expired: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// Unique across the installation; the console's "request id".
    pub request_id: i64,
    pub firmware_id: i64,
    pub firmware_name: String,
    pub product_key: String,
    pub name: Option<String>,
    pub target: TargetKind,
    pub regions: Vec<Region>,
    pub mac_list_id: Option<i64>,
    /// Entries in the MAC list (`target: macs`).
    pub mac_count: Option<i64>,
    pub old_versions: Vec<String>,
    pub to_version: Option<String>,
    pub period: Period,
    pub daily_window: DailyWindow,
    pub status: RuleStatus,
    pub policy: RolloutPolicy,
    /// True while pushing inside the period and the daily window.
    pub window_open: bool,
    pub counts: RuleCounts,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a rule would push to, now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RulePreview {
    /// Devices of the firmware's series and type, in the targets, on one of `old_versions`.
    pub targets: i64,
    /// Of `targets`, online now.
    pub online: i64,
    /// Devices in the targets and the series that already run the target version.
    pub already_on_target: i64,
    /// Of `targets`, devices another pushing rule of the same series already pushes to.
    pub in_other_rules: i64,
    /// Those other rules' request ids.
    pub other_rule_ids: Vec<i64>,
    /// `target: macs`: MACs of the list that are no device of the product.
    pub unknown_macs: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRuleRequest {
    /// "I confirm the firmware is stable": must be `true`.
    #[serde(default)]
    pub confirm_stable: bool,
    /// "I accept the terms of pushing": must be `true`.
    #[serde(default)]
    pub accept_terms: bool,
}

/// The summary the console shows when a rule starts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleStarted {
    pub request_id: i64,
    pub status: RuleStatus,
    pub target_devices: i64,
    /// The versions the targets run now.
    pub from_versions: Vec<String>,
    pub to_version: Option<String>,
    pub period: Period,
    pub daily_window: DailyWindow,
}

/// One rejected line of a MAC list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvalidMac {
    /// 1-based line of the upload.
    pub line: u64,
    pub value: String,
}

/// An uploaded MAC list: normalised, duplicates removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MacListView {
    pub id: i64,
    pub product_key: String,
    /// Distinct valid MACs kept.
    pub count: i64,
    /// Entries dropped as repeats of an earlier one.
    pub duplicates: i64,
    /// Entries that are no MAC, with their lines (the first 1,000; `invalid_count` has all).
    pub invalid: Vec<InvalidMac>,
    pub invalid_count: i64,
    pub created_at: DateTime<Utc>,
}

/// A version the fleet reports that a rule of this firmware may target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OldVersion {
    /// The device-reported software version (V1V3: the earlier firmware's name).
    pub version: String,
    pub devices: i64,
}

/// Which targets a rule's device list shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleDeviceFilter {
    #[default]
    All,
    Succeeded,
    NotSucceeded,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuleDeviceQuery {
    pub filter: Option<RuleDeviceFilter>,
    /// Exact MAC or a prefix of at least 4 hex digits.
    pub mac: Option<String>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    pub per_page: Option<u32>,
}

/// One target of a rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuleDeviceView {
    pub did: Option<String>,
    pub mac: Option<String>,
    pub stage: UpgradeStage,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub times: UpgradeTimes,
    /// The last error (download cut, timeout, push not delivered, expired), if any.
    pub last_error: Option<String>,
    /// Why the current attempt failed, typed (`stage` is `failed`).
    pub failure: Option<FailureView>,
    /// The current attempt in the current window opening (0: never pushed or checked).
    pub attempt: i64,
    /// Finished attempts, oldest first (at most the last 20).
    pub attempts: Vec<AttemptView>,
    pub online: bool,
}
