//! Whole `ota up` processes, a PostgreSQL and a Mosquitto of the test's own, simulated devices
//! and an API client: what the fault tests (`crates/ota-cli/tests/faults`) and the fault
//! benchmark (`ota-bench faults`) are made of.

pub mod fleet;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ota_sim::{Device, DeviceConfig, DeviceHandle, DeviceSpec, Method, Timing};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const ADMIN: &str = "admin";
pub const PASSWORD: &str = "correct horse battery staple";
const JWT_SECRET: &str = "fault-tests-share-one-secret-across-their-nodes";

/// Fails in CI, skips loudly elsewhere, when a service the test needs is not there.
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        assert!(!crate::in_ci(), "{what} is not reachable, and CI needs it");
        eprintln!("SKIPPED: {what} is not reachable; the fault test did not run");
    }
    ok
}

pub fn port_open(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .ok()
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Where the nodes of one cluster meet: database, broker, settings.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The `ota` executable.
    pub ota: PathBuf,
    /// Simulated device timers (fast in tests, the firmware's own in benchmarks).
    pub timing: Timing,
    pub database_url: String,
    pub broker: String,
    pub lease_secs: u64,
    pub delivery_secs: u64,
    pub push_rate: u32,
    pub dir: PathBuf,
    /// Extra `OTA_*` settings of every node that choose its firmware store (e.g.
    /// [`crate::moto::Moto::node_env`]). Empty: the local store, in one data directory all
    /// nodes share (as a shared volume would); otherwise each node has a data directory of its
    /// own, so nothing on disk is shared.
    pub store_env: Vec<(String, String)>,
    /// Further `OTA_*` settings of every node (a benchmark's admission bounds, say); they
    /// win over the defaults set here.
    pub node_env: Vec<(String, String)>,
}

/// One `ota up` process. Its ports and data directory (so its node id) survive a restart.
/// A listener its role does not run (the API of a gateway-only node, the device side of an
/// API-only one) shows as [`Node::NONE`].
pub struct Node {
    pub name: String,
    /// `all`, `api` or `gateway` (`ota up --role`).
    pub role: &'static str,
    pub api: SocketAddr,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// Prometheus `/metrics` (`metrics_bind`, every role).
    pub metrics: SocketAddr,
    child: Option<Child>,
    config: ClusterConfig,
}

/// `ip:port` after `label` on a line of `ota up`'s banner.
fn addr_after(line: &str, label: &str) -> Option<SocketAddr> {
    let rest = line.split_once(label)?.1;
    rest.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == '/')
        .filter(|w| !w.is_empty())
        .find_map(|w| w.trim_start_matches("http:").parse().ok())
}

impl Node {
    /// The address of a listener the node's role does not run.
    pub const NONE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

    pub fn start(config: &ClusterConfig, name: &str) -> Node {
        Node::start_role(config, name, "all")
    }

    /// A node that runs only `role` (`api` or `gateway`; `all` is [`Node::start`]).
    pub fn start_role(config: &ClusterConfig, name: &str, role: &'static str) -> Node {
        Node::spawn(config, name, role, (0, 0, 0))
    }

    fn spawn(config: &ClusterConfig, name: &str, role: &'static str, (api, http, mqtt): (u16, u16, u16)) -> Node {
        // With the local store, one data directory for all nodes: it holds the firmware files
        // every node serves (as a shared volume would in production); node ids are explicit,
        // so they do not share one through it. With a shared store, each node its own.
        let own = config.dir.join(name);
        let data = if config.store_env.is_empty() { config.dir.join("data") } else { own.join("data") };
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&own).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(own.join("node.log")).unwrap();
        let mut child = Command::new(&config.ota)
            .args(["up", "--role", role])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OTA_LOG", "info,rumqttd=warn,ota_gateway::edge=warn")
            .env("OTA_DATA_DIR", &data)
            .env("OTA_DATABASE_URL", &config.database_url)
            .env("OTA_DATABASE_MAX_CONNECTIONS", "8")
            .env("OTA_API_BIND", format!("127.0.0.1:{api}"))
            .env("OTA_API_WORKERS", "1")
            .env("OTA_DEVICE_HTTP_BIND", format!("127.0.0.1:{http}"))
            .env("OTA_DEVICE_MQTT_BIND", format!("127.0.0.1:{mqtt}"))
            .env("OTA_DEVICE_MQTT_HOST", "127.0.0.1")
            .env("OTA_BROKER", &config.broker)
            .env("OTA_JWT_SECRET", JWT_SECRET)
            .env("OTA_ADMIN_USER", ADMIN)
            .env("OTA_ADMIN_PASSWORD", PASSWORD)
            .env("OTA_NODE_ID", name)
            .env("OTA_GATEWAY_LEASE_SECS", config.lease_secs.to_string())
            .env("OTA_PUSH_DELIVERY_TIMEOUT_SECS", config.delivery_secs.to_string())
            .env("OTA_PUSH_RATE", config.push_rate.to_string())
            .env("OTA_MQTT_PACE_MS", "5")
            .env("OTA_METRICS_BIND", "127.0.0.1:0")
            .envs(config.store_env.iter().map(|(k, v)| (k, v)))
            .envs(config.node_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start `ota up`");
        // One thread reads the banner for the addresses, then keeps draining stdout, so the
        // process never writes into a closed pipe (`println!` would panic on it).
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut a, mut h, mut m, mut x) = (None, None, None, None);
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                a = a.or_else(|| addr_after(&line, "listening on"));
                h = h.or_else(|| addr_after(&line, "device HTTP"));
                m = m.or_else(|| addr_after(&line, "device MQTT"));
                x = x.or_else(|| addr_after(&line, "  metrics "));
                if !sent && line.starts_with("Stop with") {
                    let _ = tx.send((a, h, m, x));
                    sent = true;
                }
            }
            if !sent {
                let _ = tx.send((a, h, m, x));
            }
        });
        let (a, h, m, x) = rx.recv_timeout(Duration::from_secs(60)).unwrap_or((None, None, None, None));
        // Each role's banner names exactly the listeners it runs.
        let serves_api = role != "gateway";
        let serves_devices = role != "api";
        let complete =
            a.is_some() == serves_api && h.is_some() == serves_devices && m.is_some() == serves_devices && x.is_some();
        if !complete {
            let _ = child.kill();
            let log = std::fs::read_to_string(own.join("node.log")).unwrap_or_default();
            panic!(
                "node {name} (role {role}) did not come up as its role says (api {a:?}, http {h:?}, mqtt {m:?}, metrics {x:?}):\n{log}"
            );
        }
        let none = Node::NONE;
        Node {
            name: name.to_owned(),
            role,
            api: a.unwrap_or(none),
            http: h.unwrap_or(none),
            mqtt: m.unwrap_or(none),
            metrics: x.unwrap_or(none),
            child: Some(child),
            config: config.clone(),
        }
    }

    /// The process id while the node runs (benches read its memory from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `kill -9`: no cleanup of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for the process to end.
    pub fn term(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let again =
            Node::spawn(&self.config, &self.name, self.role, (self.api.port(), self.http.port(), self.mqtt.port()));
        *self = again;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.dir.join(&self.name).join("node.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The sample values of a node's Prometheus text (`GET /metrics` on `addr`), by series
/// (`name{labels}` as rendered).
pub async fn scrape(addr: SocketAddr) -> Result<std::collections::HashMap<String, f64>, String> {
    let r = reqwest::get(format!("http://{addr}/metrics")).await.map_err(|e| format!("GET /metrics: {e}"))?;
    if r.status() != reqwest::StatusCode::OK {
        return Err(format!("GET /metrics: {}", r.status()));
    }
    let text = r.text().await.map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect())
}

/// The sum of the series of `name` whose labels contain every one of `labels` (`k="v"`).
pub fn metric_total(samples: &std::collections::HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// A PostgreSQL cluster of the test's own on a free port (never the machine's), run as the
/// `postgres` user because `initdb` refuses root.
pub struct PgCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::ExitStatus {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    let args = if is_root { args } else { &args[1..] };
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("run a PostgreSQL tool")
}

fn pg_bin(tool: &str) -> String {
    let versions = std::fs::read_dir("/usr/lib/postgresql").map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>());
    versions
        .ok()
        .and_then(|mut v| {
            v.sort();
            v.pop()
        })
        .map(|p| p.join("bin").join(tool).display().to_string())
        .unwrap_or_else(|| tool.to_owned())
}

impl PgCluster {
    /// `None` when PostgreSQL's tools are not installed.
    pub fn start() -> Option<PgCluster> {
        if !Path::new(&pg_bin("initdb")).exists() {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("ota-pg-").tempdir_in("/tmp").ok()?;
        let _ = Command::new("chmod").args(["0777", &dir.path().display().to_string()]).status();
        let data = dir.path().join("data");
        let data_s = data.display().to_string();
        let ok = as_postgres(&[&pg_bin("initdb"), "-D", &data_s, "--auth=trust", "-U", "postgres"]).success();
        if !ok {
            return None;
        }
        let cluster = PgCluster { port: free_port(), dir };
        cluster.up().then_some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts (again) on the same port; waits until it accepts connections.
    pub fn up(&self) -> bool {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("pg.log").display().to_string();
        as_postgres(&[&pg_bin("pg_ctl"), "-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"]).success()
    }

    /// Stops at once (connections are cut).
    pub fn down(&self) {
        as_postgres(&[&pg_bin("pg_ctl"), "-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.down();
    }
}

/// A Mosquitto of the test's own on a free port.
pub struct Broker {
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Option<Broker> {
        let mut b = Broker { port: free_port(), child: None };
        b.up().then_some(b)
    }

    pub fn up(&mut self) -> bool {
        let child = Command::new("mosquitto")
            .args(["-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        for _ in 0..100 {
            if port_open(&format!("127.0.0.1:{}", self.port)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

/// The management API of the cluster, through whichever node answers.
pub struct Api {
    client: reqwest::Client,
    pub bases: Vec<String>,
    token: String,
}

impl Api {
    pub async fn login(nodes: &[&Node]) -> Api {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let bases: Vec<String> = nodes.iter().map(|n| n.api_url()).collect();
        let body = json!({ "username": ADMIN, "password": PASSWORD });
        let r = client.post(format!("{}/api/v1/auth/login", bases[0])).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        let mut api = Api { client, bases, token };
        // An API token outlives the test whatever the session length.
        let body = json!({ "name": "faults", "scopes": ["read", "write", "push"] });
        let t = api.call(reqwest::Method::POST, "/api/v1/tokens", Some(body)).await.unwrap();
        api.token = t["secret"].as_str().unwrap().to_owned();
        api
    }

    /// One request to the first node that answers; `Err` with the status and body otherwise.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut last = String::new();
        for base in &self.bases {
            let mut req = self.client.request(method.clone(), format!("{base}{path}")).bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.unwrap_or_default();
                    return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    if status.is_server_error() {
                        last = format!("{status} {text}");
                        continue;
                    }
                    return Err(format!("{status} {text}"));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Uploads V4.1 Wi-Fi firmware `sw` for hardware 00ESP826.
    pub async fn upload_wifi(&self, pk: &str, sw: &str, size: usize) -> i64 {
        let image: Vec<u8> = (0..size).map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8).collect();
        let form = reqwest::multipart::Form::new()
            .text("name", format!("fw-{sw}"))
            .text("type", "wifi")
            .text("push_method", "V4.1")
            .text("hard_version", "00ESP826")
            .text("soft_version", sw.to_owned())
            .part("file", reqwest::multipart::Part::bytes(image).file_name("fw.bin"));
        let r = self
            .client
            .post(format!("{}/api/v1/products/{pk}/firmware", self.bases[0]))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Polls `path` until `pred` holds, through node outages; panics with the last answer.
    pub async fn wait(&self, path: &str, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = Value::Null;
        while tokio::time::Instant::now() < deadline {
            if let Ok(v) = self.get(path).await {
                if pred(&v) {
                    return v;
                }
                last = v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{path} never became {what} within {limit:?}; last {last:#}");
    }

    pub async fn online(&self, pk: &str) -> i64 {
        self.get(&format!("/api/v1/products/{pk}/devices?online=true&per_page=1"))
            .await
            .map(|v| v["total"].as_i64().unwrap_or(-1))
            .unwrap_or(-1)
    }
}

/// A V4.1 Wi-Fi device on 04020006 talking to `node`.
pub fn device(node: &Node, pk: &str, mac: &str, timing: &Timing) -> DeviceHandle {
    let spec = DeviceSpec::new(pk.to_owned(), mac, Method::V41);
    let config = DeviceConfig { timing: timing.clone(), ..DeviceConfig::new(node.http) };
    Device::new(spec, config).expect("a valid device").spawn()
}

/// Marks firmware verified straight in the database (the verification flow has its own tests).
pub async fn verify(database_url: &str, firmware_id: i64) {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut c = PgConnection::establish(&url).expect("connect");
        diesel::sql_query(format!("UPDATE firmware SET verified = TRUE, verified_at = 0 WHERE id = {firmware_id}"))
            .execute(&mut c)
            .expect("verify");
    })
    .await
    .unwrap();
}

/// A rule for all devices on 04020006, open all day today and tomorrow (UTC).
pub fn rule_body(policy: Value) -> Value {
    // The processes run on the wall clock, so the rule's dates come from it too.
    let today = ota_domain::Clock::now(&ota_domain::SystemClock).date_naive();
    let end = today + chrono::Duration::days(1);
    json!({
        "target": "all",
        "old_versions": ["04020006"],
        "period": { "start": today.format("%Y-%m-%d").to_string(), "end": end.format("%Y-%m-%d").to_string() },
        "daily_window": { "start_hour": 0, "end_hour": 24 },
        "policy": policy,
    })
}
