//! The published contract, completed from the routes themselves.
//!
//! Each route's `#[utoipa::path]` documents what is particular to it (its body, its resource
//! codes). [`complete`] adds what every route of its shape answers, so no route can forget it:
//! - a secured route: 401 (`missing_credentials`, `invalid_credentials`, `token_expired`,
//!   `token_revoked`, `user_disabled`), and 403 when its requirement names something the
//!   credentials may lack (`insufficient_scope`, `admin_required`, …);
//! - an integer path parameter: 400 `invalid_path`; any path parameter: 404;
//! - query parameters: 400 `invalid_query`;
//! - a JSON body: 400 (`invalid_json`, `missing_field`, `invalid_field`), 413, 415; other
//!   bodies: 413 and 415;
//! - an `Idempotency-Key` header: 400 `invalid_field`, 409 `idempotency_key_reused` and
//!   `idempotency_key_in_progress`;
//! - every route but `/healthz`: 503 `database_unavailable`.
//!
//! Every error response carries the `ErrorBody` schema. [`RouteTable`] answers requests that
//! match no route: 405 with `Allow` when the path exists with other methods, else 404.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use ota_wire::ErrorCode;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The codes behind a 403, by the operation's requirement (see `BearerAuth`).
fn forbidden_codes(need: &str) -> &'static str {
    match need {
        "session" => "`session_required`",
        "admin" => "`admin_required`, `insufficient_scope` (a token without the `admin` scope)",
        "installation_admin" => {
            "`admin_required`, `insufficient_scope` (a token without the `admin` scope), \
             `installation_admin_required`"
        }
        _ => "`insufficient_scope` (`details.required_scope`)",
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

/// Adds `status` with `codes`, or appends the codes to an existing description.
fn add(responses: &mut Map<String, Value>, status: &str, codes: &str) {
    match responses.get_mut(status) {
        Some(existing) => {
            let text = existing.get("description").and_then(Value::as_str).unwrap_or_default().to_owned();
            let missing: Vec<&str> = codes.split(", ").filter(|c| !text.contains(c.trim())).collect();
            if !missing.is_empty() {
                let joined =
                    if text.is_empty() { missing.join(", ") } else { format!("{text}; {}", missing.join(", ")) };
                existing["description"] = Value::String(joined);
            }
            if existing.get("content").is_none() {
                existing["content"] = error_response("")["content"].clone();
            }
        }
        None => {
            responses.insert(status.to_owned(), error_response(codes));
        }
    }
}

fn has_param(op: &Value, location: &str, integer_only: bool) -> bool {
    op.get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == location && (!integer_only || p["schema"]["type"] == "integer")))
}

/// Request bodies that are serde-tagged enums with `deny_unknown_fields`: utoipa carries that
/// onto structs (`additionalProperties: false`) but not onto the variants of a tagged enum.
const CLOSED_TAGGED_BODIES: [&str; 2] = ["SetAdoptionRequest", "SetRegistrationPolicy"];

/// Completes every operation's responses (see the module doc).
pub fn complete(api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let Ok(mut doc) = serde_json::to_value(&api) else { return api };
    for name in CLOSED_TAGGED_BODIES {
        if let Some(variants) = doc["components"]["schemas"][name]["oneOf"].as_array_mut() {
            for variant in variants {
                variant["additionalProperties"] = Value::Bool(false);
            }
        }
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return api };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method) else { continue };
            let need: Option<Option<String>> = op.get("security").and_then(Value::as_array).and_then(|reqs| {
                reqs.iter()
                    .find_map(|r| r.get("bearer"))
                    .map(|scopes| scopes.as_array().and_then(|a| a.first()).and_then(Value::as_str).map(str::to_owned))
            });
            let int_path = has_param(op, "path", true);
            let any_path = has_param(op, "path", false);
            let query = has_param(op, "query", false);
            let idempotent = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "header" && p["name"] == crate::idempotency::HEADER));
            let body_types: Vec<String> =
                op["requestBody"]["content"].as_object().map(|c| c.keys().cloned().collect()).unwrap_or_default();
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            // OpenAPI requires a description on every response; utoipa leaves empty ones out.
            for (status, response) in responses.iter_mut() {
                if response.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                    let reason = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| actix_web::http::StatusCode::from_u16(s).ok())
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Response");
                    response["description"] = Value::String(reason.to_owned());
                }
            }
            if int_path {
                add(responses, "400", "`invalid_path`");
            }
            if query {
                add(responses, "400", "`invalid_query`");
            }
            if body_types.iter().any(|t| t == "application/json") {
                add(responses, "400", "`invalid_json`, `missing_field`, `invalid_field` (`details.field`)");
            }
            if !body_types.is_empty() {
                add(responses, "413", "`payload_too_large`");
                add(responses, "415", "`unsupported_media_type`");
            }
            if idempotent {
                add(responses, "400", "`invalid_field` (`details.field`: `Idempotency-Key`)");
                add(responses, "409", "`idempotency_key_reused`, `idempotency_key_in_progress`");
            }
            if let Some(need) = need {
                add(
                    responses,
                    "401",
                    "`missing_credentials`, `invalid_credentials`, `token_expired`, `token_revoked`, `user_disabled`",
                );
                if let Some(need) = need {
                    add(responses, "403", forbidden_codes(&need));
                }
            }
            if any_path {
                add(responses, "404", "the resource does not exist in your tenant");
            }
            if path != "/healthz" {
                add(responses, "503", "`database_unavailable`");
            }
        }
    }
    serde_json::from_value(doc).unwrap_or(api)
}

/// Path templates of the document and their methods, for 405 answers.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<(Vec<String>, Vec<&'static str>)>,
}

impl RouteTable {
    pub fn from_openapi(api: &utoipa::openapi::OpenApi) -> RouteTable {
        let doc = serde_json::to_value(api).unwrap_or_default();
        let routes = doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(path, item)| {
                        let segments = path.trim_start_matches('/').split('/').map(str::to_owned).collect();
                        let methods = METHODS
                            .iter()
                            .filter(|m| item.get(**m).is_some())
                            .map(|m| match *m {
                                "get" => "GET",
                                "post" => "POST",
                                "put" => "PUT",
                                "patch" => "PATCH",
                                _ => "DELETE",
                            })
                            .collect();
                        (segments, methods)
                    })
                    .collect()
            })
            .unwrap_or_default();
        RouteTable { routes }
    }

    /// The methods the path has, if it is a route at all.
    pub fn methods(&self, path: &str) -> Option<Vec<&'static str>> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut found: Vec<&'static str> = Vec::new();
        for (template, methods) in &self.routes {
            let matches = template.len() == segments.len()
                && template.iter().zip(&segments).all(|(t, s)| t == s || t.starts_with('{') && !s.is_empty());
            if matches {
                for m in methods {
                    if !found.contains(m) {
                        found.push(m);
                    }
                }
            }
        }
        (!found.is_empty()).then_some(found)
    }
}

/// The default service: 405 with `Allow` for a known path, else 404 `route_not_found`.
pub async fn no_route(req: HttpRequest, routes: Option<web::Data<RouteTable>>) -> HttpResponse {
    if let Some(methods) = routes.and_then(|r| r.methods(req.path())) {
        let allow = methods.join(", ");
        let mut response = ApiError(ota_domain::DomainError::with_details(
            ErrorCode::MethodNotAllowed,
            format!("{} is not allowed here; use {allow}", req.method()),
            json!({ "allow": methods }),
        ))
        .error_response();
        if let Ok(value) = header::HeaderValue::from_str(&allow) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    }
    ApiError::new(ErrorCode::RouteNotFound, "no such route").error_response()
}
