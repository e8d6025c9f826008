-- Issue 14: the audit log of the management API. One row per non-GET request that reached a
-- route (refused ones included), written after the answer by the API's audit writer
-- (ota-api audit.rs). No foreign keys: an entry outlives the user, token or object it names.
-- `tenant_id` is NULL when the request named no tenant (no or invalid credentials, a login
-- naming an unknown user); installation admins read those.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT,
    at BIGINT NOT NULL,
    user_id BIGINT,
    username TEXT,
    credential TEXT,
    token_id BIGINT,
    action TEXT NOT NULL,
    route TEXT NOT NULL,
    object_kind TEXT,
    object_id TEXT,
    source TEXT NOT NULL,
    status INTEGER NOT NULL,
    error_code TEXT
);
CREATE INDEX audit_log_tenant_at ON audit_log(tenant_id, at);
CREATE INDEX audit_log_object ON audit_log(tenant_id, object_kind, object_id);
