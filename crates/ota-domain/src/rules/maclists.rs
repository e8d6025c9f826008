//! MAC lists for rules: uploaded once (up to a million entries), referenced by id, so a
//! draft can be previewed and a rule saved without sending the list again.
//!
//! Entries are separated by newlines, spaces, tabs, commas or semicolons; each is normalised
//! to 12 upper-case hex digits (`:`, `-` and `.` between digits are allowed); repeats are
//! dropped and counted; anything else is reported with its line number.

use std::collections::HashSet;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::rules::{InvalidMac, MacListView};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::devices::normalize_mac;
use crate::error::{DomainError, Result};
use crate::products::find_product;
use crate::schema::{mac_list_entries, mac_lists, products};

/// The most MACs one list may hold.
pub const MAX_MACS: usize = 1_000_000;
/// Invalid entries kept for the report; the count covers all of them.
const KEEP_INVALID: usize = 1000;
/// Rows per INSERT statement.
const INSERT_CHUNK: usize = 2000;

#[derive(Debug, Clone, Default)]
pub struct ParsedMacs {
    pub macs: Vec<String>,
    pub duplicates: i64,
    pub invalid: Vec<InvalidMac>,
    pub invalid_count: i64,
}

pub(crate) fn not_found() -> DomainError {
    DomainError::new(ErrorCode::MacListNotFound, "no MAC list with this id for this product")
}

/// Splits, normalises and de-duplicates a MAC list.
pub fn parse(text: &str) -> Result<ParsedMacs> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = ParsedMacs::default();
    let mut seen = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        for token in line.split(|c: char| c.is_whitespace() || c == ',' || c == ';').filter(|t| !t.is_empty()) {
            match normalize_mac(token) {
                Some(mac) if seen.insert(mac.clone()) => {
                    if out.macs.len() == MAX_MACS {
                        return Err(DomainError::with_details(
                            ErrorCode::InvalidField,
                            format!("a MAC list may hold at most {MAX_MACS} MACs"),
                            serde_json::json!({ "field": "macs", "limit": MAX_MACS }),
                        ));
                    }
                    out.macs.push(mac);
                }
                Some(_) => out.duplicates += 1,
                None => {
                    out.invalid_count += 1;
                    if out.invalid.len() < KEEP_INVALID {
                        out.invalid.push(InvalidMac { line: i as u64 + 1, value: token.chars().take(64).collect() });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Stores a parsed list for a product; returns its id.
pub(crate) fn store(c: &mut DbConn, tenant_id: i64, product_id: i64, parsed: &ParsedMacs, now: i64) -> Result<i64> {
    diesel::insert_into(mac_lists::table)
        .values((
            mac_lists::tenant_id.eq(tenant_id),
            mac_lists::product_id.eq(product_id),
            mac_lists::count.eq(parsed.macs.len() as i64),
            mac_lists::duplicates.eq(parsed.duplicates),
            mac_lists::invalid.eq(serde_json::to_string(&parsed.invalid).unwrap_or_else(|_| "[]".into())),
            mac_lists::invalid_count.eq(parsed.invalid_count),
            mac_lists::created_at.eq(now),
        ))
        .execute(c)?;
    let id = last_insert_id(c)?;
    for chunk in parsed.macs.chunks(INSERT_CHUNK) {
        let rows: Vec<_> =
            chunk.iter().map(|m| (mac_list_entries::list_id.eq(id), mac_list_entries::mac.eq(m.as_str()))).collect();
        crate::on_backend!(c, diesel::insert_into(mac_list_entries::table).values(&rows))?;
    }
    Ok(id)
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = mac_lists)]
struct MacListRecord {
    id: i64,
    count: i64,
    duplicates: i64,
    invalid: String,
    invalid_count: i64,
    created_at: i64,
}

fn view(r: MacListRecord, product_key: String) -> MacListView {
    MacListView {
        id: r.id,
        product_key,
        count: r.count,
        duplicates: r.duplicates,
        invalid: serde_json::from_str(&r.invalid).unwrap_or_default(),
        invalid_count: r.invalid_count,
        created_at: from_ms(r.created_at),
    }
}

impl Domain {
    /// Uploads a MAC list for a product. Invalid entries are reported, not fatal; an upload
    /// with no valid MAC at all is refused.
    pub async fn upload_mac_list(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        body: Vec<u8>,
    ) -> Result<MacListView> {
        let text =
            String::from_utf8(body).map_err(|_| DomainError::invalid("macs", "a MAC list must be UTF-8 text"))?;
        let parsed = tokio::task::spawn_blocking(move || parse(&text))
            .await
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("MAC list parsing failed: {e}")))??;
        if parsed.macs.is_empty() {
            return Err(DomainError::with_details(
                ErrorCode::InvalidField,
                "the list holds no valid MAC",
                serde_json::json!({ "field": "macs", "invalid": parsed.invalid, "invalid_count": parsed.invalid_count }),
            ));
        }
        let now = self.clock.now_ms();
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        self.db
            .write(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let id = store(c, tenant_id, product.id, &parsed, now)?;
                let r = mac_lists::table.find(id).select(MacListRecord::as_select()).first(c)?;
                Ok(view(r, product.product_key))
            })
            .await
    }

    pub async fn get_mac_list(&self, who: &Authorized<Read>, id: i64) -> Result<MacListView> {
        let tenant_id = who.tenant_id();
        self.db
            .run(move |c| {
                let (r, pk) = mac_lists::table
                    .inner_join(products::table)
                    .filter(mac_lists::id.eq(id).and(mac_lists::tenant_id.eq(tenant_id)))
                    .select((MacListRecord::as_select(), products::product_key))
                    .first(c)
                    .optional()?
                    .ok_or_else(not_found)?;
                Ok(view(r, pk))
            })
            .await
    }

    /// A page of a list's MACs after `after` (keyset paging, for streaming downloads).
    pub async fn mac_list_entries(
        &self,
        who: &Authorized<Read>,
        id: i64,
        after: String,
        limit: i64,
    ) -> Result<Vec<String>> {
        let tenant_id = who.tenant_id();
        self.db
            .run(move |c| {
                let owned: i64 = mac_lists::table
                    .filter(mac_lists::id.eq(id).and(mac_lists::tenant_id.eq(tenant_id)))
                    .count()
                    .get_result(c)?;
                if owned == 0 {
                    return Err(not_found());
                }
                Ok(mac_list_entries::table
                    .filter(mac_list_entries::list_id.eq(id))
                    .filter(mac_list_entries::mac.gt(after))
                    .order(mac_list_entries::mac)
                    .limit(limit)
                    .select(mac_list_entries::mac)
                    .load(c)?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_split_normalised_and_deduplicated() {
        let text = "aa:bb:cc:dd:ee:01, AABBCCDDEE02\n\naabb.ccdd.ee03 nonsense\r\nAA-BB-CC-DD-EE-01;zz\n";
        let p = parse(text).unwrap();
        assert_eq!(p.macs, ["AABBCCDDEE01", "AABBCCDDEE02", "AABBCCDDEE03"]);
        assert_eq!(p.duplicates, 1);
        assert_eq!(p.invalid_count, 2);
        assert_eq!(
            p.invalid,
            [InvalidMac { line: 3, value: "nonsense".into() }, InvalidMac { line: 4, value: "zz".into() }]
        );
    }

    #[test]
    fn a_bom_and_empty_input_are_fine() {
        assert_eq!(parse("\u{feff}AABBCCDDEE01").unwrap().macs, ["AABBCCDDEE01"]);
        assert!(parse("").unwrap().macs.is_empty());
    }
}
