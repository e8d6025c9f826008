//! The domain's error type.
//!
//! Policy (after crates.io's): expected failures carry a stable [`ErrorCode`] from the public
//! catalogue and a message that is safe to show; anything unexpected is `Internal`, whose cause
//! goes to the log and never into a response.

use ota_wire::ErrorCode;
use serde_json::Value;

pub type Result<T, E = DomainError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A known, expected failure: bad input, a missing resource, a conflict, a denied action.
    #[error("{message}")]
    Expected { code: ErrorCode, message: String, details: Option<Value> },
    /// A UNIQUE constraint refused a write. Services turn it into the conflict it means (a
    /// taken name, a lost fid race); one that escapes is a bug and answers 500.
    #[error("a unique constraint refused the write")]
    UniqueViolation,
    /// Anything else. Logged with its cause; the client sees a generic 500.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl DomainError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        DomainError::Expected { code, message: message.into(), details: None }
    }

    pub fn with_details(code: ErrorCode, message: impl Into<String>, details: Value) -> Self {
        DomainError::Expected { code, message: message.into(), details: Some(details) }
    }

    /// A field-level validation error; `details.field` names the field.
    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Self {
        Self::with_details(code, message, serde_json::json!({ "field": field }))
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::field(ErrorCode::InvalidField, field, message)
    }

    pub fn missing(field: &str) -> Self {
        Self::field(ErrorCode::MissingField, field, format!("`{field}` is required"))
    }

    /// The stable code of an expected error; `InternalError` otherwise.
    pub fn code(&self) -> ErrorCode {
        match self {
            DomainError::Expected { code, .. } => *code,
            DomainError::UniqueViolation | DomainError::Internal(_) => ErrorCode::InternalError,
        }
    }
}

impl From<diesel::result::Error> for DomainError {
    fn from(e: diesel::result::Error) -> Self {
        if is_unique_violation(&e) {
            return DomainError::UniqueViolation;
        }
        DomainError::Internal(anyhow::Error::new(e).context("database query failed"))
    }
}

impl From<std::io::Error> for DomainError {
    fn from(e: std::io::Error) -> Self {
        DomainError::Internal(anyhow::Error::new(e).context("i/o failed"))
    }
}

/// True when the error is a violation of a UNIQUE constraint, on either backend.
pub fn is_unique_violation(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}
