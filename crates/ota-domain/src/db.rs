//! One diesel code path over SQLite (the embedded default) and PostgreSQL.
//!
//! The backend is chosen by the URL's scheme; an unknown scheme is an error rather than a
//! silent fallback to a SQLite file named `mysql://…`. Diesel is blocking, so every query runs
//! on tokio's blocking pool through [`Db::run`] / [`Db::write`], never on an async worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{DomainError, Result};

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database URL whose backend is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub backend: Backend,
    /// What the driver is given: the URL for PostgreSQL, the file path for SQLite.
    pub target: String,
}

/// Startup errors: each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("unsupported database URL scheme `{0}`: use `sqlite:<path>`, a plain file path, or `postgres://…`")]
    UnknownScheme(String),
    #[error("cannot open the database at {target}: {cause}")]
    Unreachable { target: String, cause: String },
    #[error("database migration failed: {0}")]
    Migration(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, DbSetupError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl { backend: Backend::Postgres, target: url.to_owned() });
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            return Ok(DatabaseUrl { backend: Backend::Sqlite, target: path.to_owned() });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(DbSetupError::UnknownScheme(scheme.to_owned()));
        }
        if url.is_empty() {
            return Err(DbSetupError::UnknownScheme(String::new()));
        }
        Ok(DatabaseUrl { backend: Backend::Sqlite, target: url.to_owned() })
    }
}

/// Establishes connections of the backend the URL named, with per-backend settings.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
    counters: Arc<DbCounters>,
}

/// What the pool's connections did since it opened (diesel's instrumentation hook: an atomic
/// increment per event). Tests read it to show that a repeated device check prepares no
/// statement and opens no transaction.
#[derive(Debug, Default)]
pub struct DbCounters {
    queries: AtomicU64,
    prepared: AtomicU64,
    transactions: AtomicU64,
    /// The SQL of every statement put into a statement cache (once per connection each).
    cached: Mutex<std::collections::HashSet<String>>,
    /// While on, the SQL of every statement run is kept (tests only: it formats each query).
    tracing: AtomicBool,
    traced: Mutex<Vec<String>>,
}

/// A reading of [`DbCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbCount {
    /// Statements run.
    pub queries: u64,
    /// Statements prepared and put into a connection's statement cache (a statement that
    /// cannot be cached is prepared on every run and not counted here).
    pub prepared: u64,
    /// Transactions begun (savepoints not counted).
    pub transactions: u64,
}

impl DbCounters {
    fn instrumentation(self: &Arc<Self>) -> impl diesel::connection::Instrumentation {
        use diesel::connection::InstrumentationEvent as E;
        let counters = self.clone();
        move |event: E<'_>| match event {
            E::StartQuery { query, .. } => {
                counters.queries.fetch_add(1, Ordering::Relaxed);
                if counters.tracing.load(Ordering::Relaxed) {
                    let text = query.to_string();
                    let sql = text.split(" -- binds: ").next().unwrap_or_default().to_owned();
                    counters.traced.lock().unwrap_or_else(|e| e.into_inner()).push(sql);
                }
            }
            E::CacheQuery { sql, .. } => {
                counters.prepared.fetch_add(1, Ordering::Relaxed);
                counters.cached.lock().unwrap_or_else(|e| e.into_inner()).insert(sql.to_owned());
            }
            E::BeginTransaction { depth, .. } if depth.get() == 1 => {
                counters.transactions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    fn read(&self) -> DbCount {
        DbCount {
            queries: self.queries.load(Ordering::Relaxed),
            prepared: self.prepared.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConn, r2d2::Error> {
        match self.url.backend {
            Backend::Postgres => {
                let mut conn = PgConnection::establish(&self.url.target).map_err(r2d2::Error::ConnectionError)?;
                conn.set_instrumentation(self.counters.instrumentation());
                Ok(DbConn::Pg(conn))
            }
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url.target).map_err(r2d2::Error::ConnectionError)?;
                // WAL lets readers proceed while one writer writes; the busy timeout covers
                // the short moments two connections touch the lock at once.
                conn.batch_execute(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                     PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                )
                .map_err(r2d2::Error::QueryError)?;
                conn.set_instrumentation(self.counters.instrumentation());
                Ok(DbConn::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, _conn: &mut DbConn) -> bool {
        false
    }
}

/// The connection pool, cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<Manager>,
    backend: Backend,
    /// SQLite allows one writer at a time; serialising our own writers in-process avoids the
    /// lock-upgrade deadlock of two deferred transactions (SQLITE_BUSY that no timeout cures).
    /// PostgreSQL needs no such lock.
    sqlite_writer: Arc<Mutex<()>>,
    /// One readiness ping at a time (see [`Db::ping`]).
    ping_gate: Arc<tokio::sync::Semaphore>,
    counters: Arc<DbCounters>,
}

impl Db {
    /// Opens the pool and checks that one connection can be made.
    pub fn connect(url: &str, max_connections: u32) -> Result<Db, DbSetupError> {
        let url = DatabaseUrl::parse(url)?;
        let backend = url.backend;
        let target = match backend {
            Backend::Postgres => redact_password(&url.target),
            Backend::Sqlite => url.target.clone(),
        };
        let parent = std::path::Path::new(&url.target).parent().filter(|p| !p.as_os_str().is_empty());
        if let (Backend::Sqlite, Some(parent)) = (backend, parent)
            && !parent.exists()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| DbSetupError::Unreachable { target: target.clone(), cause: e.to_string() })?;
        }
        let counters = Arc::new(DbCounters::default());
        let manager = Manager { url, counters: counters.clone() };
        // Fail fast with the driver's own message instead of r2d2's generic timeout.
        manager.connect().map_err(|e| DbSetupError::Unreachable { target: target.clone(), cause: e.to_string() })?;
        let pool = Pool::builder()
            .max_size(max_connections.max(1))
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .map_err(|e| DbSetupError::Unreachable { target, cause: e.to_string() })?;
        Ok(Db {
            pool,
            backend,
            sqlite_writer: Arc::new(Mutex::new(())),
            ping_gate: Arc::new(tokio::sync::Semaphore::new(1)),
            counters,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What this pool's connections did so far (see [`DbCounters`]).
    pub fn count(&self) -> DbCount {
        self.counters.read()
    }

    /// Starts keeping the SQL of every statement run (for tests; it costs a formatting of
    /// each query while on).
    pub fn trace_statements(&self) {
        self.counters.traced.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.counters.tracing.store(true, Ordering::Relaxed);
    }

    /// Stops keeping statements; returns each one kept and whether it was a statement
    /// served from a statement cache (prepared once, reused).
    pub fn traced_statements(&self) -> Vec<(String, bool)> {
        self.counters.tracing.store(false, Ordering::Relaxed);
        let traced = std::mem::take(&mut *self.counters.traced.lock().unwrap_or_else(|e| e.into_inner()));
        let cached = self.counters.cached.lock().unwrap_or_else(|e| e.into_inner());
        traced
            .into_iter()
            .map(|sql| {
                let hit = cached.contains(&sql);
                (sql, hit)
            })
            .collect()
    }

    /// The pool now: connections open, of which idle, and the most it opens.
    pub fn pool_state(&self) -> (u32, u32, u32) {
        let state = self.pool.state();
        (state.connections, state.idle_connections, self.pool.max_size())
    }

    /// Runs every pending embedded migration of this backend; returns the names applied.
    pub fn migrate(&self) -> Result<Vec<String>, DbSetupError> {
        let mut conn = self.pool.get().map_err(|e| DbSetupError::Migration(e.to_string()))?;
        let applied = match &mut *conn {
            DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(names),
            DbConn::Pg(c) => {
                // Nodes started together would race to create the same tables: one migrates
                // at a time, and the others then find nothing left to do.
                c.batch_execute(MIGRATION_LOCK).map_err(|e| DbSetupError::Migration(e.to_string()))?;
                let applied = c.run_pending_migrations(POSTGRES_MIGRATIONS).map(names);
                let unlocked = c.batch_execute(MIGRATION_UNLOCK);
                if let Err(e) = unlocked {
                    tracing::warn!(error = %e, "could not release the migration lock; it goes with the connection");
                }
                applied
            }
        };
        applied.map_err(|e| DbSetupError::Migration(e.to_string()))
    }

    /// Reverts every applied migration (used by the migration round-trip test and `ota migrate --revert-all`).
    pub fn revert_all(&self) -> Result<Vec<String>, DbSetupError> {
        let mut conn = self.pool.get().map_err(|e| DbSetupError::Migration(e.to_string()))?;
        let reverted = match &mut *conn {
            DbConn::Sqlite(c) => c.revert_all_migrations(SQLITE_MIGRATIONS).map(names),
            DbConn::Pg(c) => c.revert_all_migrations(POSTGRES_MIGRATIONS).map(names),
        };
        reverted.map_err(|e| DbSetupError::Migration(e.to_string()))
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = get(&pool)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("database task failed: {e}")))?
    }

    /// Runs the reads of `f` against one snapshot of the database: a page and its total, or
    /// several counts shown together, agree with each other even while writers go on.
    /// PostgreSQL: a read-only REPEATABLE READ transaction (its snapshot is taken at the first
    /// query). SQLite: a deferred transaction, which in WAL mode reads one snapshot from its
    /// first read to its end without taking the writers' turn.
    pub async fn snapshot<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    {
        let postgres = self.backend == Backend::Postgres;
        self.run(move |conn| {
            conn.transaction(|c| {
                if postgres {
                    diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(c)?;
                }
                f(c)
            })
        })
        .await
    }

    /// Runs `f` inside one transaction on the blocking pool; on SQLite writers take turns.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    {
        self.as_writer(|conn| conn.transaction(f)).await
    }

    /// Runs `f` inside a transaction that is always rolled back: what `f` would do, without
    /// doing it (an answer computed by the same code that writes, with nothing written).
    pub async fn dry_run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    {
        self.as_writer(|conn| {
            let mut out = None;
            let rolled_back = conn.transaction::<(), DomainError, _>(|c| {
                out = Some(f(c));
                Err(DomainError::Internal(anyhow::anyhow!("dry run: rolled back on purpose")))
            });
            match (out, rolled_back) {
                (Some(result), Err(_)) => result,
                _ => Err(DomainError::Internal(anyhow::anyhow!("dry run did not run"))),
            }
        })
        .await
    }

    /// Runs `f` with a pooled connection on the blocking pool, taking SQLite's writer turn.
    async fn as_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let lock = (self.backend == Backend::Sqlite).then(|| self.sqlite_writer.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = lock.as_ref().map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
            let mut pooled = get(&pool)?;
            f(&mut pooled)
        })
        .await
        .map_err(|e| DomainError::Internal(anyhow::anyhow!("database task failed: {e}")))?
    }

    /// True when a connection can be had and answers within `within`. Bounded: the wait for a
    /// pooled connection is part of the budget, and at most one ping is in flight, so a hung
    /// database never piles up blocked threads behind `/readyz`.
    pub async fn ping(&self, within: Duration) -> bool {
        let Ok(only) = self.ping_gate.clone().try_acquire_owned() else { return false };
        let pool = self.pool.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Held until the query returns, even after the caller stopped waiting.
            let _only = only;
            let Ok(mut conn) = pool.get_timeout(within) else { return false };
            conn.batch_execute("SELECT 1").is_ok()
        });
        tokio::time::timeout(within, task).await.ok().and_then(Result::ok).unwrap_or(false)
    }
}

/// The id of the row this connection inserted last: the one backend-specific query we need,
/// because diesel's multi-backend connection cannot express `RETURNING`.
/// Runs a statement on the concrete connection: multi-row INSERTs are not available through
/// the multi-backend connection, but are on each backend.
#[macro_export]
macro_rules! on_backend {
    ($conn:expr, $query:expr) => {
        match $conn {
            $crate::db::DbConn::Pg(c) => $query.execute(c),
            $crate::db::DbConn::Sqlite(c) => $query.execute(c),
        }
    };
}

/// Runs `$body` with `$c` bound to the concrete connection of either backend.
///
/// For hot queries: through the multi-backend connection every execution serialises the
/// query to SQL again before the statement cache is asked (diesel's `MultiConnection` wraps
/// each query), while on the concrete connection a query of static shape is found in the
/// cache by its type and runs as the statement prepared the first time. "Static shape"
/// means no `eq_any` over a list (SQLite expands it to `IN (?, ?, …)`), no boxed or
/// `sql_query` queries and no `UPDATE` (diesel never caches updates: a changeset may skip
/// fields); `tests/checks.rs` counts the statements prepared by repeated checks.
#[macro_export]
macro_rules! on_each_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Pg($c) => $body,
            $crate::db::DbConn::Sqlite($c) => $body,
        }
    };
}

pub fn last_insert_id(conn: &mut DbConn) -> Result<i64> {
    use diesel::dsl::sql;
    use diesel::sql_types::BigInt;
    Ok(match conn {
        DbConn::Sqlite(c) => diesel::select(sql::<BigInt>("last_insert_rowid()")).get_result(c)?,
        DbConn::Pg(c) => diesel::select(sql::<BigInt>("lastval()")).get_result(c)?,
    })
}

fn get(pool: &Pool<Manager>) -> Result<PooledConnection<Manager>> {
    pool.get().map_err(|cause| {
        tracing::error!(%cause, "database connection failed");
        DomainError::new(ota_wire::ErrorCode::DatabaseUnavailable, "the database is unavailable")
    })
}

/// A PostgreSQL advisory lock held while migrating (any fixed number the project owns).
const MIGRATION_LOCK: &str = "SELECT pg_advisory_lock(4111465)";
const MIGRATION_UNLOCK: &str = "SELECT pg_advisory_unlock(4111465)";

fn names(versions: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    versions.into_iter().map(|v| v.to_string()).collect()
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for messages.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((auth, host)) = rest.split_once('@') else { return url.to_owned() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_schemes() {
        assert_eq!(DatabaseUrl::parse("postgres://a@b/c").unwrap().backend, Backend::Postgres);
        assert_eq!(DatabaseUrl::parse("postgresql://a@b/c").unwrap().backend, Backend::Postgres);
        let s = DatabaseUrl::parse("sqlite:///var/lib/ota/ota.db").unwrap();
        assert_eq!((s.backend, s.target.as_str()), (Backend::Sqlite, "/var/lib/ota/ota.db"));
        let s = DatabaseUrl::parse("sqlite:data/ota.db").unwrap();
        assert_eq!(s.target, "data/ota.db");
        assert_eq!(DatabaseUrl::parse("data/ota.db").unwrap().backend, Backend::Sqlite);
        assert!(matches!(DatabaseUrl::parse("mysql://x"), Err(DbSetupError::UnknownScheme(s)) if s == "mysql"));
        assert!(DatabaseUrl::parse("  ").is_err());
    }

    #[test]
    fn redacts() {
        assert_eq!(redact_password("postgres://u:p@h/d"), "postgres://u:***@h/d");
        assert_eq!(redact_password("postgres://u@h/d"), "postgres://u@h/d");
    }

    #[test]
    fn unreachable_postgres_is_a_clear_error() {
        // Port 1 on loopback: nothing listens there.
        let err = Db::connect("postgres://nobody@127.0.0.1:1/none?connect_timeout=2", 1).err().unwrap();
        let text = err.to_string();
        assert!(text.starts_with("cannot open the database at postgres://nobody@127.0.0.1:1"), "{text}");
    }
}
