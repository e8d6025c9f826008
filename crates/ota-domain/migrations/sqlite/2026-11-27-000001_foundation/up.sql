-- Foundation: tenants, users, API tokens, products, firmware.
-- Times are Unix milliseconds (BIGINT) so one diesel schema fits SQLite and PostgreSQL.
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    password_changed_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    user_id BIGINT NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_tenant ON api_tokens(tenant_id);

CREATE TABLE products (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_key TEXT NOT NULL UNIQUE,
    product_secret TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX products_tenant ON products(tenant_id);

CREATE TABLE firmware (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_id BIGINT NOT NULL REFERENCES products(id),
    name TEXT NOT NULL,
    fw_type TEXT NOT NULL,
    push_method TEXT NOT NULL,
    hard_version TEXT,
    soft_version TEXT,
    fid BIGINT,
    file_name TEXT NOT NULL,
    size BIGINT NOT NULL,
    md5 TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    crc32 BIGINT NOT NULL,
    verified BOOLEAN NOT NULL DEFAULT 0,
    verified_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX firmware_product ON firmware(product_id, id);
CREATE INDEX firmware_sha256 ON firmware(sha256);
-- The console's rules, enforced by the database so that racing uploads cannot both win.
CREATE UNIQUE INDEX firmware_v41_version ON firmware(product_id, fw_type, hard_version, soft_version)
    WHERE push_method = 'V4.1';
CREATE UNIQUE INDEX firmware_v1v3_fid ON firmware(product_id, fid) WHERE push_method = 'V1V3';
CREATE UNIQUE INDEX firmware_v4_fid ON firmware(product_id, fw_type, hard_version, soft_version, fid)
    WHERE push_method = 'V4';
