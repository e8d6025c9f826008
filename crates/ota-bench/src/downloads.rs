//! `ota-bench downloads`: firmware downloads from the gateway's device HTTP against nginx
//! serving the same file with `sendfile`, in the same run.
//!
//! The gateway runs in this process on a fresh database (SQLite unless `--database-url`), with
//! verified V4.1 MCU firmware of `--size` bytes, served by `/dev/ota/v4.1/firmware/<id>` (what
//! `latest` offers; it needs no upgrade record, so every request is the same download: a
//! database read, the first write, then `sendfile`). nginx (the Debian package, two workers,
//! `sendfile on`) serves a copy of the image from a directory. wrk drives both with a fresh
//! connection per request, as GAgent does, at each `--connections` count; each figure is the
//! median of three alternating rounds ([`crate::peer::alternate`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ota_domain::firmware::FirmwareUpload;
use ota_domain::store::StagingWriter;
use ota_gateway::{BusConfig, Gateway};

use crate::peer::{self, Nginx, WrkRequest, WrkRun};
use crate::report::{Table, millis};
use crate::rules::{Setup, setup};

#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// Image size in bytes (default 1 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
    /// Concurrent connections, one wrk run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000])]
    pub connections: Vec<usize>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Database (`postgres://…` or `sqlite:<path>`); default: SQLite in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// Verified V4.1 MCU firmware of `size` bytes; its id and its bytes.
async fn mcu_firmware(s: &Setup, size: usize) -> anyhow::Result<(i64, Vec<u8>)> {
    let staging = s.domain.settings.staging_dir.clone();
    tokio::fs::create_dir_all(&staging).await?;
    let mut w = StagingWriter::create(&staging, "mcu_00010002.bin", 64 * 1024 * 1024).await?;
    let image: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    w.write(&image).await.map_err(|e| anyhow::anyhow!("staging: {e:?}"))?;
    let upload = FirmwareUpload {
        name: Some("mcu-2".into()),
        fw_type: Some("mcu".into()),
        push_method: Some("V4.1".into()),
        hard_version: Some("00STM032".into()),
        soft_version: Some("00010002".into()),
        file: Some(w.finish().await?),
    };
    let fw = s.domain.create_firmware(&s.who()?, &s.product_key, upload).await.context("uploading firmware")?;
    s.domain.mark_firmware_verified(s.who.tenant_id(), fw.id).await.context("verifying")?;
    Ok((fw.id, image))
}

/// Checks one download of `url` before measuring: status 200 and every byte of the image.
async fn check_once(url: &str, image: &[u8]) -> anyhow::Result<()> {
    let reply = reqwest::get(url).await.with_context(|| format!("GET {url}"))?;
    if reply.status() != reqwest::StatusCode::OK {
        bail!("GET {url}: {}", reply.status());
    }
    let body = reply.bytes().await?;
    if body[..] != image[..] {
        bail!("GET {url}: {} bytes that are not the image", body.len());
    }
    Ok(())
}

pub async fn run(args: DownloadArgs) -> anyhow::Result<bool> {
    peer::wrk_binary()?;
    let s = setup(args.database_url.clone()).await?;
    let (fw, image) = mcu_firmware(&s, args.size).await?;
    let settings = crate::serve::loopback_gateway(BusConfig::Embedded { listen: None });

    let gateway = Gateway::start(s.domain.clone(), settings).await.context("starting the gateway")?;
    let ours_url = format!("http://{}/dev/ota/v4.1/firmware/{fw}", gateway.http_addr);

    let root = tempfile::Builder::new().prefix("ota-bench-downloads-").tempdir()?;
    std::fs::write(root.path().join("mcu_00010002.bin"), &image)?;
    let nginx = Nginx::start(root.path(), &[]).await?;
    let peer_url = nginx.as_ref().map(|n| n.url("/mcu_00010002.bin"));

    check_once(&ours_url, &image).await.context("the gateway's download")?;
    if let Some(url) = &peer_url {
        check_once(url, &image).await.context("nginx's download")?;
    }

    println!("# ota-bench downloads\n");
    println!("{}", crate::report::machine());
    println!(
        "image {} bytes; wrk, 2 threads, a fresh connection per request, {} s per run; median of {} alternating rounds; \
         peer: {}\n",
        args.size,
        args.seconds,
        peer::ROUNDS,
        if nginx.is_some() { "nginx (2 workers, sendfile on)" } else { "none (nginx is not installed)" }
    );

    let duration = Duration::from_secs(args.seconds);
    let mut table = Table::default();
    let mut clean = true;
    for &connections in &args.connections {
        let ours_runs: Arc<std::sync::Mutex<Vec<WrkRun>>> = Arc::default();
        let peer_runs: Arc<std::sync::Mutex<Vec<WrkRun>>> = Arc::default();
        let measure = |url: String, runs: Arc<std::sync::Mutex<Vec<WrkRun>>>| async move {
            let run = peer::wrk(&WrkRequest::get(url), connections, duration).await?;
            let rate = run.bytes_per_second();
            runs.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(run);
            Ok::<f64, anyhow::Error>(rate)
        };
        let comparison = peer::alternate(
            |_| measure(ours_url.clone(), Arc::clone(&ours_runs)),
            peer_url.clone().map(|url| {
                let runs = Arc::clone(&peer_runs);
                move |_| measure(url.clone(), Arc::clone(&runs))
            }),
        )
        .await?;
        let ours = ours_runs.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
        let theirs = peer_runs.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
        let phase = format!("{connections} connections");
        let peer_mb = comparison.peer_median().map_or("n/a".to_owned(), peer::megabytes_text);
        table.row(
            &phase,
            "throughput: gateway / nginx",
            format!("{} / {}", peer::megabytes_text(comparison.ours_median()), peer_mb),
            format!("ratio {}", comparison.ratio_text("no nginx")),
        );
        table.row(
            &phase,
            "downloads per second: gateway / nginx",
            format!("{} / {}", rate_median(&ours), rate_median(&theirs)),
            "",
        );
        table.row(
            &phase,
            "latency p50 / p99: gateway",
            format!("{} / {}", millis(median_of(&ours, |r| r.p50)), millis(median_of(&ours, |r| r.p99))),
            "whole download, connect to last byte",
        );
        if !theirs.is_empty() {
            table.row(
                &phase,
                "latency p50 / p99: nginx",
                format!("{} / {}", millis(median_of(&theirs, |r| r.p50)), millis(median_of(&theirs, |r| r.p99))),
                "",
            );
        }
        let errors: u64 = ours.iter().map(|r| r.socket_errors + r.non_2xx).sum();
        let peer_errors: u64 = theirs.iter().map(|r| r.socket_errors + r.non_2xx).sum();
        table.row(
            &phase,
            "socket errors + non-200: gateway / nginx",
            format!("{errors} / {peer_errors}"),
            "all rounds",
        );
        clean &= errors == 0;
    }
    println!("{}", table.render());
    drop(nginx);
    drop(gateway);
    Ok(clean)
}

fn rate_median(runs: &[WrkRun]) -> String {
    if runs.is_empty() {
        return "n/a".to_owned();
    }
    let rates: Vec<f64> = runs.iter().map(WrkRun::per_second).collect();
    peer::per_second_text(peer::median(&rates))
}

fn median_of(runs: &[WrkRun], f: impl Fn(&WrkRun) -> Duration) -> Duration {
    let secs: Vec<f64> = runs.iter().map(|r| f(r).as_secs_f64()).collect();
    if secs.is_empty() { Duration::ZERO } else { Duration::from_secs_f64(peer::median(&secs)) }
}
