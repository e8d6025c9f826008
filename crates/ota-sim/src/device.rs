//! One simulated device: the firmware's behaviour over real sockets, as one tokio task.
//!
//! The task is single-threaded like GA's main loop, which is what makes it faithful: while the
//! device does HTTP (a check, a download, an MCU transfer) nobody reads the MQTT socket, no ping
//! goes out, and packets the gateway sends meanwhile pile up in the socket buffer, where the next
//! single read finds them together and loses all but the first
//! (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`,
//! `device-protocol.md#observed-pacing`).
//!
//! Boot order (`device-protocol.md#boot-sequence`, `device-protocol.md#v41-boot-sequence`) with the
//! observation (`device-protocol.md#observed-mqtt-waiting-for-the-boot-ota-chain`) that on boot
//! **MQTT login waits until the whole OTA chain has finished**: register (no did) → provision →
//! V4.1 `update_and_check` type 1 then type 2 (MCU only) / V4 `target_fid` type 1 then 2 → DELETE
//! of an old did → MQTT login and the three subscriptions → V1V3 asks 0x0205. A successful Wi-Fi
//! download or an MCU restart (0x29) "reboots": the MQTT connection is dropped and the boot runs
//! again with the new versions, which is how the cloud learns of the upgrade
//! (`device-protocol.md#what-the-cloud-can-see`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gagent_codec::legacy::{FW_TYPE_MCU, FW_TYPE_WIFI};
use gagent_codec::mqtt::{self, ConnectReturnCode, Packet, Publish};
use gagent_codec::{ServiceMessage, publish_qos0};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::http::{self, ProvisionReply};
use crate::mcu::{self, McuBehaviour, McuTransfer};
use crate::mqtt_io::{self, FirstPacket, MAX_BLOB, RECV_LEN};
use crate::net::{self, NetError};
use crate::spec::{DeviceSpec, McuVersions, Method, SpecError, Timing};

/// Where the device finds the cloud, and its timers.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Where every HTTP request goes (the firmware's `api.gizwits.com:80`), download URLs
    /// included, whatever host they name.
    pub http_addr: SocketAddr,
    /// The `Host` header of API requests.
    pub api_host: String,
    /// Connect MQTT here instead of the provisioned host and port.
    pub mqtt_addr_override: Option<SocketAddr>,
    /// Timers.
    pub timing: Timing,
    /// How the simulated MCU answers a file offer.
    pub mcu: McuBehaviour,
    /// Size of the per-device event channel (events are dropped for lagging subscribers).
    pub event_capacity: usize,
    /// Shared counters (a fleet's progress line).
    pub tally: Option<Arc<Tally>>,
}

impl DeviceConfig {
    /// GA timers, `Host: api.gizwits.com`.
    pub fn new(http_addr: SocketAddr) -> Self {
        DeviceConfig {
            http_addr,
            api_host: "api.gizwits.com".into(),
            mqtt_addr_override: None,
            timing: Timing::default(),
            mcu: McuBehaviour::default(),
            event_capacity: 256,
            tally: None,
        }
    }
}

/// Which push arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// 0x0211 (V4.1).
    V41,
    /// 0x020E (V4), with fid and URL.
    V4,
    /// 0x0206 (V1V3), a firmware id.
    V1V3,
}

/// What a check offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// `soft_ver` (V4.1) or `firmware_version` (V4), when given.
    pub version: Option<String>,
    /// The download URL or path.
    pub url: String,
    /// V4 `target_fid`.
    pub fid: Option<u32>,
}

/// Everything the device does that a test may want to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// A boot began (1 = power-on).
    Booted {
        /// Boot count.
        boot: u32,
    },
    /// Registration gave a did.
    Registered {
        /// The did.
        did: String,
    },
    /// Provision succeeded.
    Provisioned {
        /// M2M host.
        mqtt_host: String,
        /// M2M port.
        mqtt_port: u16,
        /// `server_ts`.
        server_ts: Option<u64>,
    },
    /// CONNACK accepted.
    MqttConnected,
    /// CONNACK refused; the device retries about every 6 s, for ever
    /// (`device-protocol.md#observed-refused-connack`).
    MqttRefused {
        /// The return code.
        code: u8,
    },
    /// The MQTT session ended (the device logs in again or reboots).
    MqttDisconnected {
        /// Why.
        reason: String,
    },
    /// The third SUBACK arrived: the device is "cloud connected".
    Subscribed,
    /// An OTA push arrived.
    PushReceived {
        /// Which.
        kind: PushKind,
        /// 1 Wi-Fi, 2 MCU.
        fw_type: u8,
    },
    /// 0x0210.
    AppCount {
        /// Apps online.
        count: u16,
    },
    /// A check (`update_and_check`, `target_fid`, 0x0206) was answered.
    CheckAnswered {
        /// 1 or 2.
        fw_type: u8,
        /// `None`: no update (or nothing the firmware could use).
        offer: Option<Offer>,
    },
    /// A download began.
    DownloadStarted {
        /// 1 or 2.
        fw_type: u8,
        /// Path requested.
        path: String,
    },
    /// The whole image arrived.
    DownloadFinished {
        /// 1 or 2.
        fw_type: u8,
        /// MD5 matched the header (V1V3: the blob).
        md5_ok: bool,
    },
    /// The download broke off (no retry, `device-protocol.md#what-the-firmware-never-retries`).
    DownloadFailed {
        /// 1 or 2.
        fw_type: u8,
        /// Why.
        reason: String,
    },
    /// New firmware installed (Wi-Fi: before the reboot; MCU: after 0x29).
    Upgraded {
        /// 1 or 2.
        fw_type: u8,
        /// The version it runs now.
        new_version: String,
    },
    /// Packets lost because they shared one read with the packet before them.
    LostPacket {
        /// How many in that read.
        count: u32,
    },
    /// The `never_return` fault fired: the device is gone for good.
    Vanished,
    /// Something the firmware would log.
    Error {
        /// What.
        what: String,
    },
}

/// Counters of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Boots, power-on included.
    pub boots: u32,
    /// HTTP requests sent.
    pub http_requests: u32,
    /// API exchanges that timed out or failed on the socket.
    pub http_failures: u32,
    /// OTA checks answered.
    pub checks: u32,
    /// Pushes received.
    pub pushes: u32,
    /// Downloads that arrived with a matching MD5.
    pub downloads_ok: u32,
    /// Downloads that broke off or failed the MD5 check.
    pub downloads_failed: u32,
    /// Upgrades installed.
    pub upgrades: u32,
    /// Accepted CONNACKs.
    pub mqtt_logins: u32,
    /// Refused CONNACKs.
    pub mqtt_refusals: u32,
    /// PINGREQs sent.
    pub pings: u32,
    /// Packets lost to the one-packet-per-read rule.
    pub lost_packets: u32,
    /// Packets longer than their read, thrown away.
    pub oversize_dropped: u32,
    /// Reads that did not start with a decodable packet.
    pub garbage_reads: u32,
    /// Standard frames received on `app2dev`.
    pub app_messages: u32,
}

/// A copy of the device state.
#[derive(Debug, Clone)]
pub struct DeviceSnapshot {
    /// MAC.
    pub mac: String,
    /// Method.
    pub method: Method,
    /// Region label.
    pub region: Option<String>,
    /// did, once registered.
    pub did: Option<String>,
    /// Passcode.
    pub passcode: String,
    /// Wi-Fi hardware version.
    pub wifi_hw: String,
    /// Wi-Fi software version it runs.
    pub wifi_sw: String,
    /// The MCU's own versions (what reply 0x02 gives at boot).
    pub mcu: Option<McuVersions>,
    /// GA's RAM copy of the MCU version, which a download's `Soft-Version` overwrites
    /// (`device-protocol.md#observed-mcu-soft-version-echo`).
    pub mcu_reported_sw: Option<String>,
    /// V4 fid of the Wi-Fi firmware (V1V3: the firmware id as a number).
    pub wifi_fid: u64,
    /// V4 fid of the MCU firmware.
    pub mcu_fid: u32,
    /// Third SUBACK received and the session still up.
    pub online: bool,
    /// The `never_return` fault fired or the device was stopped.
    pub gone: bool,
    /// Last `server_ts` from provision.
    pub server_ts: Option<u64>,
    /// Last 0x0210 count.
    pub app_count: Option<u16>,
    /// Counters.
    pub counters: Counters,
}

/// Fleet-wide counters, updated by every device that shares it.
#[derive(Debug, Default)]
pub struct Tally {
    /// Devices that registered (or started with a did and provisioned).
    pub registered: AtomicU64,
    /// Devices online now.
    pub online: AtomicU64,
    /// Upgrades installed.
    pub upgraded: AtomicU64,
    /// Failed downloads, MD5 failures and failed MCU transfers.
    pub failed: AtomicU64,
    /// Refused CONNACKs.
    pub refused: AtomicU64,
    /// Packets lost to the one-packet-per-read rule.
    pub lost_packets: AtomicU64,
    /// Devices gone for good.
    pub vanished: AtomicU64,
    /// Pushes received.
    pub pushes: AtomicU64,
}

/// A device before it runs; subscribe to its events first so none is missed.
pub struct Device {
    spec: DeviceSpec,
    config: DeviceConfig,
    events: broadcast::Sender<DeviceEvent>,
    state: Arc<Mutex<DeviceSnapshot>>,
}

impl Device {
    /// Validates the spec.
    pub fn new(spec: DeviceSpec, config: DeviceConfig) -> Result<Device, SpecError> {
        spec.validate()?;
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let state = Arc::new(Mutex::new(DeviceSnapshot {
            mac: spec.mac.clone(),
            method: spec.method,
            region: spec.region.clone(),
            did: spec.did.clone(),
            passcode: spec.passcode.clone(),
            wifi_hw: spec.wifi_hw.clone(),
            wifi_sw: spec.wifi_sw.clone(),
            mcu: spec.mcu.clone(),
            mcu_reported_sw: spec.mcu.as_ref().map(|m| m.sw.clone()),
            wifi_fid: u64::from(spec.current_fid),
            mcu_fid: spec.current_fid,
            online: false,
            gone: false,
            server_ts: None,
            app_count: None,
            counters: Counters::default(),
        }));
        Ok(Device { spec, config, events, state })
    }

    /// A receiver of this device's events.
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceEvent> {
        self.events.subscribe()
    }

    /// Starts the device on the current tokio runtime.
    pub fn spawn(self) -> DeviceHandle {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let events = self.events.clone();
        let state = self.state.clone();
        let tally = self.config.tally.clone();
        let runner = Runner::new(self);
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = runner.run() => {}
                _ = stop_rx.wait_for(|stop| *stop) => {}
            }
        });
        DeviceHandle { events, state, stop: stop_tx, task: Some(task), tally }
    }
}

/// A running device.
pub struct DeviceHandle {
    events: broadcast::Sender<DeviceEvent>,
    state: Arc<Mutex<DeviceSnapshot>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    tally: Option<Arc<Tally>>,
}

impl DeviceHandle {
    /// A receiver of events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceEvent> {
        self.events.subscribe()
    }

    /// The device state now.
    pub fn snapshot(&self) -> DeviceSnapshot {
        lock(&self.state).clone()
    }

    /// Asks the device to stop without waiting (sockets close when the task ends).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Whether the device task has ended (stopped, or gone for good).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Stops the device (power off: sockets closed, no DISCONNECT) and returns its last state.
    pub async fn stop(mut self) -> DeviceSnapshot {
        self.request_stop();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let mut state = lock(&self.state);
        if state.online {
            state.online = false;
            if let Some(t) = &self.tally {
                t.online.fetch_sub(1, Ordering::Relaxed);
            }
        }
        state.clone()
    }
}

/// Waits for the first event matching `pred`, up to `wait`. Lagged events are skipped.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<DeviceEvent>,
    wait: Duration,
    pred: impl Fn(&DeviceEvent) -> bool,
) -> Option<DeviceEvent> {
    tokio::time::timeout(wait, async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return Some(ev),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn lock(state: &Mutex<DeviceSnapshot>) -> std::sync::MutexGuard<'_, DeviceSnapshot> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------

/// How an OTA step ended.
enum Step {
    /// Carry on (no update, or a failure the firmware shrugs off).
    Continue,
    /// Reboot into the new image.
    Reboot,
    /// `never_return`.
    Vanish,
    /// Ten timeouts in a row: provision again (`device-protocol.md#timeouts-and-retries`).
    Reprovision,
}

enum SessionEnd {
    Reboot,
    Vanish,
    Relogin(String),
}

/// An action a push queued, run once the push gap has passed
/// (`device-protocol.md#observed-push-reaction`).
enum PushAction {
    CheckV41(u8),
    DownloadV4 { fw_type: u8, fid: u32, url: String },
}

struct Runner {
    spec: DeviceSpec,
    config: DeviceConfig,
    events: broadcast::Sender<DeviceEvent>,
    state: Arc<Mutex<DeviceSnapshot>>,
    did: Option<String>,
    /// The MCU's own version (what 0x02 tells at boot).
    mcu_flash: Option<McuVersions>,
    /// GA's RAM copy, overwritten by `Soft-Version`.
    mcu_ram_sw: Option<String>,
    wifi_fid: u64,
    mcu_fid: u32,
    last_http: Option<Instant>,
    online: bool,
    boots: u32,
    /// Downloads begun (the faults of `only_first` count them).
    downloads: u32,
}

impl Runner {
    fn new(device: Device) -> Self {
        let Device { spec, config, events, state } = device;
        Runner {
            did: spec.did.clone(),
            mcu_flash: spec.mcu.clone(),
            mcu_ram_sw: spec.mcu.as_ref().map(|m| m.sw.clone()),
            wifi_fid: u64::from(spec.current_fid),
            mcu_fid: spec.current_fid,
            spec,
            config,
            events,
            state,
            last_http: None,
            online: false,
            boots: 0,
            downloads: 0,
        }
    }

    fn emit(&self, event: DeviceEvent) {
        tracing::debug!(mac = %self.spec.mac, ?event, "device event");
        if let Some(t) = &self.config.tally {
            let bump = |c: &AtomicU64| {
                c.fetch_add(1, Ordering::Relaxed);
            };
            match &event {
                DeviceEvent::Registered { .. } => bump(&t.registered),
                DeviceEvent::Upgraded { .. } => bump(&t.upgraded),
                DeviceEvent::DownloadFailed { .. } | DeviceEvent::DownloadFinished { md5_ok: false, .. } => {
                    bump(&t.failed)
                }
                DeviceEvent::MqttRefused { .. } => bump(&t.refused),
                DeviceEvent::Vanished => bump(&t.vanished),
                DeviceEvent::PushReceived { .. } => bump(&t.pushes),
                DeviceEvent::LostPacket { count } => {
                    t.lost_packets.fetch_add(u64::from(*count), Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let _ = self.events.send(event);
    }

    fn update(&self, f: impl FnOnce(&mut DeviceSnapshot)) {
        f(&mut lock(&self.state));
    }

    /// The faults for the download that begins now.
    fn download_faults(&mut self) -> crate::spec::Faults {
        self.downloads += 1;
        let f = self.spec.faults;
        if f.only_first == 0 || self.downloads <= f.only_first { f } else { crate::spec::Faults::default() }
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut lock(&self.state).counters);
    }

    fn error(&self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!(mac = %self.spec.mac, %what, "device error");
        self.emit(DeviceEvent::Error { what });
    }

    fn set_online(&mut self, online: bool) {
        if self.online == online {
            return;
        }
        self.online = online;
        self.update(|s| s.online = online);
        if let Some(t) = &self.config.tally {
            if online {
                t.online.fetch_add(1, Ordering::Relaxed);
            } else {
                t.online.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn sync_versions(&self) {
        let (wifi_sw, mcu, ram, wifi_fid, mcu_fid) =
            (self.spec.wifi_sw.clone(), self.mcu_flash.clone(), self.mcu_ram_sw.clone(), self.wifi_fid, self.mcu_fid);
        self.update(|s| {
            s.wifi_sw = wifi_sw;
            s.mcu = mcu;
            s.mcu_reported_sw = ram;
            s.wifi_fid = wifi_fid;
            s.mcu_fid = mcu_fid;
        });
    }

    async fn run(mut self) {
        loop {
            match self.boot().await {
                Step::Vanish => {
                    self.set_online(false);
                    self.update(|s| s.gone = true);
                    self.emit(DeviceEvent::Vanished);
                    return;
                }
                Step::Reboot | Step::Reprovision | Step::Continue => {
                    self.set_online(false);
                    tokio::time::sleep(self.config.timing.reboot_delay).await;
                }
            }
        }
    }

    /// One boot, up to the end of its MQTT session.
    async fn boot(&mut self) -> Step {
        self.boots += 1;
        let boot = self.boots;
        self.count(|c| c.boots = boot);
        self.emit(DeviceEvent::Booted { boot });
        // Serial handshake 0x01 / 0x02: the MCU tells its real versions.
        self.mcu_ram_sw = self.mcu_flash.as_ref().map(|m| m.sw.clone());
        self.sync_versions();

        let did = self.ensure_registered().await;
        let m2m = self.provision_until_ok(&did).await;

        let types: &[u8] = if self.mcu_flash.is_some() { &[FW_TYPE_WIFI, FW_TYPE_MCU] } else { &[FW_TYPE_WIFI] };
        for &fw_type in types {
            let step = match self.spec.method {
                Method::V41 => self.check_v41(&did, fw_type).await,
                Method::V4 => self.check_v4(&did, fw_type).await,
                Method::V1V3 => Step::Continue,
            };
            match step {
                Step::Continue => {}
                other => return other,
            }
        }
        self.delete_old_identity().await;
        self.online_session(&did, m2m).await
    }

    async fn api(&mut self, request: &[u8], wait: Duration) -> Result<Vec<u8>, NetError> {
        self.count(|c| c.http_requests += 1);
        let result = net::api_exchange(self.config.http_addr, request, wait).await;
        self.last_http = Some(Instant::now());
        if result.is_err() {
            self.count(|c| c.http_failures += 1);
        }
        result
    }

    async fn ensure_registered(&mut self) -> String {
        if let Some(did) = &self.did {
            return did.clone();
        }
        let key = self.spec.aes_key();
        loop {
            let request = match &key {
                Some(key) => http::register_encrypted(
                    &self.config.api_host,
                    &self.spec.product_key,
                    key,
                    &self.spec.mac,
                    &self.spec.passcode,
                ),
                None => http::register_plain(
                    &self.config.api_host,
                    &self.spec.passcode,
                    &self.spec.mac,
                    &self.spec.product_key,
                ),
            };
            let parsed = match self.api(&request, self.config.timing.http_timeout).await {
                Err(e) => Err(format!("register: {e}")),
                Ok(raw) => match &key {
                    Some(key) => http::status_code(&raw)
                        .filter(|c| *c == 201)
                        .ok_or_else(|| format!("register: status {:?}, want 201", http::status_code(&raw)))
                        .and_then(|_| http::decrypt_reply(&raw, key).map_err(|e| format!("register: {e}")))
                        .and_then(|plain| http::parse_did(&plain).map_err(|e| format!("register: {e}"))),
                    None => http::parse_register(&raw).map_err(|e| format!("register: {e}")),
                },
            };
            match parsed {
                Ok(did) => {
                    self.did = Some(did.clone());
                    self.update(|s| s.did = Some(did.clone()));
                    self.emit(DeviceEvent::Registered { did: did.clone() });
                    return did;
                }
                Err(what) => {
                    self.error(what);
                    tokio::time::sleep(self.config.timing.http_retry).await;
                }
            }
        }
    }

    async fn provision_once(&mut self, did: &str) -> Result<ProvisionReply, String> {
        let key = self.spec.aes_key();
        let request = match &key {
            Some(key) => http::provision_encrypted(&self.config.api_host, &self.spec.product_key, key, did),
            None => http::provision_plain(&self.config.api_host, did),
        };
        let raw = self.api(&request, self.config.timing.http_timeout).await.map_err(|e| format!("provision: {e}"))?;
        let reply = match &key {
            Some(key) => {
                if http::status_code(&raw) != Some(200) {
                    return Err(format!("provision: status {:?}, want 200", http::status_code(&raw)));
                }
                let plain = http::decrypt_reply(&raw, key).map_err(|e| format!("provision: {e}"))?;
                http::parse_provision_fields(&plain)
            }
            None => http::parse_provision(&raw),
        };
        let reply = reply.map_err(|e| format!("provision: {e}"))?;
        self.update(|s| s.server_ts = reply.server_ts);
        self.emit(DeviceEvent::Provisioned {
            mqtt_host: reply.host.clone(),
            mqtt_port: reply.port,
            server_ts: reply.server_ts,
        });
        Ok(reply)
    }

    async fn provision_until_ok(&mut self, did: &str) -> ProvisionReply {
        loop {
            match self.provision_once(did).await {
                Ok(reply) => return reply,
                Err(what) => {
                    self.error(what);
                    tokio::time::sleep(self.config.timing.http_retry).await;
                }
            }
        }
    }

    /// An API exchange that resends on timeout with a growing wait
    /// (`device-protocol.md#timeouts-and-retries`); `Err(None)` after too many timeouts in a row,
    /// `Err(Some(_))` on a socket failure.
    async fn api_with_resend(&mut self, request: &[u8]) -> Result<Vec<u8>, Option<String>> {
        let timing = self.config.timing.clone();
        for n in 0..timing.max_http_timeouts {
            let wait = timing.http_timeout + timing.http_timeout_step * n;
            match self.api(request, wait).await {
                Ok(raw) => return Ok(raw),
                Err(NetError::Timeout(_)) => continue,
                Err(NetError::Io(e)) => return Err(Some(e)),
            }
        }
        Err(None)
    }

    fn versions_of(&self, fw_type: u8) -> (String, String) {
        match (fw_type, &self.mcu_flash) {
            (FW_TYPE_MCU, Some(mcu)) => (mcu.hw.clone(), self.mcu_ram_sw.clone().unwrap_or_else(|| mcu.sw.clone())),
            _ => (self.spec.wifi_hw.clone(), self.spec.wifi_sw.clone()),
        }
    }

    /// V4.1 `update_and_check` for one type, and the download it may lead to
    /// (`device-protocol.md#v41-ota`).
    async fn check_v41(&mut self, did: &str, fw_type: u8) -> Step {
        let (hw, sw) = self.versions_of(fw_type);
        let request = http::update_and_check(&self.config.api_host, did, &self.spec.passcode, fw_type, &hw, &sw);
        let raw = match self.api_with_resend(&request).await {
            Ok(raw) => raw,
            Err(None) => return Step::Reprovision,
            Err(Some(e)) => {
                self.error(format!("update_and_check type {fw_type}: {e}"));
                return Step::Continue;
            }
        };
        self.count(|c| c.checks += 1);
        let offer = match http::parse_update_and_check(&raw) {
            Ok(offer) => offer,
            Err(e) => {
                self.error(format!("update_and_check type {fw_type}: {e}"));
                None
            }
        };
        self.emit(DeviceEvent::CheckAnswered {
            fw_type,
            offer: offer.as_ref().map(|o| Offer {
                version: Some(o.soft_ver.clone()),
                url: o.download_url.clone(),
                fid: None,
            }),
        });
        let Some(offer) = offer else { return Step::Continue };
        // GA `Cloud_isNeedOTA`: strcmp(current, target) < 0.
        if sw.as_str() >= offer.soft_ver.as_str() {
            return Step::Continue;
        }
        let url = match http::split_url(&offer.download_url) {
            Ok(url) => url,
            Err(e) => {
                self.error(format!("download_url: {e}"));
                return Step::Continue;
            }
        };
        self.download_and_apply(did, fw_type, &url.host, &url.path, Some(offer.soft_ver), None).await
    }

    /// V4 `target_fid` for one type (GK), and the download it may lead to
    /// (`device-protocol.md#v4-ota`).
    async fn check_v4(&mut self, did: &str, fw_type: u8) -> Step {
        let Some(raw) = self.target_fid_exchange(did, fw_type).await else { return Step::Continue };
        let offer = match http::parse_target_fid(&raw) {
            Ok(offer) => Some(offer),
            Err(http::ReplyError::Status { .. }) => None,
            Err(e) => {
                self.error(format!("target_fid type {fw_type}: {e}"));
                None
            }
        };
        self.emit(DeviceEvent::CheckAnswered {
            fw_type,
            offer: offer.as_ref().map(|o| Offer {
                version: o.firmware_version.clone(),
                url: o.path.clone(),
                fid: Some(o.target_fid),
            }),
        });
        let Some(offer) = offer else { return Step::Continue };
        if u64::from(offer.target_fid) == self.stored_fid(fw_type) {
            return Step::Continue;
        }
        let host = offer.url_host.clone().unwrap_or_else(|| self.config.api_host.clone());
        self.download_and_apply(
            did,
            fw_type,
            &host,
            &offer.path,
            offer.firmware_version.clone(),
            Some(offer.target_fid),
        )
        .await
    }

    fn stored_fid(&self, fw_type: u8) -> u64 {
        if fw_type == FW_TYPE_MCU { u64::from(self.mcu_fid) } else { self.wifi_fid }
    }

    async fn target_fid_exchange(&mut self, did: &str, fw_type: u8) -> Option<Vec<u8>> {
        let (hw, sw) = self.versions_of(fw_type);
        let current = u32::try_from(self.stored_fid(fw_type)).unwrap_or(u32::MAX);
        let request = http::target_fid(&self.config.api_host, did, &self.spec.product_key, fw_type, &hw, &sw, current);
        match self.api_with_resend(&request).await {
            Ok(raw) => {
                self.count(|c| c.checks += 1);
                Some(raw)
            }
            Err(e) => {
                self.error(format!("target_fid type {fw_type}: {}", e.unwrap_or_else(|| "timeouts".into())));
                None
            }
        }
    }

    /// GK's report: `target_fid` again with the new `current_fid`; the answer is not acted on.
    async fn report_v4(&mut self, did: &str, fw_type: u8) {
        if let Some(raw) = self.target_fid_exchange(did, fw_type).await {
            let offer = http::parse_target_fid(&raw).ok().map(|o| Offer {
                version: o.firmware_version,
                url: o.path,
                fid: Some(o.target_fid),
            });
            self.emit(DeviceEvent::CheckAnswered { fw_type, offer });
        }
    }

    /// Download, MD5, and install: Wi-Fi → reboot; MCU → serial transfer, 0x29 → reboot.
    async fn download_and_apply(
        &mut self,
        did: &str,
        fw_type: u8,
        host: &str,
        path: &str,
        offered_version: Option<String>,
        fid: Option<u32>,
    ) -> Step {
        self.emit(DeviceEvent::DownloadStarted { fw_type, path: path.to_owned() });
        let request = http::download(host, path);
        self.count(|c| c.http_requests += 1);
        let keep = fw_type == FW_TYPE_MCU;
        let faults = self.download_faults();
        let outcome =
            net::download(self.config.http_addr, &request, self.config.timing.download_timeout, keep, faults).await;
        self.last_http = Some(Instant::now());
        let head = outcome.head;
        // device-protocol.md#observed-mcu-soft-version-echo and
        // device-protocol.md#open-question-soft-version-on-wi-fi-downloads: the `Soft-Version`
        // header goes into the RAM MCU version at once, whatever the type of the download and
        // whatever happens to the body.
        if let (Some(sv), Some(_)) = (head.as_ref().and_then(|h| h.soft_version.clone()), &self.mcu_flash) {
            self.mcu_ram_sw = Some(sv);
            self.sync_versions();
        }
        let done = match outcome.result {
            Ok(done) => done,
            Err(e) => {
                self.count(|c| c.downloads_failed += 1);
                self.emit(DeviceEvent::DownloadFailed { fw_type, reason: e.to_string() });
                return Step::Continue;
            }
        };
        if faults.never_return {
            return Step::Vanish;
        }
        self.emit(DeviceEvent::DownloadFinished { fw_type, md5_ok: done.md5_ok });
        if !done.md5_ok {
            // device-protocol.md#observed-md5-mismatch: the bad image stays on flash, nothing is
            // reported, nothing retried.
            self.count(|c| c.downloads_failed += 1);
            return Step::Continue;
        }
        self.count(|c| c.downloads_ok += 1);
        let Some(head) = head else { return Step::Continue };
        let new_version = match self.spec.method {
            Method::V41 => offered_version.or(head.soft_version.clone()),
            _ => head.firmware_version.clone().or(offered_version).or(head.soft_version.clone()),
        };
        let Some(new_version) = new_version else {
            self.error("download gave no version to install");
            return Step::Continue;
        };
        if let Some(fid) = fid {
            // GK: store the fid, then report it with another target_fid.
            if fw_type == FW_TYPE_MCU {
                self.mcu_fid = fid;
            } else {
                self.wifi_fid = u64::from(fid);
            }
            self.sync_versions();
            self.report_v4(did, fw_type).await;
        }
        if fw_type != FW_TYPE_MCU {
            self.spec.wifi_sw = new_version.clone();
            self.sync_versions();
            self.count(|c| c.upgrades += 1);
            self.emit(DeviceEvent::Upgraded { fw_type, new_version });
            return Step::Reboot;
        }
        let image = done.image.unwrap_or_default();
        match mcu::transfer(&image, &head.md5, head.is_hex, &new_version, &self.config.mcu, &self.config.timing).await {
            McuTransfer::Restarted { new_sw } => {
                if let Some(mcu) = self.mcu_flash.as_mut() {
                    mcu.sw = new_sw.clone();
                }
                self.sync_versions();
                self.count(|c| c.upgrades += 1);
                self.emit(DeviceEvent::Upgraded { fw_type, new_version: new_sw });
                Step::Reboot
            }
            McuTransfer::Failed { reason } => {
                if let Some(t) = &self.config.tally {
                    t.failed.fetch_add(1, Ordering::Relaxed);
                }
                self.error(format!("MCU transfer: {reason}"));
                Step::Continue
            }
        }
    }

    async fn delete_old_identity(&mut self) {
        let Some((old_did, old_passcode)) = self.spec.old_identity.take() else { return };
        let request = http::delete_device(&self.config.api_host, &old_did, &old_passcode);
        match self.api(&request, self.config.timing.http_timeout).await {
            Ok(raw) if http::status_code(&raw) == Some(200) => {}
            Ok(raw) => self.error(format!("DELETE old did: status {:?}", http::status_code(&raw))),
            Err(e) => self.error(format!("DELETE old did: {e}")),
        }
    }

    async fn mqtt_target(&self, m2m: &ProvisionReply) -> Result<SocketAddr, String> {
        if let Some(addr) = self.config.mqtt_addr_override {
            return Ok(addr);
        }
        tokio::net::lookup_host((m2m.host.as_str(), m2m.port))
            .await
            .map_err(|e| format!("resolve {}: {e}", m2m.host))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", m2m.host))
    }

    /// Login, subscriptions and the online loop, with GA's retries, until a reboot.
    async fn online_session(&mut self, did: &str, m2m: ProvisionReply) -> Step {
        let timing = self.config.timing.clone();
        let mut backoff = timing.reconnect_delay;
        loop {
            let login = match self.mqtt_target(&m2m).await {
                Ok(addr) => self.mqtt_login(addr, did).await,
                Err(e) => Err(Some(e)),
            };
            match login {
                Ok(stream) => {
                    backoff = timing.reconnect_delay;
                    let end = self.mqtt_loop(stream, did).await;
                    self.set_online(false);
                    match end {
                        SessionEnd::Reboot => return Step::Reboot,
                        SessionEnd::Vanish => return Step::Vanish,
                        SessionEnd::Relogin(reason) => self.emit(DeviceEvent::MqttDisconnected { reason }),
                    }
                }
                // Refused CONNACK: again every ~6 s, for ever, without re-registering
                // (device-protocol.md#observed-refused-connack).
                Err(None) => {
                    tokio::time::sleep(timing.connack_retry).await;
                    continue;
                }
                Err(Some(e)) => self.error(format!("MQTT login: {e}")),
            }
            tokio::time::sleep(backoff).await;
            backoff += timing.reconnect_step;
            // GA reboots once the back-off passes 375 s (about 2 h in all).
            if backoff > Duration::from_secs(375) {
                return Step::Reboot;
            }
        }
    }

    /// One read of at most 1024 bytes, split the device's way. Lost packets are counted here.
    fn take_first(&self, data: &[u8]) -> FirstPacket {
        let (first, lost) = mqtt_io::split_read(data);
        if lost > 0 {
            self.count(|c| c.lost_packets += lost);
            self.emit(DeviceEvent::LostPacket { count: lost });
        }
        first
    }

    /// CONNECT, CONNACK and the three SUBSCRIBEs one at a time. `Err(None)` = refused.
    async fn mqtt_login(&mut self, addr: SocketAddr, did: &str) -> Result<TcpStream, Option<String>> {
        let wait = self.config.timing.mqtt_reply_timeout;
        let mut stream = tokio::time::timeout(wait, TcpStream::connect(addr))
            .await
            .map_err(|_| Some(format!("connect {addr}: timeout")))?
            .map_err(|e| Some(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let connect = mqtt_io::connect_bytes(&self.spec, did).map_err(|e| Some(e.to_string()))?;
        stream.write_all(&connect).await.map_err(|e| Some(format!("write CONNECT: {e}")))?;
        let mut buf = vec![0u8; RECV_LEN];
        let deadline = Instant::now() + wait;
        let n = read_once(&mut stream, &mut buf, deadline).await.map_err(Some)?;
        match self.take_first(&buf[..n]) {
            FirstPacket::Packet(Packet::Connack(ack)) if ack.code == ConnectReturnCode::Accepted => {}
            FirstPacket::Packet(Packet::Connack(ack)) => {
                let code = ack.code as u8;
                self.count(|c| c.mqtt_refusals += 1);
                self.emit(DeviceEvent::MqttRefused { code });
                return Err(None);
            }
            other => return Err(Some(format!("expected CONNACK, got {other:?}"))),
        }
        self.count(|c| c.mqtt_logins += 1);
        self.emit(DeviceEvent::MqttConnected);

        for (pkid, topic) in (1u16..).zip(mqtt_io::topics(&self.spec.product_key, did)) {
            let subscribe = mqtt_io::subscribe_bytes(pkid, &topic).map_err(|e| Some(e.to_string()))?;
            stream.write_all(&subscribe).await.map_err(|e| Some(format!("write SUBSCRIBE: {e}")))?;
            let deadline = Instant::now() + wait;
            loop {
                let n = read_once(&mut stream, &mut buf, deadline).await.map_err(Some)?;
                match self.take_first(&buf[..n]) {
                    FirstPacket::Packet(Packet::Suback(ack)) if ack.pkid == pkid => break,
                    // GA's login state machine only looks for its SUBACK; anything else is dropped.
                    other => tracing::debug!(mac = %self.spec.mac, ?other, "ignored while subscribing"),
                }
            }
        }
        self.set_online(true);
        self.emit(DeviceEvent::Subscribed);
        Ok(stream)
    }

    async fn publish(&self, stream: &mut TcpStream, topic: &str, msg: &ServiceMessage) -> Result<(), String> {
        let payload = msg.encode().map_err(|e| e.to_string())?;
        let packet = publish_qos0(topic, &payload).map_err(|e| e.to_string())?;
        stream.write_all(&packet).await.map_err(|e| format!("write PUBLISH: {e}"))
    }

    fn firmware_id(&self) -> [u8; 8] {
        self.wifi_fid.to_be_bytes()
    }

    async fn ask_firmware(&self, stream: &mut TcpStream) -> Result<(), String> {
        let msg = ServiceMessage::AskFirmware {
            product_key: self.spec.product_key.clone(),
            firmware_id: self.firmware_id(),
            busi_ver: Bytes::copy_from_slice(self.spec.wifi_sw.as_bytes()),
        };
        self.publish(stream, "cli2ser_req", &msg).await
    }

    /// The online loop: one read at a time, pings, pushes, hourly provision.
    async fn mqtt_loop(&mut self, mut stream: TcpStream, did: &str) -> SessionEnd {
        let timing = self.config.timing.clone();
        let mut buf = vec![0u8; RECV_LEN];
        let mut next_ping = Instant::now() + timing.first_ping_delay;
        let mut unanswered = 0u32;
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut next_provision = Instant::now() + timing.reprovision_interval.unwrap_or(far);
        let mut pending: Option<(PushAction, Instant)> = None;

        if self.spec.method == Method::V1V3
            && let Err(e) = self.ask_firmware(&mut stream).await
        {
            return SessionEnd::Relogin(e);
        }
        loop {
            let push_at = pending.as_ref().map_or(Instant::now() + far, |(_, at)| *at);
            tokio::select! {
                read = stream.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return SessionEnd::Relogin("server closed the connection".into()),
                        Ok(n) => n,
                        Err(e) => return SessionEnd::Relogin(format!("read: {e}")),
                    };
                    let first = self.take_first(&buf[..n]);
                    let packet = match first {
                        FirstPacket::Packet(p) => p,
                        FirstPacket::Oversize { first_byte, total }
                            if self.spec.method == Method::V1V3 && first_byte >> 4 == mqtt::packet_type::PUBLISH =>
                        {
                            match self.read_blob(&mut stream, &buf[..n], total).await {
                                Ok(p) => p,
                                Err(e) => return SessionEnd::Relogin(e),
                            }
                        }
                        FirstPacket::Oversize { total, .. } => {
                            self.count(|c| c.oversize_dropped += 1);
                            self.error(format!("packet of {total} bytes longer than the {n}-byte read: dropped"));
                            continue;
                        }
                        FirstPacket::Garbage(why) => {
                            self.count(|c| c.garbage_reads += 1);
                            self.error(format!("unreadable MQTT data: {why}"));
                            continue;
                        }
                    };
                    match packet {
                        Packet::PingResp => unanswered = 0,
                        Packet::Publish(publish) => {
                            match self.on_publish(&mut stream, did, publish, &mut pending).await {
                                Ok(None) => {}
                                Ok(Some(end)) => return end,
                                Err(e) => return SessionEnd::Relogin(e),
                            }
                        }
                        other => tracing::debug!(mac = %self.spec.mac, ?other, "ignored packet"),
                    }
                }
                _ = tokio::time::sleep_until(next_ping) => {
                    if unanswered >= timing.max_unanswered_pings {
                        return SessionEnd::Relogin(format!("{unanswered} PINGREQs unanswered"));
                    }
                    if let Err(e) = stream.write_all(&[0xC0, 0x00]).await {
                        return SessionEnd::Relogin(format!("write PINGREQ: {e}"));
                    }
                    unanswered += 1;
                    self.count(|c| c.pings += 1);
                    next_ping = Instant::now() + timing.ping_interval;
                }
                _ = tokio::time::sleep_until(next_provision) => {
                    if let Err(e) = self.provision_once(did).await {
                        self.error(e);
                    }
                    next_provision = Instant::now() + timing.reprovision_interval.unwrap_or(far);
                }
                _ = tokio::time::sleep_until(push_at), if pending.is_some() => {
                    let Some((action, _)) = pending.take() else { continue };
                    let step = match action {
                        PushAction::CheckV41(fw_type) => self.check_v41(did, fw_type).await,
                        PushAction::DownloadV4 { fw_type, fid, url } => self.push_download_v4(did, fw_type, fid, &url).await,
                    };
                    match step {
                        Step::Continue => {}
                        Step::Reboot | Step::Reprovision => return SessionEnd::Reboot,
                        Step::Vanish => return SessionEnd::Vanish,
                    }
                }
            }
        }
    }

    /// V1V3: GK hands an oversized PUBLISH to `DRV_OTAPacketHandle`, which reads the rest.
    async fn read_blob(&mut self, stream: &mut TcpStream, got: &[u8], total: usize) -> Result<Packet, String> {
        if total > MAX_BLOB {
            return Err(format!("firmware PUBLISH of {total} bytes exceeds the OTA area"));
        }
        self.emit(DeviceEvent::DownloadStarted { fw_type: FW_TYPE_WIFI, path: "mqtt:0x0208".into() });
        let mut whole = Vec::with_capacity(total);
        whole.extend_from_slice(got);
        let mut rest = vec![0u8; total - got.len()];
        let read = if self.spec.faults.drop_mid_download {
            let half = rest.len() / 2;
            let _ = stream.read_exact(&mut rest[..half]).await;
            Err(std::io::Error::other("connection dropped mid-download (injected fault)"))
        } else {
            tokio::time::timeout(self.config.timing.download_timeout, stream.read_exact(&mut rest))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("timeout")))
                .map(|_| ())
        };
        if let Err(e) = read {
            self.count(|c| c.downloads_failed += 1);
            self.emit(DeviceEvent::DownloadFailed { fw_type: FW_TYPE_WIFI, reason: e.to_string() });
            return Err(format!("firmware PUBLISH: {e}"));
        }
        whole.extend_from_slice(&rest);
        mqtt_io::decode_whole(&whole).map_err(|e| format!("firmware PUBLISH: {e}"))
    }

    /// Handles one PUBLISH. `Ok(Some(_))` ends the session.
    async fn on_publish(
        &mut self,
        stream: &mut TcpStream,
        did: &str,
        publish: Publish,
        pending: &mut Option<(PushAction, Instant)>,
    ) -> Result<Option<SessionEnd>, String> {
        let topic = publish.topic.as_str();
        if topic.starts_with("app2dev/") {
            self.count(|c| c.app_messages += 1);
            return Ok(None);
        }
        if topic != format!("ser2cli_res/{did}") {
            return Ok(None);
        }
        let msg = match ServiceMessage::decode(&publish.payload) {
            Ok(msg) => msg,
            Err(e) => {
                self.error(format!("bad ser2cli_res frame: {e}"));
                return Ok(None);
            }
        };
        let method = self.spec.method;
        match msg {
            ServiceMessage::AppCount { count } => {
                self.update(|s| s.app_count = Some(count));
                self.emit(DeviceEvent::AppCount { count });
            }
            ServiceMessage::OtaPushV41 { fw_type, .. } if method == Method::V41 => {
                self.count(|c| c.pushes += 1);
                self.emit(DeviceEvent::PushReceived { kind: PushKind::V41, fw_type });
                if !(1..=2).contains(&fw_type) {
                    self.error(format!("0x0211 with invalid type {fw_type}"));
                    return Ok(None);
                }
                // device-protocol.md#observed-push-reaction: the check goes out once 5 s have
                // passed since the last HTTP activity.
                let gap = self.config.timing.push_http_gap;
                let at = self.last_http.map_or_else(Instant::now, |t| (t + gap).max(Instant::now()));
                *pending = Some((PushAction::CheckV41(fw_type), at));
            }
            ServiceMessage::OtaPushV4 { fw_type, fid, url } if method == Method::V4 => {
                self.count(|c| c.pushes += 1);
                self.emit(DeviceEvent::PushReceived { kind: PushKind::V4, fw_type });
                *pending = Some((PushAction::DownloadV4 { fw_type, fid, url }, Instant::now()));
            }
            ServiceMessage::FirmwareIdReply { firmware_id } if method == Method::V1V3 => {
                self.count(|c| c.pushes += 1);
                self.emit(DeviceEvent::PushReceived { kind: PushKind::V1V3, fw_type: FW_TYPE_WIFI });
                let offer = (firmware_id != gagent_codec::legacy::NO_FIRMWARE).then(|| Offer {
                    version: None,
                    url: format!("mqtt:{}", hex::encode(firmware_id)),
                    fid: None,
                });
                self.count(|c| c.checks += 1);
                self.emit(DeviceEvent::CheckAnswered { fw_type: FW_TYPE_WIFI, offer: offer.clone() });
                if offer.is_some() && firmware_id != self.firmware_id() {
                    self.publish(stream, "cli2ser_req", &ServiceMessage::RequestFirmware { firmware_id }).await?;
                }
            }
            ServiceMessage::FirmwareBlob { firmware_id, fw_ver, md5, mut image } if method == Method::V1V3 => {
                if self.spec.faults.corrupt_byte && !image.is_empty() {
                    let mut bytes = image.to_vec();
                    let mid = bytes.len() / 2;
                    bytes[mid] ^= 0xFF;
                    image = Bytes::from(bytes);
                }
                if self.spec.faults.never_return {
                    return Ok(Some(SessionEnd::Vanish));
                }
                let md5_ok = Md5::digest(&image).as_slice() == md5;
                self.emit(DeviceEvent::DownloadFinished { fw_type: FW_TYPE_WIFI, md5_ok });
                if !md5_ok {
                    self.count(|c| c.downloads_failed += 1);
                    return Ok(None);
                }
                self.count(|c| {
                    c.downloads_ok += 1;
                    c.upgrades += 1;
                });
                self.wifi_fid = u64::from_be_bytes(firmware_id);
                let version = String::from_utf8(fw_ver.to_vec())
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| hex::encode(firmware_id));
                self.spec.wifi_sw = version.clone();
                self.sync_versions();
                self.emit(DeviceEvent::Upgraded { fw_type: FW_TYPE_WIFI, new_version: version });
                return Ok(Some(SessionEnd::Reboot));
            }
            other => tracing::debug!(mac = %self.spec.mac, ?other, "ignored service message"),
        }
        Ok(None)
    }

    /// GK's reaction to 0x020E: act when the fid is non-zero and differs from the stored one;
    /// download the path from `/dev/ota/download` onwards.
    async fn push_download_v4(&mut self, did: &str, fw_type: u8, fid: u32, url: &str) -> Step {
        if fid == 0 || u64::from(fid) == self.stored_fid(fw_type) {
            return Step::Continue;
        }
        let Some(path) = http::push_url_path(url) else {
            self.error(format!("0x020E URL without /dev/ota/download: {url:?}"));
            return Step::Continue;
        };
        let host = http::split_url(url).map(|u| u.host).unwrap_or_else(|_| self.config.api_host.clone());
        self.download_and_apply(did, fw_type, &host, &path, None, Some(fid)).await
    }
}

/// One `recv` with a deadline.
async fn read_once(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<usize, String> {
    match tokio::time::timeout_at(deadline, stream.read(buf)).await {
        Err(_) => Err("no reply in time".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err("server closed the connection".into()),
        Ok(Ok(n)) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    //! Small in-test stubs, just enough cloud for the device's own rules; the real gateway is
    //! tested end to end elsewhere.

    use super::*;
    use bytes::BytesMut;
    use gagent_codec::mqtt::{Connack, Suback};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const PK: &str = "0123456789abcdef0123456789abcdef";
    const DID: &str = "uNMdYrcV3YN6DZhQPc5ugW";

    fn chunked(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
            .into_bytes()
    }

    /// Answers register, provision and update_and_check ("no update"); reports each request.
    async fn http_stub(mqtt_port: u16) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                buf.truncate(n);
                let reply = if buf.starts_with(b"POST /dev/devices ") {
                    chunked("201 Created", &format!("did={DID}"))
                } else if buf.starts_with(b"GET /dev/devices/") {
                    chunked("200 OK", &format!("host=127.0.0.1&port={mqtt_port}&server_ts=1700000000&log_host=x"))
                } else {
                    chunked("400 Bad Request", "{\"error_code\":9500}")
                };
                let _ = tx.send(buf);
                s.write_all(&reply).await.unwrap();
            }
        });
        (addr, rx)
    }

    async fn read_packet(s: &mut TcpStream, buf: &mut BytesMut) -> Packet {
        loop {
            if let Some(p) = mqtt::decode(buf, 1 << 20).unwrap() {
                return p;
            }
            assert_ne!(s.read_buf(buf).await.unwrap(), 0, "device closed");
        }
    }

    #[tokio::test]
    async fn refused_login_retries_and_a_second_packet_in_one_read_is_lost() {
        let mqtt_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mqtt_port = mqtt_listener.local_addr().unwrap().port();
        let (http_addr, mut requests) = http_stub(mqtt_port).await;

        let mut spec = DeviceSpec::new(PK, "5CCF7F0A1B2C", Method::V41);
        spec.passcode = "KQXBDTRLMA".into();
        let mut config = DeviceConfig::new(http_addr);
        config.timing = Timing::fast();
        let device = Device::new(spec, config).unwrap();
        let mut events = device.subscribe();
        let handle = device.spawn();

        // First login refused (bad password): the device retries without registering again.
        let (mut s, _) = mqtt_listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let Packet::Connect(connect) = read_packet(&mut s, &mut buf).await else { panic!("no CONNECT") };
        assert_eq!((connect.client_id.as_str(), connect.username.as_deref()), (DID, Some(DID)));
        s.write_all(&Packet::Connack(Connack::new(ConnectReturnCode::BadUsernameOrPassword)).encode().unwrap())
            .await
            .unwrap();
        drop(s);

        let (mut s, _) = mqtt_listener.accept().await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(read_packet(&mut s, &mut buf).await, Packet::Connect(_)));
        s.write_all(&Packet::Connack(Connack::new(ConnectReturnCode::Accepted)).encode().unwrap()).await.unwrap();
        let expected_topics = mqtt_io::topics(PK, DID);
        for (pkid, topic) in (1u16..).zip(expected_topics) {
            let Packet::Subscribe(sub) = read_packet(&mut s, &mut buf).await else { panic!("no SUBSCRIBE") };
            assert_eq!((sub.pkid, sub.filters.clone()), (pkid, vec![(topic, 0)]));
            s.write_all(&Packet::Suback(Suback { pkid, return_codes: vec![0] }).encode().unwrap()).await.unwrap();
        }
        wait_event(&mut events, Duration::from_secs(5), |e| matches!(e, DeviceEvent::Subscribed)).await.unwrap();

        // Two packets in one write: the device handles the first and loses the second.
        let topic = format!("ser2cli_res/{DID}");
        let mut two = publish_qos0(&topic, &ServiceMessage::AppCount { count: 1 }.encode().unwrap()).unwrap().to_vec();
        two.extend_from_slice(&publish_qos0(&topic, &ServiceMessage::AppCount { count: 2 }.encode().unwrap()).unwrap());
        s.write_all(&two).await.unwrap();
        let lost =
            wait_event(&mut events, Duration::from_secs(5), |e| matches!(e, DeviceEvent::LostPacket { .. })).await;
        assert_eq!(lost, Some(DeviceEvent::LostPacket { count: 1 }));

        // A V4.1 push, alone in its write, makes the device check with GA's spelling.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let push = ServiceMessage::OtaPushV41 { fw_type: 1, did: Some(DID.into()) }.encode().unwrap();
        s.write_all(&publish_qos0(&topic, &push).unwrap()).await.unwrap();
        let check = wait_event(&mut events, Duration::from_secs(5), |e| matches!(e, DeviceEvent::CheckAnswered { .. }))
            .await
            .unwrap();
        assert_eq!(check, DeviceEvent::CheckAnswered { fw_type: 1, offer: None });

        let snapshot = handle.stop().await;
        assert_eq!(snapshot.app_count, Some(1));
        assert_eq!(snapshot.counters.lost_packets, 1);
        assert_eq!(snapshot.counters.mqtt_refusals, 1);
        assert_eq!(snapshot.counters.pushes, 1);

        let mut seen = Vec::new();
        while let Ok(req) = requests.try_recv() {
            seen.push(String::from_utf8(req).unwrap());
        }
        assert_eq!(seen.iter().filter(|r| r.starts_with("POST /dev/devices ")).count(), 1, "registered once");
        let checks: Vec<_> = seen.iter().filter(|r| r.contains("update_and_check")).collect();
        // One at boot, one for the push.
        assert_eq!(checks.len(), 2, "{seen:#?}");
        assert!(checks[1].contains("\r\nHost:api.gizwits.com\r\nContent-Length:70\r\n"), "{}", checks[1]);
        assert!(checks[1].ends_with("passcode=KQXBDTRLMA&type=1&hard_version=00ESP826&soft_version=04020006"));
    }
}
