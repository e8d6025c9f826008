//! The console flow end to end with a simulated mixed fleet: verify, create rules by region,
//! by MAC list and for all devices, preview, start, watch, search, export — on a fake clock
//! for the period and window, with the gateway's own scheduler pushing.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use ota_sim::{DeviceHandle, McuVersions, Method};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::device_plane::Plane;
use crate::rules::rule_body;
use crate::support::*;

const MCU_HW: &str = "00STM032";

async fn wait_rule(p: &Plane, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        last = expect_status(p.s.get(&format!("/api/v1/rules/{id}")).await, StatusCode::OK).await;
        if pred(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("rule {id} never became {what}; last {last:#}");
}

async fn target(p: &Plane, id: i64, mac: &str) -> Value {
    let page = expect_status(p.s.get(&format!("/api/v1/rules/{id}/devices?mac={mac}")).await, StatusCode::OK).await;
    assert_eq!(page["total"], 1, "{page:#}");
    page["items"][0].clone()
}

fn set_clock(p: &Plane, d: u32, h: u32) {
    p.s.api.t.clock.set(Utc.with_ymd_and_hms(2026, 1, d, h, 0, 0).single().unwrap());
}

/// Spawns a device that registers, reports its versions and goes offline again.
async fn registered_then_offline(p: &Plane, mac: &str) -> ota_sim::DeviceSnapshot {
    let d = p.spawn(p.spec(mac, Method::V41));
    p.wait_device(mac, "online", |v| v["online"] == true && v["push_method"] == "V4.1").await;
    let snapshot = d.stop().await;
    p.wait_device(mac, "offline", |v| v["online"] == false).await;
    snapshot
}

fn come_back(p: &Plane, mac: &str, snapshot: &ota_sim::DeviceSnapshot) -> DeviceHandle {
    let mut spec = p.spec(mac, Method::V41);
    spec.did = snapshot.did.clone();
    spec.passcode = snapshot.passcode.clone();
    p.spawn(spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_flow_with_a_mixed_fleet_ends_with_exact_counts() {
    let mut p = Plane::start().await;
    p.s.use_api_token().await;
    let imported = "mac,region\n\
        5CCF7F600001,广东省-广州市\n5CCF7F600002,广东省-广州市\n5CCF7F600003,浙江省-杭州市\n\
        5CCF7F600004,广东省-深圳市\n5CCF7F600005,广东省-广州市\n5CCF7F600006,广东省-佛山市\n";
    assert_eq!(expect_status(p.s.import_csv(&p.pk, imported).await, StatusCode::OK).await["added"], 6);

    // The fleet. V4.1 Wi-Fi: W1, W2 in Guangzhou, W3 in Hangzhou (not targeted), W5 whose
    // downloads are cut, W4 and W6 registered but offline at the start; WV the test device.
    let mut handles = Vec::new();
    for mac in ["5CCF7F600001", "5CCF7F600002", "5CCF7F600003", "5CCF7F6000AA"] {
        handles.push(p.spawn(p.spec(mac, Method::V41)));
    }
    let mut cut = p.spec("5CCF7F600005", Method::V41);
    cut.faults.drop_mid_download = true;
    handles.push(p.spawn(cut));
    // V4.1 MCU: M1, M2. V4 Wi-Fi: F1, F2. V1V3: L1, L2 on the product's first firmware.
    for mac in ["5CCF7F610001", "5CCF7F610002"] {
        let mut s = p.spec(mac, Method::V41);
        s.mcu = Some(McuVersions { hw: MCU_HW.into(), sw: "00010001".into() });
        handles.push(p.spawn(s));
    }
    for mac in ["5CCF7F620001", "5CCF7F620002"] {
        handles.push(p.spawn(p.spec(mac, Method::V4)));
    }
    for mac in ["5CCF7F630001", "5CCF7F630002"] {
        let mut s = p.spec(mac, Method::V1V3);
        s.current_fid = 1;
        handles.push(p.spawn(s));
    }
    let w4 = registered_then_offline(&p, "5CCF7F600004").await;
    let w6 = registered_then_offline(&p, "5CCF7F600006").await;
    for (mac, method) in [
        ("5CCF7F600001", "V4.1"),
        ("5CCF7F600002", "V4.1"),
        ("5CCF7F600003", "V4.1"),
        ("5CCF7F600005", "V4.1"),
        ("5CCF7F6000AA", "V4.1"),
        ("5CCF7F610001", "V4.1"),
        ("5CCF7F610002", "V4.1"),
        ("5CCF7F620001", "V4"),
        ("5CCF7F620002", "V4"),
        ("5CCF7F630001", "V1V3"),
        ("5CCF7F630002", "V1V3"),
    ] {
        p.wait_device(mac, "online", |d| d["online"] == true && d["push_method"] == method).await;
    }

    // Firmware, one per method and type.
    let wifi = p
        .upload(
            &[
                ("name", "ga-21"),
                ("type", "wifi"),
                ("push_method", "V4.1"),
                ("hard_version", "00ESP826"),
                ("soft_version", "04020021"),
            ],
            // Large enough that a cut download is visible to the server (more than the socket buffers).
            ("w.bin", image(2_000_000, 1)),
        )
        .await;
    let mcu = p
        .upload(
            &[
                ("name", "mcu-2"),
                ("type", "mcu"),
                ("push_method", "V4.1"),
                ("hard_version", MCU_HW),
                ("soft_version", "00010002"),
            ],
            ("m.bin", image(4000, 2)),
        )
        .await;
    let v4 = p
        .upload(
            &[
                ("name", "gk-next"),
                ("type", "wifi"),
                ("push_method", "V4"),
                ("hard_version", "00ESP826"),
                ("soft_version", "04000001"),
            ],
            ("v4.bin", image(4500, 3)),
        )
        .await;
    let v10 = p.upload(&[("name", "v1.0"), ("type", "wifi"), ("push_method", "V1V3")], ("a.bin", image(3000, 4))).await;
    let v11 = p.upload(&[("name", "v1.1"), ("type", "wifi"), ("push_method", "V1V3")], ("b.bin", image(3000, 5))).await;
    assert_ne!(v10, v11);

    // Verify the Wi-Fi firmware on the test device, through the console's flow.
    expect_status(p.start_verification(wifi, "5CCF7F6000AA").await, StatusCode::CREATED).await;
    p.wait_verification(wifi, "awaiting_confirmation").await;
    let confirmed = p.s.post(&format!("/api/v1/firmware/{wifi}/verification/confirm"), json!({ "stable": true })).await;
    assert_eq!(expect_status(confirmed, StatusCode::OK).await["state"], "verified");
    for fw in [mcu, v4, v11] {
        p.s.verify_directly(fw).await;
    }

    // Old versions: the six Wi-Fi-only devices and the two with an MCU run 04020006 on their
    // Wi-Fi modules (the test device moved on).
    let old = expect_status(p.s.get(&format!("/api/v1/firmware/{wifi}/old-versions")).await, StatusCode::OK).await;
    assert_eq!(old, json!([{ "version": "04020006", "devices": 8 }]));
    let old = expect_status(p.s.get(&format!("/api/v1/firmware/{v11}/old-versions")).await, StatusCode::OK).await;
    assert_eq!(old, json!([{ "version": "v1.0", "devices": 2 }]));

    // Rules. Window 00–12 UTC, two days; the fake clock stands at 2026-01-01 00:00.
    let window = ("2026-01-01", "2026-01-02");
    let by_region = rule_body(json!({ "target": "regions", "regions": ["广东省"] }), &["04020006"], window, (0, 12));
    let preview = expect_status(
        p.s.post(&format!("/api/v1/firmware/{wifi}/rules/preview"), by_region.clone()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(preview["targets"], 5, "{preview:#}");
    assert_eq!(preview["online"], 3);
    assert_eq!(preview["in_other_rules"], 0);
    let r_region =
        expect_status(p.s.post(&format!("/api/v1/firmware/{wifi}/rules"), by_region).await, StatusCode::CREATED).await
            ["request_id"]
            .as_i64()
            .unwrap();

    let text = "5CCF7F610001\n5c:cf:7f:61:00:02\nAABBCCDDEEFF\nnot-a-mac\n";
    let list = p.s.post_text(&format!("/api/v1/products/{}/mac-lists", p.pk), text).await;
    let list = expect_status(list, StatusCode::CREATED).await;
    assert_eq!((list["count"].as_i64(), list["invalid_count"].as_i64()), (Some(3), Some(1)));
    let by_macs = rule_body(json!({ "target": "macs", "mac_list_id": list["id"] }), &["00010001"], window, (0, 12));
    let r_macs =
        expect_status(p.s.post(&format!("/api/v1/firmware/{mcu}/rules"), by_macs).await, StatusCode::CREATED).await;
    let r_macs = r_macs["request_id"].as_i64().unwrap();
    let preview = expect_status(p.s.get(&format!("/api/v1/rules/{r_macs}/preview")).await, StatusCode::OK).await;
    assert_eq!((preview["targets"].as_i64(), preview["unknown_macs"].as_i64()), (Some(2), Some(1)));
    let all_v4 = rule_body(json!({ "target": "all" }), &["04000001"], window, (0, 12));
    let r_v4 =
        expect_status(p.s.post(&format!("/api/v1/firmware/{v4}/rules"), all_v4).await, StatusCode::CREATED).await;
    let r_v4 = r_v4["request_id"].as_i64().unwrap();
    let all_v1v3 = rule_body(json!({ "target": "all" }), &["v1.0"], window, (0, 12));
    let r_v1v3 =
        expect_status(p.s.post(&format!("/api/v1/firmware/{v11}/rules"), all_v1v3).await, StatusCode::CREATED).await;
    let r_v1v3 = r_v1v3["request_id"].as_i64().unwrap();

    for (id, n) in [(r_region, 5), (r_macs, 2), (r_v4, 2), (r_v1v3, 2)] {
        let body = json!({ "confirm_stable": true, "accept_terms": true });
        let started = expect_status(p.s.post(&format!("/api/v1/rules/{id}/start"), body).await, StatusCode::OK).await;
        assert_eq!(started["target_devices"], n, "{started:#}");
    }

    // Every online target upgrades; the MAC-list, V4 and V1V3 rules complete.
    for id in [r_macs, r_v4, r_v1v3] {
        let done = wait_rule(&p, id, "completed", |r| r["status"] == "completed").await;
        assert_eq!(done["counts"]["succeeded"], 2, "{done:#}");
    }
    let v = wait_rule(&p, r_region, "2 succeeded", |r| r["counts"]["succeeded"] == 2).await;
    assert_eq!(v["status"], "pushing");
    // W5's download is cut: recorded with its reason (the device may be retrying already).
    let mut failed = Value::Null;
    for _ in 0..600 {
        failed = target(&p, r_region, "5CCF7F600005").await;
        if !failed["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed["last_error"].as_str().unwrap_or_default().starts_with("download cut after "), "{failed:#}");
    assert_eq!(failed["attempts"][0]["failure"], "download_cut", "{failed:#}");
    assert_eq!(failed["attempts"][0]["stage"], "downloading", "{failed:#}");

    // W4 comes online inside the window: pushed and upgraded.
    let _w4 = come_back(&p, "5CCF7F600004", &w4);
    wait_rule(&p, r_region, "3 succeeded", |r| r["counts"]["succeeded"] == 3).await;

    // W6 comes online outside the window (13:00): nothing is pushed or offered.
    set_clock(&p, 1, 13);
    let _w6 = come_back(&p, "5CCF7F600006", &w6);
    p.wait_device("5CCF7F600006", "online again", |d| d["online"] == true).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // two scheduler rounds
    assert_eq!(target(&p, r_region, "5CCF7F600006").await["stage"], "pending");
    let w6_view = expect_status(p.s.get("/api/v1/devices/5CCF7F600006").await, StatusCode::OK).await;
    assert_eq!(w6_view["wifi"]["soft_version"], "04020006");
    // The next day's window pushes it.
    set_clock(&p, 2, 1);
    wait_rule(&p, r_region, "4 succeeded", |r| r["counts"]["succeeded"] == 4).await;

    // The period ends: W5 ends not succeeded.
    set_clock(&p, 3, 0);
    let done = wait_rule(&p, r_region, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["counts"]["targets"], 5);
    assert_eq!(done["counts"]["succeeded"], 4);
    assert_eq!(done["counts"]["not_succeeded"], 1);
    // Hangzhou was never a target and still runs the old version.
    let w3 = expect_status(p.s.get("/api/v1/devices/5CCF7F600003").await, StatusCode::OK).await;
    assert_eq!(w3["wifi"]["soft_version"], "04020006");

    // Results: filters, MAC search, CSV export, the MAC list download.
    let ok =
        expect_status(p.s.get(&format!("/api/v1/rules/{r_region}/devices?filter=succeeded")).await, StatusCode::OK)
            .await;
    assert_eq!(ok["total"], 4);
    assert!(
        ok["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["to_version"] == "04020021" && d["from_version"] == "04020006")
    );
    let csv = p.s.get(&format!("/api/v1/rules/{r_region}/devices.csv")).await.text().await.unwrap();
    assert_eq!(csv.lines().count(), 6, "{csv}");
    let csv =
        p.s.get(&format!("/api/v1/rules/{r_region}/devices.csv?filter=not_succeeded")).await.text().await.unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.lines().nth(1).unwrap().starts_with("5CCF7F600005,"), "{csv}");
    let macs = p.s.get(&format!("/api/v1/rules/{r_macs}/macs")).await.text().await.unwrap();
    assert_eq!(macs, "5CCF7F610001\n5CCF7F610002\nAABBCCDDEEFF\n");
    let fws = expect_status(p.s.get(&format!("/api/v1/products/{}/firmware", p.pk)).await, StatusCode::OK).await;
    for fw in fws["items"].as_array().unwrap() {
        let expected =
            if [wifi, mcu, v4, v11].contains(&fw["id"].as_i64().unwrap()) { "completed" } else { "not_started" };
        assert_eq!(fw["push_status"], expected, "{fw:#}");
    }
    for h in handles {
        let snapshot = h.stop().await;
        assert_eq!(snapshot.counters.lost_packets, 0, "{}", snapshot.mac);
    }
}
