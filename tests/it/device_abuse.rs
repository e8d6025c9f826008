//! Device-side abuse: passcode guessing over MQTT and HTTP (slowed, the right passcode still
//! logs in), `target_fid` from a stranger, re-registration policies, unknown dids listed, and
//! MQTT 3.1 subscriptions beyond a device's own topics.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gagent_codec::mqtt::{ConnectReturnCode, Packet, Protocol, Subscribe};
use ota_gateway::BusConfig;
use ota_gateway::throttle::ThrottleSettings;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::device_edge::{Raw, register};
use crate::device_plane::Plane;
use crate::support::*;

const FIRST: Duration = Duration::from_millis(40);
const MAX: Duration = Duration::from_millis(320);

/// A plane whose throttle is short enough to measure: 3 free, then 40, 80, 160, 320, 320 … ms.
async fn plane() -> Plane {
    Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| {
        g.throttle =
            ThrottleSettings { free_failures: 3, first_delay: FIRST, max_delay: MAX, ..ThrottleSettings::default() };
    })
    .await
}

/// An HTTP client whose connections come from `127.0.0.<last>`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))).build().unwrap()
}

/// The least time `n` wrong answers take with [`plane`]'s settings, answered one after another.
fn schedule(n: u32) -> Duration {
    (1..=n).map(|f| if f <= 3 { Duration::ZERO } else { (FIRST * 2u32.pow(f - 4)).min(MAX) }).sum()
}

async fn security(p: &Plane) -> Value {
    expect_status(p.s.get(&format!("/api/v1/products/{}/security", p.pk)).await, StatusCode::OK).await
}

async fn events(p: &Plane, kind: &str) -> Vec<Value> {
    let path = format!("/api/v1/products/{}/adoption/events?kind={kind}", p.pk);
    expect_status(p.s.get(&path).await, StatusCode::OK).await["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_passcode_guessing_is_slowed_while_the_right_passcode_logs_in() {
    let p = plane().await;
    let did = register(&p, "0B0000000001", "RIGHTRIGHT").await;
    let wrong_answers = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut guesses = Vec::new();
    for i in 0..10 {
        let answered = wrong_answers.clone();
        let (did, guess) = (did.clone(), format!("GUESS{i:05}"));
        let p = &p;
        guesses.push(async move {
            let fut = Raw::connect(p, &did, &guess, Protocol::V31);
            let (_, code) = fut.await;
            answered.fetch_add(1, Ordering::SeqCst);
            (code, started.elapsed())
        });
    }
    let guesses = futures_util::future::join_all(guesses);
    let right = async {
        // The right passcode, sent while the guesses wait for their answers, is let in at once.
        let (_, code) = Raw::connect(&p, &did, "RIGHTRIGHT", Protocol::V31).await;
        (code, wrong_answers.load(Ordering::SeqCst))
    };
    let (answers, (right_code, wrong_before)) = tokio::join!(guesses, right);
    assert_eq!(right_code, ConnectReturnCode::Accepted);
    assert!(wrong_before < 10, "the right passcode waited for every guess ({wrong_before} answered first)");
    let mut times: Vec<Duration> = Vec::new();
    for (code, at) in answers {
        assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword, "guesses get the firmware's own refusal");
        times.push(at);
    }
    times.sort();
    // Sent at once, answered one after another, later and later.
    assert!(*times.last().unwrap() >= schedule(10), "{times:?}");
    let stats = &p.gw.throttle.stats;
    assert_eq!((stats.wrong.load(Ordering::Relaxed), stats.delayed.load(Ordering::Relaxed)), (10, 7));

    // Counted per product: the first occurrence at once, the rest with the next write.
    let v = security(&p).await;
    assert_eq!((v["wrong_passcodes"].as_i64(), v["devices_with_wrong_passcodes"].as_i64()), (Some(1), Some(1)));
    p.s.api.t.clock.advance(chrono::Duration::seconds(61));
    let (_, code) = Raw::connect(&p, &did, "GUESS99999", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    assert_eq!(security(&p).await["wrong_passcodes"], 11);
    let conflicts = events(&p, "conflict").await;
    assert_eq!(
        (conflicts[0]["did"].as_str(), conflicts[0]["source"].as_str()),
        (Some(did.as_str()), Some("127.0.0.1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_passcode_guessing_is_slowed_while_the_right_passcode_is_answered() {
    let p = plane().await;
    let did = register(&p, "0B0000000002", "RIGHTRIGHT").await;
    let check = |pc: String| {
        let url = format!("http://{}/dev/ota/v4.1/update_and_check/{did}", p.gw.http_addr);
        async move {
            let body = format!("passcode={pc}&type=1&hard_version=00ESP826&soft_version=04020019");
            let r = reqwest::Client::new().post(url).body(body).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let guesses = futures_util::future::join_all((0..8).map(|i| {
        let (answered, fut) = (answered.clone(), check(format!("GUESS{i:05}")));
        async move {
            let out = fut.await;
            answered.fetch_add(1, Ordering::SeqCst);
            (out, started.elapsed())
        }
    }));
    let right = async {
        let out = check("RIGHTRIGHT".into()).await;
        (out, answered.load(Ordering::SeqCst))
    };
    let (answers, ((status, body), before)) = tokio::join!(guesses, right);
    assert_eq!(status, StatusCode::BAD_REQUEST, "the right passcode: no update (9500), not refused");
    assert!(body.contains("9500"), "{body}");
    assert!(before < 8, "the right passcode waited for every guess");
    let last = answers.iter().map(|(_, at)| *at).max().unwrap();
    for ((status, body), _) in &answers {
        assert_eq!(*status, StatusCode::FORBIDDEN, "{body}");
    }
    assert!(last >= schedule(8), "{last:?}");
    assert_eq!(security(&p).await["wrong_passcodes"], 1);
    // A stranger's DELETE with a wrong passcode is slowed and refused the same way.
    let r = reqwest::Client::new()
        .delete(format!("http://{}/dev/devices", p.gw.http_addr))
        .body(format!("did={did}&passcode=WRONGWRONG"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (_, code) = Raw::connect(&p, &did, "RIGHTRIGHT", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_with_too_many_attempts_in_flight_is_not_checked() {
    let p = Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| {
        g.throttle = ThrottleSettings {
            free_failures: 0,
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(30),
            max_in_flight_per_source: 2,
            max_in_flight_per_clean_source: 2,
            ..ThrottleSettings::default()
        };
    })
    .await;
    let did = register(&p, "0B0000000003", "RIGHTRIGHT").await;
    // Two guesses from 127.0.0.5 wait 30 s for their answers; a third attempt from there is
    // answered as wrong at once without being checked, even with the right passcode.
    let mut held = Vec::new();
    for i in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((Ipv4Addr::new(127, 0, 0, 5), 0).into()).unwrap();
        let mut stream = socket.connect(p.gw.mqtt_addr).await.unwrap();
        let connect =
            Packet::Connect(gagent_codec::mqtt::Connect::gagent(Protocol::V31, &did, &format!("GUESS{i:05}"), 120))
                .encode()
                .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, &connect).await.unwrap();
        held.push(stream);
    }
    let stats = &p.gw.throttle.stats;
    // Both guesses are checked and waiting for their answers.
    tokio::time::timeout(Duration::from_secs(10), async {
        while stats.wrong.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the two guesses were checked");
    let (_, code) = Raw::connect_from(&p, [127, 0, 0, 5], &did, "RIGHTRIGHT", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    assert_eq!(stats.unchecked.load(Ordering::Relaxed), 1);
    // The device at its own address is let in at once.
    let (_, code) = Raw::connect_from(&p, [127, 0, 0, 6], &did, "RIGHTRIGHT", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    drop(held);
}

async fn target_fid(p: &Plane, from: u8, did: &str, sw: &str, fid: i64) -> (StatusCode, String) {
    let url = format!(
        "http://{}/dev/ota/target_fid?did={did}&product_key={}&type=1&hard_version=00ESP826&soft_version={sw}&current_fid={fid}",
        p.gw.http_addr, p.pk
    );
    let r = client_from(from).get(url).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn device_view(p: &Plane, did: &str) -> Value {
    expect_status(p.s.get(&format!("/api/v1/devices/{did}")).await, StatusCode::OK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_fid_from_a_stranger_changes_nothing() {
    let p = plane().await;
    // A V4.1 device: its push method and versions are its own.
    let v41 = register(&p, "0B0000000011", "AAAAAAAAAA").await;
    let body = "passcode=AAAAAAAAAA&type=1&hard_version=00ESP826&soft_version=04020019";
    let url = format!("http://{}/dev/ota/v4.1/update_and_check/{v41}", p.gw.http_addr);
    reqwest::Client::new().post(url).body(body).send().await.unwrap();
    let before = device_view(&p, &v41).await;
    assert_eq!(before["push_method"], "V4.1");
    let (status, body) = target_fid(&p, 9, &v41, "04000001", 7).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let after = device_view(&p, &v41).await;
    assert_eq!(
        (after["push_method"].clone(), after["wifi"].clone()),
        (before["push_method"].clone(), before["wifi"].clone())
    );

    // A V4 device online from 127.0.0.1: a stranger at 127.0.0.9 writes nothing…
    let v4 = register(&p, "0B0000000012", "BBBBBBBBBB").await;
    let (_session, code) = Raw::connect(&p, &v4, "BBBBBBBBBB", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    p.gw.presence.flush().await;
    let (status, _) = target_fid(&p, 9, &v4, "04000009", 9).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no rule: 9500 either way");
    let view = device_view(&p, &v4).await;
    assert!(view["push_method"].is_null() && view["wifi"]["soft_version"].is_null(), "{view:#}");
    // …and its held report is not applied when the device logs in from its own address
    // (a second later: sessions are told apart by their start time).
    p.s.api.t.clock.advance(chrono::Duration::seconds(1));
    let (_again, _) = Raw::connect(&p, &v4, "BBBBBBBBBB", Protocol::V31).await;
    p.gw.presence.flush().await;
    assert!(device_view(&p, &v4).await["wifi"]["soft_version"].is_null());
    // From the session's own address the report is taken.
    target_fid(&p, 1, &v4, "04000001", 3).await;
    let view = device_view(&p, &v4).await;
    assert_eq!((view["push_method"].as_str(), view["wifi"]["fid"].as_i64()), (Some("V4"), Some(3)));

    // A V4 device at boot (GK: target_fid before its MQTT login) from 127.0.0.7: held, then
    // applied when it logs in from there.
    let boot = register(&p, "0B0000000013", "CCCCCCCCCC").await;
    target_fid(&p, 7, &boot, "04000001", 1).await;
    assert!(device_view(&p, &boot).await["push_method"].is_null(), "not applied before the login");
    let (_s, code) = Raw::connect_from(&p, [127, 0, 0, 7], &boot, "CCCCCCCCCC", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    let view = device_view(&p, &boot).await;
    assert_eq!((view["push_method"].as_str(), view["wifi"]["fid"].as_i64()), (Some("V4"), Some(1)));
    // An unknown did under a known product key is a refusal of that product.
    let (status, _) = target_fid(&p, 9, "ZZZZZZZZZZZZZZZZZZZZZ1", "04000001", 1).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        events(&p, "refused").await.iter().any(|e| e["did"] == "ZZZZZZZZZZZZZZZZZZZZZ1" && e["source"] == "127.0.0.9")
    );
}

async fn register_from(p: &Plane, from: u8, mac: &str, passcode: &str) -> (StatusCode, String) {
    let body = format!("passcode={passcode}&mac={mac}&product_key={}", p.pk);
    let r = client_from(from).post(format!("http://{}/dev/devices", p.gw.http_addr)).body(body).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn set_registration(p: &Plane, body: Value) -> Value {
    let r =
        p.s.client
            .put(p.s.url(&format!("/api/v1/products/{}/registration", p.pk)))
            .bearer_auth(&p.s.token)
            .json(&body)
            .send()
            .await
            .unwrap();
    expect_status(r, StatusCode::OK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registration_follows_the_product_policy_and_is_recorded() {
    let p = plane().await;
    let v = expect_status(p.s.get(&format!("/api/v1/products/{}/registration", p.pk)).await, StatusCode::OK).await;
    assert_eq!((v["policy"].as_str(), v["updated_at"].is_null()), (Some("allow"), true));

    // allow (the default, the hosted cloud's behaviour): the stranger's passcode replaces it.
    let did = register(&p, "0B0000000021", "OWNEROWNER").await;
    let (status, body) = register_from(&p, 9, "0B0000000021", "THIEFTHIEF").await;
    assert_eq!((status, body.clone()), (StatusCode::CREATED, format!("did={did}")));
    let rereg = events(&p, "reregistered").await;
    assert_eq!((rereg[0]["did"].as_str(), rereg[0]["source"].as_str()), (Some(did.as_str()), Some("127.0.0.9")));
    // The same passcode again is no replacement, whatever the policy.
    assert_eq!(register_from(&p, 9, "0B0000000021", "THIEFTHIEF").await.0, StatusCode::CREATED);
    assert_eq!(events(&p, "reregistered").await[0]["count"], 1);

    // deny: refused and recorded; the owner still logs in.
    set_registration(&p, json!({"policy": "deny"})).await;
    let owner = register(&p, "0B0000000022", "OWNEROWNER").await;
    let (status, body) = register_from(&p, 9, "0B0000000022", "THIEFTHIEF").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("reregistration_refused"), "{body}");
    let (_, code) = Raw::connect(&p, &owner, "OWNEROWNER", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    let (_, code) = Raw::connect(&p, &owner, "THIEFTHIEF", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    let refused = events(&p, "reregistration_refused").await;
    assert_eq!((refused[0]["did"].as_str(), refused[0]["source"].as_str()), (Some(owner.as_str()), Some("127.0.0.9")));

    // allow_when_offline: refused while the device has a session or was seen recently.
    let v = set_registration(&p, json!({"policy": "allow_when_offline", "offline_minutes": 30})).await;
    assert_eq!((v["policy"].as_str(), v["offline_minutes"].as_i64()), (Some("allow_when_offline"), Some(30)));
    let dev = register(&p, "0B0000000023", "OWNEROWNER").await;
    let (session, code) = Raw::connect(&p, &dev, "OWNEROWNER", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    p.gw.presence.flush().await;
    assert_eq!(register_from(&p, 9, "0B0000000023", "THIEFTHIEF").await.0, StatusCode::FORBIDDEN);
    drop(session);
    p.wait_device("0B0000000023", "offline", |d| d["online"] == false).await;
    assert_eq!(register_from(&p, 9, "0B0000000023", "THIEFTHIEF").await.0, StatusCode::FORBIDDEN, "seen just now");
    p.s.api.t.clock.advance(chrono::Duration::minutes(31));
    let (status, body) = register_from(&p, 9, "0B0000000023", "RESETRESET").await;
    assert_eq!(
        (status, body),
        (StatusCode::CREATED, format!("did={dev}")),
        "offline long enough: a real reset gets in"
    );
    let (_, code) = Raw::connect(&p, &dev, "RESETRESET", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);

    let v = security(&p).await;
    assert_eq!(
        (v["reregistrations"].as_i64(), v["reregistrations_refused"].as_i64(), v["registration"]["policy"].as_str()),
        (Some(2), Some(3), Some("allow_when_offline"))
    );
    let r =
        p.s.client
            .put(p.s.url(&format!("/api/v1/products/{}/registration", p.pk)))
            .bearer_auth(&p.s.token)
            .json(&json!({"policy": "allow_when_offline", "offline_minutes": 0}))
            .send()
            .await
            .unwrap();
    let e = expect_error(r, StatusCode::BAD_REQUEST, "invalid_field").await;
    assert_eq!(e["details"]["field"], "offline_minutes");
    let r =
        p.s.client
            .put(p.s.url(&format!("/api/v1/products/{}/registration", p.pk)))
            .bearer_auth(&p.s.token)
            .json(&json!({"policy": "allow_when_offline"}))
            .send()
            .await
            .unwrap();
    let e = expect_error(r, StatusCode::BAD_REQUEST, "missing_field").await;
    assert_eq!(e["details"]["field"], "offline_minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_did_refusals_are_listed_for_installation_admins() {
    let p = plane().await;
    let unknown = "UnKnOwNdIdUnKnOwNdId01";
    // No product adopts: refused at CONNECT, at provision and at the V4.1 check.
    let (_, code) = Raw::connect_from(&p, [127, 0, 0, 8], unknown, "AAAAAAAAAA", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    let http = client_from(8);
    let r = http.get(format!("http://{}/dev/devices/{unknown}", p.gw.http_addr)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let url = format!("http://{}/dev/ota/v4.1/update_and_check/{unknown}", p.gw.http_addr);
    let r = http
        .post(url)
        .body("passcode=AAAAAAAAAA&type=1&hard_version=00ESP826&soft_version=04020019")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let listed =
        expect_status(p.s.get(&format!("/api/v1/unknown-devices?did={}", &unknown[..6])).await, StatusCode::OK).await;
    let mut channels: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(
                (i["did"].as_str(), i["source"].as_str(), i["count"].as_i64()),
                (Some(unknown), Some("127.0.0.8"), Some(1))
            );
            i["channel"].as_str().unwrap().to_owned()
        })
        .collect();
    channels.sort();
    assert_eq!(channels, ["mqtt", "provision", "update_and_check"]);
    // Coalesced: a retry a minute later adds to the count of its row.
    p.s.api.t.clock.advance(chrono::Duration::seconds(61));
    Raw::connect_from(&p, [127, 0, 0, 8], unknown, "AAAAAAAAAA", Protocol::V31).await;
    let listed = expect_status(p.s.get("/api/v1/unknown-devices").await, StatusCode::OK).await;
    let mqtt = listed["items"].as_array().unwrap().iter().find(|i| i["channel"] == "mqtt").unwrap().clone();
    assert_eq!((mqtt["count"].as_i64(), listed["total"].as_i64()), (Some(2), Some(3)));

    // Only installation administrators see them.
    expect_status(
        p.s.post("/api/v1/users", json!({"username": "mia", "password": "member password 1"})).await,
        StatusCode::CREATED,
    )
    .await;
    let member = login(&p.s.client, &p.s.api, "mia", "member password 1").await;
    let r = p.s.client.get(p.s.url("/api/v1/unknown-devices")).bearer_auth(member).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "admin_required").await;
    p.s.api.t.domain.create_admin("other", "olga", "olga password 1").await.unwrap();
    let other = login(&p.s.client, &p.s.api, "olga", "olga password 1").await;
    let r = p.s.client.get(p.s.url("/api/v1/unknown-devices")).bearer_auth(other).send().await.unwrap();
    expect_error(r, StatusCode::FORBIDDEN, "installation_admin_required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisional_session_that_names_no_product_is_listed_as_unknown() {
    let p = Plane::start_tuned(BusConfig::Embedded { listen: None }, |g| {
        g.edge.adoption_timeout = Duration::from_millis(300);
    })
    .await;
    let r =
        p.s.client
            .put(p.s.url(&format!("/api/v1/products/{}/adoption", p.pk)))
            .bearer_auth(&p.s.token)
            .json(&json!({"policy": "imported"}))
            .send()
            .await
            .unwrap();
    expect_status(r, StatusCode::OK).await;
    let unknown = "LuAtStYlEdEvIcE0000001";
    let (mut raw, code) = Raw::connect(&p, unknown, "AAAAAAAAAA", Protocol::V311).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    assert!(raw.next().await.is_none(), "closed after the adoption timeout");
    let listed = expect_status(p.s.get("/api/v1/unknown-devices").await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["did"], unknown);
    assert_eq!(listed["items"][0]["reason"], "named no product within adoption_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt31_foreign_subscriptions_close_and_own_unserved_ones_are_granted() {
    let p = plane().await;
    let a = register(&p, "0B0000000031", "AAAAAAAAAA").await;
    let b = register(&p, "0B0000000032", "BBBBBBBBBB").await;
    let (mut ra, _) = Raw::connect(&p, &a, "AAAAAAAAAA", Protocol::V31).await;
    // LUAT's login: its own topics, and app2module/<did>/#, which we do not serve: granted QoS 0.
    assert_eq!(ra.subscribe(1, &format!("ser2cli_res/{a}")).await, 0);
    assert_eq!(ra.subscribe(2, &format!("app2dev/{a}/#")).await, 0);
    assert_eq!(ra.subscribe(3, &format!("app2module/{a}/#")).await, 0);
    let stats = p.gw.edge.stats();
    assert_eq!(stats.unserved_subscriptions.load(Ordering::Relaxed), 1);
    // Nothing is delivered there, and the device stays online.
    p.gw.bus.publish(&format!("app2module/{a}/x"), bytes::Bytes::from_static(b"\x00\x00\x00\x03")).await.unwrap();
    ra.send(Packet::PingReq).await;
    assert_eq!(ra.next().await, Some(Packet::PingResp));
    // Another device's topic: no SUBACK, the connection is closed.
    ra.send(Packet::Subscribe(Subscribe { pkid: 4, filters: vec![(format!("ser2cli_res/{b}"), 0)] })).await;
    assert_eq!(ra.next().await, None, "closed without a SUBACK");
    assert_eq!(stats.closed_for_subscription.load(Ordering::Relaxed), 1);
    // A wildcard reaching beyond its own topics, even next to an own filter, is the same.
    let (mut ra, _) = Raw::connect(&p, &a, "AAAAAAAAAA", Protocol::V31).await;
    let filters = vec![(format!("ser2cli_res/{a}"), 0), ("ser2cli_res/+".to_owned(), 0)];
    ra.send(Packet::Subscribe(Subscribe { pkid: 1, filters })).await;
    assert_eq!(ra.next().await, None);
    // MQTT 3.1.1 keeps its failure code for both.
    let (mut rb, _) = Raw::connect(&p, &b, "BBBBBBBBBB", Protocol::V311).await;
    assert_eq!(rb.subscribe(1, &format!("app2module/{b}/#")).await, 0x80);
    assert_eq!(rb.subscribe(2, &format!("ser2cli_res/{a}")).await, 0x80);
    rb.send(Packet::PingReq).await;
    assert_eq!(rb.next().await, Some(Packet::PingResp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt31_provisional_sessions_keep_their_own_filters_and_are_closed_when_refused() {
    let p = plane().await;
    let r =
        p.s.client
            .put(p.s.url(&format!("/api/v1/products/{}/adoption", p.pk)))
            .bearer_auth(&p.s.token)
            .json(&json!({"policy": "open", "open_until": "2027-01-01T00:00:00Z", "max_adoptions": 1}))
            .send()
            .await
            .unwrap();
    expect_status(r, StatusCode::OK).await;
    let new = "NeWdEvIcEnEwDeViCe0001";
    let (mut raw, code) = Raw::connect(&p, new, "AAAAAAAAAA", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    // Its own did's topic before it names a product: granted (and kept once adopted).
    assert_eq!(raw.subscribe(1, &format!("ser2cli_res/{new}")).await, 0);
    assert_eq!(raw.subscribe(2, &format!("ser2cli_noti/{}", p.pk)).await, 0, "adopted");
    p.wait_device(new, "online", |d| d["online"] == true).await;
    // The push for it arrives on the filter granted while provisional.
    p.gw.bus
        .publish(&format!("ser2cli_res/{new}"), bytes::Bytes::from_static(b"\x00\x00\x00\x03\x02\x11\x01"))
        .await
        .unwrap();
    match raw.next().await {
        Some(Packet::Publish(publish)) => assert_eq!(publish.topic, format!("ser2cli_res/{new}")),
        other => panic!("expected the message on the kept filter, got {other:?}"),
    }
    // The window is full: the next unknown did that names the product is closed, no SUBACK.
    let (mut raw, _) = Raw::connect(&p, "NeWdEvIcEnEwDeViCe0002", "AAAAAAAAAA", Protocol::V31).await;
    raw.send(Packet::Subscribe(Subscribe { pkid: 1, filters: vec![(format!("ser2cli_noti/{}", p.pk), 0)] })).await;
    assert_eq!(raw.next().await, None);
    // And one subscribing another device's topic while provisional is closed too.
    let (mut raw, _) = Raw::connect(&p, "NeWdEvIcEnEwDeViCe0003", "AAAAAAAAAA", Protocol::V31).await;
    raw.send(Packet::Subscribe(Subscribe { pkid: 1, filters: vec![(format!("ser2cli_res/{new}"), 0)] })).await;
    assert_eq!(raw.next().await, None);
}
