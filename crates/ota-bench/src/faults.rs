//! `ota-bench faults`: a rollout across whole `ota up` nodes on PostgreSQL + Mosquitto while two
//! of them are killed with `kill -9` and restarted: the recovery time after each kill (from the
//! kill to the first success among the dead node's devices), the rollout rate before the
//! first kill and after the last restart, and the exactly-once check of every device.
//!
//! The nodes are the `ota` executable built beside this one (`cargo build --release -p ota-cli
//! -p ota-bench`); the devices are simulated in this process with the firmware's own timers
//! (`--fast-devices` for the test timers). Everything runs on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use ota_domain::{Clock, SystemClock};
use ota_sim::Timing;
use ota_testkit::cluster::fleet::Fleet;
use ota_testkit::cluster::{Api, ClusterConfig, Node, port_open};
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    /// Simulated V4.1 devices, spread evenly over the nodes.
    #[arg(long, default_value_t = 300)]
    pub devices: usize,
    /// `ota up` nodes (at least 3: two are killed).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Pushes per second of each node's scheduler (slow enough that the kills land mid-rollout).
    #[arg(long, default_value_t = 5)]
    pub push_rate: u32,
    /// Kill the second node when this share of the targets succeeded…
    #[arg(long, default_value_t = 30)]
    pub first_kill_percent: u32,
    /// …and the first node (the one that served the rule's start) at this share.
    #[arg(long, default_value_t = 50)]
    pub second_kill_percent: u32,
    /// Seconds a killed node stays down before it is started again.
    #[arg(long, default_value_t = 10)]
    pub down_secs: u64,
    /// The nodes' `gateway_lease_secs`.
    #[arg(long, default_value_t = 30)]
    pub lease_secs: u64,
    /// The nodes' `push_delivery_timeout_secs`.
    #[arg(long, default_value_t = 10)]
    pub delivery_secs: u64,
    /// Devices with the test timers instead of the firmware's.
    #[arg(long)]
    pub fast_devices: bool,
    /// The shared broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
}

fn now_ms() -> i64 {
    SystemClock.now_ms()
}

fn ms_of(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok().map(|t| t.timestamp_millis())
}

struct Kill {
    node: usize,
    at_ms: i64,
    restarted_ms: Option<i64>,
}

pub async fn run(args: FaultArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3");
    let ota = std::env::current_exe()?.with_file_name("ota");
    anyhow::ensure!(ota.is_file(), "{} is missing: cargo build --release -p ota-cli -p ota-bench", ota.display());
    anyhow::ensure!(port_open("127.0.0.1:5432"), "PostgreSQL is not listening on 127.0.0.1:5432");
    let db = ota_testkit::TestDatabase::postgres().map_err(|e| anyhow::anyhow!("a PostgreSQL schema: {e}"))?;
    let dir = tempfile::tempdir()?;
    let timing = if args.fast_devices { Timing::fast() } else { Timing::default() };
    let config = ClusterConfig {
        ota,
        timing: timing.clone(),
        database_url: db.url.clone(),
        broker: args.broker.clone(),
        lease_secs: args.lease_secs,
        delivery_secs: args.delivery_secs,
        push_rate: args.push_rate,
        dir: dir.path().to_owned(),
        store_env: Vec::new(),
        node_env: Vec::new(),
    };
    let mut nodes: Vec<Node> = (0..args.nodes).map(|i| Node::start(&config, &format!("n{}", i + 1))).collect();
    let api = Api::login(&nodes.iter().collect::<Vec<_>>()).await;
    let booted = Instant::now();
    let mut fleet = Fleet::boot(&api, &nodes.iter().collect::<Vec<_>>(), args.devices, &timing).await;
    println!("{} devices online on {} nodes in {:.1} s", args.devices, args.nodes, booted.elapsed().as_secs_f64());
    let node_of: HashMap<String, usize> =
        fleet.macs.iter().cloned().zip(fleet.devices.iter().map(|(n, _)| *n)).collect();

    let rule = fleet.start_rule(&api, &config.database_url, Value::Null).await;
    let started_ms = now_ms();
    let n = args.devices as i64;
    let mut kills: Vec<Kill> = Vec::new();
    let plan = [(args.first_kill_percent, 1usize), (args.second_kill_percent, 0usize)];
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let done = loop {
        anyhow::ensure!(Instant::now() < deadline, "the rule did not complete within {} s", args.timeout_secs);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(view) = api.get(&format!("/api/v1/rules/{rule}")).await else { continue };
        if view["status"] == "completed" {
            break view;
        }
        let succeeded = view["counts"]["succeeded"].as_i64().unwrap_or(0);
        if let Some(k) = kills.last_mut()
            && k.restarted_ms.is_none()
            && now_ms() - k.at_ms >= i64::try_from(args.down_secs * 1000).unwrap_or(i64::MAX)
        {
            nodes[k.node].restart();
            k.restarted_ms = Some(now_ms());
            println!("{:>6.1} s  node n{} started again", (now_ms() - started_ms) as f64 / 1000.0, k.node + 1);
        }
        let next = plan.get(kills.len());
        let previous_back = kills.last().is_none_or(|k| k.restarted_ms.is_some());
        if let Some((percent, node)) = next
            && previous_back
            && succeeded * 100 >= n * i64::from(*percent)
        {
            nodes[*node].kill9();
            kills.push(Kill { node: *node, at_ms: now_ms(), restarted_ms: None });
            println!(
                "{:>6.1} s  kill -9 node n{} at {succeeded}/{n} succeeded",
                (now_ms() - started_ms) as f64 / 1000.0,
                node + 1
            );
        }
    };
    let completed_ms = ms_of(&done["completed_at"]).unwrap_or_else(now_ms);

    // Per-device success times, before the devices are stopped.
    let mut successes: Vec<(usize, i64)> = Vec::new();
    for page in 1..=(args.devices / 200 + 1) {
        let list = api
            .get(&format!("/api/v1/rules/{rule}/devices?per_page=200&page={page}"))
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        for t in list["items"].as_array().cloned().unwrap_or_default() {
            let node = t["mac"].as_str().and_then(|m| node_of.get(m)).copied().unwrap_or(usize::MAX);
            if let Some(at) = ms_of(&t["times"]["succeeded_at"]) {
                successes.push((node, at));
            }
        }
    }
    let outcome = fleet
        .check_exactly_once(&api, rule, &done)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("exactly-once check")?;

    let secs = |ms: i64| ms as f64 / 1000.0;
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    for (i, k) in kills.iter().enumerate() {
        let recovered = successes.iter().filter(|(node, at)| *node == k.node && *at > k.at_ms).map(|(_, at)| *at).min();
        let recovery = recovered.map(|at| format!("{:.1} s", secs(at - k.at_ms))).unwrap_or_else(|| "none".into());
        println!(
            "| kill {}: node n{}, down {} s, kill → first success among its devices | {recovery} |",
            i + 1,
            k.node + 1,
            args.down_secs
        );
    }
    if let Some(first) = kills.first() {
        let before = successes.iter().filter(|(_, at)| *at <= first.at_ms).count();
        let rate = before as f64 / secs(first.at_ms - started_ms).max(0.001);
        println!(
            "| rollout rate before the first kill | {rate:.1} devices/s ({before} in {:.1} s) |",
            secs(first.at_ms - started_ms)
        );
    }
    let last_restart = kills.iter().filter_map(|k| k.restarted_ms).max();
    if let Some(r) = last_restart {
        let after = successes.iter().filter(|(_, at)| *at > r).count();
        let rate = after as f64 / secs(completed_ms - r).max(0.001);
        println!(
            "| rollout rate after the last restart | {rate:.1} devices/s ({after} in {:.1} s) |",
            secs(completed_ms - r)
        );
        println!("| completion after the last restart | {:.1} s |", secs(completed_ms - r));
    }
    println!("| start → 100 % succeeded | {:.1} s |", secs(completed_ms - started_ms));
    println!("| exactly once | {outcome} |");
    let within = last_restart.is_none_or(|r| completed_ms - r <= 5 * 60 * 1000);
    println!("completed within five minutes of the last restart: {within}");
    Ok(within && kills.len() == 2)
}
