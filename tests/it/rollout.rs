//! Rollout safety on a fake clock, with devices made through the domain's device-side calls
//! (as `rules.rs`): canary and waves, the minimum-finished rule, a soak time, advancing by
//! hand, pause / resume / cancel, rate and in-flight caps across two gateways (one dies),
//! windows in the devices' local time across a DST change, and every new endpoint's bad input.
//! The halt against a simulated fleet is in `rollout_fleet.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use ota_domain::Domain;
use ota_domain::lifecycle::Event;
use ota_domain::notify::{DeviceNotifier, PushNotice};
use ota_domain::upgrades::RecordEvent;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::rules::{Dev, Fleet, Recorder, rule_body};
use crate::support::*;

const OLD: &str = "04020006";
const NEW: &str = "04020021";

/// One scheduler round on `domain`, as a gateway's scheduler runs it.
async fn round_on(domain: &Domain) -> ota_domain::rules::schedule::PushRound {
    domain.push_round(10_000, Duration::ZERO).await.unwrap()
}

/// A fleet of `n` online devices on the old version, MACs `5CCF7F<tag><i:04X>`, and verified
/// firmware of the new one.
async fn fleet(tag: &str, n: usize) -> (Fleet, Recorder, BTreeMap<String, Dev>, i64) {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    let mut devs = BTreeMap::new();
    for i in 0..n {
        let mac = format!("5CCF7F{tag}{i:04X}");
        let dev = f.device(&mac, OLD, true).await;
        devs.insert(mac, dev);
    }
    let fw = f.firmware(NEW, true).await;
    (f, rec, devs, fw)
}

/// A rule for every device on the old version with `policy`, created (not started).
async fn rule_with(f: &Fleet, fw: i64, policy: Value) -> i64 {
    let mut body = rule_body(json!({ "target": "all" }), &[OLD], ("2026-01-01", "2026-01-10"), (0, 24));
    body["policy"] = policy;
    f.create_rule(fw, body).await["request_id"].as_i64().unwrap()
}

async fn started(f: &Fleet, fw: i64, policy: Value) -> i64 {
    let id = rule_with(f, fw, policy).await;
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    id
}

/// The dids of a rule's targets in `wave`, from the device list.
async fn wave_dids(f: &Fleet, id: i64, wave: u32) -> BTreeSet<String> {
    let page =
        expect_status(f.s.get(&format!("/api/v1/rules/{id}/devices?wave={wave}&per_page=200")).await, StatusCode::OK)
            .await;
    page["items"].as_array().unwrap().iter().map(|d| d["did"].as_str().unwrap().to_owned()).collect()
}

fn pushed(rec: &Recorder) -> BTreeSet<String> {
    rec.take().into_iter().collect()
}

fn by_did<'a>(devs: &'a BTreeMap<String, Dev>, did: &str) -> &'a Dev {
    devs.values().find(|d| d.did == did).unwrap()
}

async fn succeed_all(f: &Fleet, devs: &BTreeMap<String, Dev>, dids: &BTreeSet<String>) {
    for did in dids {
        f.check_v41(by_did(devs, did), NEW).await;
    }
}

fn wave(view: &Value, n: u64) -> &Value {
    view["waves"].as_array().unwrap().iter().find(|w| w["wave"] == n).unwrap_or_else(|| panic!("no wave {n}: {view:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_then_waves_advance_on_the_success_ratio() {
    let (f, rec, devs, fw) = fleet("20", 22).await;
    let macs: Vec<&String> = devs.keys().collect();
    let canary = format!("{} {}", macs[0], macs[1]);
    let policy = json!({
        "canary": { "macs": canary },
        "waves": [{ "percent": 50 }, { "percent": 100 }],
        "advance": { "success_ratio": 1.0, "min_finished": 1 },
    });
    let id = rule_with(&f, fw, policy).await;

    // The preflight shows the waves the start will make.
    let pre = expect_status(f.s.get(&format!("/api/v1/rules/{id}/preflight")).await, StatusCode::OK).await;
    assert_eq!(pre["targets"], 22, "{pre:#}");
    let sizes: Vec<(i64, i64)> = pre["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["targets"].as_i64().unwrap(), w["online"].as_i64().unwrap()))
        .collect();
    assert_eq!(sizes, [(2, 2), (10, 10), (10, 10)], "{pre:#}");

    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    let v = f.rule(id).await;
    assert_eq!(v["current_wave"], 0, "{v:#}");
    assert_eq!((wave(&v, 0)["state"].as_str(), wave(&v, 0)["members"].as_i64()), (Some("active"), Some(2)));
    assert_eq!((wave(&v, 1)["state"].as_str(), wave(&v, 1)["members"].as_i64()), (Some("waiting"), Some(10)));
    assert_eq!((wave(&v, 2)["state"].as_str(), wave(&v, 2)["members"].as_i64()), (Some("waiting"), Some(10)));
    let members: Vec<BTreeSet<String>> =
        [wave_dids(&f, id, 0).await, wave_dids(&f, id, 1).await, wave_dids(&f, id, 2).await].into();
    let canary_dids: BTreeSet<String> = [&devs[macs[0]].did, &devs[macs[1]].did].into_iter().cloned().collect();
    assert_eq!(members[0], canary_dids);
    assert_eq!(members.iter().map(BTreeSet::len).sum::<usize>(), 22);

    // Only the canary is pushed, and the next wave waits until all of it succeeded.
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), members[0]);
    let first = members[0].iter().next().unwrap();
    f.check_v41(by_did(&devs, first), NEW).await;
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty(), "one of two canaries succeeded: ratio 1.0 not reached");
    assert_eq!(f.rule(id).await["current_wave"], 0);
    succeed_all(&f, &devs, &members[0]).await;

    // Each wave in turn: pushed exactly when the one before passed.
    for (k, wave_members) in members.iter().enumerate().skip(1) {
        round_on(f.domain()).await;
        assert_eq!(&pushed(&rec), wave_members, "wave {k}");
        let v = f.rule(id).await;
        assert_eq!(v["current_wave"], k as u64, "{v:#}");
        assert_eq!(wave(&v, k as u64 - 1)["state"], "passed", "{v:#}");
        assert_eq!(wave(&v, k as u64)["state"], "active", "{v:#}");
        assert_eq!(wave(&v, k as u64)["in_progress"], 10, "{v:#}");
        succeed_all(&f, &devs, wave_members).await;
    }
    round_on(f.domain()).await;
    let done = f.rule(id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["counts"]["succeeded"], 22);
    for k in 0..=2 {
        assert_eq!(wave(&done, k)["succeeded"], wave(&done, k)["members"], "{done:#}");
    }
    // The rule ended during its last wave: no wave shows as still being pushed.
    assert_eq!(
        (wave(&done, 1)["state"].as_str(), wave(&done, 2)["state"].as_str()),
        (Some("passed"), Some("ended")),
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_waits_for_its_minimum_finished_and_failures_count_as_finished() {
    let (f, rec, devs, fw) = fleet("21", 12).await;
    let policy = json!({
        "retry": { "attempts": 1 },
        "waves": [{ "percent": 50 }, { "percent": 100 }],
        "advance": { "success_ratio": 0.3, "min_finished": 4 },
    });
    let id = started(&f, fw, policy).await;
    let (w1, w2) = (wave_dids(&f, id, 1).await, wave_dids(&f, id, 2).await);
    assert_eq!((w1.len(), w2.len()), (6, 6));
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w1);

    // Two successes reach the ratio (ceil(0.3 × 6) = 2), but only 2 of the 4 needed finished.
    let mut it = w1.iter();
    for did in it.by_ref().take(2) {
        f.check_v41(by_did(&devs, did), NEW).await;
    }
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    assert_eq!(f.rule(id).await["current_wave"], 1);

    // The other four never check after their push: after the 120 s stage timeout they failed,
    // six finished, and the next wave starts in that same round.
    f.s.api.t.clock.advance(chrono::Duration::seconds(121));
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w2);
    let v = f.rule(id).await;
    assert_eq!(v["current_wave"], 2, "{v:#}");
    let w = wave(&v, 1);
    assert_eq!(
        (w["succeeded"].as_i64(), w["failed"].as_i64(), w["state"].as_str()),
        (Some(2), Some(4), Some("passed"))
    );
    assert!(v["halt"].is_null(), "no halt policy: {v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_time_starts_the_next_wave_whatever_the_results() {
    let (f, rec, _devs, fw) = fleet("22", 6).await;
    let policy = json!({
        "retry": { "attempts": 1 },
        "waves": [{ "percent": 50 }, { "percent": 100 }],
        "advance": { "success_ratio": null, "soak_s": 600 },
    });
    let id = started(&f, fw, policy).await;
    let (w1, w2) = (wave_dids(&f, id, 1).await, wave_dids(&f, id, 2).await);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w1);
    // Nobody answers; at 599 s the wave still soaks.
    f.s.api.t.clock.advance(chrono::Duration::seconds(599));
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    assert_eq!(f.rule(id).await["current_wave"], 1);
    f.s.api.t.clock.advance(chrono::Duration::seconds(1));
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w2);
    let v = f.rule(id).await;
    assert_eq!(v["current_wave"], 2);
    assert_eq!(wave(&v, 1)["failed"], 3, "{v:#}");
    assert_eq!(wave(&v, 2)["started_at"], "2026-01-01T00:10:00Z", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_by_hand() {
    let (f, rec, devs, fw) = fleet("23", 6).await;
    let policy = json!({ "waves": [{ "count": 3 }, { "percent": 100 }], "advance": { "success_ratio": null } });
    let id = rule_with(&f, fw, policy).await;
    // Not started: nothing to advance.
    expect_error(
        f.s.post(&format!("/api/v1/rules/{id}/advance"), json!({})).await,
        StatusCode::CONFLICT,
        "rule_wrong_status",
    )
    .await;
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    let (w1, w2) = (wave_dids(&f, id, 1).await, wave_dids(&f, id, 2).await);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w1);
    succeed_all(&f, &devs, &w1).await;
    // All succeeded, yet without a ratio or a soak time the wave holds.
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    let v = expect_status(f.s.post(&format!("/api/v1/rules/{id}/advance"), json!({})).await, StatusCode::OK).await;
    assert_eq!(v["current_wave"], 2, "{v:#}");
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), w2);
    // The last wave: nothing after it.
    let e = expect_error(
        f.s.post(&format!("/api/v1/rules/{id}/advance"), json!({})).await,
        StatusCode::CONFLICT,
        "rule_wrong_status",
    )
    .await;
    assert_eq!(e["details"]["status"], "pushing", "{e:#}");
    assert_eq!(f.rule(id).await["current_wave"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel_by_hand() {
    let (f, rec, devs, fw) = fleet("24", 8).await;
    let id = started(&f, fw, json!({ "max_in_flight": 3 })).await;
    round_on(f.domain()).await;
    let first = pushed(&rec);
    assert_eq!(first.len(), 3);

    let v = expect_status(f.s.post(&format!("/api/v1/rules/{id}/pause"), json!({})).await, StatusCode::OK).await;
    assert_eq!(v["status"], "paused");
    assert!(v["paused_at"].is_string());
    let fw_view = expect_status(f.s.get(&format!("/api/v1/firmware/{fw}")).await, StatusCode::OK).await;
    assert_eq!(fw_view["push_status"], "pushing");
    // Pushed but unfinished devices are listed; they may still finish while paused.
    let flying =
        expect_status(f.s.get(&format!("/api/v1/rules/{id}/devices?filter=in_flight")).await, StatusCode::OK).await;
    let listed: BTreeSet<String> =
        flying["items"].as_array().unwrap().iter().map(|d| d["did"].as_str().unwrap().to_owned()).collect();
    assert_eq!(listed, first);
    let one = first.iter().next().unwrap();
    f.check_v41(by_did(&devs, one), NEW).await;
    // Paused: no new push, and a target that checks by itself is offered nothing.
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    let waiting = devs.values().find(|d| !first.contains(&d.did)).unwrap();
    assert_eq!(f.check_v41(waiting, OLD).await, None);
    assert_eq!(f.rule(id).await["counts"]["succeeded"], 1);
    // Paused twice is refused; nothing changes.
    expect_error(
        f.s.post(&format!("/api/v1/rules/{id}/pause"), json!({})).await,
        StatusCode::CONFLICT,
        "rule_wrong_status",
    )
    .await;

    let v = expect_status(f.s.post(&format!("/api/v1/rules/{id}/resume"), json!({})).await, StatusCode::OK).await;
    assert_eq!(v["status"], "pushing");
    round_on(f.domain()).await;
    // One slot freed by the success: one more push.
    assert_eq!(pushed(&rec).len(), 1);

    let v = expect_status(f.s.post(&format!("/api/v1/rules/{id}/cancel"), json!({})).await, StatusCode::OK).await;
    assert_eq!(v["status"], "cancelled", "{v:#}");
    assert_eq!(v["counts"]["succeeded"], 1);
    assert_eq!(v["counts"]["cancelled"], 7, "{v:#}");
    assert!(v["cancelled_at"].is_string());
    let fw_view = expect_status(f.s.get(&format!("/api/v1/firmware/{fw}")).await, StatusCode::OK).await;
    assert_eq!(fw_view["push_status"], "completed");
    // Final: no more pushes, offers or actions.
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    assert_eq!(f.check_v41(waiting, OLD).await, None);
    for action in ["pause", "resume", "cancel", "advance"] {
        expect_error(
            f.s.post(&format!("/api/v1/rules/{id}/{action}"), json!({})).await,
            StatusCode::CONFLICT,
            "rule_wrong_status",
        )
        .await;
    }
    expect_error(f.start_rule(id).await, StatusCode::CONFLICT, "rule_wrong_status").await;
}

/// A gateway's notifier that logs each delivered push with the (fake) time; once `dead`, it
/// takes pushes and never delivers them, as a gateway killed after claiming.
#[derive(Clone)]
struct Timed {
    domain: Domain,
    log: Arc<Mutex<Vec<(i64, String)>>>,
    dead: Arc<AtomicBool>,
}

impl DeviceNotifier for Timed {
    fn notify(&self, notice: PushNotice) -> BoxFuture<'static, anyhow::Result<()>> {
        let (domain, log, dead) = (self.domain.clone(), self.log.clone(), self.dead.load(Ordering::SeqCst));
        Box::pin(async move {
            if dead {
                return Ok(());
            }
            log.lock().unwrap().push((domain.clock.now_ms(), notice.did.clone()));
            let ack =
                RecordEvent { upgrade_id: notice.upgrade_id, event: Event::Delivered { opening: notice.opening } };
            domain.record_events(vec![ack]).await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_in_flight_caps_hold_across_two_gateways_and_when_one_dies() {
    const RATE: usize = 10;
    const IN_FLIGHT: i64 = 4;
    // Two gateway processes share one database: PostgreSQL, as in production (SQLite is the
    // single-node default).
    let db = match ota_testkit::TestDatabase::postgres() {
        Ok(db) => db,
        Err(e) => {
            assert!(!ota_testkit::in_ci(), "PostgreSQL is not reachable ({e}), and CI needs it");
            eprintln!("SKIPPED: PostgreSQL is not reachable ({e}); the two-gateway caps test did not run");
            return;
        }
    };
    let api = ota_testkit::TestApi::start_with(ota_testkit::TestDomain::on(db, 8 * 1024 * 1024), Default::default());
    let f = Fleet::start_on(api).await;
    let mut devs = BTreeMap::new();
    for i in 0..40 {
        let mac = format!("5CCF7F25{i:04X}");
        devs.insert(mac.clone(), f.device(&mac, OLD, true).await);
    }
    let fw = f.firmware(NEW, true).await;
    // Two gateways: each its own domain (pool, notifier) on the same database and clock.
    let log = Arc::new(Mutex::new(Vec::new()));
    let gw_a = f.s.api.t.sibling();
    let gw_b = f.s.api.t.sibling();
    let b_dead = Arc::new(AtomicBool::new(false));
    gw_a.attach_notifier(Arc::new(Timed {
        domain: gw_a.clone(),
        log: log.clone(),
        dead: Arc::new(AtomicBool::new(false)),
    }));
    gw_b.attach_notifier(Arc::new(Timed { domain: gw_b.clone(), log: log.clone(), dead: b_dead.clone() }));
    let policy = json!({ "retry": { "attempts": 1 }, "rate": { "per_minute": RATE }, "max_in_flight": IN_FLIGHT });
    let id = started(&f, fw, policy).await;

    // Every 5 s of fake time both gateways run a round at once. A delivered device reports the
    // new version 10 s later, except every fourth, which never answers (its slot is freed by the
    // 120 s stage timeout). At 3 minutes gateway B dies after claiming: its pushes are never
    // delivered, and it runs no more rounds.
    let mut due: BTreeMap<String, i64> = BTreeMap::new();
    let silent: BTreeSet<String> = devs.values().step_by(4).map(|d| d.did.clone()).collect();
    let mut seen = 0;
    let mut max_in_flight = 0;
    let mut lost = 0;
    for step in 0..200 {
        let now = f.domain().clock.now_ms();
        if step < 36 {
            let (a, b) = tokio::join!(round_on(&gw_a), round_on(&gw_b));
            assert!(a.failed == 0 && b.failed == 0);
        } else if lost == 0 {
            // B dies on the first round it claims something in.
            b_dead.store(true, Ordering::SeqCst);
            lost = round_on(&gw_b).await.claimed;
            round_on(&gw_a).await;
        } else {
            round_on(&gw_a).await;
        }
        let delivered: Vec<(i64, String)> = log.lock().unwrap()[seen..].to_vec();
        seen += delivered.len();
        for (_, did) in delivered {
            if !silent.contains(&did) {
                due.insert(did, now + 10_000);
            }
        }
        for (did, _) in due.clone().iter().filter(|(_, at)| **at <= now) {
            f.check_v41(by_did(&devs, did), NEW).await;
            due.remove(did);
        }
        let v = f.rule(id).await;
        let in_flight = v["counts"]["in_progress"].as_i64().unwrap();
        assert!(in_flight <= IN_FLIGHT, "step {step}: {in_flight} in flight: {v:#}");
        max_in_flight = max_in_flight.max(in_flight);
        if v["counts"]["succeeded"].as_i64().unwrap() + v["counts"]["failed"].as_i64().unwrap() == 40 {
            break;
        }
        f.s.api.t.clock.advance(chrono::Duration::seconds(5));
    }
    // Everyone finished (the silent ones failed, to be tried again in tomorrow's opening).
    let v = f.rule(id).await;
    assert_eq!(v["counts"]["succeeded"], 30, "{v:#}");
    assert_eq!(v["counts"]["failed"], 10, "{v:#}");
    assert_eq!(max_in_flight, IN_FLIGHT, "the in-flight cap was the binding one at some point");
    assert!(lost > 0, "gateway B died holding claimed pushes");

    // Any 60 s window of delivered pushes holds at most RATE devices.
    let log = log.lock().unwrap().clone();
    assert_eq!(log.iter().map(|(_, d)| d).collect::<BTreeSet<_>>().len(), 40, "every device was notified");
    let mut busiest = 0;
    for (t0, _) in &log {
        let within: BTreeSet<&String> =
            log.iter().filter(|(t, _)| *t >= *t0 && *t < t0 + 60_000).map(|(_, d)| d).collect();
        busiest = busiest.max(within.len());
    }
    assert!(busiest <= RATE, "{busiest} devices notified within 60 s");
    assert_eq!(busiest, RATE, "the rate cap was the binding one at some point");
    // Each notifier holds its own gateway's domain (see `rules::Fleet`'s drop).
    gw_a.notifier.clear();
    gw_b.notifier.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_follow_each_devices_local_time_across_a_dst_change() {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    f.import("5CCF7F260001,United States/New York/New York\n5CCF7F260002,中国/上海市/上海市\n").await;
    let ny = f.device("5CCF7F260001", OLD, true).await;
    let sh = f.device("5CCF7F260002", OLD, true).await;
    let utc = f.device("5CCF7F260003", OLD, true).await;
    let zones = json!({ "zones": [
        { "region": "United States/New York", "time_zone": "America/New_York" },
        { "region": "中国/上海市", "time_zone": "Asia/Shanghai" },
    ]});
    let set = expect_status(f.s.put("/api/v1/region-zones", zones).await, StatusCode::OK).await;
    let row = |region: &str| set.as_array().unwrap().iter().find(|r| r["region"] == region).cloned().unwrap();
    let (state, city) = (row("United States/New York"), row("United States/New York/New York"));
    assert_eq!(
        (&state["time_zone"], &state["in_effect"], &state["devices"]),
        (&json!("America/New_York"), &json!("America/New_York"), &json!(1)),
        "{set:#}"
    );
    assert_eq!(
        (&city["time_zone"], &city["in_effect"], &city["devices"]),
        (&Value::Null, &json!("America/New_York"), &json!(1)),
        "{set:#}"
    );
    assert_eq!(row("中国/上海市/上海市")["in_effect"], "Asia/Shanghai", "{set:#}");
    let fw = f.firmware(NEW, true).await;
    f.at(2026, 3, 7, 0, 0);
    // 02:00–04:00 local, every day 7–10 March 2026 (UTC dates). New York springs forward on
    // 8 March at 02:00: that day 02:00 does not exist and the window opens at 03:00 EDT.
    let mut body = rule_body(json!({ "target": "all" }), &[OLD], ("2026-03-07", "2026-03-10"), (2, 4));
    body["policy"] = json!({ "retry": { "attempts": 1 } });
    let id = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id).await, StatusCode::OK).await;

    let opening = |v: &Value, zone: &str| -> (String, String) {
        let o = v["openings"].as_array().unwrap().iter().find(|o| o["time_zone"] == zone).unwrap();
        assert_eq!(o["devices"], 1, "{v:#}");
        (o["opens_at"].as_str().unwrap().to_owned(), o["closes_at"].as_str().unwrap().to_owned())
    };
    let v = f.rule(id).await;
    assert_eq!(opening(&v, "America/New_York"), ("2026-03-07T07:00:00Z".into(), "2026-03-07T09:00:00Z".into()));
    assert_eq!(opening(&v, "Asia/Shanghai"), ("2026-03-07T18:00:00Z".into(), "2026-03-07T20:00:00Z".into()));
    assert_eq!(opening(&v, "UTC"), ("2026-03-07T02:00:00Z".into(), "2026-03-07T04:00:00Z".into()));

    let only = |who: &Dev| -> BTreeSet<String> { [who.did.clone()].into() };
    let step = |d: u32, h: u32, m: u32| f.at(2026, 3, d, h, m);
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty(), "00:00 UTC: closed everywhere");
    step(7, 2, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&utc));
    step(7, 6, 59);
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty(), "01:59 in New York");
    step(7, 7, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&ny), "02:00 EST");
    step(7, 17, 59);
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty(), "01:59 in Shanghai");
    step(7, 18, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&sh), "02:00 CST");

    // 8 March: the UTC device at 02:00 UTC; New York not at 06:00 or 06:59 UTC (01:00 and 01:59
    // EST), but at 07:00 UTC, which is 03:00 EDT: the first instant after the missing hour.
    step(8, 2, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&utc));
    step(8, 6, 59);
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    let v = f.rule(id).await;
    assert_eq!(opening(&v, "America/New_York"), ("2026-03-08T07:00:00Z".into(), "2026-03-08T08:00:00Z".into()));
    step(8, 7, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&ny), "03:00 EDT");
    // 9 March: 02:00 EDT is 06:00 UTC, an hour earlier than before the change.
    step(9, 5, 59);
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    step(9, 6, 0);
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), only(&ny), "02:00 EDT");

    // A device's own zone overrides its region's from the next rule on; unknown zones and
    // devices are refused and change nothing.
    let own = json!({ "time_zone": "Asia/Shanghai" });
    let r = f.s.put("/api/v1/devices/5CCF7F260001/time-zone", own).await;
    assert_eq!(expect_status(r, StatusCode::OK).await["time_zone"], "Asia/Shanghai");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_endpoint_answers_bad_input_with_its_code_and_changes_nothing() {
    let (f, _rec, devs, fw) = fleet("27", 4).await;
    let id = rule_with(&f, fw, json!({})).await;
    let before = f.rule(id).await;
    let post = |path: String, body: Value| {
        let s = &f.s;
        async move { s.post(&path, body).await }
    };
    // Actions the status table refuses.
    for action in ["pause", "resume", "advance"] {
        let e = expect_error(
            post(format!("/api/v1/rules/{id}/{action}"), json!({})).await,
            StatusCode::CONFLICT,
            "rule_wrong_status",
        )
        .await;
        assert_eq!(e["details"]["status"], "not_started", "{e:#}");
    }
    expect_error(
        post(format!("/api/v1/rules/{id}/exclude"), json!({ "macs": devs.keys().next().unwrap() })).await,
        StatusCode::CONFLICT,
        "rule_wrong_status",
    )
    .await;
    // Unknown rules, lists and devices.
    for action in ["pause", "resume", "cancel", "advance"] {
        expect_error(
            post(format!("/api/v1/rules/999999/{action}"), json!({})).await,
            StatusCode::NOT_FOUND,
            "rule_not_found",
        )
        .await;
    }
    expect_error(f.s.get("/api/v1/rules/999999/preflight").await, StatusCode::NOT_FOUND, "rule_not_found").await;
    expect_error(
        f.s.put("/api/v1/devices/ZZZZZZZZZZZZ/time-zone", json!({ "time_zone": "UTC" })).await,
        StatusCode::NOT_FOUND,
        "device_not_found",
    )
    .await;

    // Bodies and queries.
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    expect_status(post(format!("/api/v1/rules/{id}/pause"), json!({})).await, StatusCode::OK).await;
    let mac = devs.keys().next().unwrap().clone();
    for (body, code) in [
        (json!({}), "invalid_field"),
        (json!({ "macs": mac, "mac_list_id": 1 }), "invalid_field"),
        (json!({ "macs": "not-a-mac" }), "invalid_field"),
        (json!({ "macs": "" }), "invalid_field"),
        (json!({ "macs": mac, "extra": 1 }), "invalid_field"),
        (json!({ "macs": 5 }), "invalid_field"),
    ] {
        expect_error(post(format!("/api/v1/rules/{id}/exclude"), body.clone()).await, StatusCode::BAD_REQUEST, code)
            .await;
    }
    expect_error(
        post(format!("/api/v1/rules/{id}/exclude"), json!({ "mac_list_id": 999999 })).await,
        StatusCode::NOT_FOUND,
        "mac_list_not_found",
    )
    .await;
    let v = f.rule(id).await;
    assert_eq!((v["status"].as_str(), v["counts"]["excluded"].as_i64()), (Some("paused"), Some(0)), "{v:#}");
    for q in ["offline_days=0", "offline_days=3651", "offline_days=x"] {
        expect_error(
            f.s.get(&format!("/api/v1/rules/{id}/preflight?{q}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        )
        .await;
    }
    for q in ["status=bogus", "per_page=0", "per_page=201", "page=0", "firmware_id=x"] {
        expect_error(f.s.get(&format!("/api/v1/rules?{q}")).await, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    for body in [
        json!({ "zones": [] }),
        json!({ "zones": [{ "region": "中国/上海市", "time_zone": "Mars/Olympus" }] }),
        json!({ "zones": [{ "region": "", "time_zone": "Asia/Shanghai" }] }),
        json!({ "zones": [{ "region": "中国/上海市", "time_zone": "Asia/Shanghai", "x": 1 }] }),
        json!({ "zones": [{ "region": "中国/上海市", "time_zone": "Asia/Shanghai" }, { "region": "中国/北京市", "time_zone": "Nowhere" }] }),
    ] {
        expect_error(f.s.put("/api/v1/region-zones", body).await, StatusCode::BAD_REQUEST, "invalid_field").await;
    }
    let zones = expect_status(f.s.get("/api/v1/region-zones").await, StatusCode::OK).await;
    assert!(zones.as_array().unwrap().iter().all(|z| z["time_zone"].is_null()), "nothing stored: {zones:#}");
    for body in [json!({ "time_zone": "Mars/Olympus" }), json!({ "time_zone": 3 }), json!({ "zone": "UTC" })] {
        expect_error(
            f.s.put(&format!("/api/v1/devices/{mac}/time-zone"), body).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
    }
    // A policy the rule cannot follow is refused at creation.
    for (policy, field) in [
        (json!({ "waves": [{ "percent": 50 }, { "percent": 10 }] }), "waves"),
        (json!({ "waves": [{ "percent": 50, "count": 3 }] }), "waves"),
        (json!({ "canary": { "macs": "x" } }), "canary.macs"),
        (json!({ "canary": { "count": 0 } }), "canary.count"),
        (json!({ "advance": { "success_ratio": 1.5 } }), "advance.success_ratio"),
        (json!({ "halt": { "min_finished": 3 } }), "halt"),
        (json!({ "halt": { "failure_ratio": -0.1 } }), "halt.failure_ratio"),
        (json!({ "rate": { "per_minute": 0 } }), "rate.per_minute"),
        (
            json!({ "rate": { "per_minute": 10, "ramp": { "factor": 1.0, "every_succeeded": 5, "max_per_minute": 20 } } }),
            "rate.ramp",
        ),
        (json!({ "max_in_flight": 0 }), "max_in_flight"),
        (json!({ "jitter_s": 301 }), "jitter_s"),
        (json!({ "time_zone": "Mars/Olympus" }), "time_zone"),
    ] {
        let mut body = rule_body(json!({ "target": "all" }), &[OLD], ("2026-01-01", "2026-01-10"), (0, 24));
        body["policy"] = policy.clone();
        let e = expect_error(
            f.s.post(&format!("/api/v1/firmware/{fw}/rules"), body).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        )
        .await;
        assert_eq!(e["details"]["field"], format!("policy.{field}"), "{policy}: {e:#}");
    }
    let all = expect_status(f.s.get("/api/v1/rules").await, StatusCode::OK).await;
    assert_eq!(all["total"], 1, "{all:#}");
    assert_eq!(before["request_id"], all["items"][0]["request_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_across_the_tenant_filter_by_product_firmware_and_status() {
    let (f, _rec, _devs, fw) = fleet("28", 2).await;
    let a = rule_with(&f, fw, json!({})).await;
    let mut body = rule_body(json!({ "target": "all" }), &[OLD], ("2026-01-01", "2026-01-10"), (0, 24));
    body["name"] = json!("second");
    let b = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(a).await, StatusCode::OK).await;
    let other_pk = f.s.create_product("fan").await;
    let ids = |v: &Value| -> Vec<i64> {
        v["items"].as_array().unwrap().iter().map(|r| r["request_id"].as_i64().unwrap()).collect()
    };
    let get = |q: String| {
        let s = &f.s;
        async move { expect_status(s.get(&format!("/api/v1/rules{q}")).await, StatusCode::OK).await }
    };
    assert_eq!(ids(&get(String::new()).await), [b, a], "newest first");
    assert_eq!(ids(&get("?status=pushing".into()).await), [a]);
    assert_eq!(ids(&get("?status=not_started".into()).await), [b]);
    assert_eq!(ids(&get(format!("?firmware_id={fw}")).await), [b, a]);
    assert_eq!(ids(&get(format!("?product_key={}", f.pk)).await), [b, a]);
    assert!(ids(&get(format!("?product_key={other_pk}")).await).is_empty());
    let page = get("?per_page=1&page=2".into()).await;
    assert_eq!((ids(&page), page["total"].as_i64()), (vec![a], Some(2)));
    // Another tenant sees none of them.
    f.s.api.t.domain.create_admin("other", "olga", "olga password 1").await.unwrap();
    let olga = login(&f.s.client, &f.s.api, "olga", "olga password 1").await;
    let r = f.s.client.get(f.s.url("/api/v1/rules")).bearer_auth(olga).send().await.unwrap();
    assert_eq!(expect_status(r, StatusCode::OK).await["total"], 0);
}

/// A device check through gateway `node`; the offered firmware id, if any.
async fn check_on(f: &Fleet, dev: &Dev, sw: &str, node: &str) -> Option<i64> {
    let check = ota_domain::upgrades::Check {
        did: dev.did.clone(),
        auth: ota_domain::upgrades::CheckAuth::Passcode(dev.passcode.clone()),
        method: ota_wire::dto::PushMethod::V41,
        fw_type: ota_wire::dto::FirmwareType::Wifi,
        hard: Some(crate::rules::HW.to_owned()),
        soft: Some(sw.to_owned()),
        fid: None,
        ip: None,
        node: Some(node.to_owned()),
    };
    f.domain().device_check(check).await.unwrap().ok().map(|o| o.firmware.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_over_its_download_cap_answers_no_update_and_the_device_is_pushed_again() {
    let mut t = ota_testkit::TestDomain::new();
    t.adjust(|s| s.download_cap = Some(1));
    let f = Fleet::start_on(ota_testkit::TestApi::start_with(t, Default::default())).await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    let a = f.device("5CCF7F290001", OLD, true).await;
    let b = f.device("5CCF7F290002", OLD, true).await;
    let c = f.device("5CCF7F290003", OLD, true).await;
    let fw = f.firmware(NEW, true).await;
    let id = started(&f, fw, json!({})).await;
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec).len(), 3);

    // gw-1 serves one download at a time: A is offered the image, B is told "no update"; C,
    // on gw-2, is offered it.
    assert_eq!(check_on(&f, &a, OLD, "gw-1").await, Some(fw));
    assert_eq!(check_on(&f, &b, OLD, "gw-1").await, None);
    assert_eq!(check_on(&f, &c, OLD, "gw-2").await, Some(fw));
    let target = |mac: &'static str| {
        let s = &f.s;
        async move {
            let page =
                expect_status(s.get(&format!("/api/v1/rules/{id}/devices?mac={mac}")).await, StatusCode::OK).await;
            page["items"][0].clone()
        }
    };
    let deferred = target("5CCF7F290002").await;
    assert_eq!(deferred["stage"], "pending", "{deferred:#}");
    assert!(deferred["failure"].is_null(), "a deferral is no failure: {deferred:#}");

    // A finishes; B is pushed again once its 15 s are up, and offered the image.
    f.check_v41(&a, NEW).await;
    round_on(f.domain()).await;
    assert!(pushed(&rec).is_empty());
    f.s.api.t.clock.advance(chrono::Duration::seconds(15));
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec), [b.did.clone()].into());
    assert_eq!(check_on(&f, &b, OLD, "gw-1").await, Some(fw));
    let v = f.rule(id).await;
    assert_eq!((v["counts"]["succeeded"].as_i64(), v["counts"]["in_progress"].as_i64()), (Some(1), Some(2)), "{v:#}");
}

/// A reader of a server-sent event stream: `(id, event, data)` frames, keep-alive comments
/// skipped; `None` when the stream ended.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(f: &Fleet, id: i64, last_event_id: Option<i64>) -> Events {
        let mut request = f.s.client.get(f.s.url(&format!("/api/v1/rules/{id}/events"))).bearer_auth(&f.s.token);
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events { response, buffer: String::new() }
    }

    async fn next(&mut self) -> Option<(i64, String, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse::<i64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                    return Some((id, event, data));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("no event within 10 s")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until one whose rule view satisfies `done`; returns it and the ids seen.
    async fn until(&mut self, ids: &mut Vec<i64>, done: impl Fn(&Value) -> bool) -> Value {
        loop {
            let (id, event, view) = self.next().await.expect("the stream ended early");
            assert_eq!(event, "rule");
            assert!(ids.last().is_none_or(|last| id > *last), "ids grow: {ids:?} then {id}");
            ids.push(id);
            if done(&view) {
                return view;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_events_follow_counts_and_status_changes_to_the_end_and_resume() {
    let (f, rec, _devs, fw) = fleet("31", 4).await;
    let id = started(&f, fw, json!({ "max_in_flight": 2 })).await;
    let mut events = Events::open(&f, id, None).await;
    let mut ids = Vec::new();
    // At once: the current state.
    let first = events.until(&mut ids, |_| true).await;
    assert_eq!(first["status"], "pushing");
    assert_eq!(first["request_id"], id);
    assert_eq!(first, f.rule(id).await);

    // A scheduler round pushes two devices: the counts change.
    round_on(f.domain()).await;
    assert_eq!(pushed(&rec).len(), 2);
    let pushed_view = events.until(&mut ids, |v| v["counts"] != first["counts"]).await;
    assert_eq!(pushed_view["status"], "pushing");

    // Status changes: paused, resumed, cancelled; the stream ends after the final event.
    expect_status(f.s.post(&format!("/api/v1/rules/{id}/pause"), json!({})).await, StatusCode::OK).await;
    events.until(&mut ids, |v| v["status"] == "paused").await;
    expect_status(f.s.post(&format!("/api/v1/rules/{id}/resume"), json!({})).await, StatusCode::OK).await;
    events.until(&mut ids, |v| v["status"] == "pushing").await;
    expect_status(f.s.post(&format!("/api/v1/rules/{id}/cancel"), json!({})).await, StatusCode::OK).await;
    let last = events.until(&mut ids, |v| v["status"] == "cancelled").await;
    assert_eq!(last["counts"]["cancelled"], 4, "{last:#}");
    assert!(events.next().await.is_none(), "the stream ends after the final event");

    // A finished rule, resumed: its final state at once, with a later id, and the end.
    let last_id = *ids.last().unwrap();
    let started_at = std::time::Instant::now();
    let mut again = Events::open(&f, id, Some(last_id)).await;
    let (resumed_id, event, view) = again.next().await.unwrap();
    assert!(resumed_id > last_id);
    assert_eq!((event.as_str(), &view), ("rule", &last));
    assert!(again.next().await.is_none());
    assert!(started_at.elapsed() < Duration::from_secs(2), "a finished rule's stream ends at once");

    // Resuming a live rule: ids continue above the Last-Event-ID given.
    let other = rule_with(&f, fw, json!({})).await;
    let mut live = Events::open(&f, other, Some(i64::MAX / 2)).await;
    let (live_id, _, view) = live.next().await.unwrap();
    assert!(live_id > i64::MAX / 2);
    assert_eq!(view["status"], "not_started");

    // Unknown rules are 404 before any stream starts.
    let r = f.s.get("/api/v1/rules/999999/events").await;
    expect_error(r, StatusCode::NOT_FOUND, "rule_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_event_streams_are_bounded_per_tenant() {
    let (f, _rec, _devs, fw) = fleet("32", 1).await;
    let id = rule_with(&f, fw, json!({})).await;
    let mut open = Vec::new();
    for _ in 0..ota_api::routes::events::MAX_STREAMS_PER_TENANT {
        let mut events = Events::open(&f, id, None).await;
        events.next().await.unwrap();
        open.push(events);
    }
    let r = f.s.get(&format!("/api/v1/rules/{id}/events")).await;
    assert_eq!(r.headers()["retry-after"], "5");
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "too_many_event_streams").await;
}
