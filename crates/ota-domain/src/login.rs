//! Password checks that cannot be turned against the server.
//!
//! Every argon2 hash (about 19 MiB of memory and tens of milliseconds of CPU each) runs
//! through one [`HashGate`]: at most `slots` at once (about the core count), and a request that
//! cannot start within `queue_deadline` is answered `password_checks_busy` (503,
//! `Retry-After`) instead of queueing without bound. Within the gate, each source address has
//! one lane: a source's checks run one after another, so the shared queue holds at most one
//! waiter per source and a flood from some addresses delays a login from another one by at
//! most one hash per flooding address, never by the whole flood.
//!
//! Failed logins are counted **before** hashing, in the database (table `login_failures`), so
//! every API node shares them and a flood is refused without hashing once it is over its
//! count. Two counters:
//! - per (user name, source address): [`PAIR_FREE`] free attempts, then each must wait 1, 2,
//!   4 … s after the previous one, at most [`MAX_LOCK_SECONDS`];
//! - per source address, over all user names: [`SOURCE_FREE`] free, then the same doubling.
//!
//! There is no per-user counter: it would let anyone lock an account (the admin's) from
//! anywhere. A counter starts again after [`FORGET_AFTER_MS`] without failures. A successful
//! login clears its (user, source) counter and takes its own attempt back from the source's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use ota_wire::ErrorCode;
use tokio::sync::Semaphore;

use crate::Domain;
use crate::auth::UserRecord;
use crate::db::DbConn;
use crate::error::{DomainError, Result};
use crate::schema::login_failures;

/// Free failed attempts per (user name, source address).
pub const PAIR_FREE: i64 = 5;
/// Free failed attempts per source address, over all user names.
pub const SOURCE_FREE: i64 = 10;
/// The longest wait the doubling reaches.
pub const MAX_LOCK_SECONDS: i64 = 15 * 60;
/// A counter without failures for this long starts again from zero.
pub const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

/// How long the key must still wait after `failures` failures, the last at `last_ms` (pure).
pub fn wait_ms(failures: i64, free: i64, last_ms: i64, now_ms: i64) -> Option<i64> {
    if failures < free || now_ms - last_ms >= FORGET_AFTER_MS {
        return None;
    }
    let exponent = (failures - free).min(10);
    let lock_ms = (1_i64 << exponent).min(MAX_LOCK_SECONDS) * 1000;
    let until = last_ms + lock_ms;
    (now_ms < until).then_some(until - now_ms)
}

/// The source address as the counters and the gate key it.
fn source_key(source: &str) -> String {
    format!("s:{source}")
}

fn pair_key(username: &str, source: &str) -> String {
    format!("u:{}@{source}", username.to_lowercase())
}

/// Counts an attempt for both keys unless one of them must still wait (then nothing is
/// counted and the wait in whole seconds is returned). Exact under concurrency: both rows are
/// locked (in key order) for the transaction, so of many attempts at once only the free ones
/// pass; SQLite's writers take turns anyway.
fn admit(c: &mut DbConn, username: &str, source: &str, now: i64) -> Result<std::result::Result<(), i64>> {
    let mut keys = [(pair_key(username, source), PAIR_FREE), (source_key(source), SOURCE_FREE)];
    keys.sort();
    let mut rows = Vec::with_capacity(keys.len());
    for (key, free) in &keys {
        let ensure = diesel::insert_into(login_failures::table)
            .values((
                login_failures::key.eq(key),
                login_failures::failures.eq(0_i64),
                login_failures::last_failure_at.eq(0_i64),
            ))
            .on_conflict_do_nothing();
        crate::on_backend!(c, ensure)?;
        let row = login_failures::table.find(key).select((login_failures::failures, login_failures::last_failure_at));
        // The one backend-specific query: PostgreSQL locks the row until commit.
        let (failures, last): (i64, i64) = match c {
            DbConn::Pg(pg) => row.for_update().first(pg)?,
            DbConn::Sqlite(lite) => row.first(lite)?,
        };
        rows.push((key.clone(), *free, failures, last));
    }
    let wait = rows.iter().filter_map(|(_, free, failures, last)| wait_ms(*failures, *free, *last, now)).max();
    if let Some(ms) = wait {
        return Ok(Err((ms + 999) / 1000));
    }
    for (key, _, failures, last) in rows {
        let counted = if now - last >= FORGET_AFTER_MS { 1 } else { failures + 1 };
        diesel::update(login_failures::table.find(key))
            .set((login_failures::failures.eq(counted), login_failures::last_failure_at.eq(now)))
            .execute(c)?;
    }
    Ok(Ok(()))
}

/// A login succeeded: its (user, source) counter is cleared and its attempt is taken back
/// from the source's.
fn succeeded(c: &mut DbConn, username: &str, source: &str) -> Result<()> {
    diesel::delete(login_failures::table.find(pair_key(username, source))).execute(c)?;
    diesel::update(login_failures::table.find(source_key(source)).filter(login_failures::failures.gt(0)))
        .set(login_failures::failures.eq(login_failures::failures - 1))
        .execute(c)?;
    Ok(())
}

/// One argon2 working memory (19 MiB for the default parameters).
pub type HashMemory = Vec<argon2::Block>;

/// Bounds argon2 work: `slots` at once, one lane per source, a deadline for the queue, the
/// quietest lane first, and `slots` working memories reused for every hash.
///
/// Why not just `spawn_blocking`: each hash would allocate its 19 MiB afresh on whichever
/// blocking thread runs it, and the allocator keeps those blocks in per-thread arenas, so a
/// flood leaves the process at hundreds of MiB for good. Reusing one block per slot keeps the
/// hashing memory at `slots × 19 MiB`. Why not a FIFO queue: a flood from fifty addresses
/// would put fifty lane heads before a login from a fifty-first; waiting lanes are served
/// quietest first (fewest checks entered since the lane opened), so a fresh address waits for
/// the hashes already running and nothing else.
#[derive(Debug)]
pub struct HashGate {
    slot_count: usize,
    deadline: Duration,
    state: Mutex<GateState>,
    lanes: Mutex<HashMap<String, Lane>>,
    memories: Mutex<Vec<HashMemory>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    busy: AtomicU64,
}

#[derive(Debug)]
struct GateState {
    free: usize,
    next_id: u64,
    waiting: Vec<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Checks that entered this waiter's lane while it was open: its priority (lower first).
    load: Arc<AtomicU64>,
    grant: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug, Clone)]
struct Lane {
    turn: Arc<Semaphore>,
    load: Arc<AtomicU64>,
}

/// What the gate has seen, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashGateStats {
    pub slots: usize,
    /// Most hashes that ever ran at once.
    pub peak_running: usize,
    /// Requests answered `password_checks_busy`.
    pub busy_refusals: u64,
}

/// A slot held by one hash; dropping it hands the slot to the quietest waiting lane.
struct Slot<'a> {
    gate: &'a HashGate,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl HashGate {
    /// `slots` = 0 means one per core.
    pub fn new(slots: usize, deadline: Duration) -> HashGate {
        let slots = if slots == 0 { std::thread::available_parallelism().map_or(2, |n| n.get()) } else { slots };
        HashGate {
            slot_count: slots,
            deadline,
            state: Mutex::new(GateState { free: slots, next_id: 0, waiting: Vec::new() }),
            lanes: Mutex::new(HashMap::new()),
            memories: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            busy: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> HashGateStats {
        HashGateStats {
            slots: self.slot_count,
            peak_running: self.peak.load(Ordering::Relaxed),
            busy_refusals: self.busy.load(Ordering::Relaxed),
        }
    }

    fn lane(&self, source: &str) -> Lane {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes
            .entry(source.to_owned())
            .or_insert_with(|| Lane { turn: Arc::new(Semaphore::new(1)), load: Arc::new(AtomicU64::new(0)) })
            .clone();
        lane.load.fetch_add(1, Ordering::Relaxed);
        lane
    }

    fn release_lane(&self, source: &str, lane: Lane) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        drop(lane);
        // Only the map holds it: nobody runs or waits in this lane any more.
        if lanes.get(source).is_some_and(|l| Arc::strong_count(&l.turn) == 1) {
            lanes.remove(source);
        }
    }

    fn busy(&self) -> DomainError {
        self.busy.fetch_add(1, Ordering::Relaxed);
        let seconds = self.deadline.as_secs().max(1);
        DomainError::with_details(
            ErrorCode::PasswordChecksBusy,
            format!("too many password checks are running; try again in {seconds} s"),
            serde_json::json!({ "retry_after_seconds": seconds }),
        )
    }

    /// A free slot at once, or a turn when one is released, quietest lane first.
    async fn slot(&self, load: &Arc<AtomicU64>, deadline: tokio::time::Instant) -> Result<Slot<'_>> {
        let (id, mut granted) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.free > 0 {
                state.free -= 1;
                return Ok(Slot { gate: self });
            }
            let (grant, granted) = tokio::sync::oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push(Waiter { id, load: load.clone(), grant });
            (id, granted)
        };
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, &mut granted).await {
            return Ok(Slot { gate: self });
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = state.waiting.iter().position(|w| w.id == id) {
            state.waiting.swap_remove(i);
            return Err(self.busy());
        }
        drop(state);
        // Granted just as the deadline passed: the slot is ours.
        match granted.try_recv() {
            Ok(()) => Ok(Slot { gate: self }),
            Err(_) => Err(self.busy()),
        }
    }

    fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| (w.load.load(Ordering::Relaxed), w.id))
                .map(|(i, _)| i);
            let Some(i) = next else {
                state.free += 1;
                return;
            };
            let waiter = state.waiting.swap_remove(i);
            // A waiter whose request went away has dropped its receiver: try the next one.
            if waiter.grant.send(()).is_ok() {
                return;
            }
        }
    }

    /// Runs `work` (argon2, given a reusable working memory) on the blocking pool once this
    /// source's lane and a slot are free, or fails with `password_checks_busy` when the
    /// deadline passes first.
    pub async fn run<T, F>(&self, source: &str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut HashMemory) -> T + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let lane = self.lane(source);
        let result = async {
            let _turn = match tokio::time::timeout_at(deadline, lane.turn.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(self.busy()),
            };
            let _slot = self.slot(&lane.load, deadline).await?;
            let now_running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now_running, Ordering::SeqCst);
            let mut memory = self.memories.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
            let out = tokio::task::spawn_blocking(move || {
                let out = work(&mut memory);
                (out, memory)
            })
            .await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            let (out, memory) = out.map_err(|e| DomainError::Internal(anyhow::anyhow!("password hash task: {e}")))?;
            self.memories.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            Ok(out)
        }
        .await;
        self.release_lane(source, lane);
        result
    }
}

impl Domain {
    /// A login: the throttle first (counted before hashing), then the password check through
    /// the hash gate. `source` is the client address the API saw (or a trusted proxy reported).
    pub async fn login(&self, username: &str, password: &str, source: &str) -> Result<UserRecord> {
        let now = self.clock.now_ms();
        let (user, src) = (username.to_owned(), source.to_owned());
        let admitted = self.db.write(move |c| admit(c, &user, &src, now)).await?;
        if let Err(seconds) = admitted {
            return Err(DomainError::with_details(
                ErrorCode::TooManyLoginAttempts,
                format!("too many failed logins; try again in {seconds} s"),
                serde_json::json!({ "retry_after_seconds": seconds }),
            ));
        }
        let checked = self.check_password(username, password, source).await;
        let correct = match &checked {
            Ok(_) => true,
            Err(e) => e.code() == ErrorCode::UserDisabled,
        };
        if correct {
            let (user, src) = (username.to_owned(), source.to_owned());
            self.db.write(move |c| succeeded(c, &user, &src)).await?;
        }
        checked
    }

    /// Forgets counters without a failure for [`FORGET_AFTER_MS`] (the API's maintenance task).
    pub async fn forget_login_failures(&self) -> Result<usize> {
        let cutoff = self.clock.now_ms() - FORGET_AFTER_MS;
        self.db
            .write(move |c| {
                Ok(diesel::delete(login_failures::table.filter(login_failures::last_failure_at.le(cutoff)))
                    .execute(c)?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_attempts_then_a_doubling_wait_that_is_forgotten() {
        let last = 1_000_000;
        assert_eq!(wait_ms(PAIR_FREE - 1, PAIR_FREE, last, last), None);
        assert_eq!(wait_ms(PAIR_FREE, PAIR_FREE, last, last), Some(1000));
        assert_eq!(wait_ms(PAIR_FREE + 1, PAIR_FREE, last, last), Some(2000));
        assert_eq!(wait_ms(PAIR_FREE + 1, PAIR_FREE, last, last + 2000), None);
        assert_eq!(wait_ms(PAIR_FREE + 40, PAIR_FREE, last, last), Some(MAX_LOCK_SECONDS * 1000));
        assert_eq!(wait_ms(PAIR_FREE + 40, PAIR_FREE, last, last + FORGET_AFTER_MS), None);
    }

    #[test]
    fn keys_separate_users_and_sources() {
        assert_eq!(pair_key("Admin", "10.0.0.1"), pair_key("admin", "10.0.0.1"));
        assert_ne!(pair_key("admin", "10.0.0.1"), pair_key("admin", "10.0.0.2"));
        assert_ne!(pair_key("admin", "10.0.0.1"), source_key("10.0.0.1"));
    }

    #[tokio::test]
    async fn the_gate_bounds_concurrency_and_refuses_past_its_deadline() {
        let gate = Arc::new(HashGate::new(2, Duration::from_millis(300)));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        // Six sources whose work blocks until released: two run, four queue past the deadline.
        for i in 0..6 {
            let (gate, rx, done) = (gate.clone(), release_rx.clone(), done_tx.clone());
            tokio::spawn(async move {
                let result = gate
                    .run(&format!("10.0.0.{i}"), move |_| {
                        let _ = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    })
                    .await;
                let _ = done.send(result.map_err(|e| e.code()));
            });
        }
        for _ in 0..4 {
            assert_eq!(done_rx.recv().await.unwrap(), Err(ErrorCode::PasswordChecksBusy));
        }
        for _ in 0..2 {
            release_tx.send(()).unwrap();
        }
        for _ in 0..2 {
            assert_eq!(done_rx.recv().await.unwrap(), Ok(()));
        }
        let stats = gate.stats();
        assert_eq!((stats.peak_running, stats.busy_refusals), (2, 4));
        assert!(gate.lanes.lock().unwrap().is_empty(), "lanes are dropped when idle");
    }

    #[tokio::test]
    async fn the_quietest_lane_is_served_first() {
        let gate = Arc::new(HashGate::new(1, Duration::from_secs(30)));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let order = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let spawn = |source: &'static str| {
            let (gate, rx, order, started) = (gate.clone(), release_rx.clone(), order.clone(), started_tx.clone());
            tokio::spawn(async move {
                gate.run(source, move |_| {
                    let _ = started.send(source);
                    let _ = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    order.lock().unwrap_or_else(|e| e.into_inner()).push(source);
                })
                .await
            })
        };
        // One check runs; two busy addresses queue several each; then a fresh one arrives.
        let mut tasks = vec![spawn("running")];
        assert_eq!(started_rx.recv().await, Some("running"));
        for _ in 0..3 {
            tasks.push(spawn("flood"));
        }
        for _ in 0..2 {
            tasks.push(spawn("other flood"));
        }
        // Both lane heads wait for the slot before the fresh address comes.
        while gate.state.lock().unwrap().waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        tasks.push(spawn("fresh"));
        while gate.state.lock().unwrap().waiting.len() < 3 {
            tokio::task::yield_now().await;
        }
        for _ in 0..tasks.len() {
            release_tx.send(()).unwrap();
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order[0], "running");
        assert_eq!(order[1], "fresh", "then the quietest lane, ahead of both floods: {order:?}");
    }

    #[tokio::test]
    async fn one_source_runs_one_check_at_a_time() {
        let gate = Arc::new(HashGate::new(4, Duration::from_secs(30)));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                gate.run("10.0.0.1", move |_| {
                    let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    // Some work that would overlap if the lane let two in.
                    let _ = (0..200_000u64).fold(0u64, |a, b| a.wrapping_add(b * b));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
    }
}
