//! Login, the current principal, password change, users of the tenant, API tokens.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, delete, get, patch, post, web};
use ota_wire::ErrorBody;
use ota_wire::dto::*;

use ota_domain::access::{Credentials, LoginSession, Read, TenantAdmin, Write};

use crate::AppState;
use crate::auth::{Auth, client_address};
use crate::error::ApiError;
use crate::extract::Json;

/// Log in with user name and password; returns a session JWT.
///
/// Failed attempts are counted before the password is checked, per user name and client
/// address and per client address, in the database (shared by every API node): past the free
/// attempts each further one must wait twice as long as the last (429 with `Retry-After`).
/// Password checks run a few at a time; one that cannot start within the queue deadline is
/// answered 503 `password_checks_busy` with `Retry-After`.
#[utoipa::path(
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "`login_failed` or `user_disabled`", body = ErrorBody),
        (status = 429, description = "`too_many_login_attempts`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait"))),
        (status = 503, description = "`password_checks_busy`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait"))),
    )
)]
#[post("/auth/login")]
pub async fn login(
    st: web::Data<AppState>,
    req: HttpRequest,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let source = client_address(&req, &st.trusted_proxies);
    // The audit entry's only identity (see `crate::audit`).
    req.extensions_mut().insert(crate::audit::LoginName(body.username.clone()));
    let user = st.domain.login(&body.username, &body.password, &source).await?;
    let (token, expires_at) = st.jwt.issue(user.id, st.domain.clock.now())?;
    Ok(HttpResponse::Ok().json(LoginResponse { token, token_type: "Bearer".into(), expires_at }))
}

/// Who these credentials belong to, and what they may do.
#[utoipa::path(tag = "auth", responses((status = 200, body = WhoAmI)), security(("bearer" = [])))]
#[get("/auth/me")]
pub async fn whoami(who: Auth<Credentials>) -> HttpResponse {
    let credential = match who.credential() {
        ota_domain::auth::Credential::Session => "session",
        ota_domain::auth::Credential::ApiToken { .. } => "api_token",
    };
    HttpResponse::Ok().json(WhoAmI {
        user_id: who.user_id(),
        username: who.username().to_owned(),
        tenant: who.tenant_name().to_owned(),
        role: who.role(),
        scopes: who.scopes().iter().copied().collect(),
        credential: credential.into(),
    })
}

/// Change your own password, from a login session (never with an API token). Sessions issued
/// before the change stop working.
#[utoipa::path(
    tag = "auth",
    request_body = ChangePasswordRequest,
    responses(
        (status = 204),
        (status = 403, description = "`wrong_password`", body = ErrorBody),
        (status = 503, description = "`password_checks_busy`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait"))),
    ),
    security(("bearer" = ["session"]))
)]
#[post("/auth/password")]
pub async fn change_password(
    st: web::Data<AppState>,
    who: Auth<LoginSession>,
    body: Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    st.domain.change_password(&who, &body.current_password, &body.new_password).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create a user in your tenant (tenant admins: a login session or an `admin` token).
#[utoipa::path(
    tag = "users",
    request_body = CreateUserRequest,
    responses(
        (status = 201, body = UserView),
        (status = 409, description = "`username_taken`", body = ErrorBody),
        (status = 503, description = "`password_checks_busy`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait"))),
    ),
    security(("bearer" = ["admin"]))
)]
#[post("/users")]
pub async fn create_user(
    st: web::Data<AppState>,
    who: Auth<TenantAdmin>,
    body: Json<CreateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = st.domain.create_user(&who, &body.username, &body.password, body.role).await?;
    Ok(HttpResponse::Created().json(user))
}

/// List the users of your tenant (tenant admins).
#[utoipa::path(tag = "users", responses((status = 200, body = Vec<UserView>)), security(("bearer" = ["admin"])))]
#[get("/users")]
pub async fn list_users(st: web::Data<AppState>, who: Auth<TenantAdmin>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_users(&who).await?))
}

/// Disable or re-enable a user, or change their role (tenant admins). An admin cannot
/// disable or demote themselves (`self_lockout`).
#[utoipa::path(
    tag = "users",
    params(("id" = i64, Path, description = "user id", minimum = 1)),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, body = UserView),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 409, description = "`self_lockout`", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
#[patch("/users/{id}")]
pub async fn update_user(
    st: web::Data<AppState>,
    who: Auth<TenantAdmin>,
    id: web::Path<i64>,
    body: Json<UpdateUserRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = st.domain.update_user(&who, id.into_inner(), body.disabled, body.role).await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Create an API token for scripts. The secret is in this response only. A token never
/// carries a scope its creator's credentials lack (`insufficient_scope`).
#[utoipa::path(
    tag = "tokens",
    request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken)),
    security(("bearer" = ["write"]))
)]
#[post("/tokens")]
pub async fn create_token(
    st: web::Data<AppState>,
    who: Auth<Write>,
    body: Json<CreateTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let (token, secret) = st.domain.create_token(&who, &body.name, &body.scopes, body.expires_in_days).await?;
    Ok(HttpResponse::Created().json(CreatedToken { token, secret }))
}

/// List API tokens: all of the tenant for tenant admins (a login session or an `admin`
/// token), your own otherwise. Secrets are never shown.
#[utoipa::path(tag = "tokens", responses((status = 200, body = Vec<TokenView>)), security(("bearer" = ["read"])))]
#[get("/tokens")]
pub async fn list_tokens(st: web::Data<AppState>, who: Auth<Read>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.list_tokens(&who).await?))
}

/// Revoke an API token; it stops working at once. Tenant admins may revoke any of the
/// tenant's tokens, others their own.
#[utoipa::path(
    tag = "tokens",
    params(("id" = i64, Path, description = "token id", minimum = 1)),
    responses((status = 200, body = TokenView), (status = 404, description = "`token_not_found`", body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[delete("/tokens/{id}")]
pub async fn revoke_token(
    st: web::Data<AppState>,
    who: Auth<Write>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.revoke_token(&who, id.into_inner()).await?))
}
