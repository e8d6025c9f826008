//! Per-device upgrade records: their storage, the one writer of their state machine
//! ([`crate::lifecycle`]), and what device checks and downloads do to them.
//!
//! A record follows one device towards one firmware for a verification or a push rule.
//! Every change of its stage goes through [`apply`]: load the record, ask
//! [`lifecycle::transition`] for the change an event makes, and store it conditionally on the
//! record's `rev`, so two gateways acting on one record at once cannot both win; the loser
//! reads the record again and asks again.
//!
//! - [`check`]: what a device check answers and records (versions, success, the offer);
//! - [`check_writer`]: the writes of device checks, in batches answered after their commit;
//! - [`downloads`]: images served to devices, and the end of each download;
//! - [`events`]: events gateways report in batches (deliveries, download ends) and the
//!   scheduler's time-driven events (timeouts, deadlines);
//! - [`ota_state`]: per-device boot tracking and the MCU image served last (the echo rule).

pub mod check;
pub mod check_writer;
pub mod downloads;
pub mod events;
pub mod ota_state;
pub mod writer;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{AttemptView, FailureView, FirmwareType, PushMethod, UpgradeStage};
use ota_wire::rules::RolloutPolicy;

use crate::db::{DbConn, last_insert_id};
use crate::devices::DeviceRecord;
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{self, AttemptEntry, Change, Context, Event, Failure, RecordKind, RecordState, Skip};
use crate::rules::RuleRecord;
use crate::schema::{firmware, rules, upgrades};
use crate::stored::Stored;
use crate::upgrade::{Candidate, Report};

pub use check::{Check, CheckAuth, NoOffer, Offer};
pub use check_writer::CheckWriter;
pub use events::RecordEvent;
pub use writer::RecordEventWriter;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = upgrades)]
pub struct UpgradeRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub device_id: i64,
    pub firmware_id: i64,
    pub kind: Stored<RecordKind>,
    pub active: bool,
    pub stage: Stored<UpgradeStage>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub reason: Option<String>,
    pub notified_at: Option<i64>,
    pub checked_at: Option<i64>,
    pub download_started_at: Option<i64>,
    pub downloaded_at: Option<i64>,
    pub succeeded_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub deadline_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub rule_id: Option<i64>,
    pub last_opening: Option<i64>,
    pub attempt: i64,
    pub failure: Option<Stored<Failure>>,
    pub due_at: Option<i64>,
    pub retry_at: Option<i64>,
    pub pushed_at: Option<i64>,
    pub download_node: Option<String>,
    pub history: String,
    pub rev: i64,
    /// A rule's wave (0 the canary).
    pub wave: i64,
    /// The time zone the rule's window runs in for this device (`None`: UTC).
    pub zone: Option<String>,
}

impl UpgradeRecord {
    pub fn stage(&self) -> UpgradeStage {
        self.stage.get()
    }

    pub fn kind(&self) -> RecordKind {
        self.kind.get()
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure.map(Stored::get)
    }

    pub fn failure_view(&self) -> Option<FailureView> {
        self.failure().map(Failure::view)
    }

    /// What the state machine reads.
    pub fn state(&self) -> RecordState {
        RecordState {
            kind: self.kind(),
            stage: self.stage(),
            active: self.active,
            attempt: self.attempt,
            last_opening: self.last_opening,
            pushed_at: self.pushed_at,
            notified_at: self.notified_at,
            deadline_at: self.deadline_at,
            downloaded_at: self.downloaded_at,
            failure: self.failure(),
        }
    }

    /// The finished attempts; an unreadable history is an error, never an empty list.
    pub fn history(&self) -> Result<Vec<AttemptEntry>> {
        serde_json::from_str(&self.history).map_err(|e| {
            DomainError::Internal(anyhow::anyhow!("upgrade record {} has an unreadable history: {e}", self.id))
        })
    }

    pub fn attempts_view(&self) -> Result<Vec<AttemptView>> {
        Ok(self.history()?.iter().map(AttemptEntry::view).collect())
    }

    pub fn times(&self) -> ota_wire::dto::UpgradeTimes {
        use crate::clock::from_ms;
        ota_wire::dto::UpgradeTimes {
            notified_at: self.notified_at.map(from_ms),
            checked_at: self.checked_at.map(from_ms),
            download_started_at: self.download_started_at.map(from_ms),
            downloaded_at: self.downloaded_at.map(from_ms),
            succeeded_at: self.succeeded_at.map(from_ms),
            failed_at: self.failed_at.map(from_ms),
        }
    }
}

/// A record with what its transitions need: the firmware's type and, for a rule's target,
/// the rule (its policy and window).
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub record: UpgradeRecord,
    pub fw_type: FirmwareType,
    pub rule: Option<RuleRecord>,
    pub policy: RolloutPolicy,
}

impl Loaded {
    /// The context of an event at `now`.
    pub fn context(&self, now: i64, delivery_timeout_ms: i64) -> Context<'_> {
        Context {
            now,
            fw_type: self.fw_type,
            policy: &self.policy,
            opening: self
                .rule
                .as_ref()
                .and_then(|r| r.window_opening(self.record.zone.as_deref(), now))
                .map(|o| o.start_ms),
            delivery_timeout_ms,
        }
    }
}

fn loaded(rows: Vec<(UpgradeRecord, Stored<FirmwareType>, Option<RuleRecord>)>) -> Result<Vec<Loaded>> {
    rows.into_iter()
        .map(|(record, fw_type, rule)| {
            let policy = match &rule {
                Some(r) => r.policy()?,
                None => RolloutPolicy::default(),
            };
            Ok(Loaded { record, fw_type: fw_type.get(), rule, policy })
        })
        .collect()
}

/// Records by id, with their firmware type and rule.
pub(crate) fn load(c: &mut DbConn, ids: &[i64]) -> Result<Vec<Loaded>> {
    let rows = upgrades::table
        .inner_join(firmware::table)
        .left_join(rules::table)
        .filter(upgrades::id.eq_any(ids))
        .select((UpgradeRecord::as_select(), firmware::fw_type, Option::<RuleRecord>::as_select()))
        .load(c)?;
    loaded(rows)
}

/// The columns a [`Change`] sets (the revision is bumped beside them).
#[derive(AsChangeset)]
#[diesel(table_name = upgrades)]
struct Columns {
    stage: Option<Stored<UpgradeStage>>,
    active: Option<bool>,
    reason: Option<Option<String>>,
    failure: Option<Option<Stored<Failure>>>,
    notified_at: Option<Option<i64>>,
    checked_at: Option<Option<i64>>,
    download_started_at: Option<Option<i64>>,
    downloaded_at: Option<Option<i64>>,
    succeeded_at: Option<Option<i64>>,
    failed_at: Option<Option<i64>>,
    confirmed_at: Option<Option<i64>>,
    due_at: Option<Option<i64>>,
    retry_at: Option<Option<i64>>,
    pushed_at: Option<Option<i64>>,
    last_opening: Option<Option<i64>>,
    attempt: Option<i64>,
    download_node: Option<Option<String>>,
    history: Option<String>,
    updated_at: i64,
}

impl Columns {
    fn of(change: Change, history: Option<String>, now: i64) -> Columns {
        Columns {
            stage: change.stage.map(Stored),
            active: change.active,
            reason: change.reason,
            failure: change.failure.map(|f| f.map(Stored)),
            notified_at: change.notified_at,
            checked_at: change.checked_at,
            download_started_at: change.download_started_at,
            downloaded_at: change.downloaded_at,
            succeeded_at: change.succeeded_at,
            failed_at: change.failed_at,
            confirmed_at: change.confirmed_at,
            due_at: change.due_at,
            retry_at: change.retry_at,
            pushed_at: change.pushed_at,
            last_opening: change.last_opening,
            attempt: change.attempt,
            download_node: change.download_node,
            history,
            updated_at: now,
        }
    }
}

/// Stores a change made to `record` unless someone changed the record since it was read;
/// returns whether it was stored.
fn store(c: &mut DbConn, record: &UpgradeRecord, mut change: Change, now: i64) -> Result<bool> {
    let history = match change.ended.take() {
        Some(entry) => {
            let mut h = record.history()?;
            lifecycle::append_history(&mut h, entry);
            Some(serde_json::to_string(&h).map_err(|e| DomainError::Internal(e.into()))?)
        }
        None => None,
    };
    let verified = change.firmware_verified;
    let columns = Columns::of(change, history, now);
    let stored =
        diesel::update(upgrades::table.filter(upgrades::id.eq(record.id)).filter(upgrades::rev.eq(record.rev)))
            .set((columns, upgrades::rev.eq(record.rev + 1)))
            .execute(c)?;
    if stored == 1 && verified {
        diesel::update(firmware::table.find(record.firmware_id))
            .set((firmware::verified.eq(true), firmware::verified_at.eq(now), firmware::updated_at.eq(now)))
            .execute(c)?;
    }
    Ok(stored == 1)
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    Changed,
    Skipped(Skip),
    /// The record does not exist (deleted with its rule or device).
    Missing,
}

/// How often a change is tried again after another writer changed the record first.
const CONFLICT_RETRIES: usize = 5;

/// The only way a record's state changes: the transition `event` makes at `now`, stored
/// under the record's revision, read again and retried when another writer came first.
pub(crate) fn apply(
    c: &mut DbConn,
    item: &Loaded,
    event: &Event,
    now: i64,
    delivery_timeout_ms: i64,
) -> Result<Applied> {
    let mut current = item.clone();
    for _ in 0..CONFLICT_RETRIES {
        let change =
            match lifecycle::transition(&current.record.state(), event, &current.context(now, delivery_timeout_ms)) {
                Ok(change) => change,
                Err(skip) => return Ok(Applied::Skipped(skip)),
            };
        let observed = Observed::of(&current.record, event, &change);
        if store(c, &current.record, change, now)? {
            observed.record(&current.record, now);
            return Ok(Applied::Changed);
        }
        match load(c, &[current.record.id])?.pop() {
            Some(fresh) => current = fresh,
            None => return Ok(Applied::Missing),
        }
    }
    Err(DomainError::Internal(anyhow::anyhow!("upgrade record {} kept changing under event {event:?}", item.record.id)))
}

/// What a stored change means for the metrics (`crate::metrics`): the counters of the event
/// and the stage latencies it ends, from the record's timestamps before the change.
struct Observed {
    stage: Option<UpgradeStage>,
    counter: Option<&'static str>,
    delivered: bool,
    download_started: bool,
    downloaded: bool,
    succeeded: bool,
}

impl Observed {
    fn of(record: &UpgradeRecord, event: &Event, change: &Change) -> Observed {
        let before = record.stage();
        let stage = change.stage.filter(|s| *s != before);
        Observed {
            stage,
            counter: match event {
                Event::PushSent => Some(crate::metrics::PUSHES_SENT),
                Event::PushRefused { .. } => Some(crate::metrics::PUSHES_REFUSED),
                Event::Delivered { .. } if matches!(change.notified_at, Some(Some(_))) => {
                    Some(crate::metrics::PUSHES_DELIVERED)
                }
                _ => None,
            },
            delivered: matches!(event, Event::Delivered { .. }) && matches!(change.notified_at, Some(Some(_))),
            download_started: matches!(event, Event::DownloadStarted { .. }),
            downloaded: matches!(event, Event::DownloadCompleted) && stage == Some(UpgradeStage::Downloaded),
            succeeded: stage == Some(UpgradeStage::Succeeded),
        }
    }

    fn record(&self, record: &UpgradeRecord, now: i64) {
        use crate::metrics as m;
        if let Some(stage) = self.stage {
            metrics::counter!(m::STAGE_CHANGES, "stage" => stage.as_str()).increment(1);
        }
        if let Some(name) = self.counter {
            metrics::counter!(name).increment(1);
        }
        if self.delivered {
            m::observe_ms(m::PUSH_DELIVERY_SECONDS, record.pushed_at, now);
        }
        if self.download_started {
            m::observe_ms(m::OFFER_TO_DOWNLOAD_SECONDS, record.checked_at, now);
        }
        if self.downloaded {
            m::observe_ms(m::DOWNLOAD_SECONDS, record.download_started_at, now);
        }
        if self.succeeded {
            m::observe_ms(m::DOWNLOADED_TO_SUCCEEDED_SECONDS, record.downloaded_at, now);
        }
    }
}

/// [`apply`] by record id.
pub(crate) fn apply_to(c: &mut DbConn, id: i64, event: &Event, now: i64, delivery_timeout_ms: i64) -> Result<Applied> {
    match load(c, &[id])?.pop() {
        Some(item) => apply(c, &item, event, now, delivery_timeout_ms),
        None => Ok(Applied::Missing),
    }
}

pub(crate) fn firmware_version_label(fw: &FirmwareRecord) -> Option<String> {
    match fw.push_method() {
        PushMethod::V41 => fw.soft_version.clone(),
        PushMethod::V4 => fw.fid.map(|f| format!("fid {f}")),
        PushMethod::V1V3 => fw.fid.map(|f| format!("id {f}")),
    }
}

/// What the device runs for a target, in the same words as [`firmware_version_label`].
pub(crate) fn device_version_label(device: &DeviceRecord, method: PushMethod, fw_type: FirmwareType) -> Option<String> {
    let (_, sw, fid) = device.versions(fw_type);
    match method {
        PushMethod::V41 => sw.map(str::to_owned),
        PushMethod::V4 => fid.map(|f| format!("fid {f}")),
        PushMethod::V1V3 => device.legacy_firmware_id.map(|f| format!("id {f}")),
    }
}

pub(crate) fn report_of<'a>(device: &'a DeviceRecord, method: PushMethod, fw_type: FirmwareType) -> Report<'a> {
    let (hard, soft, fid) = device.versions(fw_type);
    let fid = if method == PushMethod::V1V3 { device.legacy_firmware_id } else { fid };
    Report { method, fw_type, hard, soft, fid }
}

pub(crate) fn candidate(fw: &FirmwareRecord, key: i64) -> Candidate<'_> {
    Candidate {
        key,
        method: fw.push_method(),
        fw_type: fw.fw_type(),
        hard: fw.hard_version.as_deref(),
        soft: fw.soft_version.as_deref(),
        fid: fw.fid,
    }
}

/// Inserts an open record in stage `pending`; fails with `UniqueViolation` when the firmware
/// already has an open verification.
pub(crate) fn insert_record(
    c: &mut DbConn,
    device: &DeviceRecord,
    fw: &FirmwareRecord,
    kind: RecordKind,
    deadline_at: i64,
    now: i64,
) -> Result<i64> {
    diesel::insert_into(upgrades::table)
        .values((
            upgrades::tenant_id.eq(device.tenant_id),
            upgrades::device_id.eq(device.id),
            upgrades::firmware_id.eq(fw.id),
            upgrades::kind.eq(Stored(kind)),
            upgrades::active.eq(true),
            upgrades::stage.eq(Stored(UpgradeStage::Pending)),
            upgrades::from_version.eq(device_version_label(device, fw.push_method(), fw.fw_type())),
            upgrades::to_version.eq(firmware_version_label(fw)),
            upgrades::deadline_at.eq(deadline_at),
            upgrades::due_at.eq(deadline_at),
            upgrades::created_at.eq(now),
            upgrades::updated_at.eq(now),
        ))
        .execute(c)?;
    last_insert_id(c)
}

pub(crate) fn not_found_upgrade() -> DomainError {
    DomainError::new(ErrorCode::VerificationNotFound, "this firmware has no verification")
}
