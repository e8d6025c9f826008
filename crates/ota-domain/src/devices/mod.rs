//! The device registry: what the gateway learns from every registration, provision, login,
//! check and report, and what operators list, search, edit, import and delete.
//!
//! Device-facing calls carry no [`Principal`]: a device proves itself with its did and
//! passcode (or, for the calls GAgent makes without a passcode, with its did and product key,
//! exactly as the hosted cloud accepted them). Operator calls are tenant-scoped as everywhere.

pub mod import;
pub mod locks;
pub mod presence;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{
    AdoptionPolicy, DeviceAdoption, DeviceListQuery, DeviceView, FirmwareType, Page, PushMethod, Region, RegisteredVia,
    TargetVersions, UpdateDeviceRequest, VersionCount,
};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::products::{ProductRecord, find_product, product_not_found};
use crate::schema::{devices, products};
use crate::stored::Stored;

pub use presence::PresenceWriter;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = devices)]
pub struct DeviceRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub did: Option<String>,
    pub mac: Option<String>,
    pub passcode: Option<String>,
    pub registered_via: Stored<RegisteredVia>,
    pub push_method: Option<Stored<PushMethod>>,
    pub wifi_hw: Option<String>,
    pub wifi_sw: Option<String>,
    pub mcu_hw: Option<String>,
    pub mcu_sw: Option<String>,
    pub wifi_fid: Option<i64>,
    pub mcu_fid: Option<i64>,
    pub legacy_firmware_id: Option<i64>,
    pub country: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub ip: Option<String>,
    pub online: bool,
    pub gateway_id: Option<String>,
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    pub last_provision_at: Option<i64>,
    pub metadata: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub adopted_at: Option<i64>,
    pub passcode_pinned_at: Option<i64>,
    pub repin: bool,
    pub conflicts: i64,
}

impl DeviceRecord {
    pub fn push_method(&self) -> Option<PushMethod> {
        self.push_method.map(Stored::get)
    }

    pub fn registered_via(&self) -> RegisteredVia {
        self.registered_via.get()
    }

    /// The versions last reported for one target.
    pub fn versions(&self, fw_type: FirmwareType) -> (Option<&str>, Option<&str>, Option<i64>) {
        match fw_type {
            FirmwareType::Wifi => (self.wifi_hw.as_deref(), self.wifi_sw.as_deref(), self.wifi_fid),
            FirmwareType::Mcu => (self.mcu_hw.as_deref(), self.mcu_sw.as_deref(), self.mcu_fid),
        }
    }

    pub fn view(&self, product_key: &str) -> DeviceView {
        DeviceView {
            did: self.did.clone(),
            product_key: product_key.to_owned(),
            mac: self.mac.clone(),
            push_method: self.push_method(),
            wifi: TargetVersions {
                hard_version: self.wifi_hw.clone(),
                soft_version: self.wifi_sw.clone(),
                fid: self.wifi_fid,
            },
            mcu: TargetVersions {
                hard_version: self.mcu_hw.clone(),
                soft_version: self.mcu_sw.clone(),
                fid: self.mcu_fid,
            },
            legacy_firmware_id: self.legacy_firmware_id,
            region: Region { country: self.country.clone(), province: self.province.clone(), city: self.city.clone() },
            ip: self.ip.clone(),
            online: self.online,
            connected_at: self.connected_at.map(from_ms),
            disconnected_at: self.disconnected_at.map(from_ms),
            last_seen_at: self.last_seen_at.map(from_ms),
            registered_via: self.registered_via(),
            adoption: DeviceAdoption {
                adopted_via: self.adopted_at.and_then(|_| match self.registered_via() {
                    RegisteredVia::Import => Some(AdoptionPolicy::Imported),
                    RegisteredVia::Adopted => Some(AdoptionPolicy::Open),
                    RegisteredVia::Plain | RegisteredVia::Encrypted => None,
                }),
                adopted_at: self.adopted_at.map(from_ms),
                passcode_known: self.passcode.is_some(),
                passcode_pinned_at: self.passcode_pinned_at.map(from_ms),
                repin_pending: self.repin,
                conflicts: self.conflicts,
                without_mac: self.mac.is_none(),
            },
            metadata: self.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        }
    }
}

/// Who a device is, once it has proved it: what the gateway keeps per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    pub device_id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub product_key: String,
    pub did: String,
}

/// What a provision call answers with (besides the gateway's own MQTT address).
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// `None` for an unknown did answered because some product adopts (see [`crate::adoption`]).
    pub identity: Option<DeviceIdentity>,
    /// The product secret, for encrypted provision replies.
    pub product_secret: String,
    pub encrypted: bool,
}

// ---------------------------------------------------------------- identifiers

/// Normalises a MAC to 12 upper-case hex digits; `:`, `-`, `.` and spaces are allowed between.
pub fn normalize_mac(input: &str) -> Option<String> {
    let hex: String = input.chars().filter(|c| !matches!(c, ':' | '-' | '.' | ' ')).collect();
    (hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_ascii_uppercase())
}

/// A list's MAC search: a whole MAC or a prefix of at least 4 hex digits (separators
/// allowed), normalised to upper case; `None` when empty.
pub(crate) fn mac_search(mac: Option<&str>) -> Result<Option<String>> {
    let Some(m) = mac else { return Ok(None) };
    let hex: String = m.chars().filter(|c| !matches!(c, ':' | '-' | '.' | ' ')).collect();
    if hex.is_empty() {
        return Ok(None);
    }
    if hex.len() < 4 || hex.len() > 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::field(
            ErrorCode::InvalidQuery,
            "mac",
            "mac must be 4–12 hex digits (a prefix or a whole MAC)",
        ));
    }
    Ok(Some(hex.to_ascii_uppercase()))
}

/// A did as the hosted cloud issues them: 22 ASCII letters and digits (GAgent checks the length).
pub fn is_did(s: &str) -> bool {
    s.len() == 22 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A passcode GAgent can send as its MQTT password: 1–16 printable ASCII characters, no `&`
/// or `=` (it travels inside form bodies unescaped).
pub fn is_passcode(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
}

/// A version as devices report it: 8 printable characters. The reference allows
/// `[0-9A-Za-z]`, but real GAgent builds report `00x86-os`, so a report is taken as long as it
/// cannot break a form body (no `&`, `=`, spaces or controls).
pub fn is_version(s: &str) -> bool {
    s.len() == 8 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
}

fn random_did() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..22).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

pub(crate) fn device_not_found() -> DomainError {
    DomainError::new(ErrorCode::DeviceNotFound, "no such device")
}

fn device_refused(message: &str) -> DomainError {
    DomainError::new(ErrorCode::InvalidCredentials, message.to_owned())
}

pub(crate) fn find_product_by_key(c: &mut DbConn, product_key: &str) -> Result<ProductRecord> {
    products::table
        .filter(products::product_key.eq(product_key))
        .select(ProductRecord::as_select())
        .first(c)
        .optional()?
        .ok_or_else(product_not_found)
}

pub(crate) fn find_by_did(c: &mut DbConn, did: &str) -> Result<(DeviceRecord, ProductRecord)> {
    devices::table
        .inner_join(products::table)
        .filter(devices::did.eq(did))
        .select((DeviceRecord::as_select(), ProductRecord::as_select()))
        .first(c)
        .optional()?
        .ok_or_else(device_not_found)
}

/// Loads a device by did and checks the passcode it presented.
pub(crate) fn authenticate_in(c: &mut DbConn, did: &str, passcode: &str) -> Result<(DeviceRecord, ProductRecord)> {
    let (device, product) = find_by_did(c, did).map_err(|_| device_refused("unknown did or wrong passcode"))?;
    if device.passcode.as_deref() != Some(passcode) {
        return Err(device_refused("unknown did or wrong passcode"));
    }
    Ok((device, product))
}

pub(crate) fn identity(device: &DeviceRecord, product: &ProductRecord) -> DeviceIdentity {
    DeviceIdentity {
        device_id: device.id,
        tenant_id: device.tenant_id,
        product_id: device.product_id,
        product_key: product.product_key.clone(),
        did: device.did.clone().unwrap_or_default(),
    }
}

/// A device of the tenant by did, or by MAC when the key is one (unique in the tenant).
pub(crate) fn find_in_tenant(c: &mut DbConn, tenant_id: i64, key: &str) -> Result<(DeviceRecord, String)> {
    let base = || {
        devices::table
            .inner_join(products::table)
            .filter(devices::tenant_id.eq(tenant_id))
            .select((DeviceRecord::as_select(), products::product_key))
            .into_boxed()
    };
    if let Some(mac) = normalize_mac(key).filter(|_| !is_did(key)) {
        let mut found: Vec<(DeviceRecord, String)> = base().filter(devices::mac.eq(mac)).limit(2).load(c)?;
        return match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(device_not_found()),
            _ => Err(DomainError::field(
                ErrorCode::InvalidPath,
                "device",
                "this MAC is used in several products of the tenant; address the device by its did",
            )),
        };
    }
    base().filter(devices::did.eq(key)).first(c).optional()?.ok_or_else(device_not_found)
}

fn clean_region_part(field: &str, value: Option<String>) -> Result<Option<String>> {
    let Some(v) = value else { return Ok(None) };
    // Checked as sent (the schema's maxLength and pattern), then trimmed; blank clears.
    if v.chars().count() > 64 || v.contains(['/', '\n', '\r']) {
        return Err(DomainError::invalid(field, format!("`{field}` must be 1–64 characters without `/`")));
    }
    let v = v.trim().to_owned();
    Ok((!v.is_empty()).then_some(v))
}

impl Domain {
    // ------------------------------------------------------------ device side

    /// Registration (`POST /dev/devices` and the encrypted form). The same product + MAC gets
    /// the same did again. A new passcode for a known MAC replaces the old one only as the
    /// product's re-registration policy allows (a reset GAgent makes a new passcode and
    /// registers again; a stranger who knows the MAC must not take the device over): see
    /// [`crate::security`]; a refusal is `reregistration_refused`. A device that registered
    /// encrypted is refused the plain form, as the hosted cloud does.
    pub async fn register_device(
        &self,
        product_key: &str,
        mac: &str,
        passcode: &str,
        via: RegisteredVia,
        ip: Option<String>,
    ) -> Result<String> {
        let mac = normalize_mac(mac).ok_or_else(|| DomainError::invalid("mac", "mac must be 12 hex digits"))?;
        if !is_passcode(passcode) {
            return Err(DomainError::invalid("passcode", "passcode must be 1–16 printable characters"));
        }
        let now = self.clock.now_ms();
        let guessed = self.region_from_ip(ip.as_deref());
        let (key, passcode) = (product_key.to_owned(), passcode.to_owned());
        for _ in 0..3 {
            let (key, mac, passcode, ip) = (key.clone(), mac.clone(), passcode.clone(), ip.clone());
            let guessed = guessed.clone();
            let result = self
                .db
                .write(move |c| {
                    let product = find_product_by_key(c, &key)?;
                    let existing: Option<DeviceRecord> = devices::table
                        .filter(devices::product_id.eq(product.id).and(devices::mac.eq(&mac)))
                        .select(DeviceRecord::as_select())
                        .first(c)
                        .optional()?;
                    if let Some(device) = existing {
                        if via == RegisteredVia::Plain && device.registered_via() == RegisteredVia::Encrypted {
                            return Err(device_refused(
                                "this device registered encrypted; plain registration is refused",
                            ));
                        }
                        let replaces = device.passcode.as_deref().is_some_and(|known| known != passcode);
                        if replaces
                            && let Err(why) = crate::security::decide_replacement(c, &device, ip.as_deref(), now)?
                        {
                            return Ok(Err(why));
                        }
                        let did = device.did.clone().unwrap_or_else(random_did);
                        let via = if device.registered_via() == RegisteredVia::Encrypted {
                            RegisteredVia::Encrypted
                        } else {
                            via
                        };
                        diesel::update(devices::table.find(device.id))
                            .set((
                                devices::did.eq(&did),
                                devices::passcode.eq(&passcode),
                                devices::registered_via.eq(via.as_str()),
                                devices::ip.eq(ip),
                                devices::last_seen_at.eq(now),
                                devices::updated_at.eq(now),
                            ))
                            .execute(c)?;
                        if let Some(region) = &guessed {
                            crate::geoip::fill_missing_region(c, device.id, region)?;
                        }
                        return Ok(Ok(did));
                    }
                    let did = random_did();
                    let region = guessed.unwrap_or_default();
                    diesel::insert_into(devices::table)
                        .values((
                            devices::tenant_id.eq(product.tenant_id),
                            devices::product_id.eq(product.id),
                            devices::did.eq(&did),
                            devices::mac.eq(&mac),
                            devices::passcode.eq(&passcode),
                            devices::registered_via.eq(via.as_str()),
                            devices::ip.eq(ip),
                            devices::country.eq(region.country),
                            devices::province.eq(region.province),
                            devices::city.eq(region.city),
                            devices::online.eq(false),
                            devices::last_seen_at.eq(now),
                            devices::created_at.eq(now),
                            devices::updated_at.eq(now),
                        ))
                        .execute(c)?;
                    Ok(Ok(did))
                })
                .await;
            match result {
                // Two registrations of one MAC raced (or a did collided): the next round sees the winner.
                Err(DomainError::UniqueViolation) => continue,
                Ok(Err(why)) => {
                    return Err(DomainError::new(
                        ErrorCode::ReregistrationRefused,
                        format!("this MAC is registered with another passcode: {why}"),
                    ));
                }
                Ok(Ok(did)) => return Ok(did),
                Err(e) => return Err(e),
            }
        }
        Err(DomainError::Internal(anyhow::anyhow!("registration kept colliding")))
    }

    /// Provision (`GET /dev/devices/<did>`, no passcode): the device exists and may be told
    /// where MQTT is. Also the boot marker the MCU success rule needs (see `upgrades`). It
    /// carries no proof of identity, so it does not change the device's address (the one
    /// `target_fid` is trusted from, see [`crate::security`]); an unknown did is recorded.
    ///
    /// `encrypted_for`: the product key of an encrypted provision (the device must belong to
    /// it, checked before anything is written); `None` for the plain form.
    pub async fn provision_device(
        &self,
        did: &str,
        encrypted_for: Option<&str>,
        ip: Option<String>,
    ) -> Result<Provisioned> {
        let now = self.clock.now_ms();
        let guessed = self.region_from_ip(ip.as_deref());
        let did = did.to_owned();
        let encrypted_for = encrypted_for.map(str::to_owned);
        let encrypted = encrypted_for.is_some();
        let (did_for_note, pk_for_note, ip_for_note) = (did.clone(), encrypted_for.clone(), ip.clone());
        let provisioned = self
            .db
            .write(move |c| {
                let (device, product) = match find_by_did(c, &did) {
                    Ok(found) => found,
                    // An unknown did while some product adopts: tell it where MQTT is; the
                    // product it names there decides (nothing is written before that).
                    Err(DomainError::Expected { code: ErrorCode::DeviceNotFound, .. })
                        if is_did(&did) && crate::adoption::adoption_active_in(c)? =>
                    {
                        let secret = match &encrypted_for {
                            Some(pk) => find_product_by_key(c, pk).map_err(|_| device_not_found())?.product_secret,
                            None => String::new(),
                        };
                        return Ok(Provisioned { identity: None, product_secret: secret, encrypted });
                    }
                    Err(e) => return Err(e),
                };
                if encrypted_for.as_ref().is_some_and(|pk| pk != &product.product_key) {
                    return Err(device_not_found());
                }
                let is_encrypted = device.registered_via() == RegisteredVia::Encrypted;
                if is_encrypted && !encrypted {
                    return Err(device_refused("this device registered encrypted; plain provision is refused"));
                }
                diesel::update(devices::table.find(device.id))
                    .set((
                        devices::last_provision_at.eq(now),
                        devices::last_seen_at.eq(now),
                        devices::updated_at.eq(now),
                    ))
                    .execute(c)?;
                if let Some(region) = &guessed {
                    crate::geoip::fill_missing_region(c, device.id, region)?;
                }
                crate::upgrades::ota_state::provisioned(c, device.id, now)?;
                Ok(Provisioned {
                    identity: Some(identity(&device, &product)),
                    product_secret: product.product_secret,
                    encrypted: is_encrypted,
                })
            })
            .await;
        if let Err(DomainError::Expected { code: ErrorCode::DeviceNotFound, .. }) = &provisioned {
            self.note_unknown_provision(&did_for_note, pk_for_note.as_deref(), ip_for_note.as_deref()).await;
        }
        provisioned
    }

    /// An unknown did provisioned: a `refused` event of the product an encrypted provision
    /// names, else the installation's list.
    async fn note_unknown_provision(&self, did: &str, product_key: Option<&str>, source: Option<&str>) {
        let now = self.clock.now_ms();
        if let Some(pk) = product_key {
            let key = pk.to_owned();
            if let Ok(product) = self.db.run(move |c| find_product_by_key(c, &key)).await {
                let reason = "unknown did (provision)";
                if let Err(e) = self.note_refusal(product.tenant_id, product.id, did, reason, source, now).await {
                    tracing::warn!(error = %e, "could not record an unknown-did provision");
                }
                return;
            }
        }
        let channel = crate::security::Channel::Provision;
        self.note_unknown_did(did, channel, "unknown did; no product adopts", source).await;
    }

    /// `DELETE /dev/devices`: the device gives up an old did. The passcode must match, so a
    /// reset device that registered again (same did, new passcode) cannot delete itself.
    pub async fn deregister_device(&self, did: &str, passcode: &str, source: Option<&str>) -> Result<()> {
        let (did_owned, passcode) = (did.to_owned(), passcode.to_owned());
        let result = self
            .db
            .write(move |c| {
                let did = did_owned;
                let (device, _) = authenticate_in(c, &did, &passcode)?;
                if device.registered_via() == RegisteredVia::Encrypted {
                    return Err(device_refused("this device registered encrypted; plain DELETE is refused"));
                }
                diesel::delete(devices::table.find(device.id)).execute(c)?;
                Ok(())
            })
            .await;
        if let Err(DomainError::Expected { code: ErrorCode::InvalidCredentials, .. }) = &result {
            self.note_refused_passcode(did, crate::security::Channel::Deregister, source).await;
        }
        result
    }

    /// The product secret of a product key (the AES key of encrypted registration).
    pub async fn product_secret(&self, product_key: &str) -> Result<String> {
        let key = product_key.to_owned();
        self.db.run(move |c| Ok(find_product_by_key(c, &key)?.product_secret)).await
    }

    // ------------------------------------------------------------ operator side

    pub async fn list_devices(
        &self,
        who: &Authorized<Read>,
        product_key: &str,
        query: DeviceListQuery,
    ) -> Result<Page<DeviceView>> {
        let page = PageRequest::new(query.page, query.per_page)?;
        let mac_filter = mac_search(query.mac.as_deref())?;
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        let (rows, total, pk) = self
            .db
            .snapshot(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let filtered = || {
                    let mut q = devices::table.filter(devices::product_id.eq(product.id)).into_boxed();
                    if let Some(mac) = &mac_filter {
                        q = if mac.len() == 12 {
                            q.filter(devices::mac.eq(mac.clone()))
                        } else {
                            q.filter(devices::mac.like(format!("{mac}%")))
                        };
                    }
                    if let Some(did) = &query.did {
                        q = q.filter(devices::did.eq(did.clone()));
                    }
                    let mcu = query.fw_type == Some(FirmwareType::Mcu);
                    if let Some(hw) = &query.hard_version {
                        q = if mcu {
                            q.filter(devices::mcu_hw.eq(hw.clone()))
                        } else {
                            q.filter(devices::wifi_hw.eq(hw.clone()))
                        };
                    }
                    if let Some(sw) = &query.soft_version {
                        q = if mcu {
                            q.filter(devices::mcu_sw.eq(sw.clone()))
                        } else {
                            q.filter(devices::wifi_sw.eq(sw.clone()))
                        };
                    }
                    if let Some(v) = &query.country {
                        q = q.filter(devices::country.eq(v.clone()));
                    }
                    if let Some(v) = &query.province {
                        q = q.filter(devices::province.eq(v.clone()));
                    }
                    if let Some(v) = &query.city {
                        q = q.filter(devices::city.eq(v.clone()));
                    }
                    if let Some(online) = query.online {
                        q = q.filter(devices::online.eq(online));
                    }
                    match query.without_mac {
                        Some(true) => q = q.filter(devices::mac.is_null()),
                        Some(false) => q = q.filter(devices::mac.is_not_null()),
                        None => {}
                    }
                    match query.conflict {
                        Some(true) => q = q.filter(devices::conflicts.gt(0)),
                        Some(false) => q = q.filter(devices::conflicts.eq(0)),
                        None => {}
                    }
                    match query.adopted {
                        Some(true) => q = q.filter(devices::adopted_at.is_not_null()),
                        Some(false) => q = q.filter(devices::adopted_at.is_null()),
                        None => {}
                    }
                    q
                };
                let total: i64 = filtered().count().get_result(c)?;
                let rows: Vec<DeviceRecord> = filtered()
                    .order(devices::id.desc())
                    .limit(page.limit())
                    .offset(page.offset())
                    .select(DeviceRecord::as_select())
                    .load(c)?;
                Ok((rows, total, product.product_key))
            })
            .await?;
        Ok(page.wrap(rows.iter().map(|r| r.view(&pk)).collect(), total))
    }

    /// One device of the tenant, by did or MAC.
    pub async fn get_device(&self, who: &Authorized<Read>, key: &str) -> Result<DeviceView> {
        let (tenant_id, key) = (who.tenant_id(), key.to_owned());
        let (device, pk) = self.db.run(move |c| find_in_tenant(c, tenant_id, &key)).await?;
        Ok(device.view(&pk))
    }

    pub async fn update_device(
        &self,
        who: &Authorized<Write>,
        key: &str,
        req: UpdateDeviceRequest,
    ) -> Result<DeviceView> {
        let country = req.country.map(|v| clean_region_part("country", v)).transpose()?;
        let province = req.province.map(|v| clean_region_part("province", v)).transpose()?;
        let city = req.city.map(|v| clean_region_part("city", v)).transpose()?;
        let metadata = match req.metadata {
            None => None,
            Some(None) => Some(None),
            Some(Some(v)) => {
                if !v.is_object() {
                    return Err(DomainError::invalid("metadata", "metadata must be a JSON object"));
                }
                let text = v.to_string();
                if text.len() > 4096 {
                    return Err(DomainError::invalid("metadata", "metadata must be at most 4 KiB"));
                }
                Some(Some(text))
            }
        };
        let (tenant_id, key) = (who.tenant_id(), key.to_owned());
        let now = self.clock.now_ms();
        let (device, pk) = self
            .db
            .write(move |c| {
                let (device, pk) = find_in_tenant(c, tenant_id, &key)?;
                let target = devices::table.find(device.id);
                if let Some(v) = country {
                    diesel::update(target).set(devices::country.eq(v)).execute(c)?;
                }
                if let Some(v) = province {
                    diesel::update(target).set(devices::province.eq(v)).execute(c)?;
                }
                if let Some(v) = city {
                    diesel::update(target).set(devices::city.eq(v)).execute(c)?;
                }
                if let Some(v) = metadata {
                    diesel::update(target).set(devices::metadata.eq(v)).execute(c)?;
                }
                diesel::update(target).set(devices::updated_at.eq(now)).execute(c)?;
                let device = target.select(DeviceRecord::as_select()).first(c)?;
                Ok((device, pk))
            })
            .await?;
        Ok(device.view(&pk))
    }

    /// Deletes a device record and its upgrade history. A device that is still out there
    /// will fail its next login and must register again.
    pub async fn delete_device(&self, who: &Authorized<Write>, key: &str) -> Result<()> {
        let (tenant_id, key) = (who.tenant_id(), key.to_owned());
        self.db
            .write(move |c| {
                let (device, _) = find_in_tenant(c, tenant_id, &key)?;
                diesel::delete(crate::schema::upgrades::table.filter(crate::schema::upgrades::device_id.eq(device.id)))
                    .execute(c)?;
                diesel::delete(devices::table.find(device.id)).execute(c)?;
                Ok(())
            })
            .await
    }

    /// How many devices run each version, per target type: the "old firmware versions" a push
    /// rule chooses from.
    pub async fn version_distribution(&self, who: &Authorized<Read>, product_key: &str) -> Result<Vec<VersionCount>> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        self.db
            .run(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let mut out = Vec::new();
                for fw_type in [FirmwareType::Wifi, FirmwareType::Mcu] {
                    let rows: Vec<(Option<String>, Option<String>, bool, i64)> = match fw_type {
                        FirmwareType::Wifi => devices::table
                            .filter(devices::product_id.eq(product.id))
                            .filter(devices::wifi_hw.is_not_null().and(devices::wifi_sw.is_not_null()))
                            .group_by((devices::wifi_hw, devices::wifi_sw, devices::online))
                            .select((devices::wifi_hw, devices::wifi_sw, devices::online, diesel::dsl::count_star()))
                            .load(c)?,
                        FirmwareType::Mcu => devices::table
                            .filter(devices::product_id.eq(product.id))
                            .filter(devices::mcu_hw.is_not_null().and(devices::mcu_sw.is_not_null()))
                            .group_by((devices::mcu_hw, devices::mcu_sw, devices::online))
                            .select((devices::mcu_hw, devices::mcu_sw, devices::online, diesel::dsl::count_star()))
                            .load(c)?,
                    };
                    let mut merged: std::collections::BTreeMap<(String, String), (i64, i64)> = Default::default();
                    for (hw, sw, online, n) in rows {
                        let entry = merged.entry((hw.unwrap_or_default(), sw.unwrap_or_default())).or_default();
                        entry.0 += n;
                        if online {
                            entry.1 += n;
                        }
                    }
                    out.extend(merged.into_iter().map(|((hw, sw), (devices, online))| VersionCount {
                        fw_type,
                        hard_version: hw,
                        soft_version: sw,
                        devices,
                        online,
                    }));
                }
                Ok(out)
            })
            .await
    }
}

/// Inserts a device row for an import (MAC and/or the hosted cloud's did and passcode).
pub(crate) fn insert_imported(
    c: &mut DbConn,
    product: &ProductRecord,
    identity: (Option<&str>, Option<&str>, Option<&str>),
    region: &Region,
    now: i64,
) -> Result<i64> {
    let (mac, did, passcode) = identity;
    diesel::insert_into(devices::table)
        .values((
            devices::tenant_id.eq(product.tenant_id),
            devices::product_id.eq(product.id),
            devices::mac.eq(mac),
            devices::did.eq(did),
            devices::passcode.eq(passcode),
            devices::registered_via.eq(RegisteredVia::Import.as_str()),
            devices::country.eq(&region.country),
            devices::province.eq(&region.province),
            devices::city.eq(&region.city),
            devices::online.eq(false),
            devices::created_at.eq(now),
            devices::updated_at.eq(now),
        ))
        .execute(c)?;
    last_insert_id(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_normalise_or_are_refused() {
        assert_eq!(normalize_mac("5c:cf:7f:0a:1b:2c").as_deref(), Some("5CCF7F0A1B2C"));
        assert_eq!(normalize_mac("5CCF7F0A1B2C").as_deref(), Some("5CCF7F0A1B2C"));
        assert_eq!(normalize_mac("5c-cf-7f-0a-1b-2c").as_deref(), Some("5CCF7F0A1B2C"));
        assert_eq!(normalize_mac("5CCF7F0A1B2"), None);
        assert_eq!(normalize_mac("5CCF7F0A1B2G"), None);
        assert_eq!(normalize_mac(""), None);
    }

    #[test]
    fn dids_passcodes_versions() {
        assert!(is_did("uNMdYrcV3YN6DZhQPc5ugW"));
        assert!(!is_did("uNMdYrcV3YN6DZhQPc5ug"));
        assert!(!is_did("uNMdYrcV3YN6DZhQPc5ug!"));
        assert!(is_did(&random_did()));
        assert!(is_passcode("KQXBDTRLMA"));
        assert!(!is_passcode(""));
        assert!(!is_passcode("a&b"));
        assert!(!is_passcode("12345678901234567"));
        assert!(is_version("04020019"));
        assert!(is_version("00x86-os"));
        assert!(!is_version("0402&019"));
        assert!(!is_version("0402001"));
    }
}
