//! First start and configuration, through the `ota` binary: every taken port reported at once
//! with its setting and nothing changed (no first admin created), unknown configuration keys
//! refused, roles that need a shared broker refused without one, `ota openapi` into a closed
//! pipe, `ota sim` against an address where no server listens, and an S3 firmware store that
//! cannot be used.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const OTA: &str = env!("CARGO_BIN_EXE_ota");

/// `ota` with an environment of its own (none of the caller's `OTA_*`), in `dir`.
fn ota(dir: &Path) -> Command {
    let mut c = Command::new(OTA);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTA_DATA_DIR", dir.join("data"))
        .env("OTA_LOG", "warn")
        .current_dir(dir);
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn taken() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// Starts `ota up` and returns it with the banner, once the banner is complete.
fn up(mut cmd: Command) -> (Child, String) {
    let mut child = cmd.arg("up").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop with") {
                break;
            }
        }
        let _ = tx.send(banner);
        // Keep draining, so the server never writes into a closed pipe.
        for _ in lines {}
    });
    let banner = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    (child, banner)
}

#[test]
fn every_taken_port_is_reported_at_once_and_no_admin_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, api) = taken();
    let (_http, http) = taken();
    let (_mqtt, mqtt) = taken();
    let (_broker, broker) = taken();
    let (_metrics, metrics) = taken();
    let out = ota(dir.path())
        .arg("up")
        .env("OTA_API_BIND", &api)
        .env("OTA_DEVICE_HTTP_BIND", &http)
        .env("OTA_DEVICE_MQTT_BIND", &mqtt)
        .env("OTA_BROKER_LISTEN", &broker)
        .env("OTA_METRICS_BIND", &metrics)
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("5 listeners cannot start"), "{all}");
    let each = [
        (&api, "api_bind"),
        (&http, "device_http_bind"),
        (&mqtt, "device_mqtt_bind"),
        (&broker, "broker_listen"),
        (&metrics, "metrics_bind"),
    ];
    for (addr, key) in each {
        let env = format!("OTA_{}", key.to_ascii_uppercase());
        let line = all.lines().find(|l| l.contains(addr.as_str())).unwrap_or_else(|| panic!("{addr} not named: {all}"));
        assert!(line.contains(&format!("`{key}`")) && line.contains(&env), "{line}");
    }
    // The API's error no longer suggests another listener's default.
    assert!(!all.contains("0.0.0.0:8081"), "{all}");
    assert!(!dir.path().join("data/ota.db").exists(), "the database was touched: {all}");

    // Once the ports are free, the first start creates the first admin and shows its password.
    let (mut child, banner) = up({
        let mut c = ota(dir.path());
        c.env("OTA_API_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_HTTP_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_MQTT_BIND", "127.0.0.1:0");
        c
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(banner.contains("first admin    `admin` with generated password: "), "{banner}");
}

#[test]
fn one_taken_port_names_only_its_setting() {
    let dir = tempfile::tempdir().unwrap();
    let (_http, http) = taken();
    let out = ota(dir.path())
        .arg("up")
        .env("OTA_API_BIND", "127.0.0.1:0")
        .env("OTA_DEVICE_HTTP_BIND", &http)
        .env("OTA_DEVICE_MQTT_BIND", "127.0.0.1:0")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("1 listener cannot start") && all.contains("OTA_DEVICE_HTTP_BIND"), "{all}");
    assert!(!all.contains("OTA_API_BIND") && !all.contains("OTA_DEVICE_MQTT_BIND"), "{all}");
}

#[test]
fn an_unknown_key_in_the_configuration_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ota.toml"), "api_bindd = \"127.0.0.1:0\"\n").unwrap();
    let out = ota(dir.path()).arg("up").output().unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("unknown configuration key in ota.toml: `api_bindd` (did you mean `api_bind`?)"), "{all}");
    assert!(!dir.path().join("data").exists(), "{all}");
}

#[test]
fn an_unknown_ota_variable_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = up({
        let mut c = ota(dir.path());
        c.env("OTA_API_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_HTTP_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_MQTT_BIND", "127.0.0.1:0")
            .env("OTA_PUSH_RAET", "5")
            .env("OTA_URL", "http://127.0.0.1:1")
            .env("OTA_TOKEN", "not-a-setting-of-the-server");
        c
    });
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(banner.contains("OTA server is up"), "{banner}{stderr}");
    assert!(
        stderr.contains("OTA_PUSH_RAET is no configuration setting and is ignored (did you mean OTA_PUSH_RATE?)"),
        "{stderr}"
    );
    assert!(!stderr.contains("OTA_URL") && !stderr.contains("OTA_TOKEN"), "{stderr}");
}

#[test]
fn split_roles_need_a_broker_the_other_nodes_reach() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["api", "gateway"] {
        let out = ota(dir.path()).args(["up", "--role", role]).output().unwrap();
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(all.contains(&format!("role `{role}`")) && all.contains("OTA_BROKER"), "{all}");
    }
    let out = ota(dir.path()).args(["up", "--role", "both"]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("'both'"), "{}", text(&out));
}

/// A shared firmware store the node cannot use stops the start, naming the setting; with a
/// bucket that is there (moto, started by the test) the node comes up.
#[test]
fn an_s3_store_that_cannot_be_used_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = |c: &mut Command, endpoint: &str, bucket: &str| {
        c.env("OTA_API_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_HTTP_BIND", "127.0.0.1:0")
            .env("OTA_DEVICE_MQTT_BIND", "127.0.0.1:0")
            .env("OTA_FIRMWARE_STORE", "s3")
            .env("OTA_S3_ENDPOINT", endpoint)
            .env("OTA_S3_BUCKET", bucket)
            .env("OTA_S3_ACCESS_KEY_ID", ota_testkit::moto::ACCESS_KEY_ID)
            .env("OTA_S3_SECRET_ACCESS_KEY", ota_testkit::moto::SECRET_ACCESS_KEY);
    };
    // A required key missing.
    let out = ota(dir.path()).arg("up").env("OTA_FIRMWARE_STORE", "s3").output().unwrap();
    let all = text(&out);
    assert!(!out.status.success() && all.contains("needs s3_endpoint (or OTA_S3_ENDPOINT)"), "{all}");
    // HTTPS is refused with the reason.
    let mut c = ota(dir.path());
    s3(&mut c, "https://s3.example.com", "fw");
    let out = c.arg("up").output().unwrap();
    let all = text(&out);
    assert!(!out.status.success() && all.contains("TLS-terminating proxy"), "{all}");
    // Nothing listens at the endpoint.
    let (listener, addr) = taken();
    drop(listener);
    let mut c = ota(dir.path());
    s3(&mut c, &format!("http://{addr}"), "fw");
    let out = c.arg("up").output().unwrap();
    let all = text(&out);
    assert!(!out.status.success() && all.contains("cannot reach the S3 store") && all.contains("s3_endpoint"), "{all}");

    let Some(moto) = ota_testkit::moto::Moto::start() else { return };
    let mut c = ota(dir.path());
    s3(&mut c, &moto.endpoint, "no-such-bucket");
    let out = c.arg("up").output().unwrap();
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("`no-such-bucket` does not exist") && all.contains("s3_bucket"),
        "{all}"
    );
    let (mut child, banner) = up({
        let mut c = ota(dir.path());
        s3(&mut c, &moto.endpoint, &moto.bucket);
        c
    });
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(banner.contains("OTA server is up"), "{banner}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("data/firmware").exists(), "the s3 store keeps no local firmware directory");
}

#[test]
fn openapi_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // The reading end is closed before `ota` writes a byte (what `| head` does once it has
    // its lines, on a document longer than the pipe buffer).
    let mut child = ota(dir.path()).arg("openapi").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn sim_that_reaches_no_server_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let out = ota(dir.path())
        .args(["sim", "--http", &dead, "--product-key", "0123456789abcdef0123456789abcdef", "--devices", "2"])
        .args(["--duration", "2s", "--quiet"])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains(&format!("no device registered or provisioned at {dead}")), "{all}");
}
