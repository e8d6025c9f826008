//! How the domain reaches a device: through whatever gateway holds its session.
//!
//! The domain decides *that* a device is pushed (verification now, push rules later); the
//! gateway knows *how* (the frame per push method, the download URL, the broker that reaches
//! the gateway the device is connected to). The gateway attaches itself with
//! [`Domain::attach_notifier`]; a process without a gateway answers `gateway_unavailable`.

use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use ota_wire::dto::{FirmwareType, PushMethod};

/// One push to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNotice {
    pub did: String,
    pub product_key: String,
    pub method: PushMethod,
    pub fw_type: FirmwareType,
    /// The upgrade record the push belongs to (V4 download URLs carry it).
    pub upgrade_id: i64,
    pub firmware_id: i64,
    /// V4: the fid to announce; V1V3: the firmware id for 0x0206.
    pub fid: Option<i64>,
    pub hard_version: Option<String>,
    pub soft_version: Option<String>,
    pub file_name: String,
    /// The rule's window opening (its start, Unix ms) the push belongs to; the edge that
    /// delivers it reports it back with the delivery.
    pub opening: Option<i64>,
}

pub trait DeviceNotifier: Send + Sync + 'static {
    /// Hands the push to the broker; an error means it certainly did not go out. Whether a
    /// device got it is reported separately, by the edge that delivers it.
    fn notify(&self, notice: PushNotice) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// The slot a gateway fills; shared by every clone of the domain.
#[derive(Default, Clone)]
pub struct NotifierSlot(Arc<RwLock<Option<Arc<dyn DeviceNotifier>>>>);

impl NotifierSlot {
    pub fn set(&self, notifier: Arc<dyn DeviceNotifier>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(notifier);
    }

    /// Lets go of the notifier: a notifier that acknowledges through its own domain holds
    /// that domain, and the pair is freed only once one lets go of the other.
    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn get(&self) -> Option<Arc<dyn DeviceNotifier>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
