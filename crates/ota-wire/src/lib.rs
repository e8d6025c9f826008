//! Wire types of the OTA server's management API: request and response bodies and the
//! catalogue of stable error codes. Depends on nothing internal, so API clients, the server and
//! the CLI share one definition.

pub mod audit;
pub mod dto;
pub mod error;
pub mod rollout;
pub mod rules;

pub use error::{ErrorBody, ErrorCode};
