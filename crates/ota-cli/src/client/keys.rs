//! `Idempotency-Key`s derived from what a request creates, so the same step of a rerun sends
//! the same key (and the server answers the first run's object) while a changed step sends a
//! new one. The server keeps keys 24 hours per tenant (proto-docs/api.md, "Reruns").

use sha2::{Digest, Sha256};

fn derive(kind: &str, parts: &[&[u8]]) -> String {
    let mut hash = Sha256::new();
    hash.update(kind.as_bytes());
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    format!("ota-{kind}-{}", &hex::encode(hash.finalize())[..32])
}

/// An upload: the product, the file's SHA-256 and name, and every form field.
pub fn upload(product_key: &str, file_sha256: &str, file_name: &str, fields: &[(&str, Option<&str>)]) -> String {
    let mut parts: Vec<Vec<u8>> = vec![product_key.into(), file_sha256.into(), file_name.into()];
    for (name, value) in fields {
        parts.push(format!("{name}={}", value.unwrap_or("\u{0}")).into_bytes());
    }
    derive("upload", &parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// A rule: its firmware and name; a rule without a name, its firmware and whole body.
pub fn rule(firmware_id: i64, name: Option<&str>, body: &[u8]) -> String {
    let id = firmware_id.to_string();
    match name {
        Some(name) => derive("rule", &[id.as_bytes(), name.as_bytes()]),
        None => derive("rule-body", &[id.as_bytes(), body]),
    }
}

/// A verification: the firmware, the MAC and the verification it follows (none, or the id of
/// the failed/expired one), so starting again after a failure is a new request.
pub fn verification(firmware_id: i64, mac: &str, previous: Option<i64>) -> String {
    let normalized: String = mac.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_ascii_uppercase();
    let previous = previous.map(|p| p.to_string()).unwrap_or_default();
    derive("verify", &[firmware_id.to_string().as_bytes(), normalized.as_bytes(), previous.as_bytes()])
}

/// An import: the product and the file's bytes and format.
pub fn import(product_key: &str, json: bool, content: &[u8]) -> String {
    derive("import", &[product_key.as_bytes(), if json { b"json" } else { b"csv" }, content])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_what_is_created() {
        let fields = [("name", Some("v2")), ("type", Some("wifi"))];
        let a = upload("pk", "abc", "fw.bin", &fields);
        assert_eq!(a, upload("pk", "abc", "fw.bin", &fields));
        assert!(a.starts_with("ota-upload-") && a.len() <= 255 && a.bytes().all(|b| b.is_ascii_graphic()));
        assert_ne!(a, upload("pk", "abd", "fw.bin", &fields));
        assert_ne!(a, upload("pk", "abc", "fw.bin", &[("name", Some("v3")), ("type", Some("wifi"))]));
        assert_ne!(a, upload("pk", "abc", "fw.bin", &[("name", Some("v2")), ("type", None)]));

        assert_eq!(rule(1, Some("ci"), b"{}"), rule(1, Some("ci"), b"{\"x\":1}"), "a named rule is its name");
        assert_ne!(rule(1, Some("ci"), b"{}"), rule(2, Some("ci"), b"{}"));
        assert_ne!(rule(1, None, b"{}"), rule(1, None, b"{\"x\":1}"));

        assert_eq!(verification(3, "5c:cf:7f:00:00:01", None), verification(3, "5CCF7F000001", None));
        assert_ne!(verification(3, "5CCF7F000001", None), verification(3, "5CCF7F000001", Some(9)));
        assert_ne!(import("pk", false, b"mac\n1"), import("pk", true, b"mac\n1"));
    }
}
