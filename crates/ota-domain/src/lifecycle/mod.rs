//! The state machine of an upgrade record: one pure function, [`transition`], decides every
//! change of a record's stage, stage times, failure, attempt and scheduling columns, given
//! the record's state, an event the server saw and the time. `upgrades::write` is the only
//! code that stores its result, so a stage cannot be set from anywhere else.
//!
//! A record follows one device towards one firmware, for a verification or a push rule:
//!
//! ```text
//!             push sent ─▶ (awaiting delivery) ─ delivered ─▶ notified
//!   pending ──────────────────────────────────────────────────────┤ offered (device check)
//!      ▲                                                          ▼
//!      │ requeued            checked ─ download started ─▶ downloading ─ complete ─▶ downloaded
//!      │                                                        │ cut                   │ target reported
//!   failed ◀── timeout (any of notified/checked/downloading/downloaded), cut, old version ┘
//!      │  rule: retried after the back-off (policy), or at the next window opening          ▼
//!      └─ verification: ends                                                          succeeded
//! ```
//!
//! - **Delivered, not published.** A push counts once the edge that holds the device's
//!   session has written it to the socket; until then the record stays where it was with
//!   `pushed_at` set. A push nobody delivers within the delivery timeout is not a
//!   notification: it is cleared and sent again when the device is next online.
//! - **Attempts** count per window opening: the opening's first delivered push (or the
//!   device's own check) is attempt 1, each retry after a recorded failure the next. A new
//!   opening starts again at 1, as the console re-pushes every day.
//! - **Timeouts** are per stage ([`StageTimeouts`]); the scheduler feeds [`Event::Due`] when a
//!   record's `due_at` passes. Verifications have one deadline instead.
//! - **Failures** are named by what the server sees ([`Failure`]): a timeout in a stage, a cut
//!   download, the old version reported after a complete download. A device never reports
//!   its own failures (an MD5 mismatch is silent).

use ota_wire::dto::{AttemptOutcome, AttemptView, FailureKind, FailureView, FirmwareType, UpgradeStage as Stage};
use ota_wire::rules::{RolloutPolicy, StageTimeouts};
use serde::{Deserialize, Serialize};

use crate::clock::from_ms;

/// At most this many finished attempts are kept per record.
pub const HISTORY_LIMIT: usize = 20;

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The console's step 2: one test device.
    Verification,
    /// One target of a push rule.
    Rule,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Verification => "verification",
            RecordKind::Rule => "rule",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "verification" => Some(RecordKind::Verification),
            "rule" => Some(RecordKind::Rule),
            _ => None,
        }
    }
}

/// Why an attempt failed, with the stage it failed in: every combination the machine makes.
/// Stored as `<kind>:<stage>` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    TimeoutNotified,
    TimeoutChecked,
    TimeoutDownloading,
    TimeoutDownloaded,
    DownloadCut,
    OldVersionReported,
    NotStable,
}

const FAILURES: [Failure; 7] = [
    Failure::TimeoutNotified,
    Failure::TimeoutChecked,
    Failure::TimeoutDownloading,
    Failure::TimeoutDownloaded,
    Failure::DownloadCut,
    Failure::OldVersionReported,
    Failure::NotStable,
];

impl Failure {
    pub fn kind(self) -> FailureKind {
        match self {
            Failure::TimeoutNotified
            | Failure::TimeoutChecked
            | Failure::TimeoutDownloading
            | Failure::TimeoutDownloaded => FailureKind::Timeout,
            Failure::DownloadCut => FailureKind::DownloadCut,
            Failure::OldVersionReported => FailureKind::OldVersionReported,
            Failure::NotStable => FailureKind::NotStable,
        }
    }

    /// The stage the record was in when it failed.
    pub fn stage(self) -> Stage {
        match self {
            Failure::TimeoutNotified => Stage::Notified,
            Failure::TimeoutChecked => Stage::Checked,
            Failure::TimeoutDownloading | Failure::DownloadCut => Stage::Downloading,
            Failure::TimeoutDownloaded | Failure::OldVersionReported => Stage::Downloaded,
            Failure::NotStable => Stage::Succeeded,
        }
    }

    /// A timeout in `stage`, for the stages that time out.
    pub fn timeout_in(stage: Stage) -> Option<Failure> {
        match stage {
            Stage::Notified => Some(Failure::TimeoutNotified),
            Stage::Checked => Some(Failure::TimeoutChecked),
            Stage::Downloading => Some(Failure::TimeoutDownloading),
            Stage::Downloaded => Some(Failure::TimeoutDownloaded),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::TimeoutNotified => "timeout:notified",
            Failure::TimeoutChecked => "timeout:checked",
            Failure::TimeoutDownloading => "timeout:downloading",
            Failure::TimeoutDownloaded => "timeout:downloaded",
            Failure::DownloadCut => "download_cut:downloading",
            Failure::OldVersionReported => "old_version_reported:downloaded",
            Failure::NotStable => "not_stable:succeeded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        FAILURES.into_iter().find(|f| f.as_str() == s)
    }

    pub fn view(self) -> FailureView {
        FailureView { kind: self.kind(), stage: self.stage() }
    }
}

/// One finished attempt, as kept in a record's history (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptEntry {
    pub attempt: i64,
    /// The window opening (its start, Unix ms) of a rule's attempt.
    pub opening: Option<i64>,
    pub outcome: AttemptOutcome,
    pub stage: Stage,
    pub failure: Option<FailureKind>,
    pub at: i64,
}

impl AttemptEntry {
    pub fn view(&self) -> AttemptView {
        AttemptView {
            attempt: self.attempt,
            opening: self.opening.map(from_ms),
            outcome: self.outcome,
            stage: self.stage,
            failure: self.failure,
            ended_at: from_ms(self.at),
        }
    }
}

/// What the machine reads of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    pub kind: RecordKind,
    pub stage: Stage,
    pub active: bool,
    pub attempt: i64,
    pub last_opening: Option<i64>,
    pub pushed_at: Option<i64>,
    pub notified_at: Option<i64>,
    /// A verification's deadline.
    pub deadline_at: Option<i64>,
    pub downloaded_at: Option<i64>,
    pub failure: Option<Failure>,
}

/// What else the machine needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: i64,
    pub fw_type: FirmwareType,
    /// The rule's policy (verifications use the defaults; only their deadline times out).
    pub policy: &'a RolloutPolicy,
    /// Start of the rule's window opening open now, if any.
    pub opening: Option<i64>,
    /// How long a push may wait for an edge to deliver it.
    pub delivery_timeout_ms: i64,
}

/// What the server saw happen to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduler (or a verification's start) handed a push to the broker.
    PushSent,
    /// The broker refused the push.
    PushRefused { reason: String },
    /// An edge wrote the push to the device's socket, in the rule's window opening `opening`.
    Delivered { opening: Option<i64> },
    /// A device check was answered with this record's image by gateway node `node` (where
    /// the download is expected: it holds one of that node's download slots until then).
    Offered { node: Option<String> },
    /// The device began fetching the image from gateway node `node`.
    DownloadStarted { node: String },
    /// The whole image was sent.
    DownloadCompleted,
    /// The download ended early (`reason` says how), or the gateway serving it died.
    DownloadCut { reason: String },
    /// The device reported a version of the record's target; `reached` when it is the target.
    /// (An MCU echo without a reboot proof is no report at all: see `upgrades`.)
    Reported { reached: bool, version: Option<String> },
    /// `due_at` passed: a delivery deadline, a stage timeout, a verification deadline.
    Due,
    /// The rule's period ended with the record still open.
    PeriodEnded,
    /// An operator ended it.
    Cancelled { by: String },
    /// The operator's verdict on a verification that succeeded.
    Confirmed { stable: bool },
    /// A stopped rule started again: undelivered and failed targets are queued afresh.
    Requeued,
    /// An operator took the device out of its rule.
    Excluded { by: String },
    /// The device asked while the gateway's download slots were full: it was answered "no
    /// update" and is pushed again after [`DEFER_MS`] (not a failure, not a new attempt).
    Deferred,
}

/// How long a deferred target waits before it is pushed again.
pub const DEFER_MS: i64 = 15_000;

/// The columns a transition changes; `None` leaves a column alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub stage: Option<Stage>,
    pub active: Option<bool>,
    pub reason: Option<Option<String>>,
    pub failure: Option<Option<Failure>>,
    pub notified_at: Option<Option<i64>>,
    pub checked_at: Option<Option<i64>>,
    pub download_started_at: Option<Option<i64>>,
    pub downloaded_at: Option<Option<i64>>,
    pub succeeded_at: Option<Option<i64>>,
    pub failed_at: Option<Option<i64>>,
    pub confirmed_at: Option<Option<i64>>,
    pub due_at: Option<Option<i64>>,
    pub retry_at: Option<Option<i64>>,
    pub pushed_at: Option<Option<i64>>,
    pub last_opening: Option<Option<i64>>,
    pub attempt: Option<i64>,
    pub download_node: Option<Option<String>>,
    /// An attempt ended: append it to the history.
    pub ended: Option<AttemptEntry>,
    /// The verification was confirmed stable: the firmware becomes verified.
    pub firmware_verified: bool,
}

/// Why an event changes nothing (for logs and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip(pub &'static str);

/// The stages a record passes through before it succeeds or fails.
pub fn in_flight(stage: Stage) -> bool {
    matches!(stage, Stage::Notified | Stage::Checked | Stage::Downloading | Stage::Downloaded)
}

/// When the next time-driven event of a record in `stage` is due.
fn next_due(state: &RecordState, stage: Stage, ctx: &Context<'_>) -> Option<i64> {
    match state.kind {
        RecordKind::Verification => {
            if stage.is_final() {
                None
            } else {
                state.deadline_at
            }
        }
        RecordKind::Rule => stage_timeout_ms(&ctx.policy.timeouts, stage, ctx.fw_type).map(|t| ctx.now + t),
    }
}

/// How long a record may stay in `stage`.
pub fn stage_timeout_ms(t: &StageTimeouts, stage: Stage, fw_type: FirmwareType) -> Option<i64> {
    let secs = match stage {
        Stage::Notified => t.notified_s,
        Stage::Checked => t.checked_s,
        Stage::Downloading => t.downloading_s,
        Stage::Downloaded => match fw_type {
            FirmwareType::Wifi => t.downloaded_wifi_s,
            FirmwareType::Mcu => t.downloaded_mcu_s,
        },
        _ => return None,
    };
    Some(i64::from(secs) * 1000)
}

/// The attempt number and opening of what starts now: the next attempt after a failure in
/// the same opening, attempt 1 in a new opening, and otherwise the attempt under way (a push
/// sent again after a missed delivery or a deferral is no new attempt).
fn start_attempt(state: &RecordState, ctx: &Context<'_>) -> (i64, Option<i64>) {
    let next = if state.stage == Stage::Failed { state.attempt + 1 } else { state.attempt.max(1) };
    match (state.kind, ctx.opening) {
        (RecordKind::Rule, Some(opening)) if state.last_opening == Some(opening) => (next, Some(opening)),
        (RecordKind::Rule, Some(opening)) => (1, Some(opening)),
        _ => (next, state.last_opening),
    }
}

/// The columns of an attempt that starts now, in `stage`.
fn new_attempt(state: &RecordState, ctx: &Context<'_>, stage: Stage) -> Change {
    let (attempt, opening) = start_attempt(state, ctx);
    Change {
        stage: Some(stage),
        attempt: Some(attempt),
        last_opening: Some(opening),
        notified_at: Some(None),
        checked_at: Some(None),
        download_started_at: Some(None),
        downloaded_at: Some(None),
        failed_at: Some(None),
        failure: Some(None),
        reason: Some(None),
        retry_at: Some(None),
        pushed_at: Some(None),
        due_at: Some(next_due(state, stage, ctx)),
        ..Change::default()
    }
}

fn ended(
    state: &RecordState,
    outcome: AttemptOutcome,
    stage: Stage,
    failure: Option<FailureKind>,
    now: i64,
) -> AttemptEntry {
    AttemptEntry { attempt: state.attempt.max(1), opening: state.last_opening, outcome, stage, failure, at: now }
}

/// The attempt failed. A rule's record stays open and is retried by its policy; a
/// verification ends.
fn fail(state: &RecordState, ctx: &Context<'_>, failure: Failure, reason: String) -> Change {
    let retry = &ctx.policy.retry;
    let (active, retry_at) = match state.kind {
        RecordKind::Verification => (Some(false), None),
        RecordKind::Rule if retry.within_opening && state.attempt < i64::from(retry.attempts) => {
            (None, Some(ctx.now + i64::from(retry.backoff_s) * 1000))
        }
        // The next window opening tries again.
        RecordKind::Rule => (None, None),
    };
    Change {
        stage: Some(Stage::Failed),
        active,
        failure: Some(Some(failure)),
        reason: Some(Some(reason)),
        failed_at: Some(Some(ctx.now)),
        due_at: Some(None),
        pushed_at: Some(None),
        retry_at: Some(retry_at),
        ended: Some(ended(state, AttemptOutcome::Failed, failure.stage(), Some(failure.kind()), ctx.now)),
        ..Change::default()
    }
}

/// What a record waits for in `stage`, for timeout reasons.
fn awaited(stage: Stage) -> &'static str {
    match stage {
        Stage::Notified => "no check or download after the push was delivered",
        Stage::Checked => "the download did not start after the image was offered",
        Stage::Downloading => "the download did not finish",
        _ => "no report of the target version after the download",
    }
}

/// The one writer's rule book: the change `event` makes to a record in `state`.
pub fn transition(state: &RecordState, event: &Event, ctx: &Context<'_>) -> Result<Change, Skip> {
    let now = ctx.now;
    let rule = state.kind == RecordKind::Rule;
    if !state.active {
        return match event {
            // V4 devices report right after the download, before its end is recorded: keep
            // the download time of a record that already succeeded.
            Event::DownloadCompleted if state.stage == Stage::Succeeded && state.downloaded_at.is_none() => {
                Ok(Change { downloaded_at: Some(Some(now)), ..Change::default() })
            }
            // ...and the push's acknowledgement can come after the report: date the push.
            Event::Delivered { .. } if state.stage == Stage::Succeeded && state.notified_at.is_none() => {
                Ok(Change { notified_at: Some(Some(now)), ..Change::default() })
            }
            _ => Err(Skip("the record is closed")),
        };
    }
    match event {
        Event::PushSent => {
            if state.pushed_at.is_some() {
                return Err(Skip("a push is already waiting for delivery"));
            }
            let pushable = match state.kind {
                RecordKind::Verification => state.stage == Stage::Pending,
                RecordKind::Rule => matches!(state.stage, Stage::Pending | Stage::Notified | Stage::Failed),
            };
            if !pushable {
                return Err(Skip("the device is past the push"));
            }
            let mut due = now + ctx.delivery_timeout_ms;
            if let (RecordKind::Verification, Some(deadline)) = (state.kind, state.deadline_at) {
                due = due.min(deadline);
            }
            Ok(Change { pushed_at: Some(Some(now)), due_at: Some(Some(due)), ..Change::default() })
        }
        Event::PushRefused { reason } => {
            if state.pushed_at.is_none() {
                return Err(Skip("no push is waiting for delivery"));
            }
            // It stays "sent" until its delivery deadline, which then clears it: the push is
            // tried again after that pause, not in a tight loop while the broker is down.
            Ok(Change { reason: Some(Some(format!("the push could not be sent: {reason}"))), ..Change::default() })
        }
        Event::Delivered { opening } => {
            let delivered_before = state.stage == Stage::Notified
                && state.pushed_at.is_none()
                && (!rule || state.last_opening == *opening);
            if delivered_before {
                return Err(Skip("already delivered"));
            }
            if !matches!(state.stage, Stage::Pending | Stage::Failed | Stage::Notified) {
                // The device reacted (checked, downloaded, even succeeded: a V4 device can
                // fetch and report before the push's send is written) before the
                // acknowledgement came: the push was delivered all the same.
                if state.notified_at.is_none() {
                    return Ok(Change { notified_at: Some(Some(now)), ..Change::default() });
                }
                return Err(Skip("the device is past the push"));
            }
            let ctx = Context { opening: *opening, ..*ctx };
            let mut change = new_attempt(state, &ctx, Stage::Notified);
            change.notified_at = Some(Some(now));
            Ok(change)
        }
        Event::Offered { node } => {
            let mut change = match state.stage {
                Stage::Pending | Stage::Failed => {
                    let mut change = new_attempt(state, ctx, Stage::Checked);
                    // A check while a push waits for its acknowledgement answers that push.
                    change.notified_at = Some(state.pushed_at);
                    change
                }
                Stage::Notified | Stage::Checked => Change {
                    stage: Some(Stage::Checked),
                    pushed_at: Some(None),
                    due_at: Some(next_due(state, Stage::Checked, ctx)),
                    ..Change::default()
                },
                _ => return Err(Skip("the record is past the offer")),
            };
            change.checked_at = Some(Some(now));
            if node.is_some() {
                change.download_node = Some(node.clone());
            }
            Ok(change)
        }
        Event::DownloadStarted { node } => {
            let mut change = match state.stage {
                // A URL from an earlier offer or push (V4 pushes carry it): a new attempt,
                // which answers a push waiting for its acknowledgement.
                Stage::Pending | Stage::Failed => {
                    let mut change = new_attempt(state, ctx, Stage::Downloading);
                    change.notified_at = Some(state.pushed_at);
                    change
                }
                Stage::Notified | Stage::Checked | Stage::Downloading | Stage::Downloaded => Change {
                    stage: Some(Stage::Downloading),
                    downloaded_at: Some(None),
                    pushed_at: Some(None),
                    due_at: Some(next_due(state, Stage::Downloading, ctx)),
                    ..Change::default()
                },
                _ => return Err(Skip("the record is past the download")),
            };
            change.download_started_at = Some(Some(now));
            change.download_node = Some(Some(node.clone()));
            Ok(change)
        }
        Event::DownloadCompleted => {
            if state.stage == Stage::Succeeded && state.downloaded_at.is_none() {
                return Ok(Change { downloaded_at: Some(Some(now)), ..Change::default() });
            }
            if state.stage != Stage::Downloading {
                return Err(Skip("no download is under way"));
            }
            Ok(Change {
                stage: Some(Stage::Downloaded),
                downloaded_at: Some(Some(now)),
                due_at: Some(next_due(state, Stage::Downloaded, ctx)),
                ..Change::default()
            })
        }
        Event::DownloadCut { reason } => {
            if state.stage != Stage::Downloading {
                return Err(Skip("no download is under way"));
            }
            Ok(fail(state, ctx, Failure::DownloadCut, reason.clone()))
        }
        Event::Reported { reached: true, .. } => {
            if state.stage == Stage::Succeeded {
                return Err(Skip("already succeeded"));
            }
            let reached = if state.stage == Stage::Failed {
                state.failure.map(Failure::stage).unwrap_or(Stage::Downloaded)
            } else {
                state.stage
            };
            Ok(Change {
                stage: Some(Stage::Succeeded),
                // A verification stays open for the operator's confirmation.
                active: rule.then_some(false),
                succeeded_at: Some(Some(now)),
                reason: Some(None),
                failure: Some(None),
                due_at: Some(None),
                retry_at: Some(None),
                pushed_at: Some(None),
                ended: Some(ended(state, AttemptOutcome::Succeeded, reached, None, now)),
                ..Change::default()
            })
        }
        Event::Reported { reached: false, version } => {
            if state.stage != Stage::Downloaded {
                return Err(Skip("an old version before a complete download is expected"));
            }
            let reported = version.as_deref().unwrap_or("another version");
            let reason = format!("the device reported {reported} after a complete download");
            Ok(fail(state, ctx, Failure::OldVersionReported, reason))
        }
        Event::Due => {
            if state.kind == RecordKind::Verification
                && state.deadline_at.is_some_and(|d| d <= now)
                && !state.stage.is_final()
            {
                return Ok(Change {
                    stage: Some(Stage::Expired),
                    active: Some(false),
                    failed_at: Some(Some(now)),
                    reason: Some(Some("no report of the target version before the deadline".into())),
                    due_at: Some(None),
                    pushed_at: Some(None),
                    ended: Some(ended(state, AttemptOutcome::Expired, state.stage, None, now)),
                    ..Change::default()
                });
            }
            if state.pushed_at.is_some() {
                return Ok(Change {
                    pushed_at: Some(None),
                    due_at: Some(next_due(state, state.stage, ctx)),
                    reason: Some(Some(
                        "the push was not delivered: no gateway held a live session of the device".into(),
                    )),
                    ..Change::default()
                });
            }
            match (state.kind, Failure::timeout_in(state.stage)) {
                (RecordKind::Rule, Some(failure)) => {
                    let limit = stage_timeout_ms(&ctx.policy.timeouts, state.stage, ctx.fw_type).unwrap_or(0) / 1000;
                    Ok(fail(state, ctx, failure, format!("{} within {limit} s", awaited(state.stage))))
                }
                _ => Ok(Change { due_at: Some(next_due(state, state.stage, ctx)), ..Change::default() }),
            }
        }
        Event::PeriodEnded => {
            if !rule {
                return Err(Skip("only rules have periods"));
            }
            let mut change = Change {
                active: Some(false),
                due_at: Some(None),
                retry_at: Some(None),
                pushed_at: Some(None),
                ..Change::default()
            };
            match state.stage {
                s if in_flight(s) => {
                    change.stage = Some(Stage::Expired);
                    change.failed_at = Some(Some(now));
                    change.reason = Some(Some("no report of the target version before the period ended".into()));
                    change.ended = Some(ended(state, AttemptOutcome::Expired, s, None, now));
                }
                Stage::Pending if state.attempt == 0 => {
                    change.reason = Some(Some("never online in a window opening of the period".into()));
                }
                _ => {}
            }
            Ok(change)
        }
        Event::Cancelled { by } => Ok(Change {
            stage: Some(Stage::Cancelled),
            active: Some(false),
            reason: Some(Some(format!("cancelled by {by}"))),
            due_at: Some(None),
            retry_at: Some(None),
            pushed_at: Some(None),
            ended: in_flight(state.stage).then(|| ended(state, AttemptOutcome::Cancelled, state.stage, None, now)),
            ..Change::default()
        }),
        Event::Excluded { by } => {
            if !rule || state.stage == Stage::Succeeded {
                return Err(Skip("only a rule's unfinished target is excluded"));
            }
            Ok(Change {
                stage: Some(Stage::Excluded),
                active: Some(false),
                reason: Some(Some(format!("excluded by {by}"))),
                due_at: Some(None),
                retry_at: Some(None),
                pushed_at: Some(None),
                ended: in_flight(state.stage).then(|| ended(state, AttemptOutcome::Excluded, state.stage, None, now)),
                ..Change::default()
            })
        }
        Event::Deferred => {
            if !rule || !matches!(state.stage, Stage::Pending | Stage::Notified | Stage::Failed) {
                return Err(Skip("only a target not yet offered is deferred"));
            }
            Ok(Change {
                stage: Some(Stage::Pending),
                pushed_at: Some(None),
                due_at: Some(None),
                retry_at: Some(Some(now + DEFER_MS)),
                reason: Some(Some("deferred: the gateway's download slots were full".into())),
                ..Change::default()
            })
        }
        Event::Confirmed { stable } => {
            if rule || state.stage != Stage::Succeeded {
                return Err(Skip("only a succeeded verification is confirmed"));
            }
            if *stable {
                Ok(Change {
                    confirmed_at: Some(Some(now)),
                    active: Some(false),
                    firmware_verified: true,
                    ..Change::default()
                })
            } else {
                let mut change =
                    fail(state, ctx, Failure::NotStable, "the operator found the firmware not stable".into());
                change.ended = None;
                Ok(change)
            }
        }
        Event::Requeued => {
            if !rule || !matches!(state.stage, Stage::Pending | Stage::Failed) {
                return Err(Skip("only undelivered and failed targets are queued again"));
            }
            Ok(Change {
                stage: Some(Stage::Pending),
                attempt: Some(0),
                last_opening: Some(None),
                retry_at: Some(None),
                pushed_at: Some(None),
                due_at: Some(None),
                failure: Some(None),
                reason: Some(None),
                failed_at: Some(None),
                ..Change::default()
            })
        }
    }
}

/// Appends an ended attempt to a history, keeping the last [`HISTORY_LIMIT`].
pub fn append_history(history: &mut Vec<AttemptEntry>, entry: AttemptEntry) {
    history.push(entry);
    if history.len() > HISTORY_LIMIT {
        let extra = history.len() - HISTORY_LIMIT;
        history.drain(..extra);
    }
}

// ------------------------------------------------------------------ the MCU echo

/// A type-1 check counts as a boot's first check when it comes this soon after provision.
pub const BOOT_WIFI_WINDOW_MS: i64 = 60_000;
/// The boot's type-2 check follows its type-1 check within this time (a Wi-Fi download and
/// flash may come between them).
pub const BOOT_MCU_WINDOW_MS: i64 = 20 * 60_000;

/// The boot sequence seen last: GAgent starts every boot with provision, then a type-1
/// check, then a type-2 check (`device-protocol.md#boot-sequence`). An hourly provision is
/// followed by no check, and a pushed check names one type only, so the three in this order
/// and within these windows are the boot's. The MCU check of that sequence carries the
/// version the MCU itself just gave GAgent over the serial link; any other type-2 check may
/// carry the `Soft-Version` of a download copied into RAM (the echo).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootTrack {
    pub provision_at: Option<i64>,
    pub wifi_check_at: Option<i64>,
    pub mcu_check_at: Option<i64>,
}

impl BootTrack {
    /// An MCU image is served: only a boot that *begins* after this proves anything about it,
    /// so the sequence starts over (ordered by events, not only by clock readings).
    pub fn served(self) -> BootTrack {
        BootTrack::default()
    }

    /// Provision: perhaps a boot, perhaps the hourly re-sync.
    pub fn provisioned(self, now: i64) -> BootTrack {
        BootTrack { provision_at: Some(now), wifi_check_at: None, mcu_check_at: None }
    }

    /// A check of `fw_type`; returns the new track and whether this is the boot's type-2
    /// check (the reboot proof).
    pub fn checked(self, fw_type: FirmwareType, now: i64) -> (BootTrack, bool) {
        match fw_type {
            FirmwareType::Wifi => {
                let first = self.wifi_check_at.is_none()
                    && self.provision_at.is_some_and(|p| now >= p && now - p <= BOOT_WIFI_WINDOW_MS);
                let track = if first { BootTrack { wifi_check_at: Some(now), ..self } } else { self };
                (track, false)
            }
            FirmwareType::Mcu => {
                let boot = self.mcu_check_at.is_none()
                    && self.wifi_check_at.is_some_and(|w| now >= w && now - w <= BOOT_MCU_WINDOW_MS);
                let track = if boot { BootTrack { mcu_check_at: Some(now), ..self } } else { self };
                (track, boot)
            }
        }
    }
}

/// The MCU image a device was served last (V4.1 only: its `Soft-Version` header is what
/// GAgent copies into RAM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McuServed {
    pub version: String,
    pub at: i64,
}

/// How to take a type-2 report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McuReport {
    /// What the MCU runs: store it, and let it decide success or failure.
    Trusted,
    /// Equal to a version served to the device with no reboot since: maybe GAgent's RAM copy
    /// of a download header, not what the MCU runs. Neither stored nor counted.
    Echo,
}

/// Classifies a V4.1 type-2 report of `reported`; `boot_check` from [`BootTrack::checked`] on
/// a track reset by [`BootTrack::served`] when the image was served, so a boot check is a
/// boot that began after the download.
pub fn mcu_report(served: Option<&McuServed>, reported: &str, boot_check: bool) -> McuReport {
    match served {
        Some(s) if s.version == reported && !boot_check => McuReport::Echo,
        _ => McuReport::Trusted,
    }
}

#[cfg(test)]
mod tests;
