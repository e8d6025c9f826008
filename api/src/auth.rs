//! Authentication: login JWTs and API tokens, resolved by [`resolve_credentials`] and checked
//! against the capability a route needs by the [`Auth`] extractor.

use std::net::IpAddr;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ota_domain::Domain;
use ota_domain::access::{Authorized, Capability};
use ota_domain::auth::{Principal, TOKEN_PREFIX};
use ota_wire::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;

/// Signing keys for login sessions (HS256 with the configured secret).
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub ttl: chrono::Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id.
    sub: String,
    iat: i64,
    exp: i64,
    /// Issue time in milliseconds, compared with the user's last password change.
    iat_ms: i64,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl: chrono::Duration) -> JwtKeys {
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), ttl }
    }

    pub fn issue(
        &self,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now.timestamp(),
            exp: expires.timestamp(),
            iat_ms: now.timestamp_millis(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError(anyhow::anyhow!("jwt encode: {e}").into()))?;
        Ok((token, expires))
    }

    /// Checks the signature here and the expiry against the domain clock (so tests can fake it).
    fn verify(&self, token: &str, now_ms: i64) -> Result<(i64, i64), ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| ApiError::new(ErrorCode::InvalidCredentials, "the bearer token is not valid"))?;
        if data.claims.exp * 1000 <= now_ms {
            return Err(ApiError::new(ErrorCode::TokenExpired, "the session has expired; log in again"));
        }
        let user_id = data
            .claims
            .sub
            .parse()
            .map_err(|_| ApiError::new(ErrorCode::InvalidCredentials, "the bearer token is not valid"))?;
        Ok((user_id, data.claims.iat_ms))
    }
}

/// What the credentials of a request resolved to, stored by [`resolve_credentials`] before
/// any handler argument is extracted.
#[derive(Clone)]
enum Resolved {
    Principal(Principal),
    Refused(ErrorBody),
}

/// Middleware: authenticates the `Authorization` header, if any, once per request, before the
/// handler's arguments are extracted. The [`Auth`] extractor then only reads the result, so it
/// is ready at once and its refusal (401/403) comes before any complaint about the body, the
/// path or the query.
pub async fn resolve_credentials(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let header = header.to_str().map(str::to_owned);
        let resolved = match req.app_data::<web::Data<AppState>>() {
            Some(state) => match authenticate_header(&state.domain, &state.jwt, header).await {
                Ok(p) => Resolved::Principal(p),
                Err(e) => {
                    // Log unexpected causes here, once; the body never carries them.
                    let _ = e.error_response();
                    Resolved::Refused(e.body())
                }
            },
            None => Resolved::Refused(ApiError(anyhow::anyhow!("application state missing").into()).body()),
        };
        req.extensions_mut().insert(resolved);
    }
    next.call(req).await
}

async fn authenticate_header(
    domain: &Domain,
    jwt: &JwtKeys,
    header: Result<String, actix_web::http::header::ToStrError>,
) -> Result<Principal, ApiError> {
    let header =
        header.map_err(|_| ApiError::new(ErrorCode::InvalidCredentials, "the Authorization header is not text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidCredentials, "use the Bearer scheme"))?;
    if token.starts_with(TOKEN_PREFIX) {
        return Ok(domain.token_principal(token).await?);
    }
    let (user_id, issued_at_ms) = jwt.verify(token, domain.clock.now_ms())?;
    Ok(domain.session_principal(user_id, issued_at_ms).await?)
}

/// The capability `C` of the request's credentials (`Authorization: Bearer <jwt or ota_…
/// token>`): the extractor every authenticated route takes first. A handler gets the
/// [`Authorized<C>`] the domain call needs only through it.
pub struct Auth<C: Capability>(pub Authorized<C>);

impl<C: Capability> std::ops::Deref for Auth<C> {
    type Target = Authorized<C>;
    fn deref(&self) -> &Authorized<C> {
        &self.0
    }
}

impl<C: Capability> FromRequest for Auth<C> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Auth<C>, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let resolved = req.extensions().get::<Resolved>().cloned();
        std::future::ready(match resolved {
            None => Err(ApiError::new(ErrorCode::MissingCredentials, "send Authorization: Bearer <token>").into()),
            Some(Resolved::Refused(body)) => Err(ApiError::from(body).into()),
            Some(Resolved::Principal(p)) => Authorized::<C>::check(p).map(Auth).map_err(|e| ApiError(e).into()),
        })
    }
}

/// The principal the request's credentials resolved to, if they were valid (for the audit
/// log, which records refused requests too).
pub fn principal(req: &HttpRequest) -> Option<Principal> {
    match req.extensions().get::<Resolved>() {
        Some(Resolved::Principal(p)) => Some(p.clone()),
        _ => None,
    }
}

/// The client address a request came from: the peer, or, when the peer is a configured
/// trusted proxy, the last address of its `X-Forwarded-For` (the one that proxy saw).
pub fn client_address(req: &HttpRequest, trusted_proxies: &[IpAddr]) -> String {
    let peer = req.peer_addr().map(|a| a.ip());
    if let Some(peer) = peer
        && trusted_proxies.contains(&peer)
        && let Some(forwarded) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return forwarded.to_string();
    }
    peer.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".to_owned())
}
