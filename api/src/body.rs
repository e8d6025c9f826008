//! Reading whole request bodies (CSV imports, MAC lists) with a size limit.
//!
//! A declared `Content-Length` over the limit is refused before a byte is read; a chunked body
//! is cut off as soon as the running count passes it.

use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use ota_domain::DomainError;
use ota_wire::ErrorCode;

use crate::error::ApiError;

fn too_large(limit: usize) -> ApiError {
    ApiError::from(DomainError::with_details(
        ErrorCode::PayloadTooLarge,
        format!("the body may have at most {limit} bytes"),
        serde_json::json!({ "limit_bytes": limit }),
    ))
}

/// The whole body, at most `limit` bytes; a body that breaks off answers `unreadable`.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    unreadable: ErrorCode,
) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::from(DomainError::new(unreadable, format!("the body could not be read: {e}"))))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
