//! Test support: a database per test (a SQLite file, or a PostgreSQL schema), a domain on a
//! fake clock, and the API served on port 0.
//!
//! The backend comes from `OTA_TEST_DATABASE`: unset or `sqlite` → a temporary SQLite file;
//! `postgres` → a fresh schema in the database at `OTA_TEST_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends.

pub mod cluster;
pub mod moto;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};
use ota_api::{ApiSettings, JwtKeys};
use ota_domain::store::FsBlobStore;
use ota_domain::{Db, Domain, DomainSettings, FakeClock};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

impl TestBackend {
    /// The backend this test run uses.
    pub fn from_env() -> TestBackend {
        match std::env::var("OTA_TEST_DATABASE").as_deref() {
            Ok("postgres") | Ok("postgresql") | Ok("pg") => TestBackend::Postgres,
            _ => TestBackend::Sqlite,
        }
    }
}

pub fn pg_base_url() -> String {
    std::env::var("OTA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// True when running under CI, where a missing service is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// One isolated database.
pub struct TestDatabase {
    pub url: String,
    pub backend: TestBackend,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

impl TestDatabase {
    pub fn new() -> TestDatabase {
        match TestBackend::from_env() {
            TestBackend::Sqlite => Self::sqlite(),
            TestBackend::Postgres => Self::postgres().unwrap_or_else(|e| {
                panic!("OTA_TEST_DATABASE=postgres but PostgreSQL at {} is unreachable: {e}", pg_base_url())
            }),
        }
    }

    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("ota.db").display());
        TestDatabase { url, backend: TestBackend::Sqlite, _dir: Some(dir), pg_schema: None }
    }

    /// A PostgreSQL database at `url` used as it is (e.g. a server a test starts itself).
    pub fn postgres_at(url: &str) -> TestDatabase {
        TestDatabase { url: url.to_owned(), backend: TestBackend::Postgres, _dir: None, pg_schema: None }
    }

    /// A new schema in the test PostgreSQL, selected through `search_path` in the URL.
    pub fn postgres() -> Result<TestDatabase, String> {
        let base = pg_base_url();
        let mut conn = PgConnection::establish(&base).map_err(|e| e.to_string())?;
        let schema = format!("t_{}", hex_id());
        conn.batch_execute(&format!("CREATE SCHEMA {schema}")).map_err(|e| e.to_string())?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Ok(TestDatabase { url, backend: TestBackend::Postgres, _dir: None, pg_schema: Some(schema) })
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(schema) = &self.pg_schema
            && let Ok(mut conn) = PgConnection::establish(&pg_base_url())
        {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

fn hex_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A migrated database, a file store and a domain on a fake clock.
pub struct TestDomain {
    pub domain: Domain,
    pub clock: FakeClock,
    pub db: TestDatabase,
    pub data_dir: tempfile::TempDir,
}

impl TestDomain {
    pub fn new() -> TestDomain {
        Self::with_limit(8 * 1024 * 1024)
    }

    pub fn with_limit(max_firmware_bytes: u64) -> TestDomain {
        Self::on(TestDatabase::new(), max_firmware_bytes)
    }

    /// A domain on a given database (e.g. always PostgreSQL, whatever `OTA_TEST_DATABASE` says).
    pub fn on(db: TestDatabase, max_firmware_bytes: u64) -> TestDomain {
        let pool = Db::connect(&db.url, 8).expect("connect test database");
        pool.migrate().expect("migrate test database");
        let data_dir = tempfile::tempdir().expect("temp dir");
        let store = FsBlobStore::new(data_dir.path().join("blobs")).expect("blob store");
        let clock = FakeClock::at_epoch_2026();
        let settings = DomainSettings::new(max_firmware_bytes, data_dir.path().join("staging"));
        let domain = Domain::new(pool, Arc::new(clock.clone()), Arc::new(store), settings);
        TestDomain { domain, clock, db, data_dir }
    }

    /// Changes the domain's settings (the database, clock and store stay).
    pub fn adjust(&mut self, f: impl FnOnce(&mut DomainSettings)) {
        let mut settings = (*self.domain.settings).clone();
        f(&mut settings);
        self.domain =
            Domain::new(self.domain.db.clone(), self.domain.clock.clone(), self.domain.store.clone(), settings);
    }

    /// Another domain on the same database, clock and file store, with its own connection
    /// pool and notifier slot: what a second gateway process has.
    pub fn sibling(&self) -> Domain {
        let pool = Db::connect(&self.db.url, 8).expect("connect test database");
        let store = FsBlobStore::new(self.blob_dir()).expect("blob store");
        let settings = (*self.domain.settings).clone();
        Domain::new(pool, Arc::new(self.clock.clone()), Arc::new(store), settings)
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.data_dir.path().join("blobs")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.path().join("staging")
    }
}

impl Default for TestDomain {
    fn default() -> Self {
        Self::new()
    }
}

/// The API on `127.0.0.1:<port 0>`, in its own thread with its own actix system.
pub struct TestApi {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub t: TestDomain,
    handle: actix_web::dev::ServerHandle,
}

/// The JWT secret test servers sign with.
pub const TEST_JWT_SECRET: &[u8] = b"test-secret-test-secret-test-secret!";

impl TestApi {
    pub fn start() -> TestApi {
        Self::start_with(TestDomain::new(), ApiSettings::default())
    }

    pub fn start_with(t: TestDomain, settings: ApiSettings) -> TestApi {
        let (base, handle) = spawn_server(t.domain.clone(), settings);
        TestApi { base, t, handle }
    }

    /// A second API node on the same database, clock and file store, with its own process
    /// state (connection pool, password hash gate): what another API process has.
    pub fn sibling(&self) -> SiblingApi {
        let (base, handle) = spawn_server(self.t.sibling(), ApiSettings::default());
        SiblingApi { base, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        stop(self.handle.clone());
    }
}

/// Another API node of a [`TestApi`] (see [`TestApi::sibling`]).
pub struct SiblingApi {
    pub base: String,
    handle: actix_web::dev::ServerHandle,
}

impl SiblingApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for SiblingApi {
    fn drop(&mut self) {
        stop(self.handle.clone());
    }
}

/// Serves the API for `domain` on `127.0.0.1:<port 0>` in its own thread and actix system.
fn spawn_server(domain: Domain, settings: ApiSettings) -> (String, actix_web::dev::ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let jwt = JwtKeys::new(TEST_JWT_SECRET, chrono::Duration::hours(12));
            let settings = ApiSettings { workers: 2, ..settings };
            let server = ota_api::serve(listener, domain, jwt, settings).expect("serve");
            let _ = tx.send(server.handle());
            let _ = server.await;
        });
    });
    let handle = rx.recv().expect("server started");
    (base, handle)
}

fn stop(handle: actix_web::dev::ServerHandle) {
    // Stop accepting and let the worker threads end; do not wait for them here.
    std::thread::spawn(move || {
        let rt = actix_rt::System::new();
        rt.block_on(handle.stop(false));
    });
}
