//! Firmware file storage.
//!
//! An upload is first *staged*: streamed into a temporary file next to the store while its
//! size, MD5, SHA-256 and CRC32 are computed and the size limit is enforced chunk by chunk.
//! Only a complete, validated, fsync'ed staged file is moved into the [`BlobStore`], under its
//! SHA-256, so nothing half-written is ever served, and a failed or aborted upload leaves no
//! file (the staged file deletes itself when dropped).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{DomainError, Result};

pub mod s3;

/// A stream of file bytes, as served to clients and devices.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where firmware bytes live, addressed by their SHA-256 (lowercase hex).
///
/// The default keeps files under the data directory. Several nodes sharing a database need a
/// shared store: [`s3::S3BlobStore`] keeps them in an S3-compatible object store, with a
/// read-through cache on each node.
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the staged file under `staged.sha256`. Idempotent: storing equal content twice
    /// keeps one copy.
    fn put<'a>(&'a self, staged: &'a StagedFile) -> BoxFuture<'a, Result<()>>;
    /// Streams the stored bytes.
    fn open<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<BlobStream>>;
    /// Removes the bytes; removing what is not there is not an error.
    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<()>>;
    /// A file on this node's disk that holds exactly the stored bytes, so a download can be
    /// served from the page cache without copying (`sendfile`). The local store answers with
    /// its own file; a remote store fills a read-through cache on this node first. The file is
    /// never rewritten in place: content is addressed by its digest.
    fn local_file<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<PathBuf>>;
}

/// A complete upload in a temporary file, with its digests.
#[derive(Debug)]
pub struct StagedFile {
    path: tempfile::TempPath,
    /// The client's file name, reduced to its last path component.
    pub file_name: String,
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub crc32: u32,
}

impl StagedFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lowercase extension of the file name, without the dot.
    pub fn extension(&self) -> Option<String> {
        Path::new(&self.file_name).extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
    }
}

/// Why a chunk could not be staged.
#[derive(Debug)]
pub enum StageError {
    /// The file grew past the limit; the partial file is already gone.
    TooLarge {
        limit: u64,
    },
    Io(std::io::Error),
}

/// Writes one upload into the staging directory.
pub struct StagingWriter {
    file: tokio::fs::File,
    path: tempfile::TempPath,
    file_name: String,
    limit: u64,
    size: u64,
    md5: Md5,
    sha256: Sha256,
    crc32: crc32fast::Hasher,
}

impl StagingWriter {
    pub async fn create(dir: &Path, file_name: &str, limit: u64) -> std::io::Result<StagingWriter> {
        let dir = dir.to_owned();
        let (file, path) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            tempfile::Builder::new().prefix("upload-").tempfile_in(&dir).map(|f| f.into_parts())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(StagingWriter {
            file: tokio::fs::File::from_std(file),
            path,
            file_name: sanitize_file_name(file_name),
            limit,
            size: 0,
            md5: Md5::new(),
            sha256: Sha256::new(),
            crc32: crc32fast::Hasher::new(),
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StageError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(StageError::TooLarge { limit: self.limit });
        }
        self.md5.update(chunk);
        self.sha256.update(chunk);
        self.crc32.update(chunk);
        self.file.write_all(chunk).await.map_err(StageError::Io)
    }

    /// Flushes to disk and returns the staged file.
    pub async fn finish(mut self) -> std::io::Result<StagedFile> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        Ok(StagedFile {
            path: self.path,
            file_name: self.file_name,
            size: self.size,
            md5: hex::encode(self.md5.finalize()),
            sha256: hex::encode(self.sha256.finalize()),
            crc32: self.crc32.finalize(),
        })
    }
}

/// Keeps the last path component and drops control characters and quotes, so the name is
/// safe inside `Content-Disposition`.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = last.chars().filter(|c| !c.is_control() && !matches!(c, '"' | ';')).collect();
    cleaned.chars().take(128).collect()
}

/// The key is always a digest we computed (lowercase hex SHA-256); anything else is refused
/// rather than turned into a path or an object key.
pub(crate) fn check_key(sha256: &str) -> Result<&str> {
    if sha256.len() != 64 || !sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DomainError::Internal(anyhow::anyhow!("bad blob key {sha256:?}")));
    }
    Ok(sha256)
}

/// Streams a local file in 64 KiB chunks (the API's firmware download; devices get `sendfile`).
/// `what` names the file in the error.
pub(crate) async fn stream_file(path: &Path, what: &str) -> Result<BlobStream> {
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        DomainError::Internal(anyhow::Error::new(e).context(format!("opening {what} {}", path.display())))
    })?;
    let stream = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0_u8; 64 * 1024];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    });
    Ok(Box::pin(stream) as BlobStream)
}

/// The default store: `<root>/<first two hex digits>/<sha256>`.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<FsBlobStore> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(FsBlobStore { root })
    }

    fn path_of(&self, sha256: &str) -> Result<PathBuf> {
        let sha256 = check_key(sha256)?;
        Ok(self.root.join(&sha256[..2]).join(sha256))
    }
}

impl BlobStore for FsBlobStore {
    fn local_file<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<PathBuf>> {
        Box::pin(async move {
            let path = self.path_of(sha256)?;
            match tokio::fs::metadata(&path).await {
                Ok(m) if m.is_file() => Ok(path),
                Ok(_) => Err(DomainError::Internal(anyhow::anyhow!("blob {} is not a file", path.display()))),
                Err(e) => Err(DomainError::Internal(
                    anyhow::Error::new(e).context(format!("opening blob {}", path.display())),
                )),
            }
        })
    }

    fn put<'a>(&'a self, staged: &'a StagedFile) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let target = self.path_of(&staged.sha256)?;
            let source = staged.path().to_owned();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                if target.exists() {
                    return Ok(());
                }
                let dir = target.parent().unwrap_or(Path::new("."));
                std::fs::create_dir_all(dir)?;
                // Copy into a temporary name in the target directory, then rename: readers see
                // the whole file or none. (A hard link would do, but staging may sit on
                // another file system in some deployments.)
                let mut tmp = tempfile::Builder::new().prefix(".incoming-").tempfile_in(dir)?;
                let mut src = std::fs::File::open(&source)?;
                std::io::copy(&mut src, tmp.as_file_mut())?;
                tmp.as_file_mut().flush()?;
                tmp.as_file().sync_all()?;
                tmp.persist(&target).map_err(|e| e.error)?;
                Ok(())
            })
            .await
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("blob put task: {e}")))??;
            Ok(())
        })
    }

    fn open<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<BlobStream>> {
        Box::pin(async move {
            let path = self.path_of(sha256)?;
            stream_file(&path, "blob").await
        })
    }

    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let path = self.path_of(sha256)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    #[test]
    fn file_names_are_reduced_to_a_safe_last_component() {
        assert_eq!(sanitize_file_name("C:\\fw\\GAgent.bin"), "GAgent.bin");
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("a\"b;c\n.bin"), "abc.bin");
    }

    #[tokio::test]
    async fn staged_file_round_trips_through_the_store_and_limit_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::new(dir.path().join("blobs")).unwrap();
        let mut w = StagingWriter::create(&dir.path().join("tmp"), "x/fw.bin", 10).await.unwrap();
        w.write(b"hello").await.unwrap();
        w.write(b"world").await.unwrap();
        let staged = w.finish().await.unwrap();
        assert_eq!(staged.file_name, "fw.bin");
        assert_eq!(staged.size, 10);
        assert_eq!(staged.md5, "fc5e038d38a57032085441e7fe7010b0");
        assert_eq!(staged.crc32, crc32fast::hash(b"helloworld"));
        store.put(&staged).await.unwrap();
        store.put(&staged).await.unwrap();
        let bytes: Vec<Bytes> = store.open(&staged.sha256).await.unwrap().try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"helloworld");
        let local = store.local_file(&staged.sha256).await.unwrap();
        assert_eq!(std::fs::read(local).unwrap(), b"helloworld");
        let staged_path = staged.path().to_owned();
        drop(staged);
        assert!(!staged_path.exists(), "the staged file removes itself");
        store.delete(&hex::encode(Sha256::digest(b"helloworld"))).await.unwrap();
        assert!(store.open(&hex::encode(Sha256::digest(b"helloworld"))).await.is_err());
        assert!(store.local_file(&hex::encode(Sha256::digest(b"helloworld"))).await.is_err());

        let mut w = StagingWriter::create(&dir.path().join("tmp"), "big.bin", 4).await.unwrap();
        assert!(matches!(w.write(b"12345").await, Err(StageError::TooLarge { limit: 4 })));
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no partial file is left");
    }
}
