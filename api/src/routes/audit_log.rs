//! The audit log, as tenant admins read it (`proto-docs/api.md`, "Audit log"); recorded by
//! the middleware in `crate::audit`.

use actix_web::http::header;
use actix_web::{HttpResponse, get, web};
use ota_domain::access::{Authorized, TenantAdmin};
use ota_domain::audit::{CSV_HEADER, csv_row};
use ota_wire::audit::{AuditEntry, AuditQuery};
use ota_wire::dto::Page;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::Query;
use crate::routes::rules::streamed;

/// Entries read from the database per batch of the CSV export.
const EXPORT_BATCH: i64 = 500;

/// The audit log of your tenant, newest first: every non-GET request to the management API
/// (refused ones and logins included) with who, which token, what, the object, when, from
/// where and the result. Installation admins also see entries that named no tenant (no or
/// invalid credentials, logins naming an unknown user). Entries are written just after each
/// answer, in batches: one may appear a moment after its request returned.
#[utoipa::path(
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)),
    security(("bearer" = ["admin"]))
)]
#[get("/audit")]
pub async fn list_audit(
    st: web::Data<AppState>,
    who: Auth<TenantAdmin>,
    q: Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_audit(&who, q.into_inner()).await?))
}

/// The audit log as CSV, same filters as the list (`page` and `per_page` are ignored),
/// streamed newest first with no row cap. Columns: `id,at,user_id,username,credential,
/// token_id,action,route,object_kind,object_id,source,status,error_code`.
#[utoipa::path(
    tag = "audit",
    params(AuditQuery),
    responses((status = 200, content_type = "text/csv", body = String)),
    security(("bearer" = ["admin"]))
)]
#[get("/audit.csv")]
pub async fn export_audit(
    st: web::Data<AppState>,
    who: Auth<TenantAdmin>,
    q: Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    st.domain.check_audit_export(&who, &q)?;
    let (domain, who): (ota_domain::Domain, Authorized<TenantAdmin>) = (st.domain.clone(), who.0.clone());
    let rows = streamed(CSV_HEADER.to_owned(), None, move |before: Option<i64>| {
        let (domain, who, q) = (domain.clone(), who.clone(), q.clone());
        async move {
            let (rows, next) = domain.audit_export_page(&who, &q, before, EXPORT_BATCH).await?;
            Ok((rows.iter().map(csv_row).collect(), next.map(Some)))
        }
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/csv; charset=utf-8"))
        .insert_header((header::CONTENT_DISPOSITION, "attachment; filename=\"audit.csv\""))
        .streaming(rows))
}
