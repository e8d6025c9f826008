//! Many devices in one process: one tokio task each, started at a bounded rate, with a live
//! progress line and a report at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::time::Instant;

use crate::device::{Device, DeviceConfig, DeviceHandle, DeviceSnapshot, Tally};
use crate::spec::{DeviceSpec, Faults, McuVersions, Method, MqttProtocol, random_passcode};

/// How to make a fleet from flags.
#[derive(Debug, Clone)]
pub struct FleetMix {
    /// Product key of every device.
    pub product_key: String,
    /// Encrypted registration when set.
    pub product_secret: Option<String>,
    /// Devices per method, created in this order.
    pub counts: Vec<(Method, usize)>,
    /// Share of devices with an MCU (0.0–1.0).
    pub mcu_fraction: f64,
    /// Hex prefix of the MACs; the rest is the device index.
    pub mac_prefix: String,
    /// Region labels, dealt round-robin.
    pub regions: Vec<String>,
    /// Wi-Fi hardware version.
    pub wifi_hw: String,
    /// Wi-Fi software versions, dealt round-robin; empty → the method's default.
    pub wifi_sw: Vec<String>,
    /// MCU hardware version.
    pub mcu_hw: String,
    /// MCU software versions, dealt round-robin.
    pub mcu_sw: Vec<String>,
    /// Shares of devices with each fault.
    pub drop_mid_download: f64,
    /// See [`Faults::corrupt_byte`].
    pub corrupt_byte: f64,
    /// See [`Faults::never_return`].
    pub never_return: f64,
    /// CONNECT protocol.
    pub mqtt_protocol: MqttProtocol,
    /// Keep-alive.
    pub keep_alive: u16,
    /// V4 / V1V3 starting fid.
    pub current_fid: u32,
}

/// Whether device `i` is in the first `fraction` share, spread evenly over the fleet.
fn picked(i: usize, fraction: f64) -> bool {
    let f = fraction.clamp(0.0, 1.0);
    ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

fn deal(list: &[String], i: usize) -> Option<&String> {
    if list.is_empty() { None } else { list.get(i % list.len()) }
}

/// The specs for a mix of flags.
pub fn generate(mix: &FleetMix) -> anyhow::Result<Vec<DeviceSpec>> {
    let prefix = mix.mac_prefix.to_ascii_uppercase();
    anyhow::ensure!(prefix.len() < 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()), "bad MAC prefix {prefix:?}");
    let width = 12 - prefix.len();
    let total: usize = mix.counts.iter().map(|(_, n)| n).sum();
    anyhow::ensure!(
        width >= 16 || (total as u128) <= 16u128.pow(width as u32),
        "MAC prefix too long for {total} devices"
    );
    let mut specs = Vec::with_capacity(total);
    let mut i = 0usize;
    for &(method, n) in &mix.counts {
        for _ in 0..n {
            let mac = format!("{prefix}{i:0width$X}");
            let mut spec = DeviceSpec::new(mix.product_key.clone(), mac, method);
            spec.product_secret = mix.product_secret.clone();
            spec.wifi_hw = mix.wifi_hw.clone();
            if let Some(sw) = deal(&mix.wifi_sw, i) {
                spec.wifi_sw = sw.clone();
            }
            if picked(i, mix.mcu_fraction) {
                let sw = deal(&mix.mcu_sw, i).cloned().unwrap_or_else(|| "00000001".into());
                spec.mcu = Some(McuVersions { hw: mix.mcu_hw.clone(), sw });
            }
            spec.region = deal(&mix.regions, i).cloned();
            spec.faults = Faults {
                only_first: 0,
                drop_mid_download: picked(i, mix.drop_mid_download),
                corrupt_byte: picked(i, mix.corrupt_byte),
                never_return: picked(i, mix.never_return),
            };
            spec.mqtt_protocol = mix.mqtt_protocol;
            spec.keep_alive = mix.keep_alive;
            spec.current_fid = mix.current_fid;
            spec.validate().with_context(|| format!("device {i}"))?;
            specs.push(spec);
            i += 1;
        }
    }
    Ok(specs)
}

#[derive(Debug, Deserialize)]
struct CsvRow {
    mac: String,
    #[serde(default)]
    product_key: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    wifi_hw: Option<String>,
    #[serde(default)]
    wifi_sw: Option<String>,
    #[serde(default)]
    mcu_hw: Option<String>,
    #[serde(default)]
    mcu_sw: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    did: Option<String>,
    #[serde(default)]
    passcode: Option<String>,
}

fn filled(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Specs from a CSV with a header row: `mac, product_key, method, wifi_hw, wifi_sw, mcu_hw,
/// mcu_sw, region, did, passcode`. Only `mac` is required; empty cells take the defaults of
/// `defaults` (product key, secret, hardware versions, protocol, faults off).
pub fn load_csv(path: &Path, defaults: &FleetMix) -> anyhow::Result<Vec<DeviceSpec>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .with_context(|| format!("open {}", path.display()))?;
    let mut specs = Vec::new();
    for (line, row) in reader.deserialize::<CsvRow>().enumerate() {
        let row = row.with_context(|| format!("{} row {}", path.display(), line + 2))?;
        let method = match filled(row.method) {
            Some(m) => m.parse()?,
            None => Method::V41,
        };
        let pk = filled(row.product_key).unwrap_or_else(|| defaults.product_key.clone());
        let mut spec = DeviceSpec::new(pk, row.mac.to_ascii_uppercase(), method);
        spec.product_secret = defaults.product_secret.clone();
        spec.wifi_hw = filled(row.wifi_hw).unwrap_or_else(|| defaults.wifi_hw.clone());
        if let Some(sw) = filled(row.wifi_sw) {
            spec.wifi_sw = sw;
        }
        spec.mcu = match (filled(row.mcu_hw), filled(row.mcu_sw)) {
            (Some(hw), Some(sw)) => Some(McuVersions { hw, sw }),
            (None, Some(sw)) => Some(McuVersions { hw: defaults.mcu_hw.clone(), sw }),
            _ => None,
        };
        spec.region = filled(row.region);
        spec.did = filled(row.did);
        spec.passcode = filled(row.passcode).unwrap_or_else(random_passcode);
        spec.mqtt_protocol = defaults.mqtt_protocol;
        spec.keep_alive = defaults.keep_alive;
        spec.current_fid = defaults.current_fid;
        spec.validate().with_context(|| format!("{} row {}", path.display(), line + 2))?;
        specs.push(spec);
    }
    Ok(specs)
}

/// How a fleet runs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Template for every device (its `tally` is replaced by the fleet's).
    pub device: DeviceConfig,
    /// Devices started per second.
    pub connect_rate: f64,
    /// Print the progress line on stderr.
    pub progress: bool,
    /// Progress period.
    pub progress_interval: Duration,
}

/// A fleet of simulated devices.
pub struct Fleet {
    specs: Vec<DeviceSpec>,
    options: FleetOptions,
    tally: Arc<Tally>,
}

impl Fleet {
    /// A fleet that has not started.
    pub fn new(specs: Vec<DeviceSpec>, options: FleetOptions) -> Fleet {
        Fleet { specs, options, tally: Arc::new(Tally::default()) }
    }

    /// The live counters.
    pub fn tally(&self) -> Arc<Tally> {
        self.tally.clone()
    }

    /// Starts the devices at the configured rate and runs until `until` completes, then powers
    /// every device off and reports.
    pub async fn run(self, until: impl Future<Output = ()>) -> anyhow::Result<FleetReport> {
        let Fleet { specs, options, tally } = self;
        let total = specs.len();
        let mut config = options.device.clone();
        config.tally = Some(tally.clone());
        // Events are only read through the tally here; keep per-device buffers tiny.
        config.event_capacity = 4;
        let rate = options.connect_rate.max(0.001);
        let period = Duration::from_secs_f64(1.0 / rate);
        let started = Instant::now();
        let mut handles: Vec<DeviceHandle> = Vec::with_capacity(total);
        let mut pending = specs.into_iter();
        let mut next_start = Instant::now();
        let mut next_progress = Instant::now() + options.progress_interval;
        tokio::pin!(until);
        loop {
            let launching = handles.len() < total;
            tokio::select! {
                _ = &mut until => break,
                _ = tokio::time::sleep_until(next_start), if launching => {
                    // Catch up in bursts when the timer is late, so the rate holds under load.
                    while handles.len() < total && next_start <= Instant::now() {
                        if let Some(spec) = pending.next() {
                            handles.push(Device::new(spec, config.clone())?.spawn());
                        }
                        next_start += period;
                    }
                }
                _ = tokio::time::sleep_until(next_progress) => {
                    if options.progress {
                        let line = progress_line(&tally, handles.len(), total, started.elapsed());
                        let mut err = std::io::stderr().lock();
                        let _ = write!(err, "\r{line}\x1b[K");
                        let _ = err.flush();
                    }
                    next_progress += options.progress_interval;
                }
            }
        }
        if options.progress {
            eprintln!();
        }
        for handle in &handles {
            handle.request_stop();
        }
        let mut snapshots = Vec::with_capacity(handles.len());
        for handle in handles {
            snapshots.push(handle.stop().await);
        }
        Ok(FleetReport::new(total, &snapshots, &tally, started.elapsed()))
    }
}

fn progress_line(tally: &Tally, started: usize, total: usize, elapsed: Duration) -> String {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "[{:>5}s] started {started}/{total}  registered {}  online {}  upgraded {}  failed {}  refused {}  lost {}",
        elapsed.as_secs(),
        get(&tally.registered),
        get(&tally.online),
        get(&tally.upgraded),
        get(&tally.failed),
        get(&tally.refused),
        get(&tally.lost_packets),
    )
}

/// The end state of a fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetReport {
    /// Devices planned.
    pub planned: usize,
    /// Devices started.
    pub started: usize,
    /// Devices that registered, or started with a did and provisioned: 0 means the fleet
    /// reached no server.
    pub registered: u64,
    /// Devices with a did at the end.
    pub with_did: usize,
    /// Online when stopped.
    pub online: usize,
    /// Upgrades installed, all devices.
    pub upgrades: u64,
    /// Failed downloads and MCU transfers.
    pub failed: u64,
    /// Refused CONNACKs.
    pub refused: u64,
    /// Packets lost to the one-packet-per-read rule (should be 0 with a correct gateway).
    pub lost_packets: u64,
    /// Oversized packets thrown away.
    pub oversize_dropped: u64,
    /// Devices gone for good.
    pub vanished: u64,
    /// Devices per (method, region).
    pub per_method_region: BTreeMap<(String, String), usize>,
    /// Devices per final Wi-Fi version.
    pub wifi_versions: BTreeMap<String, usize>,
    /// Devices per final MCU version.
    pub mcu_versions: BTreeMap<String, usize>,
    /// How long the fleet ran.
    pub elapsed: Duration,
    /// Every device as it ended.
    pub devices: Vec<DeviceSnapshot>,
}

/// The header of [`FleetReport::devices_csv`].
pub const DEVICES_CSV_HEADER: &str =
    "mac,did,method,wifi_sw,mcu_sw,online,pushes,checks,downloads_ok,downloads_failed,upgrades,boots,mqtt_logins\n";

impl FleetReport {
    /// One line per device: what it received, did and runs at the end (what the server's
    /// counts are checked against).
    pub fn devices_csv(&self) -> String {
        let mut out = String::from(DEVICES_CSV_HEADER);
        for d in &self.devices {
            let c = &d.counters;
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                d.mac,
                d.did.as_deref().unwrap_or(""),
                d.method,
                d.wifi_sw,
                d.mcu.as_ref().map(|m| m.sw.as_str()).unwrap_or(""),
                d.online,
                c.pushes,
                c.checks,
                c.downloads_ok,
                c.downloads_failed,
                c.upgrades,
                c.boots,
                c.mqtt_logins
            ));
        }
        out
    }
}

impl FleetReport {
    fn new(planned: usize, snapshots: &[DeviceSnapshot], tally: &Tally, elapsed: Duration) -> Self {
        let mut report = FleetReport {
            planned,
            started: snapshots.len(),
            registered: tally.registered.load(Ordering::Relaxed),
            upgrades: tally.upgraded.load(Ordering::Relaxed),
            failed: tally.failed.load(Ordering::Relaxed),
            refused: tally.refused.load(Ordering::Relaxed),
            lost_packets: tally.lost_packets.load(Ordering::Relaxed),
            vanished: tally.vanished.load(Ordering::Relaxed),
            elapsed,
            devices: snapshots.to_vec(),
            ..FleetReport::default()
        };
        for s in snapshots {
            report.with_did += usize::from(s.did.is_some());
            report.online += usize::from(s.online);
            report.oversize_dropped += u64::from(s.counters.oversize_dropped);
            let region = s.region.clone().unwrap_or_else(|| "-".into());
            *report.per_method_region.entry((s.method.to_string(), region)).or_default() += 1;
            *report.wifi_versions.entry(s.wifi_sw.clone()).or_default() += 1;
            if let Some(mcu) = &s.mcu {
                *report.mcu_versions.entry(mcu.sw.clone()).or_default() += 1;
            }
        }
        report
    }
}

impl fmt::Display for FleetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fleet ran {:.1}s: {}/{} devices started", self.elapsed.as_secs_f64(), self.started, self.planned)?;
        writeln!(
            f,
            "  with did {}  online at end {}  upgrades {}  failed {}  refused {}  vanished {}",
            self.with_did, self.online, self.upgrades, self.failed, self.refused, self.vanished
        )?;
        writeln!(f, "  lost packets {}  oversize dropped {}", self.lost_packets, self.oversize_dropped)?;
        for ((method, region), n) in &self.per_method_region {
            writeln!(f, "  {method:<5} {region:<20} {n}")?;
        }
        for (v, n) in &self.wifi_versions {
            writeln!(f, "  wifi {v} on {n}")?;
        }
        for (v, n) in &self.mcu_versions {
            writeln!(f, "  mcu  {v} on {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> FleetMix {
        FleetMix {
            product_key: "0123456789abcdef0123456789abcdef".into(),
            product_secret: None,
            counts: vec![(Method::V1V3, 2), (Method::V4, 3), (Method::V41, 5)],
            mcu_fraction: 0.5,
            mac_prefix: "5ccf7f".into(),
            regions: vec!["Beijing".into(), "Shanghai".into()],
            wifi_hw: "00ESP826".into(),
            wifi_sw: vec![],
            mcu_hw: "00000001".into(),
            mcu_sw: vec!["00000001".into(), "00000002".into()],
            drop_mid_download: 0.1,
            corrupt_byte: 0.0,
            never_return: 0.0,
            mqtt_protocol: MqttProtocol::V31,
            keep_alive: 120,
            current_fid: 0,
        }
    }

    #[test]
    fn generated_fleet_follows_the_mix() {
        let specs = generate(&mix()).unwrap();
        assert_eq!(specs.len(), 10);
        assert_eq!(specs[0].mac, "5CCF7F000000");
        assert_eq!(specs[9].mac, "5CCF7F000009");
        assert_eq!(specs.iter().filter(|s| s.method == Method::V4).count(), 3);
        assert_eq!(specs.iter().filter(|s| s.mcu.is_some()).count(), 5);
        assert_eq!(specs.iter().filter(|s| s.faults.drop_mid_download).count(), 1);
        assert_eq!(specs[1].region.as_deref(), Some("Shanghai"));
        assert_eq!(specs[9].wifi_sw, "04020006");
    }

    #[test]
    fn csv_rows_fill_in_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.csv");
        std::fs::write(
            &path,
            "mac,product_key,method,wifi_hw,wifi_sw,mcu_hw,mcu_sw,region,did,passcode\n\
             5ccf7f0a1b2c,,v4,,04000003,,,Hangzhou,,\n\
             5CCF7F0A1B2D,,v41,00ESP826,04020006,00000001,00000009,,uNMdYrcV3YN6DZhQPc5ugW,KQXBDTRLMA\n",
        )
        .unwrap();
        let specs = load_csv(&path, &mix()).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].mac, "5CCF7F0A1B2C");
        assert_eq!(specs[0].method, Method::V4);
        assert_eq!(specs[0].wifi_sw, "04000003");
        assert!(specs[0].mcu.is_none());
        assert_eq!(specs[1].did.as_deref(), Some("uNMdYrcV3YN6DZhQPc5ugW"));
        assert_eq!(specs[1].passcode, "KQXBDTRLMA");
        assert_eq!(specs[1].mcu.as_ref().unwrap().sw, "00000009");
    }

    #[tokio::test]
    async fn the_report_has_a_line_per_device() {
        // Nothing listens on the address: the devices never register, and are still reported.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut m = mix();
        m.counts = vec![(Method::V41, 3)];
        let options = FleetOptions {
            device: DeviceConfig { timing: crate::spec::Timing::fast(), ..DeviceConfig::new(closed) },
            connect_rate: 1000.0,
            progress: false,
            progress_interval: Duration::from_secs(1),
        };
        let report = Fleet::new(generate(&m).unwrap(), options)
            .run(tokio::time::sleep(Duration::from_millis(300)))
            .await
            .unwrap();
        let csv = report.devices_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], DEVICES_CSV_HEADER.trim_end());
        assert_eq!(lines.len(), 4, "{csv}");
        assert!(lines[1].starts_with("5CCF7F000000,,v41,04020006,"), "{csv}");
        assert!(lines[1].ends_with(",false,0,0,0,0,0,1,0"), "{csv}");
    }
}
