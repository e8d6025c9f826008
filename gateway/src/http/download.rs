//! Firmware downloads from a file on this node's disk, sent by the kernel.
//!
//! The first write holds the head and the first [`FIRST_BODY_PART_BYTES`] of the body (the
//! whole body when it is shorter), so GAgent's first 600-byte `recv` is full and holds every
//! header (`device-protocol.md#the-600-byte-first-read`,
//! `device-protocol.md#observed-download-first-read`). Those bytes are read from the file when
//! the download is opened ([`DownloadFile::open`], one trip to the blocking pool per download,
//! which also opens the file).
//!
//! The rest goes from the page cache to the socket with `sendfile(2)` on Linux: no user-space
//! copy, no buffer, no thread pool. The socket is non-blocking; each `sendfile` hands the kernel
//! what fits in the socket's send buffer and the task waits for tokio's write readiness in
//! between ([`TcpStream::try_io`]), so no runtime thread ever blocks on a slow device.
//! Elsewhere the body is read into one buffer, allocated once per download and reused for every
//! write.
//!
//! What is counted as sent is what the kernel accepted. The device HTTP listener keeps the
//! send buffer small (`DEVICE_HTTP_SEND_BUFFER`), so that count stays close to what the device
//! really took and a device that drops the connection halfway shows as a cut download.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::error::HttpError;
use super::response::{DownloadHead, download_head};

/// How much of the body goes out in the same write as the head: at least
/// [`super::response::DEVICE_FIRST_READ_BYTES`] when the image is long enough.
pub const FIRST_BODY_PART_BYTES: u64 = 4096;

/// A firmware file opened for one download, with its first write ready.
#[derive(Debug)]
pub struct DownloadFile {
    file: File,
    /// The head, then the first part of the body.
    first: Vec<u8>,
    /// Body bytes inside `first`.
    first_body: u64,
    /// The body length the head declares.
    content_length: u64,
}

impl DownloadFile {
    /// Opens `path` for a download with `head`: builds the head, checks that the file holds at
    /// least `head.content_length` bytes and reads the first part of the body, all on the
    /// blocking pool. A bad head is an [`io::ErrorKind::InvalidInput`] error, a file shorter
    /// than declared an [`io::ErrorKind::UnexpectedEof`] one: either way nothing is sent.
    pub async fn open(path: PathBuf, head: &DownloadHead) -> io::Result<DownloadFile> {
        let head_bytes = download_head(head).map_err(invalid_head)?;
        let content_length = head.content_length;
        tokio::task::spawn_blocking(move || {
            let file = File::open(&path)?;
            DownloadFile::with_head(file, &head_bytes, content_length)
        })
        .await
        .map_err(io::Error::other)?
    }

    /// [`DownloadFile::open`] on an open file, blocking (reads up to 4 KiB).
    pub fn from_file(file: File, head: &DownloadHead) -> io::Result<DownloadFile> {
        let head_bytes = download_head(head).map_err(invalid_head)?;
        DownloadFile::with_head(file, &head_bytes, head.content_length)
    }

    fn with_head(file: File, head: &[u8], content_length: u64) -> io::Result<DownloadFile> {
        let len = file.metadata()?.len();
        if len < content_length {
            return Err(short_body(len, content_length));
        }
        let first_body = content_length.min(FIRST_BODY_PART_BYTES);
        // At most 512 + 4096 bytes: the only allocation of the download.
        let mut first = vec![0; head.len() + usize::try_from(first_body).unwrap_or(0)];
        first[..head.len()].copy_from_slice(head);
        read_exact_at(&file, &mut first[head.len()..], 0)?;
        Ok(DownloadFile { file, first, first_body, content_length })
    }

    /// What the first write sends: the head and the first part of the body.
    pub fn first_write(&self) -> &[u8] {
        &self.first
    }

    /// The body length the head declares.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    /// Sends the download on `w`: the first write, then the rest of the body. `sent` counts the
    /// body bytes the kernel has accepted so far; it stays right when the future is dropped
    /// (the download timeout), and is what a cut download reports.
    ///
    /// Exactly `content_length` body bytes are sent. A file that ends early (it cannot, unless
    /// it is changed under us: content is addressed by its digest) is an
    /// [`io::ErrorKind::UnexpectedEof`] error after what it had, never padded.
    pub async fn send(&self, w: &mut OwnedWriteHalf, sent: &mut u64) -> io::Result<()> {
        w.write_all(&self.first).await?;
        *sent = self.first_body;
        let stream: &TcpStream = w.as_ref();
        self.send_rest(stream, sent).await?;
        if *sent < self.content_length {
            return Err(short_body(*sent, self.content_length));
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    async fn send_rest(&self, stream: &TcpStream, sent: &mut u64) -> io::Result<()> {
        /// One `sendfile` moves at most this much (Linux moves at most 0x7ffff000 anyway).
        const MAX_PER_CALL: u64 = 1 << 30;
        while *sent < self.content_length {
            let want = usize::try_from((self.content_length - *sent).min(MAX_PER_CALL)).unwrap_or(1 << 20);
            stream.writable().await?;
            let mut offset = *sent;
            let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, &self.file, Some(&mut offset), want).map_err(io::Error::from)
            });
            match result {
                Ok(0) => return Err(short_body(*sent, self.content_length)),
                Ok(n) => *sent += n as u64,
                // Readiness was cleared by try_io: wait for the socket to drain.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    async fn send_rest(&self, stream: &TcpStream, sent: &mut u64) -> io::Result<()> {
        // No sendfile: one buffer for the whole download, reused by every write.
        const BUFFER: u64 = 64 * 1024;
        let mut buf = vec![0; usize::try_from((self.content_length - *sent).min(BUFFER)).unwrap_or(0)];
        while *sent < self.content_length {
            let n = usize::try_from((self.content_length - *sent).min(buf.len() as u64)).unwrap_or(buf.len());
            let part = &mut buf[..n];
            read_exact_at(&self.file, part, *sent).map_err(|_| short_body(*sent, self.content_length))?;
            let mut written = 0;
            while written < n {
                stream.writable().await?;
                match stream.try_write(&part[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        written += k;
                        *sent += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Fills `buf` from `file` at `offset`, without moving the file's cursor.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let mut done = 0;
        while done < buf.len() {
            match std::os::windows::fs::FileExt::seek_read(file, &mut buf[done..], offset + done as u64)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }
}

fn invalid_head(err: HttpError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, err)
}

fn short_body(sent: u64, declared: u64) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, format!("firmware body ended after {sent} of {declared} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::DEVICE_FIRST_READ_BYTES;
    use std::io::Write as _;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn firmware(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(7) % 251) as u8).collect()
    }

    fn head(content_length: u64) -> DownloadHead {
        DownloadHead {
            content_length,
            md5_hex: "3F2A0000111122223333444455556666".into(),
            version_header: Some(("Soft-Version", "04020021".into())),
            filename: "GAgent_00ESP826_04020021_16110718.bin".into(),
        }
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    /// Serves `dl` on one loopback connection; returns what the client read, the server's
    /// result and its sent count.
    async fn over_loopback(dl: DownloadFile) -> (Vec<u8>, io::Result<()>, u64) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (_read, mut write) = socket.into_split();
            let mut sent = 0;
            let result = dl.send(&mut write, &mut sent).await;
            (result, sent)
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let (result, sent) = server.await.unwrap();
        (got, result, sent)
    }

    /// The first write is the head and the first 4 KiB of the body (all of it when shorter),
    /// for the sizes around every edge: the device's 600-byte first read, 1 KiB (the smallest
    /// image the domain takes), 4 KiB, and a large odd size.
    #[tokio::test]
    async fn first_write_holds_the_head_and_the_body_start_and_bodies_are_exact() {
        let head_len = download_head(&head(0)).unwrap().len();
        let around_600 = DEVICE_FIRST_READ_BYTES - head_len;
        for size in [0, 1, around_600 - 1, around_600, around_600 + 1, 599, 600, 601, 1024, 4095, 4096, 4097, 1_048_579]
        {
            let image = firmware(size);
            let file = file_with(&image);
            let dl = DownloadFile::open(file.path().to_owned(), &head(size as u64)).await.unwrap();
            let head_bytes = download_head(&head(size as u64)).unwrap();
            let first = dl.first_write();
            let in_first = size.min(FIRST_BODY_PART_BYTES as usize);
            assert_eq!(first.len(), head_bytes.len() + in_first, "size {size}");
            assert_eq!(&first[..head_bytes.len()], &head_bytes[..], "size {size}");
            assert_eq!(&first[head_bytes.len()..], &image[..in_first], "size {size}");
            if size + head_bytes.len() >= DEVICE_FIRST_READ_BYTES {
                assert!(first.len() >= DEVICE_FIRST_READ_BYTES, "size {size}: the device's first read is full");
            }

            let (got, result, sent) = over_loopback(dl).await;
            result.unwrap();
            assert_eq!(sent, size as u64);
            assert_eq!(&got[..head_bytes.len()], &head_bytes[..]);
            assert!(got[head_bytes.len()..] == image[..], "size {size}: body differs");
        }
    }

    #[tokio::test]
    async fn a_file_longer_than_declared_is_cut_at_content_length() {
        let image = firmware(20_000);
        let file = file_with(&image);
        let dl = DownloadFile::open(file.path().to_owned(), &head(9_000)).await.unwrap();
        let (got, result, sent) = over_loopback(dl).await;
        result.unwrap();
        assert_eq!(sent, 9_000);
        let head_len = download_head(&head(9_000)).unwrap().len();
        assert_eq!(got[head_len..], image[..9_000]);
    }

    #[tokio::test]
    async fn short_files_and_bad_heads_send_nothing() {
        let file = file_with(&firmware(5_000));
        let err = DownloadFile::open(file.path().to_owned(), &head(5_001)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("after 5000 of 5001 bytes"), "{err}");
        let mut bad = head(10);
        bad.md5_hex = "xyz".into();
        let err = DownloadFile::open(file.path().to_owned(), &bad).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = DownloadFile::open(file.path().with_extension("gone"), &head(10)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    /// A file that shrinks after it was opened: what it still had goes out, then an error;
    /// the body is never padded.
    #[tokio::test]
    async fn a_file_that_ends_early_is_an_error_after_what_it_had() {
        let image = firmware(300_000);
        let file = file_with(&image);
        let dl = DownloadFile::open(file.path().to_owned(), &head(300_000)).await.unwrap();
        file.as_file().set_len(100_000).unwrap();
        let (got, result, sent) = over_loopback(dl).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(sent, 100_000);
        assert!(err.to_string().contains("after 100000 of 300000 bytes"), "{err}");
        let head_len = download_head(&head(300_000)).unwrap().len();
        assert_eq!(got[head_len..], image[..100_000]);
    }

    /// A client that reads a little and goes away: the server's send fails with the body bytes
    /// the kernel took, more than the client read and less than the image.
    #[tokio::test]
    async fn a_cut_connection_reports_the_bytes_sent() {
        let size = 8 << 20;
        let image = firmware(size);
        let file = file_with(&image);
        let dl = DownloadFile::open(file.path().to_owned(), &head(size as u64)).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            // As the device HTTP listener does (`DEVICE_HTTP_SEND_BUFFER`).
            socket2::SockRef::from(&socket).set_send_buffer_size(64 * 1024).unwrap();
            let (_read, mut write) = socket.into_split();
            let mut sent = 0;
            let result = dl.send(&mut write, &mut sent).await;
            (result, sent)
        });
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_recv_buffer_size(8 * 1024).unwrap();
        let mut client = client.connect(addr).await.unwrap();
        let mut got = vec![0; 100_000];
        client.read_exact(&mut got).await.unwrap();
        drop(client);
        let (result, sent) = server.await.unwrap();
        let err = result.unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{err:?}");
        assert!(sent >= 100_000 - 512 && sent < size as u64 / 2, "sent {sent}");
    }
}
