//! Fault tests on whole `ota up` processes: `kill -9` of nodes mid-rollout (the one that
//! served the rule's start too), PostgreSQL stopped for 20 s, the broker restarted, and
//! device presence after kills, restarts and graceful stops. Short versions (tens of devices,
//! seconds); the 300-device run is a benchmark (README, "Rollouts under faults").

use std::time::Duration;

use ota_sim::Timing;
use ota_testkit::cluster::fleet::{Fleet, fast_policy};
use ota_testkit::cluster::*;

/// The machine's PostgreSQL and Mosquitto, which most of these tests share (each in its own
/// schema; devices and topics do not collide).
/// The nodes' directory (logs included); with `OTA_FAULTS_KEEP` set, a copy that outlives
/// the test, for a look at the logs.
fn kept(dir: &tempfile::TempDir) -> std::path::PathBuf {
    match std::env::var("OTA_FAULTS_KEEP") {
        Ok(base) if !base.is_empty() => {
            let path = std::path::Path::new(&base).join(dir.path().file_name().unwrap_or_default());
            eprintln!("node logs in {}", path.display());
            path
        }
        _ => dir.path().to_owned(),
    }
}

/// The tests' cluster: lease 3 s and delivery timeout 2 s (production: 30 s, 10 s), so that
/// faults heal in seconds.
fn cluster(database_url: String, broker: String, push_rate: u32, dir: &tempfile::TempDir) -> ClusterConfig {
    ClusterConfig {
        ota: env!("CARGO_BIN_EXE_ota").into(),
        timing: Timing::fast(),
        database_url,
        broker,
        lease_secs: 3,
        delivery_secs: 2,
        push_rate,
        dir: kept(dir),
        store_env: Vec::new(),
        node_env: Vec::new(),
    }
}

const MOSQUITTO: &str = "mqtt://127.0.0.1:1883";

fn services() -> bool {
    require("PostgreSQL on 127.0.0.1:5432", port_open("127.0.0.1:5432"))
        && require("Mosquitto on 127.0.0.1:1883", port_open("127.0.0.1:1883"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_two_killed_mid_rollout_every_device_upgrades_exactly_once() {
    if !services() {
        return;
    }
    let db = ota_testkit::TestDatabase::postgres().expect("a test schema");
    let dir = tempfile::tempdir().unwrap();
    let config = cluster(db.url.clone(), MOSQUITTO.into(), 3, &dir);
    let mut n1 = Node::start(&config, "n1");
    let mut n2 = Node::start(&config, "n2");
    let n3 = Node::start(&config, "n3");
    let api = Api::login(&[&n1, &n2, &n3]).await;
    let mut fleet = Fleet::boot(&api, &[&n1, &n2, &n3], 30, &config.timing).await;
    // The rule is started through n1's API; n1 dies later.
    let rule = fleet.start_rule(&api, &config.database_url, fast_policy()).await;

    fleet.wait_notified(&api, rule, 9).await;
    let on_n2 = fleet.on_node(1);
    n2.kill9();
    // Presence is the truth within one lease period: n2's devices show offline on the others.
    let survivors = fleet.devices.len() - on_n2;
    api.wait(
        &format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk),
        "n2's devices offline",
        Duration::from_secs(3 * 3 + 5),
        |v| v["total"].as_i64() == Some(survivors as i64),
    )
    .await;
    n2.restart();

    fleet.wait_notified(&api, rule, 15).await;
    n1.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    n1.restart();

    let done = fleet.wait_completed(&api, rule, Duration::from_secs(150)).await;
    // Every node is back and every device online.
    let path = format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk);
    api.wait(&path, "all online", Duration::from_secs(30), |v| v["total"] == 30).await;
    let outcome = fleet.check_exactly_once(&api, rule, &done).await.unwrap();
    eprintln!("kill -9 of two nodes: {outcome}");
    // A push acknowledged in the last milliseconds before a kill -9 dies with the process's
    // acknowledgement and goes out again: at most that, once per kill.
    assert!(outcome.extra <= 2, "{outcome}");
    drop(n3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_follows_kill_restart_and_graceful_stop() {
    if !services() {
        return;
    }
    let db = ota_testkit::TestDatabase::postgres().expect("a test schema");
    let dir = tempfile::tempdir().unwrap();
    let config = cluster(db.url.clone(), MOSQUITTO.into(), 0, &dir);
    let mut a = Node::start(&config, "a");
    let b = Node::start(&config, "b");
    let api = Api::login(&[&b, &a]).await;
    let fleet = Fleet::boot(&api, &[&a], 6, &config.timing).await;
    let path = format!("/api/v1/devices/{}", fleet.macs[0]);
    let before = api.get(&path).await.unwrap();
    assert_eq!(before["online"], true);

    // kill -9: nobody tells the database; b notices the lease lapse.
    let killed = tokio::time::Instant::now();
    a.kill9();
    let offline = api
        .wait(
            &format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk),
            "all offline",
            Duration::from_secs(15),
            |v| v["total"] == 0,
        )
        .await;
    assert_eq!(offline["total"], 0);
    let took = killed.elapsed();
    eprintln!("offline {took:?} after kill -9");
    assert!(took <= Duration::from_secs(3 + 1 + 2), "offline {took:?} after the kill, lease 3 s");
    let after = api.get(&path).await.unwrap();
    assert!(after["disconnected_at"].is_string(), "{after:#}");

    // Restart: the devices log in again and are online, with a new session.
    a.restart();
    api.wait(
        &format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk),
        "all back",
        Duration::from_secs(30),
        |v| v["total"] == 6,
    )
    .await;
    let again = api.get(&path).await.unwrap();
    assert_ne!(again["connected_at"], before["connected_at"], "a new session");

    // SIGTERM: offline at once, not one lease later.
    a.term();
    let now = api.online(&fleet.pk).await;
    assert_eq!(now, 0, "a graceful stop marks its devices offline before it exits");
    assert!(a.log().contains("gateway stopped"), "{}", a.log());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_survives_postgresql_stopped_for_20_seconds() {
    let Some(pg) = PgCluster::start() else {
        require("PostgreSQL's initdb and pg_ctl", false);
        return;
    };
    if !require("Mosquitto on 127.0.0.1:1883", port_open("127.0.0.1:1883")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cluster(pg.url(), MOSQUITTO.into(), 2, &dir);
    let n1 = Node::start(&config, "p1");
    let n2 = Node::start(&config, "p2");
    let api = Api::login(&[&n1, &n2]).await;
    let mut fleet = Fleet::boot(&api, &[&n1, &n2], 16, &config.timing).await;
    let rule = fleet.start_rule(&api, &config.database_url, fast_policy()).await;
    fleet.wait_notified(&api, rule, 5).await;
    pg.down();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(pg.up(), "PostgreSQL starts again");
    let done = fleet.wait_completed(&api, rule, Duration::from_secs(150)).await;
    let path = format!("/api/v1/products/{}/devices?online=true&per_page=1", fleet.pk);
    api.wait(&path, "presence healed", Duration::from_secs(30), |v| v["total"] == 16).await;
    let outcome = fleet.check_exactly_once(&api, rule, &done).await.unwrap();
    eprintln!("PostgreSQL down 20 s: {outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_survives_a_broker_restart() {
    if !require("PostgreSQL on 127.0.0.1:5432", port_open("127.0.0.1:5432")) {
        return;
    }
    let Some(mut broker) = Broker::start() else {
        require("mosquitto", false);
        return;
    };
    let db = ota_testkit::TestDatabase::postgres().expect("a test schema");
    let dir = tempfile::tempdir().unwrap();
    let config = cluster(db.url.clone(), format!("mqtt://127.0.0.1:{}", broker.port), 2, &dir);
    let n1 = Node::start(&config, "m1");
    let n2 = Node::start(&config, "m2");
    let api = Api::login(&[&n1, &n2]).await;
    let mut fleet = Fleet::boot(&api, &[&n1, &n2], 16, &config.timing).await;
    let rule = fleet.start_rule(&api, &config.database_url, fast_policy()).await;
    fleet.wait_notified(&api, rule, 5).await;
    broker.down();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(broker.up(), "the broker starts again on its port");
    let done = fleet.wait_completed(&api, rule, Duration::from_secs(150)).await;
    let outcome = fleet.check_exactly_once(&api, rule, &done).await.unwrap();
    eprintln!("broker restarted: {outcome}");
}
