//! Login, the current principal, password change, users of the tenant, API tokens.

use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, web};
use ota_wire::dto::*;
use ota_wire::{ErrorBody, ErrorCode};

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// Log in with user name and password; returns a session JWT.
///
/// Failed attempts are counted per user name and per client address; past five, each further
/// attempt must wait twice as long as the last (429 with `Retry-After`).
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "`login_failed` or `user_disabled`", body = ErrorBody),
        (status = 429, description = "`too_many_login_attempts`", body = ErrorBody),
    )
)]
#[post("/auth/login")]
pub async fn login(
    st: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let domain = &st.domain;
    let now = domain.clock.now_ms();
    let user_key = format!("user:{}", body.username.to_lowercase());
    let addr_key = format!("addr:{}", req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default());
    for key in [&user_key, &addr_key] {
        if let Err(wait) = domain.login_throttle.check(key, now) {
            return Err(ApiError(ota_domain::DomainError::with_details(
                ErrorCode::TooManyLoginAttempts,
                format!("too many failed logins; try again in {wait} s"),
                serde_json::json!({ "retry_after_seconds": wait }),
            )));
        }
    }
    match domain.verify_login(&body.username, &body.password).await {
        Ok(user) => {
            domain.login_throttle.record_success(&user_key);
            let (token, expires_at) = st.jwt.issue(user.id, domain.clock.now())?;
            Ok(HttpResponse::Ok().json(LoginResponse { token, token_type: "Bearer".into(), expires_at }))
        }
        Err(e) => {
            if e.code() == ErrorCode::LoginFailed {
                domain.login_throttle.record_failure(&user_key, now);
                domain.login_throttle.record_failure(&addr_key, now);
            }
            Err(e.into())
        }
    }
}

/// Who these credentials belong to, and what they may do.
#[utoipa::path(tag = "auth", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
#[get("/auth/me")]
pub async fn whoami(who: Auth) -> HttpResponse {
    let credential = match who.credential {
        ota_domain::auth::Credential::Session => "session",
        ota_domain::auth::Credential::ApiToken { .. } => "api_token",
    };
    HttpResponse::Ok().json(WhoAmI {
        user_id: who.user_id,
        username: who.username.clone(),
        tenant: who.tenant_name.clone(),
        role: who.role,
        scopes: who.scopes.iter().copied().collect(),
        credential: credential.into(),
    })
}

/// Change your own password. Sessions issued before the change stop working.
#[utoipa::path(
    tag = "auth",
    request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, description = "`wrong_password`", body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/auth/password")]
pub async fn change_password(
    st: web::Data<AppState>,
    who: Auth,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    st.domain.change_password(&who, &body.current_password, &body.new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create a user in your tenant (tenant admins only).
#[utoipa::path(
    tag = "users",
    request_body = CreateUserRequest,
    responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/users")]
pub async fn create_user(
    st: web::Data<AppState>,
    who: Auth,
    body: web::Json<CreateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = st.domain.create_user(&who, &body.username, &body.password, body.role).await?;
    Ok(HttpResponse::Created().json(user))
}

/// List the users of your tenant (tenant admins only).
#[utoipa::path(tag = "users", responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody)), security(("bearer" = [])))]
#[get("/users")]
pub async fn list_users(st: web::Data<AppState>, who: Auth) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_users(&who).await?))
}

/// Disable or re-enable a user, or change their role (tenant admins only).
#[utoipa::path(
    tag = "users",
    params(("id" = i64, Path, description = "user id")),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[patch("/users/{id}")]
pub async fn update_user(
    st: web::Data<AppState>,
    who: Auth,
    id: web::Path<i64>,
    body: web::Json<UpdateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = st.domain.update_user(&who, id.into_inner(), body.disabled, body.role).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Create an API token for scripts. The secret is in this response only.
#[utoipa::path(
    tag = "tokens",
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
#[post("/tokens")]
pub async fn create_token(
    st: web::Data<AppState>,
    who: Auth,
    body: web::Json<CreateTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let (token, secret) = st.domain.create_token(&who, &body.name, &body.scopes, body.expires_in_days).await?;
    Ok(HttpResponse::Created().json(CreatedToken { token, secret }))
}

/// List API tokens: all of the tenant for admins, your own otherwise. Secrets are never shown.
#[utoipa::path(tag = "tokens", responses((status = 200, body = Vec<TokenView>)), security(("bearer" = [])))]
#[get("/tokens")]
pub async fn list_tokens(st: web::Data<AppState>, who: Auth) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_tokens(&who).await?))
}

/// Revoke an API token; it stops working at once.
#[utoipa::path(
    tag = "tokens",
    params(("id" = i64, Path, description = "token id")),
    responses((status = 200, body = TokenView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
#[delete("/tokens/{id}")]
pub async fn revoke_token(st: web::Data<AppState>, who: Auth, id: web::Path<i64>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.revoke_token(&who, id.into_inner()).await?))
}
