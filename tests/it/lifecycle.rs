//! The upgrade state machine against simulated devices over real sockets: a cut download and
//! a device that fails on its own side end their attempt with the failure the server saw,
//! are retried by the rule's policy and succeed; an MCU's `Soft-Version` echo never counts as
//! success without a boot after the download.

use std::time::Duration;

use ota_sim::{
    DeviceConfig, DeviceEvent, DeviceHandle, DeviceSpec, McuBehaviour, McuVersions, Method, Timing, wait_event,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::device_plane::Plane;
use crate::rules::rule_body;
use crate::support::*;

const MCU_HW: &str = "00STM032";

fn spawn_with(p: &Plane, spec: DeviceSpec, mcu: McuBehaviour) -> DeviceHandle {
    let config = DeviceConfig { timing: Timing::fast(), mcu, ..DeviceConfig::new(p.gw.http_addr) };
    ota_sim::Device::new(spec, config).unwrap().spawn()
}

async fn target(p: &Plane, rule: i64, mac: &str) -> Value {
    let page = expect_status(p.s.get(&format!("/api/v1/rules/{rule}/devices?mac={mac}")).await, StatusCode::OK).await;
    page["items"][0].clone()
}

async fn wait_target(p: &Plane, rule: i64, mac: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = target(p, rule, mac).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("target {mac} of rule {rule} never became {what}; last {last:#}");
}

/// A started rule for all V4.1 Wi-Fi devices on 04020006 with an image of `size` bytes,
/// retrying `backoff_s` after a failure.
async fn wifi_rule(p: &Plane, size: usize, backoff_s: u32, timeouts: Value) -> i64 {
    let fields = [
        ("name", "next"),
        ("type", "wifi"),
        ("push_method", "V4.1"),
        ("hard_version", "00ESP826"),
        ("soft_version", "04020021"),
    ];
    let fw = p.upload(&fields, ("a.bin", image(size, 4))).await;
    p.s.verify_directly(fw).await;
    let mut body = rule_body(json!({ "target": "all" }), &["04020006"], ("2026-01-01", "2026-01-02"), (0, 24));
    body["policy"] = json!({ "retry": { "attempts": 3, "backoff_s": backoff_s }, "timeouts": timeouts });
    let rule = expect_status(p.s.post(&format!("/api/v1/firmware/{fw}/rules"), body).await, StatusCode::CREATED).await;
    let id = rule["request_id"].as_i64().unwrap();
    assert_eq!(rule["policy"]["retry"], json!({ "attempts": 3, "backoff_s": backoff_s, "within_opening": true }));
    let start = json!({ "confirm_stable": true, "accept_terms": true });
    expect_status(p.s.post(&format!("/api/v1/rules/{id}/start"), start).await, StatusCode::OK).await;
    id
}

/// A V4.1 Wi-Fi device with `faults` (for its first download only when `once`), online.
async fn faulty_device(p: &Plane, mac: &str, faults: ota_sim::Faults, once: bool) -> DeviceHandle {
    let mut spec = p.spec(mac, Method::V41);
    spec.faults = ota_sim::Faults { only_first: u32::from(once), ..faults };
    let device = p.spawn(spec);
    p.wait_device(mac, "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;
    device
}

async fn csv_row(p: &Plane, rule: i64) -> String {
    let csv = p.s.get(&format!("/api/v1/rules/{rule}/devices.csv")).await.text().await.unwrap();
    csv.lines().nth(1).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_fails_with_its_kind_is_retried_and_succeeds() {
    let mut p = Plane::start().await;
    p.s.use_api_token().await;
    let mac = "5CCF7F710001";
    let faults = ota_sim::Faults { drop_mid_download: true, ..Default::default() };
    let device = faulty_device(&p, mac, faults, true).await;
    // Large enough that the cut shows on the server's side: the device stops reading halfway,
    // while the socket buffers hold far less than the image.
    let rule = wifi_rule(&p, 1_500_000, 0, json!({})).await;

    let failed =
        wait_target(&p, rule, mac, "failed once", |t| t["attempts"].as_array().is_some_and(|a| !a.is_empty())).await;
    let first = &failed["attempts"][0];
    assert_eq!(
        (first["outcome"].as_str(), first["failure"].as_str()),
        (Some("failed"), Some("download_cut")),
        "{failed:#}"
    );
    assert_eq!((first["stage"].as_str(), first["attempt"].as_i64()), (Some("downloading"), Some(1)));
    let done = wait_target(&p, rule, mac, "succeeded", |t| t["stage"] == "succeeded").await;
    assert_eq!(done["attempt"], 2, "{done:#}");
    let outcomes: Vec<&str> =
        done["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["failed", "succeeded"]);
    assert!(done["failure"].is_null() && done["last_error"].is_null(), "{done:#}");
    let row = csv_row(&p, rule).await;
    assert!(row.contains(",succeeded,") && row.ends_with(",,2,2,"), "{row}");
    let view = expect_status(p.s.get(&format!("/api/v1/rules/{rule}")).await, StatusCode::OK).await;
    assert_eq!(view["counts"]["succeeded"], 1, "one device, counted once");
    assert_eq!(view["counts"]["failed"], 0);

    // The simulator's truth: one cut download, one upgrade, two pushes received.
    let snap = device.stop().await;
    assert_eq!((snap.counters.downloads_failed, snap.counters.upgrades, snap.counters.pushes), (1, 1, 2));
    assert_eq!(snap.wifi_sw, "04020021");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_fails_on_its_side_fails_at_the_stage_deadline_named_and_is_retried() {
    let mut p = Plane::start().await;
    p.s.use_api_token().await;
    let mac = "5CCF7F710002";
    // The MD5 check fails on the device, which says nothing.
    let faults = ota_sim::Faults { corrupt_byte: true, ..Default::default() };
    let device = faulty_device(&p, mac, faults, true).await;
    let rule = wifi_rule(&p, 6000, 0, json!({ "downloaded_wifi_s": 60 })).await;

    let downloaded = wait_target(&p, rule, mac, "downloaded", |t| t["stage"] == "downloaded").await;
    assert!(downloaded["failure"].is_null());
    // Nothing comes from the device; once the stage's time is up the attempt fails, named.
    p.s.api.t.clock.advance(chrono::Duration::seconds(61));
    let failed = wait_target(&p, rule, mac, "failed", |t| !t["attempts"].as_array().unwrap().is_empty()).await;
    let first = &failed["attempts"][0];
    assert_eq!(
        (first["failure"].as_str(), first["stage"].as_str()),
        (Some("timeout"), Some("downloaded")),
        "{failed:#}"
    );
    let done = wait_target(&p, rule, mac, "succeeded", |t| t["stage"] == "succeeded").await;
    assert_eq!(done["attempt"], 2, "{done:#}");
    let snap = device.stop().await;
    assert_eq!((snap.counters.downloads_failed, snap.counters.upgrades), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_shows_in_the_list_and_csv_at_once() {
    let mut p = Plane::start().await;
    p.s.use_api_token().await;
    let mac = "5CCF7F710003";
    // Every time: it never succeeds.
    let device = faulty_device(&p, mac, ota_sim::Faults { corrupt_byte: true, ..Default::default() }, false).await;
    let rule = wifi_rule(&p, 6000, 3600, json!({ "downloaded_wifi_s": 30 })).await;
    wait_target(&p, rule, mac, "downloaded", |t| t["stage"] == "downloaded").await;
    p.s.api.t.clock.advance(chrono::Duration::seconds(31));
    let failed = wait_target(&p, rule, mac, "failed", |t| t["stage"] == "failed").await;
    assert_eq!(failed["failure"], json!({ "kind": "timeout", "stage": "downloaded" }), "{failed:#}");
    let reason = failed["last_error"].as_str().unwrap();
    assert!(reason.contains("no report of the target version after the download within 30 s"), "{reason}");
    let row = csv_row(&p, rule).await;
    assert!(row.contains(",failed,04020006,04020021,") && row.contains(",timeout,downloaded,1,1,"), "{row}");
    device.stop().await;
}

/// A V4.1 device with an MCU on 00000003, and MCU firmware 00000004.
async fn mcu_setup(p: &Plane, mac: &str, mcu: McuBehaviour) -> (DeviceHandle, i64) {
    let mut spec = p.spec(mac, Method::V41);
    spec.mcu = Some(McuVersions { hw: MCU_HW.into(), sw: "00000003".into() });
    let device = spawn_with(p, spec, mcu);
    p.wait_device(mac, "online with its MCU", |d| d["online"] == true && d["mcu"]["soft_version"] == "00000003").await;
    let fields = [
        ("name", "mcu4"),
        ("type", "mcu"),
        ("push_method", "V4.1"),
        ("hard_version", MCU_HW),
        ("soft_version", "00000004"),
    ];
    let fw = p.upload(&fields, ("mcu.bin", image(5000, 6))).await;
    (device, fw)
}

/// The device power-cycles: the same identity boots again (provision, type 1, type 2) with an
/// MCU that behaves as `mcu` says.
async fn power_cycle(p: &Plane, device: DeviceHandle, mac: &str, mcu: McuBehaviour) -> DeviceHandle {
    let snap = device.stop().await;
    let mut spec = p.spec(mac, Method::V41);
    spec.did = snap.did.clone();
    spec.passcode = snap.passcode.clone();
    spec.mcu = snap.mcu.clone();
    spawn_with(p, spec, mcu)
}

/// Waits for a type-2 check whose answer `pred` accepts.
async fn type2_check(rx: &mut tokio::sync::broadcast::Receiver<DeviceEvent>, pred: impl Fn(bool) -> bool) {
    let seen = wait_event(
        rx,
        Duration::from_secs(20),
        |e| matches!(e, DeviceEvent::CheckAnswered { fw_type: 2, offer } if pred(offer.is_some())),
    )
    .await;
    assert!(seen.is_some(), "no type-2 check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcu_echo_is_no_success_for_a_restarted_verification_until_the_device_boots() {
    let p = Plane::start().await;
    let mac = "5CCF7F720001";
    let broken = McuBehaviour { fails_to_flash: true, ..McuBehaviour::default() };
    let (device, fw) = mcu_setup(&p, mac, broken.clone()).await;

    // The first verification downloads 00000004; the MCU takes it but keeps 00000003, while
    // GAgent's RAM now says 00000004.
    expect_status(p.start_verification(fw, mac).await, StatusCode::CREATED).await;
    let mut events = device.subscribe();
    let seen = wait_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, DeviceEvent::DownloadFinished { fw_type: 2, md5_ok: true })
    })
    .await;
    assert!(seen.is_some(), "the MCU image was downloaded");
    let v = p.wait_verification(fw, "pushing").await;
    assert_ne!(v["stage"], "succeeded");
    expect_status(p.s.delete(&format!("/api/v1/firmware/{fw}/verification")).await, StatusCode::OK).await;

    // Started again: the push makes GAgent check type 2 with the echoed 00000004.
    let mut events = device.subscribe();
    expect_status(p.start_verification(fw, mac).await, StatusCode::CREATED).await;
    type2_check(&mut events, |offered| !offered).await;
    assert_eq!(device.snapshot().mcu_reported_sw.as_deref(), Some("00000004"), "the echo was sent");
    let v = expect_status(p.s.get(&format!("/api/v1/firmware/{fw}/verification")).await, StatusCode::OK).await;
    assert_eq!(v["state"], "pushing", "the echo is no success: {v:#}");
    assert!(v["times"]["succeeded_at"].is_null());
    let d = expect_status(p.s.get(&format!("/api/v1/devices/{mac}")).await, StatusCode::OK).await;
    assert_eq!(d["mcu"]["soft_version"], "00000003", "nor is it stored as the MCU's version");

    // A real boot reports 00000003 again, is offered 00000004, and this time the MCU flashes
    // it: after 0x29 and a reboot, the boot's type-2 check proves it.
    let device = power_cycle(&p, device, mac, McuBehaviour::default()).await;
    let v = p.wait_verification(fw, "awaiting_confirmation").await;
    assert_eq!(v["stage"], "succeeded");
    let snap = device.stop().await;
    assert_eq!(snap.mcu.unwrap().sw, "00000004");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcu_echo_left_by_a_verification_is_no_success_for_a_rule() {
    let mut p = Plane::start().await;
    p.s.use_api_token().await;
    let mac = "5CCF7F720002";
    let broken = McuBehaviour { fails_to_flash: true, ..McuBehaviour::default() };
    let (device, fw) = mcu_setup(&p, mac, broken).await;
    expect_status(p.start_verification(fw, mac).await, StatusCode::CREATED).await;
    let mut events = device.subscribe();
    let seen = wait_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, DeviceEvent::DownloadFinished { fw_type: 2, md5_ok: true })
    })
    .await;
    assert!(seen.is_some());
    expect_status(p.s.delete(&format!("/api/v1/firmware/{fw}/verification")).await, StatusCode::OK).await;
    p.s.verify_directly(fw).await;

    let body = rule_body(json!({ "target": "all" }), &["00000003"], ("2026-01-01", "2026-01-02"), (0, 24));
    let rule = expect_status(p.s.post(&format!("/api/v1/firmware/{fw}/rules"), body).await, StatusCode::CREATED).await;
    let id = rule["request_id"].as_i64().unwrap();
    let mut events = device.subscribe();
    let start = json!({ "confirm_stable": true, "accept_terms": true });
    expect_status(p.s.post(&format!("/api/v1/rules/{id}/start"), start).await, StatusCode::OK).await;
    type2_check(&mut events, |offered| !offered).await;
    let t = target(&p, id, mac).await;
    assert_ne!(t["stage"], "succeeded", "{t:#}");
    assert_eq!(
        expect_status(p.s.get(&format!("/api/v1/rules/{id}")).await, StatusCode::OK).await["counts"]["succeeded"],
        0
    );

    let device = power_cycle(&p, device, mac, McuBehaviour::default()).await;
    let t = wait_target(&p, id, mac, "succeeded", |t| t["stage"] == "succeeded").await;
    assert_eq!(t["to_version"], "00000004");
    device.stop().await;
}
