//! `/readyz` answers within a second whatever the database does: here our own PostgreSQL
//! (never the machine's), started on a free port for this test and then stopped under the API.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ota_testkit::{TestApi, TestDatabase, TestDomain, in_ci};
use reqwest::StatusCode;

use crate::support::*;

/// A throwaway PostgreSQL cluster run as the `postgres` user (`initdb` refuses root).
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

fn as_postgres(bin: &std::path::Path, program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .args(args)
        .output()
        .map_err(|e| format!("runuser: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

impl OwnPostgres {
    fn start() -> Result<OwnPostgres, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("/usr/lib/postgresql: {e}"))?
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = Command::new("chown").arg("postgres").arg(dir.path()).status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("chown postgres failed".into());
        }
        let data = dir.path().join("data");
        let data_str = data.to_string_lossy().into_owned();
        as_postgres(&bin, "initdb", &["-D", &data_str, "-A", "trust", "-U", "postgres", "--no-sync"])?;
        // A free port: bound and released at once (port 0 cannot be handed to postgres).
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.path().display());
        let log = dir.path().join("log").to_string_lossy().into_owned();
        as_postgres(&bin, "pg_ctl", &["-D", &data_str, "-o", &options, "-l", &log, "-w", "start"])?;
        Ok(OwnPostgres { bin, data, _dir: dir, port, running: true })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres?connect_timeout=2", self.port)
    }

    fn stop(&mut self) {
        if self.running {
            let data = self.data.to_string_lossy().into_owned();
            let _ = as_postgres(&self.bin, "pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
            self.running = false;
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_within_a_second_when_the_database_is_stopped() {
    let mut pg = match OwnPostgres::start() {
        Ok(pg) => pg,
        Err(e) if !in_ci() => {
            eprintln!("SKIPPED: cannot run a PostgreSQL of our own here: {e}");
            return;
        }
        Err(e) => panic!("CI: cannot run a PostgreSQL of our own: {e}"),
    };
    let api = TestApi::start_with(TestDomain::on(TestDatabase::postgres_at(&pg.url()), 1 << 20), Default::default());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let v = expect_status(client.get(api.url("/readyz")).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(v["status"], "ok");

    pg.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let r = client.get(api.url("/readyz")).send().await.unwrap();
        let took = started.elapsed();
        expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "database_unavailable").await;
        // The server's own budget is 0.8 s; the margin is for a loaded machine.
        assert!(took < Duration::from_millis(1500), "/readyz took {took:?}");
    }
    let v = expect_status(client.get(api.url("/healthz")).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(v["status"], "ok", "the process itself is alive");
}
