//! Lenient HTTP/1.1 for GAgent: the plumbing under the device API on port 80.
//!
//! GAgent devices in the field cannot be reflashed, so this layer bends to their HTTP client
//! instead of the other way round. Citations such as `device-protocol.md#substring-parsing` name a
//! heading of the repository's `proto-docs/device-protocol.md`.
//!
//! | module | what |
//! |---|---|
//! | [`request`] | reads one request with size limits: [`read_request`], [`Request`], [`Limits`] |
//! | [`form`] | `application/x-www-form-urlencoded` both ways: [`FormBuilder`], [`encode_component`] |
//! | [`response`] | API replies ([`api_reply`]) and the head of firmware downloads ([`download_head`]) |
//! | [`download`] | firmware downloads from a file: the first write, then `sendfile(2)` ([`DownloadFile`]) |
//! | [`aes`] | AES-128-ECB + PKCS#7 for encrypted registration and provision: [`ProductCipher`] |
//! | [`server`] | the accept loop: [`serve`], [`Handler`], [`Reply`], [`ServerSettings`], [`ServerStats`] |
//! | [`error`] | [`HttpError`], with an HTTP status and a stable code per variant |
//!
//! # The quirks, and why
//!
//! **Requests.**
//! - `update_and_check` is written as `Host:api.gizwits.com` and `Content-Length:70`, without a
//!   space after the colon (`device-protocol.md#headers-without-a-space`,
//!   `device-protocol.md#v41-check`; `device-protocol.md#observed-header-spacing` saw it only on
//!   that call). Header values are trimmed of any amount of whitespace, names match in any case, LF
//!   alone ends a line.
//! - Forms are parsed from the body whatever the Content-Type says: GAgent sends `application/text`
//!   on some calls (`device-protocol.md#v4-check`). Unknown fields are kept for the caller to
//!   ignore (`device-protocol.md#v41-check`: LUAT and the app add `did=`, `product_key=`,
//!   `otaid_type=`).
//! - One request per connection: GAgent closes its socket and connects again for every request
//!   (`device-protocol.md#hosts-and-ports`). Every reply says `Connection: close` and the server
//!   closes after it.
//! - Chunked request bodies are decoded although GAgent never sends them; a Content-Length
//!   that is not a plain number, or that disagrees with another, is refused (400).
//!
//! **API replies** ([`api_reply`]).
//! - GAgent reads the whole reply with **one `recv` of 1024 bytes**
//!   (`device-protocol.md#one-1-kb-read-per-reply`): a reply over 1024 bytes is refused when it is
//!   built, and it goes out in one write.
//! - Fields are found by `strstr` in the raw buffer, headers included
//!   (`device-protocol.md#substring-parsing`): no header may contain `did=`, `host=`, `soft_ver=`
//!   or the other keys of [`response::DEVICE_SEARCH_KEYS`]; the fixed headers contain none and the
//!   Content-Type is checked.
//! - The body is **chunked** (`device-protocol.md#open-question-ending-the-reply-body`): GAgent
//!   reads `download_url=` up to the next CRLF, which the chunk framing (`\r\n0\r\n\r\n`) supplies
//!   right after the body; LITE's parser shows the real cloud did the same; decoding clients (LUAT)
//!   still see a clean body.
//! - Only the exact success status counts (201 for registration, 200 otherwise,
//!   `device-protocol.md#strict-status-codes`). "No update" is a 400 with
//!   `{"error_code":..,"error_message":..}`
//!   (`device-protocol.md#open-question-the-no-update-reply`); malformed requests get that body
//!   shape too, with the HTTP status and [`HttpError::code`].
//! - Values in reply bodies are written verbatim, never percent-encoded: the device reads the bytes
//!   up to `&` or CRLF as they are (`device-protocol.md#plain-provision`,
//!   `device-protocol.md#v41-reply`), so `download_url=http://host/dev/...` must stay readable
//!   ([`FormBuilder`]).
//!
//! **Firmware downloads** ([`DownloadFile`]).
//! - GAgent's first `recv` is **600 bytes** and is assumed to be full
//!   (`device-protocol.md#the-600-byte-first-read`,
//!   `device-protocol.md#observed-download-first-read`): the head is refused over 512 bytes, and
//!   the head plus the first 4 KiB of the body go out in **one write**. An image shorter than
//!   600 − head bytes crashes the device, so the domain must refuse firmware under 1 KiB
//!   (`device-protocol.md#observed-download-first-read`); this layer only guarantees the one write.
//! - Never chunked; `Content-Length: ` spelled with exactly one space; `Firmware-MD5` in lower case
//!   (`device-protocol.md#open-question-md5-letter-case`); `Soft-Version` only for V4.1 MCU
//!   downloads (`device-protocol.md#open-question-soft-version-on-wi-fi-downloads`: GA copies it
//!   into the MCU version), `Firmware-Version` for V4.
//! - The file name decides bin versus Intel-HEX (`.hex`) on the device, so it is kept but
//!   sanitised to `[A-Za-z0-9._-]`.
//! - A body shorter than its Content-Length is an error and the connection is closed: the device
//!   then fails the download (no retry, `device-protocol.md#what-the-firmware-never-retries`)
//!   instead of flashing a padded image. A file shorter than its Content-Length is refused before
//!   anything is written.
//! - After the first write the body goes from the page cache to the socket with `sendfile(2)`
//!   (Linux), paced only by the socket's small send buffer and tokio's write readiness.
//!
//! **Encrypted registration and provision** (`device-protocol.md#encrypted-registration`,
//! `device-protocol.md#encrypted-provision`): AES-128-ECB, PKCS#7, key = the product secret
//! hex-decoded, ciphertext as lowercase hex ([`ProductCipher`]).
//!
//! **The server** ([`serve`]): each connection runs in its own task, so a malformed or slow
//! device costs only its own connection; reads are bounded in time and size; connections are
//! bounded by a semaphore (the excess is accepted and closed at once, so it does not sit in the
//! backlog); accept errors such as EMFILE are logged and backed off, never fatal.

pub mod aes;
pub mod download;
pub mod error;
pub mod form;
pub mod request;
pub mod response;
pub mod server;

pub use self::aes::{CryptoError, ProductCipher};
pub use self::download::DownloadFile;
pub use self::error::HttpError;
pub use self::form::{FormBuilder, encode_component};
pub use self::request::{Limits, Request, read_request};
pub use self::response::{DownloadHead, api_reply, download_head, error_reply};
pub use self::server::{Handler, Reply, ServerSettings, ServerStats, serve};
