//! `ota sim …`: the command-line front of [`crate::fleet`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::device::DeviceConfig;
use crate::fleet::{Fleet, FleetMix, FleetOptions, generate, load_csv};
use crate::spec::{Method, MqttProtocol, Timing};

/// Arguments of `ota sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Device HTTP address of the gateway (the firmware's api.gizwits.com:80). Every request
    /// goes here, download URLs included.
    #[arg(long, env = "OTA_SIM_HTTP", default_value = "127.0.0.1:8081")]
    pub http: String,
    /// `Host` header of API requests.
    #[arg(long, default_value = "api.gizwits.com")]
    pub api_host: String,
    /// Connect MQTT here instead of the provisioned host:port.
    #[arg(long, env = "OTA_SIM_MQTT")]
    pub mqtt: Option<String>,
    /// Product key (32 hex); CSV rows may name their own.
    #[arg(long, env = "OTA_SIM_PRODUCT_KEY")]
    pub product_key: Option<String>,
    /// Product secret (32 hex): register and provision through the encrypted endpoints.
    #[arg(long, env = "OTA_SIM_PRODUCT_SECRET")]
    pub product_secret: Option<String>,
    /// Total devices; all V4.1 unless --v1v3/--v4/--v41 split them.
    #[arg(long)]
    pub devices: Option<usize>,
    /// V1V3 devices.
    #[arg(long, default_value_t = 0)]
    pub v1v3: usize,
    /// V4 devices.
    #[arg(long, default_value_t = 0)]
    pub v4: usize,
    /// V4.1 devices.
    #[arg(long, default_value_t = 0)]
    pub v41: usize,
    /// Share of devices with an MCU, 0.0–1.0.
    #[arg(long, default_value_t = 0.0)]
    pub with_mcu_fraction: f64,
    /// Devices from a CSV (mac,product_key,method,wifi_hw,wifi_sw,mcu_hw,mcu_sw,region,did,passcode).
    #[arg(long, conflicts_with_all = ["devices", "v1v3", "v4", "v41"])]
    pub csv: Option<PathBuf>,
    /// Wi-Fi hardware version.
    #[arg(long, default_value = "00ESP826")]
    pub wifi_hw: String,
    /// Wi-Fi software versions, dealt round-robin (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub wifi_sw: Vec<String>,
    /// MCU hardware version.
    #[arg(long, default_value = "00000001")]
    pub mcu_hw: String,
    /// MCU software versions, dealt round-robin.
    #[arg(long, value_delimiter = ',')]
    pub mcu_sw: Vec<String>,
    /// Region labels, dealt round-robin (reporting only).
    #[arg(long)]
    pub region: Vec<String>,
    /// Hex MAC prefix; the rest of the 12 digits is the device index.
    #[arg(long, default_value = "5CCF7F")]
    pub mac_prefix: String,
    /// Devices started per second.
    #[arg(long, default_value_t = 50.0)]
    pub connect_rate: f64,
    /// Run this long (e.g. 90s, 10m, 2h), then power everything off; default until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Share of devices whose downloads break off half way.
    #[arg(long, default_value_t = 0.0)]
    pub drop_mid_download: f64,
    /// Share of devices that corrupt one byte of every image (MD5 fails).
    #[arg(long, default_value_t = 0.0)]
    pub corrupt_byte: f64,
    /// Share of devices that go offline for good after their first download.
    #[arg(long, default_value_t = 0.0)]
    pub never_return: f64,
    /// These devices (MACs, comma-separated) fail every download: `--fail-mode` says how.
    #[arg(long, value_delimiter = ',')]
    pub fail_macs: Vec<String>,
    /// How `--fail-macs` devices fail: `md5` (the image arrives corrupt; the device says
    /// nothing), `cut` (the download breaks off halfway) or `mixed` (alternately, in the
    /// order `--fail-macs` names them).
    #[arg(long, default_value = "md5", value_parser = ["md5", "cut", "mixed"])]
    pub fail_mode: String,
    /// MQTT protocol of the CONNECT: 3.1 (GAgent) or 3.1.1.
    #[arg(long, default_value = "3.1", value_parser = parse_protocol)]
    pub mqtt_protocol: MqttProtocol,
    /// Keep-alive in the CONNECT, seconds.
    #[arg(long, default_value_t = 120)]
    pub keep_alive: u16,
    /// PINGREQ period (GA: 50s).
    #[arg(long, value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// V4 `current_fid` / V1V3 firmware id to start from (GA 0401: 0, GK: 1).
    #[arg(long, default_value_t = 0)]
    pub current_fid: u32,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// At the end, write one CSV line per device to this file: pushes received, checks,
    /// downloads, upgrades, the versions it runs.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

fn parse_protocol(s: &str) -> Result<MqttProtocol, String> {
    match s {
        "3.1" | "31" | "v31" | "MQIsdp" => Ok(MqttProtocol::V31),
        "3.1.1" | "311" | "v311" | "MQTT" => Ok(MqttProtocol::V311),
        other => Err(format!("unknown MQTT protocol {other:?} (3.1 or 3.1.1)")),
    }
}

/// `90`, `90s`, `15m`, `2h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, ""), |at| s.split_at(at));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s:?}: {e}"))
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .with_context(|| format!("resolve {addr}: no address"))
}

/// Makes the devices named in `--fail-macs` fail every download.
fn fail_chosen(
    mut specs: Vec<crate::spec::DeviceSpec>,
    macs: &[String],
    mode: &str,
) -> anyhow::Result<Vec<crate::spec::DeviceSpec>> {
    let mut order: Vec<String> = Vec::new();
    for m in macs.iter().map(|m| m.trim().replace([':', '-'], "").to_ascii_uppercase()) {
        if !m.is_empty() && !order.contains(&m) {
            order.push(m);
        }
    }
    let wanted: std::collections::HashMap<String, usize> = order.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
    let mut found = 0;
    for spec in &mut specs {
        if let Some(i) = wanted.get(&spec.mac) {
            found += 1;
            match (mode, i % 2) {
                ("cut", _) | ("mixed", 1) => spec.faults.drop_mid_download = true,
                _ => spec.faults.corrupt_byte = true,
            }
        }
    }
    anyhow::ensure!(found == wanted.len(), "--fail-macs names {} MACs, {found} of them in the fleet", wanted.len());
    Ok(specs)
}

/// Runs the simulator until `--duration` elapses or Ctrl-C, then prints the report.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut counts = vec![(Method::V1V3, args.v1v3), (Method::V4, args.v4), (Method::V41, args.v41)];
    let split: usize = counts.iter().map(|(_, n)| n).sum();
    match (args.devices, split) {
        (Some(n), 0) => counts = vec![(Method::V41, n)],
        (Some(n), split) if n != split => anyhow::bail!("--devices {n} but --v1v3/--v4/--v41 add up to {split}"),
        _ => {}
    }
    let mix = FleetMix {
        product_key: args.product_key.clone().unwrap_or_default(),
        product_secret: args.product_secret.clone(),
        counts,
        mcu_fraction: args.with_mcu_fraction,
        mac_prefix: args.mac_prefix.clone(),
        regions: args.region.clone(),
        wifi_hw: args.wifi_hw.clone(),
        wifi_sw: args.wifi_sw.clone(),
        mcu_hw: args.mcu_hw.clone(),
        mcu_sw: args.mcu_sw.clone(),
        drop_mid_download: args.drop_mid_download,
        corrupt_byte: args.corrupt_byte,
        never_return: args.never_return,
        mqtt_protocol: args.mqtt_protocol,
        keep_alive: args.keep_alive,
        current_fid: args.current_fid,
    };
    let specs = match &args.csv {
        Some(path) => load_csv(path, &mix)?,
        None => {
            anyhow::ensure!(args.product_key.is_some(), "--product-key is required without --csv");
            generate(&mix)?
        }
    };
    anyhow::ensure!(!specs.is_empty(), "no devices: give --devices, --v1v3/--v4/--v41 or --csv");
    let specs = fail_chosen(specs, &args.fail_macs, &args.fail_mode)?;

    let mut device = DeviceConfig::new(resolve(&args.http).await?);
    device.api_host = args.api_host.clone();
    if let Some(mqtt) = &args.mqtt {
        device.mqtt_addr_override = Some(resolve(mqtt).await?);
    }
    let mut timing = Timing::default();
    if let Some(p) = args.ping_interval {
        timing.ping_interval = p;
    }
    device.timing = timing;

    let options = FleetOptions {
        device,
        connect_rate: args.connect_rate,
        progress: !args.quiet,
        progress_interval: Duration::from_secs(1),
    };
    let duration = args.duration;
    let until = async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let report = Fleet::new(specs, options).run(until).await?;
    print!("{report}");
    if let Some(path) = &args.report {
        std::fs::write(path, report.devices_csv()).with_context(|| format!("writing {}", path.display()))?;
        println!("per-device report: {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "sim",
            "--product-key",
            "0123456789abcdef0123456789abcdef",
            "--v41",
            "3",
            "--wifi-sw",
            "04020006,04020005",
            "--region",
            "Beijing",
            "--region",
            "Shanghai",
            "--duration",
            "2m",
            "--mqtt-protocol",
            "3.1.1",
        ])
        .unwrap();
        assert_eq!(cli.sim.v41, 3);
        assert_eq!(cli.sim.wifi_sw, ["04020006", "04020005"]);
        assert_eq!(cli.sim.region.len(), 2);
        assert_eq!(cli.sim.duration, Some(Duration::from_secs(120)));
        assert_eq!(cli.sim.mqtt_protocol, MqttProtocol::V311);
        assert!(Cli::try_parse_from(["sim", "--csv", "x.csv", "--v4", "2"]).is_err());
    }

    #[test]
    fn chosen_macs_fail_as_told() {
        let specs: Vec<crate::spec::DeviceSpec> = ["5CCF7F000001", "5CCF7F000002", "5CCF7F000003"]
            .iter()
            .map(|m| crate::spec::DeviceSpec::new("0123456789abcdef0123456789abcdef", *m, Method::V41))
            .collect();
        let out = fail_chosen(specs.clone(), &["5c:cf:7f:00:00:02".into()], "cut").unwrap();
        assert_eq!(out.iter().map(|s| s.faults.drop_mid_download).collect::<Vec<_>>(), [false, true, false]);
        let out = fail_chosen(specs.clone(), &["5CCF7F000003".into()], "md5").unwrap();
        assert!(out[2].faults.corrupt_byte && !out[0].faults.corrupt_byte);
        let out = fail_chosen(specs.clone(), &["5CCF7F000003".into(), "5CCF7F000001".into()], "mixed").unwrap();
        let faults: Vec<(bool, bool)> =
            out.iter().map(|s| (s.faults.corrupt_byte, s.faults.drop_mid_download)).collect();
        assert_eq!(
            faults,
            [(false, true), (false, false), (true, false)],
            "md5 for the first named, cut for the second"
        );
        assert!(fail_chosen(specs, &["AABBCCDDEEFF".into()], "md5").is_err(), "a MAC not in the fleet");
    }
}
