//! Authentication: login JWTs and API tokens, checked by the [`Auth`] extractor.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ota_domain::Domain;
use ota_domain::auth::{Principal, TOKEN_PREFIX};
use ota_wire::ErrorCode;
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

/// The authenticated principal of a request: `Authorization: Bearer <jwt or ota_… token>`.
pub struct Auth(pub Principal);

impl std::ops::Deref for Auth {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequest for Auth {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Auth, actix_web::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req.headers().get(actix_web::http::header::AUTHORIZATION).map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError(anyhow::anyhow!("application state missing").into()))?;
            let header = match header {
                None => {
                    return Err(
                        ApiError::new(ErrorCode::MissingCredentials, "send Authorization: Bearer <token>").into()
                    );
                }
                Some(Err(_)) => {
                    return Err(
                        ApiError::new(ErrorCode::InvalidCredentials, "the Authorization header is not text").into()
                    );
                }
                Some(Ok(h)) => h,
            };
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidCredentials, "use the Bearer scheme"))?;
            Ok(Auth(authenticate(&state.domain, &state.jwt, token).await?))
        })
    }
}

async fn authenticate(domain: &Domain, jwt: &JwtKeys, token: &str) -> Result<Principal, ApiError> {
    if token.starts_with(TOKEN_PREFIX) {
        return Ok(domain.token_principal(token).await?);
    }
    let (user_id, issued_at_ms) = jwt.verify(token, domain.clock.now_ms())?;
    Ok(domain.session_principal(user_id, issued_at_ms).await?)
}
