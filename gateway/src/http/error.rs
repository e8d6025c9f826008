//! The one error type of the HTTP layer, with a status and a stable code per variant.
//!
//! Request errors are 4xx/5xx answers to the peer; reply-building errors are server bugs (500)
//! and are only ever logged. The `code()` strings are snake_case, stable, and safe to put in a
//! JSON string without escaping.

use std::io;

/// Why a request could not be read, or a reply could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,

    /// Reading from the socket failed (reset, ...).
    #[error("i/o error while reading the request: {0}")]
    Io(#[source] io::Error),

    /// The request was not complete within the read timeout.
    #[error("timed out reading the request")]
    Timeout,

    /// The request line is not `METHOD SP target SP HTTP/x.y` (binary junk lands here too).
    #[error("malformed request line")]
    BadRequestLine,

    /// The request target is neither origin form (`/path?query`), absolute form nor `*`.
    #[error("malformed request target")]
    BadTarget,

    /// A well-formed version other than HTTP/1.0 and HTTP/1.1 (e.g. the HTTP/2 preface).
    #[error("unsupported HTTP version")]
    UnsupportedVersion,

    /// A header line without a colon, with an invalid name, or with control bytes in its value.
    #[error("malformed header line")]
    BadHeader,

    /// The request line and headers together are longer than the limit.
    #[error("request head longer than {limit} bytes")]
    HeadTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },

    /// More header lines than the limit.
    #[error("more than {limit} header lines")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },

    /// A Content-Length that is not a plain decimal number, or several that disagree.
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,

    /// The declared (or, when chunked, the accumulated) body size is over the limit.
    #[error("request body longer than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit, in bytes.
        limit: usize,
    },

    /// A Transfer-Encoding other than `chunked`.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,

    /// A malformed chunk-size line, chunk terminator or trailer.
    #[error("malformed chunked body")]
    BadChunk,

    /// A reply to be sent is larger than the device can take in one read.
    #[error("reply of {size} bytes is over the limit of {limit} bytes")]
    ReplyTooLarge {
        /// The size the reply would have had.
        size: usize,
        /// The limit that applies to it.
        limit: usize,
    },

    /// A reply header name or value that is not allowed (control bytes, a key the device
    /// substring-searches for, a malformed MD5).
    #[error("reply header not allowed: {0}")]
    BadReplyHeader(&'static str),

    /// A status code outside 100..=599.
    #[error("status code {0} out of range")]
    BadStatus(u16),
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Truncated
            | Self::Io(_)
            | Self::BadRequestLine
            | Self::BadTarget
            | Self::BadHeader
            | Self::BadContentLength
            | Self::BadChunk => 400,
            Self::Timeout => 408,
            Self::BodyTooLarge { .. } => 413,
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedTransferEncoding => 501,
            Self::UnsupportedVersion => 505,
            Self::ReplyTooLarge { .. } | Self::BadReplyHeader(_) | Self::BadStatus(_) => 500,
        }
    }

    /// A short stable snake_case code, for the error body and for logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated_request",
            Self::Io(_) => "io_error",
            Self::Timeout => "request_timeout",
            Self::BadRequestLine => "bad_request_line",
            Self::BadTarget => "bad_target",
            Self::UnsupportedVersion => "http_version_not_supported",
            Self::BadHeader => "bad_header",
            Self::HeadTooLarge { .. } => "head_too_large",
            Self::TooManyHeaders { .. } => "too_many_headers",
            Self::BadContentLength => "bad_content_length",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Self::BadChunk => "bad_chunked_body",
            Self::ReplyTooLarge { .. } => "reply_too_large",
            Self::BadReplyHeader(_) => "bad_reply_header",
            Self::BadStatus(_) => "bad_status",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let all = [
            HttpError::Truncated,
            HttpError::Io(io::Error::other("x")),
            HttpError::Timeout,
            HttpError::BadRequestLine,
            HttpError::BadTarget,
            HttpError::UnsupportedVersion,
            HttpError::BadHeader,
            HttpError::HeadTooLarge { limit: 1 },
            HttpError::TooManyHeaders { limit: 1 },
            HttpError::BadContentLength,
            HttpError::BodyTooLarge { limit: 1 },
            HttpError::UnsupportedTransferEncoding,
            HttpError::BadChunk,
            HttpError::ReplyTooLarge { size: 2, limit: 1 },
            HttpError::BadReplyHeader("x"),
            HttpError::BadStatus(7),
        ];
        let mut codes: Vec<&str> = all.iter().map(HttpError::code).collect();
        assert!(codes.iter().all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert!(all.iter().all(|e| (400..600).contains(&e.status())));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
