//! A rule's per-device results: a paged list for screens, keyset pages for CSV export.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{Page, UpgradeStage};
use ota_wire::rules::{RuleDeviceFilter, RuleDeviceQuery, RuleDeviceView};

use super::find_rule;
use crate::Domain;
use crate::access::{Authorized, Read};
use crate::devices::{DeviceRecord, mac_search};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::schema::{devices, upgrades};
use crate::stored::Stored;
use crate::upgrades::UpgradeRecord;

type Joined = diesel::dsl::IntoBoxed<
    'static,
    diesel::dsl::Filter<
        diesel::dsl::InnerJoin<upgrades::table, devices::table>,
        diesel::dsl::Eq<upgrades::rule_id, i64>,
    >,
    crate::db::MultiBackend,
>;

fn filtered(rule_id: i64, filter: RuleDeviceFilter, mac: &Option<String>, wave: Option<u32>) -> Joined {
    let mut q = upgrades::table.inner_join(devices::table).filter(upgrades::rule_id.eq(Some(rule_id))).into_boxed();
    let ok = Stored(UpgradeStage::Succeeded);
    let on_the_way =
        [UpgradeStage::Notified, UpgradeStage::Checked, UpgradeStage::Downloading, UpgradeStage::Downloaded]
            .map(Stored);
    q = match filter {
        RuleDeviceFilter::All => q,
        RuleDeviceFilter::Succeeded => q.filter(upgrades::stage.eq(ok)),
        RuleDeviceFilter::NotSucceeded => q.filter(upgrades::stage.ne(ok)),
        RuleDeviceFilter::Failed => q.filter(upgrades::stage.eq(Stored(UpgradeStage::Failed))),
        RuleDeviceFilter::InFlight => q.filter(upgrades::stage.eq_any(on_the_way)),
        RuleDeviceFilter::Excluded => q.filter(upgrades::stage.eq(Stored(UpgradeStage::Excluded))),
    };
    if let Some(w) = wave {
        q = q.filter(upgrades::wave.eq(i64::from(w)));
    }
    if let Some(mac) = mac {
        q = if mac.len() == 12 {
            q.filter(devices::mac.eq(mac.clone()))
        } else {
            q.filter(devices::mac.like(format!("{mac}%")))
        };
    }
    q
}

fn view(r: &UpgradeRecord, d: &DeviceRecord) -> Result<RuleDeviceView> {
    Ok(RuleDeviceView {
        did: d.did.clone(),
        mac: d.mac.clone(),
        stage: r.stage(),
        from_version: r.from_version.clone(),
        to_version: r.to_version.clone(),
        times: r.times(),
        last_error: r.reason.clone(),
        failure: r.failure_view(),
        attempt: r.attempt,
        attempts: r.attempts_view()?,
        wave: u32::try_from(r.wave).unwrap_or(0),
        time_zone: r.zone.clone(),
        online: d.online,
    })
}

/// The CSV header of an export; [`csv_row`] writes rows in this order.
pub const CSV_HEADER: &str = "mac,did,stage,from_version,to_version,notified_at,checked_at,download_started_at,downloaded_at,succeeded_at,failed_at,failure_kind,failed_stage,attempt,attempts,last_error\n";

/// One export row, RFC 4180 quoting.
pub fn csv_row(v: &RuleDeviceView) -> String {
    fn field(s: Option<&str>) -> String {
        let s = s.unwrap_or_default();
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
    }
    let t =
        |d: Option<chrono::DateTime<chrono::Utc>>| d.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let stage = Some(v.stage.as_str());
    let (kind, failed_stage) = match v.failure {
        Some(f) => (Some(f.kind.as_str()), Some(f.stage.as_str())),
        None => (None, None),
    };
    let (attempt, attempts) = (v.attempt.to_string(), v.attempts.len().to_string());
    let cols = [
        field(v.mac.as_deref()),
        field(v.did.as_deref()),
        field(stage),
        field(v.from_version.as_deref()),
        field(v.to_version.as_deref()),
        field(t(v.times.notified_at).as_deref()),
        field(t(v.times.checked_at).as_deref()),
        field(t(v.times.download_started_at).as_deref()),
        field(t(v.times.downloaded_at).as_deref()),
        field(t(v.times.succeeded_at).as_deref()),
        field(t(v.times.failed_at).as_deref()),
        field(kind),
        field(failed_stage),
        field(Some(&attempt)),
        field(Some(&attempts)),
        field(v.last_error.as_deref()),
    ];
    let mut line = cols.join(",");
    line.push('\n');
    line
}

impl Domain {
    /// `GET /rules/{id}/devices`: every target with its stage, newest record last.
    pub async fn rule_devices(
        &self,
        who: &Authorized<Read>,
        id: i64,
        q: RuleDeviceQuery,
    ) -> Result<Page<RuleDeviceView>> {
        let page = PageRequest::new(q.page, q.per_page)?;
        let mac = mac_search(q.mac.as_deref())?;
        let filter = q.filter.unwrap_or_default();
        let wave = q.wave;
        let tenant_id = who.tenant_id();
        let (rows, total) = self
            .db
            .snapshot(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                let total: i64 = filtered(rule.id, filter, &mac, wave).count().get_result(c)?;
                let rows: Vec<(UpgradeRecord, DeviceRecord)> = filtered(rule.id, filter, &mac, wave)
                    .order(upgrades::id)
                    .limit(page.limit())
                    .offset(page.offset())
                    .select((UpgradeRecord::as_select(), DeviceRecord::as_select()))
                    .load(c)?;
                Ok((rows, total))
            })
            .await?;
        let items = rows.iter().map(|(r, d)| view(r, d)).collect::<Result<Vec<_>>>()?;
        Ok(page.wrap(items, total))
    }

    /// Checks the export's parameters before the response starts streaming.
    pub async fn check_rule_export(
        &self,
        who: &Authorized<Read>,
        id: i64,
        mac: Option<&str>,
    ) -> Result<Option<String>> {
        let mac = mac_search(mac)?;
        let tenant_id = who.tenant_id();
        self.db.run(move |c| find_rule(c, tenant_id, id).map(|_| ())).await?;
        Ok(mac)
    }

    /// Keyset pages of an export: rows after record `after`, and the last record id.
    #[allow(clippy::too_many_arguments)] // the filters of one export, each its own column
    pub async fn rule_export_page(
        &self,
        who: &Authorized<Read>,
        id: i64,
        filter: RuleDeviceFilter,
        mac: Option<String>,
        wave: Option<u32>,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<RuleDeviceView>, Option<i64>)> {
        let tenant_id = who.tenant_id();
        let rows = self
            .db
            .run(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                let rows: Vec<(UpgradeRecord, DeviceRecord)> = filtered(rule.id, filter, &mac, wave)
                    .filter(upgrades::id.gt(after))
                    .order(upgrades::id)
                    .limit(limit)
                    .select((UpgradeRecord::as_select(), DeviceRecord::as_select()))
                    .load(c)?;
                Ok(rows)
            })
            .await?;
        let last = rows.last().map(|(r, _)| r.id);
        Ok((rows.iter().map(|(r, d)| view(r, d)).collect::<Result<Vec<_>>>()?, last))
    }

    /// The rule's MAC list id, for its download.
    pub async fn rule_mac_list(&self, who: &Authorized<Read>, id: i64) -> Result<i64> {
        let tenant_id = who.tenant_id();
        self.db
            .run(move |c| {
                let (rule, _, _) = find_rule(c, tenant_id, id)?;
                rule.mac_list_id
                    .ok_or_else(|| DomainError::new(ErrorCode::MacListNotFound, "this rule targets no MAC list"))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use ota_wire::dto::UpgradeTimes;

    use super::*;

    #[test]
    fn csv_rows_quote_what_needs_it() {
        let v = RuleDeviceView {
            did: Some("d".into()),
            mac: Some("AABBCCDDEEFF".into()),
            stage: UpgradeStage::Failed,
            from_version: Some("04020019".into()),
            to_version: Some("04020021".into()),
            times: UpgradeTimes {
                notified_at: None,
                checked_at: None,
                download_started_at: None,
                downloaded_at: None,
                succeeded_at: None,
                failed_at: None,
            },
            last_error: Some("cut, \"badly\"\nhere".into()),
            failure: Some(ota_wire::dto::FailureView {
                kind: ota_wire::dto::FailureKind::DownloadCut,
                stage: UpgradeStage::Downloading,
            }),
            attempt: 2,
            attempts: Vec::new(),
            wave: 1,
            time_zone: None,
            online: false,
        };
        assert_eq!(
            csv_row(&v),
            "AABBCCDDEEFF,d,failed,04020019,04020021,,,,,,,download_cut,downloading,2,0,\"cut, \"\"badly\"\"\nhere\"\n"
        );
        assert_eq!(CSV_HEADER.matches(',').count(), csv_row(&v).matches(',').count() - 1);
    }
}
