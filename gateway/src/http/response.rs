//! Replies the way GAgent can read them.
//!
//! API replies (`device-protocol.md#http-client-limits-and-quirks`,
//! `device-protocol.md#open-question-ending-the-reply-body`): one `recv` of at most 1024 bytes
//! reads the whole reply, fields are found by substring search in the raw buffer (headers
//! included), and `download_url=` is read up to the next CRLF. So: the whole reply in ≤ 1024 bytes,
//! sent in one write, chunked so that `\r\n0\r\n\r\n` follows the body, and no header that contains
//! a searched-for key.
//!
//! Firmware downloads (`device-protocol.md#the-600-byte-first-read`,
//! `device-protocol.md#observed-download-first-read`): the first `recv` is 600 bytes and is assumed
//! to be full, so the head is short, never chunked, and goes out in the same write as the start of
//! the body ([`super::download`] writes it).

use std::fmt::Write as _;

use bytes::Bytes;

use super::error::HttpError;

/// GAgent reads an API reply with one `recv` of this many bytes
/// (`device-protocol.md#one-1-kb-read-per-reply`).
pub const MAX_API_REPLY_BYTES: usize = 1024;

/// GAgent's first `recv` of a download (`SOCKET_RECBUFFER_LEN`,
/// `device-protocol.md#the-600-byte-first-read`).
pub const DEVICE_FIRST_READ_BYTES: usize = 600;

/// A download head longer than this is refused, leaving at least 88 bytes of body in the
/// device's first 600-byte read.
pub const MAX_DOWNLOAD_HEAD_BYTES: usize = 512;

/// Keys GAgent looks for with `strstr` in the raw reply (`device-protocol.md#substring-parsing`): a
/// header that contains one of them would be read as the field. Compared case-insensitively.
pub const DEVICE_SEARCH_KEYS: &[&str] = &[
    "did=",
    "host=",
    "port=",
    "server_ts=",
    "soft_ver=",
    "download_url=",
    "target_fid=",
    "firmware_version=",
    "3rd_cloud=",
    "product_uuid=",
];

/// The reason phrase for the status codes this server uses; empty (which HTTP allows) for others.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// An API reply: chunked, `Connection: close`, at most [`MAX_API_REPLY_BYTES`] in total.
///
/// `HTTP/1.1 <code> <reason>\r\nContent-Type: <ct>\r\nTransfer-Encoding: chunked\r\n`
/// `Connection: close\r\n\r\n<hex len>\r\n<body>\r\n0\r\n\r\n` (an empty body is only `0\r\n\r\n`).
pub fn api_reply(status: u16, content_type: &str, body: &[u8]) -> Result<Bytes, HttpError> {
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadStatus(status));
    }
    check_header_value(content_type)?;
    let mut head = String::with_capacity(128);
    let reason = reason_phrase(status);
    // Writing into a String cannot fail.
    let _ = write!(
        head,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    );
    if !body.is_empty() {
        let _ = write!(head, "{:x}\r\n", body.len());
    }
    const BODY_END: &[u8] = b"\r\n";
    const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
    let size = head.len() + body.len() + if body.is_empty() { 0 } else { BODY_END.len() } + LAST_CHUNK.len();
    if size > MAX_API_REPLY_BYTES {
        return Err(HttpError::ReplyTooLarge { size, limit: MAX_API_REPLY_BYTES });
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(head.as_bytes());
    if !body.is_empty() {
        out.extend_from_slice(body);
        out.extend_from_slice(BODY_END);
    }
    out.extend_from_slice(LAST_CHUNK);
    Ok(Bytes::from(out))
}

/// The error reply the server sends for a request it could not read, with the body shape of
/// `device-protocol.md#open-question-the-no-update-reply`:
/// `{"error_code":<status>,"error_message":"<code>"}`.
pub fn error_reply(err: &HttpError) -> Result<Bytes, HttpError> {
    let status = err.status();
    // `code()` is snake_case ASCII: nothing to escape.
    let body = format!("{{\"error_code\":{status},\"error_message\":\"{}\"}}", err.code());
    api_reply(status, "application/json", body.as_bytes())
}

/// A reply header value: visible ASCII and spaces only, and none of [`DEVICE_SEARCH_KEYS`].
fn check_header_value(value: &str) -> Result<(), HttpError> {
    if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(HttpError::BadReplyHeader("control or non-ASCII byte in a header value"));
    }
    if contains_device_key(value) {
        return Err(HttpError::BadReplyHeader("header value contains a key the device searches for"));
    }
    Ok(())
}

/// Whether `text` contains any of [`DEVICE_SEARCH_KEYS`], ignoring ASCII case.
pub fn contains_device_key(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    DEVICE_SEARCH_KEYS.iter().any(|key| lower.contains(key))
}

/// The head of a firmware download (`device-protocol.md#download-reply-headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadHead {
    /// The exact body length; the body is never chunked.
    pub content_length: u64,
    /// MD5 of the whole body, 32 hex digits; sent in lowercase
    /// (`device-protocol.md#open-question-md5-letter-case`).
    pub md5_hex: String,
    /// `("Soft-Version", v)` for V4.1 MCU (type 2) downloads only, `("Firmware-Version", v)` for
    /// V4, `None` for V4.1 Wi-Fi downloads
    /// (`device-protocol.md#open-question-soft-version-on-wi-fi-downloads`: GA copies
    /// `Soft-Version` into its MCU version). Other names are refused.
    pub version_header: Option<(&'static str, String)>,
    /// The file name; GA treats a `.hex` extension as an Intel-HEX MCU image. Characters
    /// outside `[A-Za-z0-9._-]` become `_`.
    pub filename: String,
}

/// The version header names a download may carry.
pub const VERSION_HEADER_NAMES: [&str; 2] = ["Soft-Version", "Firmware-Version"];

/// Keeps `[A-Za-z0-9._-]` and turns everything else into `_`, so the name can be neither a
/// header injection nor a path; an empty name becomes `firmware.bin`.
pub fn sanitize_filename(name: &str) -> String {
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if clean.is_empty() { "firmware.bin".to_owned() } else { clean }
}

/// Builds the download head; refuses a malformed MD5, a bad version header, or a head over
/// [`MAX_DOWNLOAD_HEAD_BYTES`].
pub fn download_head(head: &DownloadHead) -> Result<Bytes, HttpError> {
    let md5 = head.md5_hex.trim();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HttpError::BadReplyHeader("Firmware-MD5 must be 32 hex digits"));
    }
    let md5 = md5.to_ascii_lowercase();
    let mut out = String::with_capacity(256);
    // `Content-Length: ` with exactly one space: GA searches for that spelling
    // (device-protocol.md#download-reply-headers).
    let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nFirmware-MD5: {md5}\r\n", head.content_length);
    if let Some((name, value)) = &head.version_header {
        if !VERSION_HEADER_NAMES.contains(name) {
            return Err(HttpError::BadReplyHeader("version header must be Soft-Version or Firmware-Version"));
        }
        check_header_value(value)?;
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let filename = sanitize_filename(&head.filename);
    let _ = write!(
        out,
        "Content-Disposition: attachment; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\
         Connection: close\r\n\r\n"
    );
    if out.len() > MAX_DOWNLOAD_HEAD_BYTES {
        return Err(HttpError::ReplyTooLarge { size: out.len(), limit: MAX_DOWNLOAD_HEAD_BYTES });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_reply_is_exactly_chunked() {
        let body = b"soft_ver=04020021&download_url=http://api.gizwits.com/dev/ota/v4.1/download/7072";
        let reply = api_reply(200, "application/x-www-form-urlencoded", body).unwrap();
        let expected = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        assert_eq!(&reply[..], expected.as_bytes());
        // device-protocol.md#open-question-ending-the-reply-body: GA reads `download_url=` up to
        // the next CRLF, which must follow the URL.
        assert!(expected.contains("/download/7072\r\n0\r\n\r\n"));

        let empty = api_reply(201, "text/plain", b"").unwrap();
        assert_eq!(
            &empty[..],
            b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        );
        assert!(api_reply(299, "text/plain", b"x").unwrap().starts_with(b"HTTP/1.1 299 \r\n"));
        assert!(matches!(api_reply(99, "text/plain", b""), Err(HttpError::BadStatus(99))));
        assert!(matches!(api_reply(1000, "text/plain", b""), Err(HttpError::BadStatus(1000))));
    }

    #[test]
    fn api_reply_over_1024_is_refused() {
        let overhead = api_reply(200, "text/plain", b"x").unwrap().len() - 1;
        // The chunk-size line grows from 1 to 3 hex digits as the body grows.
        let fits = MAX_API_REPLY_BYTES - overhead - 2;
        let reply = api_reply(200, "text/plain", &vec![b'a'; fits]).unwrap();
        assert_eq!(reply.len(), MAX_API_REPLY_BYTES);
        match api_reply(200, "text/plain", &vec![b'a'; fits + 1]) {
            Err(HttpError::ReplyTooLarge { size, limit }) => assert_eq!((size, limit), (1025, 1024)),
            other => panic!("expected ReplyTooLarge, got {other:?}"),
        }
        assert!(api_reply(200, "text/plain", &[0; 4096]).is_err());
    }

    /// `device-protocol.md#substring-parsing`: GA substring-searches the raw buffer, headers
    /// included.
    #[test]
    fn headers_never_contain_device_keys() {
        let replies = [
            api_reply(200, "application/x-www-form-urlencoded", b"host=h&port=1").unwrap(),
            api_reply(201, "text/plain; charset=utf-8", b"did=uNMdYrcV3YN6DZhQPc5ugW").unwrap(),
            error_reply(&HttpError::BadHeader).unwrap(),
            download_head(&sample_head(1 << 20, Some(("Soft-Version", "04020021")))).unwrap(),
            download_head(&sample_head(1 << 20, Some(("Firmware-Version", "04000002")))).unwrap(),
        ];
        for reply in &replies {
            let text = String::from_utf8_lossy(reply);
            let (head, _) = text.split_once("\r\n\r\n").unwrap();
            assert!(!contains_device_key(head), "{head}");
        }
        for bad in ["x; did=1", "a HOST=b", "soft_ver=1", "x\r\nY: z", "é"] {
            assert!(matches!(api_reply(200, bad, b""), Err(HttpError::BadReplyHeader(_))), "{bad}");
        }
        let mut head = sample_head(10, Some(("Soft-Version", "download_url=x")));
        assert!(download_head(&head).is_err());
        head.version_header = Some(("X-Other", "1".into()));
        assert!(download_head(&head).is_err());
    }

    #[test]
    fn error_reply_has_the_g5_shape() {
        let reply = error_reply(&HttpError::HeadTooLarge { limit: 8192 }).unwrap();
        let text = std::str::from_utf8(&reply).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("\r\n{\"error_code\":431,\"error_message\":\"head_too_large\"}\r\n0\r\n\r\n"));
    }

    fn sample_head(content_length: u64, version: Option<(&'static str, &str)>) -> DownloadHead {
        DownloadHead {
            content_length,
            md5_hex: "3F2A0000111122223333444455556666".into(),
            version_header: version.map(|(n, v)| (n, v.to_owned())),
            filename: "GAgent_00ESP826_04020021_16110718.bin".into(),
        }
    }

    #[test]
    fn download_head_layout() {
        let head = download_head(&sample_head(26624, Some(("Soft-Version", "04020021")))).unwrap();
        assert_eq!(
            std::str::from_utf8(&head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 26624\r\nFirmware-MD5: 3f2a0000111122223333444455556666\r\n\
             Soft-Version: 04020021\r\nContent-Disposition: attachment; filename=\"GAgent_00ESP826_04020021_16110718.bin\"\r\n\
             Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        );
        let plain = download_head(&sample_head(1, None)).unwrap();
        assert!(!String::from_utf8_lossy(&plain).contains("Version"));

        let mut bad = sample_head(1, None);
        bad.md5_hex = "xyz".into();
        assert!(download_head(&bad).is_err());
        let mut long = sample_head(1, None);
        long.filename = "a".repeat(400);
        assert!(matches!(download_head(&long), Err(HttpError::ReplyTooLarge { limit: 512, .. })));
    }

    #[test]
    fn filenames_are_sanitised() {
        assert_eq!(sanitize_filename("mcu_0001.hex"), "mcu_0001.hex");
        assert_eq!(sanitize_filename("a\"\r\nb/../c d=é"), "a___b_.._c_d__");
        assert_eq!(sanitize_filename(""), "firmware.bin");
    }
}
