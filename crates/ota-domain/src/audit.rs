//! The audit log: what operators did through the management API.
//!
//! The API records one [`AuditRecord`] per non-GET request that reached a route (its audit
//! middleware, after the answer, so no handler has a call to remember) and hands batches to
//! [`Domain::record_audit`]. Tenant admins read their tenant's entries; installation admins
//! also read those that name no tenant (no or invalid credentials, a login naming an unknown
//! user). See `proto-docs/api.md`, "Audit log".

use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::audit::{AuditEntry, AuditQuery};
use ota_wire::dto::Page;

use crate::Domain;
use crate::access::{Authorized, TenantAdmin};
use crate::clock::from_ms;
use crate::error::{DomainError, Result};
use crate::paging::PageRequest;
use crate::schema::audit_log;

/// One action as the API saw it, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The tenant of the credentials; `None` when they named none. A login fills it from the
    /// user it names when it is stored.
    pub tenant_id: Option<i64>,
    pub at_ms: i64,
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub credential: Option<&'static str>,
    pub token_id: Option<i64>,
    pub action: String,
    pub route: String,
    pub object_kind: Option<String>,
    pub object_id: Option<String>,
    pub source: String,
    pub status: u16,
    pub error_code: Option<String>,
}

/// The CSV export's first line.
pub const CSV_HEADER: &str =
    "id,at,user_id,username,credential,token_id,action,route,object_kind,object_id,source,status,error_code\n";

/// One CSV line (RFC 4180 quoting), with its newline.
pub fn csv_row(e: &AuditEntry) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
    }
    let opt = |v: Option<String>| field(&v.unwrap_or_default());
    let cols = [
        e.id.to_string(),
        e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        opt(e.user_id.map(|v| v.to_string())),
        opt(e.username.clone()),
        opt(e.credential.clone()),
        opt(e.token_id.map(|v| v.to_string())),
        field(&e.action),
        field(&e.route),
        opt(e.object_kind.clone()),
        opt(e.object_id.clone()),
        field(&e.source),
        e.status.to_string(),
        opt(e.error_code.clone()),
    ];
    let mut line = cols.join(",");
    line.push('\n');
    line
}

type Row = (
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i32,
    Option<String>,
);

fn entry(r: Row) -> AuditEntry {
    let (id, at, user_id, username, credential, token_id, action, route, object_kind, object_id, source, status, code) =
        r;
    AuditEntry {
        id,
        at: from_ms(at),
        user_id,
        username,
        credential,
        token_id,
        action,
        route,
        object_kind,
        object_id,
        source,
        status: u16::try_from(status).unwrap_or_default(),
        error_code: code,
    }
}

/// The filters of a query, checked.
#[derive(Debug, Clone)]
struct Filters {
    tenant_id: i64,
    with_tenantless: bool,
    from: Option<i64>,
    to: Option<i64>,
    user_id: Option<i64>,
    username: Option<String>,
    object_kind: Option<String>,
    object_id: Option<String>,
    action: Option<String>,
}

fn text_filter(value: Option<String>, field: &str, max: usize) -> Result<Option<String>> {
    match value {
        Some(v) if v.chars().count() > max => Err(DomainError::field(
            ErrorCode::InvalidQuery,
            field,
            format!("`{field}` is longer than {max} characters"),
        )),
        v => Ok(v),
    }
}

impl Filters {
    fn new(who: &Authorized<TenantAdmin>, q: &AuditQuery) -> Result<Filters> {
        if q.user_id.is_some_and(|id| id < 1) {
            return Err(DomainError::field(ErrorCode::InvalidQuery, "user_id", "`user_id` must be 1 or more"));
        }
        Ok(Filters {
            tenant_id: who.tenant_id(),
            with_tenantless: who.is_installation_admin(),
            from: q.from.map(|t| t.timestamp_millis()),
            to: q.to.map(|t| t.timestamp_millis()),
            user_id: q.user_id,
            username: text_filter(q.username.clone(), "username", 200)?,
            object_kind: text_filter(q.object_kind.clone(), "object_kind", 64)?,
            object_id: text_filter(q.object_id.clone(), "object_id", 200)?,
            action: text_filter(q.action.clone(), "action", 100)?,
        })
    }

    fn query(&self) -> audit_log::BoxedQuery<'static, crate::db::MultiBackend> {
        let mut q = audit_log::table.into_boxed();
        q = if self.with_tenantless {
            q.filter(audit_log::tenant_id.eq(self.tenant_id).or(audit_log::tenant_id.is_null()))
        } else {
            q.filter(audit_log::tenant_id.eq(self.tenant_id))
        };
        if let Some(from) = self.from {
            q = q.filter(audit_log::at.ge(from));
        }
        if let Some(to) = self.to {
            q = q.filter(audit_log::at.lt(to));
        }
        if let Some(v) = self.user_id {
            q = q.filter(audit_log::user_id.eq(v));
        }
        if let Some(v) = self.username.clone() {
            q = q.filter(audit_log::username.eq(v));
        }
        if let Some(v) = self.object_kind.clone() {
            q = q.filter(audit_log::object_kind.eq(v));
        }
        if let Some(v) = self.object_id.clone() {
            q = q.filter(audit_log::object_id.eq(v));
        }
        if let Some(v) = self.action.clone() {
            q = q.filter(audit_log::action.eq(v));
        }
        q
    }
}

macro_rules! columns {
    () => {
        (
            audit_log::id,
            audit_log::at,
            audit_log::user_id,
            audit_log::username,
            audit_log::credential,
            audit_log::token_id,
            audit_log::action,
            audit_log::route,
            audit_log::object_kind,
            audit_log::object_id,
            audit_log::source,
            audit_log::status,
            audit_log::error_code,
        )
    };
}

impl Domain {
    /// Stores a batch of entries in one transaction. A login's entry names a user by name
    /// only; the user's id and tenant are looked up here, off the request path.
    pub async fn record_audit(&self, entries: Vec<AuditRecord>) -> Result<()> {
        use crate::schema::users;
        self.db
            .write(move |c| {
                for e in entries {
                    let (mut tenant_id, mut user_id) = (e.tenant_id, e.user_id);
                    if tenant_id.is_none()
                        && let Some(name) = &e.username
                    {
                        let found: Option<(i64, i64)> = users::table
                            .filter(users::username.eq(name))
                            .select((users::id, users::tenant_id))
                            .first(c)
                            .optional()?;
                        if let Some((id, tenant)) = found {
                            user_id = user_id.or(Some(id));
                            tenant_id = Some(tenant);
                        }
                    }
                    diesel::insert_into(audit_log::table)
                        .values((
                            audit_log::tenant_id.eq(tenant_id),
                            audit_log::at.eq(e.at_ms),
                            audit_log::user_id.eq(user_id),
                            audit_log::username.eq(e.username),
                            audit_log::credential.eq(e.credential),
                            audit_log::token_id.eq(e.token_id),
                            audit_log::action.eq(e.action),
                            audit_log::route.eq(e.route),
                            audit_log::object_kind.eq(e.object_kind),
                            audit_log::object_id.eq(e.object_id),
                            audit_log::source.eq(e.source),
                            audit_log::status.eq(i32::from(e.status)),
                            audit_log::error_code.eq(e.error_code),
                        ))
                        .execute(c)?;
                }
                Ok(())
            })
            .await
    }

    /// A page of the tenant's audit log, newest first.
    pub async fn list_audit(&self, who: &Authorized<TenantAdmin>, q: AuditQuery) -> Result<Page<AuditEntry>> {
        let page = PageRequest::new(q.page, q.per_page)?;
        let filters = Filters::new(who, &q)?;
        let (rows, total) = self
            .db
            .snapshot(move |c| {
                let total: i64 = filters.query().count().get_result(c)?;
                let rows: Vec<Row> = filters
                    .query()
                    .order(audit_log::id.desc())
                    .limit(page.limit())
                    .offset(page.offset())
                    .select(columns!())
                    .load(c)?;
                Ok((rows, total))
            })
            .await?;
        Ok(page.wrap(rows.into_iter().map(entry).collect(), total))
    }

    /// Checks an export's filters before its answer starts (so a bad one is a 400, not a
    /// broken stream).
    /// `page` and `per_page` are checked like the list's, then ignored.
    pub fn check_audit_export(&self, who: &Authorized<TenantAdmin>, q: &AuditQuery) -> Result<()> {
        PageRequest::new(q.page, q.per_page)?;
        Filters::new(who, q).map(|_| ())
    }

    /// One batch of the CSV export, newest first: entries with an id below `before` (all when
    /// `None`), and the cursor of the next batch (`None` when this one is empty).
    pub async fn audit_export_page(
        &self,
        who: &Authorized<TenantAdmin>,
        q: &AuditQuery,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<AuditEntry>, Option<i64>)> {
        let filters = Filters::new(who, q)?;
        let rows = self
            .db
            .run(move |c| {
                let mut query = filters.query();
                if let Some(before) = before {
                    query = query.filter(audit_log::id.lt(before));
                }
                let rows: Vec<Row> = query.order(audit_log::id.desc()).limit(limit).select(columns!()).load(c)?;
                Ok(rows)
            })
            .await?;
        let next = rows.last().map(|r| r.0);
        Ok((rows.into_iter().map(entry).collect(), next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_quote_what_needs_it() {
        let e = AuditEntry {
            id: 7,
            at: from_ms(0),
            user_id: Some(1),
            username: Some("a,\"b\"".into()),
            credential: Some("session".into()),
            token_id: None,
            action: "login".into(),
            route: "POST /api/v1/auth/login".into(),
            object_kind: None,
            object_id: None,
            source: "127.0.0.1".into(),
            status: 200,
            error_code: None,
        };
        assert_eq!(
            csv_row(&e),
            "7,1970-01-01T00:00:00.000Z,1,\"a,\"\"b\"\"\",session,,login,POST /api/v1/auth/login,,,127.0.0.1,200,\n"
        );
        assert_eq!(CSV_HEADER.matches(',').count(), csv_row(&e).matches(',').count() - 1);
    }
}
