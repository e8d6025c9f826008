//! The audit log's recording side: one middleware around every route, so what is recorded
//! does not depend on a call each handler must remember.
//!
//! [`record`] writes an entry for every request that is not a GET (nor HEAD or OPTIONS) and
//! that reached one of its operations, after its answer: refused ones (401, 403, 4xx) included. Who comes
//! from the credentials [`crate::auth::resolve_credentials`] resolved (a login names its user
//! through [`LoginName`]); what is the route's operation id; the object is the route's last
//! path parameter with the segment before it as its kind, or, for a creation (201), the id in
//! the answer; from where is [`client_address`] (trusted proxies honoured); the result is the
//! status and the error code. Entries go to a writer task in batches ([`AuditSink`]), off the
//! request path; a batch that cannot be written after a few tries is logged at error level,
//! entry by entry, so nothing is lost silently.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, web};
use ota_domain::Domain;
use ota_domain::audit::AuditRecord;
use ota_domain::auth::Credential;
use tokio::sync::mpsc;

use crate::AppState;
use crate::auth::{client_address, principal};
use crate::error::ApiError;

/// Entries written per transaction at most.
const BATCH: usize = 256;
/// Tries of one batch before its entries go to the error log.
const TRIES: u32 = 3;
/// Largest creation answer read for the created object's id.
const CREATED_BODY_LIMIT: usize = 256 * 1024;

/// The user name a login request named, set by the login handler before it checks the
/// password (the only identity a login has).
#[derive(Debug, Clone)]
pub struct LoginName(pub String);

/// The operation id of each `(method, route pattern)`, from the OpenAPI document.
#[derive(Debug, Clone, Default)]
pub struct Operations(HashMap<(String, String), String>);

impl Operations {
    pub fn from_openapi(api: &utoipa::openapi::OpenApi) -> Operations {
        let doc = serde_json::to_value(api).unwrap_or_default();
        let mut map = HashMap::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (path, item) in paths {
                let Some(item) = item.as_object() else { continue };
                for (method, op) in item {
                    if let Some(id) = op["operationId"].as_str() {
                        map.insert((method.to_ascii_uppercase(), path.clone()), id.to_owned());
                    }
                }
            }
        }
        Operations(map)
    }
}

/// Hands entries to the writer task.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::UnboundedSender<AuditRecord>,
}

impl AuditSink {
    /// Starts the writer task (on the current tokio runtime).
    pub fn start(domain: Domain) -> AuditSink {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(domain, rx));
        AuditSink { tx }
    }

    fn send(&self, entry: AuditRecord) {
        if let Err(e) = self.tx.send(entry) {
            tracing::error!(entry = ?e.0, "audit writer stopped; entry not stored");
        }
    }
}

async fn write_batches(domain: Domain, mut rx: mpsc::UnboundedReceiver<AuditRecord>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut tries = 0;
        loop {
            tries += 1;
            match domain.record_audit(batch.clone()).await {
                Ok(()) => break,
                Err(e) if tries < TRIES => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit batch not written; trying again");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, entries = batch.len(), "audit batch could not be written");
                    for entry in &batch {
                        tracing::error!(?entry, "audit entry not stored");
                    }
                    break;
                }
            }
        }
    }
}

/// `users` → `user`, `mac-lists` → `mac-list`; `firmware`, `verification` stay.
fn singular(segment: &str) -> String {
    match segment.strip_suffix('s') {
        Some(s) if !s.ends_with('s') && !s.is_empty() => s.to_owned(),
        _ => segment.to_owned(),
    }
}

/// The object a route names: its last path parameter, kind from the segment before it.
fn path_object(req: &HttpRequest, pattern: &str) -> (Option<String>, Option<String>) {
    let segments: Vec<&str> = pattern.trim_start_matches("/api/v1").trim_start_matches('/').split('/').collect();
    if segments.first() == Some(&"auth") {
        return (None, None);
    }
    let mut found = (None, None);
    for pair in segments.windows(2) {
        if let Some(name) = pair[1].strip_prefix('{').and_then(|s| s.strip_suffix('}'))
            && !pair[0].starts_with('{')
        {
            found = (Some(singular(pair[0])), req.match_info().get(name).map(str::to_owned));
        }
    }
    if found.0.is_none() {
        found.0 = segments.last().filter(|s| !s.is_empty()).map(|s| singular(s));
    }
    found
}

/// The id of what a 201 answer created: `id`, `request_id` (a rule) or `product_key`.
fn created_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["id", "request_id", "product_key"].iter().find_map(|k| match &value[*k] {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    })
}

/// Middleware: records the request after its answer (see the module doc).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let skip = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let (Some(state), false) = (state, skip) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let at_ms = state.domain.clock.now_ms();
    let source = client_address(req.request(), &state.trusted_proxies);
    let method = req.method().to_string();
    // Never clone the request before routing (routing needs it unshared): read it back from
    // the answer.
    let res = match next.call(req).await {
        Ok(res) => res,
        Err(e) => {
            tracing::warn!(error = %e, %method, "request failed before an answer; not audited");
            return Err(e);
        }
    };
    let http_req = res.request().clone();
    let Some(pattern) = http_req.match_pattern() else {
        return Ok(res.map_into_boxed_body());
    };
    let status = res.status();
    let error_code =
        res.response().error().and_then(|e| e.as_error::<ApiError>()).map(|e| e.body().code.as_str().to_owned());
    let mut res = res.map_into_boxed_body();
    let (mut object_kind, mut object_id) = path_object(&http_req, &pattern);
    if status == StatusCode::CREATED {
        let (request, response) = res.into_parts();
        let (response, body) = response.into_parts();
        let bytes = actix_web::body::to_bytes_limited(body, CREATED_BODY_LIMIT).await;
        let bytes = match bytes {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                tracing::error!("created answer too large to read");
                return Err(actix_web::error::ErrorInternalServerError("answer too large"));
            }
        };
        if let Some(id) = created_id(&bytes) {
            object_kind = pattern.rsplit('/').next().map(singular);
            object_id = Some(id);
        }
        res = ServiceResponse::new(request, response.set_body(BoxBody::new(bytes)));
    }
    let who = principal(&http_req);
    let login = http_req.extensions().get::<LoginName>().map(|l| l.0.clone());
    // A method the route does not have (405) reached no handler: not an action.
    let operations = http_req.app_data::<web::Data<Operations>>();
    let Some(action) = operations.and_then(|o| o.0.get(&(method.clone(), pattern.clone())).cloned()) else {
        return Ok(res);
    };
    state.audit.send(AuditRecord {
        tenant_id: who.as_ref().map(|p| p.tenant_id()),
        at_ms,
        user_id: who.as_ref().map(|p| p.user_id()),
        username: who.as_ref().map(|p| p.username().to_owned()).or(login),
        credential: who.as_ref().map(|p| match p.credential() {
            Credential::Session => "session",
            Credential::ApiToken { .. } => "api_token",
        }),
        token_id: who.as_ref().and_then(|p| match p.credential() {
            Credential::ApiToken { id } => Some(id),
            Credential::Session => None,
        }),
        action,
        route: format!("{method} {pattern}"),
        object_kind,
        object_id,
        source,
        status: status.as_u16(),
        error_code,
    });
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_names() {
        assert_eq!(singular("users"), "user");
        assert_eq!(singular("mac-lists"), "mac-list");
        assert_eq!(singular("firmware"), "firmware");
        assert_eq!(singular("verification"), "verification");
        assert_eq!(singular("region-zones"), "region-zone");
    }

    #[test]
    fn created_ids() {
        assert_eq!(created_id(br#"{"id":7,"name":"x"}"#).as_deref(), Some("7"));
        assert_eq!(created_id(br#"{"request_id":12}"#).as_deref(), Some("12"));
        assert_eq!(created_id(br#"{"product_key":"pk1"}"#).as_deref(), Some("pk1"));
        assert_eq!(created_id(b"not json"), None);
    }
}
