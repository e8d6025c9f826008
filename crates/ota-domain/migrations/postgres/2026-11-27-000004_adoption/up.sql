-- Adoption of devices provisioned by the hosted cloud (issue 5).
-- One row per product that is not `closed` (no row = closed, today's behaviour).
CREATE TABLE adoption_policies (
    product_id BIGINT PRIMARY KEY REFERENCES products(id) ON DELETE CASCADE,
    policy TEXT NOT NULL,
    open_until BIGINT,
    max_adoptions BIGINT,
    -- Unknown dids adopted in the current open window; the count limit is a conditional
    -- UPDATE of this column, so several gateways never adopt more than max_adoptions.
    adopted_in_window BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);
CREATE INDEX adoption_policies_policy ON adoption_policies(policy);

-- Coalesced: one row per product, did and kind, with a count and the last time and address,
-- so a device retrying every few seconds for ever does not add a row each time.
CREATE TABLE adoption_events (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    product_id BIGINT NOT NULL REFERENCES products(id) ON DELETE CASCADE,
    did TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT,
    source TEXT,
    count BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX adoption_events_one ON adoption_events(product_id, did, kind);
CREATE INDEX adoption_events_recent ON adoption_events(product_id, last_at);

-- devices now has 32 columns, diesel's limit without its slow 64-column feature: how a device
-- was adopted follows from registered_via (import / adopted), the last conflict time from the events.
ALTER TABLE devices ADD COLUMN adopted_at BIGINT;
ALTER TABLE devices ADD COLUMN passcode_pinned_at BIGINT;
ALTER TABLE devices ADD COLUMN repin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE devices ADD COLUMN conflicts BIGINT NOT NULL DEFAULT 0;
