//! Metrics and logs of a whole `ota up` (role `all`, SQLite, embedded broker): after a device
//! flow (logins, a verification's push, check, download and success) and API calls, the
//! Prometheus text on `metrics_bind` shows the series increased; the device HTTP and API ports
//! do not serve it; API responses carry `X-Request-Id` and the access log line has it; text logs
//! written to a file (not a terminal) have no colour codes.

use std::collections::HashMap;
use std::time::Duration;

use ota_sim::Timing;
use ota_testkit::cluster::fleet::{Fleet, TARGET};
use ota_testkit::cluster::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    ota_testkit::cluster::scrape(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_show_the_device_flow_and_api_calls_on_their_own_bind() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClusterConfig {
        ota: env!("CARGO_BIN_EXE_ota").into(),
        timing: Timing::fast(),
        database_url: format!("sqlite:{}", dir.path().join("ota.db").display()),
        broker: "embedded".into(),
        lease_secs: 3,
        delivery_secs: 2,
        push_rate: 20,
        dir: dir.path().to_owned(),
        store_env: Vec::new(),
        node_env: Vec::new(),
    };
    let node = Node::start(&config, "solo");
    assert_ne!(node.metrics, Node::NONE);
    let before = scrape(node.metrics).await;

    let api = Api::login(&[&node]).await;
    let fleet = Fleet::boot(&api, &[&node], 2, &config.timing).await;
    // A connection whose first packet is no CONNECT (a PINGREQ): refused for the protocol.
    let mut raw = tokio::net::TcpStream::connect(node.mqtt).await.unwrap();
    raw.write_all(&[0xC0, 0x00]).await.unwrap();
    let size = 16 * 1024;
    let fw = api.upload_wifi(&fleet.pk, TARGET, size).await;
    let mac = &fleet.macs[0];
    let started = api.post(&format!("/api/v1/firmware/{fw}/verification"), json!({ "mac": mac })).await.unwrap();
    assert_eq!(started["state"], "pushing");
    let done = api
        .wait(&format!("/api/v1/firmware/{fw}/verification"), "awaiting confirmation", Duration::from_secs(60), |v| {
            v["state"] == "awaiting_confirmation" || v["state"] == "failed"
        })
        .await;
    assert_eq!(done["state"], "awaiting_confirmation", "{done:#}");

    // Gauges are refreshed by the scheduler every few rounds: wait for them (bounded).
    let expected: &[(&str, &[&str], f64)] = &[
        ("ota_device_logins_total", &[], 2.0),
        ("ota_device_login_refusals_total", &["channel=\"mqtt\"", "reason=\"protocol\""], 1.0),
        ("ota_device_checks_total", &["method=\"V4.1\""], 1.0),
        ("ota_offers_total", &["method=\"V4.1\""], 1.0),
        ("ota_pushes_sent_total", &[], 1.0),
        ("ota_pushes_delivered_total", &[], 1.0),
        ("ota_upgrade_stage_changes_total", &["stage=\"succeeded\""], 1.0),
        ("ota_downloads_started_total", &["kind=\"offer\""], 1.0),
        ("ota_downloads_completed_total", &[], 1.0),
        ("ota_download_bytes_total", &[], size as f64),
        ("ota_device_http_requests_total", &["status=\"200\""], 2.0),
        ("ota_push_delivery_seconds_count", &[], 1.0),
        ("ota_offer_to_download_seconds_count", &[], 1.0),
        ("ota_download_seconds_count", &[], 1.0),
        ("ota_downloaded_to_succeeded_seconds_count", &[], 1.0),
        ("ota_scheduler_round_seconds_count", &[], 1.0),
        ("ota_api_requests_total", &["route=\"/api/v1/products\"", "method=\"POST\"", "status=\"201\""], 1.0),
        ("ota_api_request_seconds_count", &["route=\"/api/v1/firmware/{id}/verification\""], 1.0),
    ];
    let missing = |after: &HashMap<String, f64>| -> Vec<String> {
        let mut out: Vec<String> = expected
            .iter()
            .filter(|(name, labels, by)| metric_total(after, name, labels) < metric_total(&before, name, labels) + by)
            .map(|(name, labels, by)| {
                let (b, a) = (metric_total(&before, name, labels), metric_total(after, name, labels));
                format!("{name}{labels:?} went from {b} to {a}, expected +{by}")
            })
            .collect();
        if metric_total(after, "ota_mqtt_sessions", &[]) < 2.0 {
            out.push("ota_mqtt_sessions < 2".into());
        }
        out
    };
    let mut after = scrape(node.metrics).await;
    for _ in 0..60 {
        if missing(&after).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = scrape(node.metrics).await;
    }
    let missing = missing(&after);
    assert!(missing.is_empty(), "{missing:#?}\nlog:\n{}", node.log());
    assert!(metric_total(&after, "ota_mqtt_sessions", &[]) >= 2.0, "{after:?}");
    assert!(metric_total(&after, "ota_db_connections_max", &[]) >= 1.0, "{after:?}");
    assert!(metric_total(&after, "ota_db_connections", &["state=\"idle\""]) >= 0.0);
    // Histograms have buckets (not a summary's quantiles).
    assert!(after.keys().any(|k| k.starts_with("ota_download_seconds_bucket{")), "{after:?}");

    // Not on the device HTTP (internet-facing) or the API port.
    let client = reqwest::Client::new();
    for base in [node.http, node.api] {
        let r = client.get(format!("http://{base}/metrics")).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND, "{base}");
    }

    // A request id on every API answer: a sane one is kept, anything else replaced.
    let r = client.get(format!("{}/healthz", node.api_url())).header("x-request-id", "ci-run-42.step_7").send();
    let r = r.await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "ci-run-42.step_7");
    let r = client.get(format!("{}/api/v1/products", node.api_url())).header("x-request-id", "a b\tforged").send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");

    // The log (a file, no terminal): the request ids are on its lines, and no ESC byte.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = node.log();
        if log.contains(&id) || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("request_id=ci-run-42.step_7"), "{log}");
    assert!(log.contains(&id), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log}");
    fleet.stop().await;
}

/// A node logging at debug into a file: every device HTTP line carries its request id (the
/// span of the connection), and the file has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_http_log_lines_carry_a_request_id_and_files_get_no_colour() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ota"))
        .arg("up")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTA_LOG", "debug,rumqttd=warn")
        .env("OTA_DATA_DIR", dir.path().join("data"))
        .env("OTA_API_BIND", "127.0.0.1:0")
        .env("OTA_DEVICE_HTTP_BIND", "127.0.0.1:0")
        .env("OTA_DEVICE_MQTT_BIND", "127.0.0.1:0")
        .env("OTA_ADMIN_PASSWORD", "correct horse battery staple")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut http = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.trim_start().strip_prefix("device HTTP") {
            http = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.starts_with("Stop with") {
            break;
        }
    }
    let http = http.expect("the banner names the device HTTP address");
    let r = reqwest::get(format!("http://{http}/healthz")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let r = reqwest::get(format!("http://{http}/metrics")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        if text.matches("device request").count() >= 2 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("device request")).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for line in &lines {
        assert!(line.contains("device_http{request_id="), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("/healthz") && l.contains("status=\"200\"")), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file:\n{text}");
}
