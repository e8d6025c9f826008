-- Rollout safety: waves, halts, pause/cancel, caps, windows in the devices' local time.

-- The wave a rule's target belongs to (0 the canary; rules without waves: 1), and its time
-- zone (resolved when the target is taken: the device's own, its region's, or the rule's;
-- NULL: UTC).
ALTER TABLE upgrades ADD COLUMN wave BIGINT NOT NULL DEFAULT 1;
ALTER TABLE upgrades ADD COLUMN zone TEXT;
CREATE INDEX upgrades_rule_wave ON upgrades(rule_id, wave, stage);

ALTER TABLE rules ADD COLUMN current_wave BIGINT;
-- The last automatic halt, JSON (see `rules::waves::HaltRecord`).
ALTER TABLE rules ADD COLUMN halt TEXT;
ALTER TABLE rules ADD COLUMN paused_at BIGINT;
ALTER TABLE rules ADD COLUMN cancelled_at BIGINT;

-- When each wave of a started rule began and was passed.
CREATE TABLE rule_waves (
    rule_id BIGINT NOT NULL REFERENCES rules(id) ON DELETE CASCADE,
    wave BIGINT NOT NULL,
    started_at BIGINT,
    passed_at BIGINT,
    PRIMARY KEY (rule_id, wave)
);

-- Time zones of regions, per tenant; parts a region does not name are ''.
CREATE TABLE region_zones (
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    country TEXT NOT NULL,
    province TEXT NOT NULL,
    city TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, country, province, city)
);

-- Per-device settings kept beside `devices` (see docs/decisions.md): a time zone of its own.
CREATE TABLE device_settings (
    device_id BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    time_zone TEXT
);
