//! The server child: a domain on a fresh database, a tenant, an admin, a product and a
//! gateway on loopback port 0, driven over stdin/stdout.
//!
//! # Control protocol
//!
//! Line based. The first stdout line is the ready line,
//! `{"http":"127.0.0.1:p","mqtt":"127.0.0.1:q","product_key":"…","pid":n}`. After that every
//! command line on stdin gets exactly one JSON line back, `{"error":"…"}` when it failed:
//!
//! | command | what it does |
//! |---|---|
//! | `stats` | edge, bus and HTTP counters, `session_count`, `VmRSS`/`VmHWM` (KiB) and open fds |
//! | `push <file>` | publishes one small message on `ser2cli_res/<did>` for every did in `<file>` (one a line), through the gateway's bus, so the edge turns each into a PUBLISH to that device |
//! | `raw <m>` | the same broker without the edge: `m` publishes on `ser2cli_res/<a did nobody holds>`, timed until the gateway's own bus link has received all of them |
//! | `rawbus <m>` | a second, separate embedded broker (`Bus::start` on `bench/+`): `m` publishes timed until its receiver has them all |
//!
//! The child exits when its stdin closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use ota_domain::store::FsBlobStore;
use ota_domain::{Db, Domain, DomainSettings, SystemClock};
use ota_gateway::{Bus, BusConfig, EdgeSettings, Gateway, GatewaySettings};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Gap the edge leaves between two packets to one device, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub pace_ms: u64,
    /// Database to use (`postgres://…` or `sqlite:<path>`); default: a SQLite file in a
    /// temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Connections in the database pool (the server's default is 10).
    #[arg(long, default_value_t = 10)]
    pub db_pool: u32,
    /// `host:port` of an external MQTT broker (e.g. Mosquitto on 127.0.0.1:1883) behind the
    /// gateway; default the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
}

/// The bus for `--broker` (`None`: embedded).
pub(crate) fn bus_config(broker: Option<&str>) -> anyhow::Result<BusConfig> {
    Ok(match broker {
        None => BusConfig::Embedded { listen: None },
        Some(addr) => {
            let (host, port) = addr.rsplit_once(':').context("--broker is host:port")?;
            BusConfig::External {
                host: host.to_owned(),
                port: port.parse().context("--broker port")?,
                client_id: format!("ota-bench-{}", hex::encode(rand::random::<[u8; 4]>())),
                username: None,
                password: None,
            }
        }
    })
}

/// Small enough for any device buffer; the device side only counts arrivals.
const PUSH_PAYLOAD: &[u8] = &[0x00, 0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0x94];

/// How long a `raw`/`rawbus`/`push` command may take before it reports an error.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A did that no device holds (22 alphanumerics, like the real ones).
const NOBODY: &str = "benchRawNobody00000000";

/// A temporary directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn create() -> anyhow::Result<TempDir> {
        let suffix = hex::encode(rand::random::<[u8; 6]>());
        let path = std::env::temp_dir().join(format!("ota-bench-{}-{suffix}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<bool> {
    let data_dir = TempDir::create()?;
    // Like the test kit's `TestDomain`: a SQLite file in a temporary directory, migrated.
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite:{}", data_dir.0.join("ota.db").display()),
    };
    let db = Db::connect(&url, args.db_pool).context("connecting the database")?;
    db.migrate().context("migrating the database")?;
    let store = FsBlobStore::new(data_dir.0.join("blobs")).context("creating the blob store")?;
    let settings = DomainSettings::new(8 * 1024 * 1024, data_dir.0.join("staging"));
    let domain = Domain::new(db, Arc::new(SystemClock), Arc::new(store), settings);

    // Fresh names per run, so a PostgreSQL database can be reused.
    let tag = hex::encode(rand::random::<[u8; 4]>());
    let (user, password) = (format!("bench-{tag}"), "bench-password-not-secret");
    domain.create_admin(&format!("bench-{tag}"), &user, password).await.context("creating the admin")?;
    let record = domain.verify_login(&user, password).await.context("logging the admin in")?;
    let principal =
        domain.session_principal(record.id, domain.clock.now_ms()).await.context("building the principal")?;
    let product = domain
        .create_product(&ota_domain::Authorized::check(principal)?, "bench lamp", None, None)
        .await
        .context("creating the product")?;

    let gateway_settings = GatewaySettings {
        edge: EdgeSettings {
            gateway_id: "bench".into(),
            pace: Duration::from_millis(args.pace_ms),
            ..EdgeSettings::default()
        },
        ..loopback_gateway(bus_config(args.broker.as_deref())?)
    };

    let gateway = Gateway::start(domain.clone(), gateway_settings).await.context("starting the gateway")?;
    let ready = json!({
        "http": gateway.http_addr.to_string(),
        "mqtt": gateway.mqtt_addr.to_string(),
        "product_key": product.product_key,
        "pid": std::process::id(),
    });
    tracing::info!(%ready, "server ready");
    reply(&ready)?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let answer = match command(&gateway, line).await {
            Ok(v) => v,
            Err(e) => json!({ "error": format!("{e:#}") }),
        };
        reply(&answer)?;
    }
    drop(gateway);
    drop(data_dir);
    Ok(true)
}

fn reply(v: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").and_then(|()| out.flush()).context("writing to stdout")
}

async fn command(gateway: &Gateway, line: &str) -> anyhow::Result<Value> {
    let (verb, arg) = line.split_once(' ').map_or((line, ""), |(v, a)| (v, a.trim()));
    match verb {
        "stats" => Ok(stats(gateway)),
        "push" => push(gateway, arg).await,
        "raw" => raw_same_broker(gateway, arg.parse().context("raw <count>")?).await,
        "rawbus" => raw_separate_broker(arg.parse().context("rawbus <count>")?).await,
        other => bail!("unknown command {other:?} (stats, push <file>, raw <n>, rawbus <n>)"),
    }
}

fn stats(gateway: &Gateway) -> Value {
    let e = gateway.edge.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let bus = gateway.bus.stats();
    let h = &gateway.http_stats;
    json!({
        "session_count": gateway.edge.session_count(),
        "vm_rss_kib": crate::report::proc_status_kib("self", "VmRSS:"),
        "vm_hwm_kib": crate::report::proc_status_kib("self", "VmHWM:"),
        "threads": crate::report::proc_status_kib("self", "Threads:"),
        "open_fds": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok(),
        "edge": {
            "connections": load(&e.connections),
            "logins": load(&e.logins),
            "refused_logins": load(&e.refused_logins),
            "denied_subscriptions": load(&e.denied_subscriptions),
            "denied_publishes": load(&e.denied_publishes),
            "malformed": load(&e.malformed),
            "packets_sent": load(&e.packets_sent),
            "dropped_outbound": load(&e.dropped_outbound),
            "service_frames": load(&e.service_frames),
            "uplinks": load(&e.uplinks),
        },
        "bus": { "published": bus.published, "received": bus.received, "dropped": bus.dropped },
        "throttle": {
            "wrong": load(&gateway.throttle.stats.wrong),
            "unchecked": load(&gateway.throttle.stats.unchecked),
        },
        "http": {
            "requests": load(&h.requests),
            "bad_requests": load(&h.bad_requests),
            "read_timeouts": load(&h.read_timeouts),
            "connections_refused": load(&h.connections_refused),
            "accept_errors": load(&h.accept_errors),
        },
    })
}

async fn push(gateway: &Gateway, path: &str) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let topics: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|did| format!("ser2cli_res/{did}")).collect();
    let payload = Bytes::from_static(PUSH_PAYLOAD);
    let started = Instant::now();
    let publishing = async {
        let mut errors = 0u64;
        let mut first_error = None;
        for topic in &topics {
            if let Err(e) = gateway.bus.publish(topic, payload.clone()).await {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        (errors, first_error)
    };
    let (errors, first_error) =
        tokio::time::timeout(COMMAND_TIMEOUT, publishing).await.context("push: publishing timed out")?;
    Ok(json!({
        "published": topics.len() as u64 - errors,
        "errors": errors,
        "first_error": first_error,
        "publish_secs": started.elapsed().as_secs_f64(),
    }))
}

/// Polls `done` every millisecond until it holds or the timeout passes.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

async fn raw_same_broker(gateway: &Gateway, count: u64) -> anyhow::Result<Value> {
    let before = gateway.bus.stats();
    let topic = format!("ser2cli_res/{NOBODY}");
    let payload = Bytes::from_static(PUSH_PAYLOAD);
    let started = Instant::now();
    for _ in 0..count {
        gateway.bus.publish(&topic, payload.clone()).await.context("raw: publish")?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let all = wait_until(COMMAND_TIMEOUT, || {
        let now = gateway.bus.stats();
        now.received + now.dropped >= before.received + before.dropped + count
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let after = gateway.bus.stats();
    Ok(json!({
        "messages": count,
        "received": after.received - before.received,
        "dropped": after.dropped - before.dropped,
        "complete": all,
        "publish_secs": publish_secs,
        "secs": secs,
    }))
}

async fn raw_separate_broker(count: u64) -> anyhow::Result<Value> {
    let (bus, mut rx) =
        Bus::start(BusConfig::Embedded { listen: None }, &["bench/+"]).await.context("rawbus: start")?;
    let payload = Bytes::from_static(PUSH_PAYLOAD);
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        while got < count {
            match tokio::time::timeout(COMMAND_TIMEOUT, rx.recv()).await {
                Ok(Some(_)) => got += 1,
                Ok(None) | Err(_) => break,
            }
        }
        got
    });
    let started = Instant::now();
    for _ in 0..count {
        bus.publish("bench/raw", payload.clone()).await.context("rawbus: publish")?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let got = receiver.await.context("rawbus: receiver")?;
    let secs = started.elapsed().as_secs_f64();
    let stats = bus.stats();
    Ok(json!({
        "messages": count,
        "received": got,
        "dropped": stats.dropped,
        "complete": got == count,
        "publish_secs": publish_secs,
        "secs": secs,
    }))
}

/// A gateway on loopback ports the system picks, as every bench starts one: the firmware's
/// API host in download URLs and default edge, push, throttle and liveness settings; each
/// bench overrides what it needs.
pub(crate) fn loopback_gateway(bus: BusConfig) -> GatewaySettings {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    GatewaySettings {
        http_bind: loopback,
        mqtt_bind: loopback,
        public_host: "api.gizwits.com".into(),
        mqtt_public_host: "127.0.0.1".into(),
        mqtt_public_port: None,
        bus,
        edge: EdgeSettings { gateway_id: "bench".into(), ..EdgeSettings::default() },
        http: Default::default(),
        push: Default::default(),
        throttle: Default::default(),
        liveness: Default::default(),
        admission: Default::default(),
    }
}
