//! Taking over a live fleet (issue 5): simulated devices that start with a did and a passcode
//! from the hosted cloud (they never register) are adopted, refused, pinned, flagged and
//! upgraded according to each product's adoption policy.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gagent_codec::mqtt::{ConnectReturnCode, Packet, Protocol, Publish};
use ota_domain::Clock;
use ota_sim::{DeviceHandle, DeviceSpec, Method};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::device_edge::Raw;
use ota_gateway::{BusConfig, Gateway};

use crate::device_plane::{Plane, gateway_settings, wait_get};
use crate::support::*;

fn did(n: u32) -> String {
    format!("Ad{n:020}")
}

fn passcode(n: u32) -> String {
    format!("PC{n:08}")
}

fn mac(n: u32) -> String {
    format!("5CCF7F{n:06X}")
}

/// A device as the hosted cloud left it: did and passcode in flash, no registration.
fn migrated(p: &Plane, n: u32) -> DeviceSpec {
    let mut spec = p.spec(&mac(n), Method::V41);
    spec.did = Some(did(n));
    spec.passcode = passcode(n);
    spec
}

async fn import_json(p: &Plane, pk: &str, body: Value) -> Value {
    let r = p.s.post(&format!("/api/v1/products/{pk}/devices/import"), body).await;
    expect_status(r, StatusCode::OK).await
}

async fn put_policy(p: &Plane, pk: &str, body: Value) -> reqwest::Response {
    p.s.client
        .put(p.s.url(&format!("/api/v1/products/{pk}/adoption")))
        .bearer_auth(&p.s.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// An open window from the server's (fake) clock.
fn open_for(p: &Plane, minutes: i64, max: i64) -> Value {
    let until = p.s.api.t.clock.now() + chrono::Duration::minutes(minutes);
    json!({ "policy": "open", "open_until": until.to_rfc3339(), "max_adoptions": max })
}

async fn events(p: &Plane, pk: &str, query: &str) -> Value {
    expect_status(p.s.get(&format!("/api/v1/products/{pk}/adoption/events?{query}")).await, StatusCode::OK).await
}

async fn provision_status(p: &Plane, did: &str) -> StatusCode {
    reqwest::get(format!("http://{}/dev/devices/{did}", p.gw.http_addr)).await.unwrap().status()
}

fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_list_is_adopted_passcodes_pinned_and_conflicts_flagged() {
    let p = Plane::start().await;
    let pk = p.pk.clone();
    let list = json!({ "devices": [
        { "mac": mac(1), "did": did(1), "passcode": passcode(1), "region": "广东省-广州市" },
        { "mac": mac(2), "did": did(2) },
    ]});
    let report = import_json(&p, &pk, list.clone()).await;
    assert_eq!((report["added"].as_u64(), report["rejected"].as_array().unwrap().len()), (Some(2), 0), "{report:#}");
    assert_eq!(report["changes"][0]["fields"], json!(["mac", "did", "passcode", "region"]));
    let again = import_json(&p, &pk, list).await;
    assert_eq!((again["added"].as_u64(), again["unchanged"].as_u64()), (Some(0), Some(2)), "{again:#}");

    // Closed (the default): the device without a passcode is refused and that is recorded;
    // an unknown did gets no provision at all.
    assert_eq!(provision_status(&p, &did(3)).await, StatusCode::NOT_FOUND);
    let second = p.spawn(migrated(&p, 2));
    let refused = wait_get(&p, &format!("/api/v1/products/{pk}/adoption/events?kind=refused"), "a refusal", 30, |v| {
        v["total"] == 1
    })
    .await;
    assert_eq!(refused["items"][0]["did"], did(2));
    assert!(refused["items"][0]["reason"].as_str().unwrap().contains("closed"), "{refused:#}");
    assert_eq!(refused["items"][0]["source"], "127.0.0.1");

    // Imported: the list is adopted, the missing passcode pinned from the login.
    let view = expect_status(put_policy(&p, &pk, json!({ "policy": "imported" })).await, StatusCode::OK).await;
    assert_eq!((view["policy"].as_str(), view["window_open"].as_bool()), (Some("imported"), Some(false)));
    let two = p.wait_device(&did(2), "online", |d| d["online"] == true).await;
    assert_eq!(two["registered_via"], "import");
    assert_eq!(two["mac"], mac(2));
    assert_eq!(two["adoption"]["adopted_via"], "imported");
    assert!(!two["adoption"]["passcode_pinned_at"].is_null(), "{two:#}");
    let first = p.spawn(migrated(&p, 1));
    let one = p.wait_device(&did(1), "online", |d| d["online"] == true).await;
    assert_eq!(one["adoption"]["adopted_via"], "imported");
    assert!(one["adoption"]["passcode_pinned_at"].is_null(), "an imported passcode is not pinned: {one:#}");
    assert_eq!(one["region"]["city"], "广州市");

    // An unknown did is now provisioned, names the product, and is refused under it.
    assert_eq!(provision_status(&p, &did(3)).await, StatusCode::OK);
    let third = p.spawn(migrated(&p, 3));
    wait_get(&p, &format!("/api/v1/products/{pk}/adoption/events?kind=refused&did={}", did(3)), "", 30, |v| {
        v["total"] == 1 && v["items"][0]["reason"].as_str().unwrap().contains("not in the imported list")
    })
    .await;
    expect_error(p.s.get(&format!("/api/v1/devices/{}", did(3))).await, StatusCode::NOT_FOUND, "device_not_found")
        .await;
    let stats =
        expect_status(p.s.get(&format!("/api/v1/products/{pk}/adoption")).await, StatusCode::OK).await["stats"].clone();
    assert_eq!(
        stats,
        json!({ "imported_waiting": 0, "adopted": 2, "adopted_without_mac": 0, "conflicted": 0, "refused_dids": 2 })
    );

    // A second device with the same did and another passcode: refused, flagged, and the
    // genuine one keeps its session.
    let mut impostor = migrated(&p, 2);
    impostor.passcode = "IMPOSTOR01".into();
    let impostor = p.spawn(impostor);
    let flagged = p.wait_device(&did(2), "flagged", |d| d["adoption"]["conflicts"].as_i64() >= Some(1)).await;
    assert_eq!(flagged["online"], true);
    let conflicts = events(&p, &pk, "kind=conflict").await;
    assert_eq!((conflicts["total"].as_i64(), conflicts["items"][0]["did"].as_str()), (Some(1), Some(did(2).as_str())));
    let listed =
        expect_status(p.s.get(&format!("/api/v1/products/{pk}/devices?conflict=true")).await, StatusCode::OK).await;
    assert_eq!(listed["total"], 1);
    let genuine = second.stop().await;
    assert!(genuine.counters.mqtt_logins >= 1);

    // The operator resets the passcode: the next login (the other device) pins its own.
    let reset =
        expect_status(p.s.post(&format!("/api/v1/devices/{}/passcode/reset", did(2)), json!({})).await, StatusCode::OK)
            .await;
    assert_eq!(
        (reset["adoption"]["passcode_known"].as_bool(), reset["adoption"]["repin_pending"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(reset["adoption"]["conflicts"], 0);
    p.wait_device(&did(2), "pinned again", |d| d["online"] == true && d["adoption"]["passcode_known"] == true).await;
    let pinned = events(&p, &pk, &format!("kind=pinned&did={}", did(2))).await;
    assert_eq!(pinned["items"][0]["count"], 2, "one coalesced row for both pinnings: {pinned:#}");
    let resets = events(&p, &pk, "kind=reset").await;
    assert_eq!(resets["items"][0]["source"], format!("api:{ADMIN}"));
    // The device that was pinned first is now the impostor: its old passcode is refused.
    // (Conflicts of one did are written once a minute: let the fake minute pass.)
    p.s.api.t.clock.advance(chrono::Duration::minutes(2));
    let returning = p.spawn(migrated(&p, 2));
    p.wait_device(&did(2), "flagged again", |d| d["adoption"]["conflicts"].as_i64() >= Some(1)).await;

    // Import cannot change a known passcode or take a did of another product.
    let other = p.s.create_product("other").await;
    let r = import_json(&p, &pk, json!([{ "did": did(1), "passcode": "CHANGED001" }])).await;
    assert_eq!(r["rejected"][0]["code"], "passcode_pinned", "{r:#}");
    let r = import_json(&p, &other, json!([{ "did": did(1), "mac": mac(9) }])).await;
    assert_eq!(r["rejected"][0]["code"], "device_did_taken", "{r:#}");

    for d in [first, third, impostor, returning] {
        let snapshot = d.stop().await;
        assert_eq!(snapshot.counters.lost_packets, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_window_adopts_unknown_dids_up_to_its_count_and_until_its_end() {
    let p = Plane::start().await;
    let pk = p.pk.clone();
    let path = format!("/api/v1/products/{pk}/adoption");
    // Validation: nothing changes on a bad request.
    let past = (p.s.api.t.clock.now() - chrono::Duration::minutes(1)).to_rfc3339();
    for (body, code, field) in [
        (json!({ "policy": "open", "max_adoptions": 2 }), "missing_field", "open_until"),
        (json!({ "policy": "open", "open_until": past, "max_adoptions": 2 }), "invalid_field", "open_until"),
        (open_for(&p, 60, 0), "invalid_field", "max_adoptions"),
        (json!({ "policy": "imported", "max_adoptions": 2 }), "invalid_field", "max_adoptions"),
    ] {
        let e = expect_error(put_policy(&p, &pk, body).await, StatusCode::BAD_REQUEST, code).await;
        assert_eq!(e["details"]["field"], field);
    }
    let e =
        expect_error(put_policy(&p, &pk, json!({ "policy": "ajar" })).await, StatusCode::BAD_REQUEST, "invalid_field")
            .await;
    assert_eq!(e["details"]["field"], "policy");
    assert_eq!(expect_status(p.s.get(&path).await, StatusCode::OK).await["policy"], "closed");

    let view = expect_status(put_policy(&p, &pk, open_for(&p, 60, 2)).await, StatusCode::OK).await;
    assert_eq!((view["window_open"].as_bool(), view["max_adoptions"].as_i64()), (Some(true), Some(2)));
    let devices: Vec<DeviceHandle> = (11..14).map(|n| p.spawn(migrated(&p, n))).collect();
    let view = wait_get(&p, &path, "two adopted, one refused", 30, |v| {
        v["stats"]["adopted"] == 2 && v["stats"]["refused_dids"] == 1
    })
    .await;
    assert_eq!((view["adopted_in_window"].as_i64(), view["window_open"].as_bool()), (Some(2), Some(false)));
    let refused = events(&p, &pk, "kind=refused").await;
    assert!(refused["items"][0]["reason"].as_str().unwrap().contains("max_adoptions"), "{refused:#}");
    let left_out = refused["items"][0]["did"].as_str().unwrap().to_owned();

    // Adopted without a MAC, listed as such; the check nudge told us their versions.
    let without =
        expect_status(p.s.get(&format!("/api/v1/products/{pk}/devices?without_mac=true")).await, StatusCode::OK).await;
    assert_eq!(without["total"], 2);
    for d in items(&without) {
        assert_eq!(
            (d["registered_via"].as_str(), d["adoption"]["adopted_via"].as_str()),
            (Some("adopted"), Some("open"))
        );
        assert_eq!(d["adoption"]["without_mac"], true);
        let did = d["did"].as_str().unwrap();
        p.wait_device(did, "its versions known", |v| {
            v["push_method"] == "V4.1" && v["wifi"]["soft_version"] == "04020006"
        })
        .await;
    }
    let adopted = events(&p, &pk, "kind=adopted").await;
    assert_eq!(adopted["total"], 2);
    assert!(items(&adopted).iter().all(|e| e["did"] != left_out.as_str()));

    // The window ends: the refusal says so (written again once the throttle minute passed).
    p.s.api.t.clock.advance(chrono::Duration::minutes(61));
    assert_eq!(expect_status(p.s.get(&path).await, StatusCode::OK).await["window_open"], false);
    wait_get(&p, &format!("/api/v1/products/{pk}/adoption/events?kind=refused"), "the end", 30, |v| {
        v["items"][0]["reason"].as_str().is_some_and(|r| r.contains("ended"))
            && v["items"][0]["count"].as_i64() >= Some(2)
    })
    .await;
    // A new window has its own count: the last device gets in.
    let view = expect_status(put_policy(&p, &pk, open_for(&p, 60, 5)).await, StatusCode::OK).await;
    assert_eq!(view["adopted_in_window"], 0);
    let view = wait_get(&p, &path, "all three adopted", 30, |v| v["stats"]["adopted"] == 3).await;
    assert_eq!(view["adopted_in_window"], 1);
    p.wait_device(&left_out, "online", |d| d["online"] == true).await;
    for d in devices {
        assert_eq!(d.stop().await.counters.lost_packets, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_session_can_do_nothing_until_a_product_adopts_it() {
    let p = Plane::start().await;
    let closed = p.s.create_product("closed").await;
    let unknown = did(31);
    // Nothing adopts anywhere: an unknown did is refused at CONNECT, as before.
    let (_, code) = Raw::connect(&p, &unknown, &passcode(31), Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);

    expect_status(put_policy(&p, &p.pk, open_for(&p, 60, 5)).await, StatusCode::OK).await;
    // MQTT 3.1.1, whose SUBACK can say "refused" (3.1 sessions: `device_abuse.rs`).
    let (mut raw, code) = Raw::connect(&p, &unknown, &passcode(31), Protocol::V311).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    let stats = p.gw.edge.stats();
    let denied = stats.denied_publishes.load(Ordering::Relaxed);
    assert_eq!(raw.subscribe(1, &format!("ser2cli_res/{unknown}")).await, 0x80);
    raw.send(Packet::Publish(Publish::qos0(format!("dev2app/{unknown}"), vec![0, 0, 0, 3]))).await;
    raw.send(Packet::PingReq).await;
    assert!(matches!(raw.next().await, Some(Packet::PingResp)));
    assert_eq!(stats.denied_publishes.load(Ordering::Relaxed), denied + 1);
    // It names a closed product: refused there (recorded under it) and closed.
    assert_eq!(raw.subscribe(2, &format!("ser2cli_noti/{closed}")).await, 0x80);
    assert!(raw.next().await.is_none(), "the refused session is closed");
    let refused = events(&p, &closed, "kind=refused").await;
    assert_eq!(refused["items"][0]["did"], unknown);
    expect_error(p.s.get(&format!("/api/v1/devices/{unknown}")).await, StatusCode::NOT_FOUND, "device_not_found").await;

    // It names the open product: adopted; its own topics work and it is asked to check.
    let (mut raw, _) = Raw::connect(&p, &unknown, &passcode(31), Protocol::V311).await;
    assert_eq!(raw.subscribe(1, &format!("ser2cli_noti/{}", p.pk)).await, 0);
    assert_eq!(raw.subscribe(2, &format!("ser2cli_res/{unknown}")).await, 0);
    assert_eq!(raw.subscribe(3, &format!("app2dev/{unknown}/#")).await, 0);
    raw.send(Packet::PingReq).await;
    assert!(matches!(raw.next().await, Some(Packet::PingResp)));
    match raw.next().await {
        Some(Packet::Publish(publish)) => {
            assert_eq!(publish.topic, format!("ser2cli_res/{unknown}"));
            assert_eq!(&publish.payload[..7], b"\x00\x00\x00\x03\x02\x11\x01", "0x0211 type 1");
        }
        other => panic!("expected the check nudge, got {other:?}"),
    }
    let view = p.wait_device(&unknown, "online", |d| d["online"] == true).await;
    assert_eq!(view["product_key"], p.pk);
    // Another product's topics stay closed to it.
    assert_eq!(raw.subscribe(4, &format!("ser2cli_noti/{closed}")).await, 0x80);
    // A wrong passcode is now a conflict, refused by CONNACK.
    let (_, code) = Raw::connect(&p, &unknown, "WRONGPASS1", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_session_that_names_no_product_times_out() {
    let mut p = Plane::start().await;
    expect_status(put_policy(&p, &p.pk, open_for(&p, 60, 5)).await, StatusCode::OK).await;
    let mut settings = gateway_settings(BusConfig::Embedded { listen: None });
    settings.edge.adoption_timeout = Duration::from_millis(300);
    let short = Gateway::start(p.s.api.t.domain.clone(), settings).await.unwrap();
    p.gw = short;
    // Like RTT or LUAT: it subscribes its own topics but never `ser2cli_noti/<pk>`.
    let (mut raw, code) = Raw::connect(&p, &did(61), &passcode(61), Protocol::V311).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    assert_eq!(raw.subscribe(1, &format!("ser2cli_res/{}", did(61))).await, 0x80);
    assert!(raw.next().await.is_none(), "closed after the adoption timeout");
    let stats = p.gw.edge.stats();
    assert_eq!((stats.provisional.load(Ordering::Relaxed), stats.refused_adoptions.load(Ordering::Relaxed)), (1, 1));
    expect_error(p.s.get(&format!("/api/v1/devices/{}", did(61))).await, StatusCode::NOT_FOUND, "device_not_found")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_devices_are_verified_by_mac_like_native_ones() {
    let p = Plane::start().await;
    let pk = p.pk.clone();
    // One device in the imported list (MAC, did, no passcode), one adopted by an open window.
    import_json(&p, &pk, json!([{ "mac": mac(41), "did": did(41) }])).await;
    expect_status(put_policy(&p, &pk, open_for(&p, 60, 1)).await, StatusCode::OK).await;
    let _a = p.spawn(migrated(&p, 41));
    let _b = p.spawn(migrated(&p, 42));
    p.wait_device(&did(41), "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;
    p.wait_device(&did(42), "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;

    let fields = |sw: &'static str| {
        [
            ("name", "next"),
            ("type", "wifi"),
            ("push_method", "V4.1"),
            ("hard_version", "00ESP826"),
            ("soft_version", sw),
        ]
    };
    let fw1 = p.upload(&fields("04020021"), ("a.bin", image(4000, 1))).await;
    let fw2 = p.upload(&fields("04020022"), ("b.bin", image(4000, 2))).await;
    // The adopted device has no MAC yet, so it cannot be targeted by one.
    expect_error(p.start_verification(fw2, &mac(42)).await, StatusCode::NOT_FOUND, "device_not_found").await;
    let attached = import_json(&p, &pk, json!([{ "mac": mac(42), "did": did(42) }])).await;
    assert_eq!(attached["changes"][0]["fields"], json!(["mac"]), "{attached:#}");

    expect_status(p.start_verification(fw1, &mac(41)).await, StatusCode::CREATED).await;
    expect_status(p.start_verification(fw2, &mac(42)).await, StatusCode::CREATED).await;
    for (fw, n, sw) in [(fw1, 41, "04020021"), (fw2, 42, "04020022")] {
        let done = p.wait_verification(fw, "awaiting_confirmation").await;
        assert_eq!((done["stage"].as_str(), done["did"].as_str()), (Some("succeeded"), Some(did(n).as_str())));
        let confirmed =
            p.s.post(&format!("/api/v1/firmware/{fw}/verification/confirm"), json!({ "stable": true })).await;
        assert_eq!(expect_status(confirmed, StatusCode::OK).await["state"], "verified");
        // After the reboot the device reports its version over HTTP before its MQTT login:
        // wait for both, it ends online on the new version.
        let device = p
            .wait_device(&mac(n), "online on the new version", |d| {
                d["wifi"]["soft_version"] == sw && d["online"] == true
            })
            .await;
        assert_eq!(device["wifi"]["soft_version"], sw);
    }
}

/// The "done when": a fleet of pre-provisioned devices of one product, 90 % in the
/// imported list with MACs, 10 % unknown. `imported` adopts exactly the list and lists the
/// rest as refused; an `open` window then adopts the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_fleet_is_adopted_list_first_then_through_a_window() {
    const FLEET: u32 = 1000;
    const LISTED: u32 = FLEET * 9 / 10;
    // The production pace (20 ms, `mqtt_pace_ms`) rather than the tests' 5 ms: 1,000 simulated
    // devices share two cores with the server here, and a device task not scheduled within
    // 5 ms of a packet finds the next one in the same read, a loss the gateway did not cause.
    let p = Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| g.edge.pace = Duration::from_millis(20)).await;
    let pk = p.pk.clone();
    let mut csv = String::from("MAC,DID,region\n");
    for n in 0..LISTED {
        csv.push_str(&format!("{},{},广东省-深圳市\n", mac(1000 + n), did(1000 + n)));
    }
    assert_eq!(expect_status(p.s.import_csv(&pk, &csv).await, StatusCode::OK).await["added"], LISTED);
    expect_status(put_policy(&p, &pk, json!({ "policy": "imported" })).await, StatusCode::OK).await;

    let started = std::time::Instant::now();
    let fleet: Vec<DeviceHandle> = (0..FLEET).map(|n| p.spawn(migrated(&p, 1000 + n))).collect();
    let path = format!("/api/v1/products/{pk}/adoption");
    let view = wait_get(&p, &path, "the list adopted and the rest refused", 120, |v| {
        v["stats"]["adopted"] == LISTED && v["stats"]["refused_dids"] == FLEET - LISTED
    })
    .await;
    let listed_secs = started.elapsed().as_secs_f64();
    assert_eq!(view["stats"]["imported_waiting"], 0);
    let refused = events(&p, &pk, "kind=refused&per_page=200").await;
    assert_eq!(refused["total"], FLEET - LISTED);
    assert!(items(&refused).iter().all(|e| e["did"].as_str().unwrap() >= did(1000 + LISTED).as_str()));
    // Presence is written in batches, so it may trail the adoption count by a moment.
    wait_get(&p, &format!("/api/v1/products/{pk}/devices?online=true&adopted=true"), "the list online", 60, |v| {
        v["total"] == LISTED
    })
    .await;

    let window = std::time::Instant::now();
    expect_status(put_policy(&p, &pk, open_for(&p, 10, i64::from(FLEET - LISTED))).await, StatusCode::OK).await;
    let view = wait_get(&p, &path, "the whole fleet adopted", 120, |v| v["stats"]["adopted"] == FLEET).await;
    assert_eq!(
        (view["adopted_in_window"].as_u64(), view["stats"]["adopted_without_mac"].as_u64()),
        (Some(u64::from(FLEET - LISTED)), Some(u64::from(FLEET - LISTED)))
    );
    eprintln!(
        "fleet of {FLEET}: list adopted and rest refused in {listed_secs:.1} s; window adopted the rest in {:.1} s",
        window.elapsed().as_secs_f64()
    );

    let lost: u32 = fleet.iter().map(|d| d.snapshot().counters.lost_packets).sum();
    assert_eq!(lost, 0, "no device read two packets at once while it was adopted");

    // A rule by MAC list (the imported MACs, uploaded as a file) upgrades the adopted
    // devices exactly as it would native ones.
    let fw = p
        .upload(
            &[
                ("name", "ga-21"),
                ("type", "wifi"),
                ("push_method", "V4.1"),
                ("hard_version", "00ESP826"),
                ("soft_version", "04020021"),
            ],
            ("a.bin", image(3000, 21)),
        )
        .await;
    p.s.verify_directly(fw).await;
    let list: String = (0..LISTED).map(|n| format!("{}\n", mac(1000 + n))).collect();
    let r = p.s.post_text(&format!("/api/v1/products/{pk}/mac-lists"), list).await;
    let list = expect_status(r, StatusCode::CREATED).await;
    assert_eq!(list["count"], LISTED);
    let rule = crate::rules::rule_body(
        json!({ "target": "macs", "mac_list_id": list["id"] }),
        &["04020006"],
        ("2026-01-01", "2026-01-01"),
        (0, 24),
    );
    let rule = expect_status(p.s.post(&format!("/api/v1/firmware/{fw}/rules"), rule).await, StatusCode::CREATED).await;
    let id = rule["request_id"].as_i64().unwrap();
    let body = json!({ "confirm_stable": true, "accept_terms": true });
    let started = expect_status(p.s.post(&format!("/api/v1/rules/{id}/start"), body).await, StatusCode::OK).await;
    assert_eq!(started["target_devices"], LISTED);
    let rollout = std::time::Instant::now();
    // A push is sent once per window opening. A simulated device starved of CPU can find it in
    // one read with another packet and lose it (the simulator counts this, as GAgent would
    // lose it); such a device waits for its next check or the next opening. So: every device
    // that lost nothing upgrades, and the rule's count is exactly the devices that upgraded.
    let listed = |d: &DeviceHandle| d.snapshot().mac.as_str() < mac(1000 + LISTED).as_str();
    let mut settled = Value::Null;
    for _ in 0..1800 {
        settled = expect_status(p.s.get(&format!("/api/v1/rules/{id}")).await, StatusCode::OK).await;
        let stuck = fleet.iter().filter(|d| listed(d) && d.snapshot().wifi_sw != "04020021").count();
        let lost = fleet
            .iter()
            .filter(|d| listed(d) && d.snapshot().wifi_sw != "04020021" && d.snapshot().counters.lost_packets > 0)
            .count();
        if settled["status"] == "completed"
            || (stuck == lost && settled["counts"]["succeeded"] == LISTED - stuck as u32)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upgraded = fleet.iter().filter(|d| listed(d) && d.snapshot().wifi_sw == "04020021").count();
    let lost_push = fleet
        .iter()
        .filter(|d| listed(d) && d.snapshot().wifi_sw != "04020021")
        .map(|d| (d.snapshot().mac.clone(), d.snapshot().counters.lost_packets))
        .collect::<Vec<_>>();
    assert!(lost_push.iter().all(|(_, lost)| *lost > 0), "devices that lost no packet did not upgrade: {lost_push:?}");
    if settled["counts"]["succeeded"] != upgraded {
        // Which upgraded devices the rule does not count, with what each side saw.
        let open = p.s.get(&format!("/api/v1/rules/{id}/devices?filter=not_succeeded&per_page=200")).await;
        let open: Value = open.json().await.unwrap();
        let records: BTreeMap<String, Value> =
            items(&open).iter().map(|d| (d["mac"].as_str().unwrap_or_default().to_owned(), d.clone())).collect();
        let unseen: Vec<String> = fleet
            .iter()
            .map(|d| d.snapshot())
            .filter(|s| s.wifi_sw == "04020021" && records.contains_key(&s.mac))
            .map(|s| format!("{}: record {} device {:?}", s.mac, records[&s.mac], s.counters))
            .collect();
        panic!("{upgraded} upgraded, the rule counts {}: {unseen:#?}", settled["counts"]["succeeded"]);
    }
    assert_eq!(settled["counts"]["targets"], LISTED);
    // How many lose the push depends only on how starved the simulator is (2–3 % here with
    // the machine to itself, more on a loaded CI runner); the gateway's part is asserted above.
    // This only catches a rollout that mostly did not happen.
    assert!(upgraded >= LISTED as usize / 2, "only {upgraded} of {LISTED} upgraded: {lost_push:?}");
    eprintln!(
        "rule by MAC list upgraded {upgraded} of {LISTED} adopted devices in {:.1} s ({} lost the push in a shared read)",
        rollout.elapsed().as_secs_f64(),
        lost_push.len()
    );
    for d in fleet {
        d.request_stop();
    }
}

/// Several gateways share the database: the window's count holds under concurrent adoptions
/// (the count check and the insert are one conditional update in one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adoptions_never_exceed_the_window() {
    let p = Plane::start().await;
    expect_status(put_policy(&p, &p.pk, open_for(&p, 60, 5)).await, StatusCode::OK).await;
    let domain = p.s.api.t.domain.clone();
    let tries = (0..24).map(|n| {
        let (domain, pk) = (domain.clone(), p.pk.clone());
        tokio::spawn(async move { domain.adopt_unknown(&did(500 + n), &passcode(n), &pk, None).await.unwrap() })
    });
    let mut adopted = 0;
    for t in tries {
        adopted += usize::from(t.await.unwrap().is_some());
    }
    assert_eq!(adopted, 5);
    let view = expect_status(p.s.get(&format!("/api/v1/products/{}/adoption", p.pk)).await, StatusCode::OK).await;
    assert_eq!((view["adopted_in_window"].as_i64(), view["stats"]["adopted"].as_i64()), (Some(5), Some(5)));
    assert_eq!(view["stats"]["refused_dids"], 19);
}
