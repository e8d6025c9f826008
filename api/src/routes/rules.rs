//! Push rules: targets, preview, start and stop, per-device results and exports.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use bytes::Bytes;
use futures_util::stream;
use ota_domain::access::{Push, Read, Write};
use ota_domain::{Authorized, Domain};
use ota_wire::ErrorBody;
use ota_wire::dto::Page;
use ota_wire::rules::*;

use crate::AppState;
use crate::auth::Auth;
use crate::body::read_limited;
use crate::error::ApiError;
use crate::extract::{Json, Query};
use crate::idempotency::{IdempotencyHeader, IdempotencyKey};

/// Largest MAC list upload: a million MACs with separators and some slack.
pub const MAX_MAC_LIST_BYTES: usize = 32 * 1024 * 1024;
/// Rows per database read while an export streams.
const EXPORT_BATCH: i64 = 2000;

/// Create a push rule (not started) for a firmware. Unverified firmware may have draft
/// rules; only verified firmware can start. A rule with zero targets is refused.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path, description = "firmware id"), IdempotencyHeader),
    request_body = RuleBody,
    responses(
        (status = 201, body = RuleView),
        (status = 400, description = "`invalid_json`, `invalid_field`, `missing_field`", body = ErrorBody),
        (status = 404, description = "`firmware_not_found`, `mac_list_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_no_targets`", body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[post("/firmware/{id}/rules")]
pub async fn create_rule(
    st: web::Data<AppState>,
    who: Auth<Write>,
    idempotency: IdempotencyKey,
    id: web::Path<i64>,
    body: Json<RuleBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let content = serde_json::to_vec(&body).map_err(|e| ApiError(anyhow::Error::from(e).into()))?;
    let (domain, who) = (&st.domain, &*who);
    idempotency
        .run(domain, who, &content, async move || {
            Ok((StatusCode::CREATED, domain.create_rule(who, id.into_inner(), body).await?))
        })
        .await
}

/// The firmware's rules, newest first.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path, description = "firmware id")),
    responses((status = 200, body = Vec<RuleView>), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/firmware/{id}/rules")]
pub async fn list_rules(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_rules(&who, id.into_inner()).await?))
}

/// Preview a draft rule: targets, of which online, already on the target version, and in
/// another pushing rule. Inline `macs` are matched, not stored.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path, description = "firmware id")),
    request_body = RuleBody,
    responses(
        (status = 200, body = RulePreview),
        (status = 400, body = ErrorBody),
        (status = 404, description = "`firmware_not_found`, `mac_list_not_found`", body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
#[post("/firmware/{id}/rules/preview")]
pub async fn preview_draft(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    body: Json<RuleBody>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.preview_draft(&who, id.into_inner(), body.into_inner()).await?))
}

/// The old versions a rule of this firmware may target, with device counts. V4.1: older
/// versions of the series the fleet reports; V4: the series' version (devices on another
/// fid); V1V3: the product's earlier firmware, by name.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path, description = "firmware id")),
    responses((status = 200, body = Vec<OldVersion>), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/firmware/{id}/old-versions")]
pub async fn old_versions(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.rule_old_versions(&who, id.into_inner()).await?))
}

/// One rule with its status and counts.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses((status = 200, body = RuleView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}")]
pub async fn get_rule(st: web::Data<AppState>, who: Auth<Read>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_rule(&who, id.into_inner()).await?))
}

/// Edit a rule: everything before it starts; only `name` and `period.end` once started.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    request_body = UpdateRuleRequest,
    responses(
        (status = 200, body = RuleView),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`rule_wrong_status`, `rule_no_targets`", body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[patch("/rules/{request_id}")]
pub async fn update_rule(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
    body: Json<UpdateRuleRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.update_rule(&who, id.into_inner(), body.into_inner()).await?))
}

/// Delete a rule that is not pushing, with its per-device results.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 204),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`rule_wrong_status`", body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[delete("/rules/{request_id}")]
pub async fn delete_rule(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    st.domain.delete_rule(&who, id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Preview a saved rule as it would start now.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses((status = 200, body = RulePreview), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/preview")]
pub async fn preview_rule(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.preview_rule(&who, id.into_inner()).await?))
}

/// Start pushing. Needs verified firmware, `confirm_stable` and `accept_terms`, a period
/// not over, and no other pushing rule of the same series on the same devices.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    request_body = StartRuleRequest,
    responses(
        (status = 200, body = RuleStarted),
        (status = 400, description = "`confirmation_required`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`firmware_not_verified`, `rule_overlap`, `rule_wrong_status`, `rule_period_over`, `rule_no_targets`", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/start")]
pub async fn start_rule(
    st: web::Data<AppState>,
    who: Auth<Push>,
    id: web::Path<i64>,
    body: Json<StartRuleRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.start_rule(&who, id.into_inner(), body.into_inner()).await?))
}

/// Stop pushing; a stopped rule can be started again.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, body = RuleView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`rule_wrong_status`", body = ErrorBody),
    ),
    security(("bearer" = ["push"]))
)]
#[post("/rules/{request_id}/stop")]
pub async fn stop_rule(st: web::Data<AppState>, who: Auth<Push>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.stop_rule(&who, id.into_inner()).await?))
}

/// Every target with MAC, did, stage, versions, stage times and last error.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path), RuleDeviceQuery),
    responses(
        (status = 200, body = Page<RuleDeviceView>),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/devices")]
pub async fn rule_devices(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    q: Query<RuleDeviceQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.rule_devices(&who, id.into_inner(), q.into_inner()).await?))
}

/// A streamed download: `first`, then the pages `next(cursor)` returns, read from the
/// database as the client reads; a page without a next cursor ends it.
pub(crate) fn streamed<C, F, Fut>(
    first: String,
    start: C,
    next: F,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>>
where
    C: 'static,
    F: Fn(C) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<(String, Option<C>), ApiError>>,
{
    let header = stream::once(async move { Ok::<_, actix_web::Error>(Bytes::from(first)) });
    let body = stream::unfold(Some(start), move |cursor| {
        let page = cursor.map(&next);
        async move {
            let (text, cursor) = match page?.await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e.0, "export stopped");
                    return Some((Err(actix_web::error::ErrorInternalServerError("export failed")), None));
                }
            };
            let cursor = cursor?;
            Some((Ok(Bytes::from(text)), Some(cursor)))
        }
    });
    futures_util::StreamExt::chain(header, body)
}

/// Export the targets as CSV (`filter`, `mac` as for the list), streamed: no row cap.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path), RuleDeviceQuery),
    responses(
        (status = 200, content_type = "text/csv", body = String),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/devices.csv")]
pub async fn export_rule_devices(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    q: Query<RuleDeviceQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let q = q.into_inner();
    let mac = st.domain.check_rule_export(&who, id, q.mac.as_deref()).await?;
    let filter = q.filter.unwrap_or_default();
    let (domain, who): (Domain, Authorized<Read>) = (st.domain.clone(), who.0.clone());
    let rows = streamed(ota_domain::rules::results::CSV_HEADER.to_owned(), 0i64, move |after| {
        let (domain, who, mac) = (domain.clone(), who.clone(), mac.clone());
        async move {
            let (rows, last) = domain.rule_export_page(&who, id, filter, mac, q.wave, after, EXPORT_BATCH).await?;
            Ok((rows.iter().map(ota_domain::rules::results::csv_row).collect(), last))
        }
    });
    let name = format!(
        "rule-{id}-{}.csv",
        serde_json::to_value(filter).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")))
        .streaming(rows))
}

/// The rule's MAC list as a download, one MAC per line.
#[utoipa::path(
    tag = "rules",
    params(("request_id" = i64, Path)),
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 404, description = "`rule_not_found`, `mac_list_not_found`", body = ErrorBody),
    ),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/macs")]
pub async fn rule_macs(st: web::Data<AppState>, who: Auth<Read>, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let list = st.domain.rule_mac_list(&who, id).await?;
    Ok(mac_download(st.domain.clone(), who.0, list, format!("rule-{id}-macs.txt")))
}

fn mac_download(domain: Domain, who: Authorized<Read>, list: i64, name: String) -> HttpResponse {
    // Keyset paging by MAC: the cursor is the last MAC sent.
    let body = streamed(String::new(), String::new(), move |after| {
        let (domain, who) = (domain.clone(), who.clone());
        async move {
            let macs = domain.mac_list_entries(&who, list, after, EXPORT_BATCH).await?;
            let last = macs.last().cloned();
            Ok((macs.iter().map(|m| format!("{m}\n")).collect(), last))
        }
    });
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")))
        .streaming(body)
}

/// Upload a MAC list for rules (body: text, MACs separated by newlines, spaces or commas; up
/// to a million). Invalid entries are reported with their lines; repeats are dropped.
#[utoipa::path(
    tag = "rules",
    params(("product_key" = String, Path)),
    request_body(content = String, content_type = "text/plain"),
    responses(
        (status = 201, body = MacListView),
        (status = 400, description = "`invalid_field` (no valid MAC, or over a million)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody),
    ),
    security(("bearer" = ["write"]))
)]
#[post("/products/{product_key}/mac-lists")]
pub async fn upload_mac_list(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_limited(&req, payload, MAX_MAC_LIST_BYTES, ota_wire::ErrorCode::InvalidField).await?;
    Ok(HttpResponse::Created().json(st.domain.upload_mac_list(&who, &key, body).await?))
}

/// One uploaded MAC list: counts and the invalid entries with their lines.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path)),
    responses((status = 200, body = MacListView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/mac-lists/{id}")]
pub async fn get_mac_list(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_mac_list(&who, id.into_inner()).await?))
}

/// The entries of an uploaded MAC list, one per line.
#[utoipa::path(
    tag = "rules",
    params(("id" = i64, Path)),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/mac-lists/{id}/macs")]
pub async fn mac_list_entries(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    st.domain.get_mac_list(&who, id).await?;
    Ok(mac_download(st.domain.clone(), who.0, id, format!("mac-list-{id}.txt")))
}
