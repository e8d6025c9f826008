//! `ota-bench halt`: the automatic halt of a rollout at real speed. A simulated fleet (default
//! 2,000 V4.1 devices, in this process, test timers) where a chosen 5 % fail every download
//! (a cut download and an image that fails its MD5 check, alternately) is pushed by a rule with
//! a canary of 10 named MACs, waves of 10 %, 50 %, 100 %, a halt above 5 % failed and 200 in
//! flight, by the gateway's own scheduler. It reports when and with which numbers the rule
//! halted, that no device outside the waves pushed so far was pushed, how the devices in
//! flight at the halt finished, and, after the failing devices are excluded and the rule
//! resumed, the time to complete and the final counts against the simulator's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use ota_gateway::{BusConfig, EdgeSettings, Gateway, GatewaySettings, PushSettings};
use ota_sim::{Device, DeviceConfig, DeviceHandle, DeviceSpec, Faults, Method, Timing};
use ota_wire::rollout::ExcludeRequest;
use ota_wire::rules::{RuleDeviceQuery, RuleStatus, RuleView, StartRuleRequest, TargetKind};

use crate::rules::{body, firmware, online_now, setup};

#[derive(Debug, clap::Args)]
pub struct HaltArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 2000)]
    pub devices: usize,
    /// `postgres://…`; default SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Pushes per second of the gateway's scheduler.
    #[arg(long, default_value_t = 200)]
    pub push_rate: u32,
    /// Firmware image size in bytes (big enough for a cut download to fail the gateway's
    /// writes on loopback).
    #[arg(long, default_value_t = 1_500_000)]
    pub image_bytes: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

fn mac(i: usize) -> String {
    format!("5CCF7F{i:06X}")
}

/// The chosen 5 %: a bad production batch, a run of consecutive MACs in the middle of the
/// first wave (waves dealt in MAC order), alternately a cut download and a bad image.
fn failing(n: usize) -> BTreeMap<String, Faults> {
    let bad = (n / 20).max(2);
    let rest = n.saturating_sub(10);
    // Wave 1 holds the first 10 % of the non-canary targets, in MAC order.
    let wave1 = (rest / 10).max(bad);
    let first = 10 + (wave1 - bad) / 2;
    (first..first + bad)
        .enumerate()
        .map(|(k, i)| {
            let cut = k % 2 == 1;
            (mac(i), Faults { drop_mid_download: cut, corrupt_byte: !cut, ..Faults::default() })
        })
        .collect()
}

pub async fn run(args: HaltArgs) -> anyhow::Result<bool> {
    let s = setup(args.database_url.clone()).await?;
    let settings = GatewaySettings {
        edge: EdgeSettings { gateway_id: "bench".into(), pace: Duration::from_millis(5), ..EdgeSettings::default() },
        push: PushSettings { rate_per_second: args.push_rate, interval: Duration::from_millis(200) },
        throttle: ota_gateway::throttle::ThrottleSettings {
            // Every simulated device shares 127.0.0.1.
            max_in_flight_per_source: 100_000,
            max_in_flight_per_clean_source: 100_000,
            ..Default::default()
        },
        ..crate::serve::loopback_gateway(BusConfig::Embedded { listen: None })
    };

    let gateway = Gateway::start(s.domain.clone(), settings).await.context("starting the gateway")?;
    let fw = firmware(&s, args.image_bytes).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);

    let failing = failing(args.devices);
    let t = Instant::now();
    let mut devices: BTreeMap<String, DeviceHandle> = BTreeMap::new();
    for i in 0..args.devices {
        let mut spec = DeviceSpec::new(s.product_key.clone(), mac(i), Method::V41);
        spec.faults = failing.get(&mac(i)).copied().unwrap_or_default();
        let config = DeviceConfig { timing: Timing::fast(), ..DeviceConfig::new(gateway.http_addr) };
        devices.insert(mac(i), Device::new(spec, config)?.spawn());
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    loop {
        let online = online_now(&s, &gateway).await?;
        eprint!("\rconnecting: {online}/{} online ({:.0} s)", args.devices, t.elapsed().as_secs_f64());
        if online == args.devices as i64 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {online} devices came online");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!();

    let canary: Vec<String> = (0..10).map(mac).collect();
    let policy = serde_json::json!({
        // Short stage timeouts and retries: a simulated device that lost its push in a shared
        // read (as GAgent would) is pushed again after 10 s instead of 120 s.
        "retry": { "attempts": 3, "backoff_s": 5 },
        "timeouts": { "notified_s": 10, "checked_s": 10, "downloaded_wifi_s": 10 },
        "canary": { "macs": canary.join(" ") },
        "waves": [{ "percent": 10 }, { "percent": 50 }, { "percent": 100 }],
        "wave_order": "mac",
        "halt": { "failure_ratio": 0.05, "min_finished": 20 },
        "max_in_flight": 200,
    });
    let mut b = body(TargetKind::All, Vec::new());
    b.old_versions = vec!["04020006".into()];
    b.policy = Some(serde_json::from_value(policy)?);
    let rule = s.domain.create_rule(&s.who()?, fw, b).await?;
    let id = rule.request_id;
    let t0 = Instant::now();
    s.domain.start_rule(&s.who()?, id, StartRuleRequest { confirm_stable: true, accept_terms: true }).await?;
    let waves = wave_of(&s, id).await?;

    // Until the halt.
    let mut view: RuleView;
    loop {
        view = s.domain.get_rule(&s.who()?, id).await?;
        eprint!(
            "\rrollout: wave {:?}, {} succeeded, {} failed, {} in flight ({:.1} s)",
            view.current_wave,
            view.counts.succeeded,
            view.counts.failed,
            view.counts.in_progress,
            t0.elapsed().as_secs_f64()
        );
        if view.status != RuleStatus::Pushing {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the rule never halted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!();
    let to_halt = t0.elapsed();
    anyhow::ensure!(view.status == RuleStatus::Halted, "the rule ended {:?} without a halt", view.status);
    let halt = view.halt.clone().context("a halted rule without its halt record")?;
    let in_flight_at_halt = view.counts.in_progress;
    // Those on their way finish (or time out after 10 s) and count.
    let settled_at = loop {
        let v = s.domain.get_rule(&s.who()?, id).await?;
        if v.counts.in_progress == 0 {
            break v;
        }
        if Instant::now() >= deadline {
            dump_unfinished(&s, id, &devices).await?;
            anyhow::bail!("devices in flight at the halt never finished");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pushed_outside = devices
        .iter()
        .filter(|(m, d)| waves.get(*m).is_some_and(|w| *w > halt.wave) && d.snapshot().counters.pushes > 0)
        .count();
    let pushed_by_wave: BTreeMap<u32, usize> =
        devices.iter().filter(|(_, d)| d.snapshot().counters.pushes > 0).fold(BTreeMap::new(), |mut acc, (m, _)| {
            *acc.entry(waves.get(m).copied().unwrap_or(u32::MAX)).or_default() += 1;
            acc
        });

    // Take the failing devices out and resume.
    let macs: Vec<&str> = failing.keys().map(String::as_str).collect();
    let excluded = s
        .domain
        .exclude_from_rule(&s.who()?, id, ExcludeRequest { macs: Some(macs.join("\n")), mac_list_id: None })
        .await?;
    let t1 = Instant::now();
    s.domain.resume_rule(&s.who()?, id).await?;
    let done = loop {
        let v = s.domain.get_rule(&s.who()?, id).await?;
        eprint!(
            "\rresumed: wave {:?}, {}/{} succeeded ({:.1} s)",
            v.current_wave,
            v.counts.succeeded,
            v.counts.targets,
            t1.elapsed().as_secs_f64()
        );
        if v.status.is_final() || v.status == RuleStatus::Halted {
            break v;
        }
        if Instant::now() >= deadline {
            dump_unfinished(&s, id, &devices).await?;
            anyhow::bail!("the resumed rule did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!();
    let to_complete = t1.elapsed();
    let upgraded = devices.values().filter(|d| d.snapshot().wifi_sw == "04020021").count() as i64;
    // Healthy devices pushed more than once: a retry after a lost push or a stage timeout
    // (the simulator counts pushes received; a push lost in a shared read is not one).
    let pushed_twice =
        devices.iter().filter(|(m, d)| !failing.contains_key(*m) && d.snapshot().counters.pushes > 1).count();
    let lost = devices.values().filter(|d| d.snapshot().counters.lost_packets > 0).count();

    let by_kind: Vec<String> = halt.by_kind.iter().map(|k| format!("{} {:?}", k.count, k.kind)).collect();
    println!(
        "halt of a rollout: {} simulated V4.1 devices, {} failing ({} KiB image, push rate {}/s, {})",
        args.devices,
        failing.len(),
        args.image_bytes / 1024,
        args.push_rate,
        if args.database_url.is_some() { "PostgreSQL" } else { "SQLite" },
    );
    println!("| figure | value |\n|---|---|");
    println!("| start → halt | {:.1} s |", to_halt.as_secs_f64());
    println!(
        "| halt record | wave {}, {} failed of {} finished ({}), threshold `{}` |",
        halt.wave,
        halt.failed,
        halt.finished,
        by_kind.join(", "),
        halt.threshold
    );
    println!(
        "| in flight at the halt | {in_flight_at_halt}; after they finished: {} succeeded, {} failed |",
        settled_at.counts.succeeded, settled_at.counts.failed
    );
    println!("| devices pushed by wave (0 = canary) | {pushed_by_wave:?} |");
    println!("| devices pushed outside the waves started | {pushed_outside} |");
    println!("| exclude | {} excluded, {} skipped |", excluded.excluded, excluded.skipped);
    println!("| resume → {:?} | {:.1} s |", done.status, to_complete.as_secs_f64());
    println!(
        "| final counts | {} targets: {} succeeded, {} excluded, {} failed, {} pending |",
        done.counts.targets, done.counts.succeeded, done.counts.excluded, done.counts.failed, done.counts.pending
    );
    println!(
        "| simulator | {upgraded} upgraded; {pushed_twice} healthy devices pushed more than once; {lost} lost a packet in a shared read |"
    );
    let ok = pushed_outside == 0
        && done.status == RuleStatus::Completed
        && done.counts.succeeded == upgraded
        && done.counts.succeeded + done.counts.excluded == done.counts.targets;
    if !ok {
        println!("FAILED: the figures above break an invariant");
    }
    Ok(ok)
}

/// Prints the targets that did not succeed (and are not excluded) with the simulator's view
/// of each, so a run that does not finish says why.
async fn dump_unfinished(
    s: &crate::rules::Setup,
    id: i64,
    devices: &BTreeMap<String, DeviceHandle>,
) -> anyhow::Result<()> {
    let q = RuleDeviceQuery {
        filter: Some(ota_wire::rules::RuleDeviceFilter::NotSucceeded),
        per_page: Some(200),
        ..Default::default()
    };
    for d in s.domain.rule_devices(&s.who()?, id, q).await?.items {
        if d.stage != ota_wire::dto::UpgradeStage::Excluded && d.stage != ota_wire::dto::UpgradeStage::Failed {
            let snap = d.mac.as_ref().and_then(|m| devices.get(m)).map(|h| h.snapshot());
            eprintln!("\nnot finished: {d:?}\n  simulator: {snap:?}");
        }
    }
    Ok(())
}

/// MAC → wave of every target, from the rule's device list.
async fn wave_of(s: &crate::rules::Setup, id: i64) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut out = BTreeMap::new();
    let mut page = 1;
    loop {
        let q = RuleDeviceQuery { page: Some(page), per_page: Some(200), ..Default::default() };
        let p = s.domain.rule_devices(&s.who()?, id, q).await?;
        for d in &p.items {
            if let Some(m) = &d.mac {
                out.insert(m.clone(), d.wave);
            }
        }
        if p.items.is_empty() || out.len() as i64 >= p.total {
            break;
        }
        page += 1;
    }
    Ok(out)
}
