//! The device plane end to end: the API, a gateway and simulated GAgent devices over real
//! sockets. For every push method × firmware type a device registers, logs in, is verified,
//! gets the push, downloads, checks the MD5 and comes back on the new version.

use std::time::Duration;

use ota_gateway::{BusConfig, EdgeSettings, Gateway, GatewaySettings};
use ota_sim::{Device, DeviceConfig, DeviceHandle, DeviceSpec, McuVersions, Method, Timing};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

/// A server with a gateway and one product.
pub struct Plane {
    pub s: Session,
    pub gw: Gateway,
    pub pk: String,
    #[allow(dead_code)] // encrypted-registration tests use it
    pub secret: String,
}

pub fn gateway_settings(bus: BusConfig) -> GatewaySettings {
    GatewaySettings {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        mqtt_bind: "127.0.0.1:0".parse().unwrap(),
        public_host: "api.gizwits.com".into(),
        mqtt_public_host: "127.0.0.1".into(),
        mqtt_public_port: None,
        bus,
        edge: EdgeSettings { pace: Duration::from_millis(5), ..EdgeSettings::default() },
        http: Default::default(),
        // Faster than the default 50/s so fleet tests finish quickly; still paced.
        push: ota_gateway::PushSettings { rate_per_second: 250, ..Default::default() },
        // Every simulated device shares 127.0.0.1: the default delays (0.5 s doubling to a
        // minute per address) would serialise the fleets' refused logins for minutes. The
        // throttle's own tests (`device_abuse.rs`) set theirs.
        throttle: ota_gateway::throttle::ThrottleSettings {
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_in_flight_per_source: 100_000,
            max_in_flight_per_clean_source: 100_000,
            ..Default::default()
        },
        liveness: Default::default(),
        admission: Default::default(),
    }
}

impl Plane {
    pub async fn start() -> Plane {
        Self::start_with(BusConfig::Embedded { listen: None }).await
    }

    pub async fn start_with(bus: BusConfig) -> Plane {
        Self::start_tuned(bus, |_| {}).await
    }

    /// A plane whose gateway settings `tune` adjusts first.
    pub async fn start_tuned(bus: BusConfig, tune: impl FnOnce(&mut GatewaySettings)) -> Plane {
        let s = Session::start().await;
        let mut settings = gateway_settings(bus);
        tune(&mut settings);
        let gw = Gateway::start(s.api.t.domain.clone(), settings).await.unwrap();
        let pk = s.create_product("lamp").await;
        let product = expect_status(s.get(&format!("/api/v1/products/{pk}")).await, StatusCode::OK).await;
        let secret = product["product_secret"].as_str().unwrap().to_owned();
        Plane { s, gw, pk, secret }
    }

    pub fn spec(&self, mac: &str, method: Method) -> DeviceSpec {
        DeviceSpec::new(self.pk.clone(), mac, method)
    }

    pub fn spawn(&self, spec: DeviceSpec) -> DeviceHandle {
        let config = DeviceConfig { timing: Timing::fast(), ..DeviceConfig::new(self.gw.http_addr) };
        Device::new(spec, config).unwrap().spawn()
    }

    /// Polls the device (by MAC) until `pred` holds; panics with the last view after 30 s.
    pub async fn wait_device(&self, mac: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_get(self, &format!("/api/v1/devices/{mac}"), what, 30, pred).await
    }

    pub async fn wait_verification(&self, fw_id: i64, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            last = expect_status(self.s.get(&format!("/api/v1/firmware/{fw_id}/verification")).await, StatusCode::OK)
                .await;
            if last["state"] == state {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("verification of firmware {fw_id} never reached {state}; last {last:#}");
    }

    pub async fn start_verification(&self, fw: i64, mac: &str) -> reqwest::Response {
        self.s.post(&format!("/api/v1/firmware/{fw}/verification"), json!({ "mac": mac })).await
    }

    pub async fn upload(&self, fields: &[(&str, &str)], file: (&str, Vec<u8>)) -> i64 {
        let r = self.s.upload(&self.pk, form(fields, Some(file))).await;
        expect_status(r, StatusCode::CREATED).await["id"].as_i64().unwrap()
    }
}

/// Polls `GET path` until `pred` holds on its body; panics with the last body after `secs`.
pub async fn wait_get(p: &Plane, path: &str, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..secs * 10 {
        let r = p.s.get(path).await;
        if r.status() == StatusCode::OK {
            last = r.json().await.unwrap();
            if pred(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never showed {what}; last {last:#}");
}

const MCU_HW: &str = "00STM032";

struct Case {
    method: Method,
    mcu: bool,
    mac: &'static str,
}

/// Uploads the firmware a device of `case` can take and returns its id and target version.
async fn upload_for(p: &Plane, case: &Case, image: Vec<u8>) -> i64 {
    let ty = if case.mcu { "mcu" } else { "wifi" };
    let hw = if case.mcu { MCU_HW } else { "00ESP826" };
    match case.method {
        Method::V41 => {
            let sw = if case.mcu { "00010002" } else { "04020021" };
            p.upload(
                &[("name", "next"), ("type", ty), ("push_method", "V4.1"), ("hard_version", hw), ("soft_version", sw)],
                ("image.bin", image),
            )
            .await
        }
        // V4 firmware names the versions of the devices it is for.
        Method::V4 => {
            let sw = if case.mcu { "00010001" } else { "04000001" };
            p.upload(
                &[("name", "next"), ("type", ty), ("push_method", "V4"), ("hard_version", hw), ("soft_version", sw)],
                ("image.bin", image),
            )
            .await
        }
        Method::V1V3 => {
            p.upload(&[("name", "v1.1"), ("type", "wifi"), ("push_method", "V1V3")], ("image.bin", image)).await
        }
    }
}

async fn verify_case(case: Case) {
    let p = Plane::start().await;
    let mut spec = p.spec(case.mac, case.method);
    spec.mcu = Some(McuVersions { hw: MCU_HW.into(), sw: "00010001".into() });
    let device = p.spawn(spec);
    let method_name = match case.method {
        Method::V1V3 => "V1V3",
        Method::V4 => "V4",
        Method::V41 => "V4.1",
    };
    let view = p
        .wait_device(case.mac, "online with its method known", |d| {
            d["online"] == true && d["push_method"] == method_name
        })
        .await;
    assert_eq!(view["registered_via"], "plain");
    assert_eq!(view["did"].as_str().unwrap().len(), 22);

    let image = image(6000, 3);
    let fw_id = upload_for(&p, &case, image.clone()).await;
    let started = expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw_id}/verification"), json!({ "mac": case.mac })).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(started["state"], "pushing");
    assert_eq!(started["seconds_remaining"], 600);

    let done = p.wait_verification(fw_id, "awaiting_confirmation").await;
    assert_eq!(done["stage"], "succeeded");
    let times = &done["times"];
    assert!(!times["notified_at"].is_null(), "{done:#}");
    assert!(!times["download_started_at"].is_null() || case.method == Method::V1V3, "{done:#}");
    assert!(!times["downloaded_at"].is_null(), "{done:#}");
    assert!(!times["succeeded_at"].is_null(), "{done:#}");

    let confirmed = expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw_id}/verification/confirm"), json!({ "stable": true })).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(confirmed["state"], "verified");
    let fw = expect_status(p.s.get(&format!("/api/v1/firmware/{fw_id}")).await, StatusCode::OK).await;
    assert_eq!(fw["verified"], true);
    expect_error(
        p.s.patch(&format!("/api/v1/firmware/{fw_id}"), json!({ "name": "x" })).await,
        StatusCode::CONFLICT,
        "firmware_locked",
    )
    .await;

    let snapshot = device.stop().await;
    assert_eq!(snapshot.counters.lost_packets, 0, "the gateway packed two packets into one device read");
    assert!(snapshot.counters.downloads_ok >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v41_wifi_verification_end_to_end() {
    verify_case(Case { method: Method::V41, mcu: false, mac: "5CCF7F000001" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v41_mcu_verification_end_to_end() {
    verify_case(Case { method: Method::V41, mcu: true, mac: "5CCF7F000002" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_wifi_verification_end_to_end() {
    verify_case(Case { method: Method::V4, mcu: false, mac: "5CCF7F000003" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_mcu_verification_end_to_end() {
    verify_case(Case { method: Method::V4, mcu: true, mac: "5CCF7F000004" }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1v3_wifi_verification_end_to_end() {
    verify_case(Case { method: Method::V1V3, mcu: false, mac: "5CCF7F000005" }).await;
}

fn v41_wifi_fields(sw: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![("name", "fw"), ("type", "wifi"), ("push_method", "V4.1"), ("hard_version", "00ESP826"), ("soft_version", sw)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_refuses_what_cannot_work() {
    let p = Plane::start().await;
    let mac = "5CCF7F000010";
    let device = p.spawn(p.spec(mac, Method::V41)); // runs 04020006
    p.wait_device(mac, "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;

    let good = p.upload(&v41_wifi_fields("04020021"), ("a.bin", image(3000, 1))).await;
    let other_series = p.upload(&v41_wifi_fields("04030001"), ("b.bin", image(3000, 2))).await;
    let older = p.upload(&v41_wifi_fields("04020001"), ("c.bin", image(3000, 3))).await;
    let v4 = p
        .upload(
            &[
                ("name", "v4"),
                ("type", "wifi"),
                ("push_method", "V4"),
                ("hard_version", "00ESP826"),
                ("soft_version", "04000001"),
            ],
            ("d.bin", image(3000, 4)),
        )
        .await;

    expect_error(p.start_verification(good, "5CCF7F00FFFF").await, StatusCode::NOT_FOUND, "device_not_found").await;
    expect_error(p.start_verification(good, "not-a-mac").await, StatusCode::BAD_REQUEST, "invalid_field").await;
    expect_error(p.start_verification(9999, mac).await, StatusCode::NOT_FOUND, "firmware_not_found").await;
    for (fw, why) in [(other_series, "series"), (older, "already runs"), (v4, "push method")] {
        let e = expect_error(p.start_verification(fw, mac).await, StatusCode::CONFLICT, "device_not_eligible").await;
        assert!(e["details"]["reason"].as_str().unwrap().contains(why), "{e:#}");
    }
    expect_error(
        p.s.get(&format!("/api/v1/firmware/{good}/verification")).await,
        StatusCode::NOT_FOUND,
        "verification_not_found",
    )
    .await;

    // Stop the device before it can upgrade: the push goes out, nothing comes back.
    let snapshot = device.stop().await;
    assert!(snapshot.did.is_some());
    p.wait_device(mac, "offline", |d| d["online"] == false).await;
    expect_error(p.start_verification(good, mac).await, StatusCode::CONFLICT, "device_offline").await;

    // Back online: start, refuse a second start, refuse an early confirmation, cancel, restart.
    let mut spec = p.spec(mac, Method::V41);
    spec.did = snapshot.did.clone();
    spec.passcode = snapshot.passcode.clone();
    spec.faults.never_return = true;
    let _device = p.spawn(spec);
    p.wait_device(mac, "online again", |d| d["online"] == true).await;
    expect_status(p.start_verification(good, mac).await, StatusCode::CREATED).await;
    expect_error(p.start_verification(good, mac).await, StatusCode::CONFLICT, "verification_in_progress").await;
    let confirm = p.s.post(&format!("/api/v1/firmware/{good}/verification/confirm"), json!({ "stable": true })).await;
    expect_error(confirm, StatusCode::CONFLICT, "verification_not_succeeded").await;
    let cancelled =
        expect_status(p.s.delete(&format!("/api/v1/firmware/{good}/verification")).await, StatusCode::OK).await;
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["reason"].as_str().unwrap().contains(ADMIN));
    expect_error(
        p.s.delete(&format!("/api/v1/firmware/{good}/verification")).await,
        StatusCode::NOT_FOUND,
        "verification_not_found",
    )
    .await;
    let fw = expect_status(p.s.get(&format!("/api/v1/firmware/{good}")).await, StatusCode::OK).await;
    assert_eq!(fw["verified"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_fails_and_a_silent_device_expires() {
    let p = Plane::start().await;
    let (cut, silent) = ("5CCF7F000020", "5CCF7F000021");
    let mut spec = p.spec(cut, Method::V41);
    spec.faults.drop_mid_download = true;
    let _a = p.spawn(spec);
    let mut spec = p.spec(silent, Method::V41);
    spec.faults.corrupt_byte = true;
    let _b = p.spawn(spec);
    for mac in [cut, silent] {
        p.wait_device(mac, "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;
    }
    let fw1 = p.upload(&v41_wifi_fields("04020021"), ("a.bin", image(3_000_000, 1))).await;
    let fw2 = p.upload(&v41_wifi_fields("04020022"), ("b.bin", image(3000, 2))).await;
    expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw1}/verification"), json!({ "mac": cut })).await,
        StatusCode::CREATED,
    )
    .await;
    let failed = p.wait_verification(fw1, "failed").await;
    assert_eq!(failed["stage"], "failed");
    assert!(failed["reason"].as_str().unwrap().starts_with("download cut after "), "{failed:#}");
    assert_eq!(failed["failure"], json!({ "kind": "download_cut", "stage": "downloading" }));
    assert!(!failed["times"]["download_started_at"].is_null());

    // The MD5 check fails on the device, which says nothing: the verification runs out.
    let started = expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw2}/verification"), json!({ "mac": silent })).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(started["seconds_remaining"], 600);
    p.wait_device(silent, "downloaded", |_| true).await;
    let v = p.wait_verification(fw2, "pushing").await;
    assert_eq!(v["state"], "pushing");
    p.s.api.t.clock.advance(chrono::Duration::minutes(4));
    let v = expect_status(p.s.get(&format!("/api/v1/firmware/{fw2}/verification")).await, StatusCode::OK).await;
    assert_eq!(v["seconds_remaining"], 360);
    p.s.api.t.clock.advance(chrono::Duration::minutes(7));
    let expired = p.wait_verification(fw2, "expired").await;
    assert_eq!(expired["seconds_remaining"], 0);
    // Both can be started again.
    expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw2}/verification"), json!({ "mac": silent })).await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(
        p.s.post(&format!("/api/v1/firmware/{fw1}/verification"), json!({ "mac": cut })).await,
        StatusCode::CREATED,
    )
    .await;
}

/// A gateway-only node has no management API: load balancers and container health checks
/// ask its device HTTP (`/healthz`: the process; `/readyz`: the database answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_http_answers_health_checks() {
    let p = Plane::start().await;
    let client = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let r = client.get(format!("http://{}{path}", p.gw.http_addr)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap(), json!({ "status": "ok" }), "{path}");
    }
    let r = client.get(format!("http://{}/livez", p.gw.http_addr)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
