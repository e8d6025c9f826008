//! A small accept loop: one task per connection, one request per connection, then close.
//!
//! GAgent closes its previous socket and opens a fresh connection for every request
//! (`device-protocol.md#hosts-and-ports`), so there is no keep-alive to support, and every reply
//! says `Connection: close`. A malformed request costs only its own connection: it gets a 4xx API
//! reply with the body of `device-protocol.md#open-question-the-no-update-reply` and the socket is
//! closed. The number of connections is bounded by a semaphore; when it is exhausted, new
//! connections are accepted and closed at once rather than left in the backlog.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tracing::Instrument;

use super::download::DownloadFile;
use super::error::HttpError;
use super::request::{Limits, Request, read_request};
use super::response::{api_reply, error_reply};

/// After an error reply, at most this much of what the peer still sends is read and dropped
/// before closing, so that the close is a FIN and not a RST that could destroy the reply
/// before the peer reads it.
const LINGER_BYTES: u64 = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// How long the accept loop pauses after an accept error (EMFILE, ENFILE, ENOBUFS...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the server does with a request.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request from `peer`. Must not panic: a panic loses the device's reply.
    fn handle(&self, req: Request, peer: SocketAddr) -> impl Future<Output = Reply> + Send;
}

/// Called once a download has ended, with the body bytes sent (accepted by the kernel) and how it
/// ended: `Ok`, or why it failed (a write error such as a connection the device cut, a body
/// shorter than its Content-Length, the download timeout). The download status of
/// `device-protocol.md#open-question-progress-and-result-reports` is recorded from it; it runs on
/// the connection task, so it must not block.
pub type DoneHook = Box<dyn FnOnce(u64, std::io::Result<()>) + Send>;

/// The answer to one request.
pub enum Reply {
    /// A complete, prebuilt response (usually from [`api_reply`]), written in one write.
    Bytes(Bytes),
    /// A firmware download: the head and the start of the body in one write, then the rest by
    /// `sendfile` ([`DownloadFile::send`]).
    Download {
        /// The opened file, with its head.
        file: DownloadFile,
        /// Told how the download ended, if given.
        on_done: Option<DoneHook>,
    },
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(bytes) => f.debug_tuple("Bytes").field(&bytes.len()).finish(),
            Self::Download { file, on_done } => f
                .debug_struct("Download")
                .field("content_length", &file.content_length())
                .field("on_done", &on_done.is_some())
                .finish_non_exhaustive(),
        }
    }
}

/// Counters, shared with whoever wants to expose them.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests read successfully and handed to the handler.
    pub requests: AtomicU64,
    /// Requests refused as malformed or over a limit (read timeouts not included).
    pub bad_requests: AtomicU64,
    /// Requests not complete within the read timeout.
    pub read_timeouts: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Errors from `accept` (usually running out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Requests whose handler did not answer within `handler_timeout` (answered 503).
    pub handler_timeouts: AtomicU64,
}

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Size limits for a request.
    pub limits: Limits,
    /// The whole request (head and body) must arrive within this.
    pub read_timeout: Duration,
    /// The handler must answer within this, or the peer gets a 503.
    pub handler_timeout: Duration,
    /// Writing an API reply must finish within this.
    pub write_timeout: Duration,
    /// A whole firmware download must finish within this (a slow device still gets its image;
    /// a stalled one does not keep a connection slot for ever).
    pub download_timeout: Duration,
    /// At most this many connections are served at once.
    pub max_connections: usize,
    /// On shutdown, how long open connections may take to finish.
    pub shutdown_grace: Duration,
    /// Counters, updated by the server.
    pub stats: Arc<ServerStats>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            read_timeout: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(15 * 60),
            max_connections: 20_000,
            shutdown_grace: Duration::from_secs(10),
            stats: Arc::default(),
        }
    }
}

/// Accepts connections until `shutdown` completes, then waits up to `shutdown_grace` for the
/// open ones. Never returns early because of an accept error.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let max = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    let settings = Arc::new(settings);
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                settings.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "accept failed; backing off");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            settings.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let handler = Arc::clone(&handler);
        let settings = Arc::clone(&settings);
        // Every log line of this request carries its id (`request_id`), as the API's do.
        let span = tracing::info_span!("device_http", request_id = %request_id(), %peer);
        tokio::spawn(
            async move {
                serve_connection(stream, peer, handler.as_ref(), &settings, permit).await;
            }
            .instrument(span),
        );
    }

    // All permits back means every connection has sent its reply.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if timeout(settings.shutdown_grace, permits.acquire_many(all)).await.is_err() {
        tracing::info!("shutdown grace period over with connections still open");
    }
}

/// Serves one connection; `permit` is its connection slot, released once the reply is out.
async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &H,
    settings: &ServerSettings,
    permit: OwnedSemaphorePermit,
) {
    // Replies go out in one write; do not let Nagle hold back the tail of a download.
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let stats = &settings.stats;

    let err = match timeout(settings.read_timeout, read_request(&mut reader, &settings.limits)).await {
        Ok(Ok(None)) => return,
        Ok(Ok(Some(req))) => {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let method = req.method.clone();
            let path = req.path.clone();
            let reply = match timeout(settings.handler_timeout, handler.handle(req, peer)).await {
                Ok(reply) => reply,
                Err(_) => {
                    stats.handler_timeouts.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(ota_domain::metrics::DEVICE_HTTP_HANDLER_TIMEOUTS).increment(1);
                    tracing::warn!(%peer, %method, %path, "handler timed out");
                    match api_reply(503, "application/json", br#"{"error_code":503,"error_message":"handler_timeout"}"#)
                    {
                        Ok(bytes) => Reply::Bytes(bytes),
                        Err(_) => return,
                    }
                }
            };
            let status = match &reply {
                Reply::Bytes(bytes) => reply_status(bytes),
                Reply::Download { .. } => "200",
            };
            // The path only: a query string may carry a passcode.
            tracing::debug!(target: "ota_gateway::access", %method, %path, status, "device request");
            send_reply(&mut write_half, reply, peer, settings).await;
            // Released before the FIN, so a peer that has seen the end of its reply can count
            // on the slot being free again.
            drop(permit);
            let _ = write_half.shutdown().await;
            return;
        }
        Ok(Err(err)) => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            err
        }
        Err(_) => {
            stats.read_timeouts.fetch_add(1, Ordering::Relaxed);
            HttpError::Timeout
        }
    };

    tracing::debug!(%peer, code = err.code(), error = %err, "refused request");
    if matches!(err, HttpError::Io(_)) {
        // The socket is broken; there is no one to answer.
        return;
    }
    if let Ok(bytes) = error_reply(&err) {
        metrics::counter!(ota_domain::metrics::DEVICE_HTTP_REQUESTS, "status" => reply_status(&bytes)).increment(1);
        let _ = timeout(settings.write_timeout, write_half.write_all(&bytes)).await;
    }
    let _ = write_half.shutdown().await;
    // Lingering close: drop what the peer is still sending for a moment, so the kernel does not
    // answer it with a RST that could discard our reply in the peer's receive buffer.
    let mut sink = tokio::io::sink();
    let _ = timeout(LINGER_TIME, tokio::io::copy(&mut (&mut reader).take(LINGER_BYTES), &mut sink)).await;
}

/// A fresh request id: 16 hex digits.
fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The status of a prebuilt reply (`HTTP/1.1 200 ...`), for the request counter.
fn reply_status(bytes: &[u8]) -> &'static str {
    match bytes.get(9..12) {
        Some(b"200") => "200",
        Some(b"201") => "201",
        Some(b"400") => "400",
        Some(b"403") => "403",
        Some(b"404") => "404",
        Some(b"409") => "409",
        Some(b"429") => "429",
        Some(b"503") => "503",
        Some(s) if s.first() == Some(&b'4') => "4xx",
        Some(s) if s.first() == Some(&b'5') => "5xx",
        _ => "other",
    }
}

async fn send_reply(w: &mut OwnedWriteHalf, reply: Reply, peer: SocketAddr, settings: &ServerSettings) {
    let status = match &reply {
        Reply::Bytes(bytes) => reply_status(bytes),
        Reply::Download { .. } => "200",
    };
    metrics::counter!(ota_domain::metrics::DEVICE_HTTP_REQUESTS, "status" => status).increment(1);
    match reply {
        Reply::Bytes(bytes) => match timeout(settings.write_timeout, w.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "writing reply failed"),
            Err(_) => tracing::debug!(%peer, "writing reply timed out"),
        },
        Reply::Download { file, on_done } => {
            let mut sent = 0;
            let result = match timeout(settings.download_timeout, file.send(w, &mut sent)).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "download timed out")),
            };
            match &result {
                Ok(()) => tracing::debug!(%peer, sent, "download sent"),
                Err(err) => tracing::warn!(%peer, sent, error = %err, "download failed"),
            }
            if let Some(on_done) = on_done {
                on_done(sent, result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::form::FormBuilder;
    use crate::http::response::DownloadHead;
    use tokio::sync::oneshot;

    /// Answers with the path and the form, or a download for `/dl/<len>`.
    type DoneSlot = Arc<std::sync::Mutex<Option<oneshot::Sender<(u64, Result<(), std::io::ErrorKind>)>>>>;

    /// `/short/<len>` declares 10 bytes more than it has; downloads report to `done`.
    #[derive(Default)]
    struct Echo {
        done: DoneSlot,
    }

    impl Handler for Echo {
        async fn handle(&self, req: Request, _peer: SocketAddr) -> Reply {
            let download = (req.path.strip_prefix("/dl/").map(|n| (n, 0)))
                .or_else(|| req.path.strip_prefix("/short/").map(|n| (n, 10)))
                .and_then(|(n, missing)| n.parse::<usize>().ok().map(|n| (n, missing)));
            if let Some((len, missing)) = download {
                let body: Vec<u8> = (0..len + missing).map(|i| (i % 256) as u8).collect();
                let mut tmp = tempfile::tempfile().unwrap();
                std::io::Write::write_all(&mut tmp, &body).unwrap();
                let head = DownloadHead {
                    content_length: (len + missing) as u64,
                    md5_hex: "00112233445566778899aabbccddeeff".into(),
                    version_header: None,
                    filename: "fw.bin".into(),
                };
                let file = DownloadFile::from_file(tmp.try_clone().unwrap(), &head).unwrap();
                // `/short/`: the file loses its tail once opened.
                tmp.set_len(len as u64).unwrap();
                let done = Arc::clone(&self.done);
                let on_done: DoneHook = Box::new(move |sent, result| {
                    let _ = done.lock().unwrap().take().map(|tx| tx.send((sent, result.map_err(|e| e.kind()))));
                });
                return Reply::Download { file, on_done: Some(on_done) };
            }
            if req.path == "/slow" {
                std::future::pending::<()>().await;
            }
            let mut form = FormBuilder::new().pair("path", &req.path);
            for (k, v) in req.form() {
                form = form.pair(&k, v);
            }
            Reply::Bytes(api_reply(200, "text/plain", form.finish().as_bytes()).unwrap())
        }
    }

    struct Running {
        addr: SocketAddr,
        stats: Arc<ServerStats>,
        done: DoneSlot,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(settings: ServerSettings) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::clone(&settings.stats);
        let (stop, stopped) = oneshot::channel();
        let echo = Arc::new(Echo::default());
        let done = Arc::clone(&echo.done);
        let task = tokio::spawn(serve(listener, echo, settings, async {
            let _ = stopped.await;
        }));
        Running { addr, stats, done, stop: Some(stop), task }
    }

    async fn exchange_raw(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        out
    }

    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        String::from_utf8_lossy(&exchange_raw(addr, raw).await).into_owned()
    }

    const GOOD: &[u8] = b"POST /dev/ota/v4.1/update_and_check/AbCdEfGhIjKlMnOpQrStUv HTTP/1.1\r\n\
Host:api.gizwits.com\r\nContent-Length:70\r\nContent-Type: application/x-www-form-urlencoded\r\n\r\n\
passcode=KQXBDTRLMA&type=1&hard_version=00ESP826&soft_version=04020019";

    #[tokio::test]
    async fn serves_the_gagent_check_and_closes() {
        let server = start(ServerSettings::default()).await;
        let reply = exchange(server.addr, GOOD).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Connection: close\r\n"));
        assert!(
            reply.contains("path=/dev/ota/v4.1/update_and_check/AbCdEfGhIjKlMnOpQrStUv&passcode=KQXBDTRLMA&type=1")
        );
        assert!(reply.ends_with("\r\n0\r\n\r\n"));
        assert_eq!(server.stats.requests.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn garbage_gets_4xx_and_the_next_request_is_served() {
        let server = start(ServerSettings::default()).await;
        let mut huge_header = b"GET / HTTP/1.1\r\nX-Junk: ".to_vec();
        huge_header.extend(std::iter::repeat_n(b'a', 20_000));
        huge_header.extend_from_slice(b"\r\n\r\n");
        let mut junk: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(7919) % 256) as u8).collect();
        junk.extend_from_slice(b"\r\n\r\n");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (junk, "HTTP/1.1 4"),
            (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
            (b"GET / HTTP/1.1\r\nHost api.gizwits.com\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
            (huge_header, "HTTP/1.1 431 "),
            (b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\nabc".to_vec(), "HTTP/1.1 413 "),
            (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
            (b"POST / HTTP/1.1\r\nContent-Length: 7O\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), "HTTP/1.1 505 "),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: br\r\n\r\n".to_vec(), "HTTP/1.1 501 "),
        ];
        let count = cases.len() as u64;
        for (raw, expected) in cases {
            let reply = exchange(server.addr, &raw).await;
            assert!(reply.starts_with(expected), "{expected:?}: {reply:?}");
            assert!(reply.contains("{\"error_code\":"), "{reply}");
            let good = exchange(server.addr, GOOD).await;
            assert!(good.starts_with("HTTP/1.1 200 OK\r\n"), "{good}");
        }
        assert_eq!(server.stats.bad_requests.load(Ordering::Relaxed), count);
        assert_eq!(server.stats.requests.load(Ordering::Relaxed), count);
    }

    #[tokio::test]
    async fn a_silent_connection_times_out_with_408() {
        let settings = ServerSettings { read_timeout: Duration::from_millis(200), ..ServerSettings::default() };
        let server = start(settings).await;
        let reply = exchange(server.addr, b"GET /dev/devices/x HT").await;
        assert!(reply.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{reply}");
        assert_eq!(server.stats.read_timeouts.load(Ordering::Relaxed), 1);
        // An empty connection closed by the client gets nothing back.
        let mut empty = TcpStream::connect(server.addr).await.unwrap();
        empty.shutdown().await.unwrap();
        let mut out = Vec::new();
        empty.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn a_hung_handler_gets_503() {
        let settings = ServerSettings { handler_timeout: Duration::from_millis(100), ..ServerSettings::default() };
        let server = start(settings).await;
        let reply = exchange(server.addr, b"GET /slow HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 503 "), "{reply}");
    }

    #[tokio::test]
    async fn downloads_fit_the_first_device_read() {
        let server = start(ServerSettings::default()).await;
        let (tx, rx) = oneshot::channel();
        *server.done.lock().unwrap() = Some(tx);
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /dl/30000 HTTP/1.1\r\nHost: api.gizwits.com\r\n\r\n").await.unwrap();
        let mut first = [0u8; 600];
        stream.read_exact(&mut first).await.unwrap();
        let text = String::from_utf8_lossy(&first);
        let end = text.find("\r\n\r\n").unwrap() + 4;
        assert!(text[..end].contains("Content-Length: 30000\r\n"));
        assert!(text[..end].contains("filename=\"fw.bin\""));
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        let mut body = first[end..].to_vec();
        body.extend_from_slice(&rest);
        assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8) && body.len() == 30000);
        assert_eq!(rx.await.unwrap(), (30000, Ok(())));
    }

    #[tokio::test]
    async fn a_short_download_is_cut_and_reported() {
        let server = start(ServerSettings::default()).await;
        let (tx, rx) = oneshot::channel();
        *server.done.lock().unwrap() = Some(tx);
        let reply = exchange_raw(server.addr, b"GET /short/5000 HTTP/1.1\r\n\r\n").await;
        let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(String::from_utf8_lossy(&reply[..head_end]).contains("Content-Length: 5010\r\n"));
        // The connection is closed without the missing bytes; the device sees a short read.
        assert_eq!(reply.len() - head_end, 5000);
        assert_eq!(rx.await.unwrap(), (5000, Err(std::io::ErrorKind::UnexpectedEof)));
    }

    #[tokio::test]
    async fn excess_connections_are_closed_at_once() {
        let settings = ServerSettings { max_connections: 1, ..ServerSettings::default() };
        let server = start(settings).await;
        // The first connection holds the only slot (its request is never finished) ...
        let mut holder = TcpStream::connect(server.addr).await.unwrap();
        holder.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // ... so the second is accepted after it and closed without a reply.
        let mut refused = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = Vec::new();
        let _ = refused.read_to_end(&mut buf).await;
        assert!(buf.is_empty());
        assert_eq!(server.stats.connections_refused.load(Ordering::Relaxed), 1);
        // Finishing the first request frees the slot for the next connection.
        holder.write_all(b"\r\n").await.unwrap();
        let mut reply = Vec::new();
        holder.read_to_end(&mut reply).await.unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"));
        let good = exchange(server.addr, GOOD).await;
        assert!(good.starts_with("HTTP/1.1 200 OK\r\n"), "{good}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_loop() {
        let mut server = start(ServerSettings::default()).await;
        assert!(exchange(server.addr, GOOD).await.starts_with("HTTP/1.1 200"));
        server.stop.take().unwrap().send(()).unwrap();
        timeout(Duration::from_secs(5), &mut server.task).await.unwrap().unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
