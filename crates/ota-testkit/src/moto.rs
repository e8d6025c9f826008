//! A real S3-compatible server for tests: moto's server mode (`moto_server`, from PyPI),
//! started on a free port with a bucket of the test's own, stopped when dropped.
//!
//! The executable is `OTA_TEST_MOTO`, or `target/moto-venv/bin/moto_server` (where `.ci/run`
//! installs it: `python3 -m venv target/moto-venv && target/moto-venv/bin/pip install
//! 'moto[server]'`). Without it, [`Moto::start`] fails the test in CI and skips it loudly
//! elsewhere (it answers `None`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_domain::store::s3::S3Settings;
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};

/// Credentials moto accepts (it checks none by default, but every request is signed as for a
/// real server).
pub const ACCESS_KEY_ID: &str = "ota-test-key";
pub const SECRET_ACCESS_KEY: &str = "ota-test-secret";
pub const REGION: &str = "us-east-1";

/// A running `moto_server`.
pub struct Moto {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// A bucket created for this server.
    pub bucket: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// The moto executable this test run uses.
pub fn moto_binary() -> PathBuf {
    match std::env::var_os("OTA_TEST_MOTO") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/moto-venv/bin/moto_server"),
    }
}

impl Moto {
    /// Starts moto and creates [`Moto::bucket`]. `None` (after a loud message) when moto is
    /// not installed and this is no CI run; in CI a missing moto fails the test.
    pub fn start() -> Option<Moto> {
        let binary = moto_binary();
        if !binary.is_file() {
            assert!(
                !crate::in_ci(),
                "moto_server is not at {} (set OTA_TEST_MOTO, or run .ci/run, which installs it), and CI needs it",
                binary.display()
            );
            eprintln!(
                "SKIPPED: moto_server is not at {} (install it: python3 -m venv target/moto-venv && \
                 target/moto-venv/bin/pip install 'moto[server]', or set OTA_TEST_MOTO); the S3 test did not run",
                binary.display()
            );
            return None;
        }
        let mut child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        // Werkzeug names the port it bound on stderr; one thread reads it, then keeps draining
        // the request log so moto never blocks on a full pipe.
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.split_once("Running on ").map(|(_, u)| u.trim().to_owned())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url);
                }
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        });
        let Ok(endpoint) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            panic!("moto_server did not say where it listens within 60 s:\n{log}");
        };
        let bucket = format!("ota-{}", hex_id());
        let moto = Moto { child: Some(child), endpoint, bucket, log };
        let status = moto.blocking(|m| {
            let url = m.bucket_handle().create_bucket(&m.credentials()).sign(Duration::from_secs(300));
            async move {
                reqwest::Client::new()
                    .put(url)
                    .header(reqwest::header::CONTENT_LENGTH, 0)
                    .send()
                    .await
                    .map(|r| r.status())
            }
        });
        match status {
            Ok(s) if s.is_success() => Some(moto),
            other => panic!("creating the bucket in moto at {}: {other:?}\n{}", moto.endpoint, moto.log()),
        }
    }

    fn credentials(&self) -> Credentials {
        Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    }

    fn bucket_handle(&self) -> Bucket {
        Bucket::new(self.endpoint.parse().expect("moto's URL"), UrlStyle::Path, self.bucket.clone(), REGION)
            .expect("a path-style bucket")
    }

    /// Runs `f` on a runtime of its own (usable from sync tests and inside async ones).
    fn blocking<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(&Moto) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(fut)
        })
        .join()
        .expect("the request thread")
    }

    /// Store settings for this server's bucket, caching in `cache_dir`.
    pub fn settings(&self, cache_dir: impl Into<PathBuf>) -> S3Settings {
        S3Settings {
            endpoint: self.endpoint.clone(),
            bucket: self.bucket.clone(),
            region: REGION.into(),
            access_key_id: ACCESS_KEY_ID.into(),
            secret_access_key: SECRET_ACCESS_KEY.into(),
            prefix: "firmware/".into(),
            path_style: true,
            cache_dir: cache_dir.into(),
            cache_max_bytes: 0,
        }
    }

    /// The `OTA_*` settings of an `ota up` node using this server (with its cache under its
    /// own data directory by default).
    pub fn node_env(&self) -> Vec<(String, String)> {
        [
            ("OTA_FIRMWARE_STORE", "s3"),
            ("OTA_S3_ENDPOINT", self.endpoint.as_str()),
            ("OTA_S3_BUCKET", self.bucket.as_str()),
            ("OTA_S3_REGION", REGION),
            ("OTA_S3_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("OTA_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("OTA_S3_PREFIX", "firmware/"),
            ("OTA_S3_PATH_STYLE", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Writes `bytes` under `key`, behind the store's back (e.g. to plant a corrupt object).
    pub fn put_raw(&self, key: &str, bytes: Vec<u8>) {
        let key = key.to_owned();
        let status = self.blocking(|m| {
            let url = m.bucket_handle().put_object(Some(&m.credentials()), &key).sign(Duration::from_secs(300));
            async move { reqwest::Client::new().put(url).body(bytes).send().await.map(|r| r.status()) }
        });
        assert!(matches!(status, Ok(s) if s.is_success()), "PUT {key} into moto: {status:?}");
    }

    /// The bytes under `key`, or `None` when there is no such object.
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        let key = key.to_owned();
        let got = self.blocking(|m| {
            let url = m.bucket_handle().get_object(Some(&m.credentials()), &key).sign(Duration::from_secs(300));
            async move {
                let r = reqwest::Client::new().get(url).send().await?;
                let status = r.status();
                let body = r.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            }
        });
        match got {
            Ok((s, body)) if s.is_success() => Some(body.to_vec()),
            Ok((s, _)) if s == reqwest::StatusCode::NOT_FOUND => None,
            other => panic!("GET {key} from moto: {other:?}"),
        }
    }

    /// Requests moto logged whose line contains `needle` (e.g. `"GET /ota-…/firmware/"`).
    pub fn requests_matching(&self, needle: &str) -> usize {
        self.sync_log();
        self.log.lock().map(|l| l.iter().filter(|line| line.contains(needle)).count()).unwrap_or(0)
    }

    /// moto writes a request's log line after its answer, read here by another thread: send a
    /// marker request and wait (up to 5 s) until its line is read, so every request answered
    /// before this call is in the log.
    fn sync_log(&self) {
        use std::io::{Read as _, Write as _};
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let marker = format!(
            "/ota-log-sync-{}-{}",
            std::process::id(),
            MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let Some(addr) = self.endpoint.strip_prefix("http://") else { return };
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(stream, "GET {marker} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let _ = stream.read_to_end(&mut Vec::new());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.log.lock().is_ok_and(|l| l.iter().any(|line| line.contains(&marker))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// moto's log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Stops the server (also done on drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hex_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
