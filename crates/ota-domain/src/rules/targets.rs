//! Which devices a rule pushes to, as SQL, so a preview over a million devices is a few
//! index scans rather than a million rows in memory.
//!
//! A target is a device of the firmware's product that
//! - uses the firmware's push method and, for V4 and V4.1, reports the firmware's type with
//!   the firmware's hardware version (V1V3 names no type: one firmware id per device);
//! - runs one of the rule's old versions: V4.1 the reported software version, V4 the series'
//!   software version with another fid, V1V3 the firmware id of an earlier firmware named in
//!   `old_versions`;
//! - is in the rule's targets: all, one of the regions, or a MAC of its list.

use std::collections::BTreeMap;

use diesel::dsl::count_star;
use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, Region};
use ota_wire::rollout::{Preflight, WavePreflight};
use ota_wire::rules::{OldVersion, RuleBody, RulePreview, RuleStatus, TargetKind};

use super::{MacSource, RuleRecord, RuleSpec, find_rule};
use crate::Domain;
use crate::access::{Authorized, Read};
use crate::db::{DbConn, MultiBackend};
use crate::error::{DomainError, Result};
use crate::firmware::{FirmwareRecord, find_firmware};
use crate::schema::{devices, firmware, mac_list_entries, rules, upgrades};
use crate::stored::Stored;
use crate::upgrade::{SeriesRules, Versions, is_newer};

pub(crate) type DeviceQuery<'a> = devices::BoxedQuery<'a, MultiBackend>;

type RegionCond = Box<
    dyn BoxableExpression<devices::table, MultiBackend, SqlType = diesel::sql_types::Nullable<diesel::sql_types::Bool>>,
>;

/// What the devices of a firmware's series report, per type.
struct Columns;

impl Columns {
    fn sw(q: DeviceQuery<'static>, fw_type: FirmwareType, versions: Vec<String>) -> DeviceQuery<'static> {
        match fw_type {
            FirmwareType::Wifi => q.filter(devices::wifi_sw.eq_any(versions)),
            FirmwareType::Mcu => q.filter(devices::mcu_sw.eq_any(versions)),
        }
    }

    fn hw(q: DeviceQuery<'static>, fw_type: FirmwareType, hw: String) -> DeviceQuery<'static> {
        match fw_type {
            FirmwareType::Wifi => q.filter(devices::wifi_hw.eq(hw)),
            FirmwareType::Mcu => q.filter(devices::mcu_hw.eq(hw)),
        }
    }

    fn fid_is(q: DeviceQuery<'static>, fw_type: FirmwareType, fid: i64) -> DeviceQuery<'static> {
        match fw_type {
            FirmwareType::Wifi => q.filter(devices::wifi_fid.eq(fid)),
            FirmwareType::Mcu => q.filter(devices::mcu_fid.eq(fid)),
        }
    }

    fn fid_is_not(q: DeviceQuery<'static>, fw_type: FirmwareType, fid: i64) -> DeviceQuery<'static> {
        match fw_type {
            FirmwareType::Wifi => q.filter(devices::wifi_fid.is_null().or(devices::wifi_fid.ne(fid))),
            FirmwareType::Mcu => q.filter(devices::mcu_fid.is_null().or(devices::mcu_fid.ne(fid))),
        }
    }
}

/// Devices of the firmware's product, method, type and hardware version.
fn series(fw: &FirmwareRecord) -> DeviceQuery<'static> {
    let q = devices::table
        .filter(devices::product_id.eq(fw.product_id))
        .filter(devices::push_method.eq(fw.push_method().as_str()))
        .into_boxed();
    match (fw.push_method(), &fw.hard_version) {
        (PushMethod::V1V3, _) => q,
        (_, Some(hw)) => Columns::hw(q, fw.fw_type(), hw.clone()),
        (_, None) => q.filter(devices::id.lt(0)),
    }
}

/// The old-version part of the filter; `old_fids` are the V1V3 firmware ids of the names.
fn on_old(q: DeviceQuery<'static>, fw: &FirmwareRecord, old: &[String], old_fids: &[i64]) -> DeviceQuery<'static> {
    match fw.push_method() {
        PushMethod::V41 => Columns::sw(q, fw.fw_type(), old.to_vec()),
        PushMethod::V4 => {
            let q = Columns::sw(q, fw.fw_type(), old.to_vec());
            match fw.fid {
                Some(fid) => Columns::fid_is_not(q, fw.fw_type(), fid),
                None => q,
            }
        }
        PushMethod::V1V3 => q.filter(devices::legacy_firmware_id.eq_any(old_fids.to_vec())),
    }
}

/// Devices already on the firmware's version.
fn on_target(q: DeviceQuery<'static>, fw: &FirmwareRecord) -> DeviceQuery<'static> {
    match (fw.push_method(), &fw.soft_version, fw.fid) {
        (PushMethod::V41, Some(sw), _) => Columns::sw(q, fw.fw_type(), vec![sw.clone()]),
        (PushMethod::V4, _, Some(fid)) => Columns::fid_is(q, fw.fw_type(), fid),
        (PushMethod::V1V3, _, Some(fid)) => q.filter(devices::legacy_firmware_id.eq(fid)),
        _ => q.filter(devices::id.lt(0)),
    }
}

fn region_cond(r: &Region) -> Option<RegionCond> {
    let mut cond: Option<RegionCond> = None;
    let parts = [(r.country.clone(), 0), (r.province.clone(), 1), (r.city.clone(), 2)];
    for (value, which) in parts {
        let Some(v) = value else { continue };
        let this: RegionCond = match which {
            0 => Box::new(devices::country.eq(v)),
            1 => Box::new(devices::province.eq(v)),
            _ => Box::new(devices::city.eq(v)),
        };
        cond = Some(match cond {
            None => this,
            Some(prev) => Box::new(prev.and(this)),
        });
    }
    cond
}

/// The targets part of the filter.
fn in_targets(q: DeviceQuery<'static>, kind: TargetKind, regions: &[Region], macs: &MacSource) -> DeviceQuery<'static> {
    match kind {
        TargetKind::All => q,
        TargetKind::Regions => {
            let mut any: Option<RegionCond> = None;
            for cond in regions.iter().filter_map(region_cond) {
                any = Some(match any {
                    None => cond,
                    Some(prev) => Box::new(prev.or(cond)),
                });
            }
            match any {
                Some(cond) => q.filter(cond),
                None => q.filter(devices::id.lt(0)),
            }
        }
        TargetKind::Macs => match macs {
            MacSource::List(list) => q.filter(devices::mac.assume_not_null().eq_any(
                mac_list_entries::table.filter(mac_list_entries::list_id.eq(*list)).select(mac_list_entries::mac),
            )),
            MacSource::Inline(values) => q.filter(devices::mac.assume_not_null().eq_any(values.clone())),
            MacSource::None => q.filter(devices::id.lt(0)),
        },
    }
}

/// A rule's whole filter, as a function so each count gets a fresh query.
pub(crate) struct TargetFilter {
    fw: FirmwareRecord,
    kind: TargetKind,
    regions: Vec<Region>,
    macs: MacSource,
    old: Vec<String>,
    old_fids: Vec<i64>,
}

impl TargetFilter {
    pub(crate) fn new(c: &mut DbConn, fw: &FirmwareRecord, spec: &RuleSpec) -> Result<TargetFilter> {
        Ok(TargetFilter {
            fw: fw.clone(),
            kind: spec.kind,
            regions: spec.regions.clone(),
            macs: spec.macs.clone(),
            old: spec.old_versions.clone(),
            old_fids: v1v3_fids(c, fw, &spec.old_versions)?,
        })
    }

    pub(crate) fn of_rule(c: &mut DbConn, fw: &FirmwareRecord, rule: &RuleRecord) -> Result<TargetFilter> {
        Self::new(c, fw, &RuleSpec::from_record(rule)?)
    }

    /// Target devices.
    pub(crate) fn targets(&self) -> DeviceQuery<'static> {
        in_targets(on_old(series(&self.fw), &self.fw, &self.old, &self.old_fids), self.kind, &self.regions, &self.macs)
    }

    /// Devices in the targets that already run the firmware's version.
    fn already(&self) -> DeviceQuery<'static> {
        in_targets(on_target(series(&self.fw), &self.fw), self.kind, &self.regions, &self.macs)
    }
}

/// V1V3 `old_versions` are firmware names; these are their firmware ids.
fn v1v3_fids(c: &mut DbConn, fw: &FirmwareRecord, names: &[String]) -> Result<Vec<i64>> {
    if fw.push_method() != PushMethod::V1V3 {
        return Ok(Vec::new());
    }
    let fids: Vec<Option<i64>> = firmware::table
        .filter(firmware::product_id.eq(fw.product_id))
        .filter(firmware::push_method.eq(PushMethod::V1V3.as_str()))
        .filter(firmware::name.eq_any(names))
        .select(firmware::fid)
        .load(c)?;
    Ok(fids.into_iter().flatten().collect())
}

/// Other live rules (pushing, paused, halted) of the product whose series is this firmware's.
fn same_series_rules(
    c: &mut DbConn,
    fw: &FirmwareRecord,
    exclude: Option<i64>,
    rules_cfg: SeriesRules,
) -> Result<Vec<i64>> {
    let live = [RuleStatus::Pushing, RuleStatus::Paused, RuleStatus::Halted].map(Stored);
    let rows: Vec<(i64, FirmwareRecord)> = rules::table
        .inner_join(firmware::table)
        .filter(rules::product_id.eq(fw.product_id))
        .filter(rules::status.eq_any(live))
        .filter(rules::id.ne(exclude.unwrap_or(-1)))
        .select((rules::id, FirmwareRecord::as_select()))
        .load(c)?;
    Ok(rows.into_iter().filter(|(_, other)| same_series(fw, other, rules_cfg)).map(|(id, _)| id).collect())
}

/// Two firmware of one product push to the same devices' same image slot.
pub(crate) fn same_series(a: &FirmwareRecord, b: &FirmwareRecord, rules_cfg: SeriesRules) -> bool {
    if a.push_method() != b.push_method() {
        return false;
    }
    match a.push_method() {
        PushMethod::V1V3 => true,
        PushMethod::V4 => {
            a.fw_type() == b.fw_type() && a.hard_version == b.hard_version && a.soft_version == b.soft_version
        }
        PushMethod::V41 => match (&a.hard_version, &a.soft_version, &b.hard_version, &b.soft_version) {
            (Some(ah), Some(asw), Some(bh), Some(bsw)) => {
                a.fw_type() == b.fw_type()
                    && (rules_cfg.same_series(
                        a.fw_type(),
                        Versions { hard: ah, soft: asw },
                        Versions { hard: bh, soft: bsw },
                    ) || rules_cfg.same_series(
                        a.fw_type(),
                        Versions { hard: bh, soft: bsw },
                        Versions { hard: ah, soft: asw },
                    ))
            }
            _ => false,
        },
    }
}

/// Which of `candidates` (rule ids) already push to some device of `filter`'s targets.
fn overlapping(c: &mut DbConn, filter: &TargetFilter, candidates: &[i64]) -> Result<(i64, Vec<i64>)> {
    if candidates.is_empty() {
        return Ok((0, Vec::new()));
    }
    let busy = || {
        upgrades::table
            .filter(upgrades::rule_id.eq_any(candidates.to_vec()))
            .filter(upgrades::active.eq(true))
            .select(upgrades::device_id)
    };
    let n: i64 = filter.targets().filter(devices::id.eq_any(busy())).count().get_result(c)?;
    let mut ids = Vec::new();
    if n > 0 {
        for id in candidates {
            let shared = upgrades::table
                .filter(upgrades::rule_id.eq(*id))
                .filter(upgrades::active.eq(true))
                .select(upgrades::device_id);
            let k: i64 = filter.targets().filter(devices::id.eq_any(shared)).count().get_result(c)?;
            if k > 0 {
                ids.push(*id);
            }
        }
    }
    Ok((n, ids))
}

/// Counts what a rule would push to now. `rule_id`: the rule itself, left out of the overlap.
pub(crate) fn preview(
    c: &mut DbConn,
    fw: &FirmwareRecord,
    spec: &RuleSpec,
    rule_id: Option<i64>,
    rules_cfg: SeriesRules,
) -> Result<RulePreview> {
    let f = TargetFilter::new(c, fw, spec)?;
    // One pass for both counts: the rule indexes cover every column the filter reads.
    let (targets, online): (i64, i64) = f
        .targets()
        // `product_id`, not `id`: PostgreSQL indexes do not carry the row id, and reading it
        // would turn the index-only scan into a million heap fetches.
        .select((
            count_star(),
            diesel::dsl::count(diesel::dsl::case_when(devices::online.eq(true), devices::product_id)),
        ))
        .get_result(c)?;
    let already_on_target: i64 = f.already().select(count_star()).get_result(c)?;
    let others = same_series_rules(c, fw, rule_id, rules_cfg)?;
    let (in_other_rules, other_rule_ids) = overlapping(c, &f, &others)?;
    let unknown_macs = if f.kind == TargetKind::Macs {
        let listed: i64 = match &f.macs {
            MacSource::List(list) => {
                mac_list_entries::table.filter(mac_list_entries::list_id.eq(*list)).count().get_result(c)?
            }
            MacSource::Inline(values) => values.len() as i64,
            MacSource::None => 0,
        };
        let known: i64 = in_targets(
            devices::table.filter(devices::product_id.eq(fw.product_id)).into_boxed(),
            TargetKind::Macs,
            &[],
            &f.macs,
        )
        .select(count_star())
        .get_result(c)?;
        listed - known
    } else {
        0
    };
    Ok(RulePreview { targets, online, already_on_target, in_other_rules, other_rule_ids, unknown_macs })
}

/// What a rule would do if it started now, per wave (the waves its start would make, from
/// the same seeded split).
pub(crate) fn preflight(
    c: &mut DbConn,
    fw: &FirmwareRecord,
    rule: &RuleRecord,
    rules_cfg: SeriesRules,
    offline_days: u32,
    now: i64,
) -> Result<Preflight> {
    let spec = RuleSpec::from_record(rule)?;
    let preview = preview(c, fw, &spec, Some(rule.id), rules_cfg)?;
    let f = TargetFilter::new(c, fw, &spec)?;
    let selected: i64 = in_targets(
        devices::table.filter(devices::product_id.eq(fw.product_id)).into_boxed(),
        f.kind,
        &f.regions,
        &f.macs,
    )
    .select(count_star())
    .get_result(c)?;
    let rows: Vec<(i64, Option<String>, bool, Option<i64>)> = f
        .targets()
        .order(devices::id)
        .select((devices::id, devices::mac, devices::online, devices::last_seen_at))
        .load(c)?;
    let plan_rows: Vec<(i64, i64, Option<String>, bool)> = rows.iter().map(|r| (r.0, r.0, r.1.clone(), r.2)).collect();
    let plan = super::rollout::plan_waves(&rule.policy()?, rule.id, &plan_rows)?;
    let others = same_series_rules(c, fw, Some(rule.id), rules_cfg)?;
    let busy: Vec<(i64, i64)> = upgrades::table
        .filter(upgrades::rule_id.eq_any(others))
        .filter(upgrades::active.eq(true))
        .select((upgrades::device_id, upgrades::rule_id.assume_not_null()))
        .load(c)?;
    let busy: std::collections::HashMap<i64, i64> = busy.into_iter().collect();
    let info: std::collections::HashMap<i64, (bool, Option<i64>)> = rows.iter().map(|r| (r.0, (r.2, r.3))).collect();
    let stale_before = now - i64::from(offline_days) * 86_400_000;
    let mut waves = Vec::new();
    for (wave, members) in plan.members.iter().enumerate() {
        if wave == 0 && members.is_empty() {
            continue;
        }
        let mut w = WavePreflight {
            wave: u32::try_from(wave).unwrap_or(0),
            targets: members.len() as i64,
            online: 0,
            in_other_rules: 0,
            other_rule_ids: Vec::new(),
            offline_over_days: 0,
        };
        for id in members {
            let (online, seen) = info.get(id).copied().unwrap_or((false, None));
            w.online += i64::from(online);
            if !online && seen.is_none_or(|t| t < stale_before) {
                w.offline_over_days += 1;
            }
            if let Some(other) = busy.get(id) {
                w.in_other_rules += 1;
                if !w.other_rule_ids.contains(other) {
                    w.other_rule_ids.push(*other);
                }
            }
        }
        w.other_rule_ids.sort_unstable();
        waves.push(w);
    }
    Ok(Preflight {
        targets: preview.targets,
        already_on_target: preview.already_on_target,
        incompatible: (selected - preview.targets - preview.already_on_target).max(0),
        unknown_macs: preview.unknown_macs,
        waves,
    })
}

/// The overlap that refuses a start: other pushing rules of the series on the same devices.
pub(crate) fn start_overlap(
    c: &mut DbConn,
    fw: &FirmwareRecord,
    rule: &RuleRecord,
    rules_cfg: SeriesRules,
) -> Result<(i64, Vec<i64>)> {
    let f = TargetFilter::of_rule(c, fw, rule)?;
    let others = same_series_rules(c, fw, Some(rule.id), rules_cfg)?;
    overlapping(c, &f, &others)
}

/// Old versions a rule of this firmware may name, with how many devices run each.
pub(crate) fn old_versions(c: &mut DbConn, fw: &FirmwareRecord, rules_cfg: SeriesRules) -> Result<Vec<OldVersion>> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    match fw.push_method() {
        PushMethod::V1V3 => {
            let earlier: Vec<(String, Option<i64>)> = firmware::table
                .filter(firmware::product_id.eq(fw.product_id))
                .filter(firmware::push_method.eq(PushMethod::V1V3.as_str()))
                .filter(firmware::id.lt(fw.id))
                .order(firmware::id)
                .select((firmware::name, firmware::fid))
                .load(c)?;
            let mut out = Vec::new();
            for (name, fid) in earlier {
                let Some(fid) = fid.filter(|f| Some(*f) != fw.fid) else { continue };
                let devices: i64 =
                    series(fw).filter(devices::legacy_firmware_id.eq(fid)).select(count_star()).get_result(c)?;
                out.push(OldVersion { version: name, devices });
            }
            return Ok(out);
        }
        PushMethod::V4 | PushMethod::V41 => {
            let Some(hw) = fw.hard_version.clone() else { return Ok(Vec::new()) };
            // V4 devices already on the firmware's fid are not on an old version.
            let fid = if fw.push_method() == PushMethod::V4 { fw.fid.unwrap_or(-1) } else { -1 };
            let base = devices::table
                .filter(devices::product_id.eq(fw.product_id))
                .filter(devices::push_method.eq(fw.push_method().as_str()));
            let rows: Vec<(Option<String>, i64)> = match fw.fw_type() {
                FirmwareType::Wifi => base
                    .filter(devices::wifi_hw.eq(hw))
                    .filter(devices::wifi_fid.is_null().or(devices::wifi_fid.ne(fid)))
                    .group_by(devices::wifi_sw)
                    .select((devices::wifi_sw, count_star()))
                    .load(c)?,
                FirmwareType::Mcu => base
                    .filter(devices::mcu_hw.eq(hw))
                    .filter(devices::mcu_fid.is_null().or(devices::mcu_fid.ne(fid)))
                    .group_by(devices::mcu_sw)
                    .select((devices::mcu_sw, count_star()))
                    .load(c)?,
            };
            for (sw, n) in rows {
                let Some(sw) = sw else { continue };
                if old_version_fits(fw, &sw, rules_cfg) {
                    *counts.entry(sw).or_default() += n;
                }
            }
        }
    }
    Ok(counts.into_iter().map(|(version, devices)| OldVersion { version, devices }).collect())
}

/// Whether devices on `sw` may be moved to this firmware (V4.1: same series and older; V4:
/// the series' own version).
fn old_version_fits(fw: &FirmwareRecord, sw: &str, rules_cfg: SeriesRules) -> bool {
    match (fw.push_method(), &fw.hard_version, &fw.soft_version) {
        (PushMethod::V41, Some(hw), Some(target)) => {
            rules_cfg.same_series(fw.fw_type(), Versions { hard: hw, soft: sw }, Versions { hard: hw, soft: target })
                && is_newer(target, sw)
        }
        (PushMethod::V4, _, Some(series_sw)) => sw == series_sw,
        _ => false,
    }
}

/// Refuses old versions that cannot belong to this firmware's series.
pub(crate) fn check_old_versions(
    c: &mut DbConn,
    fw: &FirmwareRecord,
    old: &[String],
    rules_cfg: SeriesRules,
) -> Result<()> {
    let bad: Vec<&String> = match fw.push_method() {
        PushMethod::V1V3 => {
            let earlier: Vec<String> = firmware::table
                .filter(firmware::product_id.eq(fw.product_id))
                .filter(firmware::push_method.eq(PushMethod::V1V3.as_str()))
                .filter(firmware::id.ne(fw.id))
                .select(firmware::name)
                .load(c)?;
            old.iter().filter(|v| !earlier.contains(v)).collect()
        }
        _ => old.iter().filter(|v| !old_version_fits(fw, v, rules_cfg)).collect(),
    };
    if let Some(first) = bad.first() {
        let why = match fw.push_method() {
            PushMethod::V1V3 => "is not the name of another V1V3 firmware of the product",
            PushMethod::V4 => "is not the software version of this V4 firmware's series",
            PushMethod::V41 => "is not an older version of this firmware's series",
        };
        return Err(DomainError::with_details(
            ErrorCode::InvalidField,
            format!("old version `{first}` {why}"),
            serde_json::json!({ "field": "old_versions", "invalid": bad }),
        ));
    }
    Ok(())
}

impl Domain {
    /// What a draft rule for this firmware would push to. Inline MACs are matched as given
    /// and not stored.
    pub async fn preview_draft(&self, who: &Authorized<Read>, firmware_id: i64, body: RuleBody) -> Result<RulePreview> {
        let spec = RuleSpec::from_body(body)?;
        let (tenant_id, cfg) = (who.tenant_id(), self.settings.series_rules);
        self.db
            .run(move |c| {
                let (fw, _) = find_firmware(c, tenant_id, firmware_id)?;
                check_old_versions(c, &fw, &spec.old_versions, cfg)?;
                if let MacSource::List(id) = spec.macs {
                    super::check_list(c, &fw, id)?;
                }
                preview(c, &fw, &spec, None, cfg)
            })
            .await
    }

    /// What a saved rule pushes to (or would, if started now).
    pub async fn preview_rule(&self, who: &Authorized<Read>, id: i64) -> Result<RulePreview> {
        let (tenant_id, cfg) = (who.tenant_id(), self.settings.series_rules);
        self.db
            .run(move |c| {
                let (rule, fw, _) = find_rule(c, tenant_id, id)?;
                preview(c, &fw, &RuleSpec::from_record(&rule)?, Some(rule.id), cfg)
            })
            .await
    }

    /// `GET /firmware/{id}/old-versions`.
    pub async fn rule_old_versions(&self, who: &Authorized<Read>, firmware_id: i64) -> Result<Vec<OldVersion>> {
        let (tenant_id, cfg) = (who.tenant_id(), self.settings.series_rules);
        self.db
            .run(move |c| {
                let (fw, _) = find_firmware(c, tenant_id, firmware_id)?;
                old_versions(c, &fw, cfg)
            })
            .await
    }
}
