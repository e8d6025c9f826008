//! The automatic halt against a simulated fleet over real sockets: a chosen 5 % of the devices
//! fail (an image that fails the device's MD5 check, and cut downloads, mixed). The scheduler
//! rounds are run by the test (the gateway's own scheduler is idle), so every round sees whole
//! waves finished and the numbers are exact: the rule halts at the threshold with them, no
//! device outside the current wave was pushed, excluding the failing devices and resuming
//! completes the rule, and a cancel ends one with exact counts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ota_gateway::{BusConfig, PushSettings};
use ota_sim::{DeviceHandle, Faults, Method};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::device_plane::Plane;
use crate::rules::rule_body;
use crate::support::*;

const NEW: &str = "04020021";

/// A plane whose gateway scheduler stays idle: the test runs each round itself.
async fn plane() -> Plane {
    Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| {
        g.push = PushSettings { rate_per_second: 100_000, interval: Duration::from_secs(24 * 3600) };
    })
    .await
}

async fn round(p: &Plane) {
    p.s.api.t.domain.push_round(100_000, Duration::ZERO).await.unwrap();
}

struct Fleet {
    p: Plane,
    devices: BTreeMap<String, DeviceHandle>,
    fw: i64,
}

fn mac(tag: &str, i: usize) -> String {
    format!("5CCF7F{tag}{i:04X}")
}

impl Fleet {
    /// `n` healthy V4.1 Wi-Fi devices, all online, and verified firmware.
    async fn start(tag: &str, n: usize) -> Fleet {
        let mut p = plane().await;
        p.s.use_api_token().await;
        let devices: BTreeMap<String, DeviceHandle> =
            (0..n).map(|i| (mac(tag, i), p.spawn(p.spec(&mac(tag, i), Method::V41)))).collect();
        let fields = [
            ("name", "next"),
            ("type", "wifi"),
            ("push_method", "V4.1"),
            ("hard_version", "00ESP826"),
            ("soft_version", NEW),
        ];
        // Big enough that a download cut half-way fails the gateway's writes: a smaller image
        // fits in the loopback socket buffers, and the cut is then seen as a silent device.
        let fw = p.upload(&fields, ("a.bin", image(1_500_000, 9))).await;
        p.s.verify_directly(fw).await;
        let f = Fleet { p, devices, fw };
        f.wait_online(n).await;
        f
    }

    async fn wait_online(&self, n: usize) {
        let path = format!("/api/v1/products/{}/devices?online=true&per_page=1", self.p.pk);
        for _ in 0..1200 {
            if expect_status(self.p.s.get(&path).await, StatusCode::OK).await["total"] == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the fleet never came online");
    }

    /// Restarts these devices (same did and passcode) with `faults` on every download. The
    /// rule is paused meanwhile: a device checks when it boots, and would be offered the image.
    async fn make_faulty(&mut self, id: i64, faulty: &BTreeMap<String, Faults>) {
        let pause = self.p.s.post(&format!("/api/v1/rules/{id}/pause"), json!({})).await;
        expect_status(pause, StatusCode::OK).await;
        for (mac, faults) in faulty {
            let snap = self.devices.remove(mac).unwrap().stop().await;
            let mut spec = self.p.spec(mac, Method::V41);
            spec.did = snap.did.clone();
            spec.passcode = snap.passcode.clone();
            spec.faults = *faults;
            self.devices.insert(mac.clone(), self.p.spawn(spec));
        }
        // Each new session is up and its boot check answered: a push that arrives during the
        // device's own check is not acted upon (it would wait for its stage timeout).
        for mac in faulty.keys() {
            let d = &self.devices[mac];
            let mut ready = false;
            for _ in 0..600 {
                let snap = d.snapshot();
                if snap.online && snap.counters.checks >= 1 {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(ready, "{mac} never came back");
        }
        self.wait_online(self.devices.len()).await;
        let resume = self.p.s.post(&format!("/api/v1/rules/{id}/resume"), json!({})).await;
        expect_status(resume, StatusCode::OK).await;
    }

    async fn rule(&self, policy: Value) -> i64 {
        let mut body = rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-10"), (0, 24));
        body["policy"] = policy;
        let r = self.p.s.post(&format!("/api/v1/firmware/{}/rules", self.fw), body).await;
        let id = expect_status(r, StatusCode::CREATED).await["request_id"].as_i64().unwrap();
        let start = json!({ "confirm_stable": true, "accept_terms": true });
        expect_status(self.p.s.post(&format!("/api/v1/rules/{id}/start"), start).await, StatusCode::OK).await;
        id
    }

    async fn view(&self, id: i64) -> Value {
        expect_status(self.p.s.get(&format!("/api/v1/rules/{id}")).await, StatusCode::OK).await
    }

    /// MAC → wave of every target.
    async fn waves(&self, id: i64) -> BTreeMap<String, u32> {
        let page =
            expect_status(self.p.s.get(&format!("/api/v1/rules/{id}/devices?per_page=200")).await, StatusCode::OK)
                .await;
        assert!(page["total"].as_u64().unwrap() <= 200);
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["mac"].as_str().unwrap().to_owned(), d["wave"].as_u64().unwrap() as u32))
            .collect()
    }

    /// Waits until `pending` targets are left and `stuck` are on their way (a device whose
    /// image failed its MD5 check reports nothing: it waits in `downloaded` for its timeout).
    async fn settled(&self, id: i64, pending: usize, stuck: usize) -> Value {
        let mut last = Value::Null;
        for _ in 0..1200 {
            last = self.view(id).await;
            if last["counts"]["in_progress"] == stuck && last["counts"]["pending"] == pending {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open = self.p.s.get(&format!("/api/v1/rules/{id}/devices?filter=not_succeeded&per_page=200")).await;
        let open: Value = open.json().await.unwrap();
        let open: Vec<(Value, Value, Value, Value)> = open["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["stage"] != "pending")
            .map(|d| (d["mac"].clone(), d["stage"].clone(), d["wave"].clone(), d["attempts"].clone()))
            .collect();
        // What the simulator saw of each device still on its way.
        let seen: Vec<String> = open
            .iter()
            .filter(|(_, stage, _, _)| stage != "excluded" && stage != "succeeded" && stage != "failed")
            .filter_map(|(mac, ..)| {
                let mac = mac.as_str()?;
                let snap = self.devices.get(mac)?.snapshot();
                Some(format!("{mac}: online {} sw {} {:?}", snap.online, snap.wifi_sw, snap.counters))
            })
            .collect();
        panic!(
            "rule {id} never settled with {pending} pending; last {last:#}; on their way: {open:#?}; devices: {seen:#?}"
        );
    }

    fn pushes(&self, mac: &str) -> u32 {
        self.devices[mac].snapshot().counters.pushes
    }
}

fn in_waves(waves: &BTreeMap<String, u32>, pick: impl Fn(u32) -> bool) -> Vec<String> {
    waves.iter().filter(|(_, w)| pick(**w)).map(|(m, _)| m.clone()).collect()
}

const CUT: Faults = Faults { only_first: 0, drop_mid_download: true, corrupt_byte: false, never_return: false };
const BAD_MD5: Faults = Faults { only_first: 0, drop_mid_download: false, corrupt_byte: true, never_return: false };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_halts_at_its_failure_threshold_and_completes_after_exclude_and_resume() {
    const N: usize = 200;
    let mut f = Fleet::start("30", N).await;
    let canary: Vec<String> = (0..10).map(|i| mac("30", i)).collect();
    let policy = json!({
        "retry": { "attempts": 1 },
        "canary": { "macs": canary.join(" ") },
        "waves": [{ "percent": 10 }, { "percent": 50 }, { "percent": 100 }],
        "halt": { "failure_ratio": 0.05, "min_finished": 20 },
        "max_in_flight": 200,
    });
    let id = f.rule(policy).await;
    let waves = f.waves(id).await;
    assert_eq!(waves.len(), N);
    let (w0, w1, w2, w3) = (
        in_waves(&waves, |w| w == 0),
        in_waves(&waves, |w| w == 1),
        in_waves(&waves, |w| w == 2),
        in_waves(&waves, |w| w == 3),
    );
    assert_eq!(w0, canary);
    // 10 %, 50 %, 100 % of the 190 others: 19, then 76, then 95.
    assert_eq!((w1.len(), w2.len(), w3.len()), (19, 76, 95));

    // The failing 5 %: 10 devices outside the canary, two of them in wave 1 (one cut download,
    // one bad image), the others spread over waves 2 and 3.
    let mut failing: BTreeMap<String, Faults> = BTreeMap::new();
    failing.insert(w1[3].clone(), CUT);
    failing.insert(w1[11].clone(), BAD_MD5);
    for (i, m) in w2.iter().step_by(19).chain(w3.iter().step_by(24)).enumerate() {
        failing.insert(m.clone(), if i % 2 == 0 { CUT } else { BAD_MD5 });
    }
    assert_eq!(failing.len(), 10);
    f.make_faulty(id, &failing).await;

    // The canary passes; wave 1 is pushed in the round that sees it passed.
    round(&f.p).await;
    f.settled(id, N - 10, 0).await;
    round(&f.p).await;
    // Wave 1: 17 succeeded, the cut download failed at once, and the bad image waits in
    // `downloaded`: its device says nothing. Its 300 s stage timeout fails it; then
    // 2 / 29 > 0.05 with 29 ≥ 20 finished, and the same round halts the rule.
    let v = f.settled(id, N - 29, 1).await;
    assert_eq!(v["status"], "pushing");
    assert_eq!(v["current_wave"], 1);
    f.p.s.api.t.clock.advance(chrono::Duration::seconds(301));
    round(&f.p).await;
    let v = f.view(id).await;
    assert_eq!(v["status"], "halted", "{v:#}");
    let halt = &v["halt"];
    assert_eq!(
        (halt["wave"].as_u64(), halt["failed"].as_i64(), halt["finished"].as_i64()),
        (Some(1), Some(2), Some(29))
    );
    assert_eq!(halt["threshold"], "failure_ratio 0.05", "{halt:#}");
    let mut kinds: Vec<(String, i64)> = halt["by_kind"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["kind"].as_str().unwrap().to_owned(), k["count"].as_i64().unwrap()))
        .collect();
    kinds.sort();
    assert_eq!(kinds, [("download_cut".to_owned(), 1), ("timeout".to_owned(), 1)]);
    assert_eq!(
        (v["counts"]["succeeded"].as_i64(), v["counts"]["failed"].as_i64(), v["counts"]["pending"].as_i64()),
        (Some(27), Some(2), Some(171))
    );
    let failed =
        expect_status(f.p.s.get(&format!("/api/v1/rules/{id}/devices?filter=failed")).await, StatusCode::OK).await;
    let failed_macs: BTreeSet<String> =
        failed["items"].as_array().unwrap().iter().map(|d| d["mac"].as_str().unwrap().to_owned()).collect();
    assert_eq!(failed_macs, [w1[3].clone(), w1[11].clone()].into());
    // Halted: further rounds push nothing. No device outside waves 0 and 1 was ever pushed.
    round(&f.p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in w0.iter().chain(&w1) {
        assert_eq!(f.pushes(m), 1, "{m} (wave {})", waves[m]);
    }
    for m in w2.iter().chain(&w3) {
        assert_eq!(f.pushes(m), 0, "{m} (wave {})", waves[m]);
    }
    // Resuming without taking the failing devices out halts again at once.
    expect_status(f.p.s.post(&format!("/api/v1/rules/{id}/resume"), json!({})).await, StatusCode::OK).await;
    round(&f.p).await;
    assert_eq!(f.view(id).await["status"], "halted");

    // Exclude the ten failing devices (two failed, eight not pushed yet), resume: the rule runs
    // through waves 2 and 3 and completes.
    let macs: Vec<&String> = failing.keys().collect();
    let body = json!({ "macs": macs.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("\n") });
    let r = expect_status(f.p.s.post(&format!("/api/v1/rules/{id}/exclude"), body).await, StatusCode::OK).await;
    assert_eq!(r, json!({ "excluded": 10, "skipped": 0 }));
    let listed =
        expect_status(f.p.s.get(&format!("/api/v1/rules/{id}/devices?filter=excluded")).await, StatusCode::OK).await;
    assert_eq!(listed["total"], 10);
    expect_status(f.p.s.post(&format!("/api/v1/rules/{id}/resume"), json!({})).await, StatusCode::OK).await;
    let mut pending = N - 29 - 8;
    for (k, members) in [(2u64, &w2), (3, &w3)] {
        round(&f.p).await;
        pending -= members.iter().filter(|m| !failing.contains_key(*m)).count();
        let v = f.settled(id, pending, 0).await;
        assert_eq!((v["status"].as_str(), v["current_wave"].as_u64()), (Some("pushing"), Some(k)), "{v:#}");
    }
    round(&f.p).await;
    let done = f.view(id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let c = &done["counts"];
    assert_eq!(
        [&c["targets"], &c["succeeded"], &c["excluded"], &c["failed"], &c["pending"], &c["cancelled"]],
        [&json!(200), &json!(190), &json!(10), &json!(0), &json!(0), &json!(0)],
        "{done:#}"
    );
    // Every figure matches the simulator: each healthy device runs the new version after one
    // push; the failing ones still run the old one, pushed once if in wave 1, else never.
    for (m, d) in &f.devices {
        let snap = d.snapshot();
        if let Some(_faults) = failing.get(m) {
            assert_eq!(snap.wifi_sw, "04020006", "{m}");
            assert_eq!(snap.counters.pushes, u32::from(waves[m] == 1), "{m}");
        } else {
            assert_eq!((snap.wifi_sw.as_str(), snap.counters.pushes), (NEW, 1), "{m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_rule_cancelled_ends_with_exact_counts() {
    const N: usize = 40;
    let mut f = Fleet::start("31", N).await;
    let policy = json!({
        "retry": { "attempts": 1 },
        "waves": [{ "percent": 50 }, { "percent": 100 }],
        "halt": { "failure_count": 1, "min_finished": 1, "kinds": ["download_cut"] },
    });
    let id = f.rule(policy).await;
    let waves = f.waves(id).await;
    let (w1, w2) = (in_waves(&waves, |w| w == 1), in_waves(&waves, |w| w == 2));
    assert_eq!((w1.len(), w2.len()), (20, 20));
    // In wave 1: two cut downloads (counted) and one bad image (a kind the policy ignores).
    let failing: BTreeMap<String, Faults> =
        [(w1[0].clone(), CUT), (w1[5].clone(), CUT), (w1[9].clone(), BAD_MD5)].into();
    f.make_faulty(id, &failing).await;
    round(&f.p).await;
    f.settled(id, 20, 1).await;
    round(&f.p).await;
    let v = f.view(id).await;
    assert_eq!(v["status"], "halted", "{v:#}");
    // The bad image is still on its way: 17 succeeded and 2 cut downloads finished.
    assert_eq!((v["halt"]["failed"].as_i64(), v["halt"]["finished"].as_i64()), (Some(2), Some(19)), "{v:#}");
    assert_eq!(v["halt"]["threshold"], "failure_count 1");
    let cancelled =
        expect_status(f.p.s.post(&format!("/api/v1/rules/{id}/cancel"), json!({})).await, StatusCode::OK).await;
    let c = &cancelled["counts"];
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        [&c["targets"], &c["succeeded"], &c["cancelled"], &c["failed"], &c["pending"]],
        [&json!(40), &json!(17), &json!(23), &json!(0), &json!(0)],
        "{cancelled:#}"
    );
    let states: Vec<&str> =
        cancelled["waves"].as_array().unwrap().iter().map(|w| w["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["ended", "never_started"], "{cancelled:#}");
    round(&f.p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for m in &w2 {
        assert_eq!(f.pushes(m), 0, "{m}: wave 2 never started");
    }
    let upgraded = f.devices.values().filter(|d| d.snapshot().wifi_sw == NEW).count();
    assert_eq!(upgraded, 17);
}
