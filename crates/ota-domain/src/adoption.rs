//! Adoption of devices provisioned by the hosted cloud (issue 5).
//!
//! Such devices hold a did and a passcode and never register again: at boot they provision
//! (`GET /dev/devices/<did>`, no passcode) and log in over MQTT with did and passcode, retrying
//! both for ever. Each product has a policy:
//!
//! - `closed` (the default, also for a product without a row): only devices known here log in:
//!   registered here, or imported with their passcode.
//! - `imported`: devices of the imported list are adopted at their first successful MQTT login;
//!   a passcode that was not imported is learned from that login and **pinned**.
//! - `open`: as `imported`, and until `open_until`, at most `max_adoptions` unknown dids that
//!   name this product (by subscribing `ser2cli_noti/<product_key>`) are adopted with their
//!   passcode pinned. After the end (or the count) it behaves as `imported`.
//!
//! Once known, a passcode never changes without an operator action (an import into an unknown
//! passcode, or [`Domain::reset_passcode`]); a login with another passcode is refused and flags
//! the device as a conflict.
//!
//! **Events** are coalesced: one row per product, did and kind, with a count, the first and
//! last time and the last source address. Refusals and conflicts of one did are written at most
//! once a minute per process ([`EventThrottle`]); occurrences in between are added to the count
//! of the next write. A device that retries every 6 s for ever thus costs one row and one write
//! a minute.
//!
//! **Counting under several gateways:** the window's count is a conditional `UPDATE … SET
//! adopted_in_window = adopted_in_window + 1 WHERE … adopted_in_window < max_adoptions` in the
//! same transaction as the device insert, so the limit holds whichever gateway adopts.

use std::collections::HashMap;
use std::sync::Mutex;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{
    AdoptionEventKind, AdoptionEventQuery, AdoptionEventView, AdoptionPolicy, AdoptionStats, AdoptionView, DeviceView,
    Page, RegisteredVia, SetAdoptionRequest,
};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::DbConn;
use crate::devices::{DeviceIdentity, DeviceRecord, find_by_did, find_in_tenant, find_product_by_key, identity};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::products::{ProductRecord, find_product};
use crate::schema::{adoption_events, adoption_policies, devices};
use crate::stored::Stored;

/// Refusals and conflicts of one did are written at most this often (per process).
pub const EVENT_WRITE_INTERVAL_MS: i64 = 60_000;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = adoption_policies)]
pub struct PolicyRecord {
    pub product_id: i64,
    pub policy: Stored<AdoptionPolicy>,
    pub open_until: Option<i64>,
    pub max_adoptions: Option<i64>,
    pub adopted_in_window: i64,
    pub updated_at: i64,
}

impl PolicyRecord {
    pub fn policy(&self) -> AdoptionPolicy {
        self.policy.get()
    }

    /// Whether an unknown did may be adopted now.
    pub fn window_open(&self, now: i64) -> bool {
        self.policy() == AdoptionPolicy::Open
            && self.open_until.is_some_and(|end| now < end)
            && self.max_adoptions.is_some_and(|max| self.adopted_in_window < max)
    }
}

/// The policy of a product (`closed` when it has no row).
fn policy_of(c: &mut DbConn, product_id: i64) -> Result<Option<PolicyRecord>> {
    Ok(adoption_policies::table.find(product_id).select(PolicyRecord::as_select()).first(c).optional()?)
}

fn effective(policy: Option<&PolicyRecord>) -> AdoptionPolicy {
    policy.map_or(AdoptionPolicy::Closed, PolicyRecord::policy)
}

/// Why an unknown did that names this product is refused.
fn unknown_refusal(policy: Option<&PolicyRecord>, now: i64) -> &'static str {
    match policy {
        None => "unknown did; the product is closed",
        Some(p) => match p.policy() {
            AdoptionPolicy::Closed => "unknown did; the product is closed",
            AdoptionPolicy::Imported => "unknown did; not in the imported list",
            AdoptionPolicy::Open if p.open_until.is_none_or(|end| now >= end) => {
                "unknown did; the open window has ended"
            }
            AdoptionPolicy::Open => "unknown did; the open window reached max_adoptions",
        },
    }
}

/// Whether any product adopts (see [`Domain::adoption_active`]).
pub(crate) fn adoption_active_in(c: &mut DbConn) -> Result<bool> {
    let n: i64 = adoption_policies::table
        .filter(adoption_policies::policy.ne(AdoptionPolicy::Closed.as_str()))
        .count()
        .get_result(c)?;
    Ok(n > 0)
}

/// What the MQTT edge does with a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginDecision {
    Accepted(DeviceIdentity),
    /// An unknown did while some product adopts: accept the CONNECT and wait for the device to
    /// name its product (`ser2cli_noti/<product_key>`), then call [`Domain::adopt_unknown`].
    Provisional,
    /// CONNACK 4.
    Refused,
}

/// Counts an MQTT login the domain refuses, by reason (`crate::metrics`).
fn refused_login(reason: &'static str) {
    metrics::counter!(crate::metrics::DEVICE_LOGIN_REFUSALS, "channel" => "mqtt", "reason" => reason).increment(1);
}

/// Per-process rate limit of refusal and conflict writes (see the module doc).
#[derive(Debug, Default)]
pub struct EventThrottle {
    seen: Mutex<HashMap<(String, AdoptionEventKind), (i64, i64)>>,
}

impl EventThrottle {
    /// `Some(n)`: write now, adding `n` occurrences; `None`: only counted for the next write.
    pub(crate) fn admit(&self, did: &str, kind: AdoptionEventKind, now: i64) -> Option<i64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 100_000 {
            seen.retain(|_, (last, _)| now - *last < EVENT_WRITE_INTERVAL_MS);
        }
        let entry = seen.entry((did.to_owned(), kind)).or_insert((i64::MIN, 0));
        entry.1 += 1;
        if entry.0 == i64::MIN || now - entry.0 >= EVENT_WRITE_INTERVAL_MS {
            let n = entry.1;
            *entry = (now, 0);
            Some(n)
        } else {
            None
        }
    }
}

/// An event to record, coalesced into its (product, did, kind) row.
pub(crate) struct Event<'a> {
    pub(crate) tenant_id: i64,
    pub(crate) product_id: i64,
    pub(crate) did: &'a str,
    pub(crate) kind: AdoptionEventKind,
    pub(crate) reason: Option<&'a str>,
    pub(crate) source: Option<&'a str>,
    pub(crate) count: i64,
}

pub(crate) fn record(c: &mut DbConn, e: &Event<'_>, now: i64) -> Result<()> {
    let row = || {
        adoption_events::table
            .filter(adoption_events::product_id.eq(e.product_id))
            .filter(adoption_events::did.eq(e.did))
            .filter(adoption_events::kind.eq(e.kind.as_str()))
    };
    let bump = |c: &mut DbConn| -> Result<usize> {
        Ok(diesel::update(row())
            .set((
                adoption_events::count.eq(adoption_events::count + e.count),
                adoption_events::last_at.eq(now),
                adoption_events::reason.eq(e.reason),
                adoption_events::source.eq(e.source),
            ))
            .execute(c)?)
    };
    if bump(c)? > 0 {
        return Ok(());
    }
    // A savepoint, so a lost insert race (PostgreSQL aborts the transaction on an error) only
    // undoes the insert; the winner's row is then bumped.
    let inserted = c.transaction(|c| {
        diesel::insert_into(adoption_events::table)
            .values((
                adoption_events::tenant_id.eq(e.tenant_id),
                adoption_events::product_id.eq(e.product_id),
                adoption_events::did.eq(e.did),
                adoption_events::kind.eq(e.kind.as_str()),
                adoption_events::reason.eq(e.reason),
                adoption_events::source.eq(e.source),
                adoption_events::count.eq(e.count),
                adoption_events::first_at.eq(now),
                adoption_events::last_at.eq(now),
            ))
            .execute(c)
            .map_err(DomainError::from)
    });
    match inserted {
        Ok(_) => Ok(()),
        Err(DomainError::UniqueViolation) => bump(c).map(|_| ()),
        Err(e) => Err(e),
    }
}

/// What a login with a known did does, decided in one transaction.
enum Known {
    Accepted(DeviceIdentity),
    Conflict { tenant_id: i64, product_id: i64 },
    Refused { tenant_id: i64, product_id: i64, reason: &'static str },
}

impl Domain {
    pub(crate) fn event_throttle(&self) -> &EventThrottle {
        &self.adoption_throttle
    }

    /// Whether any product adopts (`imported` or `open`): unknown dids are then provisioned and
    /// accepted provisionally, so that they can name their product and be adopted or refused
    /// (and listed as refused) under it.
    pub async fn adoption_active(&self) -> Result<bool> {
        self.db.run(adoption_active_in).await
    }

    /// The MQTT login check: did and passcode, with adoption and pinning. An accepted login
    /// also applies the device's held `target_fid` reports from its address (see
    /// [`crate::security`]); an unknown did refused here is recorded for installation admins.
    pub async fn device_login(&self, did: &str, passcode: &str, source: Option<String>) -> Result<LoginDecision> {
        let now = self.clock.now_ms();
        let did_owned = did.to_owned();
        let found = self
            .db
            .run(move |c| match find_by_did(c, &did_owned) {
                Ok((device, product)) => {
                    let held = crate::security::held_of(c, device.id)?;
                    Ok(Some((device, product, held)))
                }
                Err(DomainError::Expected { code: ErrorCode::DeviceNotFound, .. }) => Ok(None),
                Err(e) => Err(e),
            })
            .await?;
        let Some((device, product, held)) = found else {
            if self.adoption_active().await? {
                return Ok(LoginDecision::Provisional);
            }
            let reason = "unknown did; no product adopts";
            self.note_unknown_did(did, crate::security::Channel::Mqtt, reason, source.as_deref()).await;
            refused_login("unknown_did");
            return Ok(LoginDecision::Refused);
        };
        // The hot path: a known passcode, nothing to write.
        let first_login_of_import = device.registered_via() == RegisteredVia::Import && device.adopted_at.is_none();
        if device.passcode.as_deref() == Some(passcode) && !first_login_of_import {
            return Ok(self.accept_login(identity(&device, &product), held, source.as_deref()).await);
        }
        if device.passcode.as_deref().is_some_and(|p| p != passcode) {
            self.note_conflict(device.tenant_id, device.product_id, device.id, did, source.as_deref(), now).await?;
            refused_login("wrong_passcode");
            return Ok(LoginDecision::Refused);
        }
        let (did_owned, passcode_owned, source_owned) = (did.to_owned(), passcode.to_owned(), source.clone());
        let known = self
            .db
            .write(move |c| {
                let (device, product) = find_by_did(c, &did_owned)?;
                login_known(c, &device, &product, &passcode_owned, source_owned.as_deref(), now)
            })
            .await?;
        match known {
            Known::Accepted(identity) => Ok(self.accept_login(identity, held, source.as_deref()).await),
            Known::Conflict { tenant_id, product_id } => {
                self.note_conflict(tenant_id, product_id, device.id, did, source.as_deref(), now).await?;
                refused_login("wrong_passcode");
                Ok(LoginDecision::Refused)
            }
            Known::Refused { tenant_id, product_id, reason } => {
                self.note_refusal(tenant_id, product_id, did, reason, source.as_deref(), now).await?;
                refused_login("registration_policy");
                Ok(LoginDecision::Refused)
            }
        }
    }

    async fn accept_login(
        &self,
        identity: DeviceIdentity,
        held: Vec<crate::security::HeldReport>,
        source: Option<&str>,
    ) -> LoginDecision {
        if !held.is_empty()
            && let Some(source) = source
        {
            self.apply_held_reports(&identity, held, source).await;
        }
        LoginDecision::Accepted(identity)
    }

    /// A provisional session named its product: adopt the unknown did if the product's open
    /// window allows, else record the refusal. `None` = refused (the edge closes the session).
    pub async fn adopt_unknown(
        &self,
        did: &str,
        passcode: &str,
        product_key: &str,
        source: Option<String>,
    ) -> Result<Option<DeviceIdentity>> {
        if !crate::devices::is_did(did) || !crate::devices::is_passcode(passcode) {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let (d, p, k, src) = (did.to_owned(), passcode.to_owned(), product_key.to_owned(), source.clone());
        let outcome = self
            .db
            .write(move |c| {
                let Ok(product) = find_product_by_key(c, &k) else { return Ok(Err(None)) };
                if find_by_did(c, &d).is_ok() {
                    // Adopted meanwhile (another gateway) or imported: the next login is a normal one.
                    return Ok(Err(None));
                }
                let policy = policy_of(c, product.id)?;
                let counted = diesel::update(
                    adoption_policies::table
                        .filter(adoption_policies::product_id.eq(product.id))
                        .filter(adoption_policies::policy.eq(AdoptionPolicy::Open.as_str()))
                        .filter(adoption_policies::open_until.gt(now))
                        .filter(adoption_policies::adopted_in_window.nullable().lt(adoption_policies::max_adoptions)),
                )
                .set(adoption_policies::adopted_in_window.eq(adoption_policies::adopted_in_window + 1))
                .execute(c)?;
                if counted == 0 {
                    return Ok(Err(Some((product, unknown_refusal(policy.as_ref(), now)))));
                }
                diesel::insert_into(devices::table)
                    .values((
                        devices::tenant_id.eq(product.tenant_id),
                        devices::product_id.eq(product.id),
                        devices::did.eq(&d),
                        devices::passcode.eq(&p),
                        devices::registered_via.eq(RegisteredVia::Adopted.as_str()),
                        devices::ip.eq(&src),
                        devices::online.eq(false),
                        devices::last_seen_at.eq(now),
                        devices::adopted_at.eq(now),
                        devices::passcode_pinned_at.eq(now),
                        devices::created_at.eq(now),
                        devices::updated_at.eq(now),
                    ))
                    .execute(c)?;
                let (device, product) = find_by_did(c, &d)?;
                for (kind, reason) in [
                    (AdoptionEventKind::Adopted, "open window"),
                    (AdoptionEventKind::Pinned, "passcode of the adopting login"),
                ] {
                    let e = Event {
                        tenant_id: product.tenant_id,
                        product_id: product.id,
                        did: &d,
                        kind,
                        reason: Some(reason),
                        source: src.as_deref(),
                        count: 1,
                    };
                    record(c, &e, now)?;
                }
                Ok(Ok(identity(&device, &product)))
            })
            .await;
        match outcome {
            Ok(Ok(identity)) => Ok(Some(identity)),
            Ok(Err(None)) | Err(DomainError::UniqueViolation) => Ok(None),
            Ok(Err(Some((product, reason)))) => {
                self.note_refusal(product.tenant_id, product.id, did, reason, source.as_deref(), now).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn note_refusal(
        &self,
        tenant_id: i64,
        product_id: i64,
        did: &str,
        reason: &'static str,
        source: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let Some(count) = self.event_throttle().admit(did, AdoptionEventKind::Refused, now) else { return Ok(()) };
        let (did, source) = (did.to_owned(), source.map(str::to_owned));
        self.db
            .write(move |c| {
                let e = Event {
                    tenant_id,
                    product_id,
                    did: &did,
                    kind: AdoptionEventKind::Refused,
                    reason: Some(reason),
                    source: source.as_deref(),
                    count,
                };
                record(c, &e, now)
            })
            .await
    }

    pub(crate) async fn note_conflict(
        &self,
        tenant_id: i64,
        product_id: i64,
        device_id: i64,
        did: &str,
        source: Option<&str>,
        now: i64,
    ) -> Result<()> {
        let Some(count) = self.event_throttle().admit(did, AdoptionEventKind::Conflict, now) else { return Ok(()) };
        let (did, source) = (did.to_owned(), source.map(str::to_owned));
        self.db
            .write(move |c| {
                diesel::update(devices::table.find(device_id))
                    .set(devices::conflicts.eq(devices::conflicts + count))
                    .execute(c)?;
                let e = Event {
                    tenant_id,
                    product_id,
                    did: &did,
                    kind: AdoptionEventKind::Conflict,
                    reason: Some("a login presented another passcode for this did"),
                    source: source.as_deref(),
                    count,
                };
                record(c, &e, now)
            })
            .await
    }

    // ------------------------------------------------------------ operator side

    pub async fn get_adoption(&self, who: &Authorized<Read>, product_key: &str) -> Result<AdoptionView> {
        let (tenant_id, key, now) = (who.tenant_id(), product_key.to_owned(), self.clock.now_ms());
        self.db
            .snapshot(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                adoption_view(c, &product, now)
            })
            .await
    }

    /// Sets a product's policy. Every call starts a new window count (`adopted_in_window` = 0).
    pub async fn set_adoption(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        req: SetAdoptionRequest,
    ) -> Result<AdoptionView> {
        let now = self.clock.now_ms();
        let (open_until, max) = match &req {
            SetAdoptionRequest::Open { open_until, max_adoptions } => {
                let end = open_until.timestamp_millis();
                if end <= now {
                    return Err(DomainError::invalid("open_until", "open_until must be in the future"));
                }
                if !(1..=1_000_000_000).contains(max_adoptions) {
                    return Err(DomainError::invalid("max_adoptions", "max_adoptions must be 1–1000000000"));
                }
                (Some(end), Some(*max_adoptions))
            }
            SetAdoptionRequest::Closed {} | SetAdoptionRequest::Imported {} => (None, None),
        };
        let (tenant_id, key, policy) = (who.tenant_id(), product_key.to_owned(), req.policy());
        self.db
            .write(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                diesel::delete(adoption_policies::table.find(product.id)).execute(c)?;
                diesel::insert_into(adoption_policies::table)
                    .values((
                        adoption_policies::product_id.eq(product.id),
                        adoption_policies::policy.eq(policy.as_str()),
                        adoption_policies::open_until.eq(open_until),
                        adoption_policies::max_adoptions.eq(max),
                        adoption_policies::adopted_in_window.eq(0),
                        adoption_policies::updated_at.eq(now),
                    ))
                    .execute(c)?;
                adoption_view(c, &product, now)
            })
            .await
    }

    pub async fn list_adoption_events(
        &self,
        who: &Authorized<Read>,
        product_key: &str,
        query: AdoptionEventQuery,
    ) -> Result<Page<AdoptionEventView>> {
        let page = PageRequest::new(query.page, query.per_page)?;
        let did = crate::validate::did_prefix(query.did.as_deref())?;
        let (tenant_id, key, kind) = (who.tenant_id(), product_key.to_owned(), query.kind);
        type Row = (String, Stored<AdoptionEventKind>, Option<String>, Option<String>, i64, i64, i64);
        let (rows, total) = self
            .db
            .snapshot(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let filtered = || {
                    let mut q = adoption_events::table.filter(adoption_events::product_id.eq(product.id)).into_boxed();
                    if let Some(kind) = kind {
                        q = q.filter(adoption_events::kind.eq(kind.as_str()));
                    }
                    if let Some(did) = &did {
                        q = if did.len() == 22 {
                            q.filter(adoption_events::did.eq(did.clone()))
                        } else {
                            q.filter(adoption_events::did.like(format!("{did}%")))
                        };
                    }
                    q
                };
                let total: i64 = filtered().count().get_result(c)?;
                let rows: Vec<Row> = filtered()
                    .order((adoption_events::last_at.desc(), adoption_events::id.desc()))
                    .limit(page.limit())
                    .offset(page.offset())
                    .select((
                        adoption_events::did,
                        adoption_events::kind,
                        adoption_events::reason,
                        adoption_events::source,
                        adoption_events::count,
                        adoption_events::first_at,
                        adoption_events::last_at,
                    ))
                    .load(c)?;
                Ok((rows, total))
            })
            .await?;
        let items = rows
            .into_iter()
            .map(|(did, kind, reason, source, count, first_at, last_at)| AdoptionEventView {
                did,
                kind: kind.get(),
                reason,
                source,
                count,
                first_at: from_ms(first_at),
                last_at: from_ms(last_at),
            })
            .collect();
        Ok(page.wrap(items, total))
    }

    /// Operator unpins a passcode: it is forgotten, conflicts are cleared, and the device's next
    /// MQTT login pins whatever passcode it presents, whatever the product's policy.
    pub async fn reset_passcode(&self, who: &Authorized<Write>, key: &str) -> Result<DeviceView> {
        let now = self.clock.now_ms();
        let (tenant_id, key, source) = (who.tenant_id(), key.to_owned(), format!("api:{}", who.username()));
        let (device, pk) = self
            .db
            .write(move |c| {
                let (device, pk) = find_in_tenant(c, tenant_id, &key)?;
                let Some(did) = device.did.clone() else {
                    return Err(DomainError::field(
                        ErrorCode::InvalidPath,
                        "device",
                        "this device has no did yet, so it has no passcode to reset",
                    ));
                };
                let target = devices::table.find(device.id);
                diesel::update(target)
                    .set((
                        devices::passcode.eq(None::<String>),
                        devices::repin.eq(true),
                        devices::conflicts.eq(0),
                        devices::updated_at.eq(now),
                    ))
                    .execute(c)?;
                let e = Event {
                    tenant_id: device.tenant_id,
                    product_id: device.product_id,
                    did: &did,
                    kind: AdoptionEventKind::Reset,
                    reason: Some("operator reset; the next login pins its passcode"),
                    source: Some(&source),
                    count: 1,
                };
                record(c, &e, now)?;
                Ok((target.select(DeviceRecord::as_select()).first(c)?, pk))
            })
            .await?;
        Ok(device.view(&pk))
    }
}

/// A login of a did that is in the registry, whose passcode is unknown (or whose import was
/// never adopted): pin, adopt, or refuse.
fn login_known(
    c: &mut DbConn,
    device: &DeviceRecord,
    product: &ProductRecord,
    passcode: &str,
    source: Option<&str>,
    now: i64,
) -> Result<Known> {
    let policy = policy_of(c, product.id)?;
    let imported = device.registered_via() == RegisteredVia::Import;
    let mut events: Vec<(AdoptionEventKind, &'static str)> = Vec::new();
    match device.passcode.as_deref() {
        Some(known) if known != passcode => {
            return Ok(Known::Conflict { tenant_id: device.tenant_id, product_id: device.product_id });
        }
        Some(_) => {}
        None => {
            if !device.repin && effective(policy.as_ref()) == AdoptionPolicy::Closed {
                return Ok(Known::Refused {
                    tenant_id: device.tenant_id,
                    product_id: device.product_id,
                    reason: "passcode unknown and the product is closed; import it or set the policy to imported",
                });
            }
            if !crate::devices::is_passcode(passcode) {
                return Ok(Known::Refused {
                    tenant_id: device.tenant_id,
                    product_id: device.product_id,
                    reason: "the presented passcode is not one GAgent could send",
                });
            }
            // Conditional: of two logins racing to pin (two gateways), one wins; the other
            // finds the passcode set and is a conflict.
            let pinned = diesel::update(devices::table.find(device.id).filter(devices::passcode.is_null()))
                .set((
                    devices::passcode.eq(passcode),
                    devices::passcode_pinned_at.eq(now),
                    devices::repin.eq(false),
                    devices::updated_at.eq(now),
                ))
                .execute(c)?;
            if pinned == 0 {
                let current: Option<String> = devices::table.find(device.id).select(devices::passcode).first(c)?;
                if current.as_deref() != Some(passcode) {
                    return Ok(Known::Conflict { tenant_id: device.tenant_id, product_id: device.product_id });
                }
            } else {
                let why = if device.repin { "first login after an operator reset" } else { "first login of an import" };
                events.push((AdoptionEventKind::Pinned, why));
            }
        }
    }
    if imported && device.adopted_at.is_none() {
        diesel::update(devices::table.find(device.id))
            .set((devices::adopted_at.eq(now), devices::updated_at.eq(now)))
            .execute(c)?;
        events.push((AdoptionEventKind::Adopted, "imported list"));
    }
    for (kind, reason) in events {
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
    }
    Ok(Known::Accepted(identity(device, product)))
}

/// The V4.1 check (`update_and_check`) authenticates with did and passcode like an MQTT login, and
/// at boot GAgent makes it *before* logging in
/// (`device-protocol.md#observed-mqtt-waiting-for-the-boot-ota-chain`), so it pins and adopts by
/// the same rules; otherwise an imported device's versions would stay unknown until its next boot.
pub(crate) fn authenticate_check(
    c: &mut DbConn,
    did: &str,
    passcode: &str,
    source: Option<&str>,
    now: i64,
) -> Result<(DeviceRecord, ProductRecord)> {
    let refused = || DomainError::new(ErrorCode::InvalidCredentials, "unknown did or wrong passcode");
    let (device, product) = find_by_did(c, did).map_err(|_| refused())?;
    let first_login_of_import = device.registered_via() == RegisteredVia::Import && device.adopted_at.is_none();
    if device.passcode.as_deref() == Some(passcode) && !first_login_of_import {
        return Ok((device, product));
    }
    if device.passcode.as_deref().is_some_and(|p| p != passcode) {
        return Err(refused());
    }
    match login_known(c, &device, &product, passcode, source, now)? {
        Known::Accepted(_) => find_by_did(c, did),
        Known::Conflict { .. } | Known::Refused { .. } => Err(refused()),
    }
}

fn adoption_view(c: &mut DbConn, product: &ProductRecord, now: i64) -> Result<AdoptionView> {
    let policy = policy_of(c, product.id)?;
    let of_product = || devices::table.filter(devices::product_id.eq(product.id));
    let stats = AdoptionStats {
        imported_waiting: of_product()
            .filter(devices::registered_via.eq(RegisteredVia::Import.as_str()))
            .filter(devices::did.is_not_null())
            .filter(devices::adopted_at.is_null())
            .count()
            .get_result(c)?,
        adopted: of_product().filter(devices::adopted_at.is_not_null()).count().get_result(c)?,
        adopted_without_mac: of_product()
            .filter(devices::adopted_at.is_not_null())
            .filter(devices::mac.is_null())
            .count()
            .get_result(c)?,
        conflicted: of_product().filter(devices::conflicts.gt(0)).count().get_result(c)?,
        refused_dids: adoption_events::table
            .filter(adoption_events::product_id.eq(product.id))
            .filter(adoption_events::kind.eq(AdoptionEventKind::Refused.as_str()))
            .count()
            .get_result(c)?,
    };
    Ok(AdoptionView {
        product_key: product.product_key.clone(),
        policy: effective(policy.as_ref()),
        open_until: policy.as_ref().and_then(|p| p.open_until).map(from_ms),
        max_adoptions: policy.as_ref().and_then(|p| p.max_adoptions),
        adopted_in_window: policy.as_ref().map_or(0, |p| p.adopted_in_window),
        window_open: policy.as_ref().is_some_and(|p| p.window_open(now)),
        updated_at: policy.as_ref().map(|p| from_ms(p.updated_at)),
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: &str, open_until: Option<i64>, max: Option<i64>, adopted: i64) -> PolicyRecord {
        PolicyRecord {
            product_id: 1,
            policy: Stored(AdoptionPolicy::parse(kind).unwrap()),
            open_until,
            max_adoptions: max,
            adopted_in_window: adopted,
            updated_at: 0,
        }
    }

    #[test]
    fn a_window_is_open_only_before_its_end_and_below_its_count() {
        assert!(policy("open", Some(100), Some(2), 1).window_open(99));
        assert!(!policy("open", Some(100), Some(2), 1).window_open(100));
        assert!(!policy("open", Some(100), Some(2), 2).window_open(0));
        assert!(!policy("imported", Some(100), Some(2), 0).window_open(0));
        assert!(!policy("open", None, Some(2), 0).window_open(0));
    }

    #[test]
    fn refusals_say_why() {
        assert!(unknown_refusal(None, 0).contains("closed"));
        assert!(unknown_refusal(Some(&policy("imported", None, None, 0)), 0).contains("imported list"));
        assert!(unknown_refusal(Some(&policy("open", Some(10), Some(1), 0)), 10).contains("ended"));
        assert!(unknown_refusal(Some(&policy("open", Some(10), Some(1), 1)), 5).contains("max_adoptions"));
    }

    #[test]
    fn the_throttle_writes_once_a_minute_and_carries_the_count() {
        let t = EventThrottle::default();
        let k = AdoptionEventKind::Refused;
        assert_eq!(t.admit("d", k, 0), Some(1));
        assert_eq!(t.admit("d", k, 6_000), None);
        assert_eq!(t.admit("d", k, 12_000), None);
        assert_eq!(t.admit("e", k, 12_000), Some(1));
        assert_eq!(t.admit("d", k, 60_000), Some(3));
        assert_eq!(t.admit("d", AdoptionEventKind::Conflict, 60_001), Some(1));
    }
}
