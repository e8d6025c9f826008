//! Reading one request, leniently enough for GAgent and strictly enough to bound memory.
//!
//! What is tolerated, and why (see the module docs of [`crate::http`] for the citations):
//! - `Host:x` / `Content-Length:70` with no space after the colon
//!   (`device-protocol.md#headers-without-a-space`, `device-protocol.md#observed-header-spacing`);
//! - header names in any case, optional spaces or tabs around values;
//! - CRLF or bare LF line ends, blank lines before the request line;
//! - several spaces between the parts of the request line;
//! - absolute-form targets (`GET http://api.gizwits.com/dev/... HTTP/1.1`).
//!
//! What is refused: anything that would make the body length ambiguous (a non-numeric,
//! negative or conflicting Content-Length, a transfer coding other than chunked), heads and
//! bodies over [`Limits`], and lines with control bytes.

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use super::error::HttpError;
use super::form;

/// A chunk-size line longer than this is refused (hex size plus a short extension).
const MAX_CHUNK_LINE: usize = 256;

/// One parsed request. The connection is closed after it, so nothing else is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, case preserved (`GET`, `POST`, `DELETE`, ...).
    pub method: String,
    /// The request target exactly as sent.
    pub target: String,
    /// The path part of the target, not percent-decoded (so `%2F` cannot forge a segment).
    /// `*` for `OPTIONS *`; the path of an absolute-form target.
    pub path: String,
    /// The query string pairs, percent-decoded with `+` as space, in order.
    pub query: Vec<(String, String)>,
    /// The headers in order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from chunked if it was sent that way.
    pub body: Bytes,
}

impl Request {
    /// The first header with this name, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The first query parameter with this name (case-sensitive, like the devices send them).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body read as `application/x-www-form-urlencoded`, whatever the Content-Type says: GAgent
    /// labels form bodies inconsistently (`application/text` on some calls,
    /// `device-protocol.md#headers-without-a-space`).
    pub fn form(&self) -> Vec<(String, String)> {
        form::parse_bytes(&self.body)
    }
}

/// Size limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, line ends included (also the budget for chunked trailers).
    pub max_head_bytes: usize,
    /// Number of header lines.
    pub max_headers: usize,
    /// Body after dechunking.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_head_bytes: 8 * 1024, max_headers: 64, max_body_bytes: 16 * 1024 }
    }
}

/// Reads one request. `Ok(None)` means the peer closed the connection before sending anything
/// but (possibly) blank lines.
///
/// Reads nothing past the end of the request from `r` (apart from what `r` buffers).
pub async fn read_request<R: AsyncBufRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Option<Request>, HttpError> {
    let mut budget = limits.max_head_bytes;
    let head_too_large = || HttpError::HeadTooLarge { limit: limits.max_head_bytes };
    let mut line = Vec::new();

    // RFC 9112 §2.2: a server should ignore blank lines received before the request line.
    loop {
        match read_line(r, &mut line, &mut budget, head_too_large).await? {
            LineRead::Eof if line.is_empty() => return Ok(None),
            LineRead::Eof => return Err(HttpError::Truncated),
            LineRead::Line if line.is_empty() => {}
            LineRead::Line => break,
        }
    }
    let (method, target, path, query) = parse_request_line(&line)?;

    let mut headers = Vec::new();
    loop {
        match read_line(r, &mut line, &mut budget, head_too_large).await? {
            LineRead::Eof => return Err(HttpError::Truncated),
            LineRead::Line if line.is_empty() => break,
            LineRead::Line => {
                if headers.len() >= limits.max_headers {
                    return Err(HttpError::TooManyHeaders { limit: limits.max_headers });
                }
                headers.push(parse_header_line(&line)?);
            }
        }
    }

    let body = match body_framing(&headers)? {
        Framing::None => Bytes::new(),
        Framing::Length(length) => read_sized_body(r, length, limits.max_body_bytes).await?,
        Framing::Chunked => read_chunked_body(r, limits).await?,
    };
    Ok(Some(Request { method, target, path, query, headers, body }))
}

enum LineRead {
    Line,
    Eof,
}

/// Reads one line into `line` (cleared first), without its LF and a CR before it. Every byte
/// taken, line end included, is charged to `budget`; going over it is `too_long()`.
///
/// `Eof` is returned when the stream ends before a LF; `line` then holds what came before.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    budget: &mut usize,
    too_long: impl Fn() -> HttpError,
) -> Result<LineRead, HttpError> {
    line.clear();
    loop {
        let available = r.fill_buf().await.map_err(read_error)?;
        if available.is_empty() {
            return Ok(LineRead::Eof);
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.map_or(available.len(), |at| at + 1);
        if take > *budget {
            return Err(too_long());
        }
        *budget -= take;
        line.extend_from_slice(available.get(..take).unwrap_or(available));
        r.consume(take);
        if newline.is_some() {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(LineRead::Line);
        }
    }
}

fn read_error(err: std::io::Error) -> HttpError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof { HttpError::Truncated } else { HttpError::Io(err) }
}

type RequestLine = (String, String, String, Vec<(String, String)>);

fn parse_request_line(line: &[u8]) -> Result<RequestLine, HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| HttpError::BadRequestLine)?;
    let mut parts = text.split([' ', '\t']).filter(|part| !part.is_empty());
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if !method.bytes().all(is_tchar) {
        return Err(HttpError::BadRequestLine);
    }
    match version.as_bytes() {
        b"HTTP/1.0" | b"HTTP/1.1" => {}
        // A well-formed other version (`PRI * HTTP/2.0`, the HTTP/2 preface) gets a 505.
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            return Err(HttpError::UnsupportedVersion);
        }
        _ => return Err(HttpError::BadRequestLine),
    }
    let (path, query) = split_target(target)?;
    Ok((method.to_owned(), target.to_owned(), path, query))
}

fn split_target(target: &str) -> Result<(String, Vec<(String, String)>), HttpError> {
    if target.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(HttpError::BadTarget);
    }
    if target == "*" {
        return Ok(("*".to_owned(), Vec::new()));
    }
    let without_fragment = target.split_once('#').map_or(target, |(before, _)| before);
    let origin = if without_fragment.starts_with('/') {
        without_fragment
    } else if let Some(rest) = strip_prefix_ignore_case(without_fragment, "http://")
        .or_else(|| strip_prefix_ignore_case(without_fragment, "https://"))
    {
        // Absolute form: drop the authority.
        match rest.find(['/', '?']) {
            Some(at) => rest.get(at..).unwrap_or("/"),
            None => "/",
        }
    } else {
        return Err(HttpError::BadTarget);
    };
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_owned(), form::parse(query)))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) { text.get(prefix.len()..) } else { None }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    // A line starting with whitespace is obsolete line folding (or junk): refused, since no
    // device folds and a continuation could hide a second Content-Length.
    let colon = line.iter().position(|&b| b == b':').ok_or(HttpError::BadHeader)?;
    let (name, value) = line.split_at(colon);
    let value = value.get(1..).unwrap_or_default();
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(HttpError::BadHeader);
    }
    // device-protocol.md#headers-without-a-space: `Host:x` has no space after the colon; trim
    // whatever there is.
    let value = value.trim_ascii();
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HttpError::BadHeader);
    }
    let name = String::from_utf8_lossy(name).into_owned();
    let value = String::from_utf8_lossy(value).into_owned();
    Ok((name, value))
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn body_framing(headers: &[(String, String)]) -> Result<Framing, HttpError> {
    let mut chunked = false;
    let mut saw_transfer_encoding = false;
    for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")) {
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            saw_transfer_encoding = true;
            // Only a lone `chunked` is understood; `gzip, chunked` would need decompression.
            if !coding.eq_ignore_ascii_case("chunked") || chunked {
                return Err(HttpError::UnsupportedTransferEncoding);
            }
            chunked = true;
        }
    }
    let mut length: Option<u64> = None;
    for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        // RFC 9110 §8.6 allows `5, 5`; every element must be the same number.
        for element in value.split(',').map(str::trim) {
            let parsed = parse_decimal(element).ok_or(HttpError::BadContentLength)?;
            if length.is_some_and(|known| known != parsed) {
                return Err(HttpError::BadContentLength);
            }
            length = Some(parsed);
        }
    }
    // RFC 9112 §6.3: Transfer-Encoding wins over Content-Length. The connection is closed
    // after one request, so the ambiguity cannot desynchronise a following request.
    Ok(match (saw_transfer_encoding, length) {
        (true, _) => Framing::Chunked,
        (false, Some(length)) => Framing::Length(length),
        (false, None) => Framing::None,
    })
}

/// Digits only: no sign, no spaces inside, no hex, no overflow.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

async fn read_sized_body<R: AsyncBufRead + Unpin>(r: &mut R, length: u64, max: usize) -> Result<Bytes, HttpError> {
    // Refused from the declared length, before reading a byte of the body.
    let length_usize =
        usize::try_from(length).ok().filter(|&l| l <= max).ok_or(HttpError::BodyTooLarge { limit: max })?;
    let mut body = Vec::with_capacity(length_usize);
    let read = (&mut *r).take(length).read_to_end(&mut body).await.map_err(read_error)?;
    if read != length_usize {
        return Err(HttpError::Truncated);
    }
    Ok(Bytes::from(body))
}

async fn read_chunked_body<R: AsyncBufRead + Unpin>(r: &mut R, limits: &Limits) -> Result<Bytes, HttpError> {
    let max = limits.max_body_bytes;
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        let mut line_budget = MAX_CHUNK_LINE;
        match read_line(r, &mut line, &mut line_budget, || HttpError::BadChunk).await? {
            LineRead::Eof => return Err(HttpError::Truncated),
            LineRead::Line => {}
        }
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            break;
        }
        let remaining = max.saturating_sub(body.len());
        if usize::try_from(size).map_or(true, |size| size > remaining) {
            return Err(HttpError::BodyTooLarge { limit: max });
        }
        let before = body.len();
        (&mut *r).take(size).read_to_end(&mut body).await.map_err(read_error)?;
        if u64::try_from(body.len() - before).ok() != Some(size) {
            return Err(HttpError::Truncated);
        }
        let mut end_budget = 2;
        match read_line(r, &mut line, &mut end_budget, || HttpError::BadChunk).await? {
            LineRead::Line if line.is_empty() => {}
            LineRead::Line => return Err(HttpError::BadChunk),
            LineRead::Eof => return Err(HttpError::Truncated),
        }
    }
    // Trailer fields are read and dropped; they share the head size limit.
    let mut budget = limits.max_head_bytes;
    loop {
        match read_line(r, &mut line, &mut budget, || HttpError::HeadTooLarge { limit: limits.max_head_bytes }).await? {
            LineRead::Eof => return Err(HttpError::Truncated),
            LineRead::Line if line.is_empty() => break,
            LineRead::Line => {
                parse_header_line(&line)?;
            }
        }
    }
    Ok(Bytes::from(body))
}

/// `1a`, `1A ; name=value`: hex digits, optional whitespace, optional extension (ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(HttpError::BadChunk);
    }
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(HttpError::BadChunk);
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let value = form::hex_value(d).ok_or(HttpError::BadChunk)?;
        acc.checked_mul(16).and_then(|acc| acc.checked_add(u64::from(value))).ok_or(HttpError::BadChunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    async fn parse(raw: &[u8]) -> Result<Option<Request>, HttpError> {
        let mut reader = raw;
        read_request(&mut reader, &Limits::default()).await
    }

    async fn parse_ok(raw: &[u8]) -> Request {
        match parse(raw).await {
            Ok(Some(req)) => req,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// `device-protocol.md#v41-check`, byte for byte as GAgent 04020006 writes it (no space after
    /// `Host:` and `Content-Length:`, `device-protocol.md#observed-header-spacing`).
    const UPDATE_AND_CHECK: &[u8] = b"POST /dev/ota/v4.1/update_and_check/AbCdEfGhIjKlMnOpQrStUv HTTP/1.1\r\n\
Host:api.gizwits.com\r\n\
Content-Length:70\r\n\
Content-Type: application/x-www-form-urlencoded\r\n\
\r\n\
passcode=KQXBDTRLMA&type=1&hard_version=00ESP826&soft_version=04020019";

    #[tokio::test]
    async fn gagent_update_and_check_parses_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // Split the way a slow device might, across the head and the body.
            let (first, second) = UPDATE_AND_CHECK.split_at(50);
            stream.write_all(first).await.unwrap();
            stream.flush().await.unwrap();
            stream.write_all(second).await.unwrap();
            stream
        });
        let (socket, _) = listener.accept().await.unwrap();
        let mut reader = BufReader::new(socket);
        let req = read_request(&mut reader, &Limits::default()).await.unwrap().unwrap();
        let _client = client.await.unwrap();

        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/dev/ota/v4.1/update_and_check/AbCdEfGhIjKlMnOpQrStUv");
        assert_eq!(req.header("host"), Some("api.gizwits.com"));
        assert_eq!(req.header("CONTENT-LENGTH"), Some("70"));
        assert_eq!(req.body.len(), 70);
        let form = req.form();
        assert_eq!(form.len(), 4);
        assert_eq!(form.first().map(|(k, v)| (k.as_str(), v.as_str())), Some(("passcode", "KQXBDTRLMA")));
    }

    #[tokio::test]
    async fn registration_and_provision_parse() {
        let req = parse_ok(
            b"POST /dev/devices HTTP/1.1\r\nHost: api.gizwits.com\r\nContent-Length: 81\r\n\
Content-Type: application/x-www-form-urlencoded\r\n\r\n\
passcode=KQXBDTRLMA&mac=5CCF7F0A1B2C&product_key=0123456789abcdef0123456789abcdef",
        )
        .await;
        assert_eq!(req.form().len(), 3);

        let req = parse_ok(b"GET /dev/abc/device?did=0a1b&tls=0 HTTP/1.1\r\nHost: api.gizwits.com\r\n\r\n").await;
        assert_eq!(
            (req.path.as_str(), req.query_param("did"), req.query_param("tls")),
            ("/dev/abc/device", Some("0a1b"), Some("0"))
        );
        assert!(req.body.is_empty());
    }

    #[tokio::test]
    async fn lenient_spellings_are_accepted() {
        let req = parse_ok(
            b"\r\n\nGET  http://api.gizwits.com/dev/ota/target_fid?did=x&soft_version=04%302+1#frag   HTTP/1.0\n\
hOsT:\t api.gizwits.com \t\nX-Empty:\n\n",
        )
        .await;
        assert_eq!(req.path, "/dev/ota/target_fid");
        assert_eq!(req.query_param("soft_version"), Some("0402 1"));
        assert_eq!(req.header("Host"), Some("api.gizwits.com"));
        assert_eq!(req.header("x-empty"), Some(""));
        assert_eq!(parse_ok(b"OPTIONS * HTTP/1.1\r\n\r\n").await.path, "*");
        assert_eq!(parse_ok(b"GET http://h HTTP/1.1\r\n\r\n").await.path, "/");
        assert_eq!(parse_ok(b"GET http://h?a=1 HTTP/1.1\r\n\r\n").await.query_param("a"), Some("1"));
        // Equal duplicates are fine.
        let req = parse_ok(b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length:2, 2\r\n\r\nok").await;
        assert_eq!(&req.body[..], b"ok");
    }

    #[tokio::test]
    async fn clean_eof_is_none_and_truncation_is_an_error() {
        assert!(matches!(parse(b"").await, Ok(None)));
        assert!(matches!(parse(b"\r\n").await, Ok(None)));
        assert!(matches!(parse(b"GET / HT").await, Err(HttpError::Truncated)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").await, Err(HttpError::Truncated)));
        assert!(matches!(parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc").await, Err(HttpError::Truncated)));
    }

    #[tokio::test]
    async fn garbage_gets_its_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\r\n", "bad_request_line"),
            (b"GET /\r\n\r\n", "bad_request_line"),
            (b"GET / HTTP/1.1 extra\r\n\r\n", "bad_request_line"),
            (b"G(T / HTTP/1.1\r\n\r\n", "bad_request_line"),
            (b"GET / FTP/1.1\r\n\r\n", "bad_request_line"),
            (b"GET relative HTTP/1.1\r\n\r\n", "bad_target"),
            (b"GET /\x01 HTTP/1.1\r\n\r\n", "bad_target"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http_version_not_supported"),
            (b"GET / HTTP/1.1\r\nHost api.gizwits.com\r\n\r\n", "bad_header"),
            (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", "bad_header"),
            (b"GET / HTTP/1.1\r\n: x\r\n\r\n", "bad_header"),
            (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", "bad_header"),
            (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", "bad_header"),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!", "bad_content_length"),
            (b"POST / HTTP/1.1\r\nContent-Length: 16385\r\n\r\n", "body_too_large"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported_transfer_encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "unsupported_transfer_encoding"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad_chunked_body"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", "bad_chunked_body"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4001\r\n", "body_too_large"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n", "bad_chunked_body"),
        ];
        for (raw, code) in cases {
            match parse(raw).await {
                Err(err) => assert_eq!(err.code(), *code, "for {:?}", String::from_utf8_lossy(raw)),
                Ok(req) => panic!("{:?} parsed as {req:?}", String::from_utf8_lossy(raw)),
            }
        }
    }

    #[tokio::test]
    async fn head_and_header_count_limits() {
        let mut huge = b"GET / HTTP/1.1\r\nX-Junk: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 9000));
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&huge).await, Err(HttpError::HeadTooLarge { limit: 8192 })));
        // A line with no LF at all is cut off at the limit too (binary junk).
        assert!(matches!(parse(&vec![0u8; 20_000]).await, Err(HttpError::HeadTooLarge { .. })));

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..65 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many).await, Err(HttpError::TooManyHeaders { limit: 64 })));

        // Exactly at the limits is fine.
        let limits = Limits { max_head_bytes: 18, max_headers: 1, max_body_bytes: 2 };
        let mut raw: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(read_request(&mut raw, &limits).await.unwrap().is_some());
        let mut raw: &[u8] = b"GET / HTTP/1.1\r\n\r\n\r\n";
        assert!(read_request(&mut raw, &limits).await.unwrap().is_some());
        let mut raw: &[u8] = b"\r\nGET / HTTP/1.1\r\n\r\n";
        assert!(read_request(&mut raw, &limits).await.is_err());
    }

    #[tokio::test]
    async fn body_limit_is_checked_before_reading() {
        // Only the head is there: the declared length alone must be enough to refuse.
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let mut raw: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(read_request(&mut raw, &limits).await, Err(HttpError::BodyTooLarge { limit: 10 })));
        let mut raw: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789";
        assert_eq!(read_request(&mut raw, &limits).await.unwrap().unwrap().body.len(), 10);
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded() {
        let req = parse_ok(
            b"POST /dev/devices HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nContent-Length: 3\r\n\r\n\
5;ext=1\r\nhello\r\n1 \n \n0\r\nX-Trailer: t\r\n\r\nNEXT",
        )
        .await;
        assert_eq!(&req.body[..], b"hello ");

        let limits = Limits { max_body_bytes: 6, ..Limits::default() };
        let mut raw: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
        assert!(matches!(read_request(&mut raw, &limits).await, Err(HttpError::BodyTooLarge { limit: 6 })));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab").await,
            Err(HttpError::Truncated)
        ));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1A").ok(), Some(26));
        assert_eq!(parse_chunk_size(b"ff ; x").ok(), Some(255));
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"-1").is_err());
        assert!(parse_chunk_size(b"1 2").is_err());
    }
}
