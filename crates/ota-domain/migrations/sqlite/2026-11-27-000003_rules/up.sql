-- Push rules: MAC lists, rules, and per-target state on the upgrade records.
CREATE TABLE mac_lists (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_id BIGINT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    count BIGINT NOT NULL,
    duplicates BIGINT NOT NULL,
    invalid TEXT NOT NULL,
    invalid_count BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE mac_list_entries (
    list_id BIGINT NOT NULL REFERENCES mac_lists(id) ON DELETE CASCADE,
    mac TEXT NOT NULL,
    PRIMARY KEY (list_id, mac)
);
CREATE TABLE rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_id BIGINT NOT NULL REFERENCES products(id),
    firmware_id BIGINT NOT NULL REFERENCES firmware(id) ON DELETE CASCADE,
    name TEXT,
    target TEXT NOT NULL,
    regions TEXT NOT NULL,
    mac_list_id BIGINT REFERENCES mac_lists(id),
    old_versions TEXT NOT NULL,
    period_start TEXT NOT NULL,
    period_end TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT,
    stopped_at BIGINT,
    completed_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX rules_firmware ON rules(firmware_id, status);
CREATE INDEX rules_product_status ON rules(product_id, status);
ALTER TABLE upgrades ADD COLUMN rule_id BIGINT REFERENCES rules(id) ON DELETE CASCADE;
-- The window opening (its start, Unix ms) the target was last notified in.
ALTER TABLE upgrades ADD COLUMN last_opening BIGINT;
-- A gateway's claim on notifying the target: others leave it alone until this time.
ALTER TABLE upgrades ADD COLUMN claim_until BIGINT;
CREATE UNIQUE INDEX upgrades_rule_device ON upgrades(rule_id, device_id);
CREATE INDEX upgrades_rule_stage ON upgrades(rule_id, stage);
-- Rule previews count targets from these alone (no table rows read): every column the
-- target filter and the online count use, per kind of version.
CREATE INDEX devices_rule_wifi ON devices(product_id, push_method, wifi_hw, wifi_sw, online, province, city, country, wifi_fid);
CREATE INDEX devices_rule_mcu ON devices(product_id, push_method, mcu_hw, mcu_sw, online, province, city, country, mcu_fid);
CREATE INDEX devices_rule_legacy ON devices(product_id, push_method, legacy_firmware_id, online, province, city, country);
