//! Bulk import of devices known elsewhere: by MAC, and for fleets provisioned by the hosted
//! cloud, with their did and (when the operator has it) passcode. CSV or JSON.
//!
//! CSV needs a header row with a `mac` or a `did` column; `passcode`, `country`, `province`,
//! `city` and `region` are optional (other columns are ignored). JSON is an array of
//! [`DeviceImportItem`] or `{"devices": [...]}`. Each line needs a MAC or a did. `region` takes
//! the console's forms: `广东省-广州市` (province-city) or `country/province/city`.
//!
//! A line is matched to an existing device by did (unique in the installation), else by MAC
//! within the product. It may fill what the device lacks (a MAC for a device adopted without
//! one, a did, a passcode not known yet) and change the region; it never changes a known MAC,
//! did or passcode: such a line is rejected (`passcode_pinned` for a passcode: reset it first).
//! A did of another product or tenant is rejected (`device_did_taken`). Every line is
//! reported: added, updated (with the fields), unchanged, or rejected with its line number and
//! reason. Importing the same file twice changes nothing the second time. A device that
//! registers later with an imported MAC keeps the imported record and gets its did there.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{
    DeviceImportItem, DeviceImportReport, DeviceImportRequest, ImportChange, ImportOutcome, ImportRejection, Region,
};

use super::{DeviceRecord, insert_imported, is_did, is_passcode, normalize_mac};
use crate::Domain;
use crate::access::{Authorized, Write};
use crate::db::DbConn;
use crate::error::{DomainError, Result};
use crate::products::{ProductRecord, find_product};
use crate::schema::devices;

/// Lines written per transaction: big imports make progress without one giant transaction.
const CHUNK: usize = 1000;

#[derive(Debug, Clone)]
struct Line {
    #[cfg_attr(not(test), allow(dead_code))]
    number: u64,
    mac: Option<String>,
    did: Option<String>,
    passcode: Option<String>,
    region: Region,
    /// Whether the file said anything about the region (else an existing region is kept).
    has_region: bool,
}

fn invalid_csv(message: impl Into<String>) -> DomainError {
    DomainError::new(ErrorCode::InvalidCsv, message)
}

fn part(v: Option<&str>) -> Option<String> {
    v.map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Splits the console's region spellings into country / province / city.
pub fn parse_region(text: &str) -> Region {
    let text = text.trim();
    if text.contains('/') {
        let mut it = text.split('/');
        let (a, b, c) = (it.next(), it.next(), it.next());
        return Region { country: part(a), province: part(b), city: part(c) };
    }
    let mut it = text.splitn(2, '-');
    let (p, c) = (it.next(), it.next());
    Region { country: None, province: part(p), city: part(c) }
}

/// The raw fields of one line, from CSV or JSON.
#[derive(Default)]
struct RawLine<'a> {
    mac: Option<&'a str>,
    did: Option<&'a str>,
    passcode: Option<&'a str>,
    country: Option<&'a str>,
    province: Option<&'a str>,
    city: Option<&'a str>,
    region: Option<&'a str>,
}

/// Checks one line; duplicates of an earlier line (same MAC or did) are refused.
fn check_line(
    number: u64,
    raw: RawLine<'_>,
    seen: &mut std::collections::HashMap<String, u64>,
) -> std::result::Result<Line, ImportRejection> {
    let reject = |code: ErrorCode, message: String| ImportRejection { line: number, code, message };
    let mac = match part(raw.mac) {
        None => None,
        Some(m) => Some(
            normalize_mac(&m)
                .ok_or_else(|| reject(ErrorCode::InvalidField, format!("`{m}` is not a MAC (12 hex digits)")))?,
        ),
    };
    let did = match part(raw.did) {
        None => None,
        Some(d) if is_did(&d) => Some(d),
        Some(d) => return Err(reject(ErrorCode::InvalidField, format!("`{d}` is not a did (22 letters and digits)"))),
    };
    let passcode = match part(raw.passcode) {
        None => None,
        Some(p) if is_passcode(&p) => Some(p),
        Some(_) => {
            return Err(reject(ErrorCode::InvalidField, "the passcode must be 1–16 printable characters".into()));
        }
    };
    if mac.is_none() && did.is_none() {
        return Err(reject(ErrorCode::MissingField, "a line needs a MAC or a did".into()));
    }
    if passcode.is_some() && did.is_none() {
        return Err(reject(ErrorCode::MissingField, "a passcode needs the did it belongs to".into()));
    }
    for key in
        [mac.as_ref().map(|m| format!("mac {m}")), did.as_ref().map(|d| format!("did {d}"))].into_iter().flatten()
    {
        if let Some(first) = seen.get(&key) {
            return Err(reject(ErrorCode::InvalidField, format!("{key} already appears on line {first}")));
        }
    }
    let mut r = raw.region.map(parse_region).unwrap_or_default();
    r.country = part(raw.country).or(r.country);
    r.province = part(raw.province).or(r.province);
    r.city = part(raw.city).or(r.city);
    if [&r.country, &r.province, &r.city].iter().any(|p| p.as_ref().is_some_and(|s| s.chars().count() > 64)) {
        return Err(reject(ErrorCode::InvalidField, "region parts must be at most 64 characters".into()));
    }
    for key in
        [mac.as_ref().map(|m| format!("mac {m}")), did.as_ref().map(|d| format!("did {d}"))].into_iter().flatten()
    {
        seen.insert(key, number);
    }
    let has_region = r != Region::default();
    Ok(Line { number, mac, did, passcode, region: r, has_region })
}

fn parse(data: &[u8]) -> Result<(Vec<Line>, Vec<ImportRejection>)> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(data);
    let headers = reader.headers().map_err(|e| invalid_csv(format!("cannot read the header row: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (mac_col, did_col) = (col("mac"), col("did"));
    if mac_col.is_none() && did_col.is_none() {
        return Err(invalid_csv("the header row has no `mac` and no `did` column"));
    }
    let (passcode, country, province, city, region) =
        (col("passcode"), col("country"), col("province"), col("city"), col("region"));
    let mut lines = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let number = i as u64 + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rejected.push(ImportRejection { line: number, code: ErrorCode::InvalidCsv, message: e.to_string() });
                continue;
            }
        };
        let get = |c: Option<usize>| c.and_then(|c| record.get(c));
        let raw = RawLine {
            mac: get(mac_col),
            did: get(did_col),
            passcode: get(passcode),
            country: get(country),
            province: get(province),
            city: get(city),
            region: get(region),
        };
        match check_line(number, raw, &mut seen) {
            Ok(line) => lines.push(line),
            Err(r) => rejected.push(r),
        }
    }
    Ok((lines, rejected))
}

fn parse_json(data: &[u8]) -> Result<(Vec<Line>, Vec<ImportRejection>)> {
    let items: Vec<DeviceImportItem> = match serde_json::from_slice::<DeviceImportRequest>(data) {
        Ok(req) => req.devices,
        Err(_) => serde_json::from_slice(data).map_err(|e| {
            DomainError::new(
                ErrorCode::InvalidJson,
                format!("expected an array of devices or {{\"devices\": [...]}}: {e}"),
            )
        })?,
    };
    let mut lines = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let raw = RawLine {
            mac: item.mac.as_deref(),
            did: item.did.as_deref(),
            passcode: item.passcode.as_deref(),
            country: item.country.as_deref(),
            province: item.province.as_deref(),
            city: item.city.as_deref(),
            region: item.region.as_deref(),
        };
        match check_line(i as u64 + 1, raw, &mut seen) {
            Ok(line) => lines.push(line),
            Err(r) => rejected.push(r),
        }
    }
    Ok((lines, rejected))
}

/// What one line did.
enum Applied {
    Added,
    Updated(Vec<String>),
    Unchanged,
    Rejected(ErrorCode, String),
}

fn find_did(c: &mut DbConn, did: &str) -> Result<Option<DeviceRecord>> {
    Ok(devices::table.filter(devices::did.eq(did)).select(DeviceRecord::as_select()).first(c).optional()?)
}

fn find_mac(c: &mut DbConn, product_id: i64, mac: &str) -> Result<Option<DeviceRecord>> {
    Ok(devices::table
        .filter(devices::product_id.eq(product_id).and(devices::mac.eq(mac)))
        .select(DeviceRecord::as_select())
        .first(c)
        .optional()?)
}

fn apply(c: &mut DbConn, product: &ProductRecord, line: &Line, now: i64) -> Result<Applied> {
    if let Some(did) = &line.did
        && let Some(d) = find_did(c, did)?
    {
        if d.product_id != product.id {
            return Ok(Applied::Rejected(
                ErrorCode::DeviceDidTaken,
                format!("did {did} belongs to a device of another product"),
            ));
        }
        return update_existing(c, product, d, line, now);
    }
    if let Some(mac) = &line.mac
        && let Some(d) = find_mac(c, product.id, mac)?
    {
        if let (Some(want), Some(have)) = (&line.did, &d.did) {
            return Ok(Applied::Rejected(
                ErrorCode::DeviceMacTaken,
                format!("MAC {mac} belongs to did {have} here, not {want}"),
            ));
        }
        return update_existing(c, product, d, line, now);
    }
    let identity = (line.mac.as_deref(), line.did.as_deref(), line.passcode.as_deref());
    insert_imported(c, product, identity, &line.region, now)?;
    Ok(Applied::Added)
}

/// Fills what the device lacks; never changes a known MAC, did or passcode.
fn update_existing(c: &mut DbConn, product: &ProductRecord, d: DeviceRecord, line: &Line, now: i64) -> Result<Applied> {
    let mut fields = Vec::new();
    // Checks first, then writes: a rejected line changes nothing.
    let mut placeholder = None;
    if let Some(mac) = &line.mac {
        match &d.mac {
            Some(have) if have == mac => {}
            Some(have) => {
                return Ok(Applied::Rejected(
                    ErrorCode::DeviceMacTaken,
                    format!("did {} already has MAC {have}", d.did.as_deref().unwrap_or("?")),
                ));
            }
            None => {
                if let Some(other) = find_mac(c, product.id, mac)? {
                    if other.did.is_some() {
                        return Ok(Applied::Rejected(
                            ErrorCode::DeviceMacTaken,
                            format!("MAC {mac} belongs to another device of the product"),
                        ));
                    }
                    // An earlier MAC-only import of the same device: the did's record takes it over.
                    placeholder = Some(other);
                }
                fields.push("mac");
            }
        }
    }
    if line.did.is_some() && d.did.is_none() {
        fields.push("did");
    }
    if let Some(pc) = &line.passcode {
        match &d.passcode {
            Some(have) if have == pc => {}
            Some(_) => {
                return Ok(Applied::Rejected(
                    ErrorCode::PasscodePinned,
                    "the device's passcode is known and differs; reset it before importing another".into(),
                ));
            }
            None => fields.push("passcode"),
        }
    }
    let current = Region { country: d.country.clone(), province: d.province.clone(), city: d.city.clone() };
    let mut region = line.has_region.then(|| line.region.clone()).filter(|r| *r != current);
    if let Some(p) = &placeholder {
        let theirs = Region { country: p.country.clone(), province: p.province.clone(), city: p.city.clone() };
        if region.is_none() && current == Region::default() && theirs != Region::default() {
            region = Some(theirs);
        }
        diesel::delete(devices::table.find(p.id)).execute(c)?;
    }
    if region.is_some() {
        fields.push("region");
    }
    if fields.is_empty() {
        return Ok(Applied::Unchanged);
    }
    let target = devices::table.find(d.id);
    if fields.contains(&"mac") {
        diesel::update(target).set(devices::mac.eq(&line.mac)).execute(c)?;
    }
    if fields.contains(&"did") {
        diesel::update(target).set(devices::did.eq(&line.did)).execute(c)?;
    }
    if fields.contains(&"passcode") {
        diesel::update(target).set((devices::passcode.eq(&line.passcode), devices::repin.eq(false))).execute(c)?;
    }
    if let Some(r) = region {
        diesel::update(target)
            .set((devices::country.eq(r.country), devices::province.eq(r.province), devices::city.eq(r.city)))
            .execute(c)?;
    }
    diesel::update(target).set(devices::updated_at.eq(now)).execute(c)?;
    Ok(Applied::Updated(fields.into_iter().map(str::to_owned).collect()))
}

impl Domain {
    /// Imports CSV, or JSON when `json` is set. See the module doc for the rules.
    pub async fn import_devices(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        data: Vec<u8>,
        json: bool,
    ) -> Result<DeviceImportReport> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        let product = self.db.run(move |c| find_product(c, tenant_id, &key)).await?;
        let (lines, mut rejected) =
            tokio::task::spawn_blocking(move || if json { parse_json(&data) } else { parse(&data) })
                .await
                .map_err(|e| DomainError::Internal(anyhow::anyhow!("import task: {e}")))??;
        let mut report =
            DeviceImportReport { added: 0, updated: 0, unchanged: 0, rejected: Vec::new(), changes: Vec::new() };
        for chunk in lines.chunks(CHUNK) {
            let (chunk, product) = (chunk.to_vec(), product.clone());
            let now = self.clock.now_ms();
            let results = self
                .db
                .write(move |c| {
                    let mut out = Vec::with_capacity(chunk.len());
                    for line in chunk {
                        let applied = apply(c, &product, &line, now)?;
                        out.push((line, applied));
                    }
                    Ok(out)
                })
                .await?;
            for (line, applied) in results {
                let change = |outcome, fields| ImportChange {
                    line: line.number,
                    outcome,
                    mac: line.mac.clone(),
                    did: line.did.clone(),
                    fields,
                };
                match applied {
                    Applied::Added => {
                        report.added += 1;
                        let fields = [line.mac.as_ref().map(|_| "mac"), line.did.as_ref().map(|_| "did")]
                            .into_iter()
                            .flatten()
                            .chain(line.passcode.as_ref().map(|_| "passcode"))
                            .chain(line.has_region.then_some("region"))
                            .map(str::to_owned)
                            .collect();
                        report.changes.push(change(ImportOutcome::Added, fields));
                    }
                    Applied::Updated(fields) => {
                        report.updated += 1;
                        report.changes.push(change(ImportOutcome::Updated, fields));
                    }
                    Applied::Unchanged => report.unchanged += 1,
                    Applied::Rejected(code, message) => {
                        rejected.push(ImportRejection { line: line.number, code, message });
                    }
                }
            }
        }
        rejected.sort_by_key(|r| r.line);
        report.rejected = rejected;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_in_both_console_spellings() {
        let r = parse_region("广东省-广州市");
        assert_eq!((r.country, r.province.as_deref(), r.city.as_deref()), (None, Some("广东省"), Some("广州市")));
        let r = parse_region("China/Guangdong/Guangzhou");
        assert_eq!(
            (r.country.as_deref(), r.province.as_deref(), r.city.as_deref()),
            (Some("China"), Some("Guangdong"), Some("Guangzhou"))
        );
        assert_eq!(parse_region("  "), Region::default());
    }

    #[test]
    fn every_line_is_accounted_for() {
        let csv = "mac,region\n5ccf7f0a1b2c,广东省-广州市\nnot-a-mac,x\n5C:CF:7F:0A:1B:2C,dup\n\n00112233445A,\n";
        let (lines, rejected) = parse(csv.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].mac.as_deref(), Some("5CCF7F0A1B2C"));
        assert_eq!(lines[0].number, 2);
        assert!(!lines[1].has_region);
        let numbers: Vec<u64> = rejected.iter().map(|r| r.line).collect();
        assert_eq!(numbers, vec![3, 4]);
        assert!(rejected[1].message.contains("line 2"));
    }

    #[test]
    fn dids_and_passcodes_are_checked_per_line() {
        let csv = "MAC,DID,passcode\n\
            5CCF7F000001,AbCdEfGhIjKlMnOpQrStUv,KQXBDTRLMA\n\
            ,BbCdEfGhIjKlMnOpQrStUv,\n\
            5CCF7F000003,short,\n\
            5CCF7F000004,,KQXBDTRLMA\n\
            ,AbCdEfGhIjKlMnOpQrStUv,\n\
            ,,\n";
        let (lines, rejected) = parse(csv.as_bytes()).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].did.as_deref(), Some("AbCdEfGhIjKlMnOpQrStUv"));
        assert_eq!(lines[0].passcode.as_deref(), Some("KQXBDTRLMA"));
        assert_eq!(lines[1].mac, None);
        let got: Vec<(u64, ErrorCode)> = rejected.iter().map(|r| (r.line, r.code)).collect();
        assert_eq!(
            got,
            vec![
                (4, ErrorCode::InvalidField),
                (5, ErrorCode::MissingField),
                (6, ErrorCode::InvalidField),
                (7, ErrorCode::MissingField)
            ]
        );
    }

    #[test]
    fn json_takes_an_array_or_an_object() {
        let (a, _) = parse_json(br#"[{"mac":"5CCF7F000001","did":"AbCdEfGhIjKlMnOpQrStUv"}]"#).unwrap();
        let (b, _) = parse_json(br#"{"devices":[{"mac":"5CCF7F000001"},{"mac":"5CCF7F000001"}]}"#).unwrap();
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(parse_json(b"{").unwrap_err().code(), ErrorCode::InvalidJson);
    }

    #[test]
    fn a_file_without_a_mac_column_is_refused() {
        let err = parse(b"serial,region\n1,x\n").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidCsv);
    }
}
