//! End-to-end tests: the API over real HTTP on port 0, on the backend `OTA_TEST_DATABASE`
//! selects (SQLite by default, PostgreSQL in CI's second pass).

mod support;

mod adoption;
mod audit;
mod auth;
mod authz;
mod checks;
mod contracts;
mod device_abuse;
mod device_cluster;
mod device_edge;
mod device_plane;
mod devices;
mod downloads;
mod firmware;
mod idempotency;
mod lifecycle;
mod locks;
mod login_flood;
mod migrations;
mod products;
mod readyz;
mod rollout;
mod rollout_fleet;
mod rules;
mod rules_cluster;
mod rules_fleet;
mod snapshots;
mod storm;
mod tenancy;
