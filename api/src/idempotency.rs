//! The `Idempotency-Key` header of the creating POSTs (see `ota_domain::idempotency`).
//!
//! A handler extracts [`IdempotencyKey`] after its credentials, reads its request, computes
//! the request's fingerprint from what it read (the parsed form and the file's SHA-256 for an
//! upload, whose multipart boundary changes on every send; the JSON body as parsed otherwise)
//! and runs its work through [`IdempotencyKey::run`]. Without the header nothing changes.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse};
use ota_domain::Domain;
use ota_domain::access::{Authorized, Capability};
use ota_domain::idempotency::{Reservation, fingerprint};
use serde::Serialize;

use crate::error::ApiError;

/// The header's name, as documented.
pub const HEADER: &str = "Idempotency-Key";

/// The request's `Idempotency-Key`, if it sent one, with the method and path it came with.
pub struct IdempotencyKey {
    key: Option<String>,
    method: String,
    path: String,
}

impl FromRequest for IdempotencyKey {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<IdempotencyKey, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let key = match req.headers().get(HEADER).map(|v| v.to_str()) {
            None => Ok(None),
            Some(Ok(text)) => ota_domain::idempotency::validate_key(text).map(|()| Some(text.to_owned())),
            Some(Err(_)) => Err(ota_domain::DomainError::invalid(HEADER, "the Idempotency-Key is not visible ASCII")),
        };
        std::future::ready(
            key.map(|key| IdempotencyKey { key, method: req.method().to_string(), path: req.path().to_owned() })
                .map_err(|e| ApiError(e).into()),
        )
    }
}

impl IdempotencyKey {
    /// Runs `work` (which answers a status and a JSON body) once per key: a rerun with the
    /// same content replays the first success; a failure is not remembered.
    pub async fn run<C, T, F>(
        self,
        domain: &Domain,
        who: &Authorized<C>,
        content: &[u8],
        work: F,
    ) -> Result<HttpResponse, ApiError>
    where
        C: Capability,
        T: Serialize,
        F: AsyncFnOnce() -> Result<(StatusCode, T), ApiError>,
    {
        let Some(key) = self.key else {
            let (status, body) = work().await?;
            return Ok(HttpResponse::build(status).json(body));
        };
        let print = fingerprint(&self.method, &self.path, content);
        match domain.idempotency_reserve(who, &key, &print).await? {
            Reservation::Replay { status, body } => {
                Ok(HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
                    .insert_header(("Idempotency-Replayed", "true"))
                    .content_type("application/json")
                    .body(body))
            }
            Reservation::Run => match work().await {
                Ok((status, body)) => {
                    let text = serde_json::to_string(&body).map_err(|e| ApiError(anyhow::Error::from(e).into()))?;
                    domain.idempotency_finish(who, &key, status.as_u16(), text.clone()).await?;
                    Ok(HttpResponse::build(status).content_type("application/json").body(text))
                }
                Err(e) => {
                    if let Err(release) = domain.idempotency_abandon(who, &key).await {
                        tracing::warn!(error = %release, "could not release an idempotency key");
                    }
                    Err(e)
                }
            },
        }
    }
}

/// The header as an OpenAPI parameter, for the operations that take it.
pub struct IdempotencyHeader;

impl utoipa::IntoParams for IdempotencyHeader {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(ota_domain::idempotency::MAX_KEY_LEN))
            .pattern(Some("^[!-~]+$"));
        vec![
            ParameterBuilder::new()
                .name(HEADER)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes a rerun safe: the same key with the same request (method, path, content) \
                     answers the first success again (status and body, with `Idempotency-Replayed: \
                     true`) instead of creating again; the same key with another request is refused \
                     (`idempotency_key_reused`); while the first is running, `idempotency_key_in_progress`. \
                     Errors are not remembered. Keys are per tenant and kept 24 hours.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}
