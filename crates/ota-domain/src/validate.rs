//! Field rules shared by several request types, written to match their JSON Schema exactly
//! (the OpenAPI document states them; schemathesis checks both agree).

use crate::error::{DomainError, Result};

/// What a label's schema calls blank: spaces, tabs and line breaks only (`[^ \t\n\r]` must match).
const BLANK: [char; 4] = [' ', '\t', '\n', '\r'];

/// A label (a product or token name): 1–`max` characters as sent, not only blanks; stored
/// without leading and trailing blanks.
pub fn label(field: &str, value: &str, max: usize) -> Result<String> {
    let chars = value.chars().count();
    if chars == 0 || chars > max || value.chars().all(|c| BLANK.contains(&c)) {
        return Err(DomainError::invalid(field, format!("`{field}` must be 1–{max} characters, not only spaces")));
    }
    Ok(value.trim_matches(BLANK).to_owned())
}

/// A list's did filter: a whole did or a prefix, up to 22 letters and digits; `None` when
/// absent or empty (schema `^[A-Za-z0-9]{0,22}$`).
pub fn did_prefix(did: Option<&str>) -> Result<Option<String>> {
    match did.filter(|d| !d.is_empty()) {
        None => Ok(None),
        Some(d) if d.len() <= 22 && d.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(Some(d.to_owned())),
        Some(_) => {
            Err(DomainError::field(ota_wire::ErrorCode::InvalidQuery, "did", "did must be up to 22 letters and digits"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_count_as_sent_and_store_trimmed() {
        assert_eq!(label("name", "  lamp ", 64).unwrap(), "lamp");
        assert!(label("name", " \t\r\n", 64).is_err());
        assert!(label("name", "", 64).is_err());
        // Only ASCII blanks are blank: what the schema's pattern says, in every regex engine.
        assert_eq!(label("name", "\u{a0}", 64).unwrap(), "\u{a0}");
        assert!(label("name", &"x".repeat(65), 64).is_err());
        assert!(label("name", &format!("{} ", "x".repeat(64)), 64).is_err(), "counted as sent");
    }
}
