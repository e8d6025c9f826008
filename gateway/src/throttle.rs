//! Slows down passcode guessing on the device side (MQTT CONNECT, `update_and_check`,
//! `DELETE /dev/devices`) without ever refusing a correct passcode from a device's own address.
//!
//! - A passcode is checked first (cheap: one indexed read), and a correct one is answered at
//!   once: throttling never delays or refuses it.
//! - A wrong one is answered exactly as before (CONNACK 4, the check's 403), but only at its
//!   *answer time*: after [`ThrottleSettings::free_failures`] wrong passcodes for a did or from
//!   an address, each further wrong answer for that did or address waits twice as long as the
//!   previous one (from `first_delay` up to `max_delay`), and wrong answers of one did (or one
//!   address) go out one after another, so firing many guesses at once does not make their
//!   answers come sooner. Counters forget after `forget_after` without a failure.
//! - An address that gave a wrong passcode lately may have at most `max_in_flight_per_source`
//!   attempts in flight (being checked or waiting for their answer), any other address
//!   `max_in_flight_per_clean_source` (many devices behind one NAT reconnect at once). Past
//!   that, an attempt is answered as a wrong one at once, **without checking it**: the guesser
//!   learns nothing, and a flood cannot hold every connection slot. A device behind the same
//!   address as a guesser may be refused then (and retries); a device at another address never
//!   is.
//!
//! The counters live in this gateway's memory: each gateway slows its own connections (several
//! gateways multiply a guesser's rate by their number, never a device's delay). Wrong passcodes
//! are also counted per product in the database (`conflict` events, see
//! `ota_domain::security`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How wrong passcodes are slowed down.
#[derive(Debug, Clone)]
pub struct ThrottleSettings {
    /// Wrong passcodes per did or address answered without a delay.
    pub free_failures: u32,
    /// The first delay; each further wrong passcode doubles it.
    pub first_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// A did or address without a wrong passcode for this long starts again.
    pub forget_after: Duration,
    /// Attempts an address with a wrong passcode in the last `forget_after` may have in flight.
    pub max_in_flight_per_source: usize,
    /// Attempts any other address may have in flight.
    pub max_in_flight_per_clean_source: usize,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            free_failures: 3,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            max_in_flight_per_source: 16,
            max_in_flight_per_clean_source: 1024,
        }
    }
}

/// One did's or address's wrong passcodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    pub failures: u32,
    pub last_ms: u64,
    /// When the latest wrong answer goes out; the next one waits for it.
    pub next_ms: u64,
}

fn delay_ms(failures: u32, s: &ThrottleSettings) -> u64 {
    if failures <= s.free_failures {
        return 0;
    }
    let doublings = (failures - s.free_failures - 1).min(30);
    let first = u64::try_from(s.first_delay.as_millis()).unwrap_or(u64::MAX);
    let max = u64::try_from(s.max_delay.as_millis()).unwrap_or(u64::MAX);
    first.saturating_mul(1u64 << doublings).min(max)
}

/// A wrong passcode for `did` from `source` at `now_ms`: updates both entries and returns when
/// its answer may go out (pure; table-tested).
pub fn wrong_answer_at(did: &mut Entry, source: &mut Entry, now_ms: u64, s: &ThrottleSettings) -> u64 {
    let forget = u64::try_from(s.forget_after.as_millis()).unwrap_or(u64::MAX);
    for e in [&mut *did, &mut *source] {
        if e.failures > 0 && now_ms.saturating_sub(e.last_ms) >= forget && e.next_ms <= now_ms {
            *e = Entry::default();
        }
        e.failures += 1;
        e.last_ms = now_ms;
    }
    let delay = delay_ms(did.failures, s).max(delay_ms(source.failures, s));
    let at = now_ms.max(did.next_ms).max(source.next_ms) + delay;
    did.next_ms = at;
    source.next_ms = at;
    at
}

#[derive(Debug, Default)]
struct State {
    dids: HashMap<String, Entry>,
    sources: HashMap<IpAddr, Entry>,
    in_flight: HashMap<IpAddr, usize>,
}

/// Counters, for tests and logs.
#[derive(Debug, Default)]
pub struct ThrottleStats {
    /// Wrong passcodes answered (after their delay).
    pub wrong: AtomicU64,
    /// Wrong passcodes whose answer was delayed.
    pub delayed: AtomicU64,
    /// Attempts answered as wrong without a check (address over its in-flight limit).
    pub unchecked: AtomicU64,
}

/// The throttle of one gateway, shared by the MQTT edge and device HTTP.
#[derive(Debug)]
pub struct AuthThrottle {
    settings: ThrottleSettings,
    epoch: tokio::time::Instant,
    state: Mutex<State>,
    pub stats: ThrottleStats,
}

/// An attempt in flight from one address; dropping it ends the attempt.
#[derive(Debug)]
pub struct Attempt {
    throttle: Arc<AuthThrottle>,
    source: IpAddr,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut state = self.throttle.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = state.in_flight.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.in_flight.remove(&self.source);
            }
        }
    }
}

impl AuthThrottle {
    pub fn new(settings: ThrottleSettings) -> Arc<AuthThrottle> {
        Arc::new(AuthThrottle {
            settings,
            epoch: tokio::time::Instant::now(),
            state: Mutex::new(State::default()),
            stats: ThrottleStats::default(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts an attempt from `source`; `None` when the address has too many in flight (the
    /// caller answers as for a wrong passcode, without checking).
    pub fn begin(self: &Arc<Self>, source: IpAddr) -> Option<Attempt> {
        let now = self.now_ms();
        let forget = u64::try_from(self.settings.forget_after.as_millis()).unwrap_or(u64::MAX);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let suspect =
            state.sources.get(&source).is_some_and(|e| e.failures > 0 && now.saturating_sub(e.last_ms) < forget);
        let limit =
            if suspect { self.settings.max_in_flight_per_source } else { self.settings.max_in_flight_per_clean_source };
        let n = state.in_flight.entry(source).or_insert(0);
        if *n >= limit {
            self.stats.unchecked.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Attempt { throttle: self.clone(), source })
    }

    /// The attempt's passcode was wrong: how long to wait before answering.
    pub fn wrong(&self, attempt: &Attempt, did: &str) -> Duration {
        let now = self.now_ms();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let forget = u64::try_from(self.settings.forget_after.as_millis()).unwrap_or(u64::MAX);
        if state.dids.len() > 100_000 {
            state.dids.retain(|_, e| now.saturating_sub(e.last_ms) < forget || e.next_ms > now);
        }
        if state.sources.len() > 100_000 {
            state.sources.retain(|_, e| now.saturating_sub(e.last_ms) < forget || e.next_ms > now);
        }
        let mut did_entry = state.dids.get(did).copied().unwrap_or_default();
        let mut source_entry = state.sources.get(&attempt.source).copied().unwrap_or_default();
        let at = wrong_answer_at(&mut did_entry, &mut source_entry, now, &self.settings);
        state.dids.insert(did.to_owned(), did_entry);
        state.sources.insert(attempt.source, source_entry);
        self.stats.wrong.fetch_add(1, Ordering::Relaxed);
        let wait = Duration::from_millis(at.saturating_sub(now));
        if !wait.is_zero() {
            self.stats.delayed.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_up_to_the_cap() {
        let s = ThrottleSettings::default();
        let delays: Vec<u64> = (1..=12).map(|f| delay_ms(f, &s)).collect();
        assert_eq!(delays, vec![0, 0, 0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    }

    #[test]
    fn three_hundred_wrong_passcodes_for_one_did_take_hours_not_a_second() {
        let s = ThrottleSettings::default();
        let (mut did, mut source) = (Entry::default(), Entry::default());
        // All sent at once (t = 0): answers still go out one after another.
        let last = (0..300).map(|_| wrong_answer_at(&mut did, &mut source, 0, &s)).last().unwrap_or(0);
        assert!(last > 3 * 3600 * 1000, "the 300th answer goes out after {last} ms");
        // From 300 different addresses: the did's own schedule is the same.
        let mut did = Entry::default();
        let last = (0..300).map(|_| wrong_answer_at(&mut did, &mut Entry::default(), 0, &s)).last().unwrap_or(0);
        assert!(last > 3 * 3600 * 1000, "{last}");
    }

    #[test]
    fn one_address_guessing_many_dids_is_slowed_by_its_own_count() {
        let s = ThrottleSettings::default();
        let mut source = Entry::default();
        let answers: Vec<u64> = (0..6).map(|_| wrong_answer_at(&mut Entry::default(), &mut source, 0, &s)).collect();
        assert_eq!(answers, vec![0, 0, 0, 500, 1500, 3500]);
    }

    #[test]
    fn counters_forget_after_a_quiet_period() {
        let s = ThrottleSettings::default();
        let (mut did, mut source) = (Entry::default(), Entry::default());
        for _ in 0..5 {
            wrong_answer_at(&mut did, &mut source, 0, &s);
        }
        let later = 1500 + 15 * 60 * 1000;
        assert_eq!(wrong_answer_at(&mut did, &mut source, later, &s), later, "a fresh start answers at once");
        assert_eq!(did.failures, 1);
    }

    #[tokio::test]
    async fn an_address_over_its_in_flight_limit_is_not_checked() {
        let t = AuthThrottle::new(ThrottleSettings {
            max_in_flight_per_source: 2,
            max_in_flight_per_clean_source: 3,
            ..ThrottleSettings::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // A clean address (a NAT of devices reconnecting) has the larger limit.
        let held: Vec<Attempt> = (0..3).map(|_| t.begin(ip).unwrap()).collect();
        assert!(t.begin(ip).is_none());
        drop(held);
        // Once it gave a wrong passcode, the smaller one.
        let a = t.begin(ip).unwrap();
        t.wrong(&a, "AbCdEfGhIjKlMnOpQrStUv");
        let b = t.begin(ip).unwrap();
        assert!(t.begin(ip).is_none());
        assert!(t.begin("10.0.0.2".parse().unwrap()).is_some(), "another address is not affected");
        drop(a);
        assert!(t.begin(ip).is_some());
        drop(b);
        assert_eq!(t.stats.unchecked.load(Ordering::Relaxed), 2);
    }
}
