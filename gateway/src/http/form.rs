//! `application/x-www-form-urlencoded`: parsing what devices send, building what they read.
//!
//! Parsing is lenient: `+` is a space, a `%` not followed by two hex digits is kept as it is,
//! a pair without `=` has an empty value, empty pieces (`a=1&&b=2`) are skipped, and bytes that
//! are not UTF-8 become U+FFFD instead of failing the request.
//!
//! Building is verbatim on purpose: GAgent finds its fields with `strstr` in the raw reply and
//! reads up to the next `&` or CRLF (`device-protocol.md#substring-parsing`), without decoding
//! anything. A URL such as `http://api.gizwits.com/dev/ota/v4.1/download/12` must therefore appear
//! exactly as written, never as `http%3A%2F%2F...`. [`encode_component`] exists for the rare value
//! that really needs escaping.

/// Parses a form body or a query string into its pairs, in order, keeping duplicates.
pub fn parse(input: &str) -> Vec<(String, String)> {
    parse_bytes(input.as_bytes())
}

/// Like [`parse`], for raw bytes (a request body need not be UTF-8).
pub fn parse_bytes(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let (key, value) = match piece.iter().position(|&b| b == b'=') {
                Some(eq) => piece.split_at(eq),
                None => (piece, &b""[..]),
            };
            // `value` still starts with the `=` when there was one.
            let value = value.strip_prefix(b"=").unwrap_or(value);
            (decode_component(key, true), decode_component(value, true))
        })
        .collect()
}

/// Percent-decodes one component. With `plus_as_space`, `+` means a space (query strings and
/// form bodies); malformed escapes are kept literally.
pub fn decode_component(input: &[u8], plus_as_space: bool) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        match byte {
            b'+' if plus_as_space => {
                out.push(b' ');
                rest = tail;
            }
            b'%' => match tail {
                [hi, lo, after @ ..] => match (hex_value(*hi), hex_value(*lo)) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        rest = after;
                    }
                    _ => {
                        out.push(b'%');
                        rest = tail;
                    }
                },
                _ => {
                    out.push(b'%');
                    rest = tail;
                }
            },
            other => {
                out.push(other);
                rest = tail;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    }
}

/// The value of one hex digit, either case.
pub(crate) fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`).
/// A space becomes `%20`, which both query and form decoders read back as a space.
pub fn encode_component(input: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing into a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Builds `k=v&k=v` with keys and values written **verbatim** (see the module docs).
///
/// The caller picks values that suit the device's substring parser: no `&`, CR or LF inside a
/// value that GAgent reads up to the next `&` or CRLF. Use [`FormBuilder::pair_encoded`] for a
/// free-text value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormBuilder {
    out: String,
}

impl FormBuilder {
    /// An empty form.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key=value` exactly as given.
    pub fn pair(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        use std::fmt::Write as _;
        if !self.out.is_empty() {
            self.out.push('&');
        }
        // Writing into a String cannot fail.
        let _ = write!(self.out, "{key}={value}");
        self
    }

    /// Appends `key=<percent-encoded value>`.
    pub fn pair_encoded(self, key: &str, value: &str) -> Self {
        let encoded = encode_component(value);
        self.pair(key, encoded)
    }

    /// The form built so far.
    pub fn as_str(&self) -> &str {
        &self.out
    }

    /// The finished form.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_the_update_and_check_body() {
        let body = "passcode=KQXBDTRLMA&type=1&hard_version=00ESP826&soft_version=04020019";
        assert_eq!(
            parse(body),
            pairs(&[
                ("passcode", "KQXBDTRLMA"),
                ("type", "1"),
                ("hard_version", "00ESP826"),
                ("soft_version", "04020019")
            ])
        );
    }

    #[test]
    fn parsing_is_lenient() {
        assert_eq!(
            parse("a=1&&b&c=x+y%20z&d=%zz%4&e=%41%e2%82%ac&=v&f=a=b"),
            pairs(&[("a", "1"), ("b", ""), ("c", "x y z"), ("d", "%zz%4"), ("e", "A€"), ("", "v"), ("f", "a=b")])
        );
        assert_eq!(parse(""), pairs(&[]));
        assert_eq!(parse_bytes(b"k=%ff\xfe"), pairs(&[("k", "\u{fffd}\u{fffd}")]));
        assert_eq!(decode_component(b"a+b", false), "a+b");
    }

    #[test]
    fn builder_writes_urls_verbatim() {
        let body = FormBuilder::new()
            .pair("soft_ver", "04020021")
            .pair("download_url", "http://api.gizwits.com/dev/ota/v4.1/download/7072")
            .finish();
        assert_eq!(body, "soft_ver=04020021&download_url=http://api.gizwits.com/dev/ota/v4.1/download/7072");
        let with_number = FormBuilder::new().pair("target_fid", 57).pair_encoded("note", "a b&c/d");
        assert_eq!(with_number.as_str(), "target_fid=57&note=a%20b%26c%2Fd");
    }

    #[test]
    fn encode_then_parse_round_trips() {
        for text in ["", "plain", "a b+c&d=e%f", "ünïcode €", "~-._"] {
            let form = FormBuilder::new().pair_encoded("k", text).finish();
            assert_eq!(parse(&form), pairs(&[("k", text)]));
        }
        assert_eq!(encode_component("~-._AZaz09"), "~-._AZaz09");
    }
}
