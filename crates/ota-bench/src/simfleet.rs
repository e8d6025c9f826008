//! A simulated fleet spread over `ota up` nodes, one `ota-bench sim` child per node (no
//! process then holds more than its share of sockets), as the `storm` and `sessions`
//! benches run it: start, wait until all are online, stop and read the per-device reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ota_testkit::cluster::{Api, Node};

/// What the simulators boot.
pub struct FleetSpec<'a> {
    pub product_key: &'a str,
    /// Devices in all, spread evenly over the nodes.
    pub devices: usize,
    /// Power-ons per second, all nodes together.
    pub connect_rate: f64,
    /// Share of devices with an MCU.
    pub mcu_fraction: f64,
    /// The first simulator's MAC prefix byte after `5CCF`; each next one adds 1.
    pub mac_base: u8,
}

/// The running simulators, each with the report it writes when stopped.
pub struct SimFleet {
    sims: Vec<(tokio::process::Child, PathBuf)>,
}

impl SimFleet {
    /// One simulator per node, each with its own MAC prefix and share of the fleet; reports
    /// go into `dir`.
    pub fn spawn(nodes: &[Node], spec: &FleetSpec<'_>, dir: &Path) -> anyhow::Result<SimFleet> {
        let exe = std::env::current_exe()?;
        let rate = spec.connect_rate / nodes.len() as f64;
        let mut sims = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let share = spec.devices / nodes.len() + usize::from(i < spec.devices % nodes.len());
            let report = dir.join(format!("sim{i}.csv"));
            let prefix = format!("5CCF{:02X}", usize::from(spec.mac_base) + i);
            let child = tokio::process::Command::new(&exe)
                .args(["sim", "--quiet", "--http", &node.http.to_string(), "--product-key", spec.product_key])
                .args(["--v41", &share.to_string(), "--with-mcu-fraction", &spec.mcu_fraction.to_string()])
                .args(["--connect-rate", &rate.to_string(), "--mac-prefix", &prefix, "--report"])
                .arg(&report)
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting a simulated fleet")?;
            sims.push((child, report));
        }
        Ok(SimFleet { sims })
    }

    /// The simulators' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.sims.iter().filter_map(|(child, _)| child.id()).collect()
    }

    /// Stops every simulator (SIGINT: each writes its per-device report) and returns the
    /// reports.
    pub async fn stop(self) -> anyhow::Result<Vec<String>> {
        let mut reports = Vec::new();
        for (mut child, report) in self.sims {
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
            reports.push(std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?);
        }
        Ok(reports)
    }
}

/// How many devices of product `pk` are online now (`None` when the API did not answer).
pub async fn online(api: &Api, pk: &str) -> Option<i64> {
    api.get(&format!("/api/v1/products/{pk}/devices?online=true&per_page=1")).await.ok()?["total"].as_i64()
}

/// Polls until `n` devices are online or `limit` passes, with a progress line labelled
/// `label`; returns the last count and, if all came online, how long it took.
pub async fn wait_online(api: &Api, pk: &str, n: i64, limit: Duration, label: &str) -> (i64, Option<Duration>) {
    let started = Instant::now();
    let mut count = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        count = online(api, pk).await.unwrap_or(count);
        eprint!("\r{label}: {count}/{n} online ({:.0} s)   ", started.elapsed().as_secs_f64());
        if count == n {
            eprintln!();
            return (count, Some(started.elapsed()));
        }
    }
    eprintln!();
    (count, None)
}

/// The rows of a simulator report (`ota_sim::fleet::DEVICES_CSV_HEADER`), each as the cells
/// of `columns`, in that order.
pub fn report_rows(csv: &str, columns: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().context("an empty simulator report")?.split(',').collect();
    let at: Vec<usize> = columns
        .iter()
        .map(|name| header.iter().position(|h| h == name).with_context(|| format!("no {name} column")))
        .collect::<anyhow::Result<_>>()?;
    Ok(lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            at.iter().map(|&i| cells.get(i).copied().unwrap_or("").to_owned()).collect()
        })
        .collect())
}
