//! Events that reach records from outside a device's request: what gateways report in
//! batches (a push delivered, a download ended), and the scheduler's time-driven events
//! (timeouts, deadlines, a dead gateway's downloads, a rule's period end or restart).

use std::collections::HashMap;

use diesel::prelude::*;
use ota_wire::dto::UpgradeStage;

use super::{Applied, Columns, apply, downloads::download_end, load};
use crate::Domain;
use crate::db::DbConn;
use crate::error::{DomainError, Result};
use crate::lifecycle::{self, Context, Event, RecordKind, RecordState};
use crate::schema::upgrades;
use crate::stored::Stored;

/// Records loaded per query.
const LOAD_CHUNK: usize = 500;

/// An event a gateway reports about one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEvent {
    pub upgrade_id: i64,
    pub event: Event,
}

/// Applies events in order, loading the records they name once.
pub(crate) fn apply_events(c: &mut DbConn, events: &[RecordEvent], now: i64, delivery: i64) -> Result<usize> {
    let mut ids: Vec<i64> = events.iter().map(|e| e.upgrade_id).collect();
    ids.sort_unstable();
    ids.dedup();
    // Their locks first, in one order (`devices::locks`).
    crate::devices::locks::lock_upgrades_in_order(c, &ids, &[])?;
    let mut items = HashMap::new();
    for chunk in ids.chunks(LOAD_CHUNK) {
        for item in load(c, chunk)? {
            items.insert(item.record.id, item);
        }
    }
    let mut changed = 0;
    for e in events {
        if let Some(item) = items.get(&e.upgrade_id)
            && apply(c, item, &e.event, now, delivery)? == Applied::Changed
        {
            changed += 1;
        }
    }
    Ok(changed)
}

impl Domain {
    /// Applies events gateways report (deliveries, download ends) in one transaction.
    pub async fn record_events(&self, events: Vec<RecordEvent>) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        self.db.write(move |c| apply_events(c, &events, now, delivery)).await
    }

    /// Records how a download ended: all `sent` bytes of `total`, or cut short.
    pub async fn finish_offer_download(
        &self,
        upgrade_id: i64,
        sent: u64,
        total: u64,
        error: Option<String>,
    ) -> Result<()> {
        let event = download_end(sent, total, error);
        self.record_events(vec![RecordEvent { upgrade_id, event }]).await.map(|_| ())
    }
}

/// Feeds [`Event::Due`] to up to `limit` records whose `due_at` passed; returns how many.
pub(crate) fn process_due(c: &mut DbConn, now: i64, limit: i64, delivery: i64) -> Result<usize> {
    let ids: Vec<i64> = upgrades::table
        .filter(upgrades::active.eq(true))
        .filter(upgrades::due_at.le(now))
        .order(upgrades::due_at)
        .limit(limit)
        .select(upgrades::id)
        .load(c)?;
    let events: Vec<RecordEvent> = ids.iter().map(|id| RecordEvent { upgrade_id: *id, event: Event::Due }).collect();
    apply_events(c, &events, now, delivery)?;
    Ok(ids.len())
}

/// A gateway died (or restarted): the downloads it was serving are cut.
pub(crate) fn cut_downloads_of(c: &mut DbConn, node: &str, now: i64, delivery: i64) -> Result<usize> {
    let ids: Vec<i64> = upgrades::table
        .filter(upgrades::download_node.eq(node))
        .filter(upgrades::stage.eq(Stored(UpgradeStage::Downloading)))
        .filter(upgrades::active.eq(true))
        .select(upgrades::id)
        .load(c)?;
    let reason = format!("the gateway serving the download ({node}) stopped");
    let events: Vec<RecordEvent> = ids
        .iter()
        .map(|id| RecordEvent { upgrade_id: *id, event: Event::DownloadCut { reason: reason.clone() } })
        .collect();
    apply_events(c, &events, now, delivery)
}

/// Applies `event` to every open record of rule `rule_id` in `stage` (with no attempt yet,
/// or with one) in one statement. Only for events whose change depends on nothing but the
/// stage and attempt class and ends no attempt (checked: such an event is refused here):
/// a rule of a million targets restarts or ends without a million round trips.
fn apply_to_class(
    c: &mut DbConn,
    rule_id: i64,
    stage: UpgradeStage,
    attempted: bool,
    event: &Event,
    ctx: &Context<'_>,
) -> Result<usize> {
    let representative = RecordState {
        kind: RecordKind::Rule,
        stage,
        active: true,
        attempt: i64::from(attempted),
        last_opening: None,
        pushed_at: None,
        notified_at: None,
        deadline_at: None,
        downloaded_at: None,
        failure: None,
    };
    let change = match lifecycle::transition(&representative, event, ctx) {
        Ok(change) => change,
        Err(_) => return Ok(0),
    };
    if change.ended.is_some() || change.firmware_verified {
        return Err(DomainError::Internal(anyhow::anyhow!(
            "{event:?} in {stage:?} cannot be applied to a class of records"
        )));
    }
    let columns = Columns::of(change, None, ctx.now);
    let base = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::active.eq(true))
        .filter(upgrades::stage.eq(Stored(stage)));
    let n = if attempted {
        diesel::update(base.filter(upgrades::attempt.gt(0)))
            .set((columns, upgrades::rev.eq(upgrades::rev + 1)))
            .execute(c)?
    } else {
        diesel::update(base.filter(upgrades::attempt.eq(0)))
            .set((columns, upgrades::rev.eq(upgrades::rev + 1)))
            .execute(c)?
    };
    Ok(n)
}

/// A stopped rule starts again: its undelivered and failed targets are queued afresh.
pub(crate) fn requeue_rule(c: &mut DbConn, rule_id: i64, ctx: &Context<'_>) -> Result<usize> {
    let mut n = 0;
    for stage in [UpgradeStage::Pending, UpgradeStage::Failed] {
        for attempted in [false, true] {
            n += apply_to_class(c, rule_id, stage, attempted, &Event::Requeued, ctx)?;
        }
    }
    Ok(n)
}

/// The rule's period ended: targets on their way expire (one by one: each ends an attempt),
/// the others close as they are.
pub(crate) fn end_rule_period(c: &mut DbConn, rule_id: i64, ctx: &Context<'_>, delivery: i64) -> Result<usize> {
    let in_flight =
        [UpgradeStage::Notified, UpgradeStage::Checked, UpgradeStage::Downloading, UpgradeStage::Downloaded]
            .map(Stored);
    let ids: Vec<i64> = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::active.eq(true))
        .filter(upgrades::stage.eq_any(in_flight))
        .select(upgrades::id)
        .load(c)?;
    let events: Vec<RecordEvent> =
        ids.iter().map(|id| RecordEvent { upgrade_id: *id, event: Event::PeriodEnded }).collect();
    let mut n = apply_events(c, &events, ctx.now, delivery)?;
    for stage in [UpgradeStage::Pending, UpgradeStage::Failed] {
        for attempted in [false, true] {
            n += apply_to_class(c, rule_id, stage, attempted, &Event::PeriodEnded, ctx)?;
        }
    }
    Ok(n)
}

/// A rule is cancelled: its targets not succeeded end `cancelled` (those on their way one by
/// one, their attempt ending; the rest in one statement per stage).
pub(crate) fn cancel_rule_targets(
    c: &mut DbConn,
    rule_id: i64,
    by: &str,
    ctx: &Context<'_>,
    delivery: i64,
) -> Result<usize> {
    let event = Event::Cancelled { by: by.to_owned() };
    let in_flight =
        [UpgradeStage::Notified, UpgradeStage::Checked, UpgradeStage::Downloading, UpgradeStage::Downloaded]
            .map(Stored);
    let ids: Vec<i64> = upgrades::table
        .filter(upgrades::rule_id.eq(rule_id))
        .filter(upgrades::active.eq(true))
        .filter(upgrades::stage.eq_any(in_flight))
        .select(upgrades::id)
        .load(c)?;
    let events: Vec<RecordEvent> = ids.iter().map(|id| RecordEvent { upgrade_id: *id, event: event.clone() }).collect();
    let mut n = apply_events(c, &events, ctx.now, delivery)?;
    for stage in [UpgradeStage::Pending, UpgradeStage::Failed] {
        for attempted in [false, true] {
            n += apply_to_class(c, rule_id, stage, attempted, &event, ctx)?;
        }
    }
    Ok(n)
}
