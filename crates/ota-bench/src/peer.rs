//! Peers measured in the same run as our server, so every figure has a ratio that means
//! something on the machine it was taken on.
//!
//! - **nginx** from the Debian package (`/usr/sbin/nginx`, or `nginx` on `PATH`), two workers,
//!   `sendfile on`, access log off, serving a directory and fixed replies. When nginx is not
//!   installed the benches say so and print no ratio: a home-made peer would make the ratio
//!   meaningless.
//! - **wrk** (Debian package `wrk`) drives both sides with the same options: `Connection: close`
//!   on every request, so each request opens a fresh TCP connection, as GAgent does.
//! - [`alternate`] runs `ours, peer, ours, peer, ...` three times and keeps the median of each
//!   side and the median of the per-round ratios, so a slow moment of the machine weighs on both.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::report::thousands;

/// Rounds of each side in [`alternate`].
pub const ROUNDS: usize = 3;

/// How long nginx may take to accept connections.
const NGINX_START: Duration = Duration::from_secs(10);

/// Where a Debian package puts a program, else the first match on `PATH`.
fn program(name: &str, debian_path: &str) -> Option<PathBuf> {
    let debian = Path::new(debian_path);
    if debian.is_file() {
        return Some(debian.to_owned());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

/// The `wrk` binary; without it no HTTP figure can be taken.
pub fn wrk_binary() -> anyhow::Result<PathBuf> {
    program("wrk", "/usr/bin/wrk")
        .context("wrk is not installed (Debian: `apt-get install wrk`); the HTTP benches need it")
}

/// A fixed reply nginx answers at a path, for comparing a dynamic answer of the same size.
#[derive(Debug, Clone)]
pub struct FixedReply {
    /// Location, e.g. `/dev/ota/v4.1/update_and_check/x`.
    pub path: String,
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// A running nginx; stopped (and its files removed) when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// The nginx binary, when the Debian package (or any nginx on `PATH`) is installed.
    pub fn binary() -> Option<PathBuf> {
        program("nginx", "/usr/sbin/nginx")
    }

    /// Starts nginx on a free loopback port, serving `root` (files by path, with sendfile) and
    /// `replies` (fixed answers). `Ok(None)` when nginx is not installed.
    pub async fn start(root: &Path, replies: &[FixedReply]) -> anyhow::Result<Option<Nginx>> {
        let Some(binary) = Nginx::binary() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new().prefix("ota-bench-nginx-").tempdir()?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let root = std::fs::canonicalize(root).with_context(|| format!("nginx root {}", root.display()))?;
        open_for_workers(&root)?;
        let conf = config(dir.path(), &root, addr, replies);
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        std::fs::create_dir_all(dir.path().join("logs"))?;
        let mut child = Command::new(&binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + NGINX_START;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("logs/error.log")).unwrap_or_default();
                bail!("nginx exited at start ({status}): {}", log.trim());
            }
            if Instant::now() > deadline {
                bail!("nginx did not accept connections on {addr} within {NGINX_START:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(Nginx { child, addr, _dir: dir }))
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGKILL to the master; its workers leave with it (they watch the master's pipe), and
        // `kill_on_drop` reaps it.
        let _ = self.child.start_kill();
    }
}

/// A loopback port nobody listens on at the moment of asking.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// nginx workers run as `nobody` when started by root: let them read the served tree.
fn open_for_workers(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut dir = Some(root);
    while let Some(d) = dir {
        let meta = std::fs::metadata(d)?;
        let mode = meta.permissions().mode();
        if mode & 0o005 != 0o005 && d.starts_with(std::env::temp_dir()) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o005))?;
        }
        dir = d.parent();
    }
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        let mode = std::fs::metadata(&path)?.permissions().mode();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o004))?;
    }
    Ok(())
}

/// nginx's configuration: two workers (the machine's cores), sendfile, no access log.
fn config(dir: &Path, root: &Path, addr: SocketAddr, replies: &[FixedReply]) -> String {
    let d = dir.display();
    let mut locations = String::new();
    for r in replies {
        let body = r.body.replace('\\', "\\\\").replace('\'', "\\'");
        let _ = writeln!(
            locations,
            "        location = {} {{ default_type \"{}\"; return {} '{body}'; }}",
            r.path, r.content_type, r.status
        );
    }
    format!(
        "worker_processes 2;\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/logs/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   keepalive_timeout 0;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   default_type application/octet-stream;\n\
         \x20   server {{\n\
         \x20       listen {addr} backlog=4096;\n\
         \x20       root {root};\n\
         {locations}\
         \x20   }}\n\
         }}\n",
        root = root.display(),
    )
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
pub struct WrkRun {
    pub requests: u64,
    pub elapsed: Duration,
    pub bytes: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    pub non_2xx: u64,
}

impl WrkRun {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A request wrk sends.
#[derive(Debug, Clone)]
pub struct WrkRequest {
    pub url: String,
    pub method: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl WrkRequest {
    pub fn get(url: impl Into<String>) -> WrkRequest {
        WrkRequest { url: url.into(), method: "GET", headers: Vec::new(), body: None }
    }

    pub fn post_form(url: impl Into<String>, body: impl Into<String>) -> WrkRequest {
        WrkRequest {
            url: url.into(),
            method: "POST",
            headers: vec![("Content-Type".into(), "application/x-www-form-urlencoded".into())],
            body: Some(body.into()),
        }
    }

    /// The request as a wrk Lua script (method, headers, body).
    fn script(&self) -> String {
        let mut s = format!("wrk.method = {}\n", lua_string(self.method));
        for (k, v) in &self.headers {
            let _ = writeln!(s, "wrk.headers[{}] = {}", lua_string(k), lua_string(v));
        }
        if let Some(body) = &self.body {
            let _ = writeln!(s, "wrk.body = {}", lua_string(body));
        }
        s
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs wrk for `duration` with `connections` clients on two threads, each request on a fresh
/// connection (`Connection: close`).
pub async fn wrk(request: &WrkRequest, connections: usize, duration: Duration) -> anyhow::Result<WrkRun> {
    let binary = wrk_binary()?;
    let script = tempfile::Builder::new().prefix("ota-bench-wrk-").suffix(".lua").tempfile()?;
    std::fs::write(script.path(), request.script())?;
    let threads = connections.clamp(1, 2);
    let secs = duration.as_secs().max(1);
    let output = Command::new(&binary)
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("30s")
        .arg("--latency")
        .arg("-H")
        .arg("Connection: close")
        .arg("-s")
        .arg(script.path())
        .arg(&request.url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {}{}", output.status, text.trim(), String::from_utf8_lossy(&output.stderr).trim());
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Reads wrk 4's summary: the latency distribution, `N requests in Xs, Y MB read`, socket
/// errors and non-2xx counts.
fn parse_wrk(text: &str) -> anyhow::Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut seen_total = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("50%") {
            run.p50 = parse_duration(rest.trim())?;
        } else if let Some(rest) = line.strip_prefix("99%") {
            run.p99 = parse_duration(rest.trim())?;
        } else if line.contains(" requests in ") {
            // "123 requests in 10.01s, 45.67MB read"
            let (count, rest) = line.split_once(" requests in ").context("requests line")?;
            run.requests = count.trim().parse()?;
            let (elapsed, read) = rest.split_once(',').context("requests line")?;
            run.elapsed = parse_duration(elapsed.trim())?;
            run.bytes = parse_size(read.trim().trim_end_matches("read").trim())?;
            seen_total = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().last().unwrap_or("0");
                run.socket_errors += n.parse::<u64>().unwrap_or(0);
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = rest.trim().parse()?;
        }
    }
    if !seen_total {
        bail!("no `requests in` line");
    }
    Ok(run)
}

/// `1.23ms`, `450.00us`, `2.10s`, `1.5m`.
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).context("a unit")?;
    let (value, unit) = s.split_at(split);
    let value: f64 = value.parse().with_context(|| format!("duration {s:?}"))?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("unit {unit:?} in {s:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// `45.67MB`, `512.00KB`, `1.02GB`, `800B` (wrk's units are powers of 1024).
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).context("a unit")?;
    let (value, unit) = s.split_at(split);
    let value: f64 = value.parse().with_context(|| format!("size {s:?}"))?;
    let factor = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0_f64.powi(4),
        _ => bail!("unit {unit:?} in {s:?}"),
    };
    Ok((value * factor).round() as u64)
}

/// Each side's runs and the per-round ratios of a figure (`higher` is better).
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub ours: Vec<f64>,
    pub peer: Vec<f64>,
}

impl Comparison {
    pub fn ours_median(&self) -> f64 {
        median(&self.ours)
    }

    pub fn peer_median(&self) -> Option<f64> {
        (!self.peer.is_empty()).then(|| median(&self.peer))
    }

    /// The median of the per-round ratios ours / peer; `None` without a peer.
    pub fn ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> =
            self.ours.iter().zip(&self.peer).filter(|(_, p)| **p > 0.0).map(|(o, p)| o / p).collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    }

    /// `0.83` or `n/a (no nginx)`.
    pub fn ratio_text(&self, missing: &str) -> String {
        self.ratio().map_or_else(|| format!("n/a ({missing})"), |r| format!("{r:.2}"))
    }
}

/// The median of some values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

/// Runs `ours` and then `peer` (when there is one), [`ROUNDS`] times alternating, and gathers
/// what each returns (a figure where higher is better, e.g. requests per second).
pub async fn alternate<O, P, FO, FP>(mut ours: O, mut peer: Option<P>) -> anyhow::Result<Comparison>
where
    O: FnMut(usize) -> FO,
    P: FnMut(usize) -> FP,
    FO: Future<Output = anyhow::Result<f64>>,
    FP: Future<Output = anyhow::Result<f64>>,
{
    let mut out = Comparison::default();
    for round in 0..ROUNDS {
        out.ours.push(ours(round).await?);
        if let Some(peer) = peer.as_mut() {
            out.peer.push(peer(round).await?);
        }
    }
    Ok(out)
}

/// `12,345 /s` for a rate.
pub fn per_second_text(v: f64) -> String {
    format!("{} /s", thousands(v))
}

/// `1,004 MB/s` (decimal megabytes, as the issue's figures).
pub fn megabytes_text(bytes_per_second: f64) -> String {
    format!("{} MB/s", thousands(bytes_per_second / 1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.21ms    2.10ms  40.11ms   80.00%
    Req/Sec     6.01k   500.00     7.00k    70.00%
  Latency Distribution
     50%    4.90ms
     75%    6.00ms
     90%    7.80ms
     99%   12.50ms
  119876 requests in 10.00s, 45.67MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 119876
Requests/sec:  11987.60
Transfer/sec:      4.57MB
";

    #[test]
    fn wrk_summary_is_read() {
        let run = parse_wrk(SAMPLE).unwrap();
        assert_eq!(run.requests, 119_876);
        assert_eq!(run.elapsed, Duration::from_secs(10));
        assert_eq!(run.p50, Duration::from_micros(4_900));
        assert_eq!(run.p99, Duration::from_micros(12_500));
        assert_eq!(run.bytes, (45.67 * 1024.0 * 1024.0_f64).round() as u64);
        assert_eq!(run.socket_errors, 5);
        assert_eq!(run.non_2xx, 119_876);
        assert!((run.per_second() - 11_987.6).abs() < 0.01);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn units_are_read() {
        assert_eq!(parse_duration("450.00us").unwrap(), Duration::from_micros(450));
        assert_eq!(parse_duration("2.10s").unwrap(), Duration::from_millis(2_100));
        assert_eq!(parse_size("800B").unwrap(), 800);
        assert_eq!(parse_size("2.00KB").unwrap(), 2048);
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn ratios_are_medians_of_rounds() {
        let c = Comparison { ours: vec![80.0, 90.0, 10.0], peer: vec![100.0, 100.0, 100.0] };
        assert_eq!(c.ours_median(), 80.0);
        assert_eq!(c.ratio(), Some(0.8));
        let alone = Comparison { ours: vec![1.0], peer: vec![] };
        assert_eq!(alone.ratio(), None);
        assert_eq!(alone.ratio_text("nginx not installed"), "n/a (nginx not installed)");
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }

    #[test]
    fn wrk_script_escapes() {
        let r = WrkRequest::post_form("http://x/", "a=\"1\"&b=\\");
        let s = r.script();
        assert!(s.contains("wrk.method = \"POST\""));
        assert!(s.contains("wrk.body = \"a=\\\"1\\\"&b=\\\\\""));
    }

    /// nginx and wrk against each other: a fixed reply and a file, byte counts as served.
    /// Runs where both are installed; elsewhere it says why it did nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nginx_serves_a_file_and_a_fixed_reply_to_wrk() {
        if Nginx::binary().is_none() || wrk_binary().is_err() {
            eprintln!("SKIPPED: nginx or wrk is not installed");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("fw.bin"), vec![7_u8; 100_000]).unwrap();
        let reply = FixedReply {
            path: "/fixed".into(),
            status: 400,
            content_type: "text/html".into(),
            body: "nothing 'here'".into(),
        };
        let nginx = Nginx::start(root.path(), &[reply]).await.unwrap().expect("nginx installed");
        let file = wrk(&WrkRequest::get(nginx.url("/fw.bin")), 4, Duration::from_secs(1)).await.unwrap();
        assert!(file.requests > 0, "{file:?}");
        assert_eq!(file.non_2xx, 0, "{file:?}");
        assert!(file.bytes >= file.requests * 100_000, "{file:?}");
        let fixed = wrk(&WrkRequest::post_form(nginx.url("/fixed"), "a=1"), 4, Duration::from_secs(1)).await.unwrap();
        assert!(fixed.requests > 0, "{fixed:?}");
        assert_eq!(fixed.non_2xx, fixed.requests, "the fixed reply is a 400: {fixed:?}");
    }
}
