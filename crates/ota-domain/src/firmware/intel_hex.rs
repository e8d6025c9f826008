//! Intel HEX validation for MCU images.
//!
//! GAgent sends a `.hex` MCU image to the MCU line by line (serial HEX mode, one line per frame,
//! at most 263 bytes per line), and the MCU's bootloader trusts each record. A corrupt file
//! would brick the MCU half-way, so the registry refuses one at upload.

/// The first problem found, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexError {
    pub line: usize,
    pub reason: &'static str,
}

/// The longest record line the device's HEX mode carries, CRLF included
/// (`device-protocol.md#serial-ota-sequence`).
const MAX_LINE: usize = 263;

/// Checks every record (start code, hex digits, byte count, record type, checksum) and that an
/// end-of-file record ends the data. Blank lines after the end-of-file record are allowed.
pub fn validate(data: &[u8]) -> Result<(), HexError> {
    let mut saw_eof = false;
    for (index, raw_line) in data.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let err = |reason| Err(HexError { line: line_no, reason });
        if raw_line.len() + 1 > MAX_LINE {
            return err("line longer than 263 bytes");
        }
        let line = raw_line.strip_suffix(b"\r").unwrap_or(raw_line);
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if saw_eof {
            return err("data after the end-of-file record");
        }
        let Some(body) = line.strip_prefix(b":") else { return err("record does not start with ':'") };
        if body.len() % 2 != 0 || body.len() < 10 {
            return err("record is too short or has an odd number of hex digits");
        }
        let mut bytes = Vec::with_capacity(body.len() / 2);
        for pair in body.chunks_exact(2) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(h), Some(l)) => bytes.push(h << 4 | l),
                _ => return err("non-hex character in record"),
            }
        }
        let count = usize::from(bytes[0]);
        if bytes.len() != count + 5 {
            return err("byte count does not match the record length");
        }
        if bytes.iter().fold(0_u8, |s, b| s.wrapping_add(*b)) != 0 {
            return err("record checksum is wrong");
        }
        match bytes[3] {
            0x00 => {}
            0x01 => {
                if count != 0 {
                    return err("end-of-file record carries data");
                }
                saw_eof = true;
            }
            0x02 | 0x04 if count != 2 => return err("address record must carry 2 bytes"),
            0x03 | 0x05 if count != 4 => return err("start-address record must carry 4 bytes"),
            0x02..=0x05 => {}
            _ => return err("unknown record type"),
        }
    }
    if saw_eof {
        Ok(())
    } else {
        Err(HexError { line: data.split(|&b| b == b'\n').count(), reason: "no end-of-file record" })
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        ":10010000214601360121470136007EFE09D2190140\r\n:100110002146017E17C20001FF5F16002148011928\r\n:00000001FF\r\n";

    #[test]
    fn accepts_valid_file_with_crlf_and_lf() {
        assert_eq!(validate(GOOD.as_bytes()), Ok(()));
        assert_eq!(validate(GOOD.replace("\r\n", "\n").as_bytes()), Ok(()));
        assert_eq!(validate(format!("{GOOD}\n\n").as_bytes()), Ok(()));
    }

    #[test]
    fn reports_each_fault_with_its_line() {
        let bad_sum = GOOD.replace("D2190140", "D2190141");
        assert_eq!(validate(bad_sum.as_bytes()), Err(HexError { line: 1, reason: "record checksum is wrong" }));
        let no_eof = GOOD.replace(":00000001FF\r\n", "");
        assert_eq!(validate(no_eof.as_bytes()).unwrap_err().reason, "no end-of-file record");
        let no_colon = GOOD.replacen(":1001", "1001", 1);
        assert_eq!(validate(no_colon.as_bytes()).unwrap_err().line, 1);
        let bad_digit = GOOD.replace("2146017E", "21460X7E");
        assert_eq!(
            validate(bad_digit.as_bytes()).unwrap_err(),
            HexError { line: 2, reason: "non-hex character in record" }
        );
        let after_eof = format!("{GOOD}:00000001FF\r\n");
        assert_eq!(validate(after_eof.as_bytes()).unwrap_err().line, 4);
        assert!(validate(b"\x00\x01binary").is_err());
        let wrong_count = GOOD.replace(":10010000", ":11010000");
        assert_eq!(validate(wrong_count.as_bytes()).unwrap_err().line, 1);
    }
}
