//! `ota-bench login-flood`: the management API under a flood of wrong logins.
//!
//! The API runs in a child process (this binary, hidden `login-serve` subcommand) on a fresh
//! SQLite database with `--users` users, `admin` among them; its first stdout line is
//! `{"api":"127.0.0.1:p","pid":n}` and it exits when its stdin closes. This process sends
//! `--requests` wrong logins at once from `--sources` loopback addresses (127.0.0.10 …, each
//! client socket bound to its own address: loopback is a /8 on Linux) against the user names,
//! samples the child's resident memory (`/proc/<pid>/status`) every 50 ms, and once the flood
//! is being hashed logs the admin in with the right password from an address that took no
//! part (127.0.0.250), timing it. Loopback only; nothing leaves the machine.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Clone, clap::Args)]
pub struct LoginFloodArgs {
    /// Wrong logins sent at once.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Loopback source addresses they come from (at most 200).
    #[arg(long, default_value_t = 50)]
    pub sources: usize,
    /// User names they are spread over (`admin` and `user01` …).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Password hash slots of the server (0: one per core, the default).
    #[arg(long, default_value_t = 0)]
    pub hash_slots: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoginServeArgs {
    #[arg(long)]
    pub users: usize,
    #[arg(long)]
    pub hash_slots: usize,
}

const ADMIN_PASSWORD: &str = "the admin's own password";

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The child: the API on a fresh database, until stdin closes.
pub fn serve(args: LoginServeArgs) -> anyhow::Result<bool> {
    let dir = crate::serve::TempDir::create()?;
    let url = format!("sqlite:{}", dir.0.join("ota.db").display());
    let db = ota_domain::Db::connect(&url, 10).context("connecting the database")?;
    db.migrate().context("migrating the database")?;
    let store = ota_domain::store::FsBlobStore::new(dir.0.join("blobs")).context("creating the blob store")?;
    let mut settings = ota_domain::DomainSettings::new(1 << 20, dir.0.join("staging"));
    settings.password_hash_slots = args.hash_slots;
    let domain = ota_domain::Domain::new(db, Arc::new(ota_domain::SystemClock), Arc::new(store), settings);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the API")?;
    let addr = listener.local_addr()?;
    actix_rt::System::new().block_on(async move {
        domain.create_admin("bench", "admin", ADMIN_PASSWORD).await.context("creating the admin")?;
        for i in 1..args.users {
            domain.create_admin("bench", &format!("user{i:02}"), "another user's password").await?;
        }
        let jwt = ota_api::JwtKeys::new(&rand::random::<[u8; 32]>(), chrono::Duration::hours(1));
        let server = ota_api::serve(listener, domain, jwt, ota_api::ApiSettings::default())?;
        let handle = server.handle();
        println!("{}", json!({ "api": addr.to_string(), "pid": std::process::id() }));
        actix_rt::spawn(async move {
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
            handle.stop(false).await;
        });
        server.await.context("serving")?;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(dir);
    Ok(true)
}

async fn login(client: &reqwest::Client, api: SocketAddr, user: &str, password: &str) -> (u16, String) {
    let sent = client
        .post(format!("http://{api}/api/v1/auth/login"))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            let code = r.json::<Value>().await.ok().and_then(|v| v["code"].as_str().map(str::to_owned));
            (status, code.unwrap_or_default())
        }
        Err(e) => (0, format!("transport: {e}")),
    }
}

fn client_from(last: u8) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()
        .context("building an HTTP client")
}

pub async fn run(args: LoginFloodArgs) -> anyhow::Result<bool> {
    if args.sources == 0 || args.sources > 200 || args.users == 0 {
        bail!("--sources must be 1–200 and --users at least 1");
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["login-serve", "--users", &args.users.to_string(), "--hash-slots", &args.hash_slots.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the API child")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready: Value = match tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await {
        Ok(Ok(Some(line))) => serde_json::from_str(&line).context("the ready line")?,
        _ => bail!("the API child did not start"),
    };
    let api: SocketAddr = ready["api"].as_str().context("ready line without api")?.parse()?;
    let pid = ready["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).context("ready line without pid")?;
    let (rss_before, _) = memory_kib(pid).context("reading the child's memory")?;

    let names: Vec<String> =
        std::iter::once("admin".to_owned()).chain((1..args.users).map(|i| format!("user{i:02}"))).collect();
    let clients: Vec<reqwest::Client> =
        (0..args.sources).map(|i| client_from(10 + i as u8)).collect::<anyhow::Result<_>>()?;

    let done = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let sampler = {
        let (done, peak) = (done.clone(), peak_rss.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some((rss, _)) = memory_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let started = Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::with_capacity(args.requests);
    for i in 0..args.requests {
        let client = clients[i % args.sources].clone();
        let user = names[(i / args.sources + i) % names.len()].clone();
        let answered = answered.clone();
        flood.push(tokio::spawn(async move {
            let out = login(&client, api, &user, "a wrong password").await;
            answered.fetch_add(1, Ordering::Relaxed);
            (out, started.elapsed())
        }));
    }
    // Once the flood is in the server (its memory grows with the hashes it runs), the admin.
    while memory_kib(pid).is_some_and(|(rss, _)| rss < rss_before + 16 * 1024)
        && started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let admin_sent = started.elapsed();
    let admin_started = Instant::now();
    let admin = login(&client_from(250)?, api, "admin", ADMIN_PASSWORD).await;
    let admin_took = admin_started.elapsed();
    let flood_answered_before_admin = answered.load(Ordering::Relaxed);

    let mut by_answer = std::collections::BTreeMap::<String, u64>::new();
    let mut last = Duration::ZERO;
    for task in flood {
        let ((status, code), at) = task.await.context("a flood task")?;
        *by_answer.entry(format!("{status} {code}")).or_insert(0) += 1;
        last = last.max(at);
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let (rss_after, hwm) = memory_kib(pid).context("reading the child's memory")?;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let report = json!({
        "requests": args.requests,
        "sources": args.sources,
        "users": args.users,
        "answers": by_answer,
        "flood_seconds": last.as_secs_f64(),
        "admin": { "status": admin.0, "code": admin.1, "sent_after_s": admin_sent.as_secs_f64(),
                   "took_s": admin_took.as_secs_f64(), "flood_answers_before": flood_answered_before_admin },
        "rss_mib": { "before": mib(rss_before), "peak_sampled": mib(peak_rss.load(Ordering::Relaxed)),
                     "peak_hwm": mib(hwm), "after": mib(rss_after) },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    let ok = admin.0 == 200 && admin_took < Duration::from_secs(2) && mib(hwm) < 300.0;
    println!(
        "admin {} in {:.2} s (target < 2 s); peak RSS {:.0} MiB (target < 300 MiB): {}",
        admin.0,
        admin_took.as_secs_f64(),
        mib(hwm),
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(ok)
}
