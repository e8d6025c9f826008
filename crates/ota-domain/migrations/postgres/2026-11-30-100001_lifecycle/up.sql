-- Upgrade records as a typed state machine (see `ota_domain::lifecycle`), gateway liveness,
-- per-device boot tracking for the MCU echo rule, and per-rule rollout policies.

-- The boot proof replaces the per-record reboot mark; `pushed_at` and the delivery deadline
-- replace the scheduler's claim lease.
ALTER TABLE upgrades DROP COLUMN rebooted_at;
ALTER TABLE upgrades DROP COLUMN claim_until;
-- Attempt number inside the current window opening (1 = the opening's first push).
ALTER TABLE upgrades ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
-- Why the current attempt failed: `<kind>:<stage>`, e.g. `timeout:downloading`.
ALTER TABLE upgrades ADD COLUMN failure TEXT;
-- When the scheduler must look at the record next (stage timeout, delivery deadline,
-- verification deadline); NULL when nothing is due.
ALTER TABLE upgrades ADD COLUMN due_at BIGINT;
-- When a failed attempt may be pushed again.
ALTER TABLE upgrades ADD COLUMN retry_at BIGINT;
-- A push was handed to the broker at this time and no edge has confirmed its delivery yet.
ALTER TABLE upgrades ADD COLUMN pushed_at BIGINT;
-- The gateway node that serves (or served) the download.
ALTER TABLE upgrades ADD COLUMN download_node TEXT;
-- Short attempt history, JSON (see `lifecycle::AttemptEntry`).
ALTER TABLE upgrades ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
-- Bumped by every change: concurrent writers of one record detect each other.
ALTER TABLE upgrades ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
-- Records in flight when this version is installed time out as if they had just entered
-- their stage's longest default.
UPDATE upgrades SET due_at = updated_at + 600000
    WHERE active AND stage IN ('notified', 'checked', 'downloading', 'downloaded');
CREATE INDEX upgrades_due ON upgrades(due_at) WHERE active AND due_at IS NOT NULL;
CREATE INDEX upgrades_download_node ON upgrades(download_node, stage) WHERE download_node IS NOT NULL;

-- Retry policy and stage timeouts of a rule, JSON (see `lifecycle::Policy`); written in full
-- at creation so a later change of the defaults never changes a running rule.
ALTER TABLE rules ADD COLUMN policy TEXT NOT NULL DEFAULT '{"retry":{"attempts":3,"backoff_s":120,"within_opening":true},"timeouts":{"notified_s":120,"checked_s":60,"downloading_s":600,"downloaded_wifi_s":300,"downloaded_mcu_s":1800}}';

-- One row per live gateway process: its lease. A row whose heartbeat is older than its
-- lease belongs to a dead gateway; the others mark its devices offline.
CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL
);
CREATE INDEX devices_gateway ON devices(gateway_id) WHERE online;

-- Per-device OTA bookkeeping kept beside `devices` (which is at diesel's 32-column limit; see
-- docs/decisions.md): the boot sequence seen last, and the MCU image served last.
CREATE TABLE device_ota_state (
    device_id BIGINT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    provision_at BIGINT,
    wifi_check_at BIGINT,
    mcu_check_at BIGINT,
    mcu_served_version TEXT,
    mcu_served_at BIGINT
);
