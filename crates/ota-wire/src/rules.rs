//! Push rules (the console's step 3–5): who gets a verified firmware, when, and how it went.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::dto::{AttemptView, FailureView, Region, UpgradeStage, UpgradeTimes};
use crate::rollout::{AdvancePolicy, CanarySpec, HaltPolicy, HaltView, RateCap, WaveSpec, WaveView, ZoneOpening};

/// Where a rule stands (the whole table, with the transitions: `proto-docs/api.md`, "Rule
/// statuses"). `completed` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleStatus {
    NotStarted,
    Pushing,
    /// Held by an operator; `resume` continues where it stopped.
    Paused,
    /// Held by its failure threshold; `halt` says why. `resume` continues.
    Halted,
    /// The console's stop: `start` again re-queues and takes new matching devices.
    Stopped,
    Completed,
    /// Ended by an operator; remaining targets are cancelled.
    Cancelled,
}

const RULE_STATUSES: [RuleStatus; 7] = [
    RuleStatus::NotStarted,
    RuleStatus::Pushing,
    RuleStatus::Paused,
    RuleStatus::Halted,
    RuleStatus::Stopped,
    RuleStatus::Completed,
    RuleStatus::Cancelled,
];

impl RuleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleStatus::NotStarted => "not_started",
            RuleStatus::Pushing => "pushing",
            RuleStatus::Paused => "paused",
            RuleStatus::Halted => "halted",
            RuleStatus::Stopped => "stopped",
            RuleStatus::Completed => "completed",
            RuleStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        RULE_STATUSES.into_iter().find(|st| st.as_str() == s)
    }

    /// Completed and cancelled rules never change again (but their name).
    pub fn is_final(self) -> bool {
        matches!(self, RuleStatus::Completed | RuleStatus::Cancelled)
    }

    /// A rollout under way: pushing, or held (paused, halted) with its in-flight devices
    /// finishing. Two such rules may not overlap.
    pub fn is_live(self) -> bool {
        matches!(self, RuleStatus::Pushing | RuleStatus::Paused | RuleStatus::Halted)
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
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub start: String,
    /// `YYYY-MM-DD` (UTC), the last day; on or after `start`.
    #[schema(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    pub end: String,
}

/// Whole UTC hours. `start_hour` 0–23, `end_hour` 0–24, different; `22`→`2` crosses midnight
/// and is one opening, from 22:00 to 02:00 the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DailyWindow {
    #[schema(minimum = 0, maximum = 23)]
    pub start_hour: u8,
    #[schema(minimum = 0, maximum = 24)]
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

/// How a rule rolls out: retries and stage timeouts, and the rollout safety settings (a
/// canary and waves, the automatic halt, caps, the devices' local time). Every field has a
/// default; the defaults push all targets at once, as the console does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub timeouts: StageTimeouts,
    /// The first devices, before any wave.
    #[serde(default)]
    pub canary: Option<CanarySpec>,
    /// Cumulative shares of the other targets (at most 20); none: one wave of all.
    #[serde(default)]
    pub waves: Vec<WaveSpec>,
    /// How the other targets are dealt into the waves: `random` (default; a sample seeded by
    /// the rule's id) or `mac` (ascending MAC order, e.g. production batches first).
    #[serde(default)]
    pub wave_order: crate::rollout::WaveOrder,
    /// When the next wave starts by itself.
    #[serde(default)]
    pub advance: AdvancePolicy,
    /// When the rule halts by itself; none: never.
    #[serde(default)]
    pub halt: Option<HaltPolicy>,
    /// Devices notified per minute; none: `push_rate` alone limits.
    #[serde(default)]
    pub rate: Option<RateCap>,
    /// Devices at most delivered a push and not finished (a timeout frees the slot).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Each push is sent after a random delay of up to this many seconds (0–300).
    #[serde(default)]
    #[schema(maximum = 300)]
    pub jitter_s: u32,
    /// The daily window is in each device's local time: its own zone, its region's, or this
    /// one (IANA name); none: UTC, as the console.
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A rule as created, or as a draft to preview.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// Free text for people, up to 64 characters, no control characters.
    #[schema(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: Option<String>,
    pub target: TargetKind,
    /// With `target: regions` (1–500): `country/province/city` (trailing parts optional) or
    /// the console's `province-city` form (`广东省-广州市`).
    #[serde(default)]
    #[schema(max_items = 500)]
    pub regions: Vec<String>,
    /// With `target: macs`, a short list inline: MACs separated by newlines, spaces or commas.
    pub macs: Option<String>,
    /// With `target: macs`, a list uploaded with `POST /products/{product_key}/mac-lists`.
    pub mac_list_id: Option<i64>,
    /// The versions (V1V3: firmware names) devices must run to be targets, 1–200 of 1–64
    /// characters; see `GET /firmware/{id}/old-versions`.
    #[schema(min_items = 1, max_items = 200)]
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
    #[schema(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub name: Option<String>,
    pub target: Option<TargetKind>,
    #[schema(max_items = 500)]
    pub regions: Option<Vec<String>>,
    pub macs: Option<String>,
    pub mac_list_id: Option<i64>,
    #[schema(min_items = 1, max_items = 200)]
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
    /// Targets an operator took out (`exclude`).
    pub excluded: i64,
    /// Targets left when the rule was cancelled.
    pub cancelled: i64,
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
    /// True while pushing inside the period and the daily window (in UTC, or in the rule's
    /// time zone; devices in other zones: `openings`).
    pub window_open: bool,
    /// The daily window per time zone of the targets, in UTC (started rules).
    pub openings: Vec<ZoneOpening>,
    /// The wave being pushed (0 is the canary), once started.
    pub current_wave: Option<u32>,
    pub waves: Vec<WaveView>,
    /// Why the rule halted (the last halt), if it ever did.
    pub halt: Option<HaltView>,
    pub paused_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
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
    #[schema(schema_with = must_be_true, required = true)]
    pub confirm_stable: bool,
    /// "I accept the terms of pushing": must be `true`.
    #[serde(default)]
    #[schema(schema_with = must_be_true, required = true)]
    pub accept_terms: bool,
}

/// A boolean whose only accepted value is `true` (a confirmation box).
fn must_be_true() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([true]))
        .build()
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
    /// Current attempt failed.
    Failed,
    /// Pushed and not finished: notified, checked, downloading, downloaded.
    InFlight,
    /// Taken out by an operator.
    Excluded,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuleDeviceQuery {
    pub filter: Option<RuleDeviceFilter>,
    /// Exact MAC or a prefix of at least 4 hex digits.
    #[param(pattern = "^[ :.-]*(?:(?:[0-9A-Fa-f][ :.-]*){4,12})?$")]
    pub mac: Option<String>,
    /// Only this wave (0 is the canary).
    pub wave: Option<u32>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
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
    /// The rule's wave the device is in (0 is the canary).
    pub wave: u32,
    /// The time zone its window runs in (`null`: UTC).
    pub time_zone: Option<String>,
    pub online: bool,
}
