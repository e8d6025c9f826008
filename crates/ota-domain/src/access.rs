//! Capabilities: what a caller may do is in the type of the value a domain call takes.
//!
//! Every operator-facing domain function takes an [`Authorized<C>`], where `C` names what the
//! call needs ([`Read`], [`Write`], [`Push`], [`TenantAdmin`], [`InstallationAdmin`],
//! [`LoginSession`] or just [`Credentials`]). The only way to get one is
//! [`Authorized::check`], which applies `C`'s rule to a [`Principal`]; a `Principal` is only
//! built by [`crate::auth`] from a verified login session or API token. So a route that does not
//! extract the right capability, or a domain call that forgets to ask for one, does not compile:
//! there is no `require(…)` call to remember.
//!
//! The rules ([`Need::check`]):
//! - a scope: the credentials carry it (sessions carry `read`, `write`, `push`, and `admin` for
//!   tenant admins; tokens carry what they were created with);
//! - tenant admin: the user has the admin role **and** the credentials are a login session or a
//!   token with the `admin` scope;
//! - installation admin: a tenant admin of the installation's first tenant;
//! - login session: a login JWT, never an API token (own password change).

use std::marker::PhantomData;

use ota_wire::ErrorCode;
use ota_wire::dto::{Role, Scope};

use crate::auth::{Credential, Principal};
use crate::error::{DomainError, Result};

/// What a route or domain call needs, as data (for the route table and its test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// Any valid credentials.
    Credentials,
    /// Credentials carrying this scope.
    Scope(Scope),
    /// A login session (not an API token).
    LoginSession,
    /// A tenant admin with a login session or an `admin`-scoped token.
    TenantAdmin,
    /// A tenant admin of the installation's first tenant.
    InstallationAdmin,
}

impl Need {
    /// The words of the scope table in `proto-docs/api.md`.
    pub fn label(self) -> &'static str {
        match self {
            Need::Credentials => "any credentials",
            Need::Scope(Scope::Read) => "read",
            Need::Scope(Scope::Write) => "write",
            Need::Scope(Scope::Push) => "push",
            Need::Scope(Scope::Admin) | Need::TenantAdmin => "admin",
            Need::LoginSession => "login session",
            Need::InstallationAdmin => "installation admin",
        }
    }

    /// Whether `who` may do what this names; the error says what is missing.
    pub fn check(self, who: &Principal) -> Result<()> {
        match self {
            Need::Credentials => Ok(()),
            Need::Scope(scope) => require_scope(who, scope),
            Need::LoginSession => match who.credential() {
                Credential::Session => Ok(()),
                Credential::ApiToken { .. } => Err(DomainError::new(
                    ErrorCode::SessionRequired,
                    "this needs a login session; API tokens cannot do it",
                )),
            },
            Need::TenantAdmin => {
                if who.role() != Role::Admin {
                    return Err(DomainError::new(ErrorCode::AdminRequired, "only a tenant admin may do this"));
                }
                require_scope(who, Scope::Admin)
            }
            Need::InstallationAdmin => {
                Need::TenantAdmin.check(who)?;
                if who.is_installation_admin() {
                    Ok(())
                } else {
                    Err(DomainError::new(
                        ErrorCode::InstallationAdminRequired,
                        "only an admin of the installation's first tenant may do this",
                    ))
                }
            }
        }
    }
}

fn require_scope(who: &Principal, scope: Scope) -> Result<()> {
    if who.scopes().contains(&scope) {
        return Ok(());
    }
    Err(DomainError::with_details(
        ErrorCode::InsufficientScope,
        format!("these credentials lack the `{}` scope", scope.as_str()),
        serde_json::json!({ "required_scope": scope.as_str() }),
    ))
}

mod sealed {
    pub trait Sealed {}
}

/// A capability marker: the type parameter of [`Authorized`]. Sealed: the set is this module's.
pub trait Capability: sealed::Sealed + 'static {
    const NEED: Need;
}

macro_rules! capabilities {
    ($( $(#[doc = $doc:literal])* $name:ident => $need:expr, )*) => {$(
        $(#[doc = $doc])*
        #[derive(Debug)]
        pub enum $name {}
        impl sealed::Sealed for $name {}
        impl Capability for $name {
            const NEED: Need = $need;
        }
    )*};
}

capabilities! {
    /// Any valid credentials (who am I).
    Credentials => Need::Credentials,
    /// The `read` scope.
    Read => Need::Scope(Scope::Read),
    /// The `write` scope.
    Write => Need::Scope(Scope::Write),
    /// The `push` scope.
    Push => Need::Scope(Scope::Push),
    /// A login session.
    LoginSession => Need::LoginSession,
    /// A tenant admin (admin role, and a session or an `admin`-scoped token).
    TenantAdmin => Need::TenantAdmin,
    /// An admin of the installation's first tenant.
    InstallationAdmin => Need::InstallationAdmin,
}

/// Proof that a principal passed `C`'s rule. Built only by [`Authorized::check`].
pub struct Authorized<C: Capability> {
    who: Principal,
    need: PhantomData<fn() -> C>,
}

impl<C: Capability> Clone for Authorized<C> {
    fn clone(&self) -> Self {
        Authorized { who: self.who.clone(), need: PhantomData }
    }
}

impl<C: Capability> std::fmt::Debug for Authorized<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorized").field("need", &C::NEED).field("who", &self.who).finish()
    }
}

impl<C: Capability> Authorized<C> {
    /// Applies `C`'s rule; the only constructor.
    pub fn check(who: Principal) -> Result<Authorized<C>> {
        C::NEED.check(&who)?;
        Ok(Authorized { who, need: PhantomData })
    }

    pub fn principal(&self) -> &Principal {
        &self.who
    }

    /// The same credentials with another capability, when they have it (e.g. whether a token
    /// lister may see the whole tenant's tokens).
    pub fn also<D: Capability>(&self) -> Option<Authorized<D>> {
        Authorized::<D>::check(self.who.clone()).ok()
    }
}

impl<C: Capability> std::ops::Deref for Authorized<C> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.who
    }
}
