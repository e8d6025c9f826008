//! Per-request context of the API: a request id (the caller's `X-Request-Id` when it is sane,
//! else a fresh one) on every log line of the request (a tracing span) and on the response, and
//! the request metrics (`ota_api_requests_total`, `ota_api_request_seconds`) by route pattern.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

/// The header that carries the request id both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming id is kept when it is 1 to 64 characters of `[A-Za-z0-9._-]`: anything else
/// could forge log lines or flood them, and is replaced.
pub fn sane_request_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn fresh_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The middleware (mounted outermost, so every answer has the id, errors included).
pub async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane_request_id(v))
        .map_or_else(fresh_request_id, str::to_owned);
    // The request carries the id chosen, so inner layers (the access log's `%{x-request-id}i`)
    // see it.
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, value);
    }
    let method = req.method().to_string();
    let span = tracing::info_span!("api", request_id = %id, %method, path = %req.path());
    let started = std::time::Instant::now();
    let result = next.call(req).instrument(span).await;
    let mut res = result?;
    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = res.status().as_u16().to_string();
    metrics::counter!(
        ota_domain::metrics::API_REQUESTS,
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(ota_domain::metrics::API_REQUEST_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_taken_from_the_caller() {
        assert!(sane_request_id("abc-123_X.y"));
        assert!(sane_request_id(&"a".repeat(64)));
        assert!(!sane_request_id(""));
        assert!(!sane_request_id(&"a".repeat(65)));
        assert!(!sane_request_id("a b"));
        assert!(!sane_request_id("a\nforged=1"));
        assert!(!sane_request_id("é"));
    }
}
