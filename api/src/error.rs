//! Turning domain errors and actix extractor failures into `{"code", "message", "details"}`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use ota_domain::DomainError;
use ota_wire::{ErrorBody, ErrorCode};

/// The one error type handlers return.
#[derive(Debug)]
pub struct ApiError(pub DomainError);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        ApiError(e)
    }
}

impl From<ErrorBody> for ApiError {
    /// An error body kept from earlier in the request (credentials resolved by the middleware).
    fn from(b: ErrorBody) -> Self {
        ApiError(DomainError::Expected { code: b.code, message: b.message, details: b.details })
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(DomainError::new(code, message))
    }

    pub fn body(&self) -> ErrorBody {
        match &self.0 {
            DomainError::Expected { code, message, details } => {
                ErrorBody { code: *code, message: message.clone(), details: details.clone() }
            }
            // 5xx bodies never carry the cause; it is logged in `error_response`.
            DomainError::UniqueViolation | DomainError::Internal(_) => ErrorBody {
                code: ErrorCode::InternalError,
                message: "internal error; the cause is in the server log".into(),
                details: None,
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let DomainError::Internal(cause) = &self.0 {
            tracing::error!(error = ?cause, "request failed");
        } else if let DomainError::UniqueViolation = &self.0 {
            tracing::error!("unhandled unique violation");
        }
        let body = self.body();
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = body.details.as_ref().and_then(|d| d.get("retry_after_seconds")).and_then(|v| v.as_i64())
        {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(body)
    }
}

/// JSON bodies that fail to parse.
pub fn json_error(err: actix_web::error::JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let e = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => {
            ApiError::new(ErrorCode::PayloadTooLarge, "the JSON body is larger than the limit")
        }
        J::ContentType => ApiError::new(ErrorCode::UnsupportedMediaType, "send the body as application/json"),
        other => ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {other}")),
    };
    e.into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::InvalidPath, format!("invalid path parameter: {err}")).into()
}
