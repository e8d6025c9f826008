//! The device registry, as operators see it.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use ota_domain::access::{Read, Write};
use ota_wire::dto::*;
use ota_wire::{ErrorBody, ErrorCode};

use crate::AppState;
use crate::auth::Auth;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::idempotency::{IdempotencyHeader, IdempotencyKey};

/// Largest CSV accepted by the device import (about a million lines).
pub const MAX_IMPORT_BYTES: usize = 64 * 1024 * 1024;

/// List and search a product's devices, newest first.
///
/// `mac` matches a whole MAC or a prefix of at least 4 hex digits; `hard_version` /
/// `soft_version` match the Wi-Fi versions, or the MCU ones with `type=mcu`.
#[utoipa::path(
    tag = "devices",
    params(("product_key" = String, Path), DeviceListQuery),
    responses((status = 200, body = Page<DeviceView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/devices")]
pub async fn list_devices(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
    q: Query<DeviceListQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_devices(&who, &key, q.into_inner()).await?))
}

/// How many devices run each version (per type, hardware and software version): the old
/// versions a push rule chooses from.
#[utoipa::path(
    tag = "devices",
    params(("product_key" = String, Path)),
    responses((status = 200, body = Vec<VersionCount>), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/versions")]
pub async fn version_distribution(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.version_distribution(&who, &key).await?))
}

/// Import devices: the hosted console's device list (CSV or JSON).
///
/// CSV (`text/csv`): a header row with a `mac` and/or `did` column and optional `passcode`,
/// `country`, `province`, `city`, `region`. JSON (`application/json`): an array of devices or
/// `{"devices": [...]}`. Each line needs a MAC or a did. Matched by did (unique across the
/// installation), else by MAC in the product; a line fills what a device lacks (a MAC for a
/// device adopted without one, a did, a passcode not known yet) and never changes a known one.
/// Idempotent: every line is reported as added, updated (with the fields), unchanged or
/// rejected with its line number and a stable code.
#[utoipa::path(
    tag = "devices",
    params(("product_key" = String, Path), IdempotencyHeader),
    request_body(content(
        (String = "text/csv"),
        (DeviceImportRequest = "application/json"),
    )),
    responses(
        (status = 200, body = DeviceImportReport),
        (status = 400, description = "`invalid_csv`, `invalid_json`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[post("/products/{product_key}/devices/import")]
pub async fn import_devices(
    st: web::Data<AppState>,
    who: Auth<Write>,
    idempotency: IdempotencyKey,
    key: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The declared type decides; without one the body is sniffed (`[`/`{` → JSON).
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()));
    let declared_json = match declared.as_ref().map(|d| d.as_ref().map(String::as_str)) {
        None => None,
        Some(Ok("application/json")) => Some(true),
        Some(Ok("text/csv")) => Some(false),
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the list as text/csv or application/json",
            ));
        }
    };
    let body = read_limited(&req, payload, MAX_IMPORT_BYTES, ErrorCode::InvalidCsv).await?;
    let json = declared_json.unwrap_or_else(|| {
        body.strip_prefix(b"\xEF\xBB\xBF")
            .unwrap_or(&body)
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| matches!(b, b'[' | b'{'))
    });
    let mut content = vec![u8::from(json)];
    content.extend_from_slice(&body);
    let (domain, who) = (&st.domain, &*who);
    idempotency
        .run(domain, who, &content, async move || {
            Ok((StatusCode::OK, domain.import_devices(who, &key, body, json).await?))
        })
        .await
}

/// Get one device by did or MAC.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path, description = "did, or MAC when it is unique in the tenant")),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/devices/{device}")]
pub async fn get_device(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_device(&who, &key).await?))
}

/// Set a device's region and metadata.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path, description = "did, or MAC when it is unique in the tenant")),
    request_body = UpdateDeviceRequest,
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[patch("/devices/{device}")]
pub async fn update_device(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
    body: Json<UpdateDeviceRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.update_device(&who, &key, body.into_inner()).await?))
}

/// Reset a device's passcode (unpin it).
///
/// The passcode is forgotten and the conflict flag cleared; the device's next MQTT login pins
/// whatever passcode it presents, whatever the product's adoption policy. Until then, HTTP
/// checks that carry a passcode (`update_and_check`) are refused. Recorded as a `reset` event.
#[utoipa::path(
    tag = "adoption",
    params(("device" = String, Path, description = "did, or MAC when it is unique in the tenant")),
    responses((status = 200, body = DeviceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[post("/devices/{device}/passcode/reset")]
pub async fn reset_passcode(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.reset_passcode(&who, &key).await?))
}

/// Delete a device and its upgrade history; a device still in the field must register again.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path, description = "did, or MAC when it is unique in the tenant")),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[delete("/devices/{device}")]
pub async fn delete_device(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    st.domain.delete_device(&who, &key).await?;
    Ok(HttpResponse::NoContent().finish())
}
