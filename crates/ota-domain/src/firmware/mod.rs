//! The firmware registry: upload, list, get, download, edit and delete, with the hosted
//! console's rules (see `rules`) and fid assignment.

pub mod intel_hex;
pub mod rules;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{FirmwareListQuery, FirmwareType, FirmwareView, Page, PushMethod, PushStatus};

use crate::Domain;
use crate::access::{Authorized, Read, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::products::find_product;
use crate::schema::{firmware, products};
use crate::store::{BlobStream, StagedFile};
use crate::stored::Stored;

use rules::*;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = firmware)]
pub struct FirmwareRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub name: String,
    pub fw_type: Stored<FirmwareType>,
    pub push_method: Stored<PushMethod>,
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    pub fid: Option<i64>,
    pub file_name: String,
    pub size: i64,
    pub md5: String,
    pub sha256: String,
    pub crc32: i64,
    pub verified: bool,
    pub verified_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl FirmwareRecord {
    pub fn fw_type(&self) -> FirmwareType {
        self.fw_type.get()
    }

    pub fn push_method(&self) -> PushMethod {
        self.push_method.get()
    }

    /// `status`: derived from the firmware's push rules (see [`crate::rules::push_statuses`]).
    pub fn view(&self, product_key: &str, status: PushStatus) -> FirmwareView {
        FirmwareView {
            id: self.id,
            product_key: product_key.to_owned(),
            name: self.name.clone(),
            fw_type: self.fw_type(),
            push_method: self.push_method(),
            hard_version: self.hard_version.clone(),
            soft_version: self.soft_version.clone(),
            fid: self.fid,
            file_name: self.file_name.clone(),
            size: self.size,
            md5: self.md5.clone(),
            sha256: self.sha256.clone(),
            crc32: format!("{:08x}", self.crc32),
            verified: self.verified,
            verified_at: self.verified_at.map(from_ms),
            push_status: status,
            download_path: format!("/api/v1/firmware/{}/file", self.id),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
        }
    }
}

/// The fields of an upload as received; every one is validated here.
#[derive(Debug, Default)]
pub struct FirmwareUpload {
    pub name: Option<String>,
    pub fw_type: Option<String>,
    pub push_method: Option<String>,
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    pub file: Option<StagedFile>,
}

/// Optional form values: an empty field (as HTML forms send) counts as absent.
fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

struct ValidUpload {
    name: String,
    fw_type: FirmwareType,
    method: PushMethod,
    hard_version: Option<String>,
    soft_version: Option<String>,
}

fn validate_fields(upload: &FirmwareUpload) -> Result<ValidUpload> {
    let name = present(&upload.name).ok_or_else(|| DomainError::missing("name"))?;
    validate_name(name)?;
    let fw_type = parse_type(present(&upload.fw_type))?;
    let method = parse_push_method(present(&upload.push_method))?;
    check_method_type(method, fw_type)?;
    let from_name = upload.file.as_ref().and_then(|f| versions_from_file_name(&f.file_name));
    let hard_version =
        present(&upload.hard_version).map(str::to_owned).or_else(|| from_name.as_ref().map(|(hw, _)| hw.clone()));
    let soft_version =
        present(&upload.soft_version).map(str::to_owned).or_else(|| from_name.as_ref().map(|(_, sw)| sw.clone()));
    if let Some(hw) = &hard_version {
        validate_version("hard_version", hw)?;
    }
    if let Some(sw) = &soft_version {
        validate_version("soft_version", sw)?;
    }
    if method != PushMethod::V1V3 {
        if hard_version.is_none() {
            return Err(DomainError::missing("hard_version"));
        }
        if soft_version.is_none() {
            return Err(DomainError::missing("soft_version"));
        }
    }
    Ok(ValidUpload { name: name.to_owned(), fw_type, method, hard_version, soft_version })
}

/// Size floor, extension by type, and Intel HEX validity for `.hex`.
async fn validate_file(fw_type: FirmwareType, file: &StagedFile) -> Result<()> {
    check_extension(fw_type, file.extension().as_deref())?;
    if file.size < MIN_FIRMWARE_BYTES {
        return Err(DomainError::with_details(
            ErrorCode::FirmwareTooSmall,
            format!("the file has {} bytes; firmware must be at least {MIN_FIRMWARE_BYTES}", file.size),
            serde_json::json!({ "field": "file", "min_bytes": MIN_FIRMWARE_BYTES }),
        ));
    }
    if file.extension().as_deref() == Some("hex") {
        let path = file.path().to_owned();
        let outcome = tokio::task::spawn_blocking(move || std::fs::read(path).map(|d| intel_hex::validate(&d)))
            .await
            .map_err(|e| DomainError::Internal(anyhow::anyhow!("hex check task: {e}")))??;
        if let Err(e) = outcome {
            return Err(DomainError::with_details(
                ErrorCode::InvalidIntelHex,
                format!("not valid Intel HEX at line {}: {}", e.line, e.reason),
                serde_json::json!({ "field": "file", "line": e.line, "reason": e.reason }),
            ));
        }
    }
    Ok(())
}

/// The next fid: V1V3 counts per product, V4 per fid series (product, type, hw, sw).
fn next_fid(
    c: &mut DbConn,
    product_id: i64,
    method: PushMethod,
    fw_type: FirmwareType,
    hw: Option<&str>,
    sw: Option<&str>,
) -> Result<Option<i64>> {
    let base = firmware::table
        .filter(firmware::product_id.eq(product_id))
        .filter(firmware::push_method.eq(method.as_str()))
        .into_boxed();
    let max: Option<i64> = match method {
        PushMethod::V41 => return Ok(None),
        PushMethod::V1V3 => base.select(diesel::dsl::max(firmware::fid)).first(c)?,
        PushMethod::V4 => base
            .filter(firmware::fw_type.eq(fw_type.as_str()))
            .filter(firmware::hard_version.eq(hw.unwrap_or_default()))
            .filter(firmware::soft_version.eq(sw.unwrap_or_default()))
            .select(diesel::dsl::max(firmware::fid))
            .first(c)?,
    };
    Ok(Some(max.unwrap_or(0) + 1))
}

fn version_exists(fw_type: FirmwareType, hw: Option<&str>, sw: Option<&str>) -> DomainError {
    DomainError::with_details(
        ErrorCode::FirmwareVersionExists,
        format!(
            "this product already has V4.1 {} firmware with hard_version {} and soft_version {}",
            fw_type.as_str(),
            hw.unwrap_or_default(),
            sw.unwrap_or_default()
        ),
        serde_json::json!({ "field": "soft_version" }),
    )
}

type FileColumns = (
    diesel::dsl::Eq<firmware::file_name, String>,
    diesel::dsl::Eq<firmware::size, i64>,
    diesel::dsl::Eq<firmware::md5, String>,
    diesel::dsl::Eq<firmware::sha256, String>,
    diesel::dsl::Eq<firmware::crc32, i64>,
);

/// The columns that describe a stored file, for inserts and for file replacement alike.
fn file_columns(file: &StagedFile) -> FileColumns {
    (
        firmware::file_name.eq(file.file_name.clone()),
        firmware::size.eq(file.size as i64),
        firmware::md5.eq(file.md5.clone()),
        firmware::sha256.eq(file.sha256.clone()),
        firmware::crc32.eq(i64::from(file.crc32)),
    )
}

/// How often a fid assignment that lost a race on PostgreSQL is tried again.
const FID_ATTEMPTS: usize = 8;

fn firmware_not_found() -> DomainError {
    DomainError::new(ErrorCode::FirmwareNotFound, "no such firmware in this tenant")
}

fn locked() -> DomainError {
    DomainError::new(ErrorCode::FirmwareLocked, "verified firmware is locked and cannot be edited")
}

/// Loads a firmware of the tenant with its product key.
pub(crate) fn find_firmware(c: &mut DbConn, tenant_id: i64, id: i64) -> Result<(FirmwareRecord, String)> {
    firmware::table
        .inner_join(products::table)
        .filter(firmware::id.eq(id).and(firmware::tenant_id.eq(tenant_id)))
        .select((FirmwareRecord::as_select(), products::product_key))
        .first(c)
        .optional()?
        .ok_or_else(firmware_not_found)
}

/// Firmware with its product key and derived push status.
fn with_status(c: &mut DbConn, tenant_id: i64, id: i64) -> Result<(FirmwareRecord, String, PushStatus)> {
    let (record, pk) = find_firmware(c, tenant_id, id)?;
    let status = crate::rules::push_statuses(c, &[id])?.get(&id).copied().unwrap_or(PushStatus::NotStarted);
    Ok((record, pk, status))
}

fn blob_references(c: &mut DbConn, sha256: &str) -> Result<i64> {
    Ok(firmware::table.filter(firmware::sha256.eq(sha256)).count().get_result(c)?)
}

impl Domain {
    /// Creates firmware from a staged upload. On any failure neither a row nor a stored file
    /// remains (the staged file removes itself when dropped).
    pub async fn create_firmware(
        &self,
        who: &Authorized<Write>,
        product_key: &str,
        upload: FirmwareUpload,
    ) -> Result<FirmwareView> {
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        let product = self.db.run(move |c| find_product(c, tenant_id, &key)).await?;
        let valid = validate_fields(&upload)?;
        let file = upload.file.ok_or_else(|| DomainError::missing("file"))?;
        validate_file(valid.fw_type, &file).await?;

        let _blobs = self.blob_lock.lock().await;
        self.store.put(&file).await?;
        let now = self.clock.now_ms();
        let mut attempt = 0;
        let inserted = loop {
            attempt += 1;
            let product_id = product.id;
            let (name, hw, sw) = (valid.name.clone(), valid.hard_version.clone(), valid.soft_version.clone());
            let (fw_type, method) = (valid.fw_type, valid.method);
            let columns = file_columns(&file);
            let result = self
                .db
                .write(move |c| {
                    let fid = next_fid(c, product_id, method, fw_type, hw.as_deref(), sw.as_deref())?;
                    diesel::insert_into(firmware::table)
                        .values((
                            firmware::tenant_id.eq(tenant_id),
                            firmware::product_id.eq(product_id),
                            firmware::name.eq(name),
                            firmware::fw_type.eq(fw_type.as_str()),
                            firmware::push_method.eq(method.as_str()),
                            firmware::hard_version.eq(hw),
                            firmware::soft_version.eq(sw),
                            firmware::fid.eq(fid),
                            columns,
                            firmware::verified.eq(false),
                            firmware::created_at.eq(now),
                            firmware::updated_at.eq(now),
                        ))
                        .execute(c)?;
                    let id = last_insert_id(c)?;
                    Ok(firmware::table.find(id).select(FirmwareRecord::as_select()).first(c)?)
                })
                .await;
            match result {
                Ok(record) => break Ok(record),
                Err(DomainError::UniqueViolation) if valid.method == PushMethod::V41 => {
                    break Err(version_exists(
                        valid.fw_type,
                        valid.hard_version.as_deref(),
                        valid.soft_version.as_deref(),
                    ));
                }
                // Two uploads computed the same next fid; the loser takes the one after.
                Err(DomainError::UniqueViolation) if attempt < FID_ATTEMPTS => continue,
                Err(e) => break Err(e),
            }
        };
        match inserted {
            // New firmware has no rules yet.
            Ok(record) => Ok(record.view(&product.product_key, PushStatus::NotStarted)),
            Err(e) => {
                self.collect_blob(&file.sha256).await?;
                Err(e)
            }
        }
    }

    /// Removes a stored file when no firmware references it. Callers hold `blob_lock`.
    async fn collect_blob(&self, sha256: &str) -> Result<()> {
        let key = sha256.to_owned();
        if self.db.run(move |c| blob_references(c, &key)).await? == 0 {
            self.store.delete(sha256).await?;
        }
        Ok(())
    }

    pub async fn list_firmware(
        &self,
        who: &Authorized<Read>,
        product_key: &str,
        query: FirmwareListQuery,
    ) -> Result<Page<FirmwareView>> {
        let page = PageRequest::new(query.page, query.per_page)?;
        let (tenant_id, key) = (who.tenant_id(), product_key.to_owned());
        let (rows, total, pk, statuses) = self
            .db
            .snapshot(move |c| {
                let product = find_product(c, tenant_id, &key)?;
                let filtered = || {
                    let mut q = firmware::table.filter(firmware::product_id.eq(product.id)).into_boxed();
                    if let Some(t) = query.fw_type {
                        q = q.filter(firmware::fw_type.eq(t.as_str()));
                    }
                    if let Some(m) = query.push_method {
                        q = q.filter(firmware::push_method.eq(m.as_str()));
                    }
                    if let Some(v) = query.verified {
                        q = q.filter(firmware::verified.eq(v));
                    }
                    q
                };
                let total: i64 = filtered().count().get_result(c)?;
                let rows: Vec<FirmwareRecord> = filtered()
                    .order(firmware::id.desc())
                    .limit(page.limit())
                    .offset(page.offset())
                    .select(FirmwareRecord::as_select())
                    .load(c)?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let statuses = crate::rules::push_statuses(c, &ids)?;
                Ok((rows, total, product.product_key, statuses))
            })
            .await?;
        let status = |id: i64| statuses.get(&id).copied().unwrap_or(PushStatus::NotStarted);
        Ok(page.wrap(rows.iter().map(|r| r.view(&pk, status(r.id))).collect(), total))
    }

    pub async fn get_firmware(&self, who: &Authorized<Read>, id: i64) -> Result<FirmwareView> {
        let tenant_id = who.tenant_id();
        let (record, pk, status) = self.db.run(move |c| with_status(c, tenant_id, id)).await?;
        Ok(record.view(&pk, status))
    }

    /// The record and a stream of its exact bytes.
    pub async fn open_firmware_file(&self, who: &Authorized<Read>, id: i64) -> Result<(FirmwareRecord, BlobStream)> {
        let tenant_id = who.tenant_id();
        let (record, _) = self.db.run(move |c| find_firmware(c, tenant_id, id)).await?;
        let stream = self.store.open(&record.sha256).await?;
        Ok((record, stream))
    }

    /// Edits name and versions while the firmware is unverified. A V4 firmware whose versions
    /// change moves to another fid series and takes that series' next fid.
    pub async fn update_firmware(
        &self,
        who: &Authorized<Write>,
        id: i64,
        name: Option<String>,
        hard_version: Option<String>,
        soft_version: Option<String>,
    ) -> Result<FirmwareView> {
        if let Some(n) = &name {
            validate_name(n)?;
        }
        if let Some(v) = &hard_version {
            validate_version("hard_version", v)?;
        }
        if let Some(v) = &soft_version {
            validate_version("soft_version", v)?;
        }
        let tenant_id = who.tenant_id();
        let now = self.clock.now_ms();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (name, hw_new, sw_new) = (name.clone(), hard_version.clone(), soft_version.clone());
            let result = self
                .db
                .write(move |c| {
                    let (current, _) = find_firmware(c, tenant_id, id)?;
                    if current.verified {
                        return Err(locked());
                    }
                    let hw = hw_new.or(current.hard_version.clone());
                    let sw = sw_new.or(current.soft_version.clone());
                    let series_changed = hw != current.hard_version || sw != current.soft_version;
                    let method = current.push_method();
                    let fid = if series_changed && method == PushMethod::V4 {
                        next_fid(c, current.product_id, method, current.fw_type(), hw.as_deref(), sw.as_deref())?
                    } else {
                        current.fid
                    };
                    diesel::update(firmware::table.find(id))
                        .set((
                            firmware::name.eq(name.unwrap_or(current.name.clone())),
                            firmware::hard_version.eq(&hw),
                            firmware::soft_version.eq(&sw),
                            firmware::fid.eq(fid),
                            firmware::updated_at.eq(now),
                        ))
                        .execute(c)
                        .map_err(|e| match DomainError::from(e) {
                            DomainError::UniqueViolation if method == PushMethod::V41 => {
                                version_exists(current.fw_type(), hw.as_deref(), sw.as_deref())
                            }
                            other => other,
                        })?;
                    with_status(c, tenant_id, id)
                })
                .await;
            match result {
                // A racing upload took the same next fid of the new series; take the one after.
                Err(DomainError::UniqueViolation) if attempt < FID_ATTEMPTS => continue,
                other => return other.map(|(record, pk, status)| record.view(&pk, status)),
            }
        }
    }

    /// Replaces the file of unverified firmware; the old file goes when nothing references it.
    pub async fn replace_firmware_file(
        &self,
        who: &Authorized<Write>,
        id: i64,
        file: StagedFile,
    ) -> Result<FirmwareView> {
        let tenant_id = who.tenant_id();
        let (current, _) = self.db.run(move |c| find_firmware(c, tenant_id, id)).await?;
        if current.verified {
            return Err(locked());
        }
        validate_file(current.fw_type(), &file).await?;
        let _blobs = self.blob_lock.lock().await;
        self.store.put(&file).await?;
        let now = self.clock.now_ms();
        let columns = file_columns(&file);
        let result = self
            .db
            .write(move |c| {
                let (current, pk) = find_firmware(c, tenant_id, id)?;
                if current.verified {
                    return Err(locked());
                }
                diesel::update(firmware::table.find(id)).set((columns, firmware::updated_at.eq(now))).execute(c)?;
                let (record, _) = find_firmware(c, tenant_id, id)?;
                Ok((record, pk, current.sha256))
            })
            .await;
        match result {
            Ok((record, pk, old_sha)) => {
                if old_sha != record.sha256 {
                    self.collect_blob(&old_sha).await?;
                }
                // Only unverified firmware gets a new file, and only verified firmware pushes.
                Ok(record.view(&pk, PushStatus::NotStarted))
            }
            Err(e) => {
                self.collect_blob(&file.sha256).await?;
                Err(e)
            }
        }
    }

    /// Deletes firmware and, when nothing else references it, its stored file.
    pub async fn delete_firmware(&self, who: &Authorized<Write>, id: i64) -> Result<()> {
        let tenant_id = who.tenant_id();
        let _blobs = self.blob_lock.lock().await;
        let sha256 = self
            .db
            .write(move |c| {
                let (record, _) = find_firmware(c, tenant_id, id)?;
                if with_status(c, tenant_id, id)?.2 == PushStatus::Pushing {
                    return Err(DomainError::new(ErrorCode::FirmwareInUse, "a push rule of this firmware is pushing"));
                }
                diesel::delete(firmware::table.find(id)).execute(c)?;
                Ok(record.sha256)
            })
            .await?;
        self.collect_blob(&sha256).await
    }

    /// Marks firmware verified (and so locked). The verification flow calls this once the
    /// operator confirms the test device is stable.
    pub async fn mark_firmware_verified(&self, tenant_id: i64, id: i64) -> Result<()> {
        let now = self.clock.now_ms();
        self.db
            .write(move |c| {
                find_firmware(c, tenant_id, id)?;
                diesel::update(firmware::table.find(id))
                    .set((
                        firmware::verified.eq(true),
                        firmware::verified_at.eq(Some(now)),
                        firmware::updated_at.eq(now),
                    ))
                    .execute(c)?;
                Ok(())
            })
            .await
    }
}
