//! What a device check answers and records: `update_and_check` (V4.1), `target_fid` (V4) and
//! 0x0205 (V1V3).
//!
//! A check is the only version report GAgent makes
//! (`device-protocol.md#what-the-cloud-can-see`). In one transaction it
//! 1. stores the reported versions on the device, except an MCU echo (below);
//! 2. moves the device's open records: the target reported → `succeeded`; another version
//!    after a complete download → `failed` (old version reported);
//! 3. lets a device join a pushing rule it now matches;
//! 4. answers with the best offer the device would take, which moves that record to
//!    `checked`.
//!
//! **Reads first.** Most checks change nothing but the device's last-seen time: the same
//! versions as stored, no record to move, "no update" (or the offer of an image already being
//! fetched). [`read_check`] decides such an answer from a few indexed reads on cached
//! statements, with no write transaction; only the last-seen time is queued
//! ([`super::check_writer`]). A check that changes anything else — versions, the boot
//! track, a record's stage, a rule to join, an adoption — runs [`check_in`] in the writer's
//! next batch (one transaction for every check waiting), and is answered only once that
//! batch is committed: nothing a device is told depends on a write that could still be lost
//! (`proto-docs/lifecycle.md#device-checks-reads-first-writes-in-batches`).
//!
//! **The MCU echo.** GAgent copies the `Soft-Version` header of an MCU download into RAM at
//! once, so a type-2 check in the same session reports the served version although no MCU was
//! flashed (`device-protocol.md#observed-mcu-soft-version-echo`). A type-2 report equal to a
//! version served to that device counts only when it comes with a reboot proof: the boot
//! sequence provision → type-1 check → type-2 check ([`crate::lifecycle::BootTrack`]). An
//! echo is neither stored nor counted; the offer is computed against what the device claims,
//! since that is what it compares.

use diesel::prelude::*;
use ota_wire::dto::{FirmwareType, PushMethod, RegisteredVia, UpgradeStage};

use super::check_writer::{CheckConfig, CheckWriter};
use super::ota_state::{self, OtaState};
use super::{Loaded, apply, candidate, loaded, report_of};
use crate::Domain;
use crate::db::DbConn;
use crate::devices::{DeviceRecord, device_not_found, find_by_did};
use crate::error::Result;
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{self, Event, McuReport, RecordKind};
use crate::rules::RuleRecord;
use crate::schema::{devices, firmware, products, rules, upgrades};
use crate::stored::Stored;
use crate::upgrade::{Candidate, Report};

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
    /// The gateway node answering (its downloads count against its cap).
    pub node: Option<String>,
}

/// The image a device is offered.
#[derive(Debug, Clone)]
pub struct Offer {
    pub upgrade_id: i64,
    pub firmware: FirmwareRecord,
    pub product_key: String,
}

/// Why a check got no offer: the two texts the hosted cloud used
/// (`device-protocol.md#open-question-the-no-update-reply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoOffer {
    /// 9500: nothing is being pushed to this device.
    NoRule,
    /// 9502: something targets it, but it already runs it or it does not apply.
    NotInEffect,
}

/// Open records of a device, with their firmware and, for push-rule records, their rule.
pub(crate) fn open_records(c: &mut DbConn, device_id: i64) -> Result<Vec<(Loaded, FirmwareRecord)>> {
    let rows: Vec<(super::UpgradeRecord, FirmwareRecord, Option<RuleRecord>)> = upgrades::table
        .inner_join(firmware::table)
        .left_join(rules::table)
        .filter(upgrades::device_id.eq(device_id))
        .filter(upgrades::active.eq(true))
        .select((super::UpgradeRecord::as_select(), FirmwareRecord::as_select(), Option::<RuleRecord>::as_select()))
        .load(c)?;
    let firmware: Vec<FirmwareRecord> = rows.iter().map(|(_, fw, _)| fw.clone()).collect();
    let items = loaded(rows.into_iter().map(|(r, fw, rule)| (r, fw.fw_type, rule)).collect())?;
    Ok(items.into_iter().zip(firmware).collect())
}

/// Whether an open record may be offered now (a pure read of the time): a verification
/// before its deadline; a rule's target while the rule pushes its wave inside its period and
/// window (in the device's time zone); while the rule is paused or halted, only a target on
/// its way (notified … downloaded), which is left to finish. A rule's failed attempt stays
/// offerable: a device that asks by itself is answered.
pub(crate) fn offerable(item: &Loaded, now: i64) -> bool {
    use ota_wire::rules::RuleStatus;
    let r = &item.record;
    if !r.active {
        return false;
    }
    match (r.kind(), &item.rule) {
        (RecordKind::Rule, Some(rule)) => {
            let open = rule.window_opening(r.zone.as_deref(), now).is_some();
            match rule.status() {
                RuleStatus::Pushing => {
                    open && r.stage() != UpgradeStage::Succeeded && r.wave <= rule.current_wave.unwrap_or(i64::MAX)
                }
                RuleStatus::Paused | RuleStatus::Halted => open && crate::lifecycle::in_flight(r.stage()),
                _ => false,
            }
        }
        (RecordKind::Verification, _) => !r.stage().is_final() && r.deadline_at.is_none_or(|d| d > now),
        (RecordKind::Rule, None) => false,
    }
}

/// Download slots a gateway node holds: rule targets offered by it (checked) or downloading
/// from it. Serialised per node on PostgreSQL, so two checks cannot both take the last slot.
fn downloads_held(c: &mut DbConn, node: &str) -> Result<i64> {
    if let DbConn::Pg(pg) = c {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind::<diesel::sql_types::Text, _>(format!("downloads:{node}"))
            .execute(pg)?;
    }
    Ok(upgrades::table
        .filter(upgrades::download_node.eq(node))
        .filter(upgrades::stage.eq_any([Stored(UpgradeStage::Checked), Stored(UpgradeStage::Downloading)]))
        .filter(upgrades::active.eq(true))
        .count()
        .get_result(c)?)
}

/// Stores the versions of a check on the device row; an MCU echo's version is not stored.
fn store_report(c: &mut DbConn, device: &DeviceRecord, check: &Check, echo: bool, now: i64) -> Result<DeviceRecord> {
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
        (_, FirmwareType::Mcu) if echo => {}
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

/// Tracks the boot sequence (V4.1) and tells whether this check is an MCU echo.
fn track_boot(c: &mut DbConn, device_id: i64, check: &Check, now: i64) -> Result<bool> {
    if check.method != PushMethod::V41 {
        return Ok(false);
    }
    let before = ota_state::read(c, device_id)?;
    let (after, echo) = boot_step(&before, check, now);
    ota_state::write(c, device_id, &before, &after)?;
    Ok(echo)
}

/// What the read of a check found.
#[derive(Debug)]
pub(crate) enum Read {
    /// Answered from the stored state: the check changes nothing but the device's last-seen
    /// time.
    Answered { device_id: i64, answer: Box<std::result::Result<Offer, NoOffer>> },
    /// The check changes stored state: run [`check_in`] in a write transaction.
    Write,
}

fn refused() -> crate::error::DomainError {
    crate::error::DomainError::new(ota_wire::ErrorCode::InvalidCredentials, "unknown did or wrong passcode")
}

/// The device and its product by did, on a cached statement.
fn find_device(c: &mut DbConn, did: &str) -> Result<Option<(DeviceRecord, crate::products::ProductRecord)>> {
    use crate::products::ProductRecord;
    Ok(crate::on_each_backend!(c, |c| devices::table
        .inner_join(products::table)
        .filter(devices::did.eq(did))
        .select((DeviceRecord::as_select(), ProductRecord::as_select()))
        .first(c)
        .optional())?)
}

/// [`open_records`] on a cached statement.
fn open_records_cached(c: &mut DbConn, device_id: i64) -> Result<Vec<(Loaded, FirmwareRecord)>> {
    let rows: Vec<(super::UpgradeRecord, FirmwareRecord, Option<RuleRecord>)> =
        crate::on_each_backend!(c, |c| upgrades::table
            .inner_join(firmware::table)
            .left_join(rules::table)
            .filter(upgrades::device_id.eq(device_id))
            .filter(upgrades::active.eq(true))
            .select((super::UpgradeRecord::as_select(), FirmwareRecord::as_select(), Option::<RuleRecord>::as_select()))
            .load(c))?;
    let firmware: Vec<FirmwareRecord> = rows.iter().map(|(_, fw, _)| fw.clone()).collect();
    let items = loaded(rows.into_iter().map(|(r, fw, rule)| (r, fw.fw_type, rule)).collect())?;
    Ok(items.into_iter().zip(firmware).collect())
}

/// Whether a pushing rule of the product pushes this method (the only rules a check can
/// join), on a cached statement; the full join test runs only when one does.
fn any_pushing_rule(c: &mut DbConn, product_id: i64, method: PushMethod) -> Result<bool> {
    use ota_wire::rules::RuleStatus;
    let found: Option<i64> = crate::on_each_backend!(c, |c| rules::table
        .inner_join(firmware::table)
        .filter(rules::product_id.eq(product_id))
        .filter(rules::status.eq(Stored(RuleStatus::Pushing)))
        .filter(firmware::push_method.eq(Stored(method)))
        .select(rules::id)
        .first(c)
        .optional())?;
    Ok(found.is_some())
}

/// Whether [`store_report`] would leave the device row as it is, the last-seen time aside.
fn report_unchanged(device: &DeviceRecord, check: &Check, echo: bool) -> bool {
    let same = |stored: &Option<String>, reported: &Option<String>| stored == reported;
    if device.push_method() != Some(check.method) {
        return false;
    }
    if check.ip.is_some() && device.ip != check.ip {
        return false;
    }
    match (check.method, check.fw_type) {
        (PushMethod::V1V3, _) => device.legacy_firmware_id == check.fid,
        (_, FirmwareType::Wifi) => {
            same(&device.wifi_hw, &check.hard)
                && same(&device.wifi_sw, &check.soft)
                && (check.method != PushMethod::V4 || device.wifi_fid == check.fid)
        }
        (_, FirmwareType::Mcu) if echo => true,
        (_, FirmwareType::Mcu) => {
            same(&device.mcu_hw, &check.hard)
                && same(&device.mcu_sw, &check.soft)
                && (check.method != PushMethod::V4 || device.mcu_fid == check.fid)
        }
    }
}

/// Whether the state machine would change `item` on `event` (asked, not stored).
/// What the device claims to run: the offer is chosen on this, since the device compares
/// the offer with its claim (success is decided on the trusted report instead).
fn claimed_report(check: &Check) -> Report<'_> {
    Report {
        method: check.method,
        fw_type: check.fw_type,
        hard: check.hard.as_deref(),
        soft: check.soft.as_deref(),
        fid: check.fid,
    }
}

fn would_change(item: &Loaded, event: &Event, now: i64, delivery: i64) -> bool {
    lifecycle::transition(&item.record.state(), event, &item.context(now, delivery)).is_ok()
}

/// A check as a read: the answer [`check_in`] would give when the check changes nothing
/// but the last-seen time, or [`Read::Write`] when it changes anything else. Errors are
/// the refusals `check_in` would make before writing anything.
pub(crate) fn read_check(
    c: &mut DbConn,
    check: &Check,
    now: i64,
    rules: crate::upgrade::SeriesRules,
    delivery: i64,
    download_cap: Option<u32>,
) -> Result<Read> {
    let Some((device, product)) = find_device(c, &check.did)? else {
        return Err(match check.auth {
            CheckAuth::Passcode(_) => refused(),
            _ => device_not_found(),
        });
    };
    match &check.auth {
        CheckAuth::Passcode(p) => {
            if device.passcode.as_deref().is_some_and(|stored| stored != p) {
                return Err(refused());
            }
            // No passcode yet, or an imported device's first login: the adoption rules
            // decide, and they write.
            let first_login_of_import = device.registered_via() == RegisteredVia::Import && device.adopted_at.is_none();
            if device.passcode.is_none() || first_login_of_import {
                return Ok(Read::Write);
            }
        }
        CheckAuth::ProductKey(pk) if &product.product_key != pk => return Err(device_not_found()),
        CheckAuth::ProductKey(_) | CheckAuth::Session => {}
    }
    let mut echo = false;
    if check.method == PushMethod::V41 {
        let before = ota_state::read_cached(c, device.id)?;
        let (after, is_echo) = boot_step(&before, check, now);
        if after != before {
            return Ok(Read::Write);
        }
        echo = is_echo;
    }
    if !report_unchanged(&device, check, echo) {
        return Ok(Read::Write);
    }
    if any_pushing_rule(c, device.product_id, check.method)?
        && !crate::rules::schedule::rules_to_join(c, &device, check.method, check.fw_type, rules)?.is_empty()
    {
        return Ok(Read::Write);
    }
    let trusted = report_of(&device, check.method, check.fw_type);
    let claimed = claimed_report(check);
    let reported = super::device_version_label(&device, check.method, check.fw_type);
    let open = open_records_cached(c, device.id)?;
    let mut offers: Vec<Candidate<'_>> = Vec::new();
    for (item, fw) in &open {
        let cand = candidate(fw, item.record.id);
        if !echo && rules.concerns(&trusted, &cand) {
            let reached = rules.reached(&trusted, &cand);
            let event = Event::Reported { reached, version: reported.clone() };
            if (reached || item.record.stage() == UpgradeStage::Downloaded) && would_change(item, &event, now, delivery)
            {
                return Ok(Read::Write);
            }
            if reached {
                continue;
            }
        }
        if offerable(item, now) {
            offers.push(cand);
        }
    }
    let answered = |answer| Ok(Read::Answered { device_id: device.id, answer: Box::new(answer) });
    if offers.is_empty() {
        return answered(Err(NoOffer::NoRule));
    }
    let Some(chosen) = rules.choose(&claimed, &offers).map(|c| c.key) else {
        return answered(Err(NoOffer::NotInEffect));
    };
    let Some((item, fw)) = open.into_iter().find(|(i, _)| i.record.id == chosen) else {
        return answered(Err(NoOffer::NotInEffect));
    };
    let capped = item.record.kind() == RecordKind::Rule && check.node.is_some() && download_cap.is_some();
    if capped || would_change(&item, &Event::Offered { node: check.node.clone() }, now, delivery) {
        return Ok(Read::Write);
    }
    answered(Ok(Offer { upgrade_id: item.record.id, firmware: fw, product_key: product.product_key }))
}

/// The boot track after a V4.1 check, and whether the check is an MCU echo.
fn boot_step(before: &OtaState, check: &Check, now: i64) -> (OtaState, bool) {
    let (track, boot_check) = before.track.checked(check.fw_type, now);
    let mut after = OtaState { track, served: before.served.clone() };
    let mut echo = false;
    if check.fw_type == FirmwareType::Mcu {
        if let Some(soft) = &check.soft {
            echo = lifecycle::mcu_report(before.served.as_ref(), soft, boot_check) == McuReport::Echo;
        }
        // After a boot the MCU's own version is in RAM again: no echo is possible until the
        // next MCU download.
        if boot_check && !echo {
            after.served = None;
        }
    }
    (after, echo)
}

/// The check itself, in the caller's transaction. Also run as a dry run (rolled back) by
/// `crate::security` to answer an untrusted `target_fid` from the stored state.
pub(crate) fn check_in(
    c: &mut DbConn,
    check: &Check,
    now: i64,
    rules: crate::upgrade::SeriesRules,
    delivery: i64,
    download_cap: Option<u32>,
) -> Result<std::result::Result<Offer, NoOffer>> {
    let (device, product) = match &check.auth {
        CheckAuth::Passcode(p) => crate::adoption::authenticate_check(c, &check.did, p, check.ip.as_deref(), now)?,
        CheckAuth::ProductKey(pk) => {
            let (d, p) = find_by_did(c, &check.did)?;
            if &p.product_key != pk {
                return Err(device_not_found());
            }
            (d, p)
        }
        CheckAuth::Session => find_by_did(c, &check.did)?,
    };
    let echo = track_boot(c, device.id, check, now)?;
    let device = store_report(c, &device, check, echo, now)?;
    crate::rules::schedule::join_pushing_rules(c, &device, check.method, check.fw_type, now, rules)?;
    // What the device runs, as far as the server trusts it, and what it claims
    // (they differ only for an echo): success is decided on the first, the offer
    // on the second, since the device compares the offer with its claim.
    let trusted = report_of(&device, check.method, check.fw_type);
    let claimed = claimed_report(check);
    let reported = super::device_version_label(&device, check.method, check.fw_type);
    let open = open_records(c, device.id)?;
    let mut offers: Vec<Candidate<'_>> = Vec::new();
    let mut in_effect = 0;
    for (item, fw) in &open {
        let cand = candidate(fw, item.record.id);
        if !echo && rules.concerns(&trusted, &cand) {
            if rules.reached(&trusted, &cand) {
                let event = Event::Reported { reached: true, version: reported.clone() };
                apply(c, item, &event, now, delivery)?;
                continue;
            }
            if item.record.stage() == UpgradeStage::Downloaded {
                let event = Event::Reported { reached: false, version: reported.clone() };
                apply(c, item, &event, now, delivery)?;
            }
        }
        if offerable(item, now) {
            in_effect += 1;
            offers.push(cand);
        }
    }
    if in_effect == 0 {
        return Ok(Err(NoOffer::NoRule));
    }
    let Some(chosen) = rules.choose(&claimed, &offers).map(|c| c.key) else {
        return Ok(Err(NoOffer::NotInEffect));
    };
    let Some((item, fw)) = open.into_iter().find(|(i, _)| i.record.id == chosen) else {
        return Ok(Err(NoOffer::NotInEffect));
    };
    // A rule's target over the gateway's download cap is answered "no update" and pushed
    // again later: GAgent never retries a download, so the cap holds before the offer, never
    // by cutting one.
    if item.record.kind() == RecordKind::Rule
        && let (Some(node), Some(cap)) = (&check.node, download_cap)
        && downloads_held(c, node)? >= i64::from(cap)
    {
        apply(c, &item, &Event::Deferred, now, delivery)?;
        return Ok(Err(NoOffer::NotInEffect));
    }
    apply(c, &item, &Event::Offered { node: check.node.clone() }, now, delivery)?;
    Ok(Ok(Offer { upgrade_id: item.record.id, firmware: fw, product_key: product.product_key }))
}

impl Domain {
    /// A device check: `update_and_check` (V4.1), `target_fid` (V4) or 0x0205 (V1V3).
    /// Answered from a read when it changes nothing but the last-seen time; otherwise run in
    /// the check writer's next batch and answered after its commit (see the module doc).
    pub async fn device_check(&self, check: Check) -> Result<std::result::Result<Offer, NoOffer>> {
        let now = self.clock.now_ms();
        let config = self.check_config();
        let method = check.method.as_str();
        metrics::counter!(crate::metrics::DEVICE_CHECKS, "method" => method).increment(1);
        let read = self
            .db
            .run(move |c| {
                let read = read_check(c, &check, now, config.rules, config.delivery_timeout_ms, config.download_cap)?;
                Ok((read, check))
            })
            .await;
        let answer = match read {
            Ok((Read::Answered { device_id, answer }, _)) => {
                self.check_writer().seen(device_id, now);
                Ok(*answer)
            }
            Ok((Read::Write, check)) => {
                metrics::counter!(crate::metrics::DEVICE_CHECK_WRITES, "method" => method).increment(1);
                self.check_writer().check(check, now).await
            }
            Err(e) => Err(e),
        };
        if let Ok(Ok(_)) = &answer {
            metrics::counter!(crate::metrics::OFFERS, "method" => method).increment(1);
        }
        answer
    }

    fn check_config(&self) -> CheckConfig {
        CheckConfig {
            rules: self.settings.series_rules,
            delivery_timeout_ms: self.settings.delivery_timeout_ms,
            download_cap: self.settings.download_cap,
        }
    }

    /// The writer of device checks, started on first use.
    pub fn check_writer(&self) -> &CheckWriter {
        self.checks.get_or_init(|| CheckWriter::start(self.db.clone(), self.check_config()))
    }

    /// Writes every queued check write (a graceful stop); nothing to do when no check ran.
    pub async fn flush_checks(&self) {
        if let Some(writer) = self.checks.get() {
            writer.flush().await;
        }
    }

    /// V1V3 0x0207: the device asks for the image with this firmware id. Answered only when
    /// an open record offers exactly that firmware to the device.
    pub async fn v1v3_request(&self, did: &str, firmware_id: i64) -> Result<Option<Offer>> {
        let did = did.to_owned();
        let now = self.clock.now_ms();
        self.db
            .run(move |c| {
                let (device, product) = find_by_did(c, &did)?;
                let found = open_records(c, device.id)?.into_iter().find(|(item, fw)| {
                    offerable(item, now) && fw.push_method() == PushMethod::V1V3 && fw.fid == Some(firmware_id)
                });
                Ok(found.map(|(item, fw)| Offer {
                    upgrade_id: item.record.id,
                    firmware: fw,
                    product_key: product.product_key,
                }))
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
                    .filter(firmware::push_method.eq(Stored(PushMethod::V41)))
                    .filter(firmware::fw_type.eq(Stored(FirmwareType::Mcu)))
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
}
