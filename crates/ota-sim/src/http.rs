//! The device's HTTP, byte for byte: requests spelled as the firmware writes them, and replies
//! parsed the way GA parses them — by substring search in the raw receive buffer, headers included
//! (`device-protocol.md#registration`, `device-protocol.md#provision`,
//! `device-protocol.md#deregistration`, `device-protocol.md#http-client-limits-and-quirks`,
//! `device-protocol.md#v4-ota`, `device-protocol.md#v41-check`, `device-protocol.md#v41-reply`,
//! `device-protocol.md#firmware-download`,
//! `device-protocol.md#observed-with-the-official-04020006-build`).
//!
//! Everything here is pure; the socket work is in [`crate::net`].

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};

/// GA's receive buffer for API replies: one `recv` of at most this many bytes
/// (`device-protocol.md#one-1-kb-read-per-reply`).
pub const API_READ_LEN: usize = 1024;

/// GA's first `recv` of a download (`SOCKET_RECBUFFER_LEN`,
/// `device-protocol.md#the-600-byte-first-read`).
pub const DOWNLOAD_FIRST_READ: usize = 600;

/// How the firmware spells `Host:` and `Content-Length:`.
/// `device-protocol.md#observed-header-spacing`: only `update_and_check` writes them without a
/// space after the colon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    Spaced,
    Tight,
}

fn post(path: &str, host: &str, body: &str, spelling: Spelling) -> Vec<u8> {
    let sp = if spelling == Spelling::Spaced { " " } else { "" };
    format!(
        "POST {path} HTTP/1.1\r\nHost:{sp}{host}\r\nContent-Length:{sp}{len}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\n{body}",
        len = body.len()
    )
    .into_bytes()
}

/// `device-protocol.md#plain-registration` (GA `Http_POST`).
pub fn register_plain(api_host: &str, passcode: &str, mac: &str, product_key: &str) -> Vec<u8> {
    let body = format!("passcode={passcode}&mac={mac}&product_key={product_key}");
    post("/dev/devices", api_host, &body, Spelling::Spaced)
}

/// `device-protocol.md#encrypted-registration` (RTT/LUAT):
/// `data=<hex(AES(mac=..&passcode=..&type=normal))>`.
pub fn register_encrypted(api_host: &str, product_key: &str, key: &[u8; 16], mac: &str, passcode: &str) -> Vec<u8> {
    let plain = format!("mac={mac}&passcode={passcode}&type=normal");
    let body = format!("data={}", hex::encode(aes_ecb_encrypt(key, plain.as_bytes())));
    post(&format!("/dev/{product_key}/device"), api_host, &body, Spelling::Spaced)
}

fn get(target: &str, host: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\r\n").into_bytes()
}

const PROVISION_HEADERS: &str = "Cache-Control: no-cache\r\nContent-Type: application/x-www-form-urlencoded\r\n";

/// `device-protocol.md#plain-provision` (GA `Http_GET`).
pub fn provision_plain(api_host: &str, did: &str) -> Vec<u8> {
    get(&format!("/dev/devices/{did}"), api_host, PROVISION_HEADERS)
}

/// `device-protocol.md#encrypted-provision`: `GET /dev/{pk}/device?did=<hex(AES(did))>`.
pub fn provision_encrypted(api_host: &str, product_key: &str, key: &[u8; 16], did: &str) -> Vec<u8> {
    let enc = hex::encode(aes_ecb_encrypt(key, did.as_bytes()));
    get(&format!("/dev/{product_key}/device?did={enc}"), api_host, PROVISION_HEADERS)
}

/// `device-protocol.md#deregistration` (GA `Http_Delete`), spaced like every request but
/// `update_and_check`.
pub fn delete_device(api_host: &str, did: &str, passcode: &str) -> Vec<u8> {
    let body = format!("did={did}&passcode={passcode}");
    format!(
        "DELETE /dev/devices HTTP/1.1\r\nHost: {api_host}\r\nContent-Length: {len}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\r\n{body}",
        len = body.len()
    )
    .into_bytes()
}

/// `device-protocol.md#v41-check`, byte for byte: `Host:` and `Content-Length:` without a space
/// (`device-protocol.md#observed-header-spacing`).
pub fn update_and_check(api_host: &str, did: &str, passcode: &str, fw_type: u8, hw: &str, sw: &str) -> Vec<u8> {
    let body = format!("passcode={passcode}&type={fw_type}&hard_version={hw}&soft_version={sw}");
    post(&format!("/dev/ota/v4.1/update_and_check/{did}"), api_host, &body, Spelling::Tight)
}

/// `device-protocol.md#v4-check` request (GK `Cloud_Http_GetFid`).
pub fn target_fid(
    api_host: &str,
    did: &str,
    product_key: &str,
    fw_type: u8,
    hw: &str,
    sw: &str,
    current_fid: u32,
) -> Vec<u8> {
    let target = format!(
        "/dev/ota/target_fid?did={did}&product_key={product_key}&type={fw_type}&hard_version={hw}\
         &soft_version={sw}&current_fid={current_fid}"
    );
    get(&target, api_host, "Content-Type: application/text\r\n")
}

/// `device-protocol.md#download-request`: `Host` as the URL names it.
pub fn download(host: &str, path: &str) -> Vec<u8> {
    get(path, host, "Content-Type: application/text\r\n")
}

// ---------------------------------------------------------------------------------------------
// Reply parsing, GA style.

/// Why a reply did not give the device what it needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The first line is not `HTTP/1.x NNN`.
    #[error("no HTTP status line")]
    NoStatus,
    /// A status other than the one exact code the firmware accepts.
    #[error("status {found}, the firmware accepts only {expected}")]
    Status {
        /// Wanted.
        expected: u16,
        /// Received.
        found: u16,
    },
    /// A field the firmware looks for is missing or not terminated the way it needs.
    #[error("{0}")]
    Field(String),
}

fn field_err(msg: impl Into<String>) -> ReplyError {
    ReplyError::Field(msg.into())
}

/// The status code of the first line.
pub fn status_code(raw: &[u8]) -> Option<u16> {
    let rest = raw.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn expect_status(raw: &[u8], expected: u16) -> Result<(), ReplyError> {
    match status_code(raw) {
        None => Err(ReplyError::NoStatus),
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(ReplyError::Status { expected, found }),
    }
}

/// `strstr`: the offset just after the first occurrence of `needle`.
pub fn find_after(raw: &[u8], needle: &[u8]) -> Option<usize> {
    raw.windows(needle.len()).position(|w| w == needle).map(|at| at + needle.len())
}

/// The bytes after the first `key` up to (not including) the first of `stops`; `None` when the
/// key is absent or no stop follows it — GA's pointer arithmetic needs the terminator.
pub fn field_until<'a>(raw: &'a [u8], key: &str, stops: &[&[u8]]) -> Option<&'a [u8]> {
    let start = find_after(raw, key.as_bytes())?;
    let rest = raw.get(start..)?;
    let end = stops.iter().filter_map(|stop| find_after(rest, stop).map(|after| after - stop.len())).min()?;
    rest.get(..end)
}

/// Exactly `len` bytes after the first `key` (GA copies the did this way).
pub fn field_fixed<'a>(raw: &'a [u8], key: &str, len: usize) -> Option<&'a [u8]> {
    let start = find_after(raw, key.as_bytes())?;
    raw.get(start..start + len)
}

fn text(bytes: &[u8], what: &str) -> Result<String, ReplyError> {
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| field_err(format!("{what} is not text")))
}

/// The did out of a 201 registration reply (plain, or already decrypted): the 22 bytes after the
/// first `did=`. They must be alphanumeric, or GA would store junk.
pub fn parse_did(raw: &[u8]) -> Result<String, ReplyError> {
    let did = field_fixed(raw, "did=", 22).ok_or_else(|| field_err("fewer than 22 bytes after did="))?;
    if !did.iter().all(u8::is_ascii_alphanumeric) {
        return Err(field_err(format!("did is not 22 alphanumerics: {:?}", String::from_utf8_lossy(did))));
    }
    text(did, "did")
}

/// Plain registration reply (`device-protocol.md#plain-registration`): status 201, then the did.
pub fn parse_register(raw: &[u8]) -> Result<String, ReplyError> {
    expect_status(raw, 201)?;
    parse_did(raw)
}

/// The hex text of an encrypted reply, decrypted. LITE skips one line after the headers when the
/// reply is chunked (the chunk size), then takes the hex up to the next CR.
pub fn decrypt_reply(raw: &[u8], key: &[u8; 16]) -> Result<Vec<u8>, ReplyError> {
    let body_at = find_after(raw, b"\r\n\r\n").ok_or_else(|| field_err("no end of headers"))?;
    let mut body = raw.get(body_at..).unwrap_or_default();
    let headers = raw.get(..body_at).unwrap_or_default();
    if find_after(&headers.to_ascii_lowercase(), b"transfer-encoding: chunked").is_some() {
        let line_end = find_after(body, b"\r\n").ok_or_else(|| field_err("chunk size line not terminated"))?;
        body = body.get(line_end..).unwrap_or_default();
    }
    let end = body.iter().position(|b| *b == b'\r').unwrap_or(body.len());
    let hex_text = body.get(..end).unwrap_or_default();
    let cipher = hex::decode(hex_text).map_err(|_| field_err("encrypted body is not hex"))?;
    aes_ecb_decrypt(key, &cipher).ok_or_else(|| field_err("encrypted body does not decrypt (length or padding)"))
}

/// What provision gives the device (`device-protocol.md#provision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReply {
    /// M2M host, up to the next `&`.
    pub host: String,
    /// M2M port, up to the next `&` (so another field must follow).
    pub port: u16,
    /// `server_ts=` up to `&` or CR, if present and numeric.
    pub server_ts: Option<u64>,
}

/// Provision fields, GA rules, from the raw buffer (or the decrypted text). Status checked by the
/// caller for the encrypted variant; see [`parse_provision`].
pub fn parse_provision_fields(raw: &[u8]) -> Result<ProvisionReply, ReplyError> {
    let host = field_until(raw, "host=", &[b"&"]).ok_or_else(|| field_err("host= missing or not followed by &"))?;
    let port = field_until(raw, "port=", &[b"&"]).ok_or_else(|| field_err("port= missing or not followed by &"))?;
    let port = text(port, "port")?.parse().map_err(|_| field_err("port is not a number"))?;
    let server_ts =
        field_until(raw, "server_ts=", &[b"&", b"\r"]).and_then(|ts| std::str::from_utf8(ts).ok()?.parse().ok());
    let host = text(host, "host")?;
    if host.is_empty() || host.len() > 64 {
        return Err(field_err(format!("bad M2M host {host:?}")));
    }
    Ok(ProvisionReply { host, port, server_ts })
}

/// Plain provision reply: status 200 and the fields.
pub fn parse_provision(raw: &[u8]) -> Result<ProvisionReply, ReplyError> {
    expect_status(raw, 200)?;
    parse_provision_fields(raw)
}

/// A URL split the way the firmware connects: always plain HTTP, always port 80 (here: the
/// simulator's configured HTTP address), `Host` = the URL host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host as written in the URL.
    pub host: String,
    /// Path with query, starting with `/`.
    pub path: String,
}

/// `http://host/path`; `https` and `:port` are refused as GA cannot follow them
/// (`device-protocol.md#v41-reply`).
pub fn split_url(url: &str) -> Result<Url, ReplyError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| field_err(format!("URL is not plain http: {url:?}")))?;
    let slash = rest.find('/').ok_or_else(|| field_err(format!("URL has no path: {url:?}")))?;
    let (host, path) = rest.split_at(slash);
    if host.is_empty() || host.contains(':') {
        return Err(field_err(format!("URL host must be a bare hostname (port 80): {url:?}")));
    }
    Ok(Url { host: host.to_owned(), path: path.to_owned() })
}

/// V4.1 offer (`device-protocol.md#v41-reply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V41Offer {
    /// `soft_ver=` up to `&`.
    pub soft_ver: String,
    /// `download_url=` up to CRLF.
    pub download_url: String,
}

/// `update_and_check` reply: `Ok(None)` means "no update" (any non-200, as GA treats it).
pub fn parse_update_and_check(raw: &[u8]) -> Result<Option<V41Offer>, ReplyError> {
    match status_code(raw) {
        None => return Err(ReplyError::NoStatus),
        Some(200) => {}
        Some(_) => return Ok(None),
    }
    let Some(soft_ver) = field_until(raw, "soft_ver=", &[b"&"]) else {
        return Ok(None);
    };
    let url = field_until(raw, "download_url=", &[b"\r\n"])
        .ok_or_else(|| field_err("download_url= missing or not followed by CRLF in the first 1024 bytes"))?;
    Ok(Some(V41Offer { soft_ver: text(soft_ver, "soft_ver")?, download_url: text(url, "download_url")? }))
}

/// V4 offer (`device-protocol.md#v4-reply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Offer {
    /// `target_fid=` up to `&`.
    pub target_fid: u32,
    /// GK: from `/dev/ota/download` up to the next `&`.
    pub path: String,
    /// Host named in `download_url=` (for the `Host` header), if it is a plain http URL.
    pub url_host: Option<String>,
    /// `firmware_version=` up to `&` or CR.
    pub firmware_version: Option<String>,
}

/// `target_fid` reply, GK rules: status 200, `target_fid=` up to `&`, the download path from
/// `/dev/ota/download` to the next `&` (another field must follow the URL).
pub fn parse_target_fid(raw: &[u8]) -> Result<V4Offer, ReplyError> {
    expect_status(raw, 200)?;
    let fid = field_until(raw, "target_fid=", &[b"&"]).ok_or_else(|| field_err("target_fid= not followed by &"))?;
    let target_fid = text(fid, "target_fid")?.parse().map_err(|_| field_err("target_fid is not a number"))?;
    let path = download_path(raw)?;
    let url_host = field_until(raw, "download_url=", &[b"&"])
        .and_then(|u| std::str::from_utf8(u).ok())
        .and_then(|u| split_url(u).ok())
        .map(|u| u.host);
    let firmware_version = field_until(raw, "firmware_version=", &[b"&", b"\r"])
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned);
    Ok(V4Offer { target_fid, path, url_host, firmware_version })
}

/// GK cuts the path from `/dev/ota/download` to the next `&`.
fn download_path(raw: &[u8]) -> Result<String, ReplyError> {
    const MARK: &[u8] = b"/dev/ota/download";
    let after = find_after(raw, MARK).ok_or_else(|| field_err("no /dev/ota/download path"))?;
    let start = after - MARK.len();
    let rest = raw.get(start..).unwrap_or_default();
    let end = rest.iter().position(|b| *b == b'&').ok_or_else(|| field_err("download path not followed by &"))?;
    text(rest.get(..end).unwrap_or_default(), "download path")
}

/// The path of a 0x020E URL: from `/dev/ota/download` onwards (GK).
pub fn push_url_path(url: &str) -> Option<String> {
    url.find("/dev/ota/download").and_then(|at| url.get(at..)).map(str::to_owned)
}

/// Headers of a download, found in the first 600 bytes
/// (`device-protocol.md#the-600-byte-first-read`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadHead {
    /// Bytes of the status line and headers, including the blank line.
    pub header_len: usize,
    /// `Content-Length: ` (exact spelling, one space).
    pub content_length: usize,
    /// `Firmware-MD5: ` as sent.
    pub md5: String,
    /// `Soft-Version: ` (V4.1; GA copies it into its RAM MCU version,
    /// `device-protocol.md#open-question-soft-version-on-wi-fi-downloads`,
    /// `device-protocol.md#observed-mcu-soft-version-echo`).
    pub soft_version: Option<String>,
    /// `Firmware-Version: ` (V4).
    pub firmware_version: Option<String>,
    /// From `filename="…"`.
    pub filename: String,
    /// `.hex` → Intel-HEX MCU image; anything else is binary.
    pub is_hex: bool,
}

/// Parses the first 600-byte read of a download.
pub fn parse_download_head(first: &[u8]) -> Result<DownloadHead, ReplyError> {
    expect_status(first, 200)?;
    let header_len =
        find_after(first, b"\r\n\r\n").ok_or_else(|| field_err("headers do not end inside the first 600 bytes"))?;
    let head = first.get(..header_len).unwrap_or_default();
    let line = |key: &str| field_until(head, key, &[b"\r\n"]).and_then(|v| std::str::from_utf8(v).ok());
    let content_length = line("Content-Length: ")
        .ok_or_else(|| field_err("no `Content-Length: ` header"))?
        .trim()
        .parse()
        .map_err(|_| field_err("Content-Length is not a number"))?;
    let md5 = line("Firmware-MD5: ").ok_or_else(|| field_err("no `Firmware-MD5: ` header"))?.trim().to_owned();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(field_err(format!("Firmware-MD5 is not 32 hex digits: {md5:?}")));
    }
    let soft_version = line("Soft-Version: ").map(|v| v.trim().to_owned());
    let firmware_version = line("Firmware-Version: ").map(|v| v.trim().to_owned());
    let filename = field_until(head, "filename=\"", &[b"\""])
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
        .ok_or_else(|| field_err("no filename=\"…\" in Content-Disposition"))?;
    let lower = filename.to_ascii_lowercase();
    if !lower.ends_with(".bin") && !lower.ends_with(".hex") {
        return Err(field_err(format!("filename is neither .bin nor .hex: {filename:?}")));
    }
    Ok(DownloadHead {
        header_len,
        content_length,
        md5,
        soft_version,
        firmware_version,
        is_hex: lower.ends_with(".hex"),
        filename,
    })
}

// ---------------------------------------------------------------------------------------------
// AES-128-ECB with PKCS#7, as encrypted registration uses it
// (`device-protocol.md#encrypted-registration`, `device-protocol.md#checksums`).

/// Encrypts with PKCS#7 padding (a full block of padding when the input is block-aligned).
pub fn aes_ecb_encrypt(key: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let pad = 16 - plain.len() % 16;
    let mut data = plain.to_vec();
    data.extend(std::iter::repeat_n(u8::try_from(pad).unwrap_or(16), pad));
    for block in data.chunks_exact_mut(16) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    data
}

/// Decrypts and strips PKCS#7; `None` for a bad length or padding.
pub fn aes_ecb_decrypt(key: &[u8; 16], data: &[u8]) -> Option<Vec<u8>> {
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return None;
    }
    let cipher = Aes128::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(16) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(*out.last()?);
    if pad == 0 || pad > 16 || !out.get(out.len() - pad..)?.iter().all(|b| usize::from(*b) == pad) {
        return None;
    }
    out.truncate(out.len() - pad);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "0123456789abcdef0123456789abcdef";

    /// `device-protocol.md#v41-check` byte for byte.
    #[test]
    fn update_and_check_is_spelled_like_the_firmware() {
        let req =
            update_and_check("api.gizwits.com", "AbCdEfGhIjKlMnOpQrStUv", "KQXBDTRLMA", 1, "00ESP826", "04020019");
        let expected = "POST /dev/ota/v4.1/update_and_check/AbCdEfGhIjKlMnOpQrStUv HTTP/1.1\r\n\
                        Host:api.gizwits.com\r\n\
                        Content-Length:70\r\n\
                        Content-Type: application/x-www-form-urlencoded\r\n\
                        \r\n\
                        passcode=KQXBDTRLMA&type=1&hard_version=00ESP826&soft_version=04020019";
        assert_eq!(String::from_utf8(req).unwrap(), expected);
    }

    /// `device-protocol.md#plain-registration` byte for byte.
    #[test]
    fn register_is_spelled_like_the_firmware() {
        let req = register_plain("api.gizwits.com", "KQXBDTRLMA", "5CCF7F0A1B2C", PK);
        let expected = "POST /dev/devices HTTP/1.1\r\n\
                        Host: api.gizwits.com\r\n\
                        Content-Length: 81\r\n\
                        Content-Type: application/x-www-form-urlencoded\r\n\
                        \r\n\
                        passcode=KQXBDTRLMA&mac=5CCF7F0A1B2C&product_key=0123456789abcdef0123456789abcdef";
        assert_eq!(String::from_utf8(req).unwrap(), expected);
    }

    /// `device-protocol.md#plain-provision` byte for byte.
    #[test]
    fn provision_is_spelled_like_the_firmware() {
        let req = provision_plain("api.gizwits.com", "AbCdEfGhIjKlMnOpQrStUv");
        let expected = "GET /dev/devices/AbCdEfGhIjKlMnOpQrStUv HTTP/1.1\r\n\
                        Host: api.gizwits.com\r\n\
                        Cache-Control: no-cache\r\n\
                        Content-Type: application/x-www-form-urlencoded\r\n\r\n";
        assert_eq!(String::from_utf8(req).unwrap(), expected);
    }

    #[test]
    fn target_fid_and_download_are_spaced() {
        let req = String::from_utf8(target_fid("api.gizwits.com", "D", PK, 2, "00ESP826", "04000001", 1)).unwrap();
        assert_eq!(
            req,
            format!(
                "GET /dev/ota/target_fid?did=D&product_key={PK}&type=2&hard_version=00ESP826&soft_version=04000001\
                 &current_fid=1 HTTP/1.1\r\nHost: api.gizwits.com\r\nContent-Type: application/text\r\n\r\n"
            )
        );
        let dl = String::from_utf8(download("api.gizwits.com", "/dev/ota/v4.1/download/7072")).unwrap();
        assert_eq!(
            dl,
            "GET /dev/ota/v4.1/download/7072 HTTP/1.1\r\nHost: api.gizwits.com\r\nContent-Type: application/text\r\n\r\n"
        );
        let del = String::from_utf8(delete_device("h", "D", "P")).unwrap();
        assert!(del.contains("\r\nHost: h\r\nContent-Length: 16\r\n"), "{del}");
    }

    fn chunked(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn did_is_the_22_bytes_after_the_first_did_equals() {
        let raw = chunked("201 Created", "did=uNMdYrcV3YN6DZhQPc5ugW&extra=1");
        assert_eq!(parse_register(&raw).unwrap(), "uNMdYrcV3YN6DZhQPc5ugW");
        // A short did runs into the chunk trailer: GA would copy junk; the simulator refuses.
        assert!(matches!(parse_register(&chunked("201 Created", "did=short")), Err(ReplyError::Field(_))));
        // 200 is not 201.
        assert_eq!(
            parse_register(&chunked("200 OK", "did=uNMdYrcV3YN6DZhQPc5ugW")),
            Err(ReplyError::Status { expected: 201, found: 200 })
        );
        // Substring search covers the headers too: a header holding `did=` wins.
        let mut raw = b"HTTP/1.1 201 Created\r\nX-Note: did=AAAAAAAAAAAAAAAAAAAAAA\r\n\r\n".to_vec();
        raw.extend_from_slice(b"did=uNMdYrcV3YN6DZhQPc5ugW");
        assert_eq!(parse_register(&raw).unwrap(), "AAAAAAAAAAAAAAAAAAAAAA");
    }

    #[test]
    fn provision_fields_follow_ga_terminators() {
        let body = "host=sandbox.gizwits.com&port=1883&server_ts=1481943906&log_host=119.29.48.145&log_port=1884";
        let reply = parse_provision(&chunked("200 OK", body)).unwrap();
        assert_eq!(
            reply,
            ProvisionReply { host: "sandbox.gizwits.com".into(), port: 1883, server_ts: Some(1_481_943_906) }
        );
        // server_ts may end the body (terminated by CR of the chunk trailer).
        let reply = parse_provision(&chunked("200 OK", "host=m&port=1&server_ts=7")).unwrap();
        assert_eq!(reply.server_ts, Some(7));
        // port must be followed by another field.
        assert!(parse_provision(&chunked("200 OK", "server_ts=7&host=m&port=1883")).is_err());
        assert!(parse_provision(&chunked("201 Created", body)).is_err());
    }

    #[test]
    fn update_and_check_offer_needs_crlf_after_url() {
        let raw = chunked("200 OK", "soft_ver=04020021&download_url=http://api.gizwits.com/dev/ota/v4.1/download/7072");
        let offer = parse_update_and_check(&raw).unwrap().unwrap();
        assert_eq!(offer.soft_ver, "04020021");
        assert_eq!(offer.download_url, "http://api.gizwits.com/dev/ota/v4.1/download/7072");
        // Content-Length body without a CRLF after the URL: GA cannot find its end.
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\nsoft_ver=1&download_url=http://h/x";
        assert!(parse_update_and_check(raw).is_err());
        // Non-200 and a 200 without soft_ver both mean "no update".
        assert_eq!(parse_update_and_check(&chunked("400 Bad Request", "{\"error_code\":9500}")), Ok(None));
        assert_eq!(parse_update_and_check(&chunked("200 OK", "nothing")), Ok(None));
    }

    #[test]
    fn reply_truncated_at_1024_loses_the_url_end() {
        let mut raw = chunked("200 OK", &format!("soft_ver=04020021&download_url=http://h/{}", "x".repeat(1100)));
        raw.truncate(API_READ_LEN);
        assert!(parse_update_and_check(&raw).is_err());
    }

    #[test]
    fn target_fid_offer_follows_gk() {
        let raw = chunked(
            "200 OK",
            &format!(
                "target_fid=57&download_url=http://api.gizwits.com/dev/ota/download/{PK}/1/00ESP826/04000002/f.bin&firmware_version=04000002"
            ),
        );
        let offer = parse_target_fid(&raw).unwrap();
        assert_eq!(offer.target_fid, 57);
        assert_eq!(offer.path, format!("/dev/ota/download/{PK}/1/00ESP826/04000002/f.bin"));
        assert_eq!(offer.url_host.as_deref(), Some("api.gizwits.com"));
        assert_eq!(offer.firmware_version.as_deref(), Some("04000002"));
        // The URL must be followed by another field.
        let raw = chunked("200 OK", "target_fid=57&download_url=http://h/dev/ota/download/x");
        assert!(parse_target_fid(&raw).is_err());
    }

    #[test]
    fn urls_must_be_plain_http_on_port_80() {
        assert_eq!(
            split_url("http://h.example/dev/x").unwrap(),
            Url { host: "h.example".into(), path: "/dev/x".into() }
        );
        assert!(split_url("https://h/dev/x").is_err());
        assert!(split_url("http://h:8080/dev/x").is_err());
        assert_eq!(push_url_path("http://h/dev/ota/download/a/b").as_deref(), Some("/dev/ota/download/a/b"));
    }

    #[test]
    fn download_head_rules() {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 26624\r\nFirmware-MD5: 3F2A0123456789abcdef0123456789ab\r\n\
                    Soft-Version: 04020021\r\nContent-Disposition: attachment; filename=\"mcu_04020021.hex\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\n";
        let parsed = parse_download_head(head.as_bytes()).unwrap();
        assert_eq!(parsed.header_len, head.len());
        assert_eq!(parsed.content_length, 26624);
        assert_eq!(parsed.soft_version.as_deref(), Some("04020021"));
        assert!(parsed.is_hex);
        // Content-Length with no space is not what GA looks for.
        let bad = head.replace("Content-Length: ", "Content-Length:");
        assert!(parse_download_head(bad.as_bytes()).is_err());
        let bad = head.replace("200 OK", "206 Partial Content");
        assert!(parse_download_head(bad.as_bytes()).is_err());
    }

    #[test]
    fn aes_round_trip_and_encrypted_reply() {
        let key = [7u8; 16];
        for len in [0, 1, 15, 16, 17, 40] {
            let plain = vec![b'a'; len];
            let enc = aes_ecb_encrypt(&key, &plain);
            assert_eq!(enc.len(), (len / 16 + 1) * 16);
            assert_eq!(aes_ecb_decrypt(&key, &enc).unwrap(), plain);
        }
        let body = hex::encode(aes_ecb_encrypt(&key, b"did=uNMdYrcV3YN6DZhQPc5ugW"));
        let raw = chunked("201 Created", &body);
        assert_eq!(parse_did(&decrypt_reply(&raw, &key).unwrap()).unwrap(), "uNMdYrcV3YN6DZhQPc5ugW");
    }
}
