-- Issue 14: `Idempotency-Key` on the API's creating POSTs (firmware upload, rule create,
-- verification start, device imports), so a CI script can rerun safely. One row per tenant and
-- key: the fingerprint of the request that first used it (SHA-256 of method, path and the
-- request's content) and, once it succeeded, the answer to replay. A row without an answer is
-- a request still running (or one that died: taken over after a while). Rows are forgotten
-- after 24 hours (see ota-domain idempotency.rs).
CREATE TABLE idempotency_keys (
    tenant_id BIGINT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT,
    body TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
