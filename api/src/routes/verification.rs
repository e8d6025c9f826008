//! Firmware verification: one online test device, then the operator's confirmation.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, delete, get, post, web};
use ota_domain::access::{Push, Read};
use ota_wire::ErrorBody;
use ota_wire::dto::*;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::Json;
use crate::idempotency::{IdempotencyHeader, IdempotencyKey};

/// Start verifying firmware on the online device with this MAC; the push goes out at once.
///
/// The device must be of the firmware's product, online, use the firmware's push method and
/// type, and run an older version of its series (`device_not_eligible` says which rule failed).
#[utoipa::path(
    tag = "verification",
    params(("id" = i64, Path), IdempotencyHeader),
    request_body = StartVerificationRequest,
    responses(
        (status = 201, body = VerificationView),
        (status = 400, body = ErrorBody),
        (status = 404, description = "`firmware_not_found` or `device_not_found`", body = ErrorBody),
        (status = 409, description = "`device_offline`, `device_not_eligible`, `firmware_already_verified`, `verification_in_progress`", body = ErrorBody),
        (status = 503, description = "`gateway_unavailable`", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/firmware/{id}/verification")]
pub async fn start_verification(
    st: web::Data<AppState>,
    who: Auth<Push>,
    idempotency: IdempotencyKey,
    id: web::Path<i64>,
    body: Json<StartVerificationRequest>,
) -> Result<HttpResponse, ApiError> {
    let content = serde_json::to_vec(&*body).map_err(|e| ApiError(anyhow::Error::from(e).into()))?;
    let (domain, who) = (&st.domain, &*who);
    idempotency
        .run(domain, who, &content, async || {
            Ok((StatusCode::CREATED, domain.start_verification(who, id.into_inner(), &body.mac).await?))
        })
        .await
}

/// The firmware's latest verification: state, stage times and the countdown.
#[utoipa::path(
    tag = "verification",
    params(("id" = i64, Path)),
    responses((status = 200, body = VerificationView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/firmware/{id}/verification")]
pub async fn get_verification(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_verification(&who, id.into_inner()).await?))
}

/// Confirm the result: `stable: true` verifies and locks the firmware; `false` fails it.
#[utoipa::path(
    tag = "verification",
    params(("id" = i64, Path)),
    request_body = ConfirmVerificationRequest,
    responses(
        (status = 200, body = VerificationView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`verification_not_succeeded`", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/firmware/{id}/verification/confirm")]
pub async fn confirm_verification(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
    body: Json<ConfirmVerificationRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.confirm_verification(&who, id.into_inner(), body.stable).await?))
}

/// Cancel the running verification; it can be started again afterwards.
#[utoipa::path(
    tag = "verification",
    params(("id" = i64, Path)),
    responses((status = 200, body = VerificationView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["push"]))
)]
#[delete("/firmware/{id}/verification")]
pub async fn cancel_verification(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.cancel_verification(&who, id.into_inner()).await?))
}
