//! `ota-bench device-plane`: the phases, each bounded in time, and the table.
//!
//! 1. **register**: `POST /dev/devices` (plain, `device-protocol.md#plain-registration`) for every
//!    device, a fresh connection each, `--register-concurrency` at a time.
//! 2. **connect**: every device logs in to the MQTT edge and subscribes
//!    (`device-protocol.md#mqtt-login`), at most `--login-concurrency` logins in flight; the
//!    sessions then stay up until the end. The gateway's `VmRSS` before and after gives its memory
//!    per session.
//! 3. **checks**: `--checks` V4.1 `update_and_check` requests (`device-protocol.md#v41-check`) over
//!    the registered devices, `--concurrency` clients, a fresh connection each. No device has an
//!    offer, so the answer is the 400 "no update" reply, the common case in the field.
//! 4. **fan-out**: the server publishes one message to `ser2cli_res/<did>` for `--pushes`
//!    connected devices; the devices count arrivals. Compared with the raw rate of the same
//!    broker (publish → the gateway's own bus link, no edge) and of a separate embedded
//!    broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::control::Server;
use crate::device::{FleetCounters, Identity, Session};
use crate::exchange::exchange;
use crate::report::{self, Table, kib, millis, per_second, percentile, rate, secs, thousands};
use crate::serve::ServeArgs;

/// The `Host` header the firmware sends; the server does not care.
const API_HOST: &str = "api.gizwits.com";

/// Versions reported by the checks: a V4.1 Wi-Fi module (`device-protocol.md#v41-check`).
const CHECK_HW: &str = "00ESP826";
const CHECK_SW: &str = "04020019";

/// One HTTP exchange may take at most this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The server child must be up within this.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Fan-out rounds (each a raw broker measurement, then one push per device); medians reported.
const FAN_OUT_ROUNDS: usize = 3;

/// Fan-out: give up when no push has arrived for this long.
const PUSH_STALL: Duration = Duration::from_secs(10);

/// Sockets this process needs besides the device sessions (runtime, pipes, check clients).
const FD_MARGIN: u64 = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct PlaneArgs {
    /// Devices to register and keep connected over MQTT.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// `update_and_check` requests to send.
    #[arg(long, default_value_t = 20_000)]
    pub checks: usize,
    /// Concurrent check clients.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Pushes in the fan-out phase (one per connected device, at most one per device).
    #[arg(long, default_value_t = 10_000)]
    pub pushes: usize,
    /// Concurrent registrations.
    #[arg(long, default_value_t = 64)]
    pub register_concurrency: usize,
    /// MQTT logins in flight at once.
    #[arg(long, default_value_t = 256)]
    pub login_concurrency: usize,
    /// Keep-alive declared in CONNECT (GAgent: 120 s); the devices ping at half of it.
    #[arg(long, default_value_t = 120)]
    pub keep_alive: u16,
    /// Upper bound on each phase, in seconds.
    #[arg(long, default_value_t = 300)]
    pub phase_timeout_secs: u64,
    #[command(flatten)]
    pub server: ServeArgs,
}

/// What the phases found wrong; any entry makes the exit status non-zero.
type Problems = Vec<String>;

pub async fn run(args: PlaneArgs) -> anyhow::Result<bool> {
    if args.devices == 0 || args.concurrency == 0 || args.register_concurrency == 0 || args.login_concurrency == 0 {
        bail!("--devices and the concurrency options must be at least 1");
    }
    if let Some(limit) = report::open_files_limit() {
        let needed = args.devices as u64 + args.concurrency as u64 + FD_MARGIN;
        if needed > limit {
            bail!(
                "{} device sessions and {} check clients need about {needed} open files, over this process's \
                 limit of {limit}; lower --devices",
                args.devices,
                args.concurrency
            );
        }
    }
    let mut server = Server::start(&args.server, START_TIMEOUT).await?;
    let mut table = Table::default();
    let mut problems = Problems::new();
    let mut fleet = JoinSet::new();
    let outcome = phases(&args, &mut server, &mut table, &mut problems, &mut fleet).await;
    if let Err(e) = outcome {
        problems.push(format!("{e:#}"));
    }
    // Close the sessions first, then let the server go.
    fleet.abort_all();
    while fleet.join_next().await.is_some() {}
    if let Err(e) = server.stop(Duration::from_secs(30)).await {
        problems.push(format!("{e:#}"));
    }

    println!(
        "\n### ota-bench device-plane: {} devices, {} checks × {} clients, {} pushes, pace {} ms, {}\n",
        args.devices,
        args.checks,
        args.concurrency,
        args.pushes,
        args.server.pace_ms,
        if args.server.database_url.is_some() { "database from --database-url" } else { "SQLite (temp file)" },
    );
    print!("{}", table.render());
    println!("\nMachine: {}. Server and devices share the cores.", report::machine());
    Ok(report::problems(&problems))
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

fn f64_at(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

async fn phases(
    args: &PlaneArgs,
    server: &mut Server,
    table: &mut Table,
    problems: &mut Problems,
    fleet: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let info = server.info.clone();
    eprintln!("server pid {} up: http {}, mqtt {}", info.pid, info.http, info.mqtt);

    // 1. register
    eprintln!("registering {} devices...", args.devices);
    let registered = register(info.http, &info.product_key, args.devices, args.register_concurrency, phase).await?;
    let ids: Vec<Identity> = registered.ids.iter().flatten().cloned().collect();
    table.row(
        "register",
        "registrations / s",
        rate(ids.len() as u64, registered.elapsed),
        format!(
            "{} × plain `POST /dev/devices` in {}, {} concurrent, fresh connection each; {} failed",
            ids.len(),
            secs(registered.elapsed),
            args.register_concurrency,
            registered.failures
        ),
    );
    if registered.failures > 0 {
        problems.push(format!(
            "{} registrations failed (first: {})",
            registered.failures,
            registered.first_error.as_deref().unwrap_or("?")
        ));
    }
    if ids.is_empty() {
        bail!("no device registered");
    }

    // 2. connect
    let before = server.call("stats", phase).await?;
    eprintln!("logging {} devices in over MQTT...", ids.len());
    let counters = Arc::new(FleetCounters::default());
    let connected = connect(args, info.mqtt, &info.product_key, &ids, counters.clone(), fleet, phase).await?;
    let after = server.call("stats", phase).await?;
    let sessions = connected.logged_in.len() as u64;
    let mut latencies: Vec<Duration> = connected.logged_in.iter().map(|(_, d)| *d).collect();
    latencies.sort_unstable();
    table.row(
        "connect",
        "connects / s",
        rate(sessions, connected.elapsed),
        format!(
            "{sessions} × CONNECT (MQTT 3.1) → CONNACK → 3 × SUBSCRIBE/SUBACK one at a time, in {}, \
             {} logins in flight; {} failed",
            secs(connected.elapsed),
            args.login_concurrency,
            connected.failures
        ),
    );
    table.row(
        "connect",
        "login time p50 / p99 / max",
        format!(
            "{} / {} / {}",
            millis(percentile(&latencies, 50.0)),
            millis(percentile(&latencies, 99.0)),
            millis(latencies.last().copied().unwrap_or_default())
        ),
        "TCP connect to the third SUBACK, per device",
    );
    let session_count = u64_at(&after, &["session_count"]);
    table.row(
        "connect",
        "sessions held by the gateway",
        thousands(session_count as f64),
        format!("edge `session_count`; gateway open fds {}", u64_at(&after, &["open_fds"])),
    );
    if connected.failures > 0 {
        problems.push(format!(
            "{} MQTT logins failed (first: {})",
            connected.failures,
            connected.first_error.as_deref().unwrap_or("?")
        ));
    }
    if session_count != sessions {
        problems.push(format!("the gateway holds {session_count} sessions, {sessions} devices logged in"));
    }
    let (rss0, rss1) = (u64_at(&before, &["vm_rss_kib"]), u64_at(&after, &["vm_rss_kib"]));
    table.row(
        "memory",
        "gateway VmRSS before / after connect",
        format!("{} / {}", kib(rss0), kib(rss1)),
        format!("server child pid {}, read from its /proc/self/status", info.pid),
    );
    if sessions > 0 {
        let per = rss1.saturating_sub(rss0) as f64 * 1024.0 / sessions as f64;
        table.row(
            "memory",
            "gateway memory per session",
            format!("{:.1} KiB", per / 1024.0),
            "(VmRSS with the sessions − VmRSS before) / sessions",
        );
    }

    // 3. checks
    eprintln!("sending {} update_and_check requests, {} at a time...", args.checks, args.concurrency);
    let checked = checks(info.http, &ids, args.checks, args.concurrency, phase).await?;
    let mut lat = checked.latencies.clone();
    lat.sort_unstable();
    let answered = lat.len() as u64;
    table.row(
        "checks",
        "`update_and_check` / s",
        rate(answered, checked.elapsed),
        format!(
            "{answered} answered in {}, {} clients, fresh connection each, over {} devices",
            secs(checked.elapsed),
            args.concurrency,
            ids.len()
        ),
    );
    table.row(
        "checks",
        "latency p50 / p99 / max",
        format!(
            "{} / {} / {}",
            millis(percentile(&lat, 50.0)),
            millis(percentile(&lat, 99.0)),
            millis(lat.last().copied().unwrap_or_default())
        ),
        "connect, request, whole reply, server close",
    );
    let replies: Vec<String> = checked.replies.iter().map(|(k, n)| format!("{n} × {k}")).collect();
    table.row("checks", "replies", replies.join(", "), "no device has an offer: 400 + 9500 is the expected answer");
    if checked.errors > 0 {
        problems.push(format!(
            "{} checks failed (first: {})",
            checked.errors,
            checked.first_error.as_deref().unwrap_or("?")
        ));
    }
    if let Some((other, n)) = checked.replies.iter().find(|(k, _)| k.as_str() != NO_UPDATE) {
        problems.push(format!("{n} checks got `{other}` instead of `{NO_UPDATE}`"));
    }

    // 4. fan-out
    let pushes = args.pushes.min(connected.logged_in.len());
    if pushes > 0 {
        fan_out(server, &ids, &connected, &counters, pushes, args.server.pace_ms, phase, table, problems).await?;
    }

    // End of run: did everything hold?
    let end = server.call("stats", phase).await?;
    let lost = counters.lost.load(Ordering::Relaxed);
    let held = u64_at(&end, &["session_count"]);
    table.row(
        "end",
        "sessions still held",
        format!("{} of {sessions}", thousands(held as f64)),
        format!(
            "lost {lost}; {} pings sent; edge refused logins {}, malformed {}, dropped outbound {}",
            counters.pings.load(Ordering::Relaxed),
            u64_at(&end, &["edge", "refused_logins"]),
            u64_at(&end, &["edge", "malformed"]),
            u64_at(&end, &["edge", "dropped_outbound"]),
        ),
    );
    table.row(
        "end",
        "gateway VmRSS / VmHWM",
        format!("{} / {}", kib(u64_at(&end, &["vm_rss_kib"])), kib(u64_at(&end, &["vm_hwm_kib"]))),
        format!(
            "{} threads; device process VmRSS {}",
            u64_at(&end, &["threads"]),
            report::proc_status_kib("self", "VmRSS:").map_or("?".to_owned(), kib)
        ),
    );
    let coalesced = counters.coalesced_reads.load(Ordering::Relaxed);
    let unexpected = counters.unexpected.load(Ordering::Relaxed);
    table.row(
        "end",
        "device reads holding > 1 packet",
        coalesced.to_string(),
        format!("GAgent would lose all but the first packet of such a read; unexpected packets {unexpected}"),
    );
    let http = &end["http"];
    if u64_at(http, &["bad_requests"]) + u64_at(http, &["read_timeouts"]) + u64_at(http, &["connections_refused"]) > 0 {
        problems.push(format!("device HTTP server counters: {http}"));
    }
    if lost > 0 || held != sessions {
        problems.push(format!("{lost} sessions lost; the gateway holds {held} of {sessions}"));
    }
    if u64_at(&end, &["edge", "dropped_outbound"]) > 0 || u64_at(&end, &["bus", "dropped"]) > 0 {
        problems.push(format!("messages dropped: edge {}, bus {}", end["edge"], end["bus"]));
    }
    if coalesced > 0 || unexpected > 0 {
        problems.push(format!("{coalesced} device reads held several packets; {unexpected} unexpected packets"));
    }
    Ok(())
}

struct Registered {
    ids: Vec<Option<Identity>>,
    failures: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

fn identity_of(i: usize) -> (String, String) {
    // 12 hex digits, unique per device; a 10-letter passcode like the module's.
    (format!("BE{i:010X}"), format!("PC{i:08}"))
}

async fn register(
    http: SocketAddr,
    product_key: &str,
    n: usize,
    concurrency: usize,
    phase: Duration,
) -> anyhow::Result<Registered> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    let started = Instant::now();
    for _ in 0..concurrency.min(n) {
        let (next, pk) = (next.clone(), product_key.to_owned());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return done;
                }
                let (mac, passcode) = identity_of(i);
                let request = ota_sim::http::register_plain(API_HOST, &passcode, &mac, &pk);
                let result = match exchange(http, &request, REQUEST_TIMEOUT).await {
                    Ok(raw) => ota_sim::http::parse_register(&raw)
                        .map(|did| Identity { did, passcode })
                        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&raw))),
                    Err(e) => Err(e),
                };
                done.push((i, result));
            }
        });
    }
    let mut out = Registered { ids: vec![None; n], failures: 0, first_error: None, elapsed: Duration::ZERO };
    let all = async {
        while let Some(done) = workers.join_next().await {
            for (i, result) in done.context("a registration worker panicked")? {
                match result {
                    Ok(id) => out.ids[i] = Some(id),
                    Err(e) => {
                        out.failures += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(phase, all).await.with_context(|| format!("registration took longer than {phase:?}"))??;
    out.elapsed = started.elapsed();
    Ok(out)
}

struct Connected {
    /// Index into the identities, and the login time.
    logged_in: Vec<(usize, Duration)>,
    failures: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn connect(
    args: &PlaneArgs,
    mqtt: SocketAddr,
    product_key: &str,
    ids: &[Identity],
    counters: Arc<FleetCounters>,
    fleet: &mut JoinSet<()>,
    phase: Duration,
) -> anyhow::Result<Connected> {
    let limiter = Arc::new(Semaphore::new(args.login_concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let product_key: Arc<str> = Arc::from(product_key);
    let started = Instant::now();
    for (i, identity) in ids.iter().enumerate() {
        let session = Session {
            index: i,
            addr: mqtt,
            product_key: product_key.clone(),
            identity: identity.clone(),
            keep_alive_secs: args.keep_alive,
            reply_timeout: REQUEST_TIMEOUT,
            counters: counters.clone(),
        };
        let permit = limiter.clone().acquire_owned();
        fleet.spawn(session.run(async move { permit.await.ok() }, ready_tx.clone()));
    }
    drop(ready_tx);
    let mut out = Connected { logged_in: Vec::new(), failures: 0, first_error: None, elapsed: Duration::ZERO };
    let all = async {
        let mut reported = 0;
        while reported < ids.len() {
            let Some((i, result)) = ready_rx.recv().await else { break };
            reported += 1;
            match result {
                Ok(took) => out.logged_in.push((i, took)),
                Err(e) => {
                    out.failures += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        }
    };
    tokio::time::timeout(phase, all).await.with_context(|| format!("MQTT logins took longer than {phase:?}"))?;
    out.elapsed = started.elapsed();
    Ok(out)
}

/// The reply every check should get: no offer.
const NO_UPDATE: &str = "400 no update (9500)";

struct Checked {
    latencies: Vec<Duration>,
    replies: BTreeMap<String, u64>,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
}

fn classify(raw: &[u8]) -> String {
    let body_has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    match ota_sim::http::status_code(raw) {
        Some(400) if body_has(b"\"error_code\":9500") => NO_UPDATE.to_owned(),
        Some(400) if body_has(b"\"error_code\":9502") => "400 no update (9502)".to_owned(),
        Some(200) => "200 offer".to_owned(),
        Some(code) => format!("{code} other"),
        None => "no status line".to_owned(),
    }
}

async fn checks(
    http: SocketAddr,
    ids: &[Identity],
    total: usize,
    concurrency: usize,
    phase: Duration,
) -> anyhow::Result<Checked> {
    let ids: Arc<[Identity]> = Arc::from(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    let started = Instant::now();
    for _ in 0..concurrency.min(total.max(1)) {
        let (next, ids) = (next.clone(), ids.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut replies: BTreeMap<String, u64> = BTreeMap::new();
            let mut errors = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return (latencies, replies, errors);
                }
                let id = &ids[k % ids.len()];
                let request = ota_sim::http::update_and_check(API_HOST, &id.did, &id.passcode, 1, CHECK_HW, CHECK_SW);
                let sent = Instant::now();
                match exchange(http, &request, REQUEST_TIMEOUT).await {
                    Ok(raw) => {
                        latencies.push(sent.elapsed());
                        *replies.entry(classify(&raw)).or_default() += 1;
                    }
                    Err(e) => errors.push(e),
                }
            }
        });
    }
    let mut out = Checked {
        latencies: Vec::new(),
        replies: BTreeMap::new(),
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
    };
    let all = async {
        while let Some(done) = workers.join_next().await {
            let (latencies, replies, errors) = done.context("a check worker panicked")?;
            out.latencies.extend(latencies);
            for (k, n) in replies {
                *out.replies.entry(k).or_default() += n;
            }
            out.errors += errors.len() as u64;
            if out.first_error.is_none() {
                out.first_error = errors.into_iter().next();
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(phase, all).await.with_context(|| format!("the checks took longer than {phase:?}"))??;
    out.elapsed = started.elapsed();
    Ok(out)
}

/// Removes a file when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[allow(clippy::too_many_arguments)]
async fn fan_out(
    server: &mut Server,
    ids: &[Identity],
    connected: &Connected,
    counters: &FleetCounters,
    pushes: usize,
    pace_ms: u64,
    phase: Duration,
    table: &mut Table,
    problems: &mut Problems,
) -> anyhow::Result<()> {
    // Same broker, no edge: what the bus alone does in this process, right now; alternated
    // with the fan-out, three rounds each, medians reported (the machine's load drifts).
    let file = TempFile(std::env::temp_dir().join(format!("ota-bench-{}-dids.txt", std::process::id())));
    let dids: String = connected.logged_in.iter().take(pushes).map(|(i, _)| format!("{}\n", ids[*i].did)).collect();
    std::fs::write(&file.0, dids).with_context(|| format!("writing {}", file.0.display()))?;
    let (mut raw_rates, mut fan_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut delivered, mut elapsed, mut publish_secs, mut raw_received) = (0u64, Duration::ZERO, 0.0, 0u64);
    let mut raw_complete = true;
    let mut pushed_errors = 0u64;
    for round in 0..FAN_OUT_ROUNDS {
        let raw = server.call(&format!("raw {pushes}"), phase).await?;
        let raw_rate = pushes as f64 / f64_at(&raw, "secs");
        raw_complete &= raw["complete"].as_bool().unwrap_or(false);
        raw_received = u64_at(&raw, &["received"]);
        eprintln!("pushing to {pushes} devices (round {} of {FAN_OUT_ROUNDS})...", round + 1);
        let target = counters.publishes.load(Ordering::Relaxed) + pushes as u64;
        let started = Instant::now();
        let pushed = server.call(&format!("push {}", file.0.display()), phase).await?;
        let mut last = counters.publishes.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        while last < target && last_progress.elapsed() < PUSH_STALL && started.elapsed() < phase {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = counters.publishes.load(Ordering::Relaxed);
            if now != last {
                (last, last_progress) = (now, Instant::now());
            }
        }
        let took = started.elapsed();
        let got = (last + pushes as u64).saturating_sub(target);
        let fan_rate = per_second(got, took);
        pushed_errors += u64_at(&pushed, &["errors"]);
        if got < pushes as u64 {
            problems.push(format!("round {}: only {got} of {pushes} pushes reached the devices", round + 1));
        }
        (delivered, elapsed, publish_secs) = (got, took, f64_at(&pushed, "publish_secs"));
        raw_rates.push(raw_rate);
        fan_rates.push(fan_rate);
        ratios.push(fan_rate / raw_rate);
        // Every device's pace has long passed before the next round.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rounds_text = |v: &[f64]| v.iter().map(|r| thousands(*r)).collect::<Vec<_>>().join(", ");
    let fan_text = rounds_text(&fan_rates);
    let raw_text = rounds_text(&raw_rates);
    let ratio_text = ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
    table.row(
        "fan-out",
        "pushes delivered / s",
        format!("{} /s", thousands(median(&mut fan_rates))),
        format!(
            "median of {FAN_OUT_ROUNDS} rounds ({fan_text}); last: {delivered} of {pushes} PUBLISHes on \
             `ser2cli_res/<did>` counted by the devices in {} (server publish loop {publish_secs:.2} s); one per \
             device, so the {pace_ms} ms per-device pace never waits",
            secs(elapsed),
        ),
    );
    table.row(
        "fan-out",
        "raw broker rate, same broker",
        format!("{} /s", thousands(median(&mut raw_rates))),
        format!(
            "median of {FAN_OUT_ROUNDS} rounds ({raw_text}), alternated with the fan-out; {pushes} publishes → the \
             gateway's own bus link (`ser2cli_res/<did nobody holds>`, no edge, no socket), {raw_received} received"
        ),
    );
    table.row(
        "fan-out",
        "fan-out / raw",
        format!("{:.2}", median(&mut ratios)),
        format!("median of the rounds' ratios ({ratio_text})"),
    );
    let separate = server.call(&format!("rawbus {pushes}"), phase).await?;
    let separate_rate = pushes as f64 / f64_at(&separate, "secs");
    table.row(
        "fan-out",
        "raw rate, separate embedded broker",
        format!("{} /s", thousands(separate_rate)),
        format!(
            "a second `Bus::start` in the server process, {pushes} publishes on `bench/raw` to its own receiver, {} received",
            u64_at(&separate, &["received"])
        ),
    );
    if pushed_errors > 0 {
        problems.push(format!("{pushed_errors} push publishes failed"));
    }
    if !raw_complete || !separate["complete"].as_bool().unwrap_or(false) {
        problems.push(format!("a raw broker measurement did not complete: separate {separate}"));
    }
    Ok(())
}
