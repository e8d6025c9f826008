//! The metric names of the server and the few helpers that record them, in one place so the
//! README's table ("Metrics and logs") has one source. Recording goes through the `metrics`
//! facade: without an installed recorder (tests, `ota migrate`) every call is a no-op. `ota up`
//! installs the Prometheus recorder and serves it on `metrics_bind`.

use diesel::prelude::*;
use ota_wire::rules::{RuleCounts, RuleStatus};

use crate::Domain;
use crate::error::Result;
use crate::schema::rules;
use crate::stored::Stored;

/// Device logins accepted on the MQTT edge (counter).
pub const DEVICE_LOGINS: &str = "ota_device_logins_total";
/// Device logins and passcode calls refused, by `channel` (`mqtt`, `http`) and `reason`.
pub const DEVICE_LOGIN_REFUSALS: &str = "ota_device_login_refusals_total";
/// Device calls a gateway refused because as many were in flight as it allows, by `call`
/// (`device_call`: registration and provision; `mqtt_login`).
pub const DEVICE_ADMISSION_REFUSALS: &str = "ota_device_admission_refusals_total";
/// Device MQTT sessions open on this node (gauge).
pub const MQTT_SESSIONS: &str = "ota_mqtt_sessions";
/// Device checks by push `method` (`V4`, `V4.1`, `V1V3`, as in the API).
pub const DEVICE_CHECKS: &str = "ota_device_checks_total";
/// Checks answered with an image, by push `method`.
pub const OFFERS: &str = "ota_offers_total";
/// Checks that changed stored state (versions, a record's stage, …) and were answered after
/// their batch's commit, by push `method`; the others were answered from a read.
pub const DEVICE_CHECK_WRITES: &str = "ota_device_check_writes_total";
/// Pushes handed to the broker.
pub const PUSHES_SENT: &str = "ota_pushes_sent_total";
/// Pushes the broker refused.
pub const PUSHES_REFUSED: &str = "ota_pushes_refused_total";
/// Pushes an edge wrote to the device's socket.
pub const PUSHES_DELIVERED: &str = "ota_pushes_delivered_total";
/// Upgrade records entering a `stage` (succeeded, failed, expired...).
pub const STAGE_CHANGES: &str = "ota_upgrade_stage_changes_total";
/// Firmware downloads started on this node's device HTTP, by `kind` (`offer`, `latest`).
pub const DOWNLOADS_STARTED: &str = "ota_downloads_started_total";
/// Downloads that sent the whole image.
pub const DOWNLOADS_COMPLETED: &str = "ota_downloads_completed_total";
/// Downloads that ended early (a write error, the download timeout).
pub const DOWNLOADS_CUT: &str = "ota_downloads_cut_total";
/// Firmware body bytes sent to devices.
pub const DOWNLOAD_BYTES: &str = "ota_download_bytes_total";
/// Push sent → delivered to the device's socket (histogram, seconds).
pub const PUSH_DELIVERY_SECONDS: &str = "ota_push_delivery_seconds";
/// Offer (check answered) → download started (histogram, seconds).
pub const OFFER_TO_DOWNLOAD_SECONDS: &str = "ota_offer_to_download_seconds";
/// Download started → whole image sent (histogram, seconds).
pub const DOWNLOAD_SECONDS: &str = "ota_download_seconds";
/// Image downloaded → the device reported the target version (histogram, seconds).
pub const DOWNLOADED_TO_SUCCEEDED_SECONDS: &str = "ota_downloaded_to_succeeded_seconds";
/// Per live rule (label `rule`, the id): targets (gauge).
pub const RULE_TARGETS: &str = "ota_rule_targets";
/// Per live rule: targets succeeded (gauge).
pub const RULE_SUCCEEDED: &str = "ota_rule_succeeded";
/// Per live rule: targets whose current attempt failed or expired (gauge).
pub const RULE_FAILED: &str = "ota_rule_failed";
/// Per live rule: targets on their way (notified, checked, downloading, downloaded) (gauge).
pub const RULE_IN_PROGRESS: &str = "ota_rule_in_progress";
/// Database pool connections by `state` (`in_use`, `idle`) (gauge).
pub const DB_CONNECTIONS: &str = "ota_db_connections";
/// The database pool's size limit (gauge).
pub const DB_CONNECTIONS_MAX: &str = "ota_db_connections_max";
/// One scheduler round (histogram, seconds).
pub const SCHEDULER_ROUND_SECONDS: &str = "ota_scheduler_round_seconds";
/// Management API requests by `method`, `route` (the pattern) and `status`.
pub const API_REQUESTS: &str = "ota_api_requests_total";
/// Management API latency by `method` and `route` (histogram, seconds).
pub const API_REQUEST_SECONDS: &str = "ota_api_request_seconds";
/// Device HTTP requests by `status`.
pub const DEVICE_HTTP_REQUESTS: &str = "ota_device_http_requests_total";
/// Device HTTP requests whose handler did not answer within the handler timeout (answered
/// 503 `handler_timeout`): a gateway past what its database lets it do.
pub const DEVICE_HTTP_HANDLER_TIMEOUTS: &str = "ota_device_http_handler_timeouts_total";

/// Every name above (the README's table lists each; a test checks).
pub const ALL: &[&str] = &[
    DEVICE_LOGINS,
    DEVICE_LOGIN_REFUSALS,
    DEVICE_ADMISSION_REFUSALS,
    MQTT_SESSIONS,
    DEVICE_CHECKS,
    OFFERS,
    DEVICE_CHECK_WRITES,
    PUSHES_SENT,
    PUSHES_REFUSED,
    PUSHES_DELIVERED,
    STAGE_CHANGES,
    DOWNLOADS_STARTED,
    DOWNLOADS_COMPLETED,
    DOWNLOADS_CUT,
    DOWNLOAD_BYTES,
    PUSH_DELIVERY_SECONDS,
    OFFER_TO_DOWNLOAD_SECONDS,
    DOWNLOAD_SECONDS,
    DOWNLOADED_TO_SUCCEEDED_SECONDS,
    RULE_TARGETS,
    RULE_SUCCEEDED,
    RULE_FAILED,
    RULE_IN_PROGRESS,
    DB_CONNECTIONS,
    DB_CONNECTIONS_MAX,
    SCHEDULER_ROUND_SECONDS,
    API_REQUESTS,
    API_REQUEST_SECONDS,
    DEVICE_HTTP_REQUESTS,
    DEVICE_HTTP_HANDLER_TIMEOUTS,
];

/// Every histogram above (they get the latency buckets of [`LATENCY_BUCKETS`]).
pub const HISTOGRAMS: &[&str] = &[
    PUSH_DELIVERY_SECONDS,
    OFFER_TO_DOWNLOAD_SECONDS,
    DOWNLOAD_SECONDS,
    DOWNLOADED_TO_SUCCEEDED_SECONDS,
    SCHEDULER_ROUND_SECONDS,
    API_REQUEST_SECONDS,
];

/// Histogram buckets, seconds: from a fast API call to a slow device rebooting.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// Rules whose progress is exported at most (the oldest live ones first).
pub const MAX_RULES_EXPORTED: i64 = 200;

/// Records `later - earlier` (milliseconds) in histogram `name`, when both are known and in
/// order.
pub fn observe_ms(name: &'static str, earlier: Option<i64>, later: i64) {
    if let Some(earlier) = earlier
        && later >= earlier
    {
        metrics::histogram!(name).record((later - earlier) as f64 / 1000.0);
    }
}

/// Sets the pool gauges from the pool's state now.
pub fn record_pool(db: &crate::Db) {
    let (connections, idle, max) = db.pool_state();
    metrics::gauge!(DB_CONNECTIONS, "state" => "in_use").set(f64::from(connections.saturating_sub(idle)));
    metrics::gauge!(DB_CONNECTIONS, "state" => "idle").set(f64::from(idle));
    metrics::gauge!(DB_CONNECTIONS_MAX).set(f64::from(max));
}

impl Domain {
    /// The target counts of live rules (pushing, paused, halted), at most
    /// [`MAX_RULES_EXPORTED`], for the rule gauges.
    pub async fn live_rule_counts(&self) -> Result<Vec<(i64, RuleCounts)>> {
        self.db
            .run(|c| {
                let live = [RuleStatus::Pushing, RuleStatus::Paused, RuleStatus::Halted].map(Stored);
                let ids: Vec<i64> = rules::table
                    .filter(rules::status.eq_any(live))
                    .order(rules::id)
                    .limit(MAX_RULES_EXPORTED)
                    .select(rules::id)
                    .load(c)?;
                ids.into_iter().map(|id| Ok((id, crate::rules::counts(c, id)?))).collect()
            })
            .await
    }

    /// Refreshes the rule gauges (run by the scheduler). Gauges of rules no longer live stop
    /// being refreshed, and the exporter drops them after its idle timeout.
    pub async fn record_rule_progress(&self) -> Result<()> {
        for (id, counts) in self.live_rule_counts().await? {
            let rule = id.to_string();
            metrics::gauge!(RULE_TARGETS, "rule" => rule.clone()).set(counts.targets as f64);
            metrics::gauge!(RULE_SUCCEEDED, "rule" => rule.clone()).set(counts.succeeded as f64);
            metrics::gauge!(RULE_FAILED, "rule" => rule.clone()).set((counts.failed + counts.expired) as f64);
            metrics::gauge!(RULE_IN_PROGRESS, "rule" => rule).set(counts.in_progress as f64);
        }
        Ok(())
    }
}
