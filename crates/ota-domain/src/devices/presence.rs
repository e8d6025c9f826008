//! Online state, written in batches.
//!
//! Ten thousand devices reconnecting after a gateway restart must not queue behind one
//! database write each: logins and logouts go into a channel, and one writer task applies
//! them in transactions of up to [`BATCH`] events (only repeated "seen" marks of one did are
//! merged). A logout only applies to the session it belongs to (`connected_at`), so
//! a device that already logged in again — here or on another gateway — stays online.

use std::collections::HashMap;
use std::time::Duration;

use diesel::prelude::*;
use tokio::sync::{mpsc, oneshot};

use crate::Domain;
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

enum Command {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct PresenceWriter {
    tx: mpsc::UnboundedSender<Command>,
}

impl PresenceWriter {
    /// Starts the writer on the current tokio runtime.
    pub fn start(domain: Domain) -> PresenceWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(domain, rx));
        PresenceWriter { tx }
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
}

async fn run(domain: Domain, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut pending: Vec<Event> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { return };
        let take = |cmd: Command, pending: &mut Vec<Event>, waiters: &mut Vec<oneshot::Sender<()>>| match cmd {
            Command::Event(e) => pending.push(e),
            Command::Flush(w) => waiters.push(w),
        };
        take(first, &mut pending, &mut waiters);
        let deadline = tokio::time::Instant::now() + LINGER;
        while pending.len() < BATCH && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(cmd)) => take(cmd, &mut pending, &mut waiters),
                _ => break,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            if pending.len() >= BATCH {
                take(cmd, &mut pending, &mut waiters);
                break;
            }
            take(cmd, &mut pending, &mut waiters);
        }
        let batch = coalesce(std::mem::take(&mut pending));
        if !batch.is_empty() {
            let now = domain.clock.now_ms();
            let count = batch.len();
            if let Err(e) = domain.db.write(move |c| apply(c, &batch, now)).await {
                tracing::error!(error = %e, count, "presence batch failed; the next login or logout will correct it");
            }
        }
        for w in waiters.drain(..) {
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

fn apply(c: &mut crate::db::DbConn, batch: &[Event], now: i64) -> crate::Result<()> {
    for e in batch {
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
                diesel::update(
                    devices::table.filter(devices::did.eq(did)).filter(devices::connected_at.eq(session_ms)),
                )
                .set((devices::online.eq(false), devices::disconnected_at.eq(at_ms), devices::updated_at.eq(now)))
                .execute(c)?;
            }
            Event::Seen { did, at_ms } => {
                diesel::update(devices::table.filter(devices::did.eq(did)))
                    .set(devices::last_seen_at.eq(at_ms))
                    .execute(c)?;
            }
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
