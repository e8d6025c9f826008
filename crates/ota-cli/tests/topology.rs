//! The scaled-out topology of `docker-compose.yml`, run natively: one API-only node and two
//! gateway-only nodes (`ota up --role api|gateway`) on PostgreSQL and Mosquitto, with the
//! firmware in a shared S3-compatible store (moto, started by the test) and no shared disk:
//! each node has a data directory of its own. A product and firmware are created through the
//! API node, simulated devices log in to the gateways, a verification started on the API node
//! reaches its device through the broker, and a rule completes on every device; the gateways
//! serve the image from their read-through caches, each having fetched it from the store once.
//! In CI (`CI` set) PostgreSQL, Mosquitto and moto must be there; elsewhere the test skips
//! loudly without them.

mod common;

use std::time::Duration;

use common::Env;

use ota_sim::Timing;
use ota_testkit::cluster::fleet::{Fleet, TARGET, fast_policy};
use ota_testkit::cluster::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_api_node_and_two_gateway_nodes_roll_out_firmware() {
    if !(require("PostgreSQL on 127.0.0.1:5432", port_open("127.0.0.1:5432"))
        && require("Mosquitto on 127.0.0.1:1883", port_open("127.0.0.1:1883")))
    {
        return;
    }
    let Some(moto) = ota_testkit::moto::Moto::start() else { return };
    let db = ota_testkit::TestDatabase::postgres().expect("a test schema");
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        ota: env!("CARGO_BIN_EXE_ota").into(),
        timing: Timing::fast(),
        database_url: db.url.clone(),
        broker: "mqtt://127.0.0.1:1883".into(),
        lease_secs: 3,
        delivery_secs: 2,
        push_rate: 20,
        dir: dir.path().to_owned(),
        store_env: moto.node_env(),
        node_env: Vec::new(),
    };
    let api_node = Node::start_role(&config, "api-1", "api");
    let g1 = Node::start_role(&config, "gw-1", "gateway");
    let g2 = Node::start_role(&config, "gw-2", "gateway");

    // Each node runs what its role says, and nothing else.
    assert_eq!((api_node.http, api_node.mqtt), (Node::NONE, Node::NONE));
    assert_eq!((g1.api, g2.api), (Node::NONE, Node::NONE));
    let client = reqwest::Client::new();
    for g in [&g1, &g2] {
        for path in ["/healthz", "/readyz"] {
            let r = client.get(format!("http://{}{path}", g.http)).send().await.unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::OK, "{} {path}", g.name);
        }
        // The gateway's device HTTP is no management API.
        let r = client.get(format!("http://{}/api/v1/products", g.http)).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND, "{}", g.name);
    }

    let api = Api::login(&[&api_node]).await;
    let fleet = Fleet::boot(&api, &[&g1, &g2], 20, &config.timing).await;
    // The test device, on the second gateway.
    let verifier_mac = "5CAA00FFFF01";
    let verifier = device(&g2, &fleet.pk, verifier_mac, &config.timing);
    api.wait(&format!("/api/v1/devices/{verifier_mac}"), "online", Duration::from_secs(30), |v| v["online"] == true)
        .await;

    // Firmware through the API node, verified on the test device: the API node has no
    // gateway, so the push goes out through the broker to the gateway holding the device.
    let fw = api.upload_wifi(&fleet.pk, TARGET, 32 * 1024).await;
    let started = api.post(&format!("/api/v1/firmware/{fw}/verification"), json!({ "mac": verifier_mac })).await;
    assert_eq!(started.unwrap()["state"], "pushing");
    let done = api
        .wait(&format!("/api/v1/firmware/{fw}/verification"), "awaiting confirmation", Duration::from_secs(60), |v| {
            v["state"] == "awaiting_confirmation" || v["state"] == "failed"
        })
        .await;
    assert_eq!(done["state"], "awaiting_confirmation", "{done:#}");
    let confirmed = api.post(&format!("/api/v1/firmware/{fw}/verification/confirm"), json!({ "stable": true })).await;
    assert_eq!(confirmed.unwrap()["state"], "verified");

    // A rule for the fleet (the test device already runs the new version), started on the API
    // node, pushed by the gateways' schedulers.
    let rule = api.post(&format!("/api/v1/firmware/{fw}/rules"), rule_body(fast_policy())).await.unwrap();
    let id = rule["request_id"].as_i64().unwrap();
    let started: Value = api
        .post(&format!("/api/v1/rules/{id}/start"), json!({ "confirm_stable": true, "accept_terms": true }))
        .await
        .unwrap();
    assert_eq!(started["target_devices"].as_u64(), Some(20), "{started:#}");
    // The live rule's progress shows on the gateways' metrics (their schedulers refresh it).
    let series = format!("ota_rule_targets{{rule=\"{id}\"}} 20");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while tokio::time::Instant::now() < deadline {
        seen = metrics_text(&client, &g1).await;
        if seen.lines().any(|l| l == series) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(seen.lines().any(|l| l == series), "{series} not in:\n{seen}");
    let done = fleet.wait_completed(&api, id, Duration::from_secs(90)).await;
    // Fleet::boot spread the devices over both gateways.
    assert_eq!((fleet.on_node(0), fleet.on_node(1)), (10, 10));
    let outcome = fleet.check_exactly_once(&api, id, &done).await.unwrap();
    eprintln!("api + 2 gateways: {outcome}");
    let v = verifier.stop().await;
    assert_eq!(v.wifi_sw, TARGET);
    assert!(api_node.log().lines().all(|l| !l.contains("ERROR")), "{}", api_node.log());

    the_readme_pipeline_runs_on_the_topology(&api_node, [&g1, &g2], &api, dir.path()).await;

    // The image lives in the bucket; no node has a firmware directory; each gateway served it
    // from its own cache, filled by one GET from the store.
    let sha256 = api.get(&format!("/api/v1/firmware/{fw}")).await.unwrap()["sha256"].as_str().unwrap().to_owned();
    let key = format!("firmware/{sha256}");
    // Counted before this test reads the object itself.
    let gets = moto.requests_matching(&format!("GET /{}/{key}?", moto.bucket));
    assert_eq!(gets, 2, "one GET per gateway, whatever the number of devices:\n{}", moto.log());
    let image = moto.get_raw(&key).expect("the image is in the bucket");
    assert_eq!(image.len(), 32 * 1024);
    for node in [&api_node, &g1, &g2] {
        let data = dir.path().join(&node.name).join("data");
        assert!(data.is_dir(), "{} has its own data directory", node.name);
        assert!(!data.join("firmware").exists(), "{} keeps no local firmware store", node.name);
    }
    assert!(!dir.path().join("data").exists(), "no data directory is shared");
    for g in [&g1, &g2] {
        let cached = dir.path().join(&g.name).join("data/firmware-cache").join(&sha256[..2]).join(&sha256);
        assert_eq!(std::fs::read(&cached).ok().as_deref(), Some(&image[..]), "{} cache", g.name);
    }

    // Each node's metrics on its own bind: the API node counts API requests, the gateways
    // their devices' logins and downloads.
    let text = metrics_text(&client, &api_node).await;
    assert!(text.lines().any(|l| l.starts_with("ota_api_requests_total{")), "{text}");
    for g in [&g1, &g2] {
        let text = metrics_text(&client, g).await;
        for name in ["ota_device_logins_total ", "ota_downloads_completed_total ", "ota_mqtt_sessions "] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{} lacks {name}:\n{text}", g.name);
        }
    }
}

/// The README's pipeline block, as a CI job runs it, against the API node of the topology:
/// its test device and fleet spread over both gateways, which fetch the image from the shared
/// store. Run twice, the second changing nothing; the audit log lists what the job did, under
/// the job's API token.
async fn the_readme_pipeline_runs_on_the_topology(
    api_node: &Node,
    gateways: [&Node; 2],
    api: &Api,
    dir: &std::path::Path,
) {
    let work = dir.join("job");
    std::fs::create_dir_all(&work).unwrap();
    let token = common::login(&api_node.api_url(), &dir.join("job-config"), ADMIN, PASSWORD);
    let mut env = Env { dir: work, url: api_node.api_url(), token, pk: String::new(), test_mac: String::new() };
    env.pk = env.ota_json(&["products", "create", "--name", "lamp"])["product_key"].as_str().unwrap().to_owned();
    let macs: Vec<String> = (1..=4).map(|i| format!("5CCF7F{:06X}", 0xB000 + i)).collect();
    env.test_mac = macs[0].clone();
    let timing = Timing::fast();
    let devices: Vec<_> =
        macs.iter().enumerate().map(|(i, mac)| device(gateways[i % 2], &env.pk, mac, &timing)).collect();
    api.wait(
        &format!("/api/v1/products/{}/devices?online=true&per_page=1", env.pk),
        "the job's devices online",
        Duration::from_secs(60),
        |v| v["total"].as_u64() == Some(macs.len() as u64),
    )
    .await;

    let run = common::readme_pipeline_runs_twice(&env, 3);

    // The audit log is for admins: an admin's session reads it.
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{}/api/v1/auth/login", api_node.api_url()))
        .json(&json!({ "username": ADMIN, "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    let audit = |query: String| {
        let (client, session) = (client.clone(), session.clone());
        let url = format!("{}/api/v1/audit?{query}&per_page=200", api_node.api_url());
        async move {
            let r = client.get(url).bearer_auth(session).send().await.unwrap();
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let rule_entries = audit(format!("object_kind=rule&object_id={}", run.rule_id)).await;
    let firmware_entries = audit(format!("object_kind=firmware&object_id={}", run.firmware_id)).await;
    // A verification's start is filed under the verification it created.
    let verification_entries = audit("action=start_verification".into()).await;
    let started =
        verification_entries["items"].as_array().unwrap().iter().filter(|e| e["object_kind"] == "verification");
    let entries: Vec<&Value> = rule_entries["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(firmware_entries["items"].as_array().unwrap())
        .chain(started)
        .collect();
    let done =
        |action: &str| entries.iter().any(|e| e["action"] == action && e["status"].as_u64().is_some_and(|s| s < 300));
    for action in ["create_firmware", "start_verification", "confirm_verification", "create_rule", "start_rule"] {
        assert!(done(action), "the audit log lacks a successful {action}: {entries:#?}");
    }
    assert!(
        entries.iter().all(|e| e["credential"] == "api_token" && e["username"] == ADMIN),
        "the job's actions are under its API token: {entries:#?}"
    );
    for d in devices {
        assert_eq!(d.stop().await.wifi_sw, "04020021");
    }
}

async fn metrics_text(client: &reqwest::Client, node: &Node) -> String {
    let r = client.get(format!("http://{}/metrics", node.metrics)).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK, "{}", node.name);
    r.text().await.unwrap()
}
