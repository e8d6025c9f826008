//! The device's HTTP socket work: a fresh TCP connection per request, one `recv` of at most 1024
//! bytes for API replies, and the 600-byte first read of downloads
//! (`device-protocol.md#hosts-and-ports`, `device-protocol.md#one-1-kb-read-per-reply`,
//! `device-protocol.md#the-600-byte-first-read`).
//!
//! The firmware always connects to port 80 of the API host; the simulator connects to its
//! configured HTTP address instead, whatever host a URL names, and keeps the `Host` header.
//!
//! Each socket asks for a small receive buffer ([`DEVICE_RECEIVE_WINDOW`]), as a module's
//! embedded TCP stack offers a window of a few KiB. Loopback would otherwise grow the window
//! to megabytes, and the kernel would take a whole image on behalf of a device that reads half
//! of it and drops the connection: the gateway could not tell that cut from a complete
//! download, which no real device makes possible.

use std::net::SocketAddr;
use std::time::Duration;

use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{API_READ_LEN, DOWNLOAD_FIRST_READ, DownloadHead, ReplyError, parse_download_head};
use crate::spec::Faults;

/// A failed HTTP exchange, before any parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No reply within the wait (the firmware resends and waits longer).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// Connect or write failed, or the server closed without a byte.
    #[error("{0}")]
    Io(String),
}

/// The receive buffer a device socket asks for (see the module doc; Linux doubles it).
pub const DEVICE_RECEIVE_WINDOW: u32 = 8 * 1024;

/// GA `Cloud_InitSocket`: three connect attempts, 100 ms apart.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut last = None;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match connect_small_window(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("connect failed")))
}

async fn connect_small_window(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // Set before connecting, so the window offered in the handshake is already small.
    socket.set_recv_buffer_size(DEVICE_RECEIVE_WINDOW)?;
    socket.connect(addr).await
}

/// Sends one request on a fresh connection and returns what a single read of at most 1024
/// bytes gave — a longer reply is truncated, a reply split across writes may be cut short, as
/// on the device.
pub async fn api_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Result<Vec<u8>, NetError> {
    let exchange = async {
        let mut stream = connect(addr).await.map_err(|e| NetError::Io(format!("connect {addr}: {e}")))?;
        stream.write_all(request).await.map_err(|e| NetError::Io(format!("write: {e}")))?;
        let mut buf = vec![0u8; API_READ_LEN];
        let n = stream.read(&mut buf).await.map_err(|e| NetError::Io(format!("read: {e}")))?;
        if n == 0 {
            return Err(NetError::Io("server closed without a reply".into()));
        }
        buf.truncate(n);
        Ok(buf)
    };
    tokio::time::timeout(wait, exchange).await.unwrap_or(Err(NetError::Timeout(wait)))
}

/// Why a download failed. Nothing of this reaches the cloud
/// (`device-protocol.md#what-the-cloud-can-see`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DownloadError {
    /// Connect, write or read failed, or a timeout.
    #[error("{0}")]
    Net(NetError),
    /// The server closed before the first 600 bytes (GA assumes a full first read).
    #[error("first read got {0} of 600 bytes before the server closed")]
    ShortFirstRead(usize),
    /// Bad status or headers.
    #[error("{0}")]
    Head(ReplyError),
    /// Headers plus the whole image fit in 600 bytes: the real firmware segfaults
    /// (`device-protocol.md#observed-download-first-read`).
    #[error("image of {content_length} bytes fits in the first 600-byte read: GA would crash")]
    ImageTooSmall {
        /// The announced length.
        content_length: usize,
    },
    /// The server closed before `Content-Length` bytes.
    #[error("body ended after {got} of {expected} bytes")]
    ShortBody {
        /// Received.
        got: usize,
        /// Announced.
        expected: usize,
    },
    /// The `drop_mid_download` fault cut the connection.
    #[error("connection dropped mid-download (injected fault)")]
    Dropped,
}

/// A fully received download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// The image when it was kept (MCU images go on to the serial link).
    pub image: Option<Vec<u8>>,
    /// MD5 of what was received, lowercase hex.
    pub computed_md5: String,
    /// Case-insensitive comparison with `Firmware-MD5`.
    pub md5_ok: bool,
}

/// The headers are returned apart from the body result because GA acts on them at once (the
/// `Soft-Version` echo, `device-protocol.md#observed-mcu-soft-version-echo`), whatever happens to
/// the body.
#[derive(Debug)]
pub struct DownloadOutcome {
    /// Headers, if the first read held valid ones.
    pub head: Option<DownloadHead>,
    /// The body.
    pub result: Result<Downloaded, DownloadError>,
}

/// GA `Http_ReqGetFirmware` / `Http_ResGetFirmware`: exactly 600 bytes first, all headers in
/// them, then the rest of `Content-Length`, MD5 as it streams.
pub async fn download(
    addr: SocketAddr,
    request: &[u8],
    wait: Duration,
    keep_image: bool,
    faults: Faults,
) -> DownloadOutcome {
    let mut head_slot = None;
    let work = download_inner(addr, request, keep_image, faults, &mut head_slot);
    let result = match tokio::time::timeout(wait, work).await {
        Ok(result) => result,
        Err(_) => Err(DownloadError::Net(NetError::Timeout(wait))),
    };
    DownloadOutcome { head: head_slot, result }
}

async fn download_inner(
    addr: SocketAddr,
    request: &[u8],
    keep_image: bool,
    faults: Faults,
    head_slot: &mut Option<DownloadHead>,
) -> Result<Downloaded, DownloadError> {
    let net = |what: &str, e: std::io::Error| DownloadError::Net(NetError::Io(format!("{what}: {e}")));
    let mut stream = connect(addr).await.map_err(|e| net("connect", e))?;
    stream.write_all(request).await.map_err(|e| net("write", e))?;

    let mut first = vec![0u8; DOWNLOAD_FIRST_READ];
    let mut got = 0;
    while got < first.len() {
        let n = stream.read(&mut first[got..]).await.map_err(|e| net("read", e))?;
        if n == 0 {
            // Still try the headers, so a short but well-formed reply is diagnosed precisely.
            if let Ok(head) = parse_download_head(&first[..got])
                && head.header_len + head.content_length <= DOWNLOAD_FIRST_READ
            {
                return Err(DownloadError::ImageTooSmall { content_length: head.content_length });
            }
            return Err(DownloadError::ShortFirstRead(got));
        }
        got += n;
    }
    let head = parse_download_head(&first).map_err(DownloadError::Head)?;
    *head_slot = Some(head.clone());
    let expected = head.content_length;
    let body_start = head.header_len;
    let in_first = DOWNLOAD_FIRST_READ - body_start;
    if expected < in_first {
        return Err(DownloadError::ImageTooSmall { content_length: expected });
    }

    let corrupt_at = faults.corrupt_byte.then_some(expected / 2);
    let drop_at = faults.drop_mid_download.then_some(expected / 2);
    let mut hasher = Md5::new();
    let mut image = keep_image.then(|| Vec::with_capacity(expected));
    let mut received = 0usize;
    let mut take = |chunk: &mut [u8], received: &mut usize| {
        if let Some(at) = corrupt_at
            && at >= *received
            && at < *received + chunk.len()
        {
            chunk[at - *received] ^= 0xFF;
        }
        hasher.update(&*chunk);
        if let Some(image) = image.as_mut() {
            image.extend_from_slice(chunk);
        }
        *received += chunk.len();
    };
    take(&mut first[body_start..], &mut received);

    let mut buf = vec![0u8; 4096];
    while received < expected {
        if drop_at.is_some_and(|at| received >= at) {
            return Err(DownloadError::Dropped);
        }
        let want = (expected - received).min(buf.len());
        let n = stream.read(&mut buf[..want]).await.map_err(|e| net("read", e))?;
        if n == 0 {
            return Err(DownloadError::ShortBody { got: received, expected });
        }
        take(&mut buf[..n], &mut received);
    }
    let computed_md5 = hex::encode(hasher.finalize());
    let md5_ok = computed_md5.eq_ignore_ascii_case(&head.md5);
    Ok(Downloaded { image, computed_md5, md5_ok })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(reply: Vec<u8>, split_at: Option<usize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 2048];
            let _ = s.read(&mut req).await.unwrap();
            match split_at {
                None => s.write_all(&reply).await.unwrap(),
                Some(at) => {
                    s.write_all(&reply[..at]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.write_all(&reply[at..]).await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        addr
    }

    fn firmware_reply(image: &[u8], md5: &str) -> Vec<u8> {
        let mut reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nFirmware-MD5: {md5}\r\nSoft-Version: 04020021\r\n\
             Content-Disposition: attachment; filename=\"GAgent_00ESP826_04020021_16110718.bin\"\r\n\r\n",
            image.len()
        )
        .into_bytes();
        reply.extend_from_slice(image);
        reply
    }

    #[tokio::test]
    async fn api_reply_is_one_read_of_at_most_1024_bytes() {
        let mut long = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 3000));
        let addr = serve_once(long, None).await;
        let got = api_exchange(addr, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), API_READ_LEN);

        // Headers and body in two writes: the single read sees only the headers.
        let reply = b"HTTP/1.1 201 Created\r\n\r\ndid=uNMdYrcV3YN6DZhQPc5ugW".to_vec();
        let addr = serve_once(reply, Some(24)).await;
        let got = api_exchange(addr, b"POST / HTTP/1.1\r\n\r\n", Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 201 Created\r\n\r\n");
    }

    #[tokio::test]
    async fn download_checks_md5_and_honours_faults() {
        let image: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let md5 = hex::encode_upper(Md5::digest(&image));
        let addr = serve_once(firmware_reply(&image, &md5), None).await;
        let out = download(addr, b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(5), true, Faults::default()).await;
        let done = out.result.unwrap();
        assert!(done.md5_ok, "case-insensitive compare");
        assert_eq!(done.image.unwrap(), image);
        assert_eq!(out.head.unwrap().soft_version.as_deref(), Some("04020021"));

        let addr = serve_once(firmware_reply(&image, &md5), None).await;
        let faults = Faults { corrupt_byte: true, ..Faults::default() };
        let out = download(addr, b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(5), false, faults).await;
        assert!(!out.result.unwrap().md5_ok);

        let addr = serve_once(firmware_reply(&image, &md5), None).await;
        let faults = Faults { drop_mid_download: true, ..Faults::default() };
        let out = download(addr, b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(5), false, faults).await;
        assert_eq!(out.result.unwrap_err(), DownloadError::Dropped);
    }

    /// A device that drops a 2 MiB download halfway leaves the server's write failing: its
    /// small window keeps the kernel from taking the rest of the image on its behalf.
    #[tokio::test]
    async fn a_download_dropped_halfway_fails_the_servers_write() {
        let image: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let md5 = hex::encode(Md5::digest(&image));
        let reply = firmware_reply(&image, &md5);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // The gateway's device listener keeps its send buffer at 64 KiB.
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 2048];
            let _ = s.read(&mut req).await.unwrap();
            s.write_all(&reply).await
        });
        let faults = Faults { drop_mid_download: true, ..Faults::default() };
        let out = download(addr, b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(5), false, faults).await;
        assert_eq!(out.result.unwrap_err(), DownloadError::Dropped);
        let written = tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        assert!(written.is_err(), "the server wrote the whole image to a device that read half of it");
    }

    #[tokio::test]
    async fn device_sockets_offer_a_small_window() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = connect(listener.local_addr().unwrap()).await.unwrap();
        let socket = tokio::net::TcpSocket::from_std_stream(stream.into_std().unwrap());
        // Linux doubles what was asked for; loopback's own default is 128 KiB and grows.
        assert!(socket.recv_buffer_size().unwrap() <= 2 * DEVICE_RECEIVE_WINDOW);
    }

    #[tokio::test]
    async fn tiny_image_is_refused_like_a_crash() {
        let image = vec![1u8; 100];
        let md5 = hex::encode(Md5::digest(&image));
        let addr = serve_once(firmware_reply(&image, &md5), None).await;
        let out = download(addr, b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(5), false, Faults::default()).await;
        assert_eq!(out.result.unwrap_err(), DownloadError::ImageTooSmall { content_length: 100 });
    }
}
