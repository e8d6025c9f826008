//! The OTA server's domain: the only crate that knows SQL.
//!
//! One service layer ([`Domain`]) serves both front ends (the management API and the device
//! gateway), so every rule is enforced once, whichever door a request came in by. It knows no
//! HTTP: callers pass an [`access::Authorized`] capability (built from a [`auth::Principal`])
//! and get wire DTOs or a [`DomainError`] back.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod access;
pub mod adoption;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod db;
pub mod devices;
pub mod error;
pub mod firmware;
pub mod geoip;
pub mod idempotency;
pub mod lifecycle;
pub mod liveness;
pub mod login;
pub mod metrics;
pub mod notify;
pub mod paging;
pub mod products;
pub mod rules;
pub mod schema;
pub mod security;
pub mod store;
pub mod stored;
pub mod upgrade;
pub mod upgrades;
pub mod validate;
pub mod verification;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

pub use access::Authorized;
pub use auth::Principal;
pub use clock::{Clock, FakeClock, SystemClock};
pub use db::{Backend, Db, DbSetupError};
pub use error::{DomainError, Result};
pub use paging::PageRequest;
pub use upgrade::SeriesRules;

use store::BlobStore;

/// Limits the domain enforces, from configuration.
#[derive(Debug, Clone)]
pub struct DomainSettings {
    /// Largest firmware file accepted, in bytes.
    pub max_firmware_bytes: u64,
    /// Where uploads are staged before they are stored (same file system as the store is best).
    pub staging_dir: PathBuf,
    /// How long a verification waits for the device to report the new version.
    pub verification_timeout_ms: i64,
    /// Series matching, including the 0400/0401 → 0402 Wi-Fi exception.
    pub series_rules: SeriesRules,
    /// How long a push may wait for the edge holding the device's session to deliver it;
    /// after that it counts as not sent and is tried again (see `lifecycle`).
    pub delivery_timeout_ms: i64,
    /// Concurrent downloads a gateway node serves to rule targets at most (`None`: no cap);
    /// devices over it are answered "no update" and pushed again when a slot frees.
    pub download_cap: Option<u32>,
    /// Password hashes at once (0: one per core); see [`login::HashGate`].
    pub password_hash_slots: usize,
    /// How long a password check may wait for a hash slot before `password_checks_busy`.
    pub password_queue_deadline_ms: u64,
}

impl DomainSettings {
    /// The defaults for everything but the two limits callers always choose.
    pub fn new(max_firmware_bytes: u64, staging_dir: PathBuf) -> DomainSettings {
        DomainSettings {
            max_firmware_bytes,
            staging_dir,
            verification_timeout_ms: DEFAULT_VERIFICATION_TIMEOUT_MS,
            series_rules: SeriesRules::default(),
            delivery_timeout_ms: DEFAULT_DELIVERY_TIMEOUT_MS,
            download_cap: None,
            password_hash_slots: 0,
            password_queue_deadline_ms: DEFAULT_PASSWORD_QUEUE_DEADLINE_MS,
        }
    }
}

/// Ten seconds: an edge writes a push within milliseconds of the broker handing it over.
pub const DEFAULT_DELIVERY_TIMEOUT_MS: i64 = 10_000;

/// How long a login may wait for a password hash slot.
pub const DEFAULT_PASSWORD_QUEUE_DEADLINE_MS: u64 = 2000;

/// Ten minutes, the hosted console's countdown.
pub const DEFAULT_VERIFICATION_TIMEOUT_MS: i64 = 10 * 60 * 1000;

/// The service layer. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Domain {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn BlobStore>,
    pub settings: Arc<DomainSettings>,
    /// Bounds argon2 work (see [`login`]).
    pub hash_gate: Arc<login::HashGate>,
    /// The gateway that pushes to devices, once one is attached.
    pub notifier: notify::NotifierSlot,
    /// Fills the region of devices that register without one, when a GeoIP database is
    /// configured (see [`geoip`]).
    pub geoip: Option<Arc<dyn geoip::RegionLookup>>,
    /// Serialises "store a file + insert its row" against "delete a row + collect its file",
    /// so a file is never collected between an upload's store and its insert.
    blob_lock: Arc<tokio::sync::Mutex<()>>,
    /// Rate limit of refusal and conflict event writes (see [`adoption`]).
    adoption_throttle: Arc<adoption::EventThrottle>,
    /// The batched writer of device checks, started by the first check that needs it
    /// (see [`upgrades::check_writer`]).
    checks: Arc<std::sync::OnceLock<upgrades::CheckWriter>>,
}

impl Domain {
    pub fn new(db: Db, clock: Arc<dyn Clock>, store: Arc<dyn BlobStore>, settings: DomainSettings) -> Domain {
        let hash_gate = login::HashGate::new(
            settings.password_hash_slots,
            std::time::Duration::from_millis(settings.password_queue_deadline_ms),
        );
        Domain {
            db,
            clock,
            store,
            settings: Arc::new(settings),
            hash_gate: Arc::new(hash_gate),
            notifier: notify::NotifierSlot::default(),
            geoip: None,
            blob_lock: Arc::new(tokio::sync::Mutex::new(())),
            adoption_throttle: Arc::new(adoption::EventThrottle::default()),
            checks: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Lets a gateway take the pushes this domain decides.
    pub fn attach_notifier(&self, notifier: Arc<dyn notify::DeviceNotifier>) {
        self.notifier.set(notifier);
    }

    /// Guesses the region of devices that have none from their IP address.
    pub fn with_geoip(mut self, lookup: Arc<dyn geoip::RegionLookup>) -> Domain {
        self.geoip = Some(lookup);
        self
    }
}
