//! A firmware store shared by every node: an S3-compatible object store (AWS S3, MinIO,
//! Ceph RGW, Garage, moto…), with a read-through cache on each node's disk.
//!
//! Why these crates: requests are signed by `rusty-s3`, a sans-IO crate that only turns an
//! action into a presigned URL (SigV4 with `hmac`/`sha2`, its `rustcrypto` feature, so neither
//! aws-lc nor ring arrives), and are sent by the workspace's one HTTP client, `reqwest`, so
//! there is no second HTTP client. The AWS SDK, `rust-s3` and `object_store` each choose an
//! HTTP stack and TLS of their own. See `docs/decisions.md`.
//!
//! - **Keys**: `<s3_prefix><sha256>`. Objects are immutable and addressed by their digest.
//! - **put** skips the upload when HEAD finds the object already; otherwise one PUT streams the
//!   staged file (with its length, never loaded into memory). S3 makes an object visible only
//!   once its PUT completed, so readers see all of it or nothing: uploads stay atomic.
//! - **local_file** is the read-through cache: `<cache_dir>/<2 hex>/<sha256>`. A miss downloads
//!   into a temporary file in the cache directory while hashing it, refuses bytes whose SHA-256
//!   is not the key (nothing is cached then), fsyncs, and renames into place, so a cached file
//!   is always whole and right. Concurrent misses for one key share one download (a per-key
//!   lock; the second caller finds the file the first one renamed). A hit touches the file's
//!   modification time; when `cache_max_bytes` is set, the least recently used files go after
//!   each fill until the cache fits (a file being sent stays readable by the descriptor that
//!   sends it; Unix unlinks do not cut open files).
//! - **open** streams the cached file (filling the cache first), so a gateway serves devices
//!   from its own disk and the object store sees one GET per image and gateway.
//! - **delete** removes the object (a missing one is fine) and this node's cached copy. Other
//!   nodes keep their copies until evicted; nothing reads a deleted image's key again.
//!
//! TLS: the workspace's reqwest is built without TLS (its `rustls` feature pulls aws-lc-sys,
//! which the dependency policy keeps out), so endpoints are `http://`. Keep the object store
//! on a private network, or put a TLS-terminating proxy on the node (e.g. stunnel or nginx
//! listening on loopback) and point `s3_endpoint` at it. An `https://` endpoint is refused at
//! start with that explanation rather than failing at the first upload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};
use sha2::{Digest, Sha256};

use super::{BlobStore, BlobStream, StagedFile, check_key};
use crate::error::{DomainError, Result};

/// How long a presigned URL is valid. Only the start of a request is checked against it.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// Where the shared store is and how to sign for it. The field names are the configuration
/// keys without their `s3_` prefix.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http://host:port` (a path after the host is kept as a prefix of every URL).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Prepended to every object key (`firmware/` for `firmware/<sha256>`); may be empty.
    pub prefix: String,
    /// Path-style URLs (`http://host/bucket/key`, what MinIO and moto want) instead of
    /// virtual-host style (`http://bucket.host/key`).
    pub path_style: bool,
    /// The node-local read-through cache.
    pub cache_dir: PathBuf,
    /// Bytes the cache may hold before the least recently used files go; 0: no limit.
    pub cache_max_bytes: u64,
}

/// The S3-compatible store with this node's read-through cache.
pub struct S3BlobStore {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    http: reqwest::Client,
    cache_dir: PathBuf,
    cache_max_bytes: u64,
    /// One lock per key being fetched, so concurrent misses share one download.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Objects downloaded from the store into the cache (for tests and logs).
    fetches: AtomicU64,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("bucket", &self.bucket.name())
            .field("base_url", &self.bucket.base_url().as_str())
            .field("prefix", &self.prefix)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

fn internal(message: String) -> DomainError {
    DomainError::Internal(anyhow::anyhow!(message))
}

impl S3BlobStore {
    /// Builds the store without contacting the server (see [`S3BlobStore::check`]).
    pub fn new(settings: S3Settings) -> anyhow::Result<S3BlobStore> {
        let endpoint: reqwest::Url = settings
            .endpoint
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("s3_endpoint `{}` is not a URL: {e}", settings.endpoint))?;
        anyhow::ensure!(
            endpoint.scheme() != "https",
            "s3_endpoint `{}`: HTTPS is not built in (the TLS stack reqwest would need pulls aws-lc, which this \
             project keeps out); use http:// on a private network or a TLS-terminating proxy on this node",
            settings.endpoint
        );
        anyhow::ensure!(endpoint.scheme() == "http", "s3_endpoint `{}` must be an http:// URL", settings.endpoint);
        anyhow::ensure!(!settings.bucket.trim().is_empty(), "s3_bucket is required for the s3 firmware store");
        anyhow::ensure!(
            !settings.region.trim().is_empty(),
            "s3_region is required (`us-east-1` when the server does not care)"
        );
        anyhow::ensure!(
            !settings.access_key_id.is_empty() && !settings.secret_access_key.is_empty(),
            "s3_access_key_id and s3_secret_access_key are required for the s3 firmware store"
        );
        let style = if settings.path_style { UrlStyle::Path } else { UrlStyle::VirtualHost };
        let bucket = Bucket::new(endpoint, style, settings.bucket.trim().to_owned(), settings.region.trim().to_owned())
            .map_err(|e| {
                anyhow::anyhow!(
                    "s3_endpoint `{}` with s3_bucket `{}`: {e}{}",
                    settings.endpoint,
                    settings.bucket,
                    if settings.path_style {
                        ""
                    } else {
                        " (virtual-host style needs a host name; set s3_path_style = true for an IP address)"
                    }
                )
            })?;
        let mut prefix = settings.prefix.trim().trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        std::fs::create_dir_all(&settings.cache_dir).map_err(|e| {
            anyhow::anyhow!("creating the firmware cache directory {}: {e}", settings.cache_dir.display())
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow::anyhow!("building the S3 HTTP client: {e}"))?;
        Ok(S3BlobStore {
            bucket,
            credentials: Credentials::new(settings.access_key_id, settings.secret_access_key),
            prefix,
            http,
            cache_dir: settings.cache_dir,
            cache_max_bytes: settings.cache_max_bytes,
            fetching: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        })
    }

    /// Checks that the bucket is there and the credentials are accepted (a HEAD on the
    /// bucket), so a node with a wrong setting stops at start, naming it.
    pub async fn check(&self) -> anyhow::Result<()> {
        let url = self.bucket.head_bucket(Some(&self.credentials)).sign(SIGNED_FOR);
        let base = self.bucket.base_url().as_str().to_owned();
        let response =
            self.http.head(url).send().await.map_err(|e| {
                anyhow::anyhow!("cannot reach the S3 store at {base} (s3_endpoint): {}", error_chain(&e))
            })?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            404 => anyhow::bail!(
                "the S3 bucket `{}` does not exist at {base} (s3_bucket); create it (e.g. `mc mb` or \
                 `aws s3 mb`) or name an existing one: the server does not create buckets",
                self.bucket.name()
            ),
            401 | 403 => anyhow::bail!(
                "the S3 store at {base} refused the credentials for bucket `{}` (status {}): check s3_access_key_id, \
                 s3_secret_access_key and s3_region",
                self.bucket.name(),
                response.status()
            ),
            _ => anyhow::bail!(
                "the S3 store at {base} answered {} to a HEAD of the bucket (s3_endpoint, s3_bucket)",
                response.status()
            ),
        }
    }

    /// Objects downloaded into this node's cache since the store was built.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The object key of a blob.
    pub fn object_key(&self, sha256: &str) -> String {
        format!("{}{sha256}", self.prefix)
    }

    fn cache_path(&self, sha256: &str) -> PathBuf {
        self.cache_dir.join(&sha256[..2]).join(sha256)
    }

    fn describe(&self, sha256: &str) -> String {
        format!("object `{}` in S3 bucket `{}`", self.object_key(sha256), self.bucket.name())
    }

    async fn exists(&self, sha256: &str) -> Result<bool> {
        let key = self.object_key(sha256);
        let url = self.bucket.head_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let response = self
            .http
            .head(url)
            .send()
            .await
            .map_err(|e| internal(format!("HEAD of {}: {}", self.describe(sha256), error_chain(&e))))?;
        match response.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(internal(format!("HEAD of {} answered {}", self.describe(sha256), response.status()))),
        }
    }

    /// The cached file when present (its modification time touched, for eviction).
    async fn cached(&self, path: &Path) -> Option<PathBuf> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).ok()?;
            if !file.metadata().ok()?.is_file() {
                return None;
            }
            // Best effort: a read-only cache still serves. The file system's own clock orders
            // the cache for eviction; it is no domain time, so no `Clock`.
            #[allow(clippy::disallowed_methods)]
            let now = SystemTime::now();
            let _ = file.set_modified(now);
            Some(path)
        })
        .await
        .ok()
        .flatten()
    }

    fn key_lock(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(sha256.to_owned()).or_default().clone()
    }

    fn release_key(&self, sha256: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the map's and ours. Anyone else still holds or awaits it.
        if Arc::strong_count(&lock) <= 2 {
            map.remove(sha256);
        }
    }

    /// Downloads the object into the cache, checking its digest on the way.
    async fn fetch(&self, sha256: &str, target: &Path) -> Result<()> {
        let key = self.object_key(sha256);
        let url = self.bucket.get_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| internal(format!("GET of {}: {}", self.describe(sha256), error_chain(&e))))?;
        match response.status().as_u16() {
            200..=299 => {}
            404 => return Err(internal(format!("{} is missing from the store", self.describe(sha256)))),
            _ => return Err(internal(format!("GET of {} answered {}", self.describe(sha256), response.status()))),
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let dir = target.parent().unwrap_or(&self.cache_dir).to_owned();
        let (file, tmp) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            tempfile::Builder::new().prefix(".fetch-").tempfile_in(&dir).map(|f| f.into_parts())
        })
        .await
        .map_err(|e| internal(format!("cache task: {e}")))??;
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                internal(format!("reading {} from the store: {}", self.describe(sha256), error_chain(&e)))
            })?;
            hasher.update(&chunk);
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            // `tmp` removes the partial file when dropped.
            return Err(internal(format!(
                "{} has SHA-256 {got}, not its key: refused, not cached (the object was changed or truncated in the store)",
                self.describe(sha256)
            )));
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await?;
        file.sync_all().await?;
        drop(file);
        let target = target.to_owned();
        tokio::task::spawn_blocking(move || tmp.persist(&target).map_err(|e| e.error))
            .await
            .map_err(|e| internal(format!("cache task: {e}")))??;
        Ok(())
    }

    /// Removes the least recently used cached files until the cache fits its limit; `keep`
    /// (the file just filled) is never removed.
    async fn evict(&self, keep: PathBuf) {
        if self.cache_max_bytes == 0 {
            return;
        }
        let dir = self.cache_dir.clone();
        let limit = self.cache_max_bytes;
        let outcome = tokio::task::spawn_blocking(move || evict_blocking(&dir, limit, &keep)).await;
        match outcome {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(removed = n, limit, "firmware cache over its limit: least recently used files removed")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "firmware cache eviction failed"),
            Err(e) => tracing::warn!(error = %e, "firmware cache eviction task failed"),
        }
    }
}

fn evict_blocking(dir: &Path, limit: u64, keep: &Path) -> std::io::Result<usize> {
    let mut files = Vec::new();
    for sub in std::fs::read_dir(dir)?.flatten() {
        if !sub.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for entry in std::fs::read_dir(sub.path())?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // a fetch in progress
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                files.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len(), entry.path()));
            }
        }
    }
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    let mut removed = 0;
    for (_, len, path) in files {
        if total <= limit {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total = total.saturating_sub(len);
                removed += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => total = total.saturating_sub(len),
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// An error with its causes (reqwest's top level alone often says only "error sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl BlobStore for S3BlobStore {
    fn put<'a>(&'a self, staged: &'a StagedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sha256 = check_key(&staged.sha256)?;
            if self.exists(sha256).await? {
                return Ok(());
            }
            let key = self.object_key(sha256);
            let url = self.bucket.put_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
            let file = tokio::fs::File::open(staged.path()).await?;
            // Streamed from the file with the length set by hand: hyper keeps a Content-Length
            // it is given, so the body is not sent chunked (S3 refuses a plain chunked PUT).
            let response = self
                .http
                .put(url)
                .header(reqwest::header::CONTENT_LENGTH, staged.size)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(reqwest::Body::from(file))
                .send()
                .await
                .map_err(|e| internal(format!("PUT of {}: {}", self.describe(sha256), error_chain(&e))))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                return Err(internal(format!("PUT of {} answered {status}: {body}", self.describe(sha256))));
            }
            Ok(())
        })
    }

    fn open<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<BlobStream>> {
        Box::pin(async move {
            let path = self.local_file(sha256).await?;
            super::stream_file(&path, "cached blob").await
        })
    }

    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sha256 = check_key(sha256)?;
            let key = self.object_key(sha256);
            let url = self.bucket.delete_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
            let response = self
                .http
                .delete(url)
                .send()
                .await
                .map_err(|e| internal(format!("DELETE of {}: {}", self.describe(sha256), error_chain(&e))))?;
            let status = response.status();
            if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
                return Err(internal(format!("DELETE of {} answered {status}", self.describe(sha256))));
            }
            match tokio::fs::remove_file(self.cache_path(sha256)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn local_file<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<PathBuf>> {
        Box::pin(async move {
            let sha256 = check_key(sha256)?;
            let path = self.cache_path(sha256);
            if let Some(hit) = self.cached(&path).await {
                return Ok(hit);
            }
            let lock = self.key_lock(sha256);
            let outcome = {
                let _guard = lock.lock().await;
                // Whoever held the lock before us may have filled it.
                match self.cached(&path).await {
                    Some(hit) => Ok((hit, false)),
                    None => self.fetch(sha256, &path).await.map(|()| (path.clone(), true)),
                }
            };
            self.release_key(sha256, lock);
            let (path, filled) = outcome?;
            if filled {
                self.evict(path.clone()).await;
            }
            Ok(path)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    #[allow(clippy::disallowed_methods)] // file times, as the cache sets them
    fn eviction_removes_the_least_recently_used_files_but_never_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, len: usize, age_secs: u64| {
            let sub = dir.path().join(&name[..2]);
            std::fs::create_dir_all(&sub).unwrap();
            let path = sub.join(name);
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(&vec![0_u8; len]).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_secs)).unwrap();
            path
        };
        let old = mk("aa01", 100, 300);
        let mid = mk("bb02", 100, 200);
        let recent = mk("cc03", 100, 100);
        let new = mk("dd04", 100, 1000); // oldest time, but just filled
        let removed = evict_blocking(dir.path(), 250, &new).unwrap();
        assert_eq!(removed, 2);
        assert!(!old.exists() && !mid.exists());
        assert!(recent.exists() && new.exists());
        assert_eq!(evict_blocking(dir.path(), 0, &new).unwrap(), 1, "a zero limit is handled by the caller");
    }

    #[test]
    fn settings_are_checked_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let ok = S3Settings {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "firmware".into(),
            region: "us-east-1".into(),
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            prefix: "ota".into(),
            path_style: true,
            cache_dir: dir.path().join("cache"),
            cache_max_bytes: 0,
        };
        let store = S3BlobStore::new(ok.clone()).unwrap();
        assert_eq!(store.object_key("ab"), "ota/ab");
        let err = |s: S3Settings| S3BlobStore::new(s).unwrap_err().to_string();
        assert!(
            err(S3Settings { endpoint: "https://s3.example".into(), ..ok.clone() }).contains("TLS-terminating proxy")
        );
        assert!(err(S3Settings { endpoint: "not a url".into(), ..ok.clone() }).contains("s3_endpoint"));
        assert!(err(S3Settings { bucket: " ".into(), ..ok.clone() }).contains("s3_bucket"));
        assert!(err(S3Settings { secret_access_key: String::new(), ..ok.clone() }).contains("s3_secret_access_key"));
        assert!(err(S3Settings { path_style: false, ..ok.clone() }).contains("s3_path_style"));
    }
}
