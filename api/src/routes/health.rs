//! Liveness and readiness.

use actix_web::{HttpResponse, get, web};
use ota_wire::dto::HealthView;
use ota_wire::{ErrorBody, ErrorCode};

use crate::AppState;
use crate::error::ApiError;

/// The process is up.
#[utoipa::path(tag = "health", responses((status = 200, body = HealthView)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthView { status: "ok".into() })
}

/// The database answers.
#[utoipa::path(tag = "health", responses((status = 200, body = HealthView), (status = 503, body = ErrorBody)))]
#[get("/readyz")]
pub async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if st.domain.db.ping().await {
        Ok(HttpResponse::Ok().json(HealthView { status: "ok".into() }))
    } else {
        Err(ApiError::new(ErrorCode::DatabaseUnavailable, "the database does not answer"))
    }
}
