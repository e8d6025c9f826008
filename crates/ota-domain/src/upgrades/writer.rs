//! Record events a gateway reports (a push delivered, a download ended), written in batches.
//!
//! An edge acknowledges a delivery the moment it has written the push to the device's
//! socket; fan-out to thousands of devices must not wait for a database write each, so the
//! acknowledgements go into a channel and one task applies them in transactions of up to
//! [`BATCH`] (`Domain::record_events`): whatever arrived while the previous transaction ran. Unlike presence, these events are not recomputable
//! later, so a batch the database refuses is kept and tried again (with a growing pause), in
//! order, ahead of newer events; at most [`MAX_HELD`] are held while the database is away.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::RecordEvent;
use crate::Domain;
use crate::lifecycle::Event;

/// Largest number of events applied in one transaction.
pub const BATCH: usize = 2000;
/// Events held while the database refuses them; older ones are dropped past this (their
/// records then recover through their deadlines).
pub const MAX_HELD: usize = 200_000;
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(1);

enum Command {
    Event(RecordEvent),
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct RecordEventWriter {
    tx: mpsc::UnboundedSender<Command>,
}

impl RecordEventWriter {
    /// Starts the writer on the current tokio runtime.
    pub fn start(domain: Domain) -> RecordEventWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(domain, rx));
        RecordEventWriter { tx }
    }

    pub fn send(&self, upgrade_id: i64, event: Event) {
        let _ = self.tx.send(Command::Event(RecordEvent { upgrade_id, event }));
    }

    /// Resolves once everything sent before it is written (or held after a failure).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(domain: Domain, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut held: Vec<RecordEvent> = Vec::new();
    let mut pause = RETRY_FIRST;
    loop {
        let mut waiters = Vec::new();
        if held.is_empty() {
            // No lingering: an acknowledgement is written at once, and a batch forms from
            // what arrives while the previous one is being written. The less time an
            // acknowledgement spends in memory, the fewer die with a killed process.
            match rx.recv().await {
                Some(Command::Event(e)) => held.push(e),
                Some(Command::Flush(w)) => waiters.push(w),
                None => return,
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                Command::Event(e) => held.push(e),
                Command::Flush(w) => waiters.push(w),
            }
        }
        if held.len() > MAX_HELD {
            let extra = held.len() - MAX_HELD;
            held.drain(..extra);
            tracing::error!(dropped = extra, "record events dropped while the database was away");
        }
        while !held.is_empty() {
            let take = held.len().min(BATCH);
            let batch: Vec<RecordEvent> = held[..take].to_vec();
            match domain.record_events(batch).await {
                Ok(_) => {
                    held.drain(..take);
                    pause = RETRY_FIRST;
                }
                Err(e) => {
                    tracing::warn!(error = %e, held = held.len(), "record events not written; trying again");
                    break;
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
        if !held.is_empty() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}
