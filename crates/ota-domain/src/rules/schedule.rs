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
//! **Pacing.** A round pushes at most `limit` records, `spacing` apart; the gateway runs a
//! round a second, so a fleet is pushed at a steady rate per gateway, never in one burst.

use std::time::Duration;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, Scope, UpgradeStage};
use ota_wire::rules::{DailyWindow, Period as PeriodDto, RuleStarted, RuleStatus, StartRuleRequest};

use super::targets::{TargetFilter, start_overlap};
use super::{RuleRecord, find_rule, wrong_status};
use crate::Domain;
use crate::auth::Principal;
use crate::db::DbConn;
use crate::devices::DeviceRecord;
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{Context, Event, RecordKind};
use crate::notify::PushNotice;
use crate::schema::{devices, firmware, products, rules, upgrades};
use crate::stored::Stored;
use crate::upgrades::events::{RecordEvent, end_rule_period, process_due, requeue_rule};
use crate::upgrades::{Applied, apply, device_version_label, firmware_version_label, load};

/// Device rows read per batch when a rule takes its targets.
const TAKE_BATCH: i64 = 5000;
/// Records per INSERT statement.
const INSERT_CHUNK: usize = 1000;
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

/// Inserts a record for every target of the rule that has none yet; returns how many.
fn take_targets(c: &mut DbConn, rule: &RuleRecord, fw: &FirmwareRecord, now: i64) -> Result<usize> {
    let filter = TargetFilter::of_rule(c, fw, rule)?;
    let to_version = firmware_version_label(fw);
    // A first start has nothing to skip; a restart skips the devices it already holds.
    let held: i64 = upgrades::table.filter(upgrades::rule_id.eq(rule.id)).count().get_result(c)?;
    let mut after = 0i64;
    let mut taken = 0;
    loop {
        let mut q = filter.targets().filter(devices::id.gt(after));
        if held > 0 {
            q = q.filter(diesel::dsl::not(
                devices::id.eq_any(upgrades::table.filter(upgrades::rule_id.eq(rule.id)).select(upgrades::device_id)),
            ));
        }
        let batch: Vec<DeviceRecord> =
            q.order(devices::id).limit(TAKE_BATCH).select(DeviceRecord::as_select()).load(c)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for chunk in batch.chunks(INSERT_CHUNK) {
            let rows: Vec<_> = chunk
                .iter()
                .map(|d| {
                    (
                        upgrades::tenant_id.eq(d.tenant_id),
                        upgrades::device_id.eq(d.id),
                        upgrades::firmware_id.eq(fw.id),
                        upgrades::kind.eq(Stored(RecordKind::Rule)),
                        upgrades::active.eq(true),
                        upgrades::stage.eq(Stored(UpgradeStage::Pending)),
                        upgrades::from_version.eq(device_version_label(d, fw.push_method(), fw.fw_type())),
                        upgrades::to_version.eq(to_version.clone()),
                        upgrades::rule_id.eq(rule.id),
                        upgrades::created_at.eq(now),
                        upgrades::updated_at.eq(now),
                    )
                })
                .collect();
            crate::on_backend!(c, diesel::insert_into(upgrades::table).values(&rows))?;
        }
        taken += batch.len();
    }
    Ok(taken)
}

/// Completes pushing rules whose period is over (its open targets close through the state
/// machine) or whose targets all succeeded. Runs in the scheduler round only: reads never
/// settle anything.
pub(crate) fn settle(c: &mut DbConn, now: i64, delivery: i64) -> Result<usize> {
    let pushing: Vec<(RuleRecord, Stored<FirmwareType>)> = rules::table
        .inner_join(firmware::table)
        .filter(rules::status.eq(Stored(RuleStatus::Pushing)))
        .select((RuleRecord::as_select(), firmware::fw_type))
        .load(c)?;
    let mut completed = 0;
    for (rule, fw_type) in pushing {
        let over = rule.period().is_over(crate::clock::from_ms(now));
        // Any open target? (Not a count: this runs every scheduler round.)
        let open = upgrades::table
            .filter(upgrades::rule_id.eq(rule.id))
            .filter(upgrades::active.eq(true))
            .select(upgrades::id)
            .first::<i64>(c)
            .optional()?
            .is_some();
        if !over && open {
            continue;
        }
        if over && open {
            let policy = rule.policy()?;
            let ctx =
                Context { now, fw_type: fw_type.get(), policy: &policy, opening: None, delivery_timeout_ms: delivery };
            end_rule_period(c, rule.id, &ctx, delivery)?;
        }
        completed += diesel::update(rules::table.find(rule.id).filter(rules::status.eq(Stored(RuleStatus::Pushing))))
            .set((
                rules::status.eq(Stored(RuleStatus::Completed)),
                rules::completed_at.eq(now),
                rules::updated_at.eq(now),
            ))
            .execute(c)?;
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
    let pushing: Vec<(RuleRecord, FirmwareRecord)> = rules::table
        .inner_join(firmware::table)
        .filter(rules::product_id.eq(device.product_id))
        .filter(rules::status.eq(Stored(RuleStatus::Pushing)))
        .filter(firmware::push_method.eq(Stored(method)))
        .select((RuleRecord::as_select(), FirmwareRecord::as_select()))
        .load(c)?;
    for (rule, fw) in &pushing {
        if method != PushMethod::V1V3 && fw.fw_type() != fw_type {
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
        diesel::insert_into(upgrades::table)
            .values((
                upgrades::tenant_id.eq(device.tenant_id),
                upgrades::device_id.eq(device.id),
                upgrades::firmware_id.eq(fw.id),
                upgrades::kind.eq(Stored(RecordKind::Rule)),
                upgrades::active.eq(true),
                upgrades::stage.eq(Stored(UpgradeStage::Pending)),
                upgrades::from_version.eq(device_version_label(device, fw.push_method(), fw.fw_type())),
                upgrades::to_version.eq(firmware_version_label(fw)),
                upgrades::rule_id.eq(rule.id),
                upgrades::created_at.eq(now),
                upgrades::updated_at.eq(now),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// A push to make: the record marked sent, and what the gateway needs to send it.
struct Claim {
    upgrade_id: i64,
    notice: PushNotice,
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

/// A record due for a push: its id, the device's did, the product key, the firmware and the
/// window opening.
type DuePush = (i64, String, String, FirmwareRecord, Option<i64>);

/// Up to `limit` records due for a push: targets of rules whose window is open now (not
/// delivered in this opening, or failed with their retry time come) and verifications whose
/// push was not delivered; each on an online device with no push waiting for delivery.
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
        let Some(opening) = rule.opening(now) else { continue };
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            return Ok(out);
        }
        let first_push = upgrades::stage
            .eq_any([Stored(UpgradeStage::Pending), Stored(UpgradeStage::Notified), Stored(UpgradeStage::Failed)])
            .and(upgrades::last_opening.is_null().or(upgrades::last_opening.lt(opening.start_ms)));
        let retry = upgrades::stage
            .eq(Stored(UpgradeStage::Failed))
            .and(upgrades::last_opening.eq(opening.start_ms))
            .and(upgrades::retry_at.le(now));
        let rows: Vec<(i64, Option<String>)> = upgrades::table
            .inner_join(devices::table)
            .filter(upgrades::rule_id.eq(rule.id))
            .filter(upgrades::active.eq(true))
            .filter(upgrades::pushed_at.is_null())
            .filter(first_push.or(retry))
            .filter(devices::online.eq(true))
            .order(upgrades::id)
            .limit(room as i64)
            .select((upgrades::id, devices::did))
            .load(c)?;
        for (id, did) in rows {
            if let Some(did) = did {
                out.push((id, did, product_key.clone(), fw.clone(), Some(opening.start_ms)));
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
        for (id, did, fw, pk) in rows {
            if let Some(did) = did {
                out.push((id, did, pk, fw, None));
            }
        }
    }
    Ok(out)
}

/// Marks due records sent (each through the state machine, so a record another gateway
/// took meanwhile is skipped) and returns the pushes to make.
fn claim(c: &mut DbConn, now: i64, limit: usize, delivery: i64) -> Result<Vec<Claim>> {
    let due = due_pushes(c, now, limit)?;
    let ids: Vec<i64> = due.iter().map(|d| d.0).collect();
    let mut items: std::collections::HashMap<i64, crate::upgrades::Loaded> =
        load(c, &ids)?.into_iter().map(|i| (i.record.id, i)).collect();
    let mut out = Vec::new();
    for (id, did, product_key, fw, opening) in due {
        let Some(item) = items.remove(&id) else { continue };
        if apply(c, &item, &Event::PushSent, now, delivery)? == Applied::Changed {
            out.push(Claim { upgrade_id: id, notice: notice(did, product_key, &fw, id, opening) });
        }
    }
    Ok(out)
}

impl Domain {
    /// `POST /rules/{id}/start`: verified firmware, both confirmations, no overlap.
    pub async fn start_rule(&self, who: &Principal, id: i64, req: StartRuleRequest) -> Result<RuleStarted> {
        who.require(Scope::Push)?;
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
        let (tenant_id, cfg) = (who.tenant_id, self.settings.series_rules);
        let delivery = self.settings.delivery_timeout_ms;
        self.db
            .write(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                lock_product(c, rule.product_id)?;
                match rule.status() {
                    RuleStatus::NotStarted | RuleStatus::Stopped => {}
                    RuleStatus::Pushing => return Err(wrong_status(&rule, "the rule is already pushing")),
                    RuleStatus::Completed => return Err(wrong_status(&rule, "a completed rule cannot start again")),
                }
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
                take_targets(c, &rule, &fw, now)?;
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
                diesel::update(rules::table.find(rule.id))
                    .set((
                        rules::status.eq(Stored(RuleStatus::Pushing)),
                        rules::started_at.eq(rule.started_at.unwrap_or(now)),
                        rules::stopped_at.eq(None::<i64>),
                        rules::updated_at.eq(now),
                    ))
                    .execute(c)?;
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
    pub async fn stop_rule(&self, who: &Principal, id: i64) -> Result<ota_wire::rules::RuleView> {
        who.require(Scope::Push)?;
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id;
        self.db
            .write(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                if rule.status() != RuleStatus::Pushing {
                    return Err(wrong_status(&rule, "only a pushing rule can be stopped"));
                }
                diesel::update(rules::table.find(rule.id))
                    .set((
                        rules::status.eq(Stored(RuleStatus::Stopped)),
                        rules::stopped_at.eq(now),
                        rules::updated_at.eq(now),
                    ))
                    .execute(c)?;
                Ok(())
            })
            .await?;
        self.get_rule(who, id).await
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
