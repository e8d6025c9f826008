//! Starting, stopping and driving rules: the fleet scheduler.
//!
//! **Exactly once across gateways.** Every gateway process runs [`Domain::push_round`] on
//! the same database. A target is notified in a window opening only after its gateway *claims*
//! it: a conditional UPDATE that succeeds for one gateway only (`last_opening` older than this
//! opening and no live claim). The claim is a lease: when the push went out the target is
//! marked notified for the opening; if the gateway died first, the lease runs out and another
//! gateway claims and notifies it (at least once, never lost; a push that went out just
//! before the death may go out once more). Success is the record's single move to
//! `succeeded` in the device's check, whichever gateway answers it, so it counts once.
//!
//! **Pacing.** A round notifies at most `limit` targets, `spacing` apart; the gateway runs a
//! round a second, so a fleet is pushed at a steady rate per gateway, never in one burst.

use std::time::Duration;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, Scope, UpgradeStage};
use ota_wire::rules::{DailyWindow, Period as PeriodDto, RuleStarted, RuleStatus, StartRuleRequest};

use super::targets::{TargetFilter, start_overlap};
use super::{KIND_RULE, RuleRecord, find_rule, wrong_status};
use crate::Domain;
use crate::auth::Principal;
use crate::db::DbConn;
use crate::devices::DeviceRecord;
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::notify::PushNotice;
use crate::schema::{devices, firmware, products, rules, upgrades};
use crate::upgrades::{device_version_label, firmware_version_label};

/// How long a claim keeps other gateways off a target, by default.
pub const CLAIM_LEASE_MS: i64 = 30_000;
/// Device rows read per batch when a rule takes its targets.
const TAKE_BATCH: i64 = 5000;
/// Records per INSERT statement.
const INSERT_CHUNK: usize = 1000;

/// What one scheduler round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushRound {
    /// Targets claimed for notification in this round.
    pub claimed: usize,
    /// Pushes handed to the broker.
    pub notified: usize,
    /// Pushes that could not be sent (retried after the claim lease).
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
                        upgrades::kind.eq(KIND_RULE),
                        upgrades::active.eq(true),
                        upgrades::stage.eq(UpgradeStage::Pending.as_str()),
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

/// Completes pushing rules whose period is over or whose targets all succeeded.
/// `firmware_id`: only that firmware's rules (cheap reads); `None`: all.
pub(crate) fn settle(c: &mut DbConn, now: i64, firmware_id: Option<i64>) -> Result<()> {
    let mut q = rules::table.filter(rules::status.eq(RuleStatus::Pushing.as_str())).into_boxed();
    if let Some(id) = firmware_id {
        q = q.filter(rules::firmware_id.eq(id));
    }
    let pushing: Vec<RuleRecord> = q.select(RuleRecord::as_select()).load(c)?;
    for rule in pushing {
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
            close_at_period_end(c, rule.id, now)?;
        }
        diesel::update(rules::table.find(rule.id).filter(rules::status.eq(RuleStatus::Pushing.as_str())))
            .set((
                rules::status.eq(RuleStatus::Completed.as_str()),
                rules::completed_at.eq(now),
                rules::updated_at.eq(now),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// The period ended: targets that were reached and went silent expire; the rest close as
/// not succeeded with what stopped them.
fn close_at_period_end(c: &mut DbConn, rule_id: i64, now: i64) -> Result<()> {
    let open = || upgrades::table.filter(upgrades::rule_id.eq(rule_id)).filter(upgrades::active.eq(true));
    let reached = [UpgradeStage::Notified, UpgradeStage::Checked, UpgradeStage::Downloading, UpgradeStage::Downloaded]
        .map(UpgradeStage::as_str);
    diesel::update(open().filter(upgrades::stage.eq_any(reached)))
        .set((
            upgrades::stage.eq(UpgradeStage::Expired.as_str()),
            upgrades::failed_at.eq(now),
            upgrades::reason.eq("no report of the target version before the period ended"),
        ))
        .execute(c)?;
    diesel::update(open().filter(upgrades::stage.eq(UpgradeStage::Pending.as_str())))
        .set(upgrades::reason.eq("never online in a window opening of the period"))
        .execute(c)?;
    diesel::update(open())
        .set((upgrades::active.eq(false), upgrades::claim_until.eq(None::<i64>), upgrades::updated_at.eq(now)))
        .execute(c)?;
    Ok(())
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
        .filter(rules::status.eq(RuleStatus::Pushing.as_str()))
        .filter(firmware::push_method.eq(method.as_str()))
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
                upgrades::kind.eq(KIND_RULE),
                upgrades::active.eq(true),
                upgrades::stage.eq(UpgradeStage::Pending.as_str()),
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

/// One target claimed for notification.
struct Claim {
    upgrade_id: i64,
    opening: i64,
    notice: PushNotice,
}

/// Claims up to `limit` due targets of pushing rules whose window is open now.
fn claim(c: &mut DbConn, now: i64, limit: usize, lease_ms: i64) -> Result<Vec<Claim>> {
    let pushing: Vec<(RuleRecord, FirmwareRecord, String)> = rules::table
        .inner_join(firmware::table)
        .inner_join(products::table)
        .filter(rules::status.eq(RuleStatus::Pushing.as_str()))
        .order(rules::id)
        .select((RuleRecord::as_select(), FirmwareRecord::as_select(), products::product_key))
        .load(c)?;
    let mut out = Vec::new();
    for (rule, fw, product_key) in pushing {
        let Some(opening) = rule.opening(now) else { continue };
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        let due = || {
            upgrades::table
                .filter(upgrades::rule_id.eq(rule.id))
                .filter(upgrades::active.eq(true))
                .filter(upgrades::last_opening.is_null().or(upgrades::last_opening.lt(opening.start_ms)))
                .filter(upgrades::claim_until.is_null().or(upgrades::claim_until.lt(now)))
        };
        let candidates: Vec<(i64, Option<String>)> = due()
            .inner_join(devices::table)
            .filter(devices::online.eq(true))
            .filter(devices::did.is_not_null())
            .order(upgrades::id)
            .limit(room as i64)
            .select((upgrades::id, devices::did))
            .load(c)?;
        for (upgrade_id, did) in candidates {
            let Some(did) = did else { continue };
            let won = diesel::update(due().filter(upgrades::id.eq(upgrade_id)))
                .set(upgrades::claim_until.eq(now + lease_ms))
                .execute(c)?;
            if won == 1 {
                out.push(Claim {
                    upgrade_id,
                    opening: opening.start_ms,
                    notice: PushNotice {
                        did,
                        product_key: product_key.clone(),
                        method: fw.push_method(),
                        fw_type: fw.fw_type(),
                        upgrade_id,
                        firmware_id: fw.id,
                        fid: fw.fid,
                        hard_version: fw.hard_version.clone(),
                        soft_version: fw.soft_version.clone(),
                        file_name: fw.file_name.clone(),
                    },
                });
            }
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
                        rules::status.eq(RuleStatus::Pushing.as_str()),
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
                        rules::status.eq(RuleStatus::Stopped.as_str()),
                        rules::stopped_at.eq(now),
                        rules::updated_at.eq(now),
                    ))
                    .execute(c)?;
                Ok(())
            })
            .await?;
        self.get_rule(who, id).await
    }

    /// One scheduler round: completes rules that are done, then notifies up to `limit` due
    /// online targets, `spacing` apart. Every gateway runs it; claims keep them apart.
    pub async fn push_round(&self, limit: usize, spacing: Duration) -> Result<PushRound> {
        let now = self.clock.now_ms();
        let Some(notifier) = self.notifier.get() else {
            self.db.write(move |c| settle(c, now, None)).await?;
            return Ok(PushRound::default());
        };
        let lease = self.settings.claim_lease_ms;
        let claims = self
            .db
            .write(move |c| {
                settle(c, now, None)?;
                claim(c, now, limit, lease)
            })
            .await?;
        let mut round = PushRound { claimed: claims.len(), ..PushRound::default() };
        for (i, claim) in claims.into_iter().enumerate() {
            if i > 0 && !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
            let result = notifier.notify(claim.notice.clone()).await;
            let sent = result.is_ok();
            let failure = result.err().map(|e| format!("push failed: {e:#}"));
            let now = self.clock.now_ms();
            self.db.write(move |c| record_push(c, &claim, failure, now)).await?;
            if sent {
                round.notified += 1;
            } else {
                round.failed += 1;
            }
        }
        Ok(round)
    }
}

/// The push went out (the target is done for this opening) or could not (it is tried again
/// when the claim lease runs out).
fn record_push(c: &mut DbConn, claim: &Claim, failure: Option<String>, now: i64) -> Result<()> {
    let target = upgrades::table.find(claim.upgrade_id).filter(upgrades::active.eq(true));
    match failure {
        None => {
            diesel::update(target)
                .set((
                    upgrades::last_opening.eq(claim.opening),
                    upgrades::claim_until.eq(None::<i64>),
                    upgrades::notified_at.eq(now),
                    upgrades::stage.eq(UpgradeStage::Notified.as_str()),
                    upgrades::updated_at.eq(now),
                ))
                .execute(c)?;
        }
        Some(reason) => {
            diesel::update(target)
                .set((
                    upgrades::stage.eq(UpgradeStage::Failed.as_str()),
                    upgrades::reason.eq(reason),
                    upgrades::failed_at.eq(now),
                    upgrades::updated_at.eq(now),
                ))
                .execute(c)?;
        }
    }
    Ok(())
}
