//! Per-device upgrade records and what device checks answer.
//!
//! A record follows one device towards one firmware through the stages the server can see
//! (`device-protocol.md#open-question-progress-and-result-reports`): notified (push sent), checked
//! (answered with the image), downloading, downloaded, then succeeded when the device reports the
//! target, or failed / expired / cancelled, each with a reason. Verification (the console's step 2)
//! creates the first records; push rules add more.
//!
//! Every check stores what the device reported (the only version report GAgent makes) and,
//! in the same transaction, records success for any open record the report satisfies, then
//! picks the offer with [`SeriesRules::choose`].
//!
//! **MCU success after a reboot only.** A V4.1 MCU download makes GAgent overwrite the MCU version
//! in RAM with the served `Soft-Version`, so a re-check in the same session reports the target
//! without any MCU having been flashed (`device-protocol.md#observed-mcu-soft-version-echo`). A
//! type-2 report of the target therefore counts only once the device has called provision again
//! after the download: every boot starts with provision. (GAgent also provisions hourly; an echo
//! that follows an hourly provision would count. That gap is accepted and documented.)

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareType, PushMethod, UpgradeStage};

use crate::Domain;
use crate::db::{DbConn, last_insert_id};
use crate::devices::{DeviceRecord, device_not_found, find_by_did};
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::rules::RuleRecord;
use crate::schema::{devices, firmware, products, rules, upgrades};
use crate::store::BlobStream;
use crate::upgrade::{Candidate, Report};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = upgrades)]
pub struct UpgradeRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub device_id: i64,
    pub firmware_id: i64,
    pub kind: String,
    pub active: bool,
    pub stage: String,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub reason: Option<String>,
    pub notified_at: Option<i64>,
    pub checked_at: Option<i64>,
    pub download_started_at: Option<i64>,
    pub downloaded_at: Option<i64>,
    pub rebooted_at: Option<i64>,
    pub succeeded_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub deadline_at: Option<i64>,
    pub confirmed_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub rule_id: Option<i64>,
    pub last_opening: Option<i64>,
    pub claim_until: Option<i64>,
}

impl UpgradeRecord {
    pub fn stage(&self) -> UpgradeStage {
        UpgradeStage::parse(&self.stage).unwrap_or(UpgradeStage::Failed)
    }

    pub fn times(&self) -> ota_wire::dto::UpgradeTimes {
        use crate::clock::from_ms;
        ota_wire::dto::UpgradeTimes {
            notified_at: self.notified_at.map(from_ms),
            checked_at: self.checked_at.map(from_ms),
            download_started_at: self.download_started_at.map(from_ms),
            downloaded_at: self.downloaded_at.map(from_ms),
            succeeded_at: self.succeeded_at.map(from_ms),
            failed_at: self.failed_at.map(from_ms),
        }
    }
}

pub const KIND_VERIFICATION: &str = "verification";

/// How a device proved itself on a check.
#[derive(Debug, Clone)]
pub enum CheckAuth {
    /// V4.1 `update_and_check` sends the passcode.
    Passcode(String),
    /// V4 `target_fid` sends only did and product key, as the hosted cloud accepted it.
    ProductKey(String),
    /// An MQTT session the edge already authenticated (V1V3 0x0205).
    Session,
}

/// A check as the device made it.
#[derive(Debug, Clone)]
pub struct Check {
    pub did: String,
    pub auth: CheckAuth,
    pub method: PushMethod,
    pub fw_type: FirmwareType,
    pub hard: Option<String>,
    pub soft: Option<String>,
    pub fid: Option<i64>,
    pub ip: Option<String>,
}

/// The image a device is offered.
#[derive(Debug, Clone)]
pub struct Offer {
    pub upgrade_id: i64,
    pub firmware: FirmwareRecord,
    pub product_key: String,
}

/// Why a check got no offer (the two texts the hosted cloud used,
/// `device-protocol.md#open-question-the-no-update-reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOffer {
    /// 9500: nothing is being pushed to this device.
    NoRule,
    /// 9502: something targets it, but it already runs it or it does not apply.
    NotInEffect,
}

pub(crate) fn firmware_version_label(fw: &FirmwareRecord) -> Option<String> {
    match fw.push_method() {
        PushMethod::V41 => fw.soft_version.clone(),
        PushMethod::V4 => fw.fid.map(|f| format!("fid {f}")),
        PushMethod::V1V3 => fw.fid.map(|f| format!("id {f}")),
    }
}

/// What the device runs for a target, in the same words as [`firmware_version_label`].
pub(crate) fn device_version_label(device: &DeviceRecord, method: PushMethod, fw_type: FirmwareType) -> Option<String> {
    let (_, sw, fid) = device.versions(fw_type);
    match method {
        PushMethod::V41 => sw.map(str::to_owned),
        PushMethod::V4 => fid.map(|f| format!("fid {f}")),
        PushMethod::V1V3 => device.legacy_firmware_id.map(|f| format!("id {f}")),
    }
}

pub(crate) fn report_of<'a>(device: &'a DeviceRecord, method: PushMethod, fw_type: FirmwareType) -> Report<'a> {
    let (hard, soft, fid) = device.versions(fw_type);
    let fid = if method == PushMethod::V1V3 { device.legacy_firmware_id } else { fid };
    Report { method, fw_type, hard, soft, fid }
}

pub(crate) fn candidate(fw: &FirmwareRecord, key: i64) -> Candidate<'_> {
    Candidate {
        key,
        method: fw.push_method(),
        fw_type: fw.fw_type(),
        hard: fw.hard_version.as_deref(),
        soft: fw.soft_version.as_deref(),
        fid: fw.fid,
    }
}

/// Provision seen: the device booted, so a later MCU report is not the same-session echo.
pub(crate) fn mark_rebooted(c: &mut DbConn, device_id: i64, now: i64) -> Result<()> {
    diesel::update(
        upgrades::table
            .filter(upgrades::device_id.eq(device_id))
            .filter(upgrades::active.eq(true))
            .filter(upgrades::downloaded_at.is_not_null()),
    )
    .set(upgrades::rebooted_at.eq(now))
    .execute(c)?;
    Ok(())
}

/// Open records of a device, with their firmware and, for push-rule records, their rule.
fn open_records(c: &mut DbConn, device_id: i64) -> Result<Vec<(UpgradeRecord, FirmwareRecord, Option<RuleRecord>)>> {
    Ok(upgrades::table
        .inner_join(firmware::table)
        .left_join(rules::table)
        .filter(upgrades::device_id.eq(device_id))
        .filter(upgrades::active.eq(true))
        .select((UpgradeRecord::as_select(), FirmwareRecord::as_select(), Option::<RuleRecord>::as_select()))
        .load(c)?)
}

/// Whether an open record may be offered now: a verification always, a rule's record only
/// while the rule pushes inside its period and daily window. A rule's failed attempt stays
/// open (the next window opening tries again); other final stages never offer.
fn offerable(record: &UpgradeRecord, rule: Option<&RuleRecord>, now: i64) -> bool {
    match rule {
        Some(rule) => record.stage() != UpgradeStage::Succeeded && rule.opening(now).is_some(),
        None => !record.stage().is_final(),
    }
}

/// A failed attempt: a verification ends; a rule's record stays open for the next opening.
fn fail_attempt(c: &mut DbConn, record: &UpgradeRecord, reason: &str, now: i64) -> Result<()> {
    if record.rule_id.is_none() {
        return close(c, record.id, UpgradeStage::Failed, reason, now);
    }
    set_stage(c, record.id, UpgradeStage::Failed, now)?;
    diesel::update(upgrades::table.find(record.id)).set(upgrades::reason.eq(reason)).execute(c)?;
    Ok(())
}

/// Marks records whose deadline passed as expired. Verification records close with it.
pub(crate) fn expire_due(c: &mut DbConn, now: i64) -> Result<()> {
    let open = [
        UpgradeStage::Pending,
        UpgradeStage::Notified,
        UpgradeStage::Checked,
        UpgradeStage::Downloading,
        UpgradeStage::Downloaded,
    ]
    .map(UpgradeStage::as_str);
    diesel::update(
        upgrades::table
            .filter(upgrades::active.eq(true))
            .filter(upgrades::deadline_at.lt(now))
            .filter(upgrades::stage.eq_any(open)),
    )
    .set((
        upgrades::stage.eq(UpgradeStage::Expired.as_str()),
        upgrades::active.eq(false),
        upgrades::failed_at.eq(now),
        upgrades::reason.eq("no report of the target version before the deadline"),
        upgrades::updated_at.eq(now),
    ))
    .execute(c)?;
    Ok(())
}

fn set_stage(c: &mut DbConn, id: i64, stage: UpgradeStage, now: i64) -> Result<()> {
    let target = upgrades::table.find(id);
    match stage {
        UpgradeStage::Notified => {
            diesel::update(target).set((upgrades::notified_at.eq(now),)).execute(c)?;
        }
        UpgradeStage::Checked => {
            diesel::update(target).set((upgrades::checked_at.eq(now),)).execute(c)?;
        }
        UpgradeStage::Downloading => {
            diesel::update(target).set((upgrades::download_started_at.eq(now),)).execute(c)?;
        }
        UpgradeStage::Downloaded => {
            diesel::update(target)
                .set((upgrades::downloaded_at.eq(now), upgrades::rebooted_at.eq(None::<i64>)))
                .execute(c)?;
        }
        UpgradeStage::Succeeded => {
            diesel::update(target)
                .set((upgrades::succeeded_at.eq(now), upgrades::reason.eq(None::<String>)))
                .execute(c)?;
        }
        UpgradeStage::Failed | UpgradeStage::Expired => {
            diesel::update(target).set((upgrades::failed_at.eq(now),)).execute(c)?;
        }
        UpgradeStage::Pending | UpgradeStage::Cancelled => {}
    }
    diesel::update(target).set((upgrades::stage.eq(stage.as_str()), upgrades::updated_at.eq(now))).execute(c)?;
    Ok(())
}

/// Ends a record in a final stage with its reason: failed, cancelled and the operator's
/// "not stable" all close the same way.
pub(crate) fn close(c: &mut DbConn, id: i64, stage: UpgradeStage, reason: &str, now: i64) -> Result<()> {
    set_stage(c, id, stage, now)?;
    diesel::update(upgrades::table.find(id))
        .set((upgrades::reason.eq(reason), upgrades::active.eq(false)))
        .execute(c)?;
    Ok(())
}

/// Stores the versions of a check on the device row.
fn store_report(c: &mut DbConn, device: &DeviceRecord, check: &Check, now: i64) -> Result<DeviceRecord> {
    let target = devices::table.find(device.id);
    diesel::update(target)
        .set((
            devices::push_method.eq(check.method.as_str()),
            devices::last_seen_at.eq(now),
            devices::updated_at.eq(now),
        ))
        .execute(c)?;
    if let Some(ip) = &check.ip {
        diesel::update(target).set(devices::ip.eq(ip)).execute(c)?;
    }
    match (check.method, check.fw_type) {
        (PushMethod::V1V3, _) => {
            diesel::update(target).set(devices::legacy_firmware_id.eq(check.fid)).execute(c)?;
        }
        (_, FirmwareType::Wifi) => {
            diesel::update(target)
                .set((devices::wifi_hw.eq(&check.hard), devices::wifi_sw.eq(&check.soft)))
                .execute(c)?;
            if check.method == PushMethod::V4 {
                diesel::update(target).set(devices::wifi_fid.eq(check.fid)).execute(c)?;
            }
        }
        (_, FirmwareType::Mcu) => {
            diesel::update(target)
                .set((devices::mcu_hw.eq(&check.hard), devices::mcu_sw.eq(&check.soft)))
                .execute(c)?;
            if check.method == PushMethod::V4 {
                diesel::update(target).set(devices::mcu_fid.eq(check.fid)).execute(c)?;
            }
        }
    }
    Ok(target.select(DeviceRecord::as_select()).first(c)?)
}

impl Domain {
    /// A device check: `update_and_check` (V4.1), `target_fid` (V4) or 0x0205 (V1V3).
    pub async fn device_check(&self, check: Check) -> Result<std::result::Result<Offer, NoOffer>> {
        let now = self.clock.now_ms();
        let rules = self.settings.series_rules;
        self.db
            .write(move |c| {
                let (device, product) = match &check.auth {
                    CheckAuth::Passcode(p) => {
                        crate::adoption::authenticate_check(c, &check.did, p, check.ip.as_deref(), now)?
                    }
                    CheckAuth::ProductKey(pk) => {
                        let (d, p) = find_by_did(c, &check.did)?;
                        if &p.product_key != pk {
                            return Err(device_not_found());
                        }
                        (d, p)
                    }
                    CheckAuth::Session => find_by_did(c, &check.did)?,
                };
                let device = store_report(c, &device, &check, now)?;
                expire_due(c, now)?;
                crate::rules::schedule::join_pushing_rules(c, &device, check.method, check.fw_type, now, rules)?;
                let report = report_of(&device, check.method, check.fw_type);
                let open = open_records(c, device.id)?;
                let mut offers = Vec::new();
                let mut in_effect = 0;
                for (record, fw, rule) in &open {
                    let cand = candidate(fw, record.id);
                    let final_stage = record.stage().is_final()
                        && (record.rule_id.is_none() || record.stage() == UpgradeStage::Succeeded);
                    if final_stage {
                        continue;
                    }
                    if rules.reached(&report, &cand) {
                        let echo = check.fw_type == FirmwareType::Mcu
                            && check.method == PushMethod::V41
                            && record.downloaded_at.is_some()
                            && record.rebooted_at.is_none();
                        if !echo {
                            set_stage(c, record.id, UpgradeStage::Succeeded, now)?;
                            if record.kind != KIND_VERIFICATION {
                                diesel::update(upgrades::table.find(record.id))
                                    .set(upgrades::active.eq(false))
                                    .execute(c)?;
                            }
                        }
                        continue;
                    }
                    if offerable(record, rule.as_ref(), now) {
                        in_effect += 1;
                        offers.push(cand);
                    }
                }
                if in_effect == 0 {
                    return Ok(Err(NoOffer::NoRule));
                }
                let Some(chosen) = rules.choose(&report, &offers).map(|c| c.key) else {
                    return Ok(Err(NoOffer::NotInEffect));
                };
                let Some((record, fw, _)) = open.into_iter().find(|(r, _, _)| r.id == chosen) else {
                    return Ok(Err(NoOffer::NotInEffect));
                };
                if matches!(record.stage(), UpgradeStage::Pending | UpgradeStage::Notified | UpgradeStage::Failed) {
                    set_stage(c, record.id, UpgradeStage::Checked, now)?;
                } else {
                    diesel::update(upgrades::table.find(record.id)).set(upgrades::checked_at.eq(now)).execute(c)?;
                }
                Ok(Ok(Offer { upgrade_id: record.id, firmware: fw, product_key: product.product_key }))
            })
            .await
    }

    /// Opens the image of an offer for download (`upgrade_id` is in the URL the device got)
    /// and records that the download started. `None` when the record is unknown or closed.
    pub async fn open_offer_download(&self, upgrade_id: i64) -> Result<Option<(FirmwareRecord, BlobStream)>> {
        let now = self.clock.now_ms();
        let found = self
            .db
            .write(move |c| {
                let Some((record, fw)) = upgrades::table
                    .inner_join(firmware::table)
                    .filter(upgrades::id.eq(upgrade_id))
                    .select((UpgradeRecord::as_select(), FirmwareRecord::as_select()))
                    .first::<(UpgradeRecord, FirmwareRecord)>(c)
                    .optional()?
                else {
                    return Ok(None);
                };
                let retry = record.rule_id.is_some() && record.stage() == UpgradeStage::Failed;
                if !record.active || record.stage().is_final() && record.stage() != UpgradeStage::Succeeded && !retry {
                    return Ok(None);
                }
                if !record.stage().is_final() || retry {
                    set_stage(c, record.id, UpgradeStage::Downloading, now)?;
                }
                Ok(Some(fw))
            })
            .await?;
        match found {
            None => Ok(None),
            Some(fw) => {
                let stream = self.store.open(&fw.sha256).await?;
                Ok(Some((fw, stream)))
            }
        }
    }

    /// Opens a firmware image by id for `latest`, which names no device: only what `latest`
    /// can offer (verified V4.1 MCU firmware), so ids cannot be walked to fetch other images.
    pub async fn open_firmware_download(&self, firmware_id: i64) -> Result<Option<(FirmwareRecord, BlobStream)>> {
        let fw: Option<FirmwareRecord> = self
            .db
            .run(move |c| {
                Ok(firmware::table
                    .find(firmware_id)
                    .filter(firmware::verified.eq(true))
                    .filter(firmware::push_method.eq(PushMethod::V41.as_str()))
                    .filter(firmware::fw_type.eq(FirmwareType::Mcu.as_str()))
                    .select(FirmwareRecord::as_select())
                    .first(c)
                    .optional()?)
            })
            .await?;
        match fw {
            None => Ok(None),
            Some(fw) => {
                let stream = self.store.open(&fw.sha256).await?;
                Ok(Some((fw, stream)))
            }
        }
    }

    /// Records how a download ended: all `sent` bytes of `total`, or cut short.
    pub async fn finish_offer_download(
        &self,
        upgrade_id: i64,
        sent: u64,
        total: u64,
        error: Option<String>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        self.db
            .write(move |c| {
                let Some(record) = upgrades::table
                    .find(upgrade_id)
                    .select(UpgradeRecord::as_select())
                    .first::<UpgradeRecord>(c)
                    .optional()?
                else {
                    return Ok(());
                };
                let complete = sent == total && error.is_none();
                let retry = record.rule_id.is_some() && record.stage() == UpgradeStage::Failed && record.active;
                if record.stage().is_final() && !retry {
                    // The device may report its new version before this hook runs (V4 reports
                    // right after the download); keep the download time all the same.
                    if complete && record.downloaded_at.is_none() {
                        diesel::update(upgrades::table.find(upgrade_id))
                            .set(upgrades::downloaded_at.eq(now))
                            .execute(c)?;
                    }
                    return Ok(());
                }
                if complete {
                    set_stage(c, upgrade_id, UpgradeStage::Downloaded, now)?;
                } else {
                    let reason = format!(
                        "download interrupted after {sent} of {total} bytes{}",
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    );
                    fail_attempt(c, &record, &reason, now)?;
                }
                Ok(())
            })
            .await
    }

    /// V1V3 0x0207: the device asks for the image with this firmware id. Answered only when
    /// an open record offers exactly that firmware to the device.
    pub async fn v1v3_request(&self, did: &str, firmware_id: i64) -> Result<Option<Offer>> {
        let did = did.to_owned();
        let now = self.clock.now_ms();
        self.db
            .run(move |c| {
                let (device, product) = find_by_did(c, &did)?;
                let found = open_records(c, device.id)?.into_iter().find(|(r, fw, rule)| {
                    offerable(r, rule.as_ref(), now)
                        && fw.push_method() == PushMethod::V1V3
                        && fw.fid == Some(firmware_id)
                });
                Ok(found.map(|(r, fw, _)| Offer { upgrade_id: r.id, firmware: fw, product_key: product.product_key }))
            })
            .await
    }

    /// `GET /dev/ota/v4.1/latest` (sub-MCU check, no did): the newest verified V4.1 MCU
    /// firmware of the product and series that is newer than `soft`.
    pub async fn latest_firmware(&self, product_key: &str, hard: &str, soft: &str) -> Result<Option<FirmwareRecord>> {
        let (pk, hard, soft) = (product_key.to_owned(), hard.to_owned(), soft.to_owned());
        let rules = self.settings.series_rules;
        self.db
            .run(move |c| {
                let rows: Vec<FirmwareRecord> = firmware::table
                    .inner_join(products::table)
                    .filter(products::product_key.eq(&pk))
                    .filter(firmware::push_method.eq(PushMethod::V41.as_str()))
                    .filter(firmware::fw_type.eq(FirmwareType::Mcu.as_str()))
                    .filter(firmware::verified.eq(true))
                    .select(FirmwareRecord::as_select())
                    .load(c)?;
                let report = Report {
                    method: PushMethod::V41,
                    fw_type: FirmwareType::Mcu,
                    hard: Some(&hard),
                    soft: Some(&soft),
                    fid: None,
                };
                let cands: Vec<Candidate<'_>> = rows.iter().map(|f| candidate(f, f.id)).collect();
                let chosen = rules.choose(&report, &cands).map(|c| c.key);
                Ok(chosen.and_then(|id| rows.into_iter().find(|f| f.id == id)))
            })
            .await
    }

    /// Records that a push went out (or could not).
    pub(crate) async fn record_notified(&self, upgrade_id: i64, failure: Option<String>) -> Result<()> {
        let now = self.clock.now_ms();
        self.db
            .write(move |c| {
                match failure {
                    None => set_stage(c, upgrade_id, UpgradeStage::Notified, now)?,
                    Some(reason) => {
                        let record = upgrades::table.find(upgrade_id).select(UpgradeRecord::as_select()).first(c)?;
                        fail_attempt(c, &record, &reason, now)?;
                    }
                }
                Ok(())
            })
            .await
    }
}

/// Inserts an open record; fails with `UniqueViolation` when the firmware already has an
/// open verification.
pub(crate) fn insert_record(
    c: &mut DbConn,
    device: &DeviceRecord,
    fw: &FirmwareRecord,
    kind: &str,
    deadline_at: i64,
    now: i64,
) -> Result<i64> {
    diesel::insert_into(upgrades::table)
        .values((
            upgrades::tenant_id.eq(device.tenant_id),
            upgrades::device_id.eq(device.id),
            upgrades::firmware_id.eq(fw.id),
            upgrades::kind.eq(kind),
            upgrades::active.eq(true),
            upgrades::stage.eq(UpgradeStage::Pending.as_str()),
            upgrades::from_version.eq(device_version_label(device, fw.push_method(), fw.fw_type())),
            upgrades::to_version.eq(firmware_version_label(fw)),
            upgrades::deadline_at.eq(deadline_at),
            upgrades::created_at.eq(now),
            upgrades::updated_at.eq(now),
        ))
        .execute(c)?;
    last_insert_id(c)
}

pub(crate) fn not_found_upgrade() -> DomainError {
    DomainError::new(ErrorCode::VerificationNotFound, "this firmware has no verification")
}
