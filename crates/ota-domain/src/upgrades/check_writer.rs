//! The writes device checks carry, in batches (group commit).
//!
//! A check that changes stored state ([`super::check::Read::Write`]) is queued here with a
//! reply slot; one task runs every queued check in **one** transaction (each in a savepoint
//! of its own, so one check's refusal does not undo the others) and sends the answers only
//! once that transaction is committed. Many checks share one commit, and no device is told
//! anything (an offer, whose download URL names the record now `checked`) that a crash could
//! still take back.
//!
//! A check that changes nothing but the device's last-seen time is answered from a read; its
//! last-seen time is queued here without a reply and written with the next batch, or after
//! [`SEEN_LINGER`] when no check writes, or on [`CheckWriter::flush`] (a graceful stop). A
//! `kill -9` loses at most those last-seen times of the moment before: facts no answer
//! depended on, which the device's next check reports again.
//!
//! Like [`super::writer`], the batch forms from whatever arrived while the previous one was
//! written: no check waits for a timer.
//!
//! A check whose savepoint failed for a reason that is not its own (a deadlock with another
//! writer on PostgreSQL, a unique key a concurrent rule start took) is run once more, alone,
//! after the batch: GAgent takes any failed check as "no update" and never asks again, so a
//! device that reports its new version must not lose that report to a conflict.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::Connection;
use ota_wire::ErrorCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::check::{Check, NoOffer, Offer, check_in};
use crate::db::{Db, DbConn};
use crate::error::{DomainError, Result};
use crate::upgrade::SeriesRules;

/// Most checks run in one transaction.
pub const BATCH: usize = 256;
/// Last-seen times wait at most this long for a batch of checks to travel with.
pub const SEEN_LINGER: Duration = Duration::from_millis(100);
/// Last-seen times held before they are written anyway.
const SEEN_MAX: usize = 4096;

type Answer = std::result::Result<Offer, NoOffer>;

enum Command {
    Check { check: Box<Check>, now: i64, reply: oneshot::Sender<Result<Answer>> },
    Seen { device_id: i64, at: i64 },
    Flush(oneshot::Sender<()>),
}

/// What the checks of a batch run with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckConfig {
    pub rules: SeriesRules,
    pub delivery_timeout_ms: i64,
    pub download_cap: Option<u32>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct CheckWriter {
    tx: mpsc::UnboundedSender<Command>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl CheckWriter {
    /// Starts the writer on the current tokio runtime.
    pub(crate) fn start(db: Db, config: CheckConfig) -> CheckWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, config, rx));
        CheckWriter { tx, task: Arc::new(Mutex::new(Some(task))) }
    }

    /// Runs `check` in the next batch; resolves once that batch is committed.
    pub(crate) async fn check(&self, check: Check, now: i64) -> Result<Answer> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Check { check: Box::new(check), now, reply }).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The device was seen at `at` (written later; see the module doc).
    pub(crate) fn seen(&self, device_id: i64, at: i64) {
        let _ = self.tx.send(Command::Seen { device_id, at });
    }

    /// Resolves once everything sent before it is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops the task at once, writing nothing more: what a `kill -9` does to it (for the
    /// crash tests). Checks still waiting are answered with an error.
    pub fn kill(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

fn stopped() -> DomainError {
    DomainError::new(ErrorCode::DatabaseUnavailable, "the check writer has stopped")
}

struct Waiting {
    check: Box<Check>,
    now: i64,
    reply: oneshot::Sender<Result<Answer>>,
}

async fn run(db: Db, config: CheckConfig, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut seen: HashMap<i64, i64> = HashMap::new();
    let mut seen_since: Option<tokio::time::Instant> = None;
    loop {
        let first = match seen_since {
            None => rx.recv().await,
            Some(since) => match tokio::time::timeout_at(since + SEEN_LINGER, rx.recv()).await {
                Ok(cmd) => cmd,
                Err(_) => {
                    write(&db, config, Vec::new(), std::mem::take(&mut seen)).await;
                    seen_since = None;
                    continue;
                }
            },
        };
        let Some(first) = first else {
            // Every handle is gone: write what is left and end.
            write(&db, config, Vec::new(), seen).await;
            return;
        };
        let mut checks = Vec::new();
        let mut waiters = Vec::new();
        let mut take = |cmd: Command, checks: &mut Vec<Waiting>| match cmd {
            Command::Check { check, now, reply } => checks.push(Waiting { check, now, reply }),
            Command::Seen { device_id, at } => {
                let last = seen.entry(device_id).or_insert(at);
                *last = (*last).max(at);
            }
            Command::Flush(w) => waiters.push(w),
        };
        take(first, &mut checks);
        while checks.len() < BATCH
            && let Ok(cmd) = rx.try_recv()
        {
            take(cmd, &mut checks);
        }
        if checks.is_empty() && waiters.is_empty() && seen.len() < SEEN_MAX {
            seen_since.get_or_insert_with(tokio::time::Instant::now);
            continue;
        }
        write(&db, config, checks, std::mem::take(&mut seen)).await;
        seen_since = None;
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// One transaction: every check in a savepoint of its own, then the last-seen times; the
/// answers go out after the commit.
async fn write(db: &Db, config: CheckConfig, checks: Vec<Waiting>, seen: HashMap<i64, i64>) {
    if checks.is_empty() && seen.is_empty() {
        return;
    }
    let (work, replies): (Vec<(Box<Check>, i64)>, Vec<_>) =
        checks.into_iter().map(|w| ((w.check, w.now), w.reply)).unzip();
    let count = seen.len();
    let written = db
        .write(move |c| {
            // Every device row of the batch first, then their open records, in one order
            // (`devices::locks`): a presence batch, a claim or a batch of record events on the
            // same rows waits for this one instead of deadlocking with it.
            let dids: Vec<&str> = work.iter().map(|(check, _)| check.did.as_str()).collect();
            let ids: Vec<i64> = seen.keys().copied().collect();
            // In a savepoint: should taking them fail, the batch goes on without (as before).
            let locked = c.transaction(|c| {
                let devices = crate::devices::locks::lock_in_order(c, &dids, &ids, None)?;
                // A batch of last-seen times alone touches no record.
                if dids.is_empty() { Ok(()) } else { crate::devices::locks::lock_upgrades_in_order(c, &[], &devices) }
            });
            if let Err(e) = locked {
                tracing::warn!(error = %e, "the rows of a check batch were not locked in order first");
            }
            let answers: Vec<Result<Answer>> = work
                .iter()
                .map(|(check, now)| {
                    c.transaction(|c| {
                        check_in(c, check, *now, config.rules, config.delivery_timeout_ms, config.download_cap)
                    })
                })
                .collect();
            if let Err(e) = c.transaction(|c| write_seen(c, &seen)) {
                tracing::warn!(error = %e, count, "last-seen times of device checks not written");
            }
            Ok((answers, work))
        })
        .await;
    match written {
        Ok((answers, work)) => {
            // Every answer goes out first; the checks to run again wait for their own writes,
            // not the rest of the batch.
            let mut again = Vec::new();
            for ((reply, answer), (check, now)) in replies.into_iter().zip(answers).zip(work) {
                match answer {
                    Err(e) if transient(&e) => again.push((reply, check, now, e)),
                    answer => {
                        let _ = reply.send(answer);
                    }
                }
            }
            for (reply, check, now, e) in again {
                // Its savepoint was rolled back, so nothing of it was written: run it again on
                // its own. GAgent never asks again after a failed check.
                tracing::info!(error = %e, did = %check.did, "a device check is run again on its own");
                let answer = db
                    .write(move |c| {
                        check_in(c, &check, now, config.rules, config.delivery_timeout_ms, config.download_cap)
                    })
                    .await;
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, checks = replies.len(), "a batch of device checks was not written");
            for reply in replies {
                let _ = reply.send(Err(batch_failed(&e)));
            }
        }
    }
}

/// An error that says nothing about the check itself (a deadlock, a serialization failure, a
/// unique key taken by a concurrent writer): the check is worth one more run. A refusal the
/// check makes (wrong passcode, unknown device) is final.
fn transient(e: &DomainError) -> bool {
    matches!(e, DomainError::Internal(_) | DomainError::UniqueViolation)
}

/// The error each check of a failed batch gets (the batch's own error is logged once).
fn batch_failed(e: &DomainError) -> DomainError {
    match e.code() {
        ErrorCode::DatabaseUnavailable => {
            DomainError::new(ErrorCode::DatabaseUnavailable, "the database is unavailable")
        }
        _ => DomainError::Internal(anyhow::anyhow!("a batch of device checks was not written: {e}")),
    }
}

/// Every device's last-seen time in one statement (never moved back).
fn write_seen(c: &mut DbConn, seen: &HashMap<i64, i64>) -> Result<()> {
    use diesel::RunQueryDsl;
    use std::fmt::Write as _;
    if seen.is_empty() {
        return Ok(());
    }
    // Only integers are put into the text, so it needs no binds (and no escaping).
    let mut values = String::with_capacity(seen.len() * 24);
    for (i, (device_id, at)) in seen.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(values, "{sep}({device_id}, {at})");
    }
    let sql = format!(
        "WITH v(id, at) AS (VALUES {values}) \
         UPDATE devices SET last_seen_at = v.at FROM v \
         WHERE devices.id = v.id AND (devices.last_seen_at IS NULL OR devices.last_seen_at < v.at)"
    );
    diesel::sql_query(sql).execute(c)?;
    Ok(())
}
