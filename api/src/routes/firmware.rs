//! The firmware registry.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, put, web};
use ota_domain::access::{Read, Write};
use ota_wire::ErrorBody;
use ota_wire::dto::*;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::idempotency::{IdempotencyHeader, IdempotencyKey};
use crate::{AppState, upload};

/// Upload firmware (multipart form).
///
/// V1V3 is wifi only and gets the product's next `fid`; V4 needs the hw/sw of the devices to
/// upgrade and gets its series' next `fid`; V4.1 needs the hw/sw of the image and may not
/// repeat a type+hw+sw of the product. Omitted versions are read from an official
/// `GAgent_<hw8>_<sw8>_<YYMMDDHH>.bin` file name.
#[utoipa::path(
    tag = "firmware",
    params(("product_key" = String, Path), IdempotencyHeader),
    request_body(content = FirmwareUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = FirmwareView),
        (status = 400, description = "a field breaks its rule; `details.field` names it", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`firmware_version_exists`", body = ErrorBody),
        (status = 413, description = "`firmware_too_large`", body = ErrorBody),
        (status = 415, body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[post("/products/{product_key}/firmware")]
pub async fn create_firmware(
    st: web::Data<AppState>,
    who: Auth<Write>,
    idempotency: IdempotencyKey,
    key: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let form = upload::read_form(&st, &req, payload).await?;
    // The multipart boundary changes on every send: the fingerprint is the form's meaning.
    let content = serde_json::to_vec(&serde_json::json!({
        "name": form.name,
        "type": form.fw_type,
        "push_method": form.push_method,
        "hard_version": form.hard_version,
        "soft_version": form.soft_version,
        "file": form.file.as_ref().map(|f| (&f.file_name, &f.sha256, f.size)),
    }))
    .map_err(|e| ApiError(anyhow::Error::from(e).into()))?;
    let (domain, who) = (&st.domain, &*who);
    idempotency
        .run(domain, who, &content, async move || {
            Ok((StatusCode::CREATED, domain.create_firmware(who, &key, form).await?))
        })
        .await
}

/// List a product's firmware, newest first.
#[utoipa::path(
    tag = "firmware",
    params(("product_key" = String, Path), FirmwareListQuery),
    responses((status = 200, body = Page<FirmwareView>), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/firmware")]
pub async fn list_firmware(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
    q: Query<FirmwareListQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_firmware(&who, &key, q.into_inner()).await?))
}

/// Get one firmware.
#[utoipa::path(
    tag = "firmware",
    params(("id" = i64, Path)),
    responses((status = 200, body = FirmwareView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/firmware/{id}")]
pub async fn get_firmware(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_firmware(&who, id.into_inner()).await?))
}

/// Edit name and versions of unverified firmware.
#[utoipa::path(
    tag = "firmware",
    params(("id" = i64, Path)),
    request_body = UpdateFirmwareRequest,
    responses((status = 200, body = FirmwareView), (status = 404, body = ErrorBody), (status = 409, description = "`firmware_locked` or `firmware_version_exists`", body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[patch("/firmware/{id}")]
pub async fn update_firmware(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
    body: Json<UpdateFirmwareRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let view = st.domain.update_firmware(&who, id.into_inner(), b.name, b.hard_version, b.soft_version).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// Replace the file of unverified firmware (multipart form with one `file`).
#[utoipa::path(
    tag = "firmware",
    params(("id" = i64, Path)),
    request_body(content = FirmwareFileForm, content_type = "multipart/form-data"),
    responses((status = 200, body = FirmwareView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[put("/firmware/{id}/file")]
pub async fn replace_firmware_file(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let file = upload::read_file_only(&st, &req, payload).await?;
    Ok(HttpResponse::Ok().json(st.domain.replace_firmware_file(&who, id.into_inner(), file).await?))
}

/// Delete firmware; refused while a rule of it is pushing.
#[utoipa::path(
    tag = "firmware",
    params(("id" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "`firmware_in_use`", body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[delete("/firmware/{id}")]
pub async fn delete_firmware(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    st.domain.delete_firmware(&who, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Download the exact bytes uploaded, with `ETag` (the SHA-256) and the file name.
#[utoipa::path(
    tag = "firmware",
    params(("id" = i64, Path)),
    responses(
        (status = 200, description = "the file (application/octet-stream)"),
        (status = 304, description = "`If-None-Match` matched the ETag"),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = ["read"]))
)]
#[get("/firmware/{id}/file")]
pub async fn download_firmware(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (record, stream) = st.domain.open_firmware_file(&who, id.into_inner()).await?;
    let etag = format!("\"{}\"", record.sha256);
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if unchanged {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag)).finish());
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((header::ETAG, etag))
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", record.file_name)))
        .insert_header(("X-Firmware-MD5", record.md5.clone()))
        .no_chunking(record.size as u64)
        .streaming(stream))
}
