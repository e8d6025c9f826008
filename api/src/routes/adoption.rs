//! Adoption of devices provisioned by the hosted cloud: the policy per product and its events.

use actix_web::{HttpResponse, get, put, web};
use ota_domain::access::{Read, Write};
use ota_wire::ErrorBody;
use ota_wire::dto::*;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// A product's adoption policy, its open window and the counts to watch during a migration.
#[utoipa::path(
    tag = "adoption",
    params(("product_key" = String, Path)),
    responses((status = 200, body = AdoptionView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/adoption")]
pub async fn get_adoption(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_adoption(&who, &key).await?))
}

/// Set a product's adoption policy: `closed`, `imported`, or `open` with `open_until` (in the
/// future) and `max_adoptions` (≥ 1). Every call starts a new window count.
#[utoipa::path(
    tag = "adoption",
    params(("product_key" = String, Path)),
    request_body = SetAdoptionRequest,
    responses((status = 200, body = AdoptionView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[put("/products/{product_key}/adoption")]
pub async fn set_adoption(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
    body: Json<SetAdoptionRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.set_adoption(&who, &key, body.into_inner()).await?))
}

/// Adoptions, refusals, pinnings, conflicts and resets of a product, most recent first.
///
/// Coalesced: one item per did and kind, with a count and the first and last time; the source
/// address is the last one's.
#[utoipa::path(
    tag = "adoption",
    params(("product_key" = String, Path), AdoptionEventQuery),
    responses(
        (status = 200, body = Page<AdoptionEventView>),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}/adoption/events")]
pub async fn list_adoption_events(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
    q: Query<AdoptionEventQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_adoption_events(&who, &key, q.into_inner()).await?))
}
