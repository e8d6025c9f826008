//! The S3 firmware store against a real S3-compatible server (moto, started per test; see
//! `ota_testkit::moto`): round trip, idempotent put, the cache's digest check, one fetch for
//! concurrent misses, hits served with the server gone, and the start-up check.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use ota_domain::store::s3::S3BlobStore;
use ota_domain::store::{BlobStore, StagedFile, StagingWriter};
use ota_testkit::moto::Moto;
use sha2::{Digest, Sha256};

async fn stage(dir: &std::path::Path, bytes: &[u8]) -> StagedFile {
    let mut w = StagingWriter::create(&dir.join("staging"), "fw.bin", 1 << 30).await.unwrap();
    for chunk in bytes.chunks(7919) {
        w.write(chunk).await.unwrap();
    }
    w.finish().await.unwrap()
}

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn read_all(store: &dyn BlobStore, sha: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = store.open(sha).await.unwrap().try_collect().await.unwrap();
    chunks.concat()
}

#[tokio::test]
async fn round_trip_through_the_bucket_and_the_cache() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let uploader = S3BlobStore::new(moto.settings(dir.path().join("cache-api"))).unwrap();
    uploader.check().await.unwrap();
    let bytes = image(300 * 1024 + 17, 1);
    let staged = stage(dir.path(), &bytes).await;
    uploader.put(&staged).await.unwrap();
    let key = uploader.object_key(&staged.sha256);
    let put_line = format!("PUT /{}/{key}?", moto.bucket);
    assert_eq!(moto.requests_matching(&put_line), 1, "{}", moto.log());
    // Idempotent: the second put finds the object and uploads nothing.
    uploader.put(&staged).await.unwrap();
    assert_eq!(moto.requests_matching(&put_line), 1, "a stored object is not uploaded again");
    // The object is there, whole, under `<prefix><sha256>`, and nothing was cached by the put.
    assert_eq!(key, format!("firmware/{}", staged.sha256));
    assert_eq!(moto.get_raw(&key).as_deref(), Some(&bytes[..]));
    assert_eq!(uploader.fetches(), 0);

    // Another node (its own cache) reads it.
    let gateway = S3BlobStore::new(moto.settings(dir.path().join("cache-gw"))).unwrap();
    let local = gateway.local_file(&staged.sha256).await.unwrap();
    assert!(local.starts_with(dir.path().join("cache-gw")), "{}", local.display());
    assert_eq!(std::fs::read(&local).unwrap(), bytes);
    assert_eq!(read_all(&gateway, &staged.sha256).await, bytes);
    assert_eq!(gateway.local_file(&staged.sha256).await.unwrap(), local);
    assert_eq!(gateway.fetches(), 1, "later reads are cache hits");
    // No temporary file is left next to the cached one.
    let leftovers: Vec<_> =
        std::fs::read_dir(local.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Delete: the object and this node's copy go; deleting again is fine.
    gateway.delete(&staged.sha256).await.unwrap();
    assert!(!local.exists());
    assert_eq!(moto.get_raw(&key), None);
    gateway.delete(&staged.sha256).await.unwrap();
    let err = gateway.local_file(&staged.sha256).await.unwrap_err();
    assert!(format!("{err:#}").contains("missing from the store"), "{err:#}");
    // Keys are digests only.
    assert!(gateway.local_file("../../etc/passwd").await.is_err());
}

#[tokio::test]
async fn a_corrupt_object_is_refused_and_not_cached() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = S3BlobStore::new(moto.settings(dir.path().join("cache"))).unwrap();
    let bytes = image(64 * 1024, 2);
    let sha = hex::encode(Sha256::digest(&bytes));
    // Truncated in the bucket.
    moto.put_raw(&store.object_key(&sha), bytes[..1000].to_vec());
    let err = store.local_file(&sha).await.unwrap_err();
    assert!(format!("{err:#}").contains("not its key: refused, not cached"), "{err:#}");
    assert!(store.open(&sha).await.is_err());
    let cached: Vec<_> = walk(&dir.path().join("cache"));
    assert!(cached.is_empty(), "nothing is cached: {cached:?}");
    // Repaired in the bucket: the next read fetches it again and caches it.
    moto.put_raw(&store.object_key(&sha), bytes.clone());
    let local = store.local_file(&sha).await.unwrap();
    assert_eq!(std::fs::read(local).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_fetch_once_and_hits_need_no_server() {
    let Some(mut moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(S3BlobStore::new(moto.settings(dir.path().join("cache"))).unwrap());
    let bytes = image(2 * 1024 * 1024, 3);
    let staged = stage(dir.path(), &bytes).await;
    store.put(&staged).await.unwrap();
    let sha = staged.sha256.clone();
    let get_line = format!("GET /{}/{}?", moto.bucket, store.object_key(&sha));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, sha) = (store.clone(), sha.clone());
            tokio::spawn(async move { store.local_file(&sha).await.unwrap() })
        })
        .collect();
    let mut paths = Vec::new();
    for t in tasks {
        paths.push(t.await.unwrap());
    }
    assert!(paths.windows(2).all(|w| w[0] == w[1]), "{paths:?}");
    assert_eq!(store.fetches(), 1, "sixteen concurrent misses, one download");
    assert_eq!(moto.requests_matching(&get_line), 1, "moto saw one GET of the object:\n{}", moto.log());

    // The server goes away: what is cached is still served.
    moto.stop();
    assert_eq!(std::fs::read(store.local_file(&sha).await.unwrap()).unwrap(), bytes);
    assert_eq!(read_all(store.as_ref(), &sha).await, bytes);
    // What is not cached is an error naming the object, not a hang or a panic.
    let other = hex::encode(Sha256::digest(b"never uploaded"));
    let err = store.local_file(&other).await.unwrap_err();
    assert!(format!("{err:#}").contains(&store.object_key(&other)), "{err:#}");
}

#[tokio::test]
async fn the_cache_keeps_to_its_size_limit() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = moto.settings(dir.path().join("cache"));
    settings.cache_max_bytes = 250 * 1024;
    let store = S3BlobStore::new(settings).unwrap();
    let mut shas = Vec::new();
    for seed in 0..3 {
        let staged = stage(dir.path(), &image(100 * 1024, seed)).await;
        store.put(&staged).await.unwrap();
        shas.push(staged.sha256.clone());
    }
    let first = store.local_file(&shas[0]).await.unwrap();
    let second = store.local_file(&shas[1]).await.unwrap();
    // Touch the first, so the second is the least recently used when the third arrives.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(store.local_file(&shas[0]).await.unwrap(), first);
    let third = store.local_file(&shas[2]).await.unwrap();
    assert!(first.exists() && third.exists());
    assert!(!second.exists(), "the least recently used file went");
    assert_eq!(store.fetches(), 3);
    // Evicted means fetched again on the next read.
    assert!(store.local_file(&shas[1]).await.unwrap().exists());
    assert_eq!(store.fetches(), 4);
}

#[tokio::test]
async fn the_start_check_names_the_setting_at_fault() {
    let Some(moto) = Moto::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = moto.settings(dir.path().join("cache"));
    settings.bucket = "no-such-bucket".into();
    let err = S3BlobStore::new(settings).unwrap().check().await.unwrap_err().to_string();
    assert!(err.contains("`no-such-bucket` does not exist") && err.contains("s3_bucket"), "{err}");

    // Nothing listening there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = moto.settings(dir.path().join("cache"));
    settings.endpoint = format!("http://127.0.0.1:{port}");
    let err = S3BlobStore::new(settings).unwrap().check().await.unwrap_err().to_string();
    assert!(err.contains("cannot reach the S3 store") && err.contains("s3_endpoint"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
