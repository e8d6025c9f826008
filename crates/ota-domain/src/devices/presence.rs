//! Online state, written in batches.
//!
//! Ten thousand devices reconnecting after a gateway restart must not queue behind one
//! database write each: logins and logouts go into a channel, and one writer task applies
//! them in transactions of up to [`BATCH`] events (only repeated "seen" marks of one did are
//! merged). A logout only applies to the session it belongs to (`connected_at`), so
//! a device that already logged in again — here or on another gateway — stays online.
//!
//! A batch that cannot be written (the database is down) is not retried event by event: the
//! writer remembers that the database may be behind ([`PresenceWriter::take_dirty`]), and the
//! gateway's liveness loop asks for a **resync**, which writes the gateway's live sessions as
//! they are then. A resync goes through the same channel, so it is ordered with the events:
//! the session list is read when the writer reaches it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::Domain;
use crate::liveness::LiveSession;
use crate::schema::devices;

/// Largest number of events applied in one transaction.
pub const BATCH: usize = 2000;
/// How long the writer waits for more events before it writes what it has.
const LINGER: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
enum Event {
    Online { did: String, gateway_id: String, ip: Option<String>, session_ms: i64 },
    Offline { did: String, session_ms: i64, at_ms: i64 },
    Seen { did: String, at_ms: i64 },
}

/// Reads a gateway's live sessions when a resync runs.
pub type SessionSnapshot = Box<dyn FnOnce() -> Vec<LiveSession> + Send>;

enum Command {
    Event(Event),
    Flush(oneshot::Sender<()>),
    Resync { node: String, snapshot: SessionSnapshot, done: oneshot::Sender<bool> },
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct PresenceWriter {
    tx: mpsc::UnboundedSender<Command>,
    dirty: Arc<AtomicBool>,
}

impl PresenceWriter {
    /// Starts the writer on the current tokio runtime.
    pub fn start(domain: Domain) -> PresenceWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let dirty = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(domain, rx, dirty.clone()));
        PresenceWriter { tx, dirty }
    }

    /// A session began; `session_ms` identifies it (the login time).
    pub fn online(&self, did: &str, gateway_id: &str, ip: Option<String>, session_ms: i64) {
        let event = Event::Online { did: did.to_owned(), gateway_id: gateway_id.to_owned(), ip, session_ms };
        let _ = self.tx.send(Command::Event(event));
    }

    /// The session that began at `session_ms` ended at `at_ms`.
    pub fn offline(&self, did: &str, session_ms: i64, at_ms: i64) {
        let _ = self.tx.send(Command::Event(Event::Offline { did: did.to_owned(), session_ms, at_ms }));
    }

    /// The device showed it is alive (a ping, a publish).
    pub fn seen(&self, did: &str, at_ms: i64) {
        let _ = self.tx.send(Command::Event(Event::Seen { did: did.to_owned(), at_ms }));
    }

    /// Resolves once everything sent before it is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether a batch failed since the last call (the database may be behind the sessions).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Notes that the database may be behind the sessions (e.g. it was unreachable).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes the sessions `snapshot` returns (read when the writer gets there) as the truth
    /// of gateway `node`; resolves to whether it was written.
    pub async fn resync(&self, node: &str, snapshot: SessionSnapshot) -> bool {
        let (done, rx) = oneshot::channel();
        let cmd = Command::Resync { node: node.to_owned(), snapshot, done };
        if self.tx.send(cmd).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

async fn write_batch(domain: &Domain, pending: &mut Vec<Event>, dirty: &AtomicBool) {
    let batch = coalesce(std::mem::take(pending));
    if batch.is_empty() {
        return;
    }
    let now = domain.clock.now_ms();
    let count = batch.len();
    if let Err(e) = domain.db.write(move |c| apply(c, &batch, now)).await {
        dirty.store(true, Ordering::Relaxed);
        tracing::error!(error = %e, count, "presence batch failed; the gateway will write its sessions again");
    }
}

async fn run(domain: Domain, mut rx: mpsc::UnboundedReceiver<Command>, dirty: Arc<AtomicBool>) {
    let mut pending: Vec<Event> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut commands = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        let settled = |c: &[Command]| c.iter().any(|c| !matches!(c, Command::Event(_)));
        while commands.len() < BATCH && !settled(&commands) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => commands.push(cmd),
                _ => break,
            }
        }
        while commands.len() < BATCH
            && let Ok(cmd) = rx.try_recv()
        {
            commands.push(cmd);
        }
        let mut waiters = Vec::new();
        for cmd in commands {
            match cmd {
                Command::Event(e) => pending.push(e),
                Command::Flush(w) => waiters.push(w),
                Command::Resync { node, snapshot, done } => {
                    write_batch(&domain, &mut pending, &dirty).await;
                    let sessions = snapshot();
                    let now = domain.clock.now_ms();
                    let count = sessions.len();
                    let result = domain.db.write(move |c| Domain::resync_sessions_in(c, &node, &sessions, now)).await;
                    if let Err(e) = &result {
                        dirty.store(true, Ordering::Relaxed);
                        tracing::error!(error = %e, count, "session resync failed; tried again later");
                    } else {
                        tracing::info!(count, "live sessions written again");
                    }
                    let _ = done.send(result.is_ok());
                }
            }
        }
        write_batch(&domain, &mut pending, &dirty).await;
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// Keeps logins and logouts in order (a logout needs its login written first) and only the
/// last "seen" of each did.
fn coalesce(events: Vec<Event>) -> Vec<Event> {
    let mut last_seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::Seen { did, .. } = e {
            last_seen.insert(did.clone(), i);
        }
    }
    events
        .into_iter()
        .enumerate()
        .filter(|(i, e)| !matches!(e, Event::Seen { did, .. } if last_seen.get(did) != Some(i)))
        .map(|(_, e)| e)
        .collect()
}

impl Event {
    fn did(&self) -> &str {
        match self {
            Event::Online { did, .. } | Event::Offline { did, .. } | Event::Seen { did, .. } => did,
        }
    }
}

fn apply(c: &mut crate::db::DbConn, batch: &[Event], now: i64) -> crate::Result<()> {
    // Every row first, in one order (`super::locks`): a check batch on the same devices
    // waits for this one instead of deadlocking with it.
    let dids: Vec<&str> = batch.iter().map(Event::did).collect();
    super::locks::lock_in_order(c, &dids, &[], None)?;
    match c {
        crate::db::DbConn::Pg(pg) => {
            for layer in layers(batch) {
                apply_layer_pg(pg, &layer, now)?;
            }
        }
        crate::db::DbConn::Sqlite(_) => {
            for e in batch {
                apply_one(c, e, now)?;
            }
        }
    }
    Ok(())
}

/// The batch cut, in order, into runs in which each did appears at most once: within a run
/// the order of the events does not matter, so each kind of event is one statement.
fn layers(batch: &[Event]) -> Vec<Vec<&Event>> {
    let mut out: Vec<Vec<&Event>> = Vec::new();
    let mut in_layer: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for e in batch {
        if out.is_empty() || !in_layer.insert(e.did()) {
            out.push(Vec::new());
            in_layer.clear();
            in_layer.insert(e.did());
        }
        if let Some(layer) = out.last_mut() {
            layer.push(e);
        }
    }
    out
}

/// One run of events in at most three statements (one per kind), each over arrays of its
/// rows: on PostgreSQL a batch is a few round trips, not one per event. The row locks were
/// taken in order already, and a transaction that makes 2,000 round trips on a loaded
/// machine held them for seconds, in the way of the check batches.
fn apply_layer_pg(pg: &mut diesel::PgConnection, layer: &[&Event], now: i64) -> crate::Result<()> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let (mut on_did, mut on_gw, mut on_ip, mut on_s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut off_did, mut off_s, mut off_at) = (Vec::new(), Vec::new(), Vec::new());
    let (mut seen_did, mut seen_at) = (Vec::new(), Vec::new());
    for e in layer {
        match e {
            Event::Online { did, gateway_id, ip, session_ms } => {
                on_did.push(did.as_str());
                on_gw.push(gateway_id.as_str());
                on_ip.push(ip.as_deref());
                on_s.push(*session_ms);
            }
            Event::Offline { did, session_ms, at_ms } => {
                off_did.push(did.as_str());
                off_s.push(*session_ms);
                off_at.push(*at_ms);
            }
            Event::Seen { did, at_ms } => {
                seen_did.push(did.as_str());
                seen_at.push(*at_ms);
            }
        }
    }
    if !on_did.is_empty() {
        diesel::sql_query(
            "UPDATE devices SET online = TRUE, gateway_id = v.gw, ip = v.ip, connected_at = v.s, \
             last_seen_at = v.s, updated_at = $5 \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) AS v(did, gw, ip, s) \
             WHERE devices.did = v.did",
        )
        .bind::<Array<Text>, _>(&on_did)
        .bind::<Array<Text>, _>(&on_gw)
        .bind::<Array<Nullable<Text>>, _>(&on_ip)
        .bind::<Array<BigInt>, _>(&on_s)
        .bind::<BigInt, _>(now)
        .execute(pg)?;
    }
    if !off_did.is_empty() {
        diesel::sql_query(
            "UPDATE devices SET online = FALSE, disconnected_at = v.at, updated_at = $4 \
             FROM unnest($1::text[], $2::int8[], $3::int8[]) AS v(did, s, at) \
             WHERE devices.did = v.did AND devices.connected_at = v.s",
        )
        .bind::<Array<Text>, _>(&off_did)
        .bind::<Array<BigInt>, _>(&off_s)
        .bind::<Array<BigInt>, _>(&off_at)
        .bind::<BigInt, _>(now)
        .execute(pg)?;
    }
    if !seen_did.is_empty() {
        diesel::sql_query(
            "UPDATE devices SET last_seen_at = v.at FROM unnest($1::text[], $2::int8[]) AS v(did, at) \
             WHERE devices.did = v.did",
        )
        .bind::<Array<Text>, _>(&seen_did)
        .bind::<Array<BigInt>, _>(&seen_at)
        .execute(pg)?;
    }
    Ok(())
}

/// One event, one statement (SQLite: in process, so a statement costs no round trip).
fn apply_one(c: &mut crate::db::DbConn, e: &Event, now: i64) -> crate::Result<()> {
    match e {
        Event::Online { did, gateway_id, ip, session_ms } => {
            diesel::update(devices::table.filter(devices::did.eq(did)))
                .set((
                    devices::online.eq(true),
                    devices::gateway_id.eq(gateway_id),
                    devices::ip.eq(ip),
                    devices::connected_at.eq(session_ms),
                    devices::last_seen_at.eq(session_ms),
                    devices::updated_at.eq(now),
                ))
                .execute(c)?;
        }
        Event::Offline { did, session_ms, at_ms } => {
            diesel::update(devices::table.filter(devices::did.eq(did)).filter(devices::connected_at.eq(session_ms)))
                .set((devices::online.eq(false), devices::disconnected_at.eq(at_ms), devices::updated_at.eq(now)))
                .execute(c)?;
        }
        Event::Seen { did, at_ms } => {
            diesel::update(devices::table.filter(devices::did.eq(did)))
                .set(devices::last_seen_at.eq(at_ms))
                .execute(c)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(did: &str, s: i64) -> Event {
        Event::Online { did: did.into(), gateway_id: "g".into(), ip: None, session_ms: s }
    }

    fn off(did: &str, s: i64) -> Event {
        Event::Offline { did: did.into(), session_ms: s, at_ms: s + 1 }
    }

    fn kinds(events: &[Event]) -> Vec<(String, &'static str, i64)> {
        events
            .iter()
            .map(|e| match e {
                Event::Online { did, session_ms, .. } => (did.clone(), "on", *session_ms),
                Event::Offline { did, session_ms, .. } => (did.clone(), "off", *session_ms),
                Event::Seen { did, at_ms } => (did.clone(), "seen", *at_ms),
            })
            .collect()
    }

    #[test]
    fn a_batch_is_cut_into_runs_where_each_did_appears_once() {
        let events = vec![on("a", 1), on("b", 1), off("a", 1), on("c", 1), on("a", 5), off("b", 1)];
        let runs: Vec<Vec<(String, &'static str, i64)>> =
            layers(&events).into_iter().map(|run| kinds(&run.into_iter().cloned().collect::<Vec<_>>())).collect();
        assert_eq!(
            runs,
            vec![
                vec![("a".into(), "on", 1), ("b".into(), "on", 1)],
                vec![("a".into(), "off", 1), ("c".into(), "on", 1)],
                vec![("a".into(), "on", 5), ("b".into(), "off", 1)],
            ]
        );
        assert!(layers(&[]).is_empty());
    }

    #[test]
    fn logins_and_logouts_stay_in_order_and_only_the_last_seen_is_kept() {
        let seen = |did: &str, at: i64| Event::Seen { did: did.into(), at_ms: at };
        let events = vec![on("a", 1), seen("a", 2), off("a", 1), seen("a", 3), on("a", 5), on("b", 2), seen("b", 3)];
        let got = kinds(&coalesce(events));
        assert_eq!(
            got,
            vec![
                ("a".into(), "on", 1),
                ("a".into(), "off", 1),
                ("a".into(), "seen", 3),
                ("a".into(), "on", 5),
                ("b".into(), "on", 2),
                ("b".into(), "seen", 3)
            ]
        );
    }
}
