//! `ota-bench checks`: V4.1 `update_and_check` (`device-protocol.md#v41-check`) against nginx
//! answering a fixed reply of the same bytes, both driven by wrk with a fresh connection per
//! request (`Connection: close`, as GAgent), at each `--clients` count, three alternating
//! rounds ([`crate::peer::alternate`]'s method): ours, peer, ratio, p99s.
//!
//! The server child (see [`crate::serve`]) registers one device, whose first check stores its
//! versions; every measured check then reports the same versions and has nothing offered:
//! the 400 "no update" (9500) reply, the common answer in the field
//! (`proto-docs/lifecycle.md#device-checks-reads-first-writes-in-batches`). wrk sends one
//! request body, so every check is the same device's.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::control::Server;
use crate::exchange::exchange;
use crate::peer::{self, FixedReply, Nginx, WrkRequest, WrkRun};
use crate::report::{Table, millis};
use crate::serve::ServeArgs;

const API_HOST: &str = "api.gizwits.com";
const HW: &str = "00ESP826";
const SW: &str = "04020019";
const MAC: &str = "BE0000C0FFEE";
const PASSCODE: &str = "PCCHECKS01";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, clap::Args)]
pub struct ChecksArgs {
    /// Concurrent clients, one measurement each (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1000])]
    pub clients: Vec<usize>,
    /// Length of each wrk run, in seconds.
    #[arg(long, default_value_t = 8)]
    pub secs: u64,
    #[command(flatten)]
    pub server: ServeArgs,
}

/// One side's rounds at one client count.
#[derive(Default)]
struct Side {
    rates: Vec<f64>,
    p99_ms: Vec<f64>,
    requests: u64,
    socket_errors: u64,
    non_2xx: u64,
}

impl Side {
    fn add(&mut self, run: &WrkRun) {
        self.rates.push(run.per_second());
        self.p99_ms.push(run.p99.as_secs_f64() * 1e3);
        self.requests += run.requests;
        self.socket_errors += run.socket_errors;
        self.non_2xx += run.non_2xx;
    }
}

pub async fn run(args: ChecksArgs) -> anyhow::Result<bool> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs counts of at least 1");
    }
    peer::wrk_binary()?;
    let mut server = Server::start(&args.server, START_TIMEOUT).await?;
    let outcome = measure(&args, &mut server).await;
    server.stop(Duration::from_secs(30)).await?;
    let (table, problems) = outcome?;
    println!(
        "\n### ota-bench checks: V4.1 update_and_check vs nginx, {} s per run, {} rounds, {}\n",
        args.secs,
        peer::ROUNDS,
        if args.server.database_url.is_some() { "database from --database-url" } else { "SQLite (temp file)" },
    );
    print!("{}", table.render());
    println!("\nMachine: {}. Server, nginx and wrk share the cores.", crate::report::machine());
    Ok(crate::report::problems(&problems))
}

async fn measure(args: &ChecksArgs, server: &mut Server) -> anyhow::Result<(Table, Vec<String>)> {
    let info = server.info.clone();
    let raw = exchange(
        info.http,
        &ota_sim::http::register_plain(API_HOST, PASSCODE, MAC, &info.product_key),
        REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the device: {e}"))?;
    let did = ota_sim::http::parse_register(&raw).map_err(|e| anyhow::anyhow!("registering the device: {e}"))?;
    // The first check stores the versions; the second is what every measured check gets.
    let check = ota_sim::http::update_and_check(API_HOST, &did, PASSCODE, 1, HW, SW);
    for _ in 0..2 {
        exchange(info.http, &check, REQUEST_TIMEOUT).await.map_err(|e| anyhow::anyhow!("first checks: {e}"))?;
    }
    let reply = exchange(info.http, &check, REQUEST_TIMEOUT).await.map_err(|e| anyhow::anyhow!("a check: {e}"))?;
    if ota_sim::http::status_code(&reply) != Some(400) {
        bail!("the check was not answered 400 no update: {}", String::from_utf8_lossy(&reply));
    }
    let body = reply_body(&reply)?;
    let path = format!("/dev/ota/v4.1/update_and_check/{did}");
    let form = format!("passcode={PASSCODE}&type=1&hard_version={HW}&soft_version={SW}");
    let ours = WrkRequest::post_form(format!("http://{}{path}", info.http), form.clone());
    let root = tempfile::tempdir().context("nginx root")?;
    let fixed =
        FixedReply { path: path.clone(), status: 400, content_type: "application/json".into(), body: body.clone() };
    let nginx = Nginx::start(root.path(), &[fixed]).await?;
    let peer_request = nginx.as_ref().map(|n| WrkRequest::post_form(n.url(&path), form.clone()));

    let mut table = Table::default();
    let mut problems = Vec::new();
    let secs = Duration::from_secs(args.secs);
    for &clients in &args.clients {
        eprintln!("checks with {clients} clients...");
        let (mut o, mut p) = (Side::default(), Side::default());
        let before = refused(server).await?;
        for _ in 0..peer::ROUNDS {
            o.add(&peer::wrk(&ours, clients, secs).await?);
            if let Some(req) = &peer_request {
                p.add(&peer::wrk(req, clients, secs).await?);
            }
        }
        let rates = peer::Comparison { ours: o.rates.clone(), peer: p.rates.clone() };
        let p99s = peer::Comparison { ours: o.p99_ms.clone(), peer: p.p99_ms.clone() };
        let peer_rate = rates.peer_median().map_or_else(|| "n/a".to_owned(), peer::per_second_text);
        table.row(
            &format!("{clients} clients"),
            "checks / s: ours, nginx, ratio",
            format!(
                "{}, {}, {}",
                peer::per_second_text(rates.ours_median()),
                peer_rate,
                rates.ratio_text("nginx not installed")
            ),
            "median of 3 alternating wrk runs; ratio = median of the per-round ratios (target ≥ 0.8)",
        );
        let ms = |v: f64| millis(Duration::from_secs_f64(v / 1e3));
        table.row(
            &format!("{clients} clients"),
            "p99: ours, nginx, ratio",
            format!(
                "{}, {}, {}",
                ms(p99s.ours_median()),
                p99s.peer_median().map_or_else(|| "n/a".to_owned(), ms),
                p99s.ratio_text("nginx not installed")
            ),
            "wrk's latency distribution, median of the rounds (target ratio ≤ 3)",
        );
        let refusals = refused(server).await? - before;
        if refusals > 0 {
            problems.push(format!("{clients} clients: {refusals} checks refused by the passcode throttle (403)"));
        }
        if o.socket_errors > 0 || o.non_2xx != o.requests {
            problems.push(format!(
                "{clients} clients: {} socket errors, {} of {} replies were the 400 no-update reply",
                o.socket_errors, o.non_2xx, o.requests
            ));
        }
        if p.socket_errors > 0 {
            problems.push(format!("{clients} clients: nginx had {} socket errors", p.socket_errors));
        }
    }
    table.row(
        "reply",
        "bytes of the body (both sides)",
        body.len().to_string(),
        format!("{body}; nginx returns it with Content-Length, ours chunked in one write"),
    );
    Ok((table, problems))
}

/// Checks the gateway answered as a wrong passcode so far (all from 127.0.0.1: the
/// throttle's in-flight limit per address would show here).
async fn refused(server: &mut Server) -> anyhow::Result<u64> {
    let stats = server.call("stats", REQUEST_TIMEOUT).await?;
    let at = |k: &str| stats["throttle"][k].as_u64().unwrap_or(0);
    Ok(at("wrong") + at("unchecked"))
}

/// The body of a chunked or plain reply.
fn reply_body(raw: &[u8]) -> anyhow::Result<String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").context("a reply without a header end")?;
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Ok(rest.to_owned());
    }
    let mut body = String::new();
    let mut rest = rest;
    loop {
        let (size, after) = rest.split_once("\r\n").context("a chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(body);
        }
        body.push_str(after.get(..size).context("a short chunk")?);
        rest = after.get(size + 2..).context("a chunk end")?;
    }
}
