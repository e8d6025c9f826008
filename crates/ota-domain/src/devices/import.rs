//! Bulk import of devices known by MAC (fleets registered elsewhere), from CSV.
//!
//! The file needs a header row with a `mac` column; `country`, `province`, `city` and
//! `region` are optional. `region` takes the console's forms: `广东省-广州市` (province-city)
//! or `country/province/city`. Every line is reported: added, updated (region changed),
//! unchanged, or rejected with its line number and reason. Importing the same file twice
//! changes nothing the second time. A device that registers later with an imported MAC keeps
//! the imported record (and its region) and gets its did there.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{DeviceImportReport, ImportRejection, Region, Scope};

use super::{DeviceRecord, insert_imported, normalize_mac};
use crate::Domain;
use crate::auth::Principal;
use crate::error::{DomainError, Result};
use crate::products::find_product;
use crate::schema::devices;

/// Lines written per transaction: big imports make progress without one giant transaction.
const CHUNK: usize = 1000;

#[derive(Debug, Clone)]
struct Line {
    #[cfg_attr(not(test), allow(dead_code))]
    number: u64,
    mac: String,
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

fn parse(data: &[u8]) -> Result<(Vec<Line>, Vec<ImportRejection>)> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(data);
    let headers = reader.headers().map_err(|e| invalid_csv(format!("cannot read the header row: {e}")))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let mac_col = col("mac").ok_or_else(|| invalid_csv("the header row has no `mac` column"))?;
    let (country, province, city, region) = (col("country"), col("province"), col("city"), col("region"));
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
        let raw_mac = record.get(mac_col).unwrap_or_default();
        let Some(mac) = normalize_mac(raw_mac) else {
            rejected.push(ImportRejection {
                line: number,
                code: ErrorCode::InvalidField,
                message: format!("`{raw_mac}` is not a MAC (12 hex digits)"),
            });
            continue;
        };
        if let Some(first) = seen.insert(mac.clone(), number) {
            rejected.push(ImportRejection {
                line: number,
                code: ErrorCode::InvalidField,
                message: format!("MAC {mac} already appears on line {first}"),
            });
            continue;
        }
        let get = |c: Option<usize>| c.and_then(|c| part(record.get(c)));
        let mut r = region.and_then(|c| record.get(c)).map(parse_region).unwrap_or_default();
        r.country = get(country).or(r.country);
        r.province = get(province).or(r.province);
        r.city = get(city).or(r.city);
        let too_long =
            [&r.country, &r.province, &r.city].iter().any(|p| p.as_ref().is_some_and(|s| s.chars().count() > 64));
        if too_long {
            rejected.push(ImportRejection {
                line: number,
                code: ErrorCode::InvalidField,
                message: "region parts must be at most 64 characters".into(),
            });
            continue;
        }
        let has_region = r != Region::default();
        lines.push(Line { number, mac, region: r, has_region });
    }
    Ok((lines, rejected))
}

impl Domain {
    pub async fn import_devices(
        &self,
        who: &Principal,
        product_key: &str,
        data: Vec<u8>,
    ) -> Result<DeviceImportReport> {
        who.require(Scope::Write)?;
        let (tenant_id, key) = (who.tenant_id, product_key.to_owned());
        let product = self.db.run(move |c| find_product(c, tenant_id, &key)).await?;
        let (lines, mut rejected) = tokio::task::spawn_blocking(move || parse(&data))
            .await
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("csv task: {e}")))??;
        let mut report = DeviceImportReport { added: 0, updated: 0, unchanged: 0, rejected: Vec::new() };
        for chunk in lines.chunks(CHUNK) {
            let (chunk, product) = (chunk.to_vec(), product.clone());
            let now = self.clock.now_ms();
            let (added, updated, unchanged) = self
                .db
                .write(move |c| {
                    let (mut added, mut updated, mut unchanged) = (0, 0, 0);
                    for line in chunk {
                        let existing: Option<DeviceRecord> = devices::table
                            .filter(devices::product_id.eq(product.id).and(devices::mac.eq(&line.mac)))
                            .select(DeviceRecord::as_select())
                            .first(c)
                            .optional()?;
                        match existing {
                            None => {
                                insert_imported(c, &product, &line.mac, &line.region, now)?;
                                added += 1;
                            }
                            Some(d) => {
                                let current = Region {
                                    country: d.country.clone(),
                                    province: d.province.clone(),
                                    city: d.city.clone(),
                                };
                                if !line.has_region || current == line.region {
                                    unchanged += 1;
                                    continue;
                                }
                                diesel::update(devices::table.find(d.id))
                                    .set((
                                        devices::country.eq(&line.region.country),
                                        devices::province.eq(&line.region.province),
                                        devices::city.eq(&line.region.city),
                                        devices::updated_at.eq(now),
                                    ))
                                    .execute(c)?;
                                updated += 1;
                            }
                        }
                    }
                    Ok((added, updated, unchanged))
                })
                .await?;
            report.added += added;
            report.updated += updated;
            report.unchanged += unchanged;
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
        assert_eq!(lines[0].mac, "5CCF7F0A1B2C");
        assert_eq!(lines[0].number, 2);
        assert!(!lines[1].has_region);
        let numbers: Vec<u64> = rejected.iter().map(|r| r.line).collect();
        assert_eq!(numbers, vec![3, 4]);
        assert!(rejected[1].message.contains("line 2"));
    }

    #[test]
    fn a_file_without_a_mac_column_is_refused() {
        let err = parse(b"serial,region\n1,x\n").unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidCsv);
    }
}
