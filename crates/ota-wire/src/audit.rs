//! The audit log: every operator action through the management API, as admins read it
//! (`proto-docs/api.md`, "Audit log").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One recorded action: who, with which credentials, what, on which object, when, from
/// where, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// When the request arrived (the server's clock).
    pub at: DateTime<Utc>,
    /// The user the credentials belong to; for a login, the user named (if any exists).
    pub user_id: Option<i64>,
    /// The user name: of the credentials, or the one a login named (even an unknown one).
    pub username: Option<String>,
    /// `session`, `api_token`, or none (no or invalid credentials, a login).
    pub credential: Option<String>,
    /// The API token's id when the credentials were a token.
    pub token_id: Option<i64>,
    /// The operation id of the route (`start_rule`, `login`, …).
    pub action: String,
    /// The HTTP method and the route's pattern (`POST /api/v1/rules/{request_id}/start`).
    pub route: String,
    /// What the action was on (`rule`, `product`, `firmware`, `user`, …), when the route names one.
    pub object_kind: Option<String>,
    /// Its id or key: from the path, or from the answer for a creation (201).
    pub object_id: Option<String>,
    /// The client address (the `X-Forwarded-For` of a trusted proxy, else the peer).
    pub source: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code when the action failed.
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Only this user's entries (by id).
    #[param(minimum = 1)]
    pub user_id: Option<i64>,
    /// Only entries with this user name (exact).
    #[param(max_length = 200)]
    pub username: Option<String>,
    /// Only actions on this kind of object (`rule`, `firmware`, …).
    #[param(max_length = 64)]
    pub object_kind: Option<String>,
    /// Only actions on this object id or key.
    #[param(max_length = 200)]
    pub object_id: Option<String>,
    /// Only this action (an operation id such as `start_rule`).
    #[param(max_length = 100)]
    pub action: Option<String>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub per_page: Option<u32>,
}
