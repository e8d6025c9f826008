//! Device-side abuse: what the calls that carry no (or a weak) proof of identity may change.
//!
//! - **Re-registration.** A registration (`POST /dev/devices`, product key + MAC + a passcode
//!   the device made up) of a known MAC with another passcode replaces the passcode: that is how
//!   a reset GAgent gets back in, and how a stranger who knows a MAC could take the device over.
//!   Each product chooses ([`RegistrationPolicy`]): `allow` (the hosted cloud's behaviour, the
//!   default), `allow_when_offline` (only while the device has no live session and was not seen
//!   for `offline_minutes`), `deny`. Every replacement and every refusal is recorded as an event
//!   (`reregistered`, `reregistration_refused`) with its source address.
//! - **`target_fid`** (V4) carries did and product key only, and the product key is not secret.
//!   It may write a device's versions only when it comes from the address of the device's live
//!   MQTT session (the address presence recorded at login; provision, which carries no proof,
//!   no longer writes the address), and never for a device seen on V4.1 (it would change its
//!   push method). Otherwise it is answered from the stored state by a dry run of the same
//!   check (nothing is written) and its report is **held**: applied if the device's next MQTT
//!   login, within [`HOLD_MS`], comes from the same address. GK makes its boot-time
//!   `target_fid` calls before it logs in (register → provision → target_fid → MQTT), so a
//!   held report is how its versions are learned at all; a stranger's report is never
//!   applied unless the device itself logs in from the stranger's address.
//! - **Wrong passcodes** (MQTT logins, `update_and_check`, `DELETE /dev/devices`) are recorded
//!   as `conflict` events of the product (coalesced, with counts and the last source); the
//!   gateway slows the answers down (`ota_gateway::throttle`).
//! - **Unknown dids** refused where a product is known are `refused` events of that product;
//!   where none is (an MQTT login while no product adopts, a plain provision, a V4.1 check),
//!   they are recorded here, coalesced per did and channel, for installation administrators.

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{
    AdoptionEventKind, DeviceSecurityView, FirmwareType, Page, PushMethod, RegistrationPolicy, RegistrationView,
    SetRegistrationPolicy, UnknownDeviceQuery, UnknownDeviceView,
};

use crate::Domain;
use crate::access::{Authorized, InstallationAdmin, Read, Write};
use crate::adoption::{Event, record};
use crate::clock::from_ms;
use crate::db::DbConn;
use crate::devices::{DeviceIdentity, DeviceRecord, device_not_found, find_by_did, find_product_by_key, is_did};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::products::{ProductRecord, find_product};
use crate::schema::{adoption_events, held_reports, registration_policies, unknown_device_refusals};
use crate::stored::Stored;
use crate::upgrades::check::check_in;
use crate::upgrades::{Check, CheckAuth, NoOffer, Offer};

/// How long a held `target_fid` report waits for the device's MQTT login.
pub const HOLD_MS: i64 = 10 * 60 * 1000;
/// Unknown-did refusals not seen again for this long are forgotten (maintenance task).
pub const UNKNOWN_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = registration_policies)]
struct PolicyRow {
    policy: Stored<RegistrationPolicy>,
    offline_minutes: Option<i64>,
    updated_at: i64,
}

fn policy_row(c: &mut DbConn, product_id: i64) -> Result<Option<PolicyRow>> {
    Ok(registration_policies::table.find(product_id).select(PolicyRow::as_select()).first(c).optional()?)
}

fn policy_of(row: Option<&PolicyRow>) -> RegistrationPolicy {
    row.map_or(RegistrationPolicy::Allow, |r| r.policy.get())
}

fn registration_view(product: &ProductRecord, row: Option<&PolicyRow>) -> Result<RegistrationView> {
    Ok(RegistrationView {
        product_key: product.product_key.clone(),
        policy: policy_of(row),
        offline_minutes: row.and_then(|r| r.offline_minutes).and_then(|m| u32::try_from(m).ok()),
        updated_at: row.map(|r| from_ms(r.updated_at)),
    })
}

/// Whether a registration may replace `device`'s passcode now (pure).
pub fn replacement_allowed(
    policy: RegistrationPolicy,
    offline_minutes: Option<i64>,
    device: &DeviceRecord,
    now: i64,
) -> std::result::Result<(), &'static str> {
    match policy {
        RegistrationPolicy::Allow => Ok(()),
        RegistrationPolicy::Deny => Err("the product's re-registration policy is deny"),
        RegistrationPolicy::AllowWhenOffline => {
            if device.online {
                return Err("the device has a live session (allow_when_offline)");
            }
            let quiet_ms = offline_minutes.unwrap_or(60) * 60_000;
            match device.last_seen_at {
                Some(seen) if now - seen < quiet_ms => Err("the device was seen too recently (allow_when_offline)"),
                _ => Ok(()),
            }
        }
    }
}

/// Decides and records a registration that would replace a known device's passcode, in the
/// registration's transaction. `Err(reason)`: refused (the refusal is recorded and committed
/// with the transaction; the caller answers `reregistration_refused`).
pub(crate) fn decide_replacement(
    c: &mut DbConn,
    device: &DeviceRecord,
    source: Option<&str>,
    now: i64,
) -> Result<std::result::Result<(), &'static str>> {
    let row = policy_row(c, device.product_id)?;
    let policy = policy_of(row.as_ref());
    let decision = replacement_allowed(policy, row.as_ref().and_then(|r| r.offline_minutes), device, now);
    let (kind, reason) = match decision {
        Ok(()) => (AdoptionEventKind::Reregistered, "a registration of this MAC replaced the passcode"),
        Err(why) => (AdoptionEventKind::ReregistrationRefused, why),
    };
    let did = device.did.as_deref().unwrap_or_default();
    let e = Event {
        tenant_id: device.tenant_id,
        product_id: device.product_id,
        did,
        kind,
        reason: Some(reason),
        source,
        count: 1,
    };
    record(c, &e, now)?;
    Ok(decision)
}

/// Where an unknown did was refused, for [`UnknownDeviceView::channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Mqtt,
    Provision,
    UpdateAndCheck,
    TargetFid,
    Deregister,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mqtt => "mqtt",
            Channel::Provision => "provision",
            Channel::UpdateAndCheck => "update_and_check",
            Channel::TargetFid => "target_fid",
            Channel::Deregister => "deregister",
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = held_reports)]
pub(crate) struct HeldReport {
    pub fw_type: String,
    pub source: String,
    pub hard_version: String,
    pub soft_version: String,
    pub fid: i64,
    pub reported_at: i64,
}

pub(crate) fn held_of(c: &mut DbConn, device_id: i64) -> Result<Vec<HeldReport>> {
    Ok(held_reports::table.filter(held_reports::device_id.eq(device_id)).select(HeldReport::as_select()).load(c)?)
}

fn fw_type_str(t: FirmwareType) -> &'static str {
    match t {
        FirmwareType::Wifi => "wifi",
        FirmwareType::Mcu => "mcu",
    }
}

fn fw_type_parse(s: &str) -> Option<FirmwareType> {
    match s {
        "wifi" => Some(FirmwareType::Wifi),
        "mcu" => Some(FirmwareType::Mcu),
        _ => None,
    }
}

impl Domain {
    // ------------------------------------------------------------ device side

    /// Records an unknown did refused where no product is known (coalesced, at most one write
    /// a minute per did and channel in this process). Ill-formed dids are not recorded: they
    /// cannot be a GAgent's.
    pub async fn note_unknown_did(&self, did: &str, channel: Channel, reason: &'static str, source: Option<&str>) {
        if !is_did(did) {
            return;
        }
        let now = self.clock.now_ms();
        let key = format!("unknown:{}:{did}", channel.as_str());
        let Some(count) = self.event_throttle().admit(&key, AdoptionEventKind::Refused, now) else { return };
        let (did, source) = (did.to_owned(), source.map(str::to_owned));
        let written = self
            .db
            .write(move |c| {
                let row = || {
                    unknown_device_refusals::table
                        .filter(unknown_device_refusals::did.eq(&did))
                        .filter(unknown_device_refusals::channel.eq(channel.as_str()))
                };
                let bumped = diesel::update(row())
                    .set((
                        unknown_device_refusals::count.eq(unknown_device_refusals::count + count),
                        unknown_device_refusals::last_at.eq(now),
                        unknown_device_refusals::reason.eq(reason),
                        unknown_device_refusals::source.eq(&source),
                    ))
                    .execute(c)?;
                if bumped > 0 {
                    return Ok(());
                }
                let inserted = c.transaction(|c| {
                    diesel::insert_into(unknown_device_refusals::table)
                        .values((
                            unknown_device_refusals::did.eq(&did),
                            unknown_device_refusals::channel.eq(channel.as_str()),
                            unknown_device_refusals::reason.eq(reason),
                            unknown_device_refusals::source.eq(&source),
                            unknown_device_refusals::count.eq(count),
                            unknown_device_refusals::first_at.eq(now),
                            unknown_device_refusals::last_at.eq(now),
                        ))
                        .execute(c)
                        .map_err(DomainError::from)
                });
                match inserted {
                    Ok(_) | Err(DomainError::UniqueViolation) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record an unknown-did refusal");
        }
    }

    /// Records a refused passcode-bearing call (`update_and_check`, `DELETE /dev/devices`):
    /// a wrong passcode of a known did is a `conflict` of its product, an unknown did goes to
    /// the installation's list.
    pub async fn note_refused_passcode(&self, did: &str, channel: Channel, source: Option<&str>) {
        let now = self.clock.now_ms();
        let d = did.to_owned();
        let found = self
            .db
            .run(move |c| match find_by_did(c, &d) {
                Ok((device, _)) => Ok(Some(device)),
                Err(DomainError::Expected { code: ErrorCode::DeviceNotFound, .. }) => Ok(None),
                Err(e) => Err(e),
            })
            .await;
        let outcome = match found {
            Ok(Some(device)) if device.passcode.is_some() => {
                self.note_conflict(device.tenant_id, device.product_id, device.id, did, source, now).await
            }
            // A known did without a passcode was refused by its product's adoption policy; the
            // MQTT login that follows at boot records that refusal with its reason.
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                self.note_unknown_did(did, channel, "unknown did", source).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "could not record a refused device call");
        }
    }

    /// `update_and_check`: the check, with its refusal recorded.
    pub async fn passcode_check(&self, check: Check) -> Result<std::result::Result<Offer, NoOffer>> {
        let (did, source) = (check.did.clone(), check.ip.clone());
        let answer = self.device_check(check).await;
        if let Err(DomainError::Expected { code: ErrorCode::InvalidCredentials, .. }) = &answer {
            self.note_refused_passcode(&did, Channel::UpdateAndCheck, source.as_deref()).await;
        }
        answer
    }

    /// `target_fid` (V4): trusted only from the address of the device's live MQTT session and
    /// never for a V4.1 device; otherwise answered from the stored state, its report held (see
    /// the module doc).
    pub async fn target_fid_check(&self, check: Check) -> Result<std::result::Result<Offer, NoOffer>> {
        let CheckAuth::ProductKey(pk) = &check.auth else {
            return Err(DomainError::Internal(anyhow::anyhow!("target_fid_check needs product-key auth")));
        };
        let (did, pk_owned) = (check.did.clone(), pk.clone());
        let found = self
            .db
            .run(move |c| {
                let product = match find_product_by_key(c, &pk_owned) {
                    Ok(p) => p,
                    Err(_) => return Ok(Err(None)),
                };
                match find_by_did(c, &did) {
                    Ok((device, p)) if p.id == product.id => Ok(Ok(device)),
                    Ok(_) => Ok(Err(None)),
                    Err(DomainError::Expected { code: ErrorCode::DeviceNotFound, .. }) => Ok(Err(Some(product))),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let device = match found {
            Ok(device) => device,
            Err(product) => {
                let now = self.clock.now_ms();
                match product {
                    Some(p) => {
                        let reason = "unknown did (target_fid)";
                        self.note_refusal(p.tenant_id, p.id, &check.did, reason, check.ip.as_deref(), now).await?;
                    }
                    None => {
                        let reason = "unknown did or product key (target_fid)";
                        self.note_unknown_did(&check.did, Channel::TargetFid, reason, check.ip.as_deref()).await;
                    }
                }
                return Err(device_not_found());
            }
        };
        if device.push_method() == Some(PushMethod::V41) {
            // A V4.1 device never asks target_fid; a stranger does. Nothing to offer or store.
            return Ok(Err(NoOffer::NoRule));
        }
        let from_session = device.online && check.ip.is_some() && device.ip == check.ip;
        if from_session {
            return self.device_check(check).await;
        }
        let now = self.clock.now_ms();
        if let Some(source) = check.ip.clone() {
            let (hard, soft, fid) = (
                check.hard.clone().unwrap_or_default(),
                check.soft.clone().unwrap_or_default(),
                check.fid.unwrap_or(0),
            );
            let (device_id, fw_type) = (device.id, fw_type_str(check.fw_type));
            self.db
                .write(move |c| {
                    diesel::delete(
                        held_reports::table
                            .filter(held_reports::device_id.eq(device_id))
                            .filter(held_reports::reported_at.lt(now - HOLD_MS)),
                    )
                    .execute(c)?;
                    diesel::delete(
                        held_reports::table
                            .filter(held_reports::device_id.eq(device_id))
                            .filter(held_reports::fw_type.eq(fw_type))
                            .filter(held_reports::source.eq(&source)),
                    )
                    .execute(c)?;
                    diesel::insert_into(held_reports::table)
                        .values((
                            held_reports::device_id.eq(device_id),
                            held_reports::fw_type.eq(fw_type),
                            held_reports::source.eq(&source),
                            held_reports::hard_version.eq(hard),
                            held_reports::soft_version.eq(soft),
                            held_reports::fid.eq(fid),
                            held_reports::reported_at.eq(now),
                        ))
                        .execute(c)?;
                    Ok(())
                })
                .await?;
        }
        let (stored_hw, stored_sw, stored_fid) = device.versions(check.fw_type);
        let stored = Check {
            hard: stored_hw.map(str::to_owned),
            soft: stored_sw.map(str::to_owned),
            fid: stored_fid,
            ip: device.ip.clone(),
            ..check
        };
        if stored.hard.is_none() || stored.soft.is_none() {
            // Nothing known about this target yet: nothing to offer from the stored state.
            return Ok(Err(NoOffer::NoRule));
        }
        let (rules, delivery) = (self.settings.series_rules, self.settings.delivery_timeout_ms);
        let cap = self.settings.download_cap;
        self.db.dry_run(move |c| check_in(c, &stored, now, rules, delivery, cap)).await
    }

    /// Applies the held `target_fid` reports of a device that just logged in over MQTT from
    /// `source` (see the module doc); every held report of the device is then dropped.
    pub(crate) async fn apply_held_reports(&self, identity: &DeviceIdentity, held: Vec<HeldReport>, source: &str) {
        let now = self.clock.now_ms();
        for report in held.iter().filter(|r| r.source == source && now - r.reported_at <= HOLD_MS) {
            let Some(fw_type) = fw_type_parse(&report.fw_type) else { continue };
            let check = Check {
                did: identity.did.clone(),
                auth: CheckAuth::Session,
                method: PushMethod::V4,
                fw_type,
                hard: Some(report.hard_version.clone()),
                soft: Some(report.soft_version.clone()),
                fid: Some(report.fid),
                ip: Some(source.to_owned()),
                // A held report offers nothing by itself (V4 downloads start on the device's
                // next check), so no gateway's download cap is involved.
                node: None,
            };
            if let Err(e) = self.device_check(check).await {
                tracing::warn!(did = %identity.did, error = %e, "a held target_fid report could not be applied");
            }
        }
        let device_id = identity.device_id;
        let dropped = self
            .db
            .write(move |c| {
                diesel::delete(held_reports::table.filter(held_reports::device_id.eq(device_id))).execute(c)?;
                Ok(())
            })
            .await;
        if let Err(e) = dropped {
            tracing::warn!(error = %e, "held target_fid reports could not be dropped");
        }
    }

    // ------------------------------------------------------------ operator side

    pub async fn get_registration_policy(&self, who: &Authorized<Read>, product_key: &str) -> Result<RegistrationView> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        self.db
            .run(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let row = policy_row(c, product.id)?;
                registration_view(&product, row.as_ref())
            })
            .await
    }

    pub async fn set_registration_policy(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        req: SetRegistrationPolicy,
    ) -> Result<RegistrationView> {
        let (policy, minutes) = match req {
            SetRegistrationPolicy::Allow {} => (RegistrationPolicy::Allow, None),
            SetRegistrationPolicy::Deny {} => (RegistrationPolicy::Deny, None),
            SetRegistrationPolicy::AllowWhenOffline { offline_minutes } => {
                if !(1..=43_200).contains(&offline_minutes) {
                    return Err(DomainError::invalid("offline_minutes", "offline_minutes must be 1–43200"));
                }
                (RegistrationPolicy::AllowWhenOffline, Some(i64::from(offline_minutes)))
            }
        };
        let (tenant_id, key, now) = (who.tenant_id(), product_key.to_owned(), self.clock.now_ms());
        self.db
            .write(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                diesel::delete(registration_policies::table.find(product.id)).execute(c)?;
                diesel::insert_into(registration_policies::table)
                    .values((
                        registration_policies::product_id.eq(product.id),
                        registration_policies::policy.eq(Stored(policy)),
                        registration_policies::offline_minutes.eq(minutes),
                        registration_policies::updated_at.eq(now),
                    ))
                    .execute(c)?;
                let row = policy_row(c, product.id)?;
                registration_view(&product, row.as_ref())
            })
            .await
    }

    pub async fn device_security(&self, who: &Authorized<Read>, product_key: &str) -> Result<DeviceSecurityView> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        self.db
            .run(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let row = policy_row(c, product.id)?;
                // (occurrences, dids): one coalesced row per did and kind.
                let of_kind = |c: &mut DbConn, kind: AdoptionEventKind| -> Result<(i64, i64)> {
                    let counts: Vec<i64> = adoption_events::table
                        .filter(adoption_events::product_id.eq(product.id))
                        .filter(adoption_events::kind.eq(kind.as_str()))
                        .select(adoption_events::count)
                        .load(c)?;
                    Ok((counts.iter().sum(), counts.len() as i64))
                };
                let (wrong, wrong_dids) = of_kind(c, AdoptionEventKind::Conflict)?;
                let (rereg, _) = of_kind(c, AdoptionEventKind::Reregistered)?;
                let (refused_rereg, _) = of_kind(c, AdoptionEventKind::ReregistrationRefused)?;
                let (unknown, _) = of_kind(c, AdoptionEventKind::Refused)?;
                Ok(DeviceSecurityView {
                    product_key: product.product_key.clone(),
                    registration: registration_view(&product, row.as_ref())?,
                    wrong_passcodes: wrong,
                    devices_with_wrong_passcodes: wrong_dids,
                    reregistrations: rereg,
                    reregistrations_refused: refused_rereg,
                    unknown_did_refusals: unknown,
                })
            })
            .await
    }

    /// Unknown dids refused where no product was named, most recent first.
    pub async fn list_unknown_devices(
        &self,
        _who: &Authorized<InstallationAdmin>,
        query: UnknownDeviceQuery,
    ) -> Result<Page<UnknownDeviceView>> {
        let page = PageRequest::new(query.page, query.per_page)?;
        let did = crate::validate::did_prefix(query.did.as_deref())?;
        type Row = (String, String, String, Option<String>, i64, i64, i64);
        let (rows, total) = self
            .db
            .snapshot(move |c| {
                let filtered = || {
                    let mut q = unknown_device_refusals::table.into_boxed();
                    if let Some(did) = &did {
                        q = q.filter(unknown_device_refusals::did.like(format!("{did}%")));
                    }
                    q
                };
                let total: i64 = filtered().count().get_result(c)?;
                let rows: Vec<Row> = filtered()
                    .order((unknown_device_refusals::last_at.desc(), unknown_device_refusals::id.desc()))
                    .limit(page.limit())
                    .offset(page.offset())
                    .select((
                        unknown_device_refusals::did,
                        unknown_device_refusals::channel,
                        unknown_device_refusals::reason,
                        unknown_device_refusals::source,
                        unknown_device_refusals::count,
                        unknown_device_refusals::first_at,
                        unknown_device_refusals::last_at,
                    ))
                    .load(c)?;
                Ok((rows, total))
            })
            .await?;
        let items = rows
            .into_iter()
            .map(|(did, channel, reason, source, count, first_at, last_at)| UnknownDeviceView {
                did,
                channel,
                reason,
                source,
                count,
                first_at: from_ms(first_at),
                last_at: from_ms(last_at),
            })
            .collect();
        Ok(page.wrap(items, total))
    }

    /// Forgets unknown-did refusals and held reports that are past their time (maintenance).
    pub async fn forget_old_device_records(&self) -> Result<()> {
        let now = self.clock.now_ms();
        self.db
            .write(move |c| {
                diesel::delete(
                    unknown_device_refusals::table
                        .filter(unknown_device_refusals::last_at.lt(now - UNKNOWN_RETENTION_MS)),
                )
                .execute(c)?;
                diesel::delete(held_reports::table.filter(held_reports::reported_at.lt(now - HOLD_MS))).execute(c)?;
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(online: bool, last_seen_at: Option<i64>) -> DeviceRecord {
        DeviceRecord {
            id: 1,
            tenant_id: 1,
            product_id: 1,
            did: Some("AbCdEfGhIjKlMnOpQrStUv".into()),
            mac: Some("5CCF7F0A1B2C".into()),
            passcode: Some("KQXBDTRLMA".into()),
            registered_via: Stored(ota_wire::dto::RegisteredVia::Plain),
            push_method: None,
            wifi_hw: None,
            wifi_sw: None,
            mcu_hw: None,
            mcu_sw: None,
            wifi_fid: None,
            mcu_fid: None,
            legacy_firmware_id: None,
            country: None,
            province: None,
            city: None,
            ip: None,
            online,
            gateway_id: None,
            connected_at: None,
            disconnected_at: None,
            last_seen_at,
            last_provision_at: None,
            metadata: None,
            created_at: 0,
            updated_at: 0,
            adopted_at: None,
            passcode_pinned_at: None,
            repin: false,
            conflicts: 0,
        }
    }

    #[test]
    fn each_policy_decides_a_replacement() {
        let now = 100 * 60_000;
        use RegistrationPolicy as P;
        // policy, offline_minutes, online, last seen, replacement allowed
        type Row = (P, Option<i64>, bool, Option<i64>, bool);
        let table: &[Row] = &[
            (P::Allow, None, true, Some(now), true),
            (P::Deny, None, false, None, false),
            (P::AllowWhenOffline, Some(30), true, Some(0), false),
            (P::AllowWhenOffline, Some(30), false, Some(now - 29 * 60_000), false),
            (P::AllowWhenOffline, Some(30), false, Some(now - 30 * 60_000), true),
            (P::AllowWhenOffline, Some(30), false, None, true),
        ];
        for (policy, minutes, online, seen, allowed) in table {
            let got = replacement_allowed(*policy, *minutes, &device(*online, *seen), now).is_ok();
            assert_eq!(got, *allowed, "{policy:?} {minutes:?} online={online} seen={seen:?}");
        }
    }
}
