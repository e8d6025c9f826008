//! Tenants, users, API tokens and the principal every request acts as.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{Role, Scope, TokenView, UserView};
use sha2::{Digest, Sha256};

use crate::Domain;
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::error::{DomainError, Result};
use crate::schema::{api_tokens, tenants, users};

/// Who is acting, with what rights. Built by the API from a JWT or an API token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: i64,
    pub tenant_name: String,
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub scopes: BTreeSet<Scope>,
    pub credential: Credential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session,
    ApiToken { id: i64 },
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.contains(&scope) {
            return Ok(());
        }
        Err(DomainError::with_details(
            ErrorCode::InsufficientScope,
            format!("these credentials lack the `{}` scope", scope.as_str()),
            serde_json::json!({ "required_scope": scope.as_str() }),
        ))
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.role == Role::Admin {
            return Ok(());
        }
        Err(DomainError::new(ErrorCode::AdminRequired, "only a tenant admin may do this"))
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
    pub password_changed_at: i64,
}

impl UserRecord {
    pub fn role(&self) -> Role {
        if self.role == "admin" { Role::Admin } else { Role::Member }
    }

    pub fn view(&self) -> UserView {
        UserView {
            id: self.id,
            username: self.username.clone(),
            role: self.role(),
            disabled: self.disabled,
            created_at: from_ms(self.created_at),
        }
    }
}

fn role_str(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_tokens)]
pub struct TokenRecord {
    pub id: i64,
    pub tenant_id: i64,
    pub user_id: i64,
    pub name: String,
    pub token_hash: String,
    pub scopes: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl TokenRecord {
    pub fn scopes(&self) -> BTreeSet<Scope> {
        self.scopes.split(',').filter_map(Scope::parse).collect()
    }

    pub fn view(&self) -> TokenView {
        TokenView {
            id: self.id,
            name: self.name.clone(),
            scopes: self.scopes().into_iter().collect(),
            user_id: self.user_id,
            created_at: from_ms(self.created_at),
            expires_at: self.expires_at.map(from_ms),
            last_used_at: self.last_used_at.map(from_ms),
            revoked_at: self.revoked_at.map(from_ms),
        }
    }
}

/// The prefix of every API token secret, so leaked secrets are easy to grep for.
pub const TOKEN_PREFIX: &str = "ota_";

pub fn validate_username(username: &str) -> Result<()> {
    let ok = (1..=64).contains(&username.len())
        && username.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b));
    if ok { Ok(()) } else { Err(DomainError::invalid("username", "username must be 1–64 of [A-Za-z0-9_.@-]")) }
}

pub fn validate_password(field: &str, password: &str) -> Result<()> {
    let chars = password.chars().count();
    if (8..=128).contains(&chars) {
        Ok(())
    } else {
        Err(DomainError::invalid(field, "password must be 8–128 characters"))
    }
}

/// Slow, salted hash (argon2id). Runs on the blocking pool: it takes tens of milliseconds.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let hash =
            Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
        Ok(hash.to_string())
    })
    .await
    .map_err(|e| DomainError::Internal(anyhow::anyhow!("hash task: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// A fixed hash to verify against when the user does not exist, so that timing does not tell
/// which user names exist.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$4b0QjfVd9zd1GRqIbXzN9eJiQmJBwCaJ5b1KSkzkWJY";

fn token_hash(secret: &str) -> String {
    // API token secrets carry 160 random bits, so a fast hash is enough to make a stolen
    // database useless; a slow hash would cost every API call.
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The outcome of bootstrapping the first admin.
#[derive(Debug, Clone)]
pub struct CreatedAdmin {
    pub tenant: String,
    pub username: String,
}

impl Domain {
    /// Creates (or reuses) a tenant and an admin user in it.
    pub async fn create_admin(&self, tenant: &str, username: &str, password: &str) -> Result<CreatedAdmin> {
        validate_username(username)?;
        validate_password("password", password)?;
        let tenant_name = tenant.trim().to_owned();
        if tenant_name.is_empty() || tenant_name.len() > 64 {
            return Err(DomainError::invalid("tenant", "tenant name must be 1–64 characters"));
        }
        let hash = hash_password(password.to_owned()).await?;
        let now = self.clock.now_ms();
        let (t, u) = (tenant_name.clone(), username.to_owned());
        self.db
            .write(move |c| {
                let tenant_id = ensure_tenant(c, &t, now)?;
                insert_user(c, tenant_id, &u, &hash, Role::Admin, now)?;
                Ok(())
            })
            .await?;
        Ok(CreatedAdmin { tenant: tenant_name, username: username.to_owned() })
    }

    /// True when no user exists yet (first start).
    pub async fn has_no_users(&self) -> Result<bool> {
        self.db.run(|c| Ok(users::table.count().get_result::<i64>(c)? == 0)).await
    }

    /// Checks a user name and password; the caller throttles repeated failures.
    pub async fn verify_login(&self, username: &str, password: &str) -> Result<UserRecord> {
        let name = username.to_owned();
        let user: Option<UserRecord> = self
            .db
            .run(move |c| {
                Ok(users::table.filter(users::username.eq(name)).select(UserRecord::as_select()).first(c).optional()?)
            })
            .await?;
        let hash = user.as_ref().map_or(DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let ok = verify_password(password.to_owned(), hash).await;
        match user {
            Some(u) if ok && u.disabled => Err(DomainError::new(ErrorCode::UserDisabled, "this user is disabled")),
            Some(u) if ok => Ok(u),
            _ => Err(DomainError::new(ErrorCode::LoginFailed, "wrong user name or password")),
        }
    }

    /// The principal of a login session, checked against the current state of the user.
    pub async fn session_principal(&self, user_id: i64, issued_at_ms: i64) -> Result<Principal> {
        let (user, tenant_name) = self.load_user_with_tenant(user_id).await?;
        if user.disabled {
            return Err(DomainError::new(ErrorCode::UserDisabled, "this user is disabled"));
        }
        if issued_at_ms < user.password_changed_at {
            return Err(DomainError::new(
                ErrorCode::TokenExpired,
                "the password changed after this session began; log in again",
            ));
        }
        Ok(Principal {
            tenant_id: user.tenant_id,
            tenant_name,
            user_id: user.id,
            username: user.username.clone(),
            role: user.role(),
            scopes: Scope::ALL.into_iter().collect(),
            credential: Credential::Session,
        })
    }

    async fn load_user_with_tenant(&self, user_id: i64) -> Result<(UserRecord, String)> {
        let found = self
            .db
            .run(move |c| {
                Ok(users::table
                    .inner_join(tenants::table)
                    .filter(users::id.eq(user_id))
                    .select((UserRecord::as_select(), tenants::name))
                    .first::<(UserRecord, String)>(c)
                    .optional()?)
            })
            .await?;
        found.ok_or_else(|| DomainError::new(ErrorCode::InvalidCredentials, "unknown user"))
    }

    /// The principal of an API token secret.
    pub async fn token_principal(&self, secret: &str) -> Result<Principal> {
        let hash = token_hash(secret);
        // One query for token, user and tenant: this runs on every request a script makes.
        let found: Option<(TokenRecord, UserRecord, String)> = self
            .db
            .run(move |c| {
                Ok(api_tokens::table
                    .inner_join(users::table.inner_join(tenants::table))
                    .filter(api_tokens::token_hash.eq(hash))
                    .select((TokenRecord::as_select(), UserRecord::as_select(), tenants::name))
                    .first(c)
                    .optional()?)
            })
            .await?;
        let (token, user, tenant_name) =
            found.ok_or_else(|| DomainError::new(ErrorCode::InvalidCredentials, "unknown API token"))?;
        let now = self.clock.now_ms();
        if token.revoked_at.is_some() {
            return Err(DomainError::new(ErrorCode::TokenRevoked, "this API token was revoked"));
        }
        if token.expires_at.is_some_and(|at| at <= now) {
            return Err(DomainError::new(ErrorCode::TokenExpired, "this API token has expired"));
        }
        if user.disabled {
            return Err(DomainError::new(ErrorCode::UserDisabled, "the token's user is disabled"));
        }
        // Record use at most once a minute: a CI script must not turn every read into a write.
        if token.last_used_at.is_none_or(|at| now - at > 60_000) {
            let id = token.id;
            self.db
                .write(move |c| {
                    diesel::update(api_tokens::table.find(id))
                        .set(api_tokens::last_used_at.eq(Some(now)))
                        .execute(c)?;
                    Ok(())
                })
                .await?;
        }
        Ok(Principal {
            tenant_id: token.tenant_id,
            tenant_name,
            user_id: user.id,
            username: user.username.clone(),
            role: user.role(),
            scopes: token.scopes(),
            credential: Credential::ApiToken { id: token.id },
        })
    }

    pub async fn change_password(&self, who: &Principal, current: &str, new: &str) -> Result<()> {
        validate_password("new_password", new)?;
        let (user, _) = self.load_user_with_tenant(who.user_id).await?;
        if !verify_password(current.to_owned(), user.password_hash.clone()).await {
            return Err(DomainError::new(ErrorCode::WrongPassword, "the current password is wrong"));
        }
        let hash = hash_password(new.to_owned()).await?;
        let now = self.clock.now_ms();
        let id = user.id;
        self.db
            .write(move |c| {
                diesel::update(users::table.find(id))
                    .set((users::password_hash.eq(hash), users::password_changed_at.eq(now)))
                    .execute(c)?;
                Ok(())
            })
            .await
    }

    pub async fn create_user(&self, who: &Principal, username: &str, password: &str, role: Role) -> Result<UserView> {
        who.require_admin()?;
        validate_username(username)?;
        validate_password("password", password)?;
        let hash = hash_password(password.to_owned()).await?;
        let now = self.clock.now_ms();
        let (tenant_id, name) = (who.tenant_id, username.to_owned());
        let user = self.db.write(move |c| insert_user(c, tenant_id, &name, &hash, role, now)).await?;
        Ok(user.view())
    }

    pub async fn list_users(&self, who: &Principal) -> Result<Vec<UserView>> {
        who.require_admin()?;
        let tenant_id = who.tenant_id;
        let rows: Vec<UserRecord> = self
            .db
            .run(move |c| {
                Ok(users::table
                    .filter(users::tenant_id.eq(tenant_id))
                    .order(users::id.asc())
                    .select(UserRecord::as_select())
                    .load(c)?)
            })
            .await?;
        Ok(rows.iter().map(UserRecord::view).collect())
    }

    pub async fn update_user(
        &self,
        who: &Principal,
        user_id: i64,
        disabled: Option<bool>,
        role: Option<Role>,
    ) -> Result<UserView> {
        who.require_admin()?;
        if user_id == who.user_id && (disabled == Some(true) || role == Some(Role::Member)) {
            return Err(DomainError::invalid("disabled", "an admin cannot disable or demote themselves"));
        }
        let tenant_id = who.tenant_id;
        let user = self
            .db
            .write(move |c| {
                let target = users::table.filter(users::id.eq(user_id).and(users::tenant_id.eq(tenant_id)));
                if let Some(d) = disabled {
                    diesel::update(target).set(users::disabled.eq(d)).execute(c)?;
                }
                if let Some(r) = role {
                    diesel::update(target).set(users::role.eq(role_str(r))).execute(c)?;
                }
                target.select(UserRecord::as_select()).first(c).optional().map_err(DomainError::from)
            })
            .await?;
        user.map(|u| u.view()).ok_or_else(|| DomainError::new(ErrorCode::UserNotFound, "no such user in this tenant"))
    }

    pub async fn create_token(
        &self,
        who: &Principal,
        name: &str,
        scopes: &[Scope],
        expires_in_days: Option<u32>,
    ) -> Result<(TokenView, String)> {
        who.require(Scope::Write)?;
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(DomainError::invalid("name", "token name must be 1–64 characters"));
        }
        if scopes.is_empty() {
            return Err(DomainError::invalid("scopes", "give at least one scope"));
        }
        if let Some(extra) = scopes.iter().find(|s| !who.scopes.contains(s)) {
            return Err(DomainError::invalid(
                "scopes",
                format!("cannot grant `{}`: these credentials lack it", extra.as_str()),
            ));
        }
        if expires_in_days == Some(0) || expires_in_days.is_some_and(|d| d > 3650) {
            return Err(DomainError::invalid("expires_in_days", "expires_in_days must be 1–3650"));
        }
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 20]>()));
        let hash = token_hash(&secret);
        let set: BTreeSet<Scope> = scopes.iter().copied().collect();
        let scopes_text = set.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
        let now = self.clock.now_ms();
        let expires_at = expires_in_days.map(|d| now + i64::from(d) * 86_400_000);
        let (tenant_id, user_id) = (who.tenant_id, who.user_id);
        let record: TokenRecord = self
            .db
            .write(move |c| {
                diesel::insert_into(api_tokens::table)
                    .values((
                        api_tokens::tenant_id.eq(tenant_id),
                        api_tokens::user_id.eq(user_id),
                        api_tokens::name.eq(name),
                        api_tokens::token_hash.eq(hash),
                        api_tokens::scopes.eq(scopes_text),
                        api_tokens::created_at.eq(now),
                        api_tokens::expires_at.eq(expires_at),
                    ))
                    .execute(c)?;
                let id = last_insert_id(c)?;
                Ok(api_tokens::table.find(id).select(TokenRecord::as_select()).first(c)?)
            })
            .await?;
        Ok((record.view(), secret))
    }

    /// Admins see every token of the tenant; members their own.
    pub async fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenView>> {
        who.require(Scope::Read)?;
        let (tenant_id, user_id, all) = (who.tenant_id, who.user_id, who.role == Role::Admin);
        let rows: Vec<TokenRecord> = self
            .db
            .run(move |c| {
                let mut q = api_tokens::table.filter(api_tokens::tenant_id.eq(tenant_id)).into_boxed();
                if !all {
                    q = q.filter(api_tokens::user_id.eq(user_id));
                }
                Ok(q.order(api_tokens::id.asc()).select(TokenRecord::as_select()).load(c)?)
            })
            .await?;
        Ok(rows.iter().map(TokenRecord::view).collect())
    }

    pub async fn revoke_token(&self, who: &Principal, token_id: i64) -> Result<TokenView> {
        who.require(Scope::Write)?;
        let (tenant_id, user_id, all) = (who.tenant_id, who.user_id, who.role == Role::Admin);
        let now = self.clock.now_ms();
        let row = self
            .db
            .write(move |c| {
                let mut q = api_tokens::table
                    .filter(api_tokens::id.eq(token_id).and(api_tokens::tenant_id.eq(tenant_id)))
                    .into_boxed();
                if !all {
                    q = q.filter(api_tokens::user_id.eq(user_id));
                }
                let Some(token) = q.select(TokenRecord::as_select()).first(c).optional()? else {
                    return Ok(None);
                };
                if token.revoked_at.is_none() {
                    diesel::update(api_tokens::table.find(token.id))
                        .set(api_tokens::revoked_at.eq(Some(now)))
                        .execute(c)?;
                }
                Ok(api_tokens::table.find(token.id).select(TokenRecord::as_select()).first(c).optional()?)
            })
            .await?;
        row.map(|t| t.view()).ok_or_else(|| DomainError::new(ErrorCode::TokenNotFound, "no such token in this tenant"))
    }
}

fn ensure_tenant(c: &mut DbConn, name: &str, now: i64) -> Result<i64> {
    if let Some(id) = tenants::table.filter(tenants::name.eq(name)).select(tenants::id).first(c).optional()? {
        return Ok(id);
    }
    diesel::insert_into(tenants::table).values((tenants::name.eq(name), tenants::created_at.eq(now))).execute(c)?;
    last_insert_id(c)
}

fn insert_user(c: &mut DbConn, tenant_id: i64, username: &str, hash: &str, role: Role, now: i64) -> Result<UserRecord> {
    diesel::insert_into(users::table)
        .values((
            users::tenant_id.eq(tenant_id),
            users::username.eq(username),
            users::password_hash.eq(hash),
            users::role.eq(role_str(role)),
            users::created_at.eq(now),
            users::password_changed_at.eq(now),
        ))
        .execute(c)
        .map_err(|e| match DomainError::from(e) {
            DomainError::UniqueViolation => {
                DomainError::field(ErrorCode::UsernameTaken, "username", format!("user `{username}` already exists"))
            }
            other => other,
        })?;
    let id = last_insert_id(c)?;
    Ok(users::table.find(id).select(UserRecord::as_select()).first(c)?)
}

/// Slows down guessing: after `FREE_FAILURES` failed logins for one key (a user name or a
/// client address) each further attempt must wait twice as long as the previous one, up to
/// 15 minutes. Kept in memory per process: a restart forgets it, which costs an attacker
/// little compared to the restart itself.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    entries: Mutex<HashMap<String, ThrottleEntry>>,
}

#[derive(Debug, Clone, Copy)]
struct ThrottleEntry {
    failures: u32,
    last_failure_ms: i64,
}

const FREE_FAILURES: u32 = 5;
const MAX_LOCK_SECONDS: i64 = 15 * 60;
const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

impl LoginThrottle {
    /// `Err(seconds)` when the key must wait that long before trying again.
    pub fn check(&self, key: &str, now_ms: i64) -> Result<(), i64> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = entries.get(key) else { return Ok(()) };
        if entry.failures < FREE_FAILURES {
            return Ok(());
        }
        let exponent = (entry.failures - FREE_FAILURES).min(10);
        let lock_ms = (1_i64 << exponent).min(MAX_LOCK_SECONDS) * 1000;
        let until = entry.last_failure_ms + lock_ms;
        if now_ms < until { Err((until - now_ms + 999) / 1000) } else { Ok(()) }
    }

    pub fn record_failure(&self, key: &str, now_ms: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 100_000 {
            entries.retain(|_, e| now_ms - e.last_failure_ms < FORGET_AFTER_MS);
        }
        let entry = entries.entry(key.to_owned()).or_insert(ThrottleEntry { failures: 0, last_failure_ms: now_ms });
        if now_ms - entry.last_failure_ms >= FORGET_AFTER_MS {
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last_failure_ms = now_ms;
    }

    pub fn record_success(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_five_failures_through_then_doubles_the_wait() {
        let t = LoginThrottle::default();
        let mut now = 1_000_000;
        for _ in 0..FREE_FAILURES {
            assert!(t.check("alice", now).is_ok());
            t.record_failure("alice", now);
        }
        assert_eq!(t.check("alice", now), Err(1));
        now += 1000;
        assert!(t.check("alice", now).is_ok());
        t.record_failure("alice", now);
        assert_eq!(t.check("alice", now), Err(2));
        assert!(t.check("bob", now).is_ok(), "other keys are not affected");
        t.record_success("alice");
        assert!(t.check("alice", now).is_ok());
    }

    #[test]
    fn throttle_forgets_after_quiet_period_and_caps_the_lock() {
        let t = LoginThrottle::default();
        for i in 0..40 {
            t.record_failure("k", i);
        }
        assert_eq!(t.check("k", 40), Err(MAX_LOCK_SECONDS));
        t.record_failure("k", 40 + FORGET_AFTER_MS);
        assert!(t.check("k", 40 + FORGET_AFTER_MS).is_ok(), "counting starts again");
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn validation() {
        assert!(validate_username("ci-bot@example.com").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_password("p", "short").is_err());
        assert!(validate_password("p", "long enough").is_ok());
    }
}
