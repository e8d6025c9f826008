-- Device plane: the device registry and per-device upgrade records.
CREATE TABLE devices (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_id BIGINT NOT NULL REFERENCES products(id),
    did TEXT UNIQUE,
    mac TEXT,
    passcode TEXT,
    registered_via TEXT NOT NULL,
    push_method TEXT,
    wifi_hw TEXT,
    wifi_sw TEXT,
    mcu_hw TEXT,
    mcu_sw TEXT,
    wifi_fid BIGINT,
    mcu_fid BIGINT,
    legacy_firmware_id BIGINT,
    country TEXT,
    province TEXT,
    city TEXT,
    ip TEXT,
    online BOOLEAN NOT NULL DEFAULT FALSE,
    gateway_id TEXT,
    connected_at BIGINT,
    disconnected_at BIGINT,
    last_seen_at BIGINT,
    last_provision_at BIGINT,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX devices_product_mac ON devices(product_id, mac);
CREATE INDEX devices_tenant ON devices(tenant_id, id);
CREATE INDEX devices_product_wifi ON devices(product_id, wifi_hw, wifi_sw);
CREATE INDEX devices_product_mcu ON devices(product_id, mcu_hw, mcu_sw);

CREATE TABLE upgrades (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    firmware_id BIGINT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    active BOOLEAN NOT NULL,
    stage TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT,
    reason TEXT,
    notified_at BIGINT,
    checked_at BIGINT,
    download_started_at BIGINT,
    downloaded_at BIGINT,
    rebooted_at BIGINT,
    succeeded_at BIGINT,
    failed_at BIGINT,
    deadline_at BIGINT,
    confirmed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX upgrades_device ON upgrades(device_id, active);
CREATE INDEX upgrades_firmware ON upgrades(firmware_id, kind, id);
-- At most one open verification per firmware.
CREATE UNIQUE INDEX upgrades_one_verification ON upgrades(firmware_id) WHERE kind = 'verification' AND active;
