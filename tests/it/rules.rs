//! Push rules through the API, and the fleet scheduler on a fake clock.
//!
//! Devices here are made through the domain's device-side calls (registration, a check that
//! reports versions, presence), which is what the gateway does for a real device; the
//! simulated-fleet flow is in `rules_fleet.rs`.

use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};
use futures_util::future::BoxFuture;
use ota_domain::Domain;
use ota_domain::devices::PresenceWriter;
use ota_domain::lifecycle::Event;
use ota_domain::notify::{DeviceNotifier, PushNotice};
use ota_domain::upgrades::{Check, CheckAuth, RecordEvent};
use ota_wire::dto::{FirmwareType, PushMethod, RegisteredVia};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

pub const HW: &str = "00ESP826";

/// Records every push instead of sending it; fails pushes to the dids in `refuse`. With
/// `deliver_to` it also acknowledges each push as delivered, as the edge holding the
/// device's session does, except pushes to the dids in `lose` (taken, never delivered).
#[derive(Default, Clone)]
pub struct Recorder {
    pub sent: Arc<Mutex<Vec<PushNotice>>>,
    pub refuse: Arc<Mutex<Vec<String>>>,
    pub lose: Arc<Mutex<Vec<String>>>,
    pub deliver_to: Option<Domain>,
}

impl Recorder {
    /// A recorder whose pushes reach the devices.
    pub fn delivering(domain: &Domain) -> Recorder {
        Recorder { deliver_to: Some(domain.clone()), ..Recorder::default() }
    }

    pub fn take(&self) -> Vec<String> {
        let mut dids: Vec<String> = self.sent.lock().unwrap().drain(..).map(|n| n.did).collect();
        dids.sort();
        dids
    }
}

impl DeviceNotifier for Recorder {
    fn notify(&self, notice: PushNotice) -> BoxFuture<'static, anyhow::Result<()>> {
        let refused = self.refuse.lock().unwrap().contains(&notice.did);
        let lost = self.lose.lock().unwrap().contains(&notice.did);
        let ack = (!refused && !lost).then(|| self.deliver_to.clone()).flatten().map(|d| {
            (d, RecordEvent { upgrade_id: notice.upgrade_id, event: Event::Delivered { opening: notice.opening } })
        });
        if !refused {
            self.sent.lock().unwrap().push(notice);
        }
        Box::pin(async move {
            if refused {
                return Err(anyhow::anyhow!("broker refused"));
            }
            if let Some((domain, ack)) = ack {
                domain.record_events(vec![ack]).await?;
            }
            Ok(())
        })
    }
}

/// A product with devices made through the device-side calls.
pub struct Fleet {
    pub s: Session,
    pub pk: String,
    pub presence: PresenceWriter,
}

pub struct Dev {
    pub did: String,
    pub passcode: String,
}

/// A [`Recorder`] that delivers holds the domain it is attached to: let go of it, so the
/// domain and its connection pool are freed with the fleet (on PostgreSQL, leaked pools added
/// up to the server's 100 connections over a run of the suite).
impl Drop for Fleet {
    fn drop(&mut self) {
        self.domain().notifier.clear();
    }
}

impl Fleet {
    pub async fn start() -> Fleet {
        Self::start_on(ota_testkit::TestApi::start()).await
    }

    /// A fleet on a given API (and so database).
    pub async fn start_on(api: ota_testkit::TestApi) -> Fleet {
        let mut s = Session::start_on(api).await;
        s.use_api_token().await;
        let pk = s.create_product("lamp").await;
        let presence = PresenceWriter::start(s.api.t.domain.clone());
        Fleet { s, pk, presence }
    }

    pub fn domain(&self) -> &Domain {
        &self.s.api.t.domain
    }

    /// Imports MACs with regions (`mac,region` lines).
    pub async fn import(&self, csv: &str) {
        expect_status(self.s.import_csv(&self.pk, &format!("mac,region\n{csv}")).await, StatusCode::OK).await;
    }

    /// Registers a device and has it report `sw` (V4.1 Wi-Fi unless told otherwise).
    pub async fn device(&self, mac: &str, sw: &str, online: bool) -> Dev {
        self.device_as(mac, PushMethod::V41, FirmwareType::Wifi, HW, sw, None, online).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn device_as(
        &self,
        mac: &str,
        method: PushMethod,
        fw_type: FirmwareType,
        hw: &str,
        sw: &str,
        fid: Option<i64>,
        online: bool,
    ) -> Dev {
        let passcode = "ABCDEFGHIJ".to_owned();
        let did = self.domain().register_device(&self.pk, mac, &passcode, RegisteredVia::Plain, None).await.unwrap();
        let dev = Dev { did, passcode };
        self.report(&dev, method, fw_type, hw, sw, fid).await;
        if online {
            self.online(&dev).await;
        }
        dev
    }

    pub async fn online(&self, dev: &Dev) {
        self.presence.online(&dev.did, "gw-test", None, self.domain().clock.now_ms());
        self.presence.flush().await;
    }

    /// A device check; returns the offered firmware id, if any.
    pub async fn report(
        &self,
        dev: &Dev,
        method: PushMethod,
        fw_type: FirmwareType,
        hw: &str,
        sw: &str,
        fid: Option<i64>,
    ) -> Option<i64> {
        let check = Check {
            did: dev.did.clone(),
            auth: CheckAuth::Passcode(dev.passcode.clone()),
            method,
            fw_type,
            hard: Some(hw.to_owned()),
            soft: Some(sw.to_owned()),
            fid,
            ip: None,
            node: None,
        };
        self.domain().device_check(check).await.unwrap().ok().map(|o| o.firmware.id)
    }

    pub async fn check_v41(&self, dev: &Dev, sw: &str) -> Option<i64> {
        self.report(dev, PushMethod::V41, FirmwareType::Wifi, HW, sw, None).await
    }

    /// Uploads V4.1 Wi-Fi firmware of `sw`; `verified` marks it verified (the verification
    /// flow itself is tested in `device_plane.rs` and `rules_fleet.rs`).
    pub async fn firmware(&self, sw: &str, verified: bool) -> i64 {
        let fields =
            [("name", "fw"), ("type", "wifi"), ("push_method", "V4.1"), ("hard_version", HW), ("soft_version", sw)];
        let r = self.s.upload(&self.pk, form(&fields, Some(("a.bin", image(2000, sw.len() as u8))))).await;
        let id = expect_status(r, StatusCode::CREATED).await["id"].as_i64().unwrap();
        if verified {
            self.s.verify_directly(id).await;
        }
        id
    }

    pub async fn create_rule(&self, fw: i64, body: Value) -> Value {
        expect_status(self.s.post(&format!("/api/v1/firmware/{fw}/rules"), body).await, StatusCode::CREATED).await
    }

    pub async fn start_rule(&self, id: i64) -> reqwest::Response {
        self.s.post(&format!("/api/v1/rules/{id}/start"), json!({ "confirm_stable": true, "accept_terms": true })).await
    }

    pub async fn rule(&self, id: i64) -> Value {
        expect_status(self.s.get(&format!("/api/v1/rules/{id}")).await, StatusCode::OK).await
    }

    pub fn at(&self, y: i32, mo: u32, d: u32, h: u32, mi: u32) {
        self.s.api.t.clock.set(Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap());
    }
}

pub fn rule_body(target: Value, old: &[&str], period: (&str, &str), window: (u8, u8)) -> Value {
    let mut body = json!({
        "old_versions": old,
        "period": { "start": period.0, "end": period.1 },
        "daily_window": { "start_hour": window.0, "end_hour": window.1 },
    });
    for (k, v) in target.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn round(f: &Fleet) -> ota_domain::rules::schedule::PushRound {
    f.domain().push_round(1000, std::time::Duration::ZERO).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_pushes_once_per_window_opening_and_completes_at_the_period_end() {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    let a = f.device("5CCF7F100001", "04020006", true).await;
    let b = f.device("5CCF7F100002", "04020006", true).await;
    let c = f.device("5CCF7F100003", "04020006", true).await;
    let late = f.device("5CCF7F100004", "04020006", false).await;
    let other_version = f.device("5CCF7F100005", "04020007", true).await;
    let fw = f.firmware("04020021", true).await;

    // 22:00 → 02:00, three days. The fake clock starts at 2026-01-01 00:00: inside the
    // opening that began the evening before the period, which counts from midnight.
    let rule = f
        .create_rule(fw, rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-03"), (22, 2)))
        .await;
    let id = rule["request_id"].as_i64().unwrap();
    assert_eq!(rule["status"], "not_started");
    let started = expect_status(f.start_rule(id).await, StatusCode::OK).await;
    assert_eq!(started["target_devices"], 4, "{started:#}");
    assert_eq!(started["from_versions"], json!(["04020006"]));
    assert_eq!(started["to_version"], "04020021");

    let r = round(&f).await;
    assert_eq!((r.claimed, r.notified), (3, 3));
    assert_eq!(rec.take(), sorted(&[&a.did, &b.did, &c.did]));
    assert!(f.rule(id).await["window_open"].as_bool().unwrap());
    // Same opening, later and across no boundary: nothing more.
    assert_eq!(round(&f).await.claimed, 0);
    f.at(2026, 1, 1, 1, 59);
    assert_eq!(round(&f).await.claimed, 0);

    // A succeeds by reporting the target version; it counts once however often it reports.
    assert_eq!(f.check_v41(&a, "04020021").await, None);
    assert_eq!(f.check_v41(&a, "04020021").await, None);
    let v = f.rule(id).await;
    assert_eq!((v["counts"]["succeeded"].as_i64(), v["counts"]["targets"].as_i64()), (Some(1), Some(4)));

    // Outside the window: the late device comes online and checks in by itself, and is not
    // offered anything; the scheduler pushes nothing.
    f.at(2026, 1, 1, 12, 0);
    f.online(&late).await;
    assert_eq!(f.check_v41(&late, "04020006").await, None);
    assert_eq!(round(&f).await.claimed, 0);
    assert!(!f.rule(id).await["window_open"].as_bool().unwrap());

    // The next opening: every online target not yet succeeded, once.
    f.at(2026, 1, 1, 22, 0);
    assert_eq!(round(&f).await.notified, 3);
    assert_eq!(rec.take(), sorted(&[&b.did, &c.did, &late.did]));
    // After midnight it is the same opening: no second push the same night.
    f.at(2026, 1, 2, 1, 0);
    assert_eq!(round(&f).await.claimed, 0);
    // A check inside the window is offered the firmware.
    assert_eq!(f.check_v41(&b, "04020006").await, Some(fw));
    // A device of another version is no target and is offered nothing.
    assert_eq!(f.check_v41(&other_version, "04020007").await, None);

    // The last night of the period: pushed again, a minute before it ends. Pushed targets
    // that are still on their way when the period ends expire.
    f.at(2026, 1, 3, 23, 59);
    assert_eq!(round(&f).await.notified, 3);
    rec.take();
    f.at(2026, 1, 4, 0, 0);
    assert_eq!(round(&f).await.claimed, 0);
    let done = f.rule(id).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["counts"]["succeeded"], 1);
    assert_eq!(done["counts"]["expired"], 3);
    assert_eq!(done["counts"]["not_succeeded"], 3);
    let expired =
        expect_status(f.s.get(&format!("/api/v1/rules/{id}/devices?filter=not_succeeded")).await, StatusCode::OK).await;
    for d in expired["items"].as_array().unwrap() {
        assert_eq!(d["stage"], "expired", "{d:#}");
        // Every earlier night ended with a timeout: pushed, never checked within 120 s.
        let attempts = d["attempts"].as_array().unwrap();
        assert!(
            attempts.iter().any(|a| a["failure"] == "timeout" && a["stage"] == "notified" || a["stage"] == "checked"),
            "{d:#}"
        );
        assert_eq!(attempts.last().unwrap()["outcome"], "expired", "{d:#}");
    }
    let fw_view = expect_status(f.s.get(&format!("/api/v1/firmware/{fw}")).await, StatusCode::OK).await;
    assert_eq!(fw_view["push_status"], "completed");
    // Completed rules never push again.
    f.at(2026, 1, 4, 23, 0);
    assert_eq!(round(&f).await.claimed, 0);
    assert_eq!(f.check_v41(&b, "04020006").await, None);
}

fn sorted(dids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = dids.iter().map(|d| d.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_devices_join_a_pushing_rule_and_failed_pushes_are_retried() {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    let a = f.device("5CCF7F200001", "04020006", true).await;
    let refused = f.device("5CCF7F200002", "04020006", true).await;
    rec.refuse.lock().unwrap().push(refused.did.clone());
    let fw = f.firmware("04020021", true).await;
    let rule = f
        .create_rule(fw, rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-05"), (0, 24)))
        .await;
    let id = rule["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id).await, StatusCode::OK).await;

    let r = round(&f).await;
    assert_eq!((r.notified, r.failed), (1, 1));
    assert_eq!(rec.take(), vec![a.did.clone()]);
    let refused_view = expect_status(
        f.s.get(&format!("/api/v1/rules/{id}/devices?filter=not_succeeded&mac=5CCF7F200002")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(refused_view["total"], 1);
    // A push the broker refused reached nobody: the target is not notified.
    assert_eq!(refused_view["items"][0]["stage"], "pending");
    assert!(refused_view["items"][0]["times"]["notified_at"].is_null());
    assert!(refused_view["items"][0]["last_error"].as_str().unwrap().contains("broker refused"), "{refused_view:#}");
    // It waits out the delivery timeout, then is tried again in the same opening.
    assert_eq!(round(&f).await.claimed, 0);
    f.s.api.t.clock.advance(chrono::Duration::seconds(11));
    rec.refuse.lock().unwrap().clear();
    assert_eq!(round(&f).await.notified, 1);
    assert_eq!(rec.take(), vec![refused.did.clone()]);

    // A push the broker takes but no edge delivers (the device's gateway died) is no
    // notification either: sent again after the delivery timeout, while the device is online.
    let lost = f.device("5CCF7F200004", "04020006", true).await;
    rec.lose.lock().unwrap().push(lost.did.clone());
    f.check_v41(&lost, "04020005").await; // joins the rule as a target (not on an old version yet)
    f.check_v41(&lost, "04020006").await;
    assert_eq!(f.rule(id).await["counts"]["targets"], 3);
    async fn lost_view(f: &Fleet, id: i64) -> Value {
        let url = format!("/api/v1/rules/{id}/devices?mac=5CCF7F200004");
        expect_status(f.s.get(&url).await, StatusCode::OK).await["items"][0].clone()
    }
    let before = lost_view(&f, id).await;
    assert_eq!(before["stage"], "checked", "{before:#}");
    // Its check counts as this opening's attempt; it times out and is retried after the back-off.
    f.s.api.t.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(round(&f).await.due, 1);
    assert_eq!(lost_view(&f, id).await["failure"], json!({ "kind": "timeout", "stage": "checked" }));
    f.s.api.t.clock.advance(chrono::Duration::seconds(121));
    assert_eq!(round(&f).await.notified, 1, "the retry");
    rec.take();
    assert_eq!(lost_view(&f, id).await["stage"], "failed", "not delivered: still failed, waiting");
    f.s.api.t.clock.advance(chrono::Duration::seconds(11));
    rec.lose.lock().unwrap().clear();
    let r = round(&f).await;
    assert_eq!((r.due, r.notified), (1, 1), "the missed delivery is cleared and the push sent again");
    let delivered = lost_view(&f, id).await;
    assert_eq!(
        (delivered["stage"].as_str(), delivered["attempt"].as_i64()),
        (Some("notified"), Some(2)),
        "{delivered:#}"
    );
    assert_eq!(delivered["attempts"].as_array().unwrap().len(), 1);

    // A device registered after the start, reporting an old version, joins on its check and
    // is offered at once (the window is open); that check is its attempt for this opening, so
    // the scheduler does not push it.
    let newcomer = f.device("5CCF7F200003", "04020006", true).await;
    assert_eq!(f.check_v41(&newcomer, "04020006").await, Some(fw));
    assert_eq!(f.rule(id).await["counts"]["targets"], 4);
    assert_eq!(round(&f).await.claimed, 0);
    // Every target succeeds: the rule completes before its period ends.
    for d in [&a, &refused, &newcomer, &lost] {
        f.check_v41(d, "04020021").await;
    }
    round(&f).await;
    let v = f.rule(id).await;
    assert_eq!(v["status"], "completed");
    assert_eq!(v["counts"]["succeeded"], 4);
    let csv = f.s.get(&format!("/api/v1/rules/{id}/devices.csv?filter=succeeded")).await;
    assert_eq!(csv.status(), StatusCode::OK);
    let text = csv.text().await.unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.starts_with("mac,did,stage,"));
    assert!(text.lines().skip(1).all(|l| l.contains(",succeeded,04020006,04020021,")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_requests_are_validated_and_refusals_change_nothing() {
    let f = Fleet::start().await;
    f.import("5CCF7F300001,广东省-广州市\n5CCF7F300002,广东省-深圳市\n5CCF7F300003,中国/浙江省/杭州市\n").await;
    let _a = f.device("5CCF7F300001", "04020006", true).await;
    let _b = f.device("5CCF7F300002", "04020006", false).await;
    let _c = f.device("5CCF7F300003", "04020019", true).await;
    let _d = f.device("5CCF7F300004", "04020021", true).await; // already on the target
    let unverified = f.firmware("04020021", false).await;
    let base = |target: Value| rule_body(target, &["04020006", "04020019"], ("2026-01-01", "2026-01-31"), (0, 24));

    // Old versions the fleet reports for this firmware's series.
    let old =
        expect_status(f.s.get(&format!("/api/v1/firmware/{unverified}/old-versions")).await, StatusCode::OK).await;
    assert_eq!(old, json!([{ "version": "04020006", "devices": 2 }, { "version": "04020019", "devices": 1 }]));

    // Previews: by region (province-city and country/province/city forms), by MACs, all.
    let preview = |body: Value| {
        let s = &f.s;
        async move {
            expect_status(s.post(&format!("/api/v1/firmware/{unverified}/rules/preview"), body).await, StatusCode::OK)
                .await
        }
    };
    let p = preview(base(json!({ "target": "regions", "regions": ["广东省-广州市", "中国/浙江省"] }))).await;
    assert_eq!((p["targets"].as_i64(), p["online"].as_i64()), (Some(2), Some(2)), "{p:#}");
    let p = preview(base(json!({ "target": "regions", "regions": ["广东省"] }))).await;
    assert_eq!((p["targets"].as_i64(), p["online"].as_i64()), (Some(2), Some(1)), "{p:#}");
    let p = preview(base(
        json!({ "target": "macs", "macs": "5ccf7f300001\n5CCF7F300004, 5C:CF:7F:30:00:01 AABBCCDDEEFF" }),
    ))
    .await;
    assert_eq!(p["targets"], 1, "{p:#}");
    assert_eq!(p["already_on_target"], 1);
    assert_eq!(p["unknown_macs"], 1);
    let p = preview(base(json!({ "target": "all" }))).await;
    assert_eq!(
        (p["targets"].as_i64(), p["online"].as_i64(), p["already_on_target"].as_i64()),
        (Some(3), Some(2), Some(1))
    );

    // Bad input, each with its code; nothing is created.
    let cases: Vec<(Value, StatusCode, &str, Option<&str>)> = vec![
        (base(json!({ "target": "regions" })), StatusCode::BAD_REQUEST, "invalid_field", Some("regions")),
        (
            base(json!({ "target": "regions", "regions": [" / "] })),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("regions"),
        ),
        (
            base(json!({ "target": "all", "regions": ["广东省"] })),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("regions"),
        ),
        (base(json!({ "target": "macs" })), StatusCode::BAD_REQUEST, "missing_field", Some("macs")),
        (
            base(json!({ "target": "macs", "macs": "5CCF7F300001\nnot-a-mac" })),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("macs"),
        ),
        (
            base(json!({ "target": "macs", "macs": "5CCF7F300001", "mac_list_id": 1 })),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("macs"),
        ),
        (base(json!({ "target": "macs", "mac_list_id": 999 })), StatusCode::NOT_FOUND, "mac_list_not_found", None),
        (
            rule_body(json!({ "target": "all" }), &[], ("2026-01-01", "2026-01-31"), (0, 24)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("old_versions"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04030001"], ("2026-01-01", "2026-01-31"), (0, 24)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("old_versions"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04020021"], ("2026-01-01", "2026-01-31"), (0, 24)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("old_versions"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04020006"], ("2026-02-01", "2026-01-31"), (0, 24)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("period"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04020006"], ("2026-1-1", "2026-01-31"), (0, 24)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("period"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-31"), (5, 5)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("daily_window"),
        ),
        (
            rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-31"), (24, 2)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("daily_window"),
        ),
        (base(json!({ "target": "everything" })), StatusCode::BAD_REQUEST, "invalid_field", Some("target")),
        (base(json!({ "target": "all", "colour": "red" })), StatusCode::BAD_REQUEST, "invalid_field", Some("colour")),
        // Zero targets: nobody in this region.
        (
            base(json!({ "target": "regions", "regions": ["西藏自治区"] })),
            StatusCode::CONFLICT,
            "rule_no_targets",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let e =
            expect_error(f.s.post(&format!("/api/v1/firmware/{unverified}/rules"), body.clone()).await, status, code)
                .await;
        if let Some(field) = field {
            assert_eq!(e["details"]["field"], field, "{body} → {e:#}");
        }
    }
    let e = expect_error(
        f.s.post(
            &format!("/api/v1/firmware/{unverified}/rules"),
            base(json!({ "target": "macs", "macs": "5CCF7F300001\n\nxyz" })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(e["details"]["invalid"], json!([{ "line": 3, "value": "xyz" }]));
    expect_error(
        f.s.post("/api/v1/firmware/999/rules", base(json!({ "target": "all" }))).await,
        StatusCode::NOT_FOUND,
        "firmware_not_found",
    )
    .await;
    let none = expect_status(f.s.get(&format!("/api/v1/firmware/{unverified}/rules")).await, StatusCode::OK).await;
    assert_eq!(none, json!([]));

    // A draft rule for unverified firmware is allowed, but never starts.
    let rule = f.create_rule(unverified, base(json!({ "target": "all" }))).await;
    let id = rule["request_id"].as_i64().unwrap();
    assert_eq!(rule["counts"]["targets"], 0, "targets are taken at the start");
    expect_error(f.start_rule(id).await, StatusCode::CONFLICT, "firmware_not_verified").await;
    for (body, field) in [
        (json!({ "confirm_stable": false, "accept_terms": true }), "confirm_stable"),
        (json!({ "confirm_stable": true }), "accept_terms"),
    ] {
        let e = expect_error(
            f.s.post(&format!("/api/v1/rules/{id}/start"), body).await,
            StatusCode::BAD_REQUEST,
            "confirmation_required",
        )
        .await;
        assert_eq!(e["details"]["field"], field);
    }
    expect_error(
        f.s.post(&format!("/api/v1/rules/{id}/stop"), json!({})).await,
        StatusCode::CONFLICT,
        "rule_wrong_status",
    )
    .await;
    expect_error(f.s.get("/api/v1/rules/424242").await, StatusCode::NOT_FOUND, "rule_not_found").await;
    expect_error(f.s.get("/api/v1/rules/abc").await, StatusCode::BAD_REQUEST, "invalid_path").await;
    // An edit before the start may change anything, and is validated the same way.
    let edited = expect_status(
        f.s.patch(
            &format!("/api/v1/rules/{id}"),
            json!({ "target": "regions", "regions": ["广东省"], "name": "south" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(edited["target"], "regions");
    assert_eq!(edited["regions"][0]["province"], "广东省");
    let before = f.rule(id).await;
    expect_error(
        f.s.patch(&format!("/api/v1/rules/{id}"), json!({ "regions": ["西藏自治区"] })).await,
        StatusCode::CONFLICT,
        "rule_no_targets",
    )
    .await;
    expect_error(
        f.s.patch(&format!("/api/v1/rules/{id}"), json!({ "daily_window": { "start_hour": 3, "end_hour": 3 } })).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(f.rule(id).await, before, "a refused edit changes nothing");

    // Bad input on the other rule endpoints.
    let bad_preview = rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-31"), (7, 7));
    let e = expect_error(
        f.s.post(&format!("/api/v1/firmware/{unverified}/rules/preview"), bad_preview).await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(e["details"]["field"], "daily_window");
    for query in ["mac=zz", "mac=12", "filter=bogus", "per_page=0", "page=0"] {
        let r = f.s.get(&format!("/api/v1/rules/{id}/devices?{query}")).await;
        expect_error(r, StatusCode::BAD_REQUEST, "invalid_query").await;
    }
    expect_error(
        f.s.get(&format!("/api/v1/rules/{id}/devices.csv?mac=zz")).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    )
    .await;
    expect_error(f.s.get("/api/v1/rules/424242/devices").await, StatusCode::NOT_FOUND, "rule_not_found").await;
    expect_error(f.s.get("/api/v1/rules/424242/devices.csv").await, StatusCode::NOT_FOUND, "rule_not_found").await;
    expect_error(f.s.get(&format!("/api/v1/rules/{id}/macs")).await, StatusCode::NOT_FOUND, "mac_list_not_found").await;
    expect_error(f.s.get("/api/v1/firmware/999/old-versions").await, StatusCode::NOT_FOUND, "firmware_not_found").await;
    let start = || f.s.client.post(f.s.url(&format!("/api/v1/rules/{id}/start"))).bearer_auth(&f.s.token);
    let r = start().header("content-type", "application/json").body("{").send();
    expect_error(r.await.unwrap(), StatusCode::BAD_REQUEST, "invalid_json").await;
    let r = start().body("{}").send();
    expect_error(r.await.unwrap(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    assert_eq!(f.rule(id).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_checks_status_overlap_and_period_and_edits_narrow_once_started() {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    for i in 1..=4 {
        f.device(&format!("5CCF7F40000{i}"), "04020006", true).await;
    }
    let fw1 = f.firmware("04020021", true).await;
    let fw2 = f.firmware("04020025", true).await; // same series
    let r1 = f
        .create_rule(
            fw1,
            rule_body(
                json!({ "target": "macs", "macs": "5CCF7F400001 5CCF7F400002" }),
                &["04020006"],
                ("2026-01-01", "2026-01-10"),
                (0, 24),
            ),
        )
        .await;
    let r2 = f
        .create_rule(fw2, rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-10"), (0, 24)))
        .await;
    let (id1, id2) = (r1["request_id"].as_i64().unwrap(), r2["request_id"].as_i64().unwrap());
    assert_ne!(id1, id2);
    let started = expect_status(f.start_rule(id1).await, StatusCode::OK).await;
    assert_eq!(started["target_devices"], 2);
    let fw_view = expect_status(f.s.get(&format!("/api/v1/firmware/{fw1}")).await, StatusCode::OK).await;
    assert_eq!(fw_view["push_status"], "pushing");
    expect_error(f.start_rule(id1).await, StatusCode::CONFLICT, "rule_wrong_status").await;
    expect_error(f.s.delete(&format!("/api/v1/firmware/{fw1}")).await, StatusCode::CONFLICT, "firmware_in_use").await;

    // The second rule overlaps on two devices of the same series: its preview says so and its
    // start is refused, naming the first rule.
    let p = expect_status(f.s.get(&format!("/api/v1/rules/{id2}/preview")).await, StatusCode::OK).await;
    assert_eq!((p["targets"].as_i64(), p["in_other_rules"].as_i64()), (Some(4), Some(2)));
    assert_eq!(p["other_rule_ids"], json!([id1]));
    let e = expect_error(f.start_rule(id2).await, StatusCode::CONFLICT, "rule_overlap").await;
    assert_eq!(e["details"]["rule_ids"], json!([id1]));
    assert_eq!(e["details"]["devices"], 2);
    assert_eq!(f.rule(id2).await["status"], "not_started");
    assert_eq!(f.rule(id2).await["counts"]["targets"], 0, "a refused start takes no targets");

    // Once started only the name and the period's end may change.
    let before = f.rule(id1).await;
    for body in [
        json!({ "old_versions": ["04020006"] }),
        json!({ "daily_window": { "start_hour": 1, "end_hour": 2 } }),
        json!({ "period": { "start": "2026-01-02", "end": "2026-01-10" } }),
        json!({ "target": "all" }),
    ] {
        expect_error(f.s.patch(&format!("/api/v1/rules/{id1}"), body).await, StatusCode::CONFLICT, "rule_wrong_status")
            .await;
    }
    assert_eq!(f.rule(id1).await, before);
    let e = expect_error(
        f.s.patch(&format!("/api/v1/rules/{id1}"), json!({ "period": { "start": "2026-01-01", "end": "2025-12-31" } }))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_field",
    )
    .await;
    assert_eq!(e["details"]["field"], "period");
    let extended = expect_status(
        f.s.patch(
            &format!("/api/v1/rules/{id1}"),
            json!({ "name": "pilot", "period": { "start": "2026-01-01", "end": "2026-02-28" } }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(extended["period"]["end"], "2026-02-28");
    assert_eq!(extended["name"], "pilot");
    expect_error(f.s.delete(&format!("/api/v1/rules/{id1}")).await, StatusCode::CONFLICT, "rule_wrong_status").await;

    // Stopped: no offers; the other rule may now start on the rest? No: the stopped rule's
    // targets stay taken only while it pushes, so the second rule can start.
    let stopped = expect_status(f.s.post(&format!("/api/v1/rules/{id1}/stop"), json!({})).await, StatusCode::OK).await;
    assert_eq!(stopped["status"], "stopped");
    assert!(stopped["stopped_at"].is_string());
    let started2 = expect_status(f.start_rule(id2).await, StatusCode::OK).await;
    assert_eq!(started2["target_devices"], 4);
    // ...and now the first cannot start again while the second pushes to its devices.
    expect_error(f.start_rule(id1).await, StatusCode::CONFLICT, "rule_overlap").await;
    expect_status(f.s.post(&format!("/api/v1/rules/{id2}/stop"), json!({})).await, StatusCode::OK).await;
    expect_status(f.start_rule(id1).await, StatusCode::OK).await;

    // A period that is over refuses the start.
    expect_status(f.s.post(&format!("/api/v1/rules/{id1}/stop"), json!({})).await, StatusCode::OK).await;
    f.at(2026, 3, 1, 0, 0);
    expect_error(f.start_rule(id1).await, StatusCode::CONFLICT, "rule_period_over").await;
    // A stopped rule can be deleted, with its results.
    expect_status(f.s.delete(&format!("/api/v1/rules/{id2}")).await, StatusCode::NO_CONTENT).await;
    expect_error(f.s.get(&format!("/api/v1/rules/{id2}")).await, StatusCode::NOT_FOUND, "rule_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_lists_upload_with_line_numbers_and_download_again() {
    let f = Fleet::start().await;
    f.device("5CCF7F500001", "04020006", true).await;
    let text = "5ccf7f500001\n5CCF7F500002,5CCF7F500001\nbogus\n\n5C-CF-7F-50-00-03\n";
    let list =
        expect_status(f.s.post_text(&format!("/api/v1/products/{}/mac-lists", f.pk), text).await, StatusCode::CREATED)
            .await;
    assert_eq!(list["count"], 3);
    assert_eq!(list["duplicates"], 1);
    assert_eq!(list["invalid"], json!([{ "line": 3, "value": "bogus" }]));
    let id = list["id"].as_i64().unwrap();
    let again = expect_status(f.s.get(&format!("/api/v1/mac-lists/{id}")).await, StatusCode::OK).await;
    assert_eq!(again, list);
    let macs = f.s.get(&format!("/api/v1/mac-lists/{id}/macs")).await.text().await.unwrap();
    assert_eq!(macs, "5CCF7F500001\n5CCF7F500002\n5CCF7F500003\n");

    let fw = f.firmware("04020021", false).await;
    let rule = f
        .create_rule(
            fw,
            rule_body(
                json!({ "target": "macs", "mac_list_id": id }),
                &["04020006"],
                ("2026-01-01", "2026-01-02"),
                (0, 24),
            ),
        )
        .await;
    assert_eq!(rule["mac_count"], 3);
    let rid = rule["request_id"].as_i64().unwrap();
    let download = f.s.get(&format!("/api/v1/rules/{rid}/macs")).await;
    assert_eq!(download.status(), StatusCode::OK);
    assert!(download.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    assert_eq!(download.text().await.unwrap(), macs);

    // Bad uploads: nothing valid, too large.
    let post = |body: Vec<u8>| {
        f.s.client
            .post(f.s.url(&format!("/api/v1/products/{}/mac-lists", f.pk)))
            .bearer_auth(&f.s.token)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    let e = expect_error(post(b"nothing here".to_vec()).await.unwrap(), StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(e["details"]["invalid_count"], 2);
    expect_error(post(vec![b'A'; 33 * 1024 * 1024]).await.unwrap(), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
        .await;
    expect_error(post(vec![0xff, 0xfe]).await.unwrap(), StatusCode::BAD_REQUEST, "invalid_field").await;
    expect_error(f.s.get("/api/v1/mac-lists/999").await, StatusCode::NOT_FOUND, "mac_list_not_found").await;
    let r =
        f.s.client
            .post(f.s.url("/api/v1/products/nope/mac-lists"))
            .bearer_auth(&f.s.token)
            .body("5CCF7F500001")
            .send()
            .await
            .unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "product_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_requeue_failed_and_undelivered_targets() {
    let f = Fleet::start().await;
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    let silent = f.device("5CCF7F500001", "04020006", true).await;
    let lost = f.device("5CCF7F500002", "04020006", true).await;
    rec.lose.lock().unwrap().push(lost.did.clone());
    let fw = f.firmware("04020021", true).await;
    let mut body = rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-05"), (0, 24));
    // The console's strict policy: a failure waits for the next opening.
    body["policy"] = json!({ "retry": { "within_opening": false } });
    let id = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    assert_eq!(round(&f).await.notified, 2);
    rec.take();
    // The silent device never checks: its attempt times out; the lost push is never delivered.
    f.s.api.t.clock.advance(chrono::Duration::seconds(121));
    let r = round(&f).await;
    assert_eq!((r.due, r.notified), (2, 1), "the missed delivery is sent again; the failure waits");
    assert_eq!(rec.take(), vec![lost.did.clone()]);
    let list = expect_status(f.s.get(&format!("/api/v1/rules/{id}/devices")).await, StatusCode::OK).await;
    let by_mac = |mac: &str| list["items"].as_array().unwrap().iter().find(|d| d["mac"] == mac).unwrap().clone();
    assert_eq!(by_mac("5CCF7F500001")["failure"], json!({ "kind": "timeout", "stage": "notified" }));
    assert_eq!(by_mac("5CCF7F500002")["stage"], "pending");
    // Under the strict policy the failed one waits for the next opening; the lost one is
    // tried again after each delivery timeout.
    f.s.api.t.clock.advance(chrono::Duration::seconds(11));
    assert_eq!(round(&f).await.notified, 1);
    assert_eq!(rec.take(), vec![lost.did.clone()]);

    // Stop + start: both are queued afresh and pushed again at once, in the same opening.
    rec.lose.lock().unwrap().clear();
    expect_status(f.s.post(&format!("/api/v1/rules/{id}/stop"), json!({})).await, StatusCode::OK).await;
    f.s.api.t.clock.advance(chrono::Duration::seconds(11));
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    let list = expect_status(f.s.get(&format!("/api/v1/rules/{id}/devices")).await, StatusCode::OK).await;
    for d in list["items"].as_array().unwrap() {
        assert_eq!((d["stage"].as_str(), d["attempt"].as_i64()), (Some("pending"), Some(0)), "{d:#}");
        assert!(d["failure"].is_null(), "{d:#}");
    }
    let silent_view = list["items"].as_array().unwrap().iter().find(|d| d["mac"] == "5CCF7F500001").unwrap().clone();
    assert_eq!(silent_view["attempts"][0]["failure"], "timeout", "the history stays");
    assert_eq!(round(&f).await.notified, 2);
    assert_eq!(rec.take(), sorted(&[&silent.did, &lost.did]));
}

/// A record as read: `(mac, from_version, zone, wave, stage)`.
type RecordRow = (Option<String>, Option<String>, Option<String>, i64, String);

/// A rule's records as stored: `(from_version, zone, wave, stage)` by MAC.
async fn records_of(
    f: &Fleet,
    rule_id: i64,
) -> std::collections::BTreeMap<String, (Option<String>, Option<String>, i64, String)> {
    use diesel::prelude::*;
    use ota_domain::schema::{devices, upgrades};
    let rows: Vec<RecordRow> = f
        .domain()
        .db
        .run(move |c| {
            Ok(upgrades::table
                .inner_join(devices::table)
                .filter(upgrades::rule_id.eq(rule_id))
                .select((devices::mac, upgrades::from_version, upgrades::zone, upgrades::wave, upgrades::stage))
                .load(c)?)
        })
        .await
        .unwrap();
    let n = rows.len();
    let out: std::collections::BTreeMap<_, _> =
        rows.into_iter().map(|(mac, from, zone, wave, stage)| (mac.unwrap(), (from, zone, wave, stage))).collect();
    assert_eq!(out.len(), n, "one record per device");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_takes_exactly_its_targets_with_versions_zones_and_waves_in_one_statement() {
    let f = Fleet::start().await;
    f.at(2026, 1, 2, 12, 0);
    f.import(
        "5CCF7F600001,中国/广东省/广州市\n5CCF7F600002,中国/浙江省/杭州市\n5CCF7F600003,中国/广东省/深圳市\n\
         5CCF7F600004,中国/广东省/广州市\n5CCF7F600005,中国/广东省/广州市\n5CCF7F600006,中国/四川省/成都市\n",
    )
    .await;
    f.device("5CCF7F600001", "04020006", true).await; // Guangzhou: the province's zone
    f.device("5CCF7F600002", "04020010", false).await; // Hangzhou: the country's zone; offline still counts
    f.device("5CCF7F600003", "04020006", true).await; // Shenzhen: its own zone
    f.device("5CCF7F600004", "04020021", true).await; // already on the target: not taken
    f.device("5CCF7F600005", "04020015", true).await; // a version the rule does not name
    f.device_as("5CCF7F600006", PushMethod::V41, FirmwareType::Wifi, "00OTHER1", "04020006", None, true).await; // other hardware
    f.device("5CCF7F600007", "04020010", true).await; // no region: the rule's zone
    let zones = json!({ "zones": [
        { "region": "中国/", "time_zone": "Asia/Urumqi" },
        { "region": "中国/广东省", "time_zone": "Asia/Shanghai" },
    ]});
    expect_status(f.s.put("/api/v1/region-zones", zones).await, StatusCode::OK).await;
    let own = json!({ "time_zone": "Asia/Hong_Kong" });
    expect_status(f.s.put("/api/v1/devices/5CCF7F600003/time-zone", own).await, StatusCode::OK).await;

    let fw = f.firmware("04020021", true).await;
    let mut body =
        rule_body(json!({ "target": "all" }), &["04020006", "04020010"], ("2026-01-01", "2030-12-31"), (0, 24));
    body["policy"] = json!({ "time_zone": "Europe/Berlin" });
    let id = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    let started = expect_status(f.start_rule(id).await, StatusCode::OK).await;
    assert_eq!(started["target_devices"], 4, "{started:#}");
    assert_eq!(started["from_versions"], json!(["04020006", "04020010"]), "{started:#}");
    let rec = |from: &str, zone: &str| (Some(from.to_owned()), Some(zone.to_owned()), 1, "pending".to_owned());
    let expected: std::collections::BTreeMap<String, _> = [
        ("5CCF7F600001".to_owned(), rec("04020006", "Asia/Shanghai")),
        ("5CCF7F600002".to_owned(), rec("04020010", "Asia/Urumqi")),
        ("5CCF7F600003".to_owned(), rec("04020006", "Asia/Hong_Kong")),
        ("5CCF7F600007".to_owned(), rec("04020010", "Europe/Berlin")),
    ]
    .into();
    assert_eq!(records_of(&f, id).await, expected);

    // Excluded while paused, then stopped; a device that appears meanwhile is taken at the
    // restart, those held already are not taken twice, and the excluded one stays excluded.
    let post = |path: String, body: Value| {
        let s = &f.s;
        async move { s.post(&path, body).await }
    };
    expect_status(post(format!("/api/v1/rules/{id}/pause"), json!({})).await, StatusCode::OK).await;
    let r = post(format!("/api/v1/rules/{id}/exclude"), json!({ "macs": "5CCF7F600001" })).await;
    assert_eq!(expect_status(r, StatusCode::OK).await["excluded"], 1);
    expect_status(post(format!("/api/v1/rules/{id}/resume"), json!({})).await, StatusCode::OK).await;
    expect_status(post(format!("/api/v1/rules/{id}/stop"), json!({})).await, StatusCode::OK).await;
    f.device("5CCF7F600008", "04020006", true).await;
    let again = expect_status(f.start_rule(id).await, StatusCode::OK).await;
    assert_eq!(again["target_devices"], 5, "{again:#}");
    let after = records_of(&f, id).await;
    assert_eq!(after.len(), 5);
    assert_eq!(
        after["5CCF7F600008"],
        (Some("04020006".to_owned()), Some("Europe/Berlin".to_owned()), 1, "pending".to_owned())
    );
    assert_eq!(after["5CCF7F600001"].3, "excluded", "the excluded device stays out: {after:?}");
    let v = f.rule(id).await;
    assert_eq!(v["counts"]["excluded"], 1, "{v:#}");
    expect_status(post(format!("/api/v1/rules/{id}/stop"), json!({})).await, StatusCode::OK).await;

    // A MAC-list rule of another firmware of the series takes only the listed targets.
    let list = expect_status(
        f.s.post_text(
            &format!("/api/v1/products/{}/mac-lists", f.pk),
            "5CCF7F600002\n5CCF7F600004\n5CCF7F600006\n5CCF7F600008\n",
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let fw2 = f.firmware("04020022", true).await;
    let body = rule_body(
        json!({ "target": "macs", "mac_list_id": list["id"] }),
        &["04020006", "04020010", "04020021"],
        ("2026-01-01", "2030-12-31"),
        (0, 24),
    );
    let id2 = f.create_rule(fw2, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id2).await, StatusCode::OK).await;
    let listed: Vec<String> = records_of(&f, id2).await.into_keys().collect();
    assert_eq!(listed, ["5CCF7F600002", "5CCF7F600004", "5CCF7F600008"], "listed, on an old version, of the series");
    // And a region rule (a province, and a city of another) only its regions' targets.
    expect_status(post(format!("/api/v1/rules/{id2}/stop"), json!({})).await, StatusCode::OK).await;
    let fw3 = f.firmware("04020023", true).await;
    let body = rule_body(
        json!({ "target": "regions", "regions": ["中国/广东省", "中国/浙江省/杭州市"] }),
        &["04020006", "04020010", "04020021"],
        ("2026-01-01", "2030-12-31"),
        (0, 24),
    );
    let id3 = f.create_rule(fw3, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id3).await, StatusCode::OK).await;
    let regional: Vec<String> = records_of(&f, id3).await.into_keys().collect();
    assert_eq!(regional, ["5CCF7F600001", "5CCF7F600002", "5CCF7F600003", "5CCF7F600004"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_claims_pushes_and_records_a_whole_batch() {
    use diesel::prelude::*;
    use ota_domain::schema::upgrades;
    let f = Fleet::start().await;
    f.at(2026, 1, 2, 12, 0);
    let rec = Recorder::delivering(f.domain());
    f.domain().attach_notifier(Arc::new(rec.clone()));
    const N: usize = 150;
    for i in 0..N {
        f.device(&format!("5CCF7F61{i:04X}"), "04020006", true).await;
    }
    let fw = f.firmware("04020021", true).await;
    let body = rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2030-12-31"), (0, 24));
    let id = f.create_rule(fw, body).await["request_id"].as_i64().unwrap();
    expect_status(f.start_rule(id).await, StatusCode::OK).await;
    let notified = || async {
        f.domain()
            .db
            .run(move |c| {
                Ok(upgrades::table
                    .filter(upgrades::rule_id.eq(id))
                    .filter(upgrades::notified_at.is_not_null())
                    .count()
                    .get_result::<i64>(c)?)
            })
            .await
            .unwrap()
    };
    let mut all = std::collections::BTreeSet::new();
    for (limit, expect, total) in [(64, 64, 64), (64, 64, 128), (64, 22, 150), (64, 0, 150)] {
        let round = f.domain().push_round(limit, std::time::Duration::ZERO).await.unwrap();
        assert_eq!((round.claimed, round.notified, round.failed), (expect, expect, 0), "{round:?}");
        let sent = rec.take();
        assert_eq!(sent.len(), expect);
        for did in sent {
            assert!(all.insert(did), "a device pushed twice");
        }
        assert_eq!(notified().await, total as i64, "every push of the batch recorded as delivered");
    }
    assert_eq!(all.len(), N);
    let v = f.rule(id).await;
    assert_eq!(v["counts"]["notified"], N, "{v:#}");
}
