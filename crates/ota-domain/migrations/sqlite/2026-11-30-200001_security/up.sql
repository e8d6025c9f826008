-- Issue 11: login throttle counters shared by every API node, the per-product
-- re-registration policy, refusals of unknown dids that name no product, and V4 reports held
-- until the device proves its address (see ota-domain login.rs, registration.rs).

-- Failed logins, counted before the password is hashed. `key` is `u:<user>@<source>` or
-- `s:<source>`; a row without a failure for 15 minutes is forgotten.
CREATE TABLE login_failures (
    key TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL
);
CREATE INDEX login_failures_last ON login_failures(last_failure_at);

-- One row per product whose policy is not `allow` (no row = allow, the hosted cloud's behaviour).
CREATE TABLE registration_policies (
    product_id BIGINT PRIMARY KEY REFERENCES products(id) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    offline_minutes BIGINT,
    updated_at BIGINT NOT NULL
);

-- Unknown dids refused where no product is known (an MQTT login, a plain provision, a check):
-- coalesced per did and channel, with a count and the last source address. Installation
-- administrators list them.
CREATE TABLE unknown_device_refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    did TEXT NOT NULL,
    channel TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT,
    count BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX unknown_device_refusals_one ON unknown_device_refusals(did, channel);
CREATE INDEX unknown_device_refusals_recent ON unknown_device_refusals(last_at);

-- A V4 `target_fid` report (no passcode) from an address that is not the device's live MQTT
-- session: held, and applied only if the device's next MQTT login comes from that address.
CREATE TABLE held_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id BIGINT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    fw_type TEXT NOT NULL,
    source TEXT NOT NULL,
    hard_version TEXT NOT NULL,
    soft_version TEXT NOT NULL,
    fid BIGINT NOT NULL,
    reported_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX held_reports_one ON held_reports(device_id, fw_type, source);
CREATE INDEX held_reports_age ON held_reports(reported_at);
