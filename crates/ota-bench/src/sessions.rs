//! `ota-bench sessions`: many device sessions held across several gateway processes that share
//! one broker and PostgreSQL, then one rule that pushes to every device.
//!
//! The fleet boots as real firmware does (register, provision, V4.1 check, MQTT 3.1 login with
//! a PINGREQ every 50 s), one `ota-bench sim` child per node, so no process holds more than
//! its share of sockets (20,000 open files per process here). Once every device is online the
//! sessions are held for `--hold-secs`, sampled every 10 s through the API (online devices) and
//! the nodes' `/metrics` (sessions, logins). Then a rule for the whole fleet is started and the
//! run waits until every device's simulator has received its push.
//!
//! A run passes when every device came online, none was lost while held (the nodes' session
//! gauges never fell below the fleet and no device logged in again), each gateway's memory grew
//! by at most 16 KiB per session, and every device received the push. Everything runs on
//! loopback; the nodes are the `ota` executable built beside this one.

use std::time::{Duration, Instant};

use anyhow::Context;
use ota_sim::Timing;
use ota_testkit::cluster::{Api, ClusterConfig, Node, metric_total, port_open, rule_body, scrape, verify};
use serde_json::json;

use crate::simfleet::{FleetSpec, SimFleet, online as online_now, report_rows, wait_online};

#[derive(Debug, Clone, clap::Args)]
pub struct SessionsArgs {
    /// Simulated V4.1 devices, spread evenly over the nodes.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Gateway processes: the first also serves the API (`--role all`), the others `--role gateway`.
    #[arg(long, default_value_t = 6)]
    pub nodes: usize,
    /// Devices that power on per second, all nodes together.
    #[arg(long, default_value_t = 1_000.0)]
    pub connect_rate: f64,
    /// Every device must be online within this many seconds of the first power-on.
    #[arg(long, default_value_t = 1_200)]
    pub online_limit_secs: u64,
    /// How long the sessions are held once all are online.
    #[arg(long, default_value_t = 600)]
    pub hold_secs: u64,
    /// Each node's `push_rate` (pushes per second per gateway).
    #[arg(long, default_value_t = 200)]
    pub push_rate: u32,
    /// Every device must have received the push within this many seconds of the rule's start.
    #[arg(long, default_value_t = 900)]
    pub push_limit_secs: u64,
    /// Size of the pushed Wi-Fi image, KiB.
    #[arg(long, default_value_t = 4)]
    pub image_kib: usize,
    /// The most a gateway's resident memory may grow per session held, in KiB.
    #[arg(long, default_value_t = 16.0)]
    pub max_kib_per_session: f64,
    /// The shared broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
}

/// One node's figures.
struct NodeFigures {
    name: String,
    rss_before_kib: u64,
    rss_held_kib: u64,
    sessions: f64,
}

impl NodeFigures {
    fn kib_per_session(&self) -> f64 {
        if self.sessions <= 0.0 {
            return f64::NAN;
        }
        self.rss_held_kib.saturating_sub(self.rss_before_kib) as f64 / self.sessions
    }
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    crate::report::proc_status_kib(&pid.to_string(), "VmRSS:").with_context(|| format!("no VmRSS for {pid}"))
}

/// CPU time a process has used, user and system, in seconds (`/proc/<pid>/stat` fields 14
/// and 15, in USER_HZ ticks, which Linux fixes at 100 for this interface).
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("a short /proc stat line");
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The pushes per second between the samples where 10 % and 90 % of `n` were notified.
fn steady_rate(samples: &[(f64, i64)], n: i64) -> Option<f64> {
    let (lo, hi) = (n / 10, n - n / 10);
    let (t0, c0) = *samples.iter().find(|(_, c)| *c >= lo)?;
    let (t1, c1) = *samples.iter().find(|(_, c)| *c >= hi)?;
    (t1 > t0).then(|| (c1 - c0) as f64 / (t1 - t0))
}

/// The sum of one metric over all nodes.
async fn total(nodes: &[Node], name: &str) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for node in nodes {
        let samples = scrape(node.metrics).await.map_err(anyhow::Error::msg)?;
        sum += metric_total(&samples, name, &[]);
    }
    Ok(sum)
}

pub async fn run(args: SessionsArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.nodes >= 1 && args.devices >= args.nodes, "--nodes must be between 1 and --devices");
    let ota = std::env::current_exe()?.with_file_name("ota");
    anyhow::ensure!(ota.is_file(), "{} is missing: cargo build --release -p ota-cli -p ota-bench", ota.display());
    anyhow::ensure!(port_open("127.0.0.1:5432"), "PostgreSQL is not listening on 127.0.0.1:5432");
    let db = ota_testkit::TestDatabase::postgres().map_err(|e| anyhow::anyhow!("a PostgreSQL schema: {e}"))?;
    let dir = tempfile::tempdir()?;
    let config = ClusterConfig {
        ota: ota.clone(),
        timing: Timing::default(),
        database_url: db.url.clone(),
        broker: args.broker.clone(),
        lease_secs: 30,
        delivery_secs: 10,
        push_rate: args.push_rate,
        dir: dir.path().to_owned(),
        store_env: Vec::new(),
        node_env: Vec::new(),
    };
    println!(
        "sessions: {} V4.1 devices over {} gateway processes, PostgreSQL + {}, held {} s, then one push to all",
        args.devices, args.nodes, args.broker, args.hold_secs
    );
    let nodes: Vec<Node> = (0..args.nodes)
        .map(|i| {
            let role = if i == 0 { "all" } else { "gateway" };
            Node::start_role(&config, &format!("g{}", i + 1), role)
        })
        .collect();
    let api = Api::login(&[&nodes[0]]).await;
    let product = api.post("/api/v1/products", json!({ "name": "sessions" })).await.map_err(anyhow::Error::msg)?;
    let pk = product["product_key"].as_str().context("product_key")?.to_owned();
    // Memory before any device: the runtime, the pools and the broker link.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut figures = Vec::new();
    for node in &nodes {
        let pid = node.pid().context("a node is not running")?;
        figures.push(NodeFigures {
            name: node.name.clone(),
            rss_before_kib: rss_kib(pid)?,
            rss_held_kib: 0,
            sessions: 0.0,
        });
    }

    // Boot: one simulator per node.
    let spec = FleetSpec {
        product_key: &pk,
        devices: args.devices,
        connect_rate: args.connect_rate,
        mcu_fraction: 0.0,
        mac_base: 0x80,
    };
    let sims = SimFleet::spawn(&nodes, &spec, dir.path())?;
    let n = args.devices as i64;
    let (online, online_after) =
        wait_online(&api, &pk, n, Duration::from_secs(args.online_limit_secs), "sessions").await;
    let Some(online_after) = online_after else {
        println!("FAILED: {online} of {n} devices online after {} s", args.online_limit_secs);
        return Ok(false);
    };
    println!("all {n} online in {:.1} s", online_after.as_secs_f64());

    // Hold. Logins counted from here on are devices that lost their session and came back.
    let logins_at_start = total(&nodes, ota_domain::metrics::DEVICE_LOGINS).await?;
    let held_from = Instant::now();
    let (mut min_sessions, mut min_online) = (f64::INFINITY, i64::MAX);
    loop {
        let sessions = total(&nodes, ota_domain::metrics::MQTT_SESSIONS).await?;
        let now_online = online_now(&api, &pk).await.unwrap_or(-1);
        min_sessions = min_sessions.min(sessions);
        min_online = min_online.min(now_online);
        for (node, f) in nodes.iter().zip(&mut figures) {
            let rss = rss_kib(node.pid().context("a node stopped")?)?;
            f.rss_held_kib = f.rss_held_kib.max(rss);
        }
        eprint!(
            "\rheld {:.0}/{} s: sessions {sessions:.0}, online {now_online}   ",
            held_from.elapsed().as_secs_f64(),
            args.hold_secs
        );
        if held_from.elapsed() >= Duration::from_secs(args.hold_secs) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    eprintln!();
    let relogins = total(&nodes, ota_domain::metrics::DEVICE_LOGINS).await? - logins_at_start;
    for (node, f) in nodes.iter().zip(&mut figures) {
        let samples = scrape(node.metrics).await.map_err(anyhow::Error::msg)?;
        f.sessions = metric_total(&samples, ota_domain::metrics::MQTT_SESSIONS, &[]);
    }

    // One rule for all devices; each node pushes at `--push-rate`.
    let fw = api.upload_wifi(&pk, "04020021", args.image_kib * 1024).await;
    verify(&db.url, fw).await;
    let policy = json!({ "timeouts": { "notified_s": 600, "checked_s": 600, "downloading_s": 600 } });
    let rule =
        api.post(&format!("/api/v1/firmware/{fw}/rules"), rule_body(policy)).await.map_err(anyhow::Error::msg)?;
    let id = rule["request_id"].as_i64().context("request_id")?;
    api.post(&format!("/api/v1/rules/{id}/start"), json!({ "confirm_stable": true, "accept_terms": true }))
        .await
        .map_err(anyhow::Error::msg)?;
    let pushed_from = Instant::now();
    let sim_pids = sims.pids();
    let sims_cpu_before = sim_pids.iter().map(|&pid| cpu_secs(pid).unwrap_or(0.0)).sum::<f64>();
    let mut notified = 0;
    let mut pushed_after = None;
    let mut samples = Vec::new();
    while pushed_from.elapsed() < Duration::from_secs(args.push_limit_secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        notified = api
            .get(&format!("/api/v1/rules/{id}"))
            .await
            .ok()
            .and_then(|v| v["counts"]["notified"].as_i64())
            .unwrap_or(notified);
        samples.push((pushed_from.elapsed().as_secs_f64(), notified));
        eprint!("\rpush: {notified}/{n} notified ({:.0} s)   ", pushed_from.elapsed().as_secs_f64());
        if notified == n {
            pushed_after = Some(pushed_from.elapsed());
            break;
        }
    }
    eprintln!();
    let push_secs = pushed_from.elapsed().as_secs_f64();
    let sims_cpu = sim_pids.iter().map(|&pid| cpu_secs(pid).unwrap_or(0.0)).sum::<f64>() - sims_cpu_before;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    let sims_share = sims_cpu / (push_secs * cores);
    let configured = f64::from(args.push_rate) * args.nodes as f64;
    let rate = steady_rate(&samples, n);

    // The devices' own account: stop each simulator (each writes its report).
    let mut received = 0;
    for csv in sims.stop().await? {
        received += pushed_devices(&csv)?;
    }

    let held_sessions = figures.iter().map(|f| f.sessions).sum::<f64>();
    let worst_kib = figures.iter().map(NodeFigures::kib_per_session).fold(0.0, f64::max);
    println!();
    println!("| node | resident memory before | held | sessions | KiB per session |");
    println!("|---|---:|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.0} | {:.1} |",
            f.name,
            f.rss_before_kib as f64 / 1024.0,
            f.rss_held_kib as f64 / 1024.0,
            f.sessions,
            f.kib_per_session()
        );
    }
    println!();
    println!("| figure | result | target |");
    println!("|---|---:|---:|");
    println!("| devices online | {n} in {:.1} s | all |", online_after.as_secs_f64());
    println!("| held {} s: fewest sessions / online seen | {min_sessions:.0} / {min_online} | {n} |", args.hold_secs);
    println!("| devices that logged in again while held (lost) | {relogins:.0} | 0 |");
    println!("| sessions at the end of the hold | {held_sessions:.0} | {n} |");
    println!("| most memory per session on a gateway | {worst_kib:.1} KiB | ≤ {} KiB |", args.max_kib_per_session);
    println!(
        "| push received by the devices | {received}/{n}{} | {n} |",
        pushed_after.map_or_else(String::new, |d| format!(", all notified in {:.1} s", d.as_secs_f64()))
    );
    println!(
        "| pushes per second, 10 % → 90 % notified | {} | configured {configured:.0} (push_rate {} × {} nodes) |",
        rate.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.0} ({:.2} of configured)", r / configured)),
        args.push_rate,
        args.nodes
    );
    println!("| the simulators' share of the machine's CPU while pushing | {:.0} % | |", sims_share * 100.0);
    let passed = min_sessions >= n as f64
        && min_online == n
        && relogins == 0.0
        && worst_kib <= args.max_kib_per_session
        && received == args.devices;
    println!();
    println!("{}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}

/// From a simulator's per-device report: the devices that received at least one push.
fn pushed_devices(csv: &str) -> anyhow::Result<usize> {
    let rows = report_rows(csv, &["pushes"])?;
    Ok(rows.iter().filter(|row| row[0].parse::<u32>().is_ok_and(|p| p >= 1)).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_devices_that_received_a_push() {
        let csv = format!(
            "{}{}",
            ota_sim::fleet::DEVICES_CSV_HEADER,
            "A,d1,V4.1,04020006,,true,0,1,0,0,0,1,1\n\
             B,d2,V4.1,04020021,,true,1,2,1,0,1,2,2\n\
             C,d3,V4.1,04020006,,true,2,1,0,0,0,1,1\n"
        );
        assert_eq!(pushed_devices(&csv).unwrap(), 2);
    }

    #[test]
    fn the_steady_rate_is_taken_between_ten_and_ninety_percent() {
        let samples = [(0.5, 0), (1.0, 5), (2.0, 10), (3.0, 50), (4.0, 90), (5.0, 100)];
        assert_eq!(steady_rate(&samples, 100), Some(40.0));
        assert_eq!(steady_rate(&samples[..3], 100), None);
    }

    #[test]
    fn memory_per_session_is_the_growth_over_the_sessions() {
        let f = NodeFigures { name: "g1".into(), rss_before_kib: 40_000, rss_held_kib: 290_000, sessions: 16_667.0 };
        assert!((f.kib_per_session() - 15.0).abs() < 0.01);
        let empty = NodeFigures { sessions: 0.0, ..f };
        assert!(empty.kib_per_session().is_nan());
    }
}
