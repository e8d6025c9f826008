//! Push rules: which devices of a product get a verified firmware, inside which UTC period
//! and daily window, and how each of them fares.
//!
//! - A rule targets `all` devices of the product, `regions`, or a MAC list, intersected with
//!   `old_versions` and always limited to devices of the firmware's push method, type and
//!   series ([`targets`]).
//! - It starts only for verified firmware and after the operator confirms; its targets are
//!   taken then, one upgrade record (`kind = 'rule'`) per device, and devices that come to
//!   match while it pushes join it on their next check ([`schedule`]).
//! - The scheduler notifies online targets at most once per window opening; device checks are
//!   answered with the rule's firmware while the period and window hold; success is the
//!   record's single move to `succeeded` ([`crate::upgrades`]).
//! - Edits: before the start everything may change; once started only `name` and
//!   `period.end` (never to a day already past).

pub mod control;
pub mod maclists;
pub mod results;
pub mod rollout;
pub mod schedule;
pub mod status;
pub mod targets;
pub mod zones;

use chrono::NaiveDate;
use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{PushStatus, Region};
use ota_wire::rules::{
    DailyWindow, Period as PeriodDto, RolloutPolicy, RuleBody, RuleCounts, RuleStatus, RuleView, TargetKind,
    UpdateRuleRequest,
};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::devices::import::parse_region;
use crate::error::{DomainError, Result};
use crate::firmware::{FirmwareRecord, find_firmware};
use crate::schema::{mac_lists, rules, upgrades};
use crate::stored::Stored;
use crate::upgrade::SeriesRules;
use crate::window::{Period, Window, pushable_opening};

/// At most this many regions in one rule.
const MAX_REGIONS: usize = 500;
/// At most this many old versions in one rule.
const MAX_OLD_VERSIONS: usize = 200;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rules)]
pub struct RuleRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub firmware_id: i64,
    pub name: Option<String>,
    pub target: Stored<TargetKind>,
    pub regions: String,
    pub mac_list_id: Option<i64>,
    pub old_versions: String,
    pub period_start: String,
    pub period_end: String,
    pub window_start: i32,
    pub window_end: i32,
    pub status: Stored<RuleStatus>,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub policy: String,
    /// The wave being pushed, once started (0 the canary).
    pub current_wave: Option<i64>,
    /// The last automatic halt, JSON ([`rollout::HaltRecord`]).
    pub halt: Option<String>,
    pub paused_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

impl RuleRecord {
    pub fn status(&self) -> RuleStatus {
        self.status.get()
    }

    pub fn kind(&self) -> TargetKind {
        self.target.get()
    }

    /// The retry policy and stage timeouts; an unreadable one is an error, never a default.
    pub fn policy(&self) -> Result<RolloutPolicy> {
        serde_json::from_str(&self.policy)
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("rule {} has an unreadable policy: {e}", self.id)))
    }

    /// Stored validated; an unreadable row pushes nowhere rather than everywhere.
    pub fn period(&self) -> Period {
        Period::parse(&self.period_start, &self.period_end)
            .unwrap_or(Period { start: NaiveDate::MIN, end: NaiveDate::MIN })
    }

    pub fn window(&self) -> Window {
        let h = |v: i32| u8::try_from(v).unwrap_or(0);
        Window::new(h(self.window_start), h(self.window_end)).unwrap_or(Window { start_hour: 0, end_hour: 1 })
    }

    pub fn regions(&self) -> Vec<Region> {
        serde_json::from_str(&self.regions).unwrap_or_default()
    }

    pub fn old_versions(&self) -> Vec<String> {
        serde_json::from_str(&self.old_versions).unwrap_or_default()
    }

    /// The opening the rule's window is in at `now` for devices of time zone `zone` (IANA
    /// name; `None`: UTC), inside the period: whatever the rule's status.
    pub fn window_opening(&self, zone: Option<&str>, now_ms: i64) -> Option<crate::window::Opening> {
        let tz = zone.and_then(crate::window::parse_zone);
        pushable_opening(&self.period(), &self.window(), tz, from_ms(now_ms))
    }

    /// The opening this rule may push in at `now` for devices of `zone`: pushing, inside the
    /// period and window.
    pub fn opening(&self, zone: Option<&str>, now_ms: i64) -> Option<crate::window::Opening> {
        if self.status() != RuleStatus::Pushing {
            return None;
        }
        self.window_opening(zone, now_ms)
    }

    fn view(
        &self,
        fw: &FirmwareRecord,
        product_key: &str,
        mac_count: Option<i64>,
        counts: RuleCounts,
        extra: ViewParts,
        now: i64,
    ) -> Result<RuleView> {
        let policy = self.policy()?;
        Ok(RuleView {
            request_id: self.id,
            firmware_id: self.firmware_id,
            firmware_name: fw.name.clone(),
            product_key: product_key.to_owned(),
            name: self.name.clone(),
            target: self.kind(),
            regions: self.regions(),
            mac_list_id: self.mac_list_id,
            mac_count,
            old_versions: self.old_versions(),
            to_version: crate::upgrades::firmware_version_label(fw),
            period: PeriodDto { start: self.period_start.clone(), end: self.period_end.clone() },
            daily_window: DailyWindow {
                start_hour: u8::try_from(self.window_start).unwrap_or(0),
                end_hour: u8::try_from(self.window_end).unwrap_or(0),
            },
            status: self.status(),
            window_open: self.opening(policy.time_zone.as_deref(), now).is_some(),
            policy,
            openings: extra.openings,
            current_wave: self.current_wave.and_then(|w| u32::try_from(w).ok()),
            waves: extra.waves,
            halt: extra.halt,
            paused_at: self.paused_at.map(from_ms),
            cancelled_at: self.cancelled_at.map(from_ms),
            counts,
            started_at: self.started_at.map(from_ms),
            stopped_at: self.stopped_at.map(from_ms),
            completed_at: self.completed_at.map(from_ms),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        })
    }
}

/// A rule body that passed the checks that need no database.
#[derive(Debug, Clone)]
pub(crate) struct RuleSpec {
    pub name: Option<String>,
    pub kind: TargetKind,
    pub regions: Vec<Region>,
    /// An uploaded list, or inline MACs to store as a new list.
    pub macs: MacSource,
    pub old_versions: Vec<String>,
    pub period: Period,
    pub window: Window,
    pub policy: RolloutPolicy,
}

#[derive(Debug, Clone)]
pub(crate) enum MacSource {
    None,
    List(i64),
    /// Normalised, distinct, at most [`MAX_INLINE_MACS`].
    Inline(Vec<String>),
}

/// Inline `macs` are bound as query parameters; longer lists are uploaded as a file.
pub const MAX_INLINE_MACS: usize = 10_000;

fn clean_name(name: Option<String>) -> Result<Option<String>> {
    let Some(n) = name else { return Ok(None) };
    // Counted as sent (the schema's maxLength), then trimmed; blank means no name.
    if n.chars().count() > 64 || n.chars().any(char::is_control) {
        return Err(DomainError::invalid("name", "name must be at most 64 characters, without control characters"));
    }
    let n = n.trim().to_owned();
    Ok((!n.is_empty()).then_some(n))
}

impl RuleSpec {
    pub(crate) fn from_body(body: RuleBody) -> Result<RuleSpec> {
        let name = clean_name(body.name)?;
        let period =
            Period::parse(&body.period.start, &body.period.end).map_err(|m| DomainError::invalid("period", m))?;
        let window = Window::new(body.daily_window.start_hour, body.daily_window.end_hour)
            .map_err(|m| DomainError::invalid("daily_window", m))?;
        let regions = match body.target {
            TargetKind::Regions => {
                if body.regions.is_empty() {
                    return Err(DomainError::invalid("regions", "target `regions` needs at least one region"));
                }
                if body.regions.len() > MAX_REGIONS {
                    return Err(DomainError::invalid("regions", format!("at most {MAX_REGIONS} regions")));
                }
                let mut out: Vec<Region> = Vec::new();
                for text in &body.regions {
                    let r = parse_region(text);
                    let parts = [&r.country, &r.province, &r.city];
                    if parts.iter().all(|p| p.is_none())
                        || parts.iter().any(|p| p.as_ref().is_some_and(|s| s.chars().count() > 64))
                    {
                        return Err(DomainError::invalid(
                            "regions",
                            format!("`{text}` is no region: use `country/province/city` or `province-city`"),
                        ));
                    }
                    if !out.contains(&r) {
                        out.push(r);
                    }
                }
                out
            }
            _ if !body.regions.is_empty() => {
                return Err(DomainError::invalid("regions", "`regions` is only for target `regions`"));
            }
            _ => Vec::new(),
        };
        let macs = match (body.target, body.macs, body.mac_list_id) {
            (TargetKind::Macs, Some(_), Some(_)) => {
                return Err(DomainError::invalid("macs", "give either `macs` or `mac_list_id`, not both"));
            }
            (TargetKind::Macs, Some(text), None) => {
                let parsed = maclists::parse(&text)?;
                if !parsed.invalid.is_empty() {
                    return Err(DomainError::with_details(
                        ErrorCode::InvalidField,
                        format!("{} entries of `macs` are no MAC", parsed.invalid_count),
                        serde_json::json!({ "field": "macs", "invalid": parsed.invalid }),
                    ));
                }
                if parsed.macs.is_empty() {
                    return Err(DomainError::invalid("macs", "`macs` holds no MAC"));
                }
                if parsed.macs.len() > MAX_INLINE_MACS {
                    return Err(DomainError::invalid(
                        "macs",
                        format!(
                            "at most {MAX_INLINE_MACS} MACs inline; upload longer lists with \
                             POST /api/v1/products/{{product_key}}/mac-lists and send `mac_list_id`"
                        ),
                    ));
                }
                MacSource::Inline(parsed.macs)
            }
            (TargetKind::Macs, None, Some(id)) => MacSource::List(id),
            (TargetKind::Macs, None, None) => return Err(DomainError::missing("macs")),
            (_, None, None) => MacSource::None,
            (_, _, _) => {
                return Err(DomainError::invalid("macs", "`macs` and `mac_list_id` are only for target `macs`"));
            }
        };
        let mut old_versions: Vec<String> = Vec::new();
        for v in body.old_versions.iter().map(|v| v.trim()) {
            if v.is_empty() || v.len() > 64 {
                return Err(DomainError::invalid("old_versions", "old versions must be 1–64 characters"));
            }
            if !old_versions.iter().any(|o| o == v) {
                old_versions.push(v.to_owned());
            }
        }
        if old_versions.is_empty() {
            return Err(DomainError::invalid(
                "old_versions",
                "choose at least one old version (GET /api/v1/firmware/{id}/old-versions lists them)",
            ));
        }
        if old_versions.len() > MAX_OLD_VERSIONS {
            return Err(DomainError::invalid("old_versions", format!("at most {MAX_OLD_VERSIONS} old versions")));
        }
        let policy = check_policy(body.policy.unwrap_or_default())?;
        Ok(RuleSpec { name, kind: body.target, regions, macs, old_versions, period, window, policy })
    }

    fn from_record(r: &RuleRecord) -> Result<RuleSpec> {
        Ok(RuleSpec {
            name: r.name.clone(),
            kind: r.kind(),
            regions: r.regions(),
            macs: r.mac_list_id.map(MacSource::List).unwrap_or(MacSource::None),
            old_versions: r.old_versions(),
            period: r.period(),
            window: r.window(),
            policy: r.policy()?,
        })
    }

    fn mac_list_id(&self) -> Option<i64> {
        match self.macs {
            MacSource::List(id) => Some(id),
            _ => None,
        }
    }
}

/// The bounds the schema of [`RolloutPolicy`] states.
pub(crate) fn check_policy(p: RolloutPolicy) -> Result<RolloutPolicy> {
    if !(1..=10).contains(&p.retry.attempts) {
        return Err(DomainError::invalid("policy.retry.attempts", "attempts must be 1–10"));
    }
    if p.retry.backoff_s > 86_400 {
        return Err(DomainError::invalid("policy.retry.backoff_s", "backoff_s must be at most 86400"));
    }
    let t = &p.timeouts;
    for (name, v) in [
        ("notified_s", t.notified_s),
        ("checked_s", t.checked_s),
        ("downloading_s", t.downloading_s),
        ("downloaded_wifi_s", t.downloaded_wifi_s),
        ("downloaded_mcu_s", t.downloaded_mcu_s),
    ] {
        if !(10..=86_400).contains(&v) {
            return Err(DomainError::invalid(
                &format!("policy.timeouts.{name}"),
                format!("{name} must be 10–86400 seconds"),
            ));
        }
    }
    rollout::check(&p)?;
    Ok(p)
}

pub(crate) fn rule_not_found() -> DomainError {
    DomainError::new(ErrorCode::RuleNotFound, "no push rule with this request id in your tenant")
}

pub(crate) fn wrong_status(rule: &RuleRecord, message: &str) -> DomainError {
    DomainError::with_details(
        ErrorCode::RuleWrongStatus,
        message.to_owned(),
        serde_json::json!({ "status": rule.status().as_str() }),
    )
}

/// A rule of the tenant with its firmware and product key.
pub(crate) fn find_rule(c: &mut DbConn, tenant_id: i64, id: i64) -> Result<(RuleRecord, FirmwareRecord, String)> {
    let rule: RuleRecord = rules::table
        .filter(rules::id.eq(id).and(rules::tenant_id.eq(tenant_id)))
        .select(RuleRecord::as_select())
        .first(c)
        .optional()?
        .ok_or_else(rule_not_found)?;
    let (fw, pk) = find_firmware(c, tenant_id, rule.firmware_id)?;
    Ok((rule, fw, pk))
}

/// An uploaded list must belong to the firmware's product.
pub(crate) fn check_list(c: &mut DbConn, fw: &FirmwareRecord, id: i64) -> Result<()> {
    let found: Option<i64> = mac_lists::table
        .filter(mac_lists::id.eq(id).and(mac_lists::product_id.eq(fw.product_id)))
        .select(mac_lists::id)
        .first(c)
        .optional()?;
    found.map(|_| ()).ok_or_else(maclists::not_found)
}

/// Checks the old versions fit the firmware and the MAC list belongs to its product, and
/// stores inline MACs as a list of their own (what the rule then refers to).
fn resolve_spec(c: &mut DbConn, fw: &FirmwareRecord, spec: &mut RuleSpec, now: i64, cfg: SeriesRules) -> Result<()> {
    targets::check_old_versions(c, fw, &spec.old_versions, cfg)?;
    match &spec.macs {
        MacSource::None => {}
        MacSource::List(id) => check_list(c, fw, *id)?,
        MacSource::Inline(macs) => {
            let parsed = maclists::ParsedMacs { macs: macs.clone(), ..Default::default() };
            spec.macs = MacSource::List(maclists::store(c, fw.tenant_id, fw.product_id, &parsed, now)?);
        }
    }
    Ok(())
}

/// The parts of a rule's view that come from its targets and waves.
pub(crate) struct ViewParts {
    pub openings: Vec<ota_wire::rollout::ZoneOpening>,
    pub waves: Vec<ota_wire::rollout::WaveView>,
    pub halt: Option<ota_wire::rollout::HaltView>,
}

fn view_parts(c: &mut DbConn, rule: &RuleRecord, now: i64) -> Result<ViewParts> {
    use ota_wire::rollout::{WaveState, WaveView, ZoneOpening};
    let halt = match &rule.halt {
        None => None,
        Some(text) => Some(
            serde_json::from_str::<rollout::HaltRecord>(text)
                .map_err(|e| DomainError::Internal(anyhow::anyhow!("rule {} has an unreadable halt: {e}", rule.id)))?
                .view(),
        ),
    };
    if rule.status() == RuleStatus::NotStarted {
        return Ok(ViewParts { openings: Vec::new(), waves: Vec::new(), halt });
    }
    let per_wave = schedule::wave_counts(c, rule.id)?;
    let times: Vec<(i64, Option<i64>, Option<i64>)> = crate::schema::rule_waves::table
        .filter(crate::schema::rule_waves::rule_id.eq(rule.id))
        .order(crate::schema::rule_waves::wave)
        .select((
            crate::schema::rule_waves::wave,
            crate::schema::rule_waves::started_at,
            crate::schema::rule_waves::passed_at,
        ))
        .load(c)?;
    let waves = times
        .into_iter()
        .map(|(wave, started_at, passed_at)| {
            let n = per_wave.get(&wave).cloned().unwrap_or_default();
            let ended = rule.status().is_final();
            let state = match (started_at, passed_at) {
                (_, Some(_)) => WaveState::Passed,
                (Some(_), None) if ended => WaveState::Ended,
                (Some(_), None) => WaveState::Active,
                (None, None) if ended => WaveState::NeverStarted,
                (None, None) => WaveState::Waiting,
            };
            WaveView {
                wave: u32::try_from(wave).unwrap_or(0),
                state,
                members: n.targets - n.excluded,
                succeeded: n.succeeded,
                failed: n.failed,
                in_progress: n.in_progress,
                pending: n.pending,
                excluded: n.excluded,
                started_at: started_at.map(from_ms),
                passed_at: passed_at.map(from_ms),
            }
        })
        .collect();
    let zones: Vec<(Option<String>, i64)> = upgrades::table
        .filter(upgrades::rule_id.eq(rule.id))
        .group_by(upgrades::zone)
        .select((upgrades::zone, diesel::dsl::count_star()))
        .load(c)?;
    let window = rule.window();
    let openings = zones
        .into_iter()
        .map(|(zone, devices)| {
            let tz = zone.as_deref().and_then(crate::window::parse_zone).unwrap_or(chrono_tz::UTC);
            let next = window.current_or_next_in(tz, from_ms(now));
            ZoneOpening {
                time_zone: zone.clone().unwrap_or_else(|| "UTC".into()),
                devices,
                opens_at: next.map(|o| from_ms(o.start_ms)),
                closes_at: next.map(|o| from_ms(o.end_ms)),
                open_now: rule.window_opening(zone.as_deref(), now).is_some(),
            }
        })
        .collect();
    Ok(ViewParts { openings, waves, halt })
}

/// Adds `n` targets in `stage` to a rule's counts.
pub(crate) fn add_stage(out: &mut RuleCounts, stage: ota_wire::dto::UpgradeStage, n: i64) {
    use ota_wire::dto::UpgradeStage as S;
    out.targets += n;
    match stage {
        S::Succeeded => out.succeeded += n,
        S::Failed => out.failed += n,
        S::Expired => out.expired += n,
        S::Pending => out.pending += n,
        S::Notified | S::Checked | S::Downloading | S::Downloaded => out.in_progress += n,
        S::Cancelled => out.cancelled += n,
        S::Excluded => out.excluded += n,
    }
    out.not_succeeded = out.targets - out.succeeded;
}

/// Counts of a rule's targets, from its records.
pub(crate) fn counts(c: &mut DbConn, rule_id: i64) -> Result<RuleCounts> {
    use ota_wire::dto::UpgradeStage as S;
    let rows: Vec<(Stored<S>, i64)> = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .group_by(upgrades::stage)
        .select((upgrades::stage, diesel::dsl::count_star()))
        .load(c)?;
    let notified: i64 = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::notified_at.is_not_null())
        .count()
        .get_result(c)?;
    let mut out = RuleCounts { notified, ..RuleCounts::default() };
    for (stage, n) in rows {
        add_stage(&mut out, stage.get(), n);
    }
    Ok(out)
}

fn mac_count(c: &mut DbConn, rule: &RuleRecord) -> Result<Option<i64>> {
    match rule.mac_list_id {
        None => Ok(None),
        Some(id) => Ok(mac_lists::table.find(id).select(mac_lists::count).first(c).optional()?),
    }
}

/// The push status of firmware, derived from its rules: pushing while any rule is under way
/// (pushing, paused, halted), else completed when any rule ended (completed, cancelled), else
/// not started.
pub(crate) fn push_statuses(
    c: &mut DbConn,
    firmware_ids: &[i64],
) -> Result<std::collections::HashMap<i64, PushStatus>> {
    let rows: Vec<(i64, Stored<RuleStatus>)> = rules::table
        .filter(rules::firmware_id.eq_any(firmware_ids))
        .filter(rules::status.ne(Stored(RuleStatus::NotStarted)))
        .filter(rules::status.ne(Stored(RuleStatus::Stopped)))
        .select((rules::firmware_id, rules::status))
        .distinct()
        .load(c)?;
    let mut out = std::collections::HashMap::new();
    for (id, status) in rows {
        // A rollout under way (even held) is pushing; an ended one (cancelled too) completed.
        let s = if status.get().is_live() { PushStatus::Pushing } else { PushStatus::Completed };
        let e = out.entry(id).or_insert(s);
        if s == PushStatus::Pushing {
            *e = s;
        }
    }
    Ok(out)
}

impl Domain {
    fn rule_view_in(
        &self,
        c: &mut DbConn,
        rule: &RuleRecord,
        fw: &FirmwareRecord,
        pk: &str,
        now: i64,
    ) -> Result<RuleView> {
        let counts = counts(c, rule.id)?;
        let macs = mac_count(c, rule)?;
        let extra = view_parts(c, rule, now)?;
        rule.view(fw, pk, macs, counts, extra, now)
    }

    /// Creates a rule (not started) for a firmware; verified or not (drafts are allowed).
    pub async fn create_rule(&self, who: &Authorized<Write>, firmware_id: i64, body: RuleBody) -> Result<RuleView> {
        let mut spec = RuleSpec::from_body(body)?;
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        let this = self.clone();
        self.db
            .write(move |c| {
                let (fw, pk) = find_firmware(c, tenant_id, firmware_id)?;
                resolve_spec(c, &fw, &mut spec, now, this.settings.series_rules)?;
                let preview = targets::preview(c, &fw, &spec, None, this.settings.series_rules)?;
                if preview.targets == 0 {
                    return Err(no_targets(&preview));
                }
                diesel::insert_into(rules::table)
                    .values((
                        SpecColumns::of(&spec, now),
                        rules::tenant_id.eq(fw.tenant_id),
                        rules::product_id.eq(fw.product_id),
                        rules::firmware_id.eq(fw.id),
                        rules::status.eq(Stored(RuleStatus::NotStarted)),
                        rules::created_at.eq(now),
                    ))
                    .execute(c)?;
                let id = last_insert_id(c)?;
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                this.rule_view_in(c, &rule, &fw, &pk, now)
            })
            .await
    }

    pub async fn list_rules(&self, who: &Authorized<Read>, firmware_id: i64) -> Result<Vec<RuleView>> {
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        let this = self.clone();
        self.db
            .snapshot(move |c| {
                let (fw, pk) = find_firmware(c, tenant_id, firmware_id)?;
                let rows: Vec<RuleRecord> = rules::table
                    .filter(rules::firmware_id.eq(fw.id))
                    .order(rules::id.desc())
                    .select(RuleRecord::as_select())
                    .load(c)?;
                rows.iter().map(|r| this.rule_view_in(c, r, &fw, &pk, now)).collect()
            })
            .await
    }

    pub async fn get_rule(&self, who: &Authorized<Read>, id: i64) -> Result<RuleView> {
        self.rule_of_tenant(who.tenant_id(), id).await
    }

    /// A rule as [`Domain::get_rule`] shows it, for calls that already hold another capability.
    pub(crate) async fn rule_of_tenant(&self, tenant_id: i64, id: i64) -> Result<RuleView> {
        let now = self.clock.now_ms();
        let this = self.clone();
        self.db
            .snapshot(move |c| {
                let (rule, fw, pk) = find_rule(c, tenant_id, id)?;
                this.rule_view_in(c, &rule, &fw, &pk, now)
            })
            .await
    }

    /// Edits a rule: anything before it starts; `name` and `period.end` afterwards.
    pub async fn update_rule(&self, who: &Authorized<Write>, id: i64, req: UpdateRuleRequest) -> Result<RuleView> {
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        let this = self.clone();
        self.db
            .write(move |c| {
                let (rule, fw, pk) = find_rule(c, tenant_id, id)?;
                let current = RuleSpec::from_record(&rule)?;
                let status = rule.status();
                if status != RuleStatus::NotStarted {
                    let touches_targets = req.target.is_some()
                        || req.regions.is_some()
                        || req.macs.is_some()
                        || req.mac_list_id.is_some()
                        || req.old_versions.is_some()
                        || req.daily_window.is_some()
                        || req.period.as_ref().is_some_and(|p| p.start != rule.period_start);
                    let ended = status.is_final();
                    if touches_targets || ended && (req.period.is_some() || req.policy.is_some()) {
                        return Err(wrong_status(
                            &rule,
                            "once started, only `name`, `period.end` and `policy` may change (and nothing but `name` once ended)",
                        ));
                    }
                    let policy = match req.policy {
                        Some(p) => {
                            let p = check_policy(p)?;
                            rollout::check_started_change(&current.policy, &p).map_err(|m| wrong_status(&rule, m))?;
                            p
                        }
                        None => current.policy,
                    };
                    let name = match req.name {
                        Some(n) => clean_name(Some(n))?,
                        None => rule.name.clone(),
                    };
                    let mut period_end = rule.period_end.clone();
                    if let Some(p) = req.period {
                        let parsed =
                            Period::parse(&p.start, &p.end).map_err(|m| DomainError::invalid("period", m))?;
                        if parsed.end < from_ms(now).date_naive() {
                            return Err(DomainError::invalid("period", "period.end must not be a day already past"));
                        }
                        period_end = parsed.end.format("%Y-%m-%d").to_string();
                    }
                    diesel::update(rules::table.find(rule.id))
                        .set((
                            rules::name.eq(name),
                            rules::period_end.eq(period_end),
                            rules::policy.eq(json(&policy)),
                            rules::updated_at.eq(now),
                        ))
                        .execute(c)?;
                } else {
                    let keep_list = keeps_mac_list(&req, current.kind);
                    let body = RuleBody {
                        name: req.name.or(current.name.clone()),
                        target: req.target.unwrap_or(current.kind),
                        regions: match req.regions {
                            Some(r) => r,
                            None if req.target.is_none_or(|t| t == TargetKind::Regions) => {
                                current.regions.iter().map(region_text).collect()
                            }
                            None => Vec::new(),
                        },
                        macs: req.macs,
                        mac_list_id: match req.mac_list_id {
                            Some(l) => Some(l),
                            None if keep_list => current.mac_list_id(),
                            None => None,
                        },
                        old_versions: req.old_versions.unwrap_or(current.old_versions.clone()),
                        period: req.period.unwrap_or(PeriodDto {
                            start: rule.period_start.clone(),
                            end: rule.period_end.clone(),
                        }),
                        daily_window: req.daily_window.unwrap_or(DailyWindow {
                            start_hour: current.window.start_hour,
                            end_hour: current.window.end_hour,
                        }),
                        policy: Some(req.policy.unwrap_or(current.policy)),
                    };
                    let mut spec = RuleSpec::from_body(body)?;
                    resolve_spec(c, &fw, &mut spec, now, this.settings.series_rules)?;
                    let preview = targets::preview(c, &fw, &spec, None, this.settings.series_rules)?;
                    if preview.targets == 0 {
                        return Err(no_targets(&preview));
                    }
                    diesel::update(rules::table.find(rule.id)).set(SpecColumns::of(&spec, now)).execute(c)?;
                }
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                this.rule_view_in(c, &rule, &fw, &pk, now)
            })
            .await
    }

    /// Deletes a rule that is not pushing, with its per-device results.
    pub async fn delete_rule(&self, who: &Authorized<Write>, id: i64) -> Result<()> {
        let tenant_id = who.tenant_id();
        self.db
            .write(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                if rule.status().is_live() {
                    return Err(wrong_status(&rule, "stop or cancel the rule before deleting it"));
                }
                diesel::delete(upgrades::table.filter(upgrades::rule_id.eq(rule.id))).execute(c)?;
                diesel::delete(rules::table.find(rule.id)).execute(c)?;
                Ok(())
            })
            .await
    }
}

/// An edit that neither names MACs nor changes the target kind keeps the current list.
fn keeps_mac_list(req: &UpdateRuleRequest, kind: TargetKind) -> bool {
    req.macs.is_none() && req.target.is_none_or(|t| t == kind)
}

fn region_text(r: &Region) -> String {
    let p = |v: &Option<String>| v.clone().unwrap_or_default();
    format!("{}/{}/{}", p(&r.country), p(&r.province), p(&r.city))
}

fn no_targets(p: &ota_wire::rules::RulePreview) -> DomainError {
    DomainError::with_details(
        ErrorCode::RuleNoTargets,
        "no device of the firmware's series runs one of these old versions in these targets",
        serde_json::to_value(p).unwrap_or_default(),
    )
}

/// The columns a rule's spec sets, for insert and update alike.
#[derive(Insertable, AsChangeset)]
#[diesel(table_name = rules, treat_none_as_null = true)]
struct SpecColumns {
    name: Option<String>,
    target: Stored<TargetKind>,
    regions: String,
    mac_list_id: Option<i64>,
    old_versions: String,
    period_start: String,
    period_end: String,
    window_start: i32,
    window_end: i32,
    policy: String,
    updated_at: i64,
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

impl SpecColumns {
    fn of(spec: &RuleSpec, now: i64) -> SpecColumns {
        SpecColumns {
            name: spec.name.clone(),
            target: Stored(spec.kind),
            regions: json(&spec.regions),
            mac_list_id: spec.mac_list_id(),
            old_versions: json(&spec.old_versions),
            period_start: spec.period.start.format("%Y-%m-%d").to_string(),
            period_end: spec.period.end.format("%Y-%m-%d").to_string(),
            window_start: i32::from(spec.window.start_hour),
            window_end: i32::from(spec.window.end_hour),
            policy: json(&spec.policy),
            updated_at: now,
        }
    }
}
