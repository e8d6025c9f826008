//! Starting, stopping and driving rules: the fleet scheduler.
//!
//! Every gateway process runs [`Domain::push_round`] on the same database. A round
//! 1. feeds the time-driven events of the state machine: records whose `due_at` passed (a
//!    push nobody delivered, a stage timeout, a verification deadline) — see
//!    [`crate::lifecycle`];
//! 2. completes rules whose period ended or whose targets all succeeded;
//! 3. pushes: picks due online targets (and verifications whose push was not delivered) and
//!    marks each *sent* through the state machine, conditionally on the record's revision, so
//!    two gateways never both push one record; then hands the pushes to the broker, `spacing`
//!    apart.
//!
//! **Exactly once, delivered.** A push counts once the edge holding the device's session has
//! written it to the socket (the edge reports it, see `record_events`). A push that no edge
//! delivers within the delivery timeout (a gateway died, the device's session moved, the
//! broker lost it) is cleared and sent again when the device is next online in the opening.
//! "At most once per window opening" counts delivered first attempts: a target is due when
//! its last delivered push belongs to an earlier opening, or when its attempt failed and its
//! retry time came (the rule's retry policy). Success is the record's single move to
//! `succeeded` in the device's check, whichever gateway answers it, so it counts once.
//!
//! **Batches.** A round claims up to `limit` records in one transaction (each through the
//! state machine), hands their pushes to the broker, and records the refusals in one more; no
//! push waits for a database write of its own, and deliveries come back in batches too
//! (`writer.rs`). The gateway sizes `limit` with a token bucket over real time
//! ([`super::rollout::PushBudget`]), so its `push_rate` is what a rollout gets while devices
//! are due, rounds a fraction of a second apart; `spacing` (tests: zero) spreads a round's
//! pushes when a caller wants that.
//!
//! **Taking targets.** A start inserts the records with one `INSERT … SELECT` over the target
//! filter (versions and time zones computed in SQL), so 900,000 targets never pass through
//! the process.

use std::time::Duration;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, UpgradeStage};
use ota_wire::rules::{
    DailyWindow, Period as PeriodDto, RolloutPolicy, RuleCounts, RuleStarted, RuleStatus, StartRuleRequest,
};

use super::status::{self, Action};
use super::targets::{TargetFilter, start_overlap};
use super::zones::ZoneBook;
use super::{RuleRecord, find_rule, rollout, wrong_status};
use crate::Domain;
use crate::access::{Authorized, Push};
use crate::db::DbConn;
use crate::devices::DeviceRecord;
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{Context, Event, Failure, RecordKind};
use crate::notify::PushNotice;
use crate::schema::{devices, firmware, products, rule_waves, rules, upgrades};
use crate::stored::Stored;
use crate::upgrades::events::{RecordEvent, end_rule_period, process_due, requeue_rule};
use crate::upgrades::{Applied, apply, device_version_label, firmware_version_label, load};

/// Time-driven events handled per round at most (the rest wait for the next round).
const DUE_PER_ROUND: i64 = 5000;

/// What one scheduler round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushRound {
    /// Time-driven events handled (timeouts, missed deliveries, deadlines).
    pub due: usize,
    /// Records marked sent in this round.
    pub claimed: usize,
    /// Pushes handed to the broker.
    pub notified: usize,
    /// Pushes the broker refused (sent again after the delivery timeout).
    pub failed: usize,
}

/// Serialises rule starts of one product on PostgreSQL (SQLite writes are serial already),
/// so two overlapping rules cannot both pass the overlap check.
fn lock_product(c: &mut DbConn, product_id: i64) -> Result<()> {
    if let DbConn::Pg(pg) = c {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<diesel::sql_types::BigInt, _>(product_id)
            .execute(pg)?;
    }
    Ok(())
}

/// PostgreSQL advisory-lock keys of rules live above those of products.
const RULE_LOCK_BASE: i64 = 1 << 40;

/// Serialises the pushes of one rule across gateways on PostgreSQL (SQLite writes are serial
/// already), so its caps, counted in the database, hold whichever gateways push.
fn lock_rule(c: &mut DbConn, rule_id: i64) -> Result<()> {
    lock_product(c, RULE_LOCK_BASE + rule_id)
}

/// Inserts a record for every target of the rule that has none yet, in the rule's last wave
/// and the device's time zone; returns how many. One `INSERT … SELECT` over the target
/// filter: the rows never leave the database (a rule over 900,000 devices took 15–70 s as
/// batches read into Rust and written back 1,000 at a time).
fn take_targets(c: &mut DbConn, rule: &RuleRecord, fw: &FirmwareRecord, now: i64) -> Result<usize> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Bool, Nullable, Text};
    let filter = TargetFilter::of_rule(c, fw, rule)?;
    let policy = rule.policy()?;
    let last_wave = i64::try_from(policy.waves.len().max(1)).unwrap_or(1);
    let zones = ZoneBook::load(c, rule.tenant_id, policy.time_zone.clone())?;
    // A first start has nothing to skip; a restart skips the devices it already holds.
    let held: i64 = upgrades::table.filter(upgrades::rule_id.eq(rule.id)).count().get_result(c)?;
    let mut q = filter.targets();
    if held > 0 {
        q = q.filter(diesel::dsl::not(
            devices::id.eq_any(upgrades::table.filter(upgrades::rule_id.eq(rule.id)).select(upgrades::device_id)),
        ));
    }
    let rows = q.select((
        devices::tenant_id,
        devices::id,
        fw.id.into_sql::<BigInt>(),
        Stored(RecordKind::Rule).into_sql::<Text>(),
        true.into_sql::<Bool>(),
        Stored(UpgradeStage::Pending).into_sql::<Text>(),
        sql::<Nullable<Text>>(from_version_sql(fw)),
        firmware_version_label(fw).into_sql::<Nullable<Text>>(),
        Some(rule.id).into_sql::<Nullable<BigInt>>(),
        now.into_sql::<BigInt>(),
        now.into_sql::<BigInt>(),
        last_wave.into_sql::<BigInt>(),
        zones.zone_sql(),
    ));
    let taken = diesel::insert_into(upgrades::table)
        .values(rows)
        .into_columns((
            upgrades::tenant_id,
            upgrades::device_id,
            upgrades::firmware_id,
            upgrades::kind,
            upgrades::active,
            upgrades::stage,
            upgrades::from_version,
            upgrades::to_version,
            upgrades::rule_id,
            upgrades::created_at,
            upgrades::updated_at,
            upgrades::wave,
            upgrades::zone,
        ))
        .execute(c)?;
    Ok(taken)
}

/// `device_version_label` as SQL over a `devices` row (a fixed text: no value spliced in).
fn from_version_sql(fw: &FirmwareRecord) -> &'static str {
    match (fw.push_method(), fw.fw_type()) {
        (PushMethod::V41, FirmwareType::Wifi) => "devices.wifi_sw",
        (PushMethod::V41, FirmwareType::Mcu) => "devices.mcu_sw",
        (PushMethod::V4, FirmwareType::Wifi) => "'fid ' || devices.wifi_fid",
        (PushMethod::V4, FirmwareType::Mcu) => "'fid ' || devices.mcu_fid",
        (PushMethod::V1V3, _) => "'id ' || devices.legacy_firmware_id",
    }
}

/// Splits a rule's targets into its canary and waves at its first start, and opens the first.
fn assign_waves(c: &mut DbConn, rule: &RuleRecord, now: i64) -> Result<()> {
    let policy = rule.policy()?;
    // Targets were taken into the last wave; with no canary and one wave that is the plan, and
    // the rows need not be read (900,000 of them at a large start).
    let last_wave = policy.waves.len().max(1);
    let plan = if policy.canary.is_none() && policy.waves.len() <= 1 {
        // (The last wave's members are not listed: they are never updated below.)
        rollout::WavePlan { members: vec![Vec::new(); last_wave + 1] }
    } else {
        let rows: Vec<(i64, i64, Option<String>, bool)> = upgrades::table
            .inner_join(devices::table)
            .filter(upgrades::rule_id.eq(rule.id))
            .order(upgrades::device_id)
            .select((upgrades::id, upgrades::device_id, devices::mac, devices::online))
            .load(c)?;
        rollout::plan_waves(&policy, rule.id, &rows)?
    };
    for (wave, ids) in plan.members.iter().enumerate() {
        if wave == last_wave {
            continue; // where `take_targets` put them
        }
        for chunk in ids.chunks(1000) {
            diesel::update(upgrades::table.filter(upgrades::id.eq_any(chunk)))
                .set(upgrades::wave.eq(i64::try_from(wave).unwrap_or(0)))
                .execute(c)?;
        }
    }
    let first = plan.first_wave();
    for wave in 0..plan.members.len() {
        let wave = i64::try_from(wave).unwrap_or(0);
        if wave == 0 && plan.members[0].is_empty() {
            continue;
        }
        diesel::insert_into(rule_waves::table)
            .values((
                rule_waves::rule_id.eq(rule.id),
                rule_waves::wave.eq(wave),
                rule_waves::started_at.eq((wave == first).then_some(now)),
            ))
            .execute(c)?;
    }
    diesel::update(rules::table.find(rule.id)).set(rules::current_wave.eq(first)).execute(c)?;
    Ok(())
}

/// Moves a rule's status through the status machine, conditionally on the status it had.
pub(crate) fn set_status(c: &mut DbConn, rule: &RuleRecord, action: Action, now: i64) -> Result<RuleStatus> {
    let to = status::next(rule.status(), action).map_err(|m| wrong_status(rule, m))?;
    let target = rules::table.find(rule.id).filter(rules::status.eq(Stored(rule.status())));
    let n = match action {
        Action::Complete => diesel::update(target)
            .set((rules::status.eq(Stored(to)), rules::completed_at.eq(now), rules::updated_at.eq(now)))
            .execute(c)?,
        Action::Stop => diesel::update(target)
            .set((rules::status.eq(Stored(to)), rules::stopped_at.eq(now), rules::updated_at.eq(now)))
            .execute(c)?,
        Action::Pause | Action::Halt => diesel::update(target)
            .set((rules::status.eq(Stored(to)), rules::paused_at.eq(now), rules::updated_at.eq(now)))
            .execute(c)?,
        Action::Resume => diesel::update(target)
            .set((rules::status.eq(Stored(to)), rules::paused_at.eq(None::<i64>), rules::updated_at.eq(now)))
            .execute(c)?,
        Action::Cancel => diesel::update(target)
            .set((rules::status.eq(Stored(to)), rules::cancelled_at.eq(now), rules::updated_at.eq(now)))
            .execute(c)?,
        Action::Start => diesel::update(target)
            .set((
                rules::status.eq(Stored(to)),
                rules::started_at.eq(rule.started_at.unwrap_or(now)),
                rules::stopped_at.eq(None::<i64>),
                rules::updated_at.eq(now),
            ))
            .execute(c)?,
        Action::Advance | Action::Exclude => diesel::update(target).set(rules::updated_at.eq(now)).execute(c)?,
    };
    if n == 0 {
        return Err(wrong_status(rule, "the rule changed meanwhile; try again"));
    }
    Ok(to)
}

/// Per wave of a rule: members (excluded ones not counted) and results.
pub(crate) fn wave_counts(c: &mut DbConn, rule_id: i64) -> Result<std::collections::BTreeMap<i64, RuleCounts>> {
    use ota_wire::dto::UpgradeStage as S;
    let rows: Vec<(i64, Stored<S>, i64)> = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .group_by((upgrades::wave, upgrades::stage))
        .select((upgrades::wave, upgrades::stage, diesel::dsl::count_star()))
        .load(c)?;
    let mut out: std::collections::BTreeMap<i64, RuleCounts> = Default::default();
    for (wave, stage, n) in rows {
        super::add_stage(out.entry(wave).or_default(), stage.get(), n);
    }
    Ok(out)
}

/// Failures of a rule by kind, and its successes, for its halt threshold.
fn failure_counts(c: &mut DbConn, rule_id: i64) -> Result<rollout::FailureCounts> {
    let rows: Vec<(Option<Stored<Failure>>, i64)> = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::stage.eq(Stored(UpgradeStage::Failed)))
        .group_by(upgrades::failure)
        .select((upgrades::failure, diesel::dsl::count_star()))
        .load(c)?;
    let succeeded: i64 = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::stage.eq(Stored(UpgradeStage::Succeeded)))
        .count()
        .get_result(c)?;
    let mut by_kind: std::collections::BTreeMap<String, (ota_wire::dto::FailureKind, i64)> = Default::default();
    for (failure, n) in rows {
        if let Some(f) = failure {
            let kind = f.get().kind();
            by_kind.entry(kind.as_str().to_owned()).or_insert((kind, 0)).1 += n;
        }
    }
    Ok(rollout::FailureCounts { succeeded, failed_by_kind: by_kind.into_values().collect() })
}

/// Starts the next wave of a pushing rule (passes the current one); `false` when it was the
/// last.
pub(crate) fn advance_wave(c: &mut DbConn, rule: &RuleRecord, now: i64) -> Result<bool> {
    let Some(current) = rule.current_wave else { return Ok(false) };
    let next: Option<i64> = rule_waves::table
        .filter(rule_waves::rule_id.eq(rule.id))
        .filter(rule_waves::wave.gt(current))
        .select(rule_waves::wave)
        .order(rule_waves::wave)
        .first(c)
        .optional()?;
    let Some(next) = next else { return Ok(false) };
    diesel::update(rule_waves::table.find((rule.id, current))).set(rule_waves::passed_at.eq(now)).execute(c)?;
    diesel::update(rule_waves::table.find((rule.id, next))).set(rule_waves::started_at.eq(now)).execute(c)?;
    diesel::update(rules::table.find(rule.id))
        .set((rules::current_wave.eq(next), rules::updated_at.eq(now)))
        .execute(c)?;
    Ok(true)
}

/// The time-driven part of a live rule (pushing, paused or halted): completion at the period's
/// end or once nothing is left; for a pushing one, the automatic halt, then the next wave
/// when the current one passed. Runs in the scheduler round only: reads never settle anything.
pub(crate) fn settle(c: &mut DbConn, now: i64, delivery: i64) -> Result<usize> {
    let live = [RuleStatus::Pushing, RuleStatus::Paused, RuleStatus::Halted].map(Stored);
    let rows: Vec<(RuleRecord, Stored<FirmwareType>)> = rules::table
        .inner_join(firmware::table)
        .filter(rules::status.eq_any(live))
        .select((RuleRecord::as_select(), firmware::fw_type))
        .load(c)?;
    let mut completed = 0;
    for (rule, fw_type) in rows {
        let over = rule.period().is_over(crate::clock::from_ms(now));
        // Any open target? (Not a count: this runs every scheduler round.)
        let open = upgrades::table
            .filter(upgrades::rule_id.eq(rule.id))
            .filter(upgrades::active.eq(true))
            .select(upgrades::id)
            .first::<i64>(c)
            .optional()?
            .is_some();
        if over || !open {
            if over && open {
                let policy = rule.policy()?;
                let ctx = Context {
                    now,
                    fw_type: fw_type.get(),
                    policy: &policy,
                    opening: None,
                    delivery_timeout_ms: delivery,
                };
                end_rule_period(c, rule.id, &ctx, delivery)?;
            }
            set_status(c, &rule, Action::Complete, now)?;
            completed += 1;
            continue;
        }
        if rule.status() != RuleStatus::Pushing {
            continue;
        }
        let policy = rule.policy()?;
        if let Some(halt) = &policy.halt {
            let counts = failure_counts(c, rule.id)?;
            if let Some(threshold) = rollout::halt_check(halt, &counts) {
                let wave = u32::try_from(rule.current_wave.unwrap_or(1)).unwrap_or(0);
                let record = rollout::HaltRecord::new(now, wave, halt, &counts, threshold);
                let text = serde_json::to_string(&record).map_err(|e| DomainError::Internal(e.into()))?;
                set_status(c, &rule, Action::Halt, now)?;
                diesel::update(rules::table.find(rule.id)).set(rules::halt.eq(text)).execute(c)?;
                tracing::warn!(rule = rule.id, failed = record.failed, finished = record.finished, threshold = %record.threshold, "rule halted");
                continue;
            }
        }
        // Waves pass one by one; an empty one (all excluded) passes at once.
        let mut rule = rule;
        for _ in 0..=rollout::MAX_WAVES {
            let Some(current) = rule.current_wave else { break };
            let counts = wave_counts(c, rule.id)?;
            let w = counts.get(&current).cloned().unwrap_or_default();
            let started: Option<i64> = rule_waves::table
                .find((rule.id, current))
                .select(rule_waves::started_at)
                .first::<Option<i64>>(c)
                .optional()?
                .flatten();
            let members = w.targets - w.excluded - w.cancelled;
            let progress = rollout::WaveProgress {
                members,
                succeeded: w.succeeded,
                failed: w.failed,
                started_at: started.unwrap_or(now),
            };
            if members > 0 && !rollout::should_advance(&policy.advance, &progress, now) {
                break;
            }
            if !advance_wave(c, &rule, now)? {
                break;
            }
            rule.current_wave = rules::table.find(rule.id).select(rules::current_wave).first(c)?;
        }
    }
    Ok(completed)
}

/// A device that checks in while a pushing rule of its product would now take it joins the
/// rule (registered after the start, or now reporting an old version of the series), unless
/// another pushing rule of the series already pushes to it.
pub(crate) fn join_pushing_rules(
    c: &mut DbConn,
    device: &DeviceRecord,
    method: PushMethod,
    fw_type: FirmwareType,
    now: i64,
    cfg: crate::upgrade::SeriesRules,
) -> Result<()> {
    let mut joined: Vec<FirmwareRecord> = Vec::new();
    for (rule, fw) in rules_to_join(c, device, method, fw_type, cfg)? {
        // One rule of a series at a time: the first one joined holds the device.
        if joined.iter().any(|other| super::targets::same_series(&fw, other, cfg)) {
            continue;
        }
        // A device that joins goes into the last wave, in its time zone.
        let policy = rule.policy()?;
        let last_wave: Option<i64> = rule_waves::table
            .filter(rule_waves::rule_id.eq(rule.id))
            .select(diesel::dsl::max(rule_waves::wave))
            .first(c)?;
        let mut zones = ZoneBook::load(c, rule.tenant_id, policy.time_zone.clone())?;
        zones.read_overrides(c, &[device.id])?;
        diesel::insert_into(upgrades::table)
            .values((
                upgrades::tenant_id.eq(device.tenant_id),
                upgrades::device_id.eq(device.id),
                upgrades::firmware_id.eq(fw.id),
                upgrades::kind.eq(Stored(RecordKind::Rule)),
                upgrades::active.eq(true),
                upgrades::stage.eq(Stored(UpgradeStage::Pending)),
                upgrades::from_version.eq(device_version_label(device, fw.push_method(), fw.fw_type())),
                upgrades::to_version.eq(firmware_version_label(&fw)),
                upgrades::rule_id.eq(rule.id),
                upgrades::created_at.eq(now),
                upgrades::updated_at.eq(now),
                upgrades::wave.eq(last_wave.unwrap_or(1)),
                upgrades::zone.eq(zones.zone_of(device)),
            ))
            .execute(c)?;
        joined.push(fw);
    }
    Ok(())
}

/// The pushing rules `device` (as stored) would join now: a read, so a device check can
/// tell without writing that it joins nothing.
pub(crate) fn rules_to_join(
    c: &mut DbConn,
    device: &DeviceRecord,
    method: PushMethod,
    fw_type: FirmwareType,
    cfg: crate::upgrade::SeriesRules,
) -> Result<Vec<(RuleRecord, FirmwareRecord)>> {
    // Live rules (pushing, paused, halted) hold their devices; only pushing ones take more.
    let live = [RuleStatus::Pushing, RuleStatus::Paused, RuleStatus::Halted].map(Stored);
    let pushing: Vec<(RuleRecord, FirmwareRecord)> = rules::table
        .inner_join(firmware::table)
        .filter(rules::product_id.eq(device.product_id))
        .filter(rules::status.eq_any(live))
        .filter(firmware::push_method.eq(Stored(method)))
        .select((RuleRecord::as_select(), FirmwareRecord::as_select()))
        .load(c)?;
    let mut joins = Vec::new();
    for (rule, fw) in &pushing {
        if rule.status() != RuleStatus::Pushing || method != PushMethod::V1V3 && fw.fw_type() != fw_type {
            continue;
        }
        let has: i64 = upgrades::table
            .filter(upgrades::rule_id.eq(rule.id))
            .filter(upgrades::device_id.eq(device.id))
            .count()
            .get_result(c)?;
        if has > 0 {
            continue;
        }
        let filter = TargetFilter::of_rule(c, fw, rule)?;
        let matches: i64 = filter.targets().filter(devices::id.eq(device.id)).count().get_result(c)?;
        if matches == 0 {
            continue;
        }
        let busy = pushing
            .iter()
            .filter(|(r, f)| r.id != rule.id && super::targets::same_series(fw, f, cfg))
            .map(|(r, _)| r.id);
        let busy: Vec<i64> = busy.collect();
        let elsewhere: i64 = upgrades::table
            .filter(upgrades::rule_id.eq_any(busy))
            .filter(upgrades::device_id.eq(device.id))
            .filter(upgrades::active.eq(true))
            .count()
            .get_result(c)?;
        if elsewhere > 0 {
            continue;
        }
        joins.push((rule.clone(), fw.clone()));
    }
    Ok(joins)
}

/// A push to make: the record marked sent, and what the gateway needs to send it, after
/// `delay_ms` (the rule's jitter).
struct Claim {
    upgrade_id: i64,
    notice: PushNotice,
    delay_ms: i64,
}

fn notice(did: String, product_key: String, fw: &FirmwareRecord, upgrade_id: i64, opening: Option<i64>) -> PushNotice {
    PushNotice {
        did,
        product_key,
        method: fw.push_method(),
        fw_type: fw.fw_type(),
        upgrade_id,
        firmware_id: fw.id,
        fid: fw.fid,
        hard_version: fw.hard_version.clone(),
        soft_version: fw.soft_version.clone(),
        file_name: fw.file_name.clone(),
        opening,
    }
}

/// A record due for a push.
struct DuePush {
    id: i64,
    did: String,
    product_key: String,
    fw: FirmwareRecord,
    opening: Option<i64>,
    jitter_s: u32,
}

/// What a rule's caps allow now (`None`: no cap), counted in the database so they hold across
/// gateways: devices notified in the last 60 s, devices on their way.
fn caps_allowance(c: &mut DbConn, rule: &RuleRecord, policy: &RolloutPolicy, now: i64) -> Result<Option<u64>> {
    if policy.rate.is_none() && policy.max_in_flight.is_none() {
        return Ok(None);
    }
    lock_rule(c, rule.id)?;
    let of_rule = || upgrades::table.filter(upgrades::rule_id.eq(rule.id));
    let minute_ago = now - 60_000;
    let notified: i64 = of_rule()
        .filter(upgrades::notified_at.ge(minute_ago).or(upgrades::pushed_at.ge(minute_ago)))
        .count()
        .get_result(c)?;
    let on_the_way =
        [UpgradeStage::Notified, UpgradeStage::Checked, UpgradeStage::Downloading, UpgradeStage::Downloaded]
            .map(Stored);
    let in_flight: i64 = of_rule()
        .filter(upgrades::active.eq(true))
        .filter(upgrades::stage.eq_any(on_the_way).or(upgrades::pushed_at.is_not_null()))
        .count()
        .get_result(c)?;
    let succeeded: i64 = of_rule().filter(upgrades::stage.eq(Stored(UpgradeStage::Succeeded))).count().get_result(c)?;
    Ok(rollout::allowance(policy, succeeded, notified, in_flight))
}

/// Up to `limit` records due for a push: targets of pushing rules in the current wave or an
/// earlier one, whose window is open now in their time zone (not delivered in this opening,
/// or failed with their retry time come, or deferred with their time come), within the rule's
/// caps; and verifications whose push was not delivered. Each on an online device with no
/// push waiting for delivery.
fn due_pushes(c: &mut DbConn, now: i64, limit: usize) -> Result<Vec<DuePush>> {
    let mut out = Vec::new();
    let pushing: Vec<(RuleRecord, FirmwareRecord, String)> = rules::table
        .inner_join(firmware::table)
        .inner_join(products::table)
        .filter(rules::status.eq(Stored(RuleStatus::Pushing)))
        .order(rules::id)
        .select((RuleRecord::as_select(), FirmwareRecord::as_select(), products::product_key))
        .load(c)?;
    for (rule, fw, product_key) in pushing {
        let policy = rule.policy()?;
        let mut room = limit.saturating_sub(out.len());
        if room == 0 {
            return Ok(out);
        }
        if let Some(allowed) = caps_allowance(c, &rule, &policy, now)? {
            room = room.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        }
        let zones: Vec<Option<String>> = upgrades::table
            .filter(upgrades::rule_id.eq(rule.id))
            .filter(upgrades::active.eq(true))
            .select(upgrades::zone)
            .distinct()
            .load(c)?;
        for zone in zones {
            if room == 0 {
                break;
            }
            let Some(opening) = rule.opening(zone.as_deref(), now) else { continue };
            let first_push = upgrades::stage
                .eq_any([Stored(UpgradeStage::Pending), Stored(UpgradeStage::Notified), Stored(UpgradeStage::Failed)])
                .and(upgrades::last_opening.is_null().or(upgrades::last_opening.lt(opening.start_ms)))
                // A deferred target (pending with a time to wait) waits; a failure's back-off
                // belongs to the opening it failed in.
                .and(
                    upgrades::stage
                        .ne(Stored(UpgradeStage::Pending))
                        .or(upgrades::retry_at.is_null())
                        .or(upgrades::retry_at.le(now)),
                );
            let again = upgrades::stage
                .eq_any([Stored(UpgradeStage::Failed), Stored(UpgradeStage::Pending)])
                .and(upgrades::last_opening.eq(opening.start_ms))
                .and(upgrades::retry_at.le(now));
            let mut q = upgrades::table
                .inner_join(devices::table)
                .filter(upgrades::rule_id.eq(rule.id))
                .filter(upgrades::active.eq(true))
                .filter(upgrades::pushed_at.is_null())
                .filter(upgrades::wave.le(rule.current_wave.unwrap_or(i64::MAX)))
                .filter(first_push.or(again))
                .filter(devices::online.eq(true))
                .into_boxed();
            q = match &zone {
                Some(z) => q.filter(upgrades::zone.eq(z.clone())),
                None => q.filter(upgrades::zone.is_null()),
            };
            let rows: Vec<(i64, Option<String>)> =
                q.order(upgrades::id).limit(room as i64).select((upgrades::id, devices::did)).load(c)?;
            room = room.saturating_sub(rows.len());
            for (id, did) in rows {
                if let Some(did) = did {
                    out.push(DuePush {
                        id,
                        did,
                        product_key: product_key.clone(),
                        fw: fw.clone(),
                        opening: Some(opening.start_ms),
                        jitter_s: policy.jitter_s,
                    });
                }
            }
        }
    }
    let room = limit.saturating_sub(out.len());
    if room > 0 {
        let rows: Vec<(i64, Option<String>, FirmwareRecord, String)> = upgrades::table
            .inner_join(devices::table)
            .inner_join(firmware::table.inner_join(products::table))
            .filter(upgrades::kind.eq(Stored(RecordKind::Verification)))
            .filter(upgrades::active.eq(true))
            .filter(upgrades::stage.eq(Stored(UpgradeStage::Pending)))
            .filter(upgrades::pushed_at.is_null())
            .filter(upgrades::deadline_at.gt(now))
            .filter(devices::online.eq(true))
            .order(upgrades::id)
            .limit(room as i64)
            .select((upgrades::id, devices::did, FirmwareRecord::as_select(), products::product_key))
            .load(c)?;
        for (id, did, fw, product_key) in rows {
            if let Some(did) = did {
                out.push(DuePush { id, did, product_key, fw, opening: None, jitter_s: 0 });
            }
        }
    }
    Ok(out)
}

/// Marks due records sent (each through the state machine, so a record another gateway
/// took meanwhile is skipped) and returns the pushes to make. A push delayed by jitter gets
/// its delivery deadline counted from when it will go out.
fn claim(c: &mut DbConn, now: i64, limit: usize, delivery: i64) -> Result<Vec<Claim>> {
    use rand::Rng;
    let due = due_pushes(c, now, limit)?;
    let ids: Vec<i64> = due.iter().map(|d| d.id).collect();
    // Their locks first, in one order (`devices::locks`): a check batch on the same records
    // waits for this claim instead of deadlocking with it.
    crate::devices::locks::lock_upgrades_in_order(c, &ids, &[])?;
    let mut items: std::collections::HashMap<i64, crate::upgrades::Loaded> =
        load(c, &ids)?.into_iter().map(|i| (i.record.id, i)).collect();
    let mut rng = rand::rng();
    let mut out = Vec::new();
    for d in due {
        let Some(item) = items.remove(&d.id) else { continue };
        let delay_ms = if d.jitter_s == 0 { 0 } else { rng.random_range(0..=i64::from(d.jitter_s) * 1000) };
        if apply(c, &item, &Event::PushSent, now, delivery + delay_ms)? == Applied::Changed {
            let notice = notice(d.did, d.product_key, &d.fw, d.id, d.opening);
            out.push(Claim { upgrade_id: d.id, notice, delay_ms });
        }
    }
    Ok(out)
}

impl Domain {
    /// `POST /rules/{id}/start`: verified firmware, both confirmations, no overlap.
    pub async fn start_rule(&self, who: &Authorized<Push>, id: i64, req: StartRuleRequest) -> Result<RuleStarted> {
        for (given, field) in [(req.confirm_stable, "confirm_stable"), (req.accept_terms, "accept_terms")] {
            if !given {
                return Err(DomainError::field(
                    ErrorCode::ConfirmationRequired,
                    field,
                    format!("`{field}` must be true to start pushing"),
                ));
            }
        }
        let now = self.clock.now_ms();
        let (tenant_id, cfg) = (who.tenant_id(), self.settings.series_rules);
        let delivery = self.settings.delivery_timeout_ms;
        self.db
            .write(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                lock_product(c, rule.product_id)?;
                status::next(rule.status(), Action::Start).map_err(|m| wrong_status(&rule, m))?;
                if !fw.verified {
                    return Err(DomainError::new(
                        ErrorCode::FirmwareNotVerified,
                        "verify the firmware on a test device before pushing it to a fleet",
                    ));
                }
                if rule.period().is_over(crate::clock::from_ms(now)) {
                    return Err(DomainError::new(
                        ErrorCode::RulePeriodOver,
                        format!("the period ended on {}; extend period.end first", rule.period_end),
                    ));
                }
                let (overlap, rule_ids) = start_overlap(c, &fw, &rule, cfg)?;
                if overlap > 0 {
                    return Err(DomainError::with_details(
                        ErrorCode::RuleOverlap,
                        format!(
                            "{overlap} target devices are already pushed the same firmware series by rule(s) {}",
                            rule_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                        ),
                        serde_json::json!({ "rule_ids": rule_ids, "devices": overlap }),
                    ));
                }
                if rule.status() == RuleStatus::Stopped {
                    let policy = rule.policy()?;
                    let ctx = Context {
                        now,
                        fw_type: fw.fw_type(),
                        policy: &policy,
                        opening: None,
                        delivery_timeout_ms: delivery,
                    };
                    requeue_rule(c, rule.id, &ctx)?;
                }
                let first_start = rule.status() == RuleStatus::NotStarted;
                take_targets(c, &rule, &fw, now)?;
                if first_start {
                    assign_waves(c, &rule, now)?;
                }
                let open: i64 = upgrades::table
                    .filter(upgrades::rule_id.eq(rule.id))
                    .filter(upgrades::active.eq(true))
                    .count()
                    .get_result(c)?;
                if open == 0 {
                    return Err(DomainError::new(
                        ErrorCode::RuleNoTargets,
                        "no target device is left to push to: every target succeeded or none matches now",
                    ));
                }
                set_status(c, &rule, Action::Start, now)?;
                let targets: i64 = upgrades::table.filter(upgrades::rule_id.eq(rule.id)).count().get_result(c)?;
                let from_versions: Vec<Option<String>> = upgrades::table
                    .filter(upgrades::rule_id.eq(rule.id))
                    .select(upgrades::from_version)
                    .distinct()
                    .load(c)?;
                let mut from_versions: Vec<String> = from_versions.into_iter().flatten().collect();
                from_versions.sort();
                Ok(RuleStarted {
                    request_id: rule.id,
                    status: RuleStatus::Pushing,
                    target_devices: targets,
                    from_versions,
                    to_version: firmware_version_label(&fw),
                    period: PeriodDto { start: rule.period_start.clone(), end: rule.period_end.clone() },
                    daily_window: DailyWindow {
                        start_hour: rule.window().start_hour,
                        end_hour: rule.window().end_hour,
                    },
                })
            })
            .await
    }

    /// `POST /rules/{id}/stop`: no more pushes or offers until started again.
    pub async fn stop_rule(&self, who: &Authorized<Push>, id: i64) -> Result<ota_wire::rules::RuleView> {
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        self.db
            .write(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                set_status(c, &rule, Action::Stop, now).map(|_| ())
            })
            .await?;
        self.rule_of_tenant(tenant_id, id).await
    }

    /// One scheduler round (see the module doc): time-driven events, rule completion, then
    /// up to `limit` pushes, `spacing` apart. Every gateway runs it; record revisions keep them
    /// apart. A process without a gateway attached pushes nothing.
    pub async fn push_round(&self, limit: usize, spacing: Duration) -> Result<PushRound> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let due = self
            .db
            .write(move |c| {
                let due = process_due(c, now, DUE_PER_ROUND, delivery)?;
                settle(c, now, delivery)?;
                Ok(due)
            })
            .await?;
        let mut round = PushRound { due, ..PushRound::default() };
        let Some(notifier) = self.notifier.get() else {
            return Ok(round);
        };
        if limit == 0 {
            return Ok(round);
        }
        let claims = self.db.write(move |c| claim(c, now, limit, delivery)).await?;
        round.claimed = claims.len();
        let mut refused = Vec::new();
        let (delayed, claims): (Vec<Claim>, Vec<Claim>) = claims.into_iter().partition(|c| c.delay_ms > 0);
        for claim in delayed {
            // Jitter: sent later, on its own; a refusal is recorded then.
            let (domain, notifier) = (self.clone(), notifier.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(claim.delay_ms.unsigned_abs())).await;
                if let Err(e) = notifier.notify(claim.notice).await {
                    let event = Event::PushRefused { reason: format!("{e:#}") };
                    let _ = domain.record_events(vec![RecordEvent { upgrade_id: claim.upgrade_id, event }]).await;
                }
            });
            round.notified += 1;
        }
        for (i, claim) in claims.into_iter().enumerate() {
            if i > 0 && !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
            match notifier.notify(claim.notice).await {
                Ok(()) => round.notified += 1,
                Err(e) => {
                    round.failed += 1;
                    let reason = format!("{e:#}");
                    refused.push(RecordEvent { upgrade_id: claim.upgrade_id, event: Event::PushRefused { reason } });
                }
            }
        }
        self.record_events(refused).await?;
        Ok(round)
    }
}
