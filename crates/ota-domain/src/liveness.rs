//! Gateway liveness: which gateway processes are alive, and what happens to the sessions and
//! downloads of one that is not.
//!
//! Each gateway process has a stable node id (configured, or created once and kept in its
//! data directory) and keeps a lease: a row in `gateways` whose `heartbeat_at` it renews
//! every third of its lease. Its devices' rows name it (`devices.gateway_id`).
//!
//! - **Start:** sessions and downloads from an earlier run of the same node (a crash, a
//!   `kill -9`) are gone: its devices are marked offline, its downloads cut (failed, kind
//!   `download_cut`), before it accepts devices.
//! - **Lapse:** a gateway whose heartbeat is older than its lease is dead; any other gateway
//!   marks its devices offline (`disconnected_at` = its last heartbeat), cuts its downloads and
//!   removes its row. So device presence is the truth within one lease period.
//! - **Reaped while alive** (a long database outage, a stalled process): its next heartbeat
//!   finds its row gone; it registers again and writes its live sessions again (a resync).
//! - **Graceful stop:** its devices are marked offline and its row removed before it exits.

use diesel::prelude::*;

use crate::Domain;
use crate::db::DbConn;
use crate::error::Result;
use crate::schema::{devices, gateways};
use crate::upgrades::events::cut_downloads_of;

/// Thirty seconds: a dead gateway's devices show offline within this.
pub const DEFAULT_LEASE_MS: i64 = 30_000;

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease was renewed.
    Renewed,
    /// The row was gone (reaped, or taken by another process with the same node id) and is
    /// registered again: the caller must write its live sessions again.
    Reregistered,
}

/// What a start or a reap cleaned up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Gateways found dead.
    pub gateways: usize,
    /// Devices marked offline.
    pub devices: usize,
    /// Downloads cut.
    pub downloads: usize,
}

/// A session a gateway holds, for a resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub did: String,
    pub session_ms: i64,
    pub ip: Option<String>,
}

fn mark_offline(c: &mut DbConn, node: &str, at: i64, now: i64) -> Result<usize> {
    crate::devices::locks::lock_in_order(c, &[], &[], Some(node))?;
    Ok(diesel::update(devices::table.filter(devices::gateway_id.eq(node)).filter(devices::online.eq(true)))
        .set((devices::online.eq(false), devices::disconnected_at.eq(at), devices::updated_at.eq(now)))
        .execute(c)?)
}

fn register(c: &mut DbConn, node: &str, started_at: i64, lease_ms: i64, now: i64) -> Result<()> {
    diesel::delete(gateways::table.find(node)).execute(c)?;
    diesel::insert_into(gateways::table)
        .values((
            gateways::id.eq(node),
            gateways::started_at.eq(started_at),
            gateways::heartbeat_at.eq(now),
            gateways::lease_ms.eq(lease_ms),
        ))
        .execute(c)?;
    Ok(())
}

impl Domain {
    /// A gateway starts: cleans up after its earlier run and registers its lease.
    pub async fn gateway_started(&self, node: &str, started_at: i64, lease_ms: i64) -> Result<Cleanup> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let node = node.to_owned();
        self.db
            .write(move |c| {
                let devices = mark_offline(c, &node, now, now)?;
                let downloads = cut_downloads_of(c, &node, now, delivery)?;
                register(c, &node, started_at, lease_ms, now)?;
                Ok(Cleanup { gateways: 0, devices, downloads })
            })
            .await
    }

    /// Renews the lease of the gateway run that started at `started_at`.
    pub async fn gateway_heartbeat(&self, node: &str, started_at: i64, lease_ms: i64) -> Result<Heartbeat> {
        let now = self.clock.now_ms();
        let node = node.to_owned();
        self.db
            .write(move |c| {
                let renewed = diesel::update(
                    gateways::table.filter(gateways::id.eq(&node)).filter(gateways::started_at.eq(started_at)),
                )
                .set((gateways::heartbeat_at.eq(now), gateways::lease_ms.eq(lease_ms)))
                .execute(c)?;
                if renewed == 1 {
                    return Ok(Heartbeat::Renewed);
                }
                let other: Option<i64> =
                    gateways::table.find(&node).select(gateways::started_at).first(c).optional()?;
                if other.is_some() {
                    tracing::error!(node = %node, "another gateway process registered the same node id; give each process its own");
                }
                register(c, &node, started_at, lease_ms, now)?;
                Ok(Heartbeat::Reregistered)
            })
            .await
    }

    /// Finds gateways whose lease lapsed (other than `me`): their devices go offline, their
    /// downloads are cut, their rows are removed.
    pub async fn reap_gateways(&self, me: &str) -> Result<Cleanup> {
        let now = self.clock.now_ms();
        let delivery = self.settings.delivery_timeout_ms;
        let me = me.to_owned();
        self.db
            .write(move |c| {
                let dead: Vec<(String, i64)> = gateways::table
                    .filter(gateways::id.ne(&me))
                    .filter((gateways::heartbeat_at + gateways::lease_ms).lt(now))
                    .select((gateways::id, gateways::heartbeat_at))
                    .load(c)?;
                let mut cleanup = Cleanup::default();
                for (node, last) in dead {
                    cleanup.gateways += 1;
                    cleanup.devices += mark_offline(c, &node, last, now)?;
                    cleanup.downloads += cut_downloads_of(c, &node, now, delivery)?;
                    diesel::delete(gateways::table.find(&node)).execute(c)?;
                    tracing::warn!(node = %node, "gateway lease lapsed; its devices are offline now");
                }
                Ok(cleanup)
            })
            .await
    }

    /// A gateway stops on purpose: its devices are offline from now and its row goes.
    pub async fn gateway_stopped(&self, node: &str) -> Result<usize> {
        let now = self.clock.now_ms();
        let node = node.to_owned();
        self.db
            .write(move |c| {
                let n = mark_offline(c, &node, now, now)?;
                diesel::delete(gateways::table.find(&node)).execute(c)?;
                Ok(n)
            })
            .await
    }

    /// Writes a gateway's live sessions again: these devices are online here, and devices the
    /// database places here that are not among them are offline.
    pub(crate) fn resync_sessions_in(c: &mut DbConn, node: &str, sessions: &[LiveSession], now: i64) -> Result<()> {
        let dids: Vec<&str> = sessions.iter().map(|s| s.did.as_str()).collect();
        crate::devices::locks::lock_in_order(c, &dids, &[], Some(node))?;
        for s in sessions {
            diesel::update(devices::table.filter(devices::did.eq(&s.did)))
                .set((
                    devices::online.eq(true),
                    devices::gateway_id.eq(node),
                    devices::ip.eq(&s.ip),
                    devices::connected_at.eq(s.session_ms),
                    devices::updated_at.eq(now),
                ))
                .execute(c)?;
        }
        let placed: Vec<(i64, Option<String>)> = devices::table
            .filter(devices::gateway_id.eq(node))
            .filter(devices::online.eq(true))
            .select((devices::id, devices::did))
            .load(c)?;
        let live: std::collections::HashSet<&str> = sessions.iter().map(|s| s.did.as_str()).collect();
        let stale: Vec<i64> = placed
            .into_iter()
            .filter(|(_, did)| did.as_deref().is_none_or(|d| !live.contains(d)))
            .map(|(id, _)| id)
            .collect();
        for chunk in stale.chunks(1000) {
            diesel::update(devices::table.filter(devices::id.eq_any(chunk)))
                .set((devices::online.eq(false), devices::disconnected_at.eq(now), devices::updated_at.eq(now)))
                .execute(c)?;
        }
        Ok(())
    }
}
