//! One order for the row locks of batched writers: `devices` rows first, then `upgrades`
//! rows, each in ascending id order.
//!
//! Several writers update many `devices` rows in one transaction: the batched device checks
//! (`upgrades::check_writer`, with the last-seen times they carry), the presence batches of
//! each gateway (`presence`), the resync and the offline marks of `liveness`. On PostgreSQL
//! each `UPDATE` locks its row until the commit, so two such batches that meet the same
//! devices in different orders deadlock. PostgreSQL breaks a deadlock after
//! `deadlock_timeout` (1 s) by failing one statement, and a check batch that meets one
//! presence batch again and again lost a second per check: in a 100,000-device boot over six
//! gateways, checks waited past the 30 s handler timeout (and a failed check is "no update"
//! to GAgent, never asked again) and presence batches failed.
//!
//! So every batched writer first takes the locks of all the rows it will update, in
//! ascending id order, with one `SELECT … ORDER BY id FOR NO KEY UPDATE` (PostgreSQL locks
//! the rows in the order the sort returns them). Two batches then wait for each other instead
//! of deadlocking. `NO KEY UPDATE` is the lock their `UPDATE`s of non-key columns take anyway:
//! it leaves the `KEY SHARE` locks of foreign-key checks alone (a rule start inserting records
//! for these devices), which a `FOR UPDATE` here would have made a new way to deadlock.
//! Writers of a single device row need nothing: one lock cannot close a cycle with these.
//! SQLite runs one write transaction at a time and needs nothing either.
//!
//! The same holds for `upgrades` rows, which the check batches, the scheduler's claims and
//! the batched record events (deliveries, download ends, timeouts) update many at a time:
//! each takes its records' locks in ascending id order first ([`lock_upgrades_in_order`]),
//! after any device rows it takes (no writer locks a device row after an upgrade row).

use diesel::prelude::*;

use crate::db::DbConn;
use crate::error::Result;
use crate::schema::{devices, upgrades};

/// Locks, in ascending id order, the rows of these devices (by did or by id) and, with
/// `gateway`, of every device that gateway holds online; PostgreSQL only. Returns the ids of
/// the rows locked (none on SQLite).
pub fn lock_in_order(c: &mut DbConn, dids: &[&str], ids: &[i64], gateway: Option<&str>) -> Result<Vec<i64>> {
    let DbConn::Pg(pg) = c else { return Ok(Vec::new()) };
    if dids.is_empty() && ids.is_empty() && gateway.is_none() {
        return Ok(Vec::new());
    }
    let listed = devices::did.eq_any(dids).or(devices::id.eq_any(ids));
    let rows = devices::table.order(devices::id).select(devices::id);
    let locked = match gateway {
        Some(node) => rows
            .filter(listed.or(devices::gateway_id.eq(node).and(devices::online.eq(true))))
            .for_no_key_update()
            .load::<i64>(pg)?,
        None => rows.filter(listed).for_no_key_update().load::<i64>(pg)?,
    };
    Ok(locked)
}

/// Locks, in ascending id order, these upgrade records and the open records of these
/// devices; PostgreSQL only.
pub fn lock_upgrades_in_order(c: &mut DbConn, ids: &[i64], of_devices: &[i64]) -> Result<()> {
    let DbConn::Pg(pg) = c else { return Ok(()) };
    if ids.is_empty() && of_devices.is_empty() {
        return Ok(());
    }
    upgrades::table
        .filter(upgrades::id.eq_any(ids).or(upgrades::device_id.eq_any(of_devices).and(upgrades::active.eq(true))))
        .order(upgrades::id)
        .select(upgrades::id)
        .for_no_key_update()
        .load::<i64>(pg)?;
    Ok(())
}
