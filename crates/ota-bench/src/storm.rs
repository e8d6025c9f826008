//! `ota-bench storm`: a power-on storm against whole `ota up` nodes on PostgreSQL and a shared
//! broker. The fleet (registration, provision, both V4.1 checks, MQTT login) boots at
//! `--connect-rate` devices per second in all, each node's share run by an `ota-bench sim`
//! child with the firmware's own timers (5 s HTTP timeout, a refused registration again after
//! 5 s, a refused login again after 6 s). Passes when every device is online within
//! `--limit-secs`, the registry holds one device per MAC, every device checked each of its
//! firmware types exactly once in a single boot, and no handler timed out; the refusals of
//! admission control (the README's "Power-on storms") are reported beside.
//!
//! The nodes are the `ota` executable built beside this one (`cargo build --release -p ota-cli
//! -p ota-bench`). Everything runs on loopback.

use std::time::Duration;

use anyhow::Context;
use ota_sim::Timing;
use ota_testkit::cluster::{Api, ClusterConfig, Node, metric_total, port_open, scrape};
use serde_json::json;

use crate::simfleet::{FleetSpec, SimFleet, report_rows, wait_online};

#[derive(Debug, Clone, clap::Args)]
pub struct StormArgs {
    /// Simulated V4.1 devices, spread evenly over the nodes (half of them with an MCU).
    #[arg(long, default_value_t = 20_000)]
    pub devices: usize,
    /// `ota up` nodes, each serving its share of the fleet.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Devices that power on per second, all nodes together.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Every device must be online within this many seconds of the first power-on.
    #[arg(long, default_value_t = 180)]
    pub limit_secs: u64,
    /// Runs, each on a fresh database schema (the target is three out of three).
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// The nodes' `device_calls_in_flight` (default: the configuration's).
    #[arg(long)]
    pub device_calls_in_flight: Option<usize>,
    /// The nodes' `mqtt_logins_in_flight` (default: the configuration's).
    #[arg(long)]
    pub mqtt_logins_in_flight: Option<usize>,
    /// The nodes' `admission_wait_ms` (default: the configuration's).
    #[arg(long)]
    pub admission_wait_ms: Option<u64>,
    /// The shared broker.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
}

/// What one run saw.
struct Run {
    online: i64,
    online_after: Option<Duration>,
    registry: i64,
    checked_once: usize,
    rebooted: usize,
    refused_calls: f64,
    refused_logins: f64,
    handler_timeouts: f64,
    /// Handler timeouts by route, from the nodes' logs (`POST /dev/devices: 12`).
    timed_out_routes: String,
}

impl Run {
    fn passed(&self, devices: usize) -> bool {
        let n = devices as i64;
        self.online == n
            && self.online_after.is_some()
            && self.registry == n
            && self.checked_once == devices
            && self.rebooted == 0
            && self.handler_timeouts == 0.0
    }
}

pub async fn run(args: StormArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.nodes >= 1 && args.devices >= args.nodes, "--nodes must be between 1 and --devices");
    let ota = std::env::current_exe()?.with_file_name("ota");
    anyhow::ensure!(ota.is_file(), "{} is missing: cargo build --release -p ota-cli -p ota-bench", ota.display());
    anyhow::ensure!(port_open("127.0.0.1:5432"), "PostgreSQL is not listening on 127.0.0.1:5432");
    println!(
        "power-on storm: {} V4.1 devices (half with an MCU) over {} nodes, {}/s, PostgreSQL + {}",
        args.devices, args.nodes, args.connect_rate, args.broker
    );
    println!();
    println!(
        "| run | online | within {} s | one did per MAC | checked once per type | rebooted | 503 device_calls_busy | CONNACK 3 (busy) | handler timeouts |",
        args.limit_secs
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut passed = 0;
    for i in 1..=args.runs {
        let r = one_run(&args, &ota).await?;
        let ok = r.passed(args.devices);
        passed += u32::from(ok);
        println!(
            "| {i} | {}/{} | {} | {} | {}/{} | {} | {:.0} | {:.0} | {:.0} |",
            r.online,
            args.devices,
            r.online_after.map_or_else(|| "no".to_owned(), |d| format!("yes, {:.1} s", d.as_secs_f64())),
            if r.registry == args.devices as i64 { "yes".to_owned() } else { format!("no: {}", r.registry) },
            r.checked_once,
            args.devices,
            r.rebooted,
            r.refused_calls,
            r.refused_logins,
            r.handler_timeouts,
        );
        if !r.timed_out_routes.is_empty() {
            eprintln!("run {i}: handler timeouts by route: {}", r.timed_out_routes);
        }
    }
    println!();
    println!("{passed} of {} runs passed", args.runs);
    Ok(passed == args.runs)
}

async fn one_run(args: &StormArgs, ota: &std::path::Path) -> anyhow::Result<Run> {
    let db = ota_testkit::TestDatabase::postgres().map_err(|e| anyhow::anyhow!("a PostgreSQL schema: {e}"))?;
    let dir = tempfile::tempdir()?;
    // Only the bounds given: the rest stay the configuration's defaults.
    let node_env = [
        ("OTA_DEVICE_CALLS_IN_FLIGHT", args.device_calls_in_flight.map(|v| v.to_string())),
        ("OTA_MQTT_LOGINS_IN_FLIGHT", args.mqtt_logins_in_flight.map(|v| v.to_string())),
        ("OTA_ADMISSION_WAIT_MS", args.admission_wait_ms.map(|v| v.to_string())),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key.to_owned(), value?)))
    .collect();
    let config = ClusterConfig {
        ota: ota.to_owned(),
        timing: Timing::default(),
        database_url: db.url.clone(),
        broker: args.broker.clone(),
        lease_secs: 30,
        delivery_secs: 10,
        push_rate: 50,
        dir: dir.path().to_owned(),
        store_env: Vec::new(),
        node_env,
    };
    let nodes: Vec<Node> = (0..args.nodes).map(|i| Node::start(&config, &format!("s{}", i + 1))).collect();
    let api = Api::login(&nodes.iter().collect::<Vec<_>>()).await;
    let product = api.post("/api/v1/products", json!({ "name": "storm" })).await.map_err(anyhow::Error::msg)?;
    let pk = product["product_key"].as_str().context("product_key")?.to_owned();

    let spec = FleetSpec {
        product_key: &pk,
        devices: args.devices,
        connect_rate: args.connect_rate,
        mcu_fraction: 0.5,
        mac_base: 0x70,
    };
    let sims = SimFleet::spawn(&nodes, &spec, dir.path())?;
    let n = args.devices as i64;
    let (online, online_after) = wait_online(&api, &pk, n, Duration::from_secs(args.limit_secs), "storm").await;

    let mut checked_once = 0;
    let mut rebooted = 0;
    for csv in sims.stop().await? {
        let (once, boots) = tally(&csv)?;
        checked_once += once;
        rebooted += boots;
    }
    let registry =
        api.get(&format!("/api/v1/products/{pk}/devices?per_page=1")).await.map_err(anyhow::Error::msg)?["total"]
            .as_i64()
            .unwrap_or(-1);
    let (mut refused_calls, mut refused_logins, mut handler_timeouts) = (0.0, 0.0, 0.0);
    for node in &nodes {
        let samples = scrape(node.metrics).await.map_err(anyhow::Error::msg)?;
        refused_calls +=
            metric_total(&samples, ota_domain::metrics::DEVICE_ADMISSION_REFUSALS, &["call=\"device_call\""]);
        refused_logins +=
            metric_total(&samples, ota_domain::metrics::DEVICE_ADMISSION_REFUSALS, &["call=\"mqtt_login\""]);
        handler_timeouts += metric_total(&samples, ota_domain::metrics::DEVICE_HTTP_HANDLER_TIMEOUTS, &[]);
    }
    let logs: Vec<String> = nodes.iter().map(Node::log).collect();
    let timed_out_routes = timeouts_by_route(logs.iter().map(String::as_str));
    Ok(Run {
        online,
        online_after,
        registry,
        checked_once,
        rebooted,
        refused_calls,
        refused_logins,
        handler_timeouts,
        timed_out_routes,
    })
}

/// The gateway logs each handler timeout with its method and path; counted by route, with
/// the path segments that name a device (dids, MACs) left out.
fn timeouts_by_route<'a>(logs: impl Iterator<Item = &'a str>) -> String {
    let mut routes = std::collections::BTreeMap::<String, usize>::new();
    for line in logs.flat_map(str::lines).filter(|l| l.contains("handler timed out")) {
        let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap_or("?");
        let is_id = |seg: &str| seg.len() >= 12 && seg.bytes().all(|b| b.is_ascii_alphanumeric());
        let path: Vec<&str> = field("path=").split('/').map(|seg| if is_id(seg) { "{id}" } else { seg }).collect();
        *routes.entry(format!("{} {}", field("method="), path.join("/"))).or_default() += 1;
    }
    routes.iter().map(|(route, n)| format!("{route}: {n}")).collect::<Vec<_>>().join(", ")
}

/// From a simulator's per-device report: the devices that checked each of their firmware
/// types exactly once (one for Wi-Fi only, two with an MCU), and those that booted more than
/// once.
fn tally(csv: &str) -> anyhow::Result<(usize, usize)> {
    let (mut once, mut rebooted) = (0, 0);
    for row in report_rows(csv, &["mcu_sw", "checks", "boots"])? {
        let types = if row[0].is_empty() { 1 } else { 2 };
        once += usize::from(row[1].parse::<u32>().ok() == Some(types));
        rebooted += usize::from(row[2].parse::<u32>().ok() != Some(1));
    }
    Ok((once, rebooted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_tally_counts_checks_per_type_and_reboots() {
        // The simulator's own header, with rows in its column order.
        let csv = format!(
            "{}{}",
            ota_sim::fleet::DEVICES_CSV_HEADER,
            "A,d1,V4.1,04020006,,true,0,1,0,0,0,1,1\n\
             B,d2,V4.1,04020006,00010001,true,0,2,0,0,0,1,1\n\
             C,d3,V4.1,04020006,00010001,true,0,1,0,0,0,1,1\n\
             D,d4,V4.1,04020006,,true,0,2,0,0,0,2,1\n"
        );
        assert_eq!(tally(&csv).unwrap(), (2, 1));
    }

    #[test]
    fn handler_timeouts_are_counted_by_route_without_device_ids() {
        let log = "2026-12-02T08:00:00Z  WARN ota_gateway::http::server: handler timed out peer=127.0.0.1:4000 method=GET path=/dev/devices/GWspCeWQa3xb6THNr83ZPN\n\
                   2026-12-02T08:00:01Z  INFO ota: something else\n\
                   2026-12-02T08:00:02Z  WARN ota_gateway::http::server: handler timed out peer=127.0.0.1:4001 method=GET path=/dev/devices/bvaBOEIpL6rCMXgZSujjhp\n";
        let other = "x WARN ota_gateway::http::server: handler timed out peer=127.0.0.1:4002 method=POST path=/dev/devices\n\
                     x WARN ota_gateway::http::server: handler timed out peer=127.0.0.1:4003 method=POST path=/dev/ota/v4.1/update_and_check/GWspCeWQa3xb6THNr83ZPN";
        assert_eq!(
            timeouts_by_route([log, other].into_iter()),
            "GET /dev/devices/{id}: 2, POST /dev/devices: 1, POST /dev/ota/v4.1/update_and_check/{id}: 1"
        );
    }
}
