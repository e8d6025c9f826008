//! Rollout safety on push rules: a canary and waves, an automatic halt on failures, rate and
//! in-flight caps, windows in the devices' local time, and what operators see and do about
//! them (`proto-docs/api.md`, "Rollout safety").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::dto::FailureKind;
use crate::rules::RuleStatus;

/// The first devices a rule pushes to, before any wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// Named devices (MACs separated by newlines, spaces or commas; at most 1,000), each a
    /// target of the rule.
    pub macs: Option<String>,
    /// Or this many devices chosen at random among the targets online when the rule starts
    /// (1–1,000).
    #[schema(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
}

/// One wave, as a cumulative share of the targets that are not in the canary: waves of 10 %,
/// 50 %, 100 % of 1,000 targets hold 100, then 400, then 500 devices. Either field; the last
/// wave always ends at 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveSpec {
    /// Cumulative percent of the targets, 1–100.
    #[schema(minimum = 1, maximum = 100)]
    pub percent: Option<u32>,
    /// Or a cumulative number of targets.
    #[schema(minimum = 1)]
    pub count: Option<u64>,
}

/// How targets are dealt into waves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaveOrder {
    /// A random order seeded by the rule's id: each wave a sample of the whole fleet.
    #[default]
    Random,
    /// Ascending MAC: the waves follow MAC ranges (production batches).
    Mac,
}

/// When the next wave starts by itself (besides `POST /rules/{id}/advance`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvancePolicy {
    /// Succeeded members of the current wave over its members, 0–1 (default 0.9): reaching it
    /// starts the next wave. `null`: not by success.
    #[serde(default = "AdvancePolicy::default_ratio")]
    pub success_ratio: Option<f64>,
    /// …once at least this many members finished (succeeded or failed), default 1.
    #[serde(default = "AdvancePolicy::default_min_finished")]
    pub min_finished: u32,
    /// Or after this many seconds of the wave, whatever its results. `null` (default): never.
    #[serde(default)]
    pub soak_s: Option<u32>,
}

impl AdvancePolicy {
    fn default_ratio() -> Option<f64> {
        Some(0.9)
    }
    fn default_min_finished() -> u32 {
        1
    }
}

impl Default for AdvancePolicy {
    fn default() -> Self {
        AdvancePolicy { success_ratio: Self::default_ratio(), min_finished: Self::default_min_finished(), soak_s: None }
    }
}

impl Eq for AdvancePolicy {}

/// When the rule halts by itself: failures **above** the ratio and/or the count, once at least
/// `min_finished` targets finished. A failure is a target whose current attempt failed (with a
/// kind in `kinds`, or any kind when empty); finished is succeeded + failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HaltPolicy {
    /// Failed over finished, 0–1.
    pub failure_ratio: Option<f64>,
    /// Failed targets.
    pub failure_count: Option<u64>,
    /// Finished targets needed before the ratio counts (default 1).
    #[serde(default = "HaltPolicy::default_min_finished")]
    pub min_finished: u32,
    /// Only these failure kinds count (empty: all).
    #[serde(default)]
    pub kinds: Vec<FailureKind>,
}

impl HaltPolicy {
    fn default_min_finished() -> u32 {
        1
    }
}

impl Eq for HaltPolicy {}

/// Devices notified per minute (any sliding 60 s), constant or ramping up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateCap {
    /// The rate at the start, 1–100,000 devices per minute.
    #[schema(minimum = 1, maximum = 100000)]
    pub per_minute: u32,
    /// Multiply the rate by `factor` each time `every_succeeded` more targets succeed, up to
    /// `max_per_minute`.
    pub ramp: Option<Ramp>,
}

impl Eq for RateCap {}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// More than 1, at most 10.
    pub factor: f64,
    #[schema(minimum = 1)]
    pub every_succeeded: u32,
    #[schema(minimum = 1, maximum = 100000)]
    pub max_per_minute: u32,
}

/// The state of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Not started yet.
    Waiting,
    /// Being pushed.
    Active,
    /// The next wave started after it.
    Passed,
    /// The rule ended (completed or cancelled) while this wave was being pushed.
    Ended,
    /// The rule ended (cancelled, or its period over) before this wave started.
    NeverStarted,
}

/// One wave of a started rule: wave 0 is the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaveView {
    pub wave: u32,
    pub state: WaveState,
    /// Targets in the wave (excluded ones not counted).
    pub members: i64,
    pub succeeded: i64,
    /// Current attempt failed.
    pub failed: i64,
    pub in_progress: i64,
    pub pending: i64,
    pub excluded: i64,
    pub started_at: Option<DateTime<Utc>>,
    pub passed_at: Option<DateTime<Utc>>,
}

/// Why a rule halted, with the numbers that crossed the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HaltView {
    pub at: DateTime<Utc>,
    /// The wave being pushed when it halted.
    pub wave: u32,
    pub failed: i64,
    pub finished: i64,
    /// The threshold crossed, in words (`failure_ratio 0.05`, `failure_count 10`).
    pub threshold: String,
    /// Failures by kind at the halt.
    pub by_kind: Vec<KindCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KindCount {
    pub kind: FailureKind,
    pub count: i64,
}

/// A window opening in one time zone, in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ZoneOpening {
    /// IANA name (`Asia/Shanghai`), `UTC` when nothing names one.
    pub time_zone: String,
    /// Targets in this zone.
    pub devices: i64,
    /// The opening in effect now, or the next one, in UTC.
    pub opens_at: Option<DateTime<Utc>>,
    pub closes_at: Option<DateTime<Utc>>,
    pub open_now: bool,
}

/// `POST /rules/{id}/exclude`: devices to take out of a paused or halted rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExcludeRequest {
    /// MACs separated by newlines, spaces or commas (at most 10,000).
    pub macs: Option<String>,
    /// Or an uploaded MAC list of the product.
    pub mac_list_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExcludeResult {
    /// Targets taken out now.
    pub excluded: i64,
    /// MACs that are no target of the rule, or already succeeded or excluded.
    pub skipped: i64,
}

/// `GET /rules`: every rule of the tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuleListQuery {
    pub product_key: Option<String>,
    pub firmware_id: Option<i64>,
    pub status: Option<RuleStatus>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreflightQuery {
    /// Count targets last seen more than this many days ago (default 7, 1–3650).
    #[param(minimum = 1, maximum = 3650)]
    pub offline_days: Option<u32>,
}

/// What a rule would do if it started now, per wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Preflight {
    pub targets: i64,
    /// Devices its targets name (region, MAC list, all) that already run the version.
    pub already_on_target: i64,
    /// Devices its targets name that run another series or hardware: never pushed.
    pub incompatible: i64,
    /// MACs of a MAC list that are no device of the product.
    pub unknown_macs: i64,
    pub waves: Vec<WavePreflight>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WavePreflight {
    /// 0 is the canary.
    pub wave: u32,
    pub targets: i64,
    pub online: i64,
    /// Of its targets, devices another live rule of the series holds.
    pub in_other_rules: i64,
    pub other_rule_ids: Vec<i64>,
    /// Of its targets, devices not seen for more than `offline_days`.
    pub offline_over_days: i64,
}

/// A region's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionZone {
    /// As devices carry it: `country/province/city` (trailing parts optional) or
    /// `province-city`.
    pub region: String,
    /// IANA name, e.g. `Asia/Shanghai`; `null` removes it.
    pub time_zone: Option<String>,
}

/// `PUT /region-zones`: sets (or with `time_zone: null` removes) these regions' zones.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRegionZones {
    pub zones: Vec<RegionZone>,
}

/// A region with a zone, or seen on devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionZoneView {
    pub region: String,
    /// The zone set for exactly this region.
    pub time_zone: Option<String>,
    /// The zone its devices' windows run in unless a device has its own: this region's, else
    /// the most specific enclosing region's; `null`: the rule's zone, else UTC.
    pub in_effect: Option<String>,
    /// Devices of the tenant in the region (for a region that leaves parts open, in all the
    /// regions it takes in).
    pub devices: i64,
}

/// `PUT /devices/{key}/time-zone`: a device's own time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTimeZone {
    /// IANA name; `null` removes the device's own zone (its region's applies again).
    pub time_zone: Option<String>,
}
