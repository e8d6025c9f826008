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

/// How long `/readyz` waits for the database before it answers 503.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// The database answers (within 0.8 s: a load balancer gets its answer in time whatever the
/// database does).
#[utoipa::path(tag = "health", responses((status = 200, body = HealthView), (status = 503, description = "`database_unavailable`", body = ErrorBody)))]
#[get("/readyz")]
pub async fn readyz(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if st.domain.db.ping(READY_WITHIN).await {
        Ok(HttpResponse::Ok().json(HealthView { status: "ok".into() }))
    } else {
        Err(ApiError::new(ErrorCode::DatabaseUnavailable, "the database does not answer"))
    }
}
