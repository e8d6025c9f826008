//! Admission control for power-on storms: how many device registrations and provisions, and
//! how many MQTT logins, a gateway works on at once.
//!
//! After a power cut a whole fleet boots in the same minute. Unbounded, every call takes a
//! database connection slot in turn, the queue grows past the HTTP handler timeout, the
//! devices time out and send everything again, and the fleet never comes online (seen on
//! PostgreSQL: 10,000 devices at 200/s stalled at a third online). Bounded, a call that finds
//! no slot within `admission_wait_ms` is refused at once, cheaply, and only where the firmware
//! tries again (`device-protocol.md#what-the-firmware-retries`):
//!
//! - registration and provision answer 503 `device_calls_busy`: GAgent repeats both after any
//!   status but 201 / 200;
//! - an MQTT login answers CONNACK 3 (server unavailable): the device logs in again a few
//!   seconds later (GK registers again first, which meets the first bound).
//!
//! Checks (`update_and_check`, `target_fid`) and downloads are never refused here: GAgent takes
//! a failed check as "no update" and does not ask again until the next boot or push
//! (`device-protocol.md#what-the-firmware-never-retries`). They wait in the batched check
//! writer instead, well inside the device's 5 s timeout.
//!
//! The bound is a `tokio` semaphore per kind of call: a slot is held for the call's database
//! work and given back when the reply is built.
//!
//! The defaults (16 and 16) are sized to the connection pool (10): a call admitted beyond what
//! the pool can serve only waits for a connection, and that wait is unfair and shared with the
//! checks. With 64 and 64, half of the 20,000-device storm runs had checks wait past the 30 s
//! handler timeout behind admitted registrations; with 16 and 16, none did (README, "Power-on
//! storm").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// The bounds of one gateway (configuration: `device_calls_in_flight`,
/// `mqtt_logins_in_flight`, `admission_wait_ms`).
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Registrations and provisions worked on at once.
    pub device_calls_in_flight: usize,
    /// MQTT logins (their passcode check) worked on at once.
    pub mqtt_logins_in_flight: usize,
    /// How long a call waits for a slot before it is refused.
    pub wait: Duration,
}

/// The defaults, also `ota up`'s configuration defaults (see the module doc for why 16).
pub const DEFAULT_DEVICE_CALLS_IN_FLIGHT: usize = 16;
pub const DEFAULT_MQTT_LOGINS_IN_FLIGHT: usize = 16;
pub const DEFAULT_ADMISSION_WAIT_MS: u64 = 1000;

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            device_calls_in_flight: DEFAULT_DEVICE_CALLS_IN_FLIGHT,
            mqtt_logins_in_flight: DEFAULT_MQTT_LOGINS_IN_FLIGHT,
            wait: Duration::from_millis(DEFAULT_ADMISSION_WAIT_MS),
        }
    }
}

/// One bounded kind of call.
pub struct Gate {
    slots: Semaphore,
    wait: Duration,
    /// The metric label of this kind of call.
    call: &'static str,
    refused: AtomicU64,
}

impl Gate {
    fn new(call: &'static str, in_flight: usize, wait: Duration) -> Gate {
        Gate { slots: Semaphore::new(in_flight.max(1)), wait, call, refused: AtomicU64::new(0) }
    }

    /// A slot, waited for at most the configured time; `None` (counted) when none came free.
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        let slot = match self.slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => tokio::time::timeout(self.wait, self.slots.acquire()).await.ok().and_then(Result::ok),
        };
        if slot.is_none() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(ota_domain::metrics::DEVICE_ADMISSION_REFUSALS, "call" => self.call).increment(1);
        }
        slot
    }

    /// Calls refused since the gateway started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The gates of one gateway, shared by its device HTTP and its MQTT edge.
pub struct Admission {
    /// Registrations and provisions.
    pub device_calls: Gate,
    /// MQTT logins.
    pub logins: Gate,
}

impl Admission {
    pub fn new(settings: &AdmissionSettings) -> Admission {
        Admission {
            device_calls: Gate::new("device_call", settings.device_calls_in_flight, settings.wait),
            logins: Gate::new("mqtt_login", settings.mqtt_logins_in_flight, settings.wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_gate_refuses_after_its_wait_and_counts_it() {
        let gate = Gate::new("test", 2, Duration::from_millis(20));
        let a = gate.enter().await.expect("a free slot");
        let _b = gate.enter().await.expect("a free slot");
        let started = tokio::time::Instant::now();
        assert!(gate.enter().await.is_none(), "both slots are held");
        assert!(started.elapsed() >= Duration::from_millis(20), "the refusal waited for a slot first");
        assert_eq!(gate.refused(), 1);
        drop(a);
        assert!(gate.enter().await.is_some(), "a slot given back is taken again");
        assert_eq!(gate.refused(), 1);
    }

    #[tokio::test]
    async fn a_waiting_call_takes_the_slot_given_back_within_its_wait() {
        let gate = std::sync::Arc::new(Gate::new("test", 1, Duration::from_secs(5)));
        let held = gate.enter().await.expect("a free slot");
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.enter().await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(held);
        assert!(waiter.await.unwrap(), "the waiting call got the slot");
        assert_eq!(gate.refused(), 0);
    }

    #[test]
    fn a_zero_bound_still_lets_one_call_in() {
        let gate = Gate::new("test", 0, Duration::ZERO);
        assert!(gate.slots.try_acquire().is_ok());
    }
}
