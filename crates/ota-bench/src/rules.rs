//! `ota-bench rules-preview`: rule previews over a large registry, and `ota-bench rollout`:
//! a simulated fleet pushed by a rule from start to 100 % succeeded.
//!
//! The preview bench seeds the device table directly (bulk INSERTs of what registrations and
//! checks would have written), then times the domain's preview of an all-devices rule and of
//! a region rule, as the API calls it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::prelude::*;
use ota_domain::access::Capability;
use ota_domain::firmware::FirmwareUpload;
use ota_domain::schema::devices;
use ota_domain::store::{FsBlobStore, StagingWriter};
use ota_domain::{Authorized, Db, Domain, DomainSettings, Principal, SystemClock};
use ota_gateway::{EdgeSettings, Gateway, GatewaySettings, PushSettings};
use ota_wire::rules::{DailyWindow, Period, RuleBody, StartRuleRequest, TargetKind};

const PROVINCES: [&str; 31] = [
    "北京市",
    "天津市",
    "河北省",
    "山西省",
    "内蒙古自治区",
    "辽宁省",
    "吉林省",
    "黑龙江省",
    "上海市",
    "江苏省",
    "浙江省",
    "安徽省",
    "福建省",
    "江西省",
    "山东省",
    "河南省",
    "湖北省",
    "湖南省",
    "广东省",
    "广西壮族自治区",
    "海南省",
    "重庆市",
    "四川省",
    "贵州省",
    "云南省",
    "西藏自治区",
    "陕西省",
    "甘肃省",
    "青海省",
    "宁夏回族自治区",
    "新疆维吾尔自治区",
];
const OLD: [&str; 4] = ["04020006", "04020010", "04020015", "04020019"];

#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// Devices in the registry.
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: u64,
    /// `postgres://…` to run on PostgreSQL (a fresh schema is not made: use an empty
    /// database); default a SQLite file in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Timed previews per rule.
    #[arg(long, default_value_t = 20)]
    pub repeat: u32,
}

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Simulated devices (V4.1 Wi-Fi, in a child process).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// `postgres://…`; default SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// `host:port` of an external MQTT broker (e.g. 127.0.0.1:1883); default the embedded one.
    #[arg(long)]
    pub broker: Option<String>,
    /// Pushes per second of the gateway's scheduler.
    #[arg(long, default_value_t = 500)]
    pub push_rate: u32,
    /// Firmware image size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub image_bytes: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Devices the simulator starts per second.
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u32,
}

pub(crate) struct Setup {
    pub(crate) domain: Domain,
    pub(crate) who: Principal,
    pub(crate) product_key: String,
    _dir: crate::serve::TempDir,
}

impl Setup {
    /// The admin's session with the capability a domain call needs.
    pub(crate) fn who<C: Capability>(&self) -> anyhow::Result<Authorized<C>> {
        Authorized::check(self.who.clone()).context("the bench admin lacks a capability")
    }
}

pub(crate) async fn setup(database_url: Option<String>) -> anyhow::Result<Setup> {
    let dir = crate::serve::TempDir::create()?;
    let url = database_url.unwrap_or_else(|| format!("sqlite:{}", dir.0.join("ota.db").display()));
    let db = Db::connect(&url, 16).context("connecting the database")?;
    db.migrate().context("migrating the database")?;
    let store = FsBlobStore::new(dir.0.join("blobs")).context("creating the blob store")?;
    let settings = DomainSettings::new(64 * 1024 * 1024, dir.0.join("staging"));
    let domain = Domain::new(db, Arc::new(SystemClock), Arc::new(store), settings);
    let tag = hex::encode(rand::random::<[u8; 4]>());
    let (user, password) = (format!("bench-{tag}"), "bench-password-not-secret");
    domain.create_admin(&format!("bench-{tag}"), &user, password).await.context("creating the admin")?;
    let record = domain.verify_login(&user, password).await.context("logging in")?;
    let who = domain.session_principal(record.id, domain.clock.now_ms()).await.context("principal")?;
    let product = domain
        .create_product(&Authorized::check(who.clone())?, "bench lamp", None, None)
        .await
        .context("creating the product")?;
    Ok(Setup { domain, who, product_key: product.product_key, _dir: dir })
}

/// Uploads verified V4.1 Wi-Fi firmware 04020021 of `size` bytes.
pub(crate) async fn firmware(s: &Setup, size: usize) -> anyhow::Result<i64> {
    let staging: PathBuf = s.domain.settings.staging_dir.clone();
    tokio::fs::create_dir_all(&staging).await?;
    let mut w = StagingWriter::create(&staging, "GAgent_00ESP826_04020021.bin", 64 * 1024 * 1024).await?;
    let image: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    w.write(&image).await.map_err(|e| anyhow::anyhow!("staging: {e:?}"))?;
    let file = w.finish().await?;
    let upload = FirmwareUpload {
        name: Some("ga-21".into()),
        fw_type: Some("wifi".into()),
        push_method: Some("V4.1".into()),
        hard_version: Some("00ESP826".into()),
        soft_version: Some("04020021".into()),
        file: Some(file),
    };
    let fw = s.domain.create_firmware(&s.who()?, &s.product_key, upload).await.context("uploading firmware")?;
    s.domain.mark_firmware_verified(s.who.tenant_id(), fw.id).await.context("verifying")?;
    Ok(fw.id)
}

/// The product's devices online in the database, after the gateway's pending presence writes.
pub(crate) async fn online_now(s: &Setup, gateway: &ota_gateway::Gateway) -> anyhow::Result<i64> {
    gateway.presence.flush().await;
    let query = ota_wire::dto::DeviceListQuery { online: Some(true), per_page: Some(1), ..Default::default() };
    Ok(s.domain.list_devices(&s.who()?, &s.product_key, query).await?.total)
}

pub(crate) fn body(target: TargetKind, regions: Vec<String>) -> RuleBody {
    RuleBody {
        name: None,
        target,
        regions,
        macs: None,
        mac_list_id: None,
        old_versions: OLD.iter().map(|v| v.to_string()).collect(),
        period: Period { start: "2026-01-01".into(), end: "2030-12-31".into() },
        daily_window: DailyWindow { start_hour: 0, end_hour: 24 },
        policy: None,
    }
}

/// Writes `n` devices as registrations and checks would have: V4.1 Wi-Fi on one of four
/// old versions (and some on other series), spread over 31 provinces, a third online.
async fn seed(s: &Setup, n: u64) -> anyhow::Result<()> {
    let key = s.product_key.clone();
    let product_id: i64 = s
        .domain
        .db
        .run(move |c| {
            use ota_domain::schema::products;
            Ok(products::table.filter(products::product_key.eq(key)).select(products::id).first(c)?)
        })
        .await?;
    let tenant_id = s.who.tenant_id();
    let started = Instant::now();
    const CHUNK: u64 = 1000;
    let mut done = 0;
    while done < n {
        let upto = (done + 50_000).min(n);
        let from = done;
        s.domain
            .db
            .write(move |c| {
                let mut i = from;
                while i < upto {
                    let end = (i + CHUNK).min(upto);
                    let rows: Vec<_> = (i..end)
                        .map(|k| {
                            let sw = if k % 10 == 9 { "04030001" } else { OLD[(k % 4) as usize] };
                            (
                                devices::tenant_id.eq(tenant_id),
                                devices::product_id.eq(product_id),
                                devices::did.eq(format!("bench{k:017}")),
                                devices::mac.eq(format!("{:012X}", 0x5CCF_0000_0000u64 + k)),
                                devices::passcode.eq("ABCDEFGHIJ"),
                                devices::registered_via.eq("plain"),
                                devices::push_method.eq("V4.1"),
                                devices::wifi_hw.eq("00ESP826"),
                                devices::wifi_sw.eq(sw),
                                devices::province.eq(PROVINCES[(k % 31) as usize]),
                                devices::online.eq(k % 3 == 0),
                                devices::created_at.eq(0i64),
                                devices::updated_at.eq(0i64),
                            )
                        })
                        .collect();
                    ota_domain::on_backend!(c, diesel::insert_into(devices::table).values(&rows))?;
                    i = end;
                }
                Ok(())
            })
            .await?;
        done = upto;
        eprint!("\rseeding: {done}/{n} devices ({:.0} s)", started.elapsed().as_secs_f64());
    }
    eprintln!();
    // What autovacuum does to a table after a bulk load, done now: planner statistics, and
    // (PostgreSQL) the visibility map that lets counts read the index alone.
    s.domain
        .db
        .run(|c| {
            use diesel::connection::SimpleConnection;
            match c {
                ota_domain::db::DbConn::Pg(pg) => pg.batch_execute("VACUUM ANALYZE devices")?,
                ota_domain::db::DbConn::Sqlite(lite) => lite.batch_execute("ANALYZE")?,
            }
            Ok(())
        })
        .await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

pub async fn preview(args: PreviewArgs) -> anyhow::Result<bool> {
    let backend = if args.database_url.is_some() { "PostgreSQL" } else { "SQLite" };
    let s = setup(args.database_url.clone()).await?;
    let fw = firmware(&s, 4096).await?;
    seed(&s, args.devices).await?;
    let cases = [
        ("all devices", body(TargetKind::All, Vec::new())),
        ("region (3 provinces)", body(TargetKind::Regions, vec!["广东省".into(), "浙江省".into(), "四川省".into()])),
        ("region (1 city form)", body(TargetKind::Regions, vec!["广东省-广州市".into()])),
    ];
    println!("rule preview over {} devices on {backend}, {} runs each", args.devices, args.repeat);
    for (name, b) in cases {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..args.repeat {
            let t = Instant::now();
            last = Some(s.domain.preview_draft(&s.who()?, fw, b.clone()).await?);
            times.push(t.elapsed());
        }
        times.sort();
        let p = last.unwrap_or_default();
        println!(
            "  {name:<22} targets {:>8}  online {:>7}  p50 {:>7.1} ms  max {:>7.1} ms",
            p.targets,
            p.online,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    // Starting the all-devices rule takes its targets (one record per device).
    let rule = s.domain.create_rule(&s.who()?, fw, body(TargetKind::All, Vec::new())).await?;
    let t = Instant::now();
    let started = s
        .domain
        .start_rule(&s.who()?, rule.request_id, StartRuleRequest { confirm_stable: true, accept_terms: true })
        .await?;
    println!("  start (take {} targets): {:.1} s", started.target_devices, t.elapsed().as_secs_f64());
    Ok(true)
}

pub async fn rollout(args: RolloutArgs) -> anyhow::Result<bool> {
    let s = setup(args.database_url.clone()).await?;
    let bus = crate::serve::bus_config(args.broker.as_deref())?;
    let settings = GatewaySettings {
        edge: EdgeSettings { gateway_id: "bench".into(), pace: Duration::from_millis(20), ..EdgeSettings::default() },
        push: PushSettings { rate_per_second: args.push_rate, interval: Duration::from_millis(200) },
        ..crate::serve::loopback_gateway(bus)
    };

    let gateway = Gateway::start(s.domain.clone(), settings).await.context("starting the gateway")?;
    let fw = firmware(&s, args.image_bytes).await?;

    // The fleet runs in a child process (one process may hold 20,000 sockets here): the
    // simulator as `ota sim` runs it, registering, provisioning, logging in and checking.
    let t = Instant::now();
    let exe = std::env::current_exe().context("locating ota-bench")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["sim", "--quiet", "--http", &gateway.http_addr.to_string(), "--mqtt", &gateway.mqtt_addr.to_string()])
        .args([
            "--product-key",
            &s.product_key,
            "--v41",
            &args.devices.to_string(),
            "--connect-rate",
            &args.connect_rate.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the simulated fleet")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let online = online_now(&s, &gateway).await?;
        eprint!("\rconnecting: {online}/{} online ({:.0} s)", args.devices, t.elapsed().as_secs_f64());
        if online == args.devices as i64 {
            break;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the simulated fleet exited early: {status}");
        }
        anyhow::ensure!(Instant::now() < deadline, "only {online} devices came online");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!();
    let connect = t.elapsed();

    let mut b = body(TargetKind::All, Vec::new());
    b.old_versions = vec!["04020006".into()];
    let rule = s.domain.create_rule(&s.who()?, fw, b).await?;
    let t = Instant::now();
    let started = s
        .domain
        .start_rule(&s.who()?, rule.request_id, StartRuleRequest { confirm_stable: true, accept_terms: true })
        .await?;
    let targets = started.target_devices;
    loop {
        let v = s.domain.get_rule(&s.who()?, rule.request_id).await?;
        eprint!(
            "\rrollout: {}/{targets} succeeded, {} notified, {} failed ({:.0} s)",
            v.counts.succeeded,
            v.counts.notified,
            v.counts.failed,
            t.elapsed().as_secs_f64()
        );
        if v.counts.succeeded == targets {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the rollout did not finish in time");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let wall = t.elapsed();
    eprintln!();
    let _ = child.kill().await;
    println!(
        "rollout of {} simulated V4.1 devices ({} KiB image, push rate {}/s, {}, broker {}):",
        args.devices,
        args.image_bytes / 1024,
        args.push_rate,
        if args.database_url.is_some() { "PostgreSQL" } else { "SQLite" },
        args.broker.as_deref().unwrap_or("embedded"),
    );
    println!("  fleet online in {:.1} s", connect.as_secs_f64());
    println!(
        "  start → 100 % succeeded: {:.1} s ({:.0} devices/s)",
        wall.as_secs_f64(),
        targets as f64 / wall.as_secs_f64()
    );
    Ok(true)
}
