//! The transition table: every stage × event, for rule targets and for verifications, then
//! the attempt, retry, delivery and echo rules one by one.

use ota_wire::dto::{AttemptOutcome, FailureKind, FirmwareType, UpgradeStage as Stage};
use ota_wire::rules::{RetryPolicy, RolloutPolicy};

use super::*;

const NOW: i64 = 1_000_000_000;
const OPENING: i64 = NOW - 3_600_000;
const DEADLINE: i64 = NOW + 60_000;

const STAGES: [Stage; 10] = [
    Stage::Pending,
    Stage::Notified,
    Stage::Checked,
    Stage::Downloading,
    Stage::Downloaded,
    Stage::Succeeded,
    Stage::Failed,
    Stage::Expired,
    Stage::Cancelled,
    Stage::Excluded,
];

fn policy() -> RolloutPolicy {
    RolloutPolicy::default()
}

fn ctx(p: &RolloutPolicy) -> Context<'_> {
    Context { now: NOW, fw_type: FirmwareType::Wifi, policy: p, opening: Some(OPENING), delivery_timeout_ms: 10_000 }
}

/// A record in `stage` as the machine would have left it.
fn state(kind: RecordKind, stage: Stage) -> RecordState {
    let active = !matches!(
        (kind, stage),
        (_, Stage::Expired | Stage::Cancelled | Stage::Excluded)
            | (RecordKind::Rule, Stage::Succeeded)
            | (RecordKind::Verification, Stage::Failed)
    );
    let reached = stage != Stage::Pending;
    RecordState {
        kind,
        stage,
        active,
        attempt: i64::from(reached),
        last_opening: (reached && kind == RecordKind::Rule).then_some(OPENING),
        pushed_at: None,
        notified_at: reached.then_some(NOW - 5000),
        deadline_at: (kind == RecordKind::Verification).then_some(DEADLINE),
        downloaded_at: matches!(stage, Stage::Downloaded | Stage::Succeeded).then_some(NOW - 1000),
        failure: (stage == Stage::Failed).then_some(Failure::DownloadCut),
    }
}

fn token(stage: Stage) -> &'static str {
    match stage {
        Stage::Pending => "P",
        Stage::Notified => "N",
        Stage::Checked => "C",
        Stage::Downloading => "DG",
        Stage::Downloaded => "DD",
        Stage::Succeeded => "S",
        Stage::Failed => "F",
        Stage::Expired => "E",
        Stage::Cancelled => "X",
        Stage::Excluded => "EX",
    }
}

/// `-`: skipped; `=`: a change that keeps the stage; else the stage it moves to.
fn outcome(state: &RecordState, event: &Event, c: &Context<'_>) -> String {
    match transition(state, event, c) {
        Err(_) => "-".into(),
        Ok(change) => match change.stage {
            None => "=".into(),
            Some(s) => token(s).into(),
        },
    }
}

fn events() -> Vec<(&'static str, Event)> {
    vec![
        ("push_sent", Event::PushSent),
        ("push_refused", Event::PushRefused { reason: "broker down".into() }),
        ("delivered", Event::Delivered { opening: Some(OPENING) }),
        ("offered", Event::Offered { node: None }),
        ("download_started", Event::DownloadStarted { node: "gw-a".into() }),
        ("download_completed", Event::DownloadCompleted),
        ("download_cut", Event::DownloadCut { reason: "sent 10 of 20 bytes".into() }),
        ("reported_target", Event::Reported { reached: true, version: Some("04020021".into()) }),
        ("reported_old", Event::Reported { reached: false, version: Some("04020006".into()) }),
        ("due", Event::Due),
        ("period_ended", Event::PeriodEnded),
        ("cancelled", Event::Cancelled { by: "ops".into() }),
        ("confirmed_stable", Event::Confirmed { stable: true }),
        ("confirmed_unstable", Event::Confirmed { stable: false }),
        ("requeued", Event::Requeued),
        ("excluded", Event::Excluded { by: "ops".into() }),
        ("deferred", Event::Deferred),
    ]
}

/// Expected outcomes per event, columns in the order of [`STAGES`]:
/// pending notified checked downloading downloaded succeeded failed expired cancelled excluded.
const RULE_TABLE: &[(&str, &str)] = &[
    ("push_sent", "= = - - - - = - - -"),
    ("push_refused", "- - - - - - - - - -"),
    ("delivered", "N - - - - - N - - -"),
    ("offered", "C C C - - - C - - -"),
    ("download_started", "DG DG DG DG DG - DG - - -"),
    ("download_completed", "- - - DD - - - - - -"),
    ("download_cut", "- - - F - - - - - -"),
    ("reported_target", "S S S S S - S - - -"),
    ("reported_old", "- - - - F - - - - -"),
    ("due", "= F F F F - = - - -"),
    ("period_ended", "= E E E E - = - - -"),
    ("cancelled", "X X X X X - X - - -"),
    ("confirmed_stable", "- - - - - - - - - -"),
    ("confirmed_unstable", "- - - - - - - - - -"),
    ("requeued", "P - - - - - P - - -"),
    ("excluded", "EX EX EX EX EX - EX - - -"),
    ("deferred", "P P - - - - P - - -"),
];

const VERIFICATION_TABLE: &[(&str, &str)] = &[
    ("push_sent", "= - - - - - - - - -"),
    ("push_refused", "- - - - - - - - - -"),
    ("delivered", "N - - - - - - - - -"),
    ("offered", "C C C - - - - - - -"),
    ("download_started", "DG DG DG DG DG - - - - -"),
    ("download_completed", "- - - DD - - - - - -"),
    ("download_cut", "- - - F - - - - - -"),
    ("reported_target", "S S S S S - - - - -"),
    ("reported_old", "- - - - F - - - - -"),
    ("due", "= = = = = = - - - -"),
    ("period_ended", "- - - - - - - - - -"),
    ("cancelled", "X X X X X X - - - -"),
    ("confirmed_stable", "- - - - - = - - - -"),
    ("confirmed_unstable", "- - - - - F - - - -"),
    ("requeued", "- - - - - - - - - -"),
    ("excluded", "- - - - - - - - - -"),
    ("deferred", "- - - - - - - - - -"),
];

fn check_table(kind: RecordKind, table: &[(&str, &str)]) {
    let p = policy();
    let c = ctx(&p);
    let events = events();
    assert_eq!(table.len(), events.len(), "every event has a row");
    let mut wrong = Vec::new();
    for ((name, expected), (event_name, event)) in table.iter().zip(&events) {
        assert_eq!(name, event_name, "rows follow the event list");
        let got: Vec<String> = STAGES.iter().map(|s| outcome(&state(kind, *s), event, &c)).collect();
        let got = got.join(" ");
        if got != *expected {
            wrong.push(format!("{name}: expected `{expected}`, got `{got}`"));
        }
    }
    assert!(wrong.is_empty(), "{kind:?} transitions differ:\n{}", wrong.join("\n"));
}

#[test]
fn rule_targets_every_stage_by_every_event() {
    check_table(RecordKind::Rule, RULE_TABLE);
}

#[test]
fn verifications_every_stage_by_every_event() {
    check_table(RecordKind::Verification, VERIFICATION_TABLE);
}

#[test]
fn a_push_waiting_for_delivery_is_refused_or_missed_without_moving_the_stage() {
    let p = policy();
    let c = ctx(&p);
    for stage in [Stage::Pending, Stage::Failed] {
        let waiting = RecordState { pushed_at: Some(NOW - 20_000), ..state(RecordKind::Rule, stage) };
        assert_eq!(transition(&waiting, &Event::PushSent, &c), Err(Skip("a push is already waiting for delivery")));

        let refused = transition(&waiting, &Event::PushRefused { reason: "broker down".into() }, &c).unwrap();
        assert_eq!(refused.stage, None);
        assert_eq!((refused.pushed_at, refused.due_at), (None, None), "tried again once its deadline clears it");
        assert_eq!(refused.reason, Some(Some("the push could not be sent: broker down".into())));

        let missed = transition(&waiting, &Event::Due, &c).unwrap();
        assert_eq!(missed.stage, None, "an undelivered push is no notification");
        assert_eq!(missed.pushed_at, Some(None));
        assert_eq!(missed.ended, None, "and no attempt");
        assert!(missed.reason.unwrap().unwrap().contains("not delivered"));
    }
}

#[test]
fn a_sent_push_is_due_after_the_delivery_timeout_or_the_verification_deadline() {
    let p = policy();
    let c = ctx(&p);
    let sent = transition(&state(RecordKind::Rule, Stage::Pending), &Event::PushSent, &c).unwrap();
    assert_eq!((sent.pushed_at, sent.due_at), (Some(Some(NOW)), Some(Some(NOW + 10_000))));
    let near = RecordState { deadline_at: Some(NOW + 3_000), ..state(RecordKind::Verification, Stage::Pending) };
    let sent = transition(&near, &Event::PushSent, &c).unwrap();
    assert_eq!(sent.due_at, Some(Some(NOW + 3_000)));
}

#[test]
fn attempts_count_per_opening_and_retries_follow_the_policy() {
    let p = RolloutPolicy { retry: RetryPolicy { attempts: 3, backoff_s: 120, within_opening: true }, ..policy() };
    let c = ctx(&p);
    // First delivery in an opening: attempt 1, whatever came before.
    let old =
        RecordState { attempt: 3, last_opening: Some(OPENING - 86_400_000), ..state(RecordKind::Rule, Stage::Failed) };
    let d = transition(&old, &Event::Delivered { opening: Some(OPENING) }, &c).unwrap();
    assert_eq!((d.attempt, d.last_opening), (Some(1), Some(Some(OPENING))));
    assert_eq!(d.notified_at, Some(Some(NOW)));
    assert_eq!((d.failure, d.failed_at, d.downloaded_at), (Some(None), Some(None), Some(None)));

    // Failures 1 and 2 are retried after the back-off; the third waits for the next opening.
    for (attempt, retry_at) in [(1, Some(NOW + 120_000)), (2, Some(NOW + 120_000)), (3, None)] {
        let s = RecordState { attempt, ..state(RecordKind::Rule, Stage::Downloading) };
        let f = transition(&s, &Event::DownloadCut { reason: "cut".into() }, &c).unwrap();
        assert_eq!(f.stage, Some(Stage::Failed));
        assert_eq!(f.retry_at, Some(retry_at), "after attempt {attempt}");
        assert_eq!(f.active, None, "a rule's failed target stays open");
        let e = f.ended.unwrap();
        assert_eq!(
            (e.attempt, e.outcome, e.stage, e.failure),
            (attempt, AttemptOutcome::Failed, Stage::Downloading, Some(FailureKind::DownloadCut))
        );
        assert_eq!(e.opening, Some(OPENING));
    }
    // A retry delivered in the same opening is the next attempt, not a second notification.
    let failed = RecordState { attempt: 1, ..state(RecordKind::Rule, Stage::Failed) };
    let d = transition(&failed, &Event::Delivered { opening: Some(OPENING) }, &c).unwrap();
    assert_eq!(d.attempt, Some(2));

    // The console's strict policy: every failure waits for the next opening.
    let strict = RolloutPolicy { retry: RetryPolicy { within_opening: false, ..p.retry }, ..p };
    let s = state(RecordKind::Rule, Stage::Downloading);
    let f = transition(&s, &Event::DownloadCut { reason: "cut".into() }, &ctx(&strict)).unwrap();
    assert_eq!(f.retry_at, Some(None));
}

#[test]
fn a_late_acknowledgement_still_dates_the_push() {
    let p = policy();
    let c = ctx(&p);
    // The device checked while the push waited for its acknowledgement: the check answers it.
    let waiting = RecordState { pushed_at: Some(NOW - 300), ..state(RecordKind::Rule, Stage::Pending) };
    let o = transition(&waiting, &Event::Offered { node: None }, &c).unwrap();
    assert_eq!((o.stage, o.notified_at, o.pushed_at), (Some(Stage::Checked), Some(Some(NOW - 300)), Some(None)));
    // The acknowledgement arriving after a check that did not date it.
    let checked = RecordState { notified_at: None, ..state(RecordKind::Rule, Stage::Checked) };
    let d = transition(&checked, &Event::Delivered { opening: Some(OPENING) }, &c).unwrap();
    assert_eq!(d, Change { notified_at: Some(Some(NOW)), ..Change::default() });
    // Even after the device succeeded (a closed rule record, a verification awaiting its
    // confirmation): the stage stays, only the push is dated, once.
    for kind in [RecordKind::Rule, RecordKind::Verification] {
        let succeeded = RecordState { notified_at: None, ..state(kind, Stage::Succeeded) };
        let d = transition(&succeeded, &Event::Delivered { opening: Some(OPENING) }, &c).unwrap();
        assert_eq!(d, Change { notified_at: Some(Some(NOW)), ..Change::default() }, "{kind:?}");
        let dated = state(kind, Stage::Succeeded);
        assert!(dated.notified_at.is_some());
        assert!(transition(&dated, &Event::Delivered { opening: Some(OPENING) }, &c).is_err(), "{kind:?}");
    }
}

#[test]
fn a_device_check_starts_an_attempt_of_its_own() {
    let p = policy();
    let c = ctx(&p);
    let fresh = state(RecordKind::Rule, Stage::Pending);
    let o = transition(&fresh, &Event::Offered { node: None }, &c).unwrap();
    assert_eq!((o.stage, o.attempt, o.last_opening), (Some(Stage::Checked), Some(1), Some(Some(OPENING))));
    assert_eq!(o.due_at, Some(Some(NOW + 60_000)));
    // After a push, the check continues the same attempt.
    let notified = state(RecordKind::Rule, Stage::Notified);
    let o = transition(&notified, &Event::Offered { node: None }, &c).unwrap();
    assert_eq!(o.attempt, None);
}

#[test]
fn timeouts_name_the_stage_and_use_its_limit() {
    let p = policy();
    for (stage, fw_type, failure, due) in [
        (Stage::Notified, FirmwareType::Wifi, Failure::TimeoutNotified, 120_000),
        (Stage::Checked, FirmwareType::Wifi, Failure::TimeoutChecked, 60_000),
        (Stage::Downloading, FirmwareType::Wifi, Failure::TimeoutDownloading, 600_000),
        (Stage::Downloaded, FirmwareType::Wifi, Failure::TimeoutDownloaded, 300_000),
        (Stage::Downloaded, FirmwareType::Mcu, Failure::TimeoutDownloaded, 1_800_000),
    ] {
        let c = Context { fw_type, ..ctx(&p) };
        assert_eq!(stage_timeout_ms(&p.timeouts, stage, fw_type), Some(due));
        let f = transition(&state(RecordKind::Rule, stage), &Event::Due, &c).unwrap();
        assert_eq!(f.failure, Some(Some(failure)));
        assert_eq!(failure.view().stage, stage);
        assert_eq!(failure.kind(), FailureKind::Timeout);
        let reason = f.reason.unwrap().unwrap();
        assert!(reason.ends_with(&format!("within {} s", due / 1000)), "{reason}");
    }
    // Entering a stage sets its deadline.
    let c = Context { fw_type: FirmwareType::Mcu, ..ctx(&p) };
    let done = transition(&state(RecordKind::Rule, Stage::Downloading), &Event::DownloadCompleted, &c).unwrap();
    assert_eq!(done.due_at, Some(Some(NOW + 1_800_000)));
}

#[test]
fn verifications_end_at_their_deadline_not_at_stage_timeouts() {
    let p = policy();
    let c = ctx(&p);
    let before = state(RecordKind::Verification, Stage::Downloaded);
    assert_eq!(transition(&before, &Event::Due, &c).unwrap().due_at, Some(Some(DEADLINE)));
    let after = RecordState { deadline_at: Some(NOW), ..before };
    let e = transition(&after, &Event::Due, &c).unwrap();
    assert_eq!((e.stage, e.active), (Some(Stage::Expired), Some(false)));
    assert_eq!(e.ended.unwrap().outcome, AttemptOutcome::Expired);
    // A failure ends a verification.
    let cut = transition(
        &state(RecordKind::Verification, Stage::Downloading),
        &Event::DownloadCut { reason: "x".into() },
        &c,
    );
    assert_eq!(cut.unwrap().active, Some(false));
}

#[test]
fn success_closes_a_target_and_keeps_a_verification_for_confirmation() {
    let p = policy();
    let c = ctx(&p);
    let ok = Event::Reported { reached: true, version: None };
    let rule = transition(&state(RecordKind::Rule, Stage::Downloaded), &ok, &c).unwrap();
    assert_eq!((rule.active, rule.succeeded_at), (Some(false), Some(Some(NOW))));
    let v = transition(&state(RecordKind::Verification, Stage::Downloaded), &ok, &c).unwrap();
    assert_eq!(v.active, None);
    let confirmed =
        transition(&state(RecordKind::Verification, Stage::Succeeded), &Event::Confirmed { stable: true }, &c);
    let confirmed = confirmed.unwrap();
    assert!(confirmed.firmware_verified);
    assert_eq!(confirmed.active, Some(false));
    // A success after a failure names the stage the failed attempt reached.
    let after_fail =
        RecordState { failure: Some(Failure::TimeoutDownloaded), ..state(RecordKind::Rule, Stage::Failed) };
    let s = transition(&after_fail, &ok, &c).unwrap();
    assert_eq!(s.ended.unwrap().stage, Stage::Downloaded);
}

#[test]
fn the_period_end_expires_reached_targets_and_leaves_the_rest_with_a_reason() {
    let p = policy();
    let c = ctx(&p);
    let never = transition(&state(RecordKind::Rule, Stage::Pending), &Event::PeriodEnded, &c).unwrap();
    assert_eq!((never.stage, never.active), (None, Some(false)));
    assert_eq!(never.reason, Some(Some("never online in a window opening of the period".into())));
    let reached = transition(&state(RecordKind::Rule, Stage::Checked), &Event::PeriodEnded, &c).unwrap();
    assert_eq!(reached.stage, Some(Stage::Expired));
    let failed = transition(&state(RecordKind::Rule, Stage::Failed), &Event::PeriodEnded, &c).unwrap();
    assert_eq!((failed.stage, failed.reason), (None, None), "a failed target keeps its failure");
}

#[test]
fn a_restarted_rule_queues_failed_targets_afresh() {
    let p = policy();
    let c = ctx(&p);
    let r = transition(&state(RecordKind::Rule, Stage::Failed), &Event::Requeued, &c).unwrap();
    assert_eq!(
        (r.stage, r.attempt, r.last_opening, r.failure),
        (Some(Stage::Pending), Some(0), Some(None), Some(None))
    );
}

#[test]
fn a_closed_record_only_takes_a_late_download_time() {
    let p = policy();
    let c = ctx(&p);
    let v4 = RecordState { downloaded_at: None, ..state(RecordKind::Rule, Stage::Succeeded) };
    let late = transition(&v4, &Event::DownloadCompleted, &c).unwrap();
    assert_eq!(late, Change { downloaded_at: Some(Some(NOW)), ..Change::default() });
}

#[test]
fn history_keeps_the_last_attempts() {
    let mut h = Vec::new();
    for i in 1..=25 {
        let e = AttemptEntry {
            attempt: i,
            opening: None,
            outcome: AttemptOutcome::Failed,
            stage: Stage::Notified,
            failure: Some(FailureKind::Timeout),
            at: i,
        };
        append_history(&mut h, e);
    }
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h.first().map(|e| e.attempt), Some(6));
    let json = serde_json::to_string(&h[0]).unwrap();
    assert_eq!(
        json,
        r#"{"attempt":6,"opening":null,"outcome":"failed","stage":"notified","failure":"timeout","at":6}"#
    );
    assert!(
        serde_json::from_str::<AttemptEntry>(
            r#"{"attempt":1,"opening":null,"outcome":"exploded","stage":"notified","failure":null,"at":1}"#
        )
        .is_err()
    );
}

#[test]
fn failures_and_kinds_round_trip_through_their_text() {
    for f in FAILURES {
        assert_eq!(Failure::parse(f.as_str()), Some(f));
        assert_eq!(f.as_str(), format!("{}:{}", f.kind().as_str(), f.stage().as_str()));
    }
    assert_eq!(Failure::parse("timeout:succeeded"), None);
    assert_eq!(RecordKind::parse("verification"), Some(RecordKind::Verification));
    assert_eq!(RecordKind::parse("Rule"), None);
}

// ------------------------------------------------------------------ the MCU echo

const T0: i64 = 5_000_000;

#[test]
fn boot_sequence_provision_then_wifi_then_mcu_check() {
    let t = BootTrack::default().provisioned(T0);
    let (t, proof) = t.checked(FirmwareType::Wifi, T0 + 2_000);
    assert!(!proof);
    let (t, proof) = t.checked(FirmwareType::Mcu, T0 + 3_000);
    assert!(proof, "provision → type 1 → type 2 is a boot");
    let (_, again) = t.checked(FirmwareType::Mcu, T0 + 4_000);
    assert!(!again, "only the boot's first type-2 check");
}

#[test]
fn no_boot_proof_without_the_whole_sequence() {
    // Hourly provision, then a pushed type-2 check: no type-1 check between.
    let t = BootTrack::default().provisioned(T0);
    assert!(!t.checked(FirmwareType::Mcu, T0 + 1_000).1);
    // A type-1 check long after provision is a pushed one, not the boot's.
    let (t, _) = BootTrack::default().provisioned(T0).checked(FirmwareType::Wifi, T0 + BOOT_WIFI_WINDOW_MS + 1);
    assert!(!t.checked(FirmwareType::Mcu, T0 + BOOT_WIFI_WINDOW_MS + 2).1);
    // A type-2 check long after the type-1 check.
    let (t, _) = BootTrack::default().provisioned(T0).checked(FirmwareType::Wifi, T0 + 1);
    assert!(!t.checked(FirmwareType::Mcu, T0 + 1 + BOOT_MCU_WINDOW_MS + 1).1);
    // A second type-1 check does not move the boot's.
    let (t, _) = BootTrack::default().provisioned(T0).checked(FirmwareType::Wifi, T0 + 1);
    let (t, _) = t.checked(FirmwareType::Wifi, T0 + 50_000);
    assert_eq!(t.wifi_check_at, Some(T0 + 1));
    // No provision at all.
    assert!(BootTrack::default().checked(FirmwareType::Wifi, T0).0.wifi_check_at.is_none());
}

#[test]
fn an_mcu_report_of_a_served_version_needs_a_reboot_after_the_download() {
    let served = McuServed { version: "00000004".into(), at: T0 };
    // A boot that began before the download: serving starts the sequence over.
    let (t, _) = BootTrack::default().provisioned(T0 - 10_000).served().checked(FirmwareType::Wifi, T0 + 1_000);
    let (_, boot) = t.checked(FirmwareType::Mcu, T0 + 2_000);
    assert!(!boot);
    assert_eq!(mcu_report(Some(&served), "00000004", boot), McuReport::Echo);
    // The echo in the same session: no boot.
    assert_eq!(mcu_report(Some(&served), "00000004", false), McuReport::Echo);
    // A boot after the download (the clock may even read the same millisecond).
    let after = BootTrack::default().provisioned(T0 - 10_000).served().provisioned(T0);
    let (after, _) = after.checked(FirmwareType::Wifi, T0);
    let (_, boot) = after.checked(FirmwareType::Mcu, T0);
    assert!(boot);
    assert_eq!(mcu_report(Some(&served), "00000004", boot), McuReport::Trusted);
    // An hourly provision after the download, then a pushed type-2 check: no proof.
    let hourly = BootTrack::default().served().provisioned(T0 + 3_600_000);
    let (_, boot) = hourly.checked(FirmwareType::Mcu, T0 + 3_601_000);
    assert_eq!(mcu_report(Some(&served), "00000004", boot), McuReport::Echo);
    // Other versions, and devices never served an MCU image, are what they say.
    assert_eq!(mcu_report(Some(&served), "00000003", false), McuReport::Trusted);
    assert_eq!(mcu_report(None, "00000004", false), McuReport::Trusted);
}
