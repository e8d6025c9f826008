//! Firmware verification, the console's step 2: push the firmware to one online test device
//! by its MAC, watch it come back on the new version, and let the operator confirm it stable.
//! Only then is the firmware verified (and locked); unverified firmware never reaches a fleet.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{UpgradeStage, VerificationState, VerificationView};

use crate::Domain;
use crate::access::{Authorized, Push, Read};
use crate::clock::from_ms;
use crate::db::DbConn;
use crate::devices::{DeviceRecord, normalize_mac};
use crate::error::{DomainError, Result};
use crate::firmware::FirmwareRecord;
use crate::lifecycle::{Event, RecordKind};
use crate::notify::PushNotice;
use crate::schema::{devices, firmware, products, upgrades};
use crate::stored::Stored;
use crate::upgrades::{
    Applied, RecordEvent, UpgradeRecord, apply, apply_to, candidate, insert_record, load, report_of,
};

/// The state the console shows. A deadline that passed since the scheduler's last round
/// shows as expired already (computed here: reads write nothing).
fn state_of(r: &UpgradeRecord, now: i64) -> VerificationState {
    match r.stage() {
        UpgradeStage::Succeeded if r.confirmed_at.is_some() => VerificationState::Verified,
        UpgradeStage::Succeeded => VerificationState::AwaitingConfirmation,
        UpgradeStage::Failed => VerificationState::Failed,
        UpgradeStage::Expired => VerificationState::Expired,
        UpgradeStage::Cancelled => VerificationState::Cancelled,
        _ if r.deadline_at.is_some_and(|d| d <= now) => VerificationState::Expired,
        _ => VerificationState::Pushing,
    }
}

fn view(r: &UpgradeRecord, device: &DeviceRecord, now: i64) -> VerificationView {
    let deadline = r.deadline_at.unwrap_or(r.created_at);
    let state = state_of(r, now);
    VerificationView {
        id: r.id,
        firmware_id: r.firmware_id,
        did: device.did.clone().unwrap_or_default(),
        mac: device.mac.clone(),
        state,
        stage: r.stage(),
        from_version: r.from_version.clone(),
        to_version: r.to_version.clone(),
        reason: r.reason.clone(),
        failure: r.failure_view(),
        times: r.times(),
        started_at: from_ms(r.created_at),
        deadline_at: from_ms(deadline),
        seconds_remaining: if state == VerificationState::Pushing { ((deadline - now).max(0) + 999) / 1000 } else { 0 },
        confirmed_at: r.confirmed_at.map(from_ms),
    }
}

fn find_fw(c: &mut DbConn, tenant_id: i64, id: i64) -> Result<(FirmwareRecord, String)> {
    firmware::table
        .inner_join(products::table)
        .filter(firmware::id.eq(id).and(firmware::tenant_id.eq(tenant_id)))
        .select((FirmwareRecord::as_select(), products::product_key))
        .first(c)
        .optional()?
        .ok_or_else(|| DomainError::new(ErrorCode::FirmwareNotFound, "no such firmware in this tenant"))
}

/// The firmware's latest verification.
fn latest(c: &mut DbConn, tenant_id: i64, firmware_id: i64) -> Result<(UpgradeRecord, DeviceRecord)> {
    find_fw(c, tenant_id, firmware_id)?;
    upgrades::table
        .inner_join(devices::table)
        .filter(upgrades::firmware_id.eq(firmware_id))
        .filter(upgrades::kind.eq(Stored(RecordKind::Verification)))
        .order(upgrades::id.desc())
        .select((UpgradeRecord::as_select(), DeviceRecord::as_select()))
        .first(c)
        .optional()?
        .ok_or_else(crate::upgrades::not_found_upgrade)
}

/// The latest verification for an operator's action: one whose deadline passed is expired
/// first, through the state machine (the scheduler would have done it at its next round).
fn current_for_action(
    c: &mut DbConn,
    tenant_id: i64,
    firmware_id: i64,
    now: i64,
    delivery: i64,
) -> Result<(UpgradeRecord, DeviceRecord)> {
    let (record, device) = latest(c, tenant_id, firmware_id)?;
    if record.active && record.deadline_at.is_some_and(|d| d <= now) && !record.stage().is_final() {
        apply_to(c, record.id, &Event::Due, now, delivery)?;
        return latest(c, tenant_id, firmware_id);
    }
    Ok((record, device))
}

fn wrong_state(r: &UpgradeRecord, now: i64, code: ErrorCode, message: &str) -> DomainError {
    let state = serde_json::to_value(state_of(r, now)).unwrap_or_default();
    DomainError::with_details(code, message.to_owned(), serde_json::json!({ "state": state }))
}

/// Applies an operator's event to the current verification and returns it afterwards.
fn act(c: &mut DbConn, record: &UpgradeRecord, event: &Event, now: i64, delivery: i64) -> Result<UpgradeRecord> {
    apply_to(c, record.id, event, now, delivery)?;
    Ok(upgrades::table.find(record.id).select(UpgradeRecord::as_select()).first(c)?)
}

impl Domain {
    /// Starts a verification on the device with this MAC and pushes at once.
    pub async fn start_verification(
        &self,
        who: &Authorized<Push>,
        firmware_id: i64,
        mac: &str,
    ) -> Result<VerificationView> {
        let mac = normalize_mac(mac).ok_or_else(|| DomainError::invalid("mac", "mac must be 12 hex digits"))?;
        let Some(notifier) = self.notifier.get() else {
            return Err(DomainError::new(
                ErrorCode::GatewayUnavailable,
                "no device gateway is attached to this server",
            ));
        };
        let now = self.clock.now_ms();
        let deadline = now + self.settings.verification_timeout_ms;
        let delivery = self.settings.delivery_timeout_ms;
        let rules = self.settings.series_rules;
        let tenant_id = who.tenant_id();
        let (record, device, notice) = self
            .db
            .write(move |c| {
                let (fw, product_key) = find_fw(c, tenant_id, firmware_id)?;
                if fw.verified {
                    return Err(DomainError::new(
                        ErrorCode::FirmwareAlreadyVerified,
                        "this firmware is already verified",
                    ));
                }
                if let Ok((running, _)) = current_for_action(c, tenant_id, fw.id, now, delivery)
                    && running.active
                {
                    return Err(DomainError::new(
                        ErrorCode::VerificationInProgress,
                        "a verification of this firmware is already running; cancel it first",
                    ));
                }
                let device: DeviceRecord = devices::table
                    .filter(devices::product_id.eq(fw.product_id).and(devices::mac.eq(&mac)))
                    .select(DeviceRecord::as_select())
                    .first(c)
                    .optional()?
                    .filter(|d| d.did.is_some())
                    .ok_or_else(|| {
                        DomainError::with_details(
                            ErrorCode::DeviceNotFound,
                            format!("no registered device with MAC {mac} in product {product_key}"),
                            serde_json::json!({ "field": "mac" }),
                        )
                    })?;
                if !device.online {
                    return Err(DomainError::new(
                        ErrorCode::DeviceOffline,
                        format!("device {mac} is offline; it must be connected to receive the push"),
                    ));
                }
                let Some(device_method) = device.push_method() else {
                    return Err(not_eligible(
                        "the device has not checked for firmware yet, so its push method is unknown",
                    ));
                };
                let report = report_of(&device, device_method, fw.fw_type());
                rules.check_offer(&report, &candidate(&fw, 0)).map_err(not_eligible)?;
                let id = insert_record(c, &device, &fw, RecordKind::Verification, deadline, now)?;
                let Some(item) = load(c, &[id])?.pop() else {
                    return Err(DomainError::Internal(anyhow::anyhow!("verification {id} vanished")));
                };
                let sent = apply(c, &item, &Event::PushSent, now, delivery)? == Applied::Changed;
                let record: UpgradeRecord = upgrades::table.find(id).select(UpgradeRecord::as_select()).first(c)?;
                let notice = sent.then(|| PushNotice {
                    did: device.did.clone().unwrap_or_default(),
                    product_key,
                    method: fw.push_method(),
                    fw_type: fw.fw_type(),
                    upgrade_id: id,
                    firmware_id: fw.id,
                    fid: fw.fid,
                    hard_version: fw.hard_version.clone(),
                    soft_version: fw.soft_version.clone(),
                    file_name: fw.file_name.clone(),
                    opening: None,
                });
                Ok((record, device, notice))
            })
            .await
            .map_err(|e| match e {
                DomainError::UniqueViolation => DomainError::new(
                    ErrorCode::VerificationInProgress,
                    "a verification of this firmware is already running; cancel it first",
                ),
                other => other,
            })?;
        let upgrade_id = record.id;
        if let Some(notice) = notice
            && let Err(e) = notifier.notify(notice).await
        {
            // The verification goes on: the push is sent again once its delivery deadline
            // clears it, while the device is online and the countdown runs.
            let event = Event::PushRefused { reason: format!("{e:#}") };
            self.record_events(vec![RecordEvent { upgrade_id, event }]).await?;
        }
        let record = self
            .db
            .run(move |c| Ok(upgrades::table.find(upgrade_id).select(UpgradeRecord::as_select()).first(c)?))
            .await?;
        Ok(view(&record, &device, self.clock.now_ms()))
    }

    /// The firmware's latest verification, with its countdown. A read: nothing is written.
    pub async fn get_verification(&self, who: &Authorized<Read>, firmware_id: i64) -> Result<VerificationView> {
        let now = self.clock.now_ms();
        let tenant_id = who.tenant_id();
        let (record, device) = self.db.run(move |c| latest(c, tenant_id, firmware_id)).await?;
        Ok(view(&record, &device, now))
    }

    /// `stable: true` verifies (and locks) the firmware; `false` fails the verification.
    pub async fn confirm_verification(
        &self,
        who: &Authorized<Push>,
        firmware_id: i64,
        stable: bool,
    ) -> Result<VerificationView> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let tenant_id = who.tenant_id();
        let (record, device) = self
            .db
            .write(move |c| {
                let (record, device) = current_for_action(c, tenant_id, firmware_id, now, delivery)?;
                if state_of(&record, now) != VerificationState::AwaitingConfirmation || !record.active {
                    return Err(wrong_state(
                        &record,
                        now,
                        ErrorCode::VerificationNotSucceeded,
                        "the device has not reported the new version, so there is nothing to confirm",
                    ));
                }
                let record = act(c, &record, &Event::Confirmed { stable }, now, delivery)?;
                Ok((record, device))
            })
            .await?;
        Ok(view(&record, &device, now))
    }

    /// Cancels a running verification (or one awaiting confirmation).
    pub async fn cancel_verification(&self, who: &Authorized<Push>, firmware_id: i64) -> Result<VerificationView> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let (tenant_id, username) = (who.tenant_id(), who.username().to_owned());
        let (record, device) = self
            .db
            .write(move |c| {
                let (record, device) = current_for_action(c, tenant_id, firmware_id, now, delivery)?;
                if !record.active {
                    return Err(wrong_state(
                        &record,
                        now,
                        ErrorCode::VerificationNotFound,
                        "no verification of this firmware is running",
                    ));
                }
                let record = act(c, &record, &Event::Cancelled { by: username }, now, delivery)?;
                Ok((record, device))
            })
            .await?;
        Ok(view(&record, &device, now))
    }
}

fn not_eligible(reason: &str) -> DomainError {
    DomainError::with_details(
        ErrorCode::DeviceNotEligible,
        format!("this device cannot take the firmware: {reason}"),
        serde_json::json!({ "reason": reason }),
    )
}
