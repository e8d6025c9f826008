//! Device-side abuse, as operators see it: the re-registration policy of a product, its
//! counts of wrong passcodes and refusals, and unknown dids that named no product.

use actix_web::{HttpResponse, get, put, web};
use ota_domain::access::{InstallationAdmin, Read, Write};
use ota_wire::dto::*;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// A product's re-registration policy: what a registration of a known MAC with another
/// passcode does (`allow`, the default; `allow_when_offline`; `deny`).
#[utoipa::path(
    tag = "security",
    params(("product_key" = String, Path)),
    responses((status = 200, body = RegistrationView), (status = 404, description = "`product_not_found`", body = ota_wire::ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/registration")]
pub async fn get_registration_policy(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_registration_policy(&who, &key).await?))
}

/// Set a product's re-registration policy. `allow` replaces the passcode (the hosted cloud's
/// behaviour); `allow_when_offline` only while the device has no live session and was not seen
/// for `offline_minutes`; `deny` never (an operator resets the passcode instead). Every
/// replacement and refusal is recorded as an event (`reregistered`,
/// `reregistration_refused`) with its source address.
#[utoipa::path(
    tag = "security",
    params(("product_key" = String, Path)),
    request_body = SetRegistrationPolicy,
    responses((status = 200, body = RegistrationView), (status = 404, description = "`product_not_found`", body = ota_wire::ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[put("/products/{product_key}/registration")]
pub async fn set_registration_policy(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
    body: Json<SetRegistrationPolicy>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.set_registration_policy(&who, &key, body.into_inner()).await?))
}

/// Device-side abuse of a product: wrong passcodes, re-registrations and their refusals,
/// unknown dids naming it. Each is listed per did with its count and source address by
/// `GET /products/{product_key}/adoption/events?kind=conflict|reregistered|reregistration_refused|refused`.
#[utoipa::path(
    tag = "security",
    params(("product_key" = String, Path)),
    responses((status = 200, body = DeviceSecurityView), (status = 404, description = "`product_not_found`", body = ota_wire::ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/security")]
pub async fn device_security(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.device_security(&who, &key).await?))
}

/// Unknown dids refused where no product was named (an MQTT login while no product adopts, a
/// plain provision, a V4.1 check), coalesced per did and channel with counts and the last
/// source address, most recent first. Installation administrators only: such a device names no
/// tenant.
#[utoipa::path(
    tag = "security",
    params(UnknownDeviceQuery),
    responses((status = 200, body = Page<UnknownDeviceView>)),
    security(("bearer" = ["installation_admin"]))
)]
#[get("/unknown-devices")]
pub async fn list_unknown_devices(
    st: web::Data<AppState>,
    who: Auth<InstallationAdmin>,
    q: Query<UnknownDeviceQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_unknown_devices(&who, q.into_inner()).await?))
}
