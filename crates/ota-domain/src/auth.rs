//! Tenants, users, API tokens and the principal every request acts as.
//!
//! What a principal may do is checked by [`crate::access`]; password hashing is bounded by
//! [`crate::login::HashGate`] and logins are throttled by [`crate::login`].

use std::collections::BTreeSet;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use diesel::prelude::*;
use ota_wire::ErrorCode;
use ota_wire::dto::{Role, Scope, TokenView, UserView};
use sha2::{Digest, Sha256};

use crate::Domain;
use crate::access::{Authorized, LoginSession, Read, TenantAdmin, Write};
use crate::clock::from_ms;
use crate::db::{DbConn, last_insert_id};
use crate::error::{DomainError, Result};
use crate::login::HashMemory;
use crate::schema::{api_tokens, tenants, users};

/// Who is acting, with what rights. Built only here, from a verified login session or API
/// token; what it may do is checked by [`crate::access::Authorized`].
#[derive(Debug, Clone)]
pub struct Principal {
    tenant_id: i64,
    tenant_name: String,
    user_id: i64,
    username: String,
    role: Role,
    scopes: BTreeSet<Scope>,
    credential: Credential,
    /// A tenant admin of the installation's first tenant.
    installation_admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session,
    ApiToken { id: i64 },
}

impl Principal {
    pub fn tenant_id(&self) -> i64 {
        self.tenant_id
    }

    pub fn tenant_name(&self) -> &str {
        &self.tenant_name
    }

    pub fn user_id(&self) -> i64 {
        self.user_id
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn scopes(&self) -> &BTreeSet<Scope> {
        &self.scopes
    }

    pub fn credential(&self) -> Credential {
        self.credential
    }

    pub fn is_installation_admin(&self) -> bool {
        self.installation_admin
    }
}

/// The scopes a login session carries: everything its role can use.
fn session_scopes(role: Role) -> BTreeSet<Scope> {
    Scope::ALL.into_iter().filter(|s| *s != Scope::Admin || role == Role::Admin).collect()
}

/// The installation's first tenant (the one `ota up` creates): its admins are installation
/// administrators. Tenants are never deleted, so the lowest id stays the first.
fn is_first_tenant(c: &mut DbConn, tenant_id: i64) -> Result<bool> {
    let first: Option<i64> = tenants::table.select(diesel::dsl::min(tenants::id)).first(c)?;
    Ok(first == Some(tenant_id))
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

/// Slow, salted hash (argon2id, the crate's default parameters): tens of milliseconds and
/// about 19 MiB, in `memory` (reused by the [`crate::login::HashGate`], which is the only
/// caller).
fn argon2_hash(password: &str, memory: &mut HashMemory) -> Result<String> {
    let params = Params::default();
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let blocks = working_memory(memory, params.block_count());
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), &salt_bytes, &mut out, blocks)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a PHC string, computing in `memory`.
fn argon2_verify(password: &str, hash: &str, memory: &mut HashMemory) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Ok(params), Ok(algorithm)) = (Params::try_from(&parsed), Algorithm::try_from(parsed.algorithm)) else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let mut out = vec![0u8; expected.len()];
    let blocks = working_memory(memory, params.block_count());
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        blocks,
    );
    // `Output`'s equality is constant-time.
    computed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
}

/// The first `blocks` of the reused memory, grown once if it is too small.
fn working_memory(memory: &mut HashMemory, blocks: usize) -> &mut [argon2::Block] {
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    &mut memory[..blocks]
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
    /// Hashes a new password through the hash gate (lane `lane`).
    async fn hash_password(&self, lane: &str, password: &str) -> Result<String> {
        let password = password.to_owned();
        self.hash_gate.run(lane, move |memory| argon2_hash(&password, memory)).await?
    }

    /// Verifies a password through the hash gate (lane `lane`).
    async fn verify_password(&self, lane: &str, password: &str, hash: String) -> Result<bool> {
        let password = password.to_owned();
        self.hash_gate.run(lane, move |memory| argon2_verify(&password, &hash, memory)).await
    }

    /// Creates (or reuses) a tenant and an admin user in it.
    pub async fn create_admin(&self, tenant: &str, username: &str, password: &str) -> Result<CreatedAdmin> {
        validate_username(username)?;
        validate_password("password", password)?;
        let tenant_name = tenant.trim().to_owned();
        if tenant_name.is_empty() || tenant_name.len() > 64 {
            return Err(DomainError::invalid("tenant", "tenant name must be 1–64 characters"));
        }
        let hash = self.hash_password("local", password).await?;
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

    /// Checks a user name and password without the login throttle (local tools and tests);
    /// the API logs in through [`Domain::login`].
    pub async fn verify_login(&self, username: &str, password: &str) -> Result<UserRecord> {
        self.check_password(username, password, "local").await
    }

    /// The password check itself, through the hash gate's lane of `source`.
    pub(crate) async fn check_password(&self, username: &str, password: &str, source: &str) -> Result<UserRecord> {
        let name = username.to_owned();
        let user: Option<UserRecord> = self
            .db
            .run(move |c| {
                Ok(users::table.filter(users::username.eq(name)).select(UserRecord::as_select()).first(c).optional()?)
            })
            .await?;
        let hash = user.as_ref().map_or(DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let ok = self.verify_password(source, password, hash).await?;
        match user {
            Some(u) if ok && u.disabled => Err(DomainError::new(ErrorCode::UserDisabled, "this user is disabled")),
            Some(u) if ok => Ok(u),
            _ => Err(DomainError::new(ErrorCode::LoginFailed, "wrong user name or password")),
        }
    }

    /// The principal of a login session, checked against the current state of the user.
    pub async fn session_principal(&self, user_id: i64, issued_at_ms: i64) -> Result<Principal> {
        let (user, tenant_name, installation_admin) = self.load_user_with_tenant(user_id).await?;
        if user.disabled {
            return Err(DomainError::new(ErrorCode::UserDisabled, "this user is disabled"));
        }
        if issued_at_ms < user.password_changed_at {
            return Err(DomainError::new(
                ErrorCode::TokenExpired,
                "the password changed after this session began; log in again",
            ));
        }
        let role = user.role();
        Ok(Principal {
            tenant_id: user.tenant_id,
            tenant_name,
            user_id: user.id,
            username: user.username.clone(),
            role,
            scopes: session_scopes(role),
            credential: Credential::Session,
            installation_admin,
        })
    }

    async fn load_user_with_tenant(&self, user_id: i64) -> Result<(UserRecord, String, bool)> {
        let found = self
            .db
            .run(move |c| {
                let found = users::table
                    .inner_join(tenants::table)
                    .filter(users::id.eq(user_id))
                    .select((UserRecord::as_select(), tenants::name))
                    .first::<(UserRecord, String)>(c)
                    .optional()?;
                let Some((user, tenant)) = found else { return Ok(None) };
                let first = user.role() == Role::Admin && is_first_tenant(c, user.tenant_id)?;
                Ok(Some((user, tenant, first)))
            })
            .await?;
        found.ok_or_else(|| DomainError::new(ErrorCode::InvalidCredentials, "unknown user"))
    }

    /// The principal of an API token secret.
    pub async fn token_principal(&self, secret: &str) -> Result<Principal> {
        let hash = token_hash(secret);
        // One query for token, user and tenant: this runs on every request a script makes.
        let found: Option<(TokenRecord, UserRecord, String, bool)> = self
            .db
            .run(move |c| {
                let found: Option<(TokenRecord, UserRecord, String)> = api_tokens::table
                    .inner_join(users::table.inner_join(tenants::table))
                    .filter(api_tokens::token_hash.eq(hash))
                    .select((TokenRecord::as_select(), UserRecord::as_select(), tenants::name))
                    .first(c)
                    .optional()?;
                let Some((token, user, tenant)) = found else { return Ok(None) };
                let first = user.role() == Role::Admin && is_first_tenant(c, user.tenant_id)?;
                Ok(Some((token, user, tenant, first)))
            })
            .await?;
        let (token, user, tenant_name, installation_admin) =
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
            installation_admin,
        })
    }

    /// Your own password, from a login session only (a stolen API token must not be able to
    /// take the account over).
    pub async fn change_password(&self, who: &Authorized<LoginSession>, current: &str, new: &str) -> Result<()> {
        validate_password("new_password", new)?;
        let (user, _, _) = self.load_user_with_tenant(who.user_id()).await?;
        let lane = format!("user:{}", user.id);
        if !self.verify_password(&lane, current, user.password_hash.clone()).await? {
            return Err(DomainError::new(ErrorCode::WrongPassword, "the current password is wrong"));
        }
        let hash = self.hash_password(&lane, new).await?;
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

    pub async fn create_user(
        &self,
        who: &Authorized<TenantAdmin>,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<UserView> {
        validate_username(username)?;
        validate_password("password", password)?;
        let hash = self.hash_password(&format!("user:{}", who.user_id()), password).await?;
        let now = self.clock.now_ms();
        let (tenant_id, name) = (who.tenant_id(), username.to_owned());
        let user = self.db.write(move |c| insert_user(c, tenant_id, &name, &hash, role, now)).await?;
        Ok(user.view())
    }

    pub async fn list_users(&self, who: &Authorized<TenantAdmin>) -> Result<Vec<UserView>> {
        let tenant_id = who.tenant_id();
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
        who: &Authorized<TenantAdmin>,
        user_id: i64,
        disabled: Option<bool>,
        role: Option<Role>,
    ) -> Result<UserView> {
        if user_id == who.user_id() && (disabled == Some(true) || role == Some(Role::Member)) {
            return Err(DomainError::field(
                ErrorCode::SelfLockout,
                if disabled == Some(true) { "disabled" } else { "role" },
                "an admin cannot disable or demote themselves",
            ));
        }
        let tenant_id = who.tenant_id();
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
        who: &Authorized<Write>,
        name: &str,
        scopes: &[Scope],
        expires_in_days: Option<u32>,
    ) -> Result<(TokenView, String)> {
        let name = crate::validate::label("name", name, 64)?;
        if scopes.is_empty() {
            return Err(DomainError::invalid("scopes", "give at least one scope"));
        }
        if let Some(extra) = scopes.iter().find(|s| !who.scopes().contains(s)) {
            return Err(DomainError::with_details(
                ErrorCode::InsufficientScope,
                format!("cannot grant `{}`: these credentials lack it", extra.as_str()),
                serde_json::json!({ "field": "scopes", "required_scope": extra.as_str() }),
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
        let (tenant_id, user_id) = (who.tenant_id(), who.user_id());
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

    /// Tenant admins (admin session or `admin`-scoped token) see every token of the tenant;
    /// anyone else their own.
    pub async fn list_tokens(&self, who: &Authorized<Read>) -> Result<Vec<TokenView>> {
        let all = who.also::<TenantAdmin>().is_some();
        let (tenant_id, user_id) = (who.tenant_id(), who.user_id());
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

    /// Revokes a token: any of the tenant's for tenant admins, your own otherwise.
    pub async fn revoke_token(&self, who: &Authorized<Write>, token_id: i64) -> Result<TokenView> {
        let all = who.also::<TenantAdmin>().is_some();
        let (tenant_id, user_id) = (who.tenant_id(), who.user_id());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn hashes_in_reused_memory_are_standard_phc_strings() {
        use argon2::PasswordVerifier;
        let mut memory = HashMemory::new();
        let phc = argon2_hash("correct horse", &mut memory).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        // The crate's own verifier agrees, and ours agrees with its hashes.
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(argon2_verify("correct horse", &phc, &mut memory));
        assert!(!argon2_verify("correct horsf", &phc, &mut memory));
        let theirs = argon2::PasswordHasher::hash_password(
            &Argon2::default(),
            b"another",
            &SaltString::encode_b64(&[7u8; 16]).unwrap(),
        )
        .unwrap()
        .to_string();
        assert!(argon2_verify("another", &theirs, &mut memory));
        assert!(!argon2_verify("another", "not a hash", &mut memory));
        assert_eq!(memory.len(), Params::default().block_count(), "one working memory, reused");
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
