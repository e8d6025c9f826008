//! Rollout safety: pause, resume, cancel, advance and exclude on a rule; its preflight; every
//! rule of the tenant; the time zones windows run in (by region and per device).
//! The rules these follow are in `proto-docs/api.md`, section "Rollout safety".

use actix_web::{HttpResponse, get, post, put, web};
use ota_domain::access::{Push, Read, Write};
use ota_wire::ErrorBody;
use ota_wire::dto::Page;
use ota_wire::rollout::{
    DeviceTimeZone, ExcludeRequest, ExcludeResult, Preflight, PreflightQuery, RegionZoneView, RuleListQuery,
    SetRegionZones,
};
use ota_wire::rules::RuleView;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// Pause a pushing rule: devices already on their way finish, nothing new goes out.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_wrong_status` (`details.status`)", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/pause")]
pub async fn pause_rule(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.pause_rule(&who, id.into_inner()).await?))
}

/// Resume a paused or halted rule from the wave it was in. A halted rule whose failures are
/// still over its threshold halts again at the scheduler's next round.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_wrong_status` (`details.status`)", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/resume")]
pub async fn resume_rule(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.resume_rule(&who, id.into_inner()).await?))
}

/// Cancel a rule for good: its targets not succeeded become `cancelled`.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_wrong_status` (`details.status`)", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/cancel")]
pub async fn cancel_rule(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.cancel_rule(&who, id.into_inner()).await?))
}

/// Start the next wave of a pushing rule now, whatever its advance policy says.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_wrong_status` (not pushing, or the last wave already)", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/advance")]
pub async fn advance_rule(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.advance_rule(&who, id.into_inner()).await?))
}

/// Take devices out of a paused or halted rule, by MAC or by an uploaded MAC list: their
/// targets become `excluded` and are never pushed by this rule again.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    request_body = ExcludeRequest,
    responses(
        (status = 200, body = ExcludeResult),
        (status = 404, description = "`rule_not_found`, `mac_list_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_wrong_status` (`details.status`)", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/exclude")]
pub async fn exclude_devices(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
    body: Json<ExcludeRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.exclude_from_rule(&who, id.into_inner(), body.into_inner()).await?))
}

/// What the rule would push to if it started now, per wave: targets, online, in another live
/// rule, offline for long; and the devices it names that it cannot upgrade.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path), PreflightQuery),
    responses(
        (status = 200, body = Preflight),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/preflight")]
pub async fn rule_preflight(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    q: Query<PreflightQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.rule_preflight(&who, id.into_inner(), q.into_inner()).await?))
}

/// Every rule of the tenant, newest first, by product, firmware and status.
#[utoipa::path(
    tag = "rules",
    params(RuleListQuery),
    responses((status = 200, body = Page<RuleView>)),
    security(("bearer" = ["read"]))
)]
#[get("/rules")]
pub async fn list_all_rules(
    st: web::Data<AppState>,
    who: Auth<Read>,
    q: Query<RuleListQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_all_rules(&who, q.into_inner()).await?))
}

/// The regions with a time zone and the regions devices report, with device counts.
#[utoipa::path(
    tag = "rules",
    responses((status = 200, body = Vec<RegionZoneView>)),
    security(("bearer" = ["read"]))
)]
#[get("/region-zones")]
pub async fn region_zones(st: web::Data<AppState>, who: Auth<Read>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.region_zones(&who).await?))
}

/// Set the time zones of regions (`time_zone: null` removes one). A rule fixes each target's
/// zone when it takes the target.
#[utoipa::path(
    tag = "rules",
    request_body = SetRegionZones,
    responses((status = 200, body = Vec<RegionZoneView>)),
    security(("bearer" = ["write"]))
)]
#[put("/region-zones")]
pub async fn set_region_zones(
    st: web::Data<AppState>,
    who: Auth<Write>,
    body: Json<SetRegionZones>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.set_region_zones(&who, body.into_inner()).await?))
}

/// Set a device's own time zone (by did or MAC; `null` removes it), ahead of its region's.
#[utoipa::path(
    tag = "devices",
    params(("device" = String, Path, description = "did or MAC")),
    request_body = DeviceTimeZone,
    responses(
        (status = 200, body = DeviceTimeZone),
        (status = 404, description = "`device_not_found`", body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[put("/devices/{device}/time-zone")]
pub async fn set_device_time_zone(
    st: web::Data<AppState>,
    who: Auth<Write>,
    device: web::Path<String>,
    body: Json<DeviceTimeZone>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.set_device_time_zone(&who, &device, body.into_inner()).await?))
}
