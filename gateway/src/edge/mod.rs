//! The MQTT edge devices log in to: our own MQTT 3.1 (`MQIsdp`) and 3.1.1 server side.
//!
//! Why our own: GAgent speaks MQTT 3.1, which rumqttd 0.20 refuses; rumqttd has no per-topic ACL,
//! does not tell in-process links who published, and packs queued packets into one TCP write, while
//! GAgent handles only the first packet of each 1 KB read
//! (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`,
//! `device-protocol.md#observed-pacing`). So devices connect here, where the session holds their
//! identity, and the broker (see [`crate::bus`]) carries messages behind the edge and between
//! gateways.
//!
//! Per session:
//! - **Login:** client id = user name = did, password = passcode, checked against the
//!   registry; refusals get a CONNACK code (4 for a wrong did/passcode), so GAgent retries
//!   later as it does with the hosted cloud. A correct passcode is answered at once; wrong
//!   ones are answered later and later ([`crate::throttle`]).
//! - **Confinement:** see [`acl`]. MQTT 3.1.1 has a SUBACK failure code (0x80) and gets it for
//!   any refused filter. MQTT 3.1 (`MQIsdp`, what GAgent speaks) has none: a filter reaching
//!   another device's topics closes the connection without a SUBACK (what a 3.1 broker does
//!   with a subscription it will not grant), and a filter within the device's own topics that we
//!   do not serve (LUAT's `app2module/<did>/#`) is granted QoS 0 and delivers nothing, so the
//!   device stays online. A refused publish is dropped. All are counted in [`EdgeStats`].
//! - **One packet per write, paced:** every packet to a device goes through one writer task that
//!   writes it with one `write_all` and then waits [`EdgeSettings::pace`] before the next, so two
//!   packets never land in one device read (`device-protocol.md#observed-pacing`). Packets over
//!   1 KB are never sent to a device, except the V1V3 firmware blob, which GK streams to its OTA
//!   hook (`device-protocol.md#v1v3-firmware-blob`).
//! - **Keep-alive:** 1.5 × the declared value, never less than 150 s
//!   (`device-protocol.md#open-question-keep-alive`).
//! - **Adoption** (devices provisioned by the hosted cloud, see `ota_domain::adoption`): an unknown
//!   did while some product adopts gets CONNACK 0 *provisionally*; it may do nothing but ping until
//!   it subscribes `ser2cli_noti/<product_key>` (GAgent's first SUBSCRIBE,
//!   `device-protocol.md#subscriptions-one-at-a-time`). That product's policy then adopts it (the
//!   session goes on as any other) or refuses it (SUBACK 0x80 then a close in 3.1.1; a close
//!   without SUBACK in 3.1). Meanwhile a 3.1 device's subscriptions to its own did's topics are
//!   granted (and kept for the session if it is adopted), others close the connection; 3.1.1 gets
//!   0x80; publishes are dropped. A session that names no product within
//!   [`EdgeSettings::adoption_timeout`] is closed and recorded as an unknown did.
//! - **Large inbound publishes** (the MCU upload of `device-protocol.md#mcu-uploads-over-1-kb`) are
//!   accepted up to [`EdgeSettings::max_inbound_bytes`].

pub mod acl;
mod service;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use gagent_codec::CodecError;
use gagent_codec::mqtt::{self, Connack, ConnectReturnCode, Packet, Protocol, Suback, Subscribe};
use ota_domain::adoption::LoginDecision;
use ota_domain::devices::{DeviceIdentity, PresenceWriter, is_did};
use ota_domain::lifecycle::Event;
use ota_domain::liveness::LiveSession;
use ota_domain::upgrades::RecordEventWriter;
use ota_domain::{Domain, DomainError};
use ota_wire::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

use crate::bus::Bus;
use crate::push::{PUSH_TOPIC_PREFIX, PushEnvelope};
use crate::throttle::AuthThrottle;

/// How long after the first PINGRESP an adopted device is asked to check (see `nudge_check`).
pub const NUDGE_DELAY: Duration = Duration::from_secs(1);

/// Largest packet a device reads in one `recv`
/// (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`).
pub const DEVICE_PACKET_LIMIT: usize = 1024;

#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// This gateway's node id, stored with each session's device and used for its lease (see
    /// `ota_domain::liveness`): stable across restarts in production (`ota up` keeps it in the
    /// data directory); the default is a fresh random id, so two gateways in one process never
    /// share one by accident.
    pub gateway_id: String,
    /// Gap between two packets to one device.
    pub pace: Duration,
    /// Largest PUBLISH a device may send (its MCU uploads can be large).
    pub max_inbound_bytes: usize,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Concurrent device connections; more are closed at once.
    pub max_connections: usize,
    /// Largest V1V3 image sent inside MQTT.
    pub max_v1v3_image_bytes: u64,
    /// How long a provisional session (an unknown did) has to name its product.
    pub adoption_timeout: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            gateway_id: format!("gw-{}", hex::encode(rand::random::<[u8; 4]>())),
            pace: Duration::from_millis(20),
            max_inbound_bytes: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_connections: 19_000,
            max_v1v3_image_bytes: 2 * 1024 * 1024,
            adoption_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters, for tests, logs and metrics.
#[derive(Debug, Default)]
pub struct EdgeStats {
    pub connections: AtomicU64,
    pub logins: AtomicU64,
    pub refused_logins: AtomicU64,
    pub denied_subscriptions: AtomicU64,
    pub denied_publishes: AtomicU64,
    pub malformed: AtomicU64,
    pub packets_sent: AtomicU64,
    /// Pushes written to a device's socket (and reported delivered).
    pub pushes_delivered: AtomicU64,
    /// Pushes that arrived past their delivery deadline (queued by a broker through an
    /// outage): dropped, since the scheduler may already have sent them again.
    pub stale_pushes: AtomicU64,
    pub dropped_outbound: AtomicU64,
    pub service_frames: AtomicU64,
    pub uplinks: AtomicU64,
    /// Unknown dids accepted provisionally, adopted, and refused once they named a product
    /// (or timed out without naming one).
    pub provisional: AtomicU64,
    pub adopted: AtomicU64,
    pub refused_adoptions: AtomicU64,
    /// MQTT 3.1 connections closed for a subscription beyond the device's own topics.
    pub closed_for_subscription: AtomicU64,
    /// MQTT 3.1 subscriptions to an own topic we do not serve, granted and never delivered.
    pub unserved_subscriptions: AtomicU64,
}

/// Sessions open on every edge of this process (the `ota_mqtt_sessions` gauge).
static SESSIONS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn sessions_changed(delta: i64) {
    let now = SESSIONS.fetch_add(delta, Ordering::Relaxed) + delta;
    metrics::gauge!(ota_domain::metrics::MQTT_SESSIONS).set(now as f64);
}

/// Sets the sessions gauge again (the exporter drops gauges nobody sets for a while).
pub fn refresh_sessions_gauge() {
    metrics::gauge!(ota_domain::metrics::MQTT_SESSIONS).set(SESSIONS.load(Ordering::Relaxed) as f64);
}

/// Counts a login the edge refuses by itself (the domain counts its own refusals).
fn login_refused(reason: &'static str) {
    metrics::counter!(ota_domain::metrics::DEVICE_LOGIN_REFUSALS, "channel" => "mqtt", "reason" => reason).increment(1);
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A packet for one device; `ack` names the push it carries, reported as delivered once the
/// packet is on the socket.
pub(crate) struct Outbound {
    bytes: Bytes,
    ack: Option<Ack>,
}

/// The push a packet carries.
#[derive(Debug, Clone, Copy)]
struct Ack {
    upgrade_id: i64,
    opening: Option<i64>,
    /// Not written after this (see `crate::push`).
    deadline_ms: i64,
}

impl Outbound {
    fn plain(bytes: Bytes) -> Outbound {
        Outbound { bytes, ack: None }
    }
}

/// Whether a session's filters take `topic`.
fn subscribed(subscriptions: &Mutex<Vec<String>>, topic: &str) -> bool {
    subscriptions.lock().is_ok_and(|s| s.iter().any(|f| acl::filter_matches(f, topic)))
}

/// One live session, as the registry sees it.
struct SessionEntry {
    id: u64,
    product_key: String,
    tx: mpsc::Sender<Outbound>,
    subscriptions: Arc<Mutex<Vec<String>>>,
    kick: Arc<Notify>,
    session_ms: i64,
    ip: String,
}

pub struct Edge {
    domain: Domain,
    bus: Bus,
    presence: PresenceWriter,
    events: RecordEventWriter,
    /// Set to `true` to close every session (the gateway stops).
    closing: watch::Sender<bool>,
    settings: EdgeSettings,
    stats: Arc<EdgeStats>,
    /// Live sessions by did: sharded (`DashMap`), so delivering a push locks one shard for a
    /// lookup, never the whole registry, and logins elsewhere go on meanwhile.
    sessions: DashMap<String, SessionEntry>,
    next_id: AtomicU64,
    connections: Arc<tokio::sync::Semaphore>,
    throttle: Arc<AuthThrottle>,
    /// Bounds the logins checked at once ([`crate::admission`]).
    gates: Arc<crate::admission::Admission>,
}

/// Why a connection ended; logged (through `Debug`) when it closes.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read by the `Debug` output in the log
enum End {
    Closed,
    Timeout,
    Malformed(CodecError),
    Protocol(&'static str),
    Io(std::io::Error),
    Kicked,
    /// A provisional session was refused adoption.
    NotAdopted,
    /// An MQTT 3.1 subscription reached beyond the device's own topics.
    ForeignSubscription(String),
}

/// What a CONNECT's credentials let in.
enum Admission {
    Known(DeviceIdentity),
    /// An unknown did: wait for it to name its product.
    Provisional {
        did: String,
        passcode: String,
    },
}

impl Edge {
    pub fn new(
        domain: Domain,
        bus: Bus,
        presence: PresenceWriter,
        events: RecordEventWriter,
        settings: EdgeSettings,
        throttle: Arc<AuthThrottle>,
        gates: Arc<crate::admission::Admission>,
    ) -> Arc<Edge> {
        let permits = settings.max_connections;
        Arc::new(Edge {
            throttle,
            gates,
            domain,
            bus,
            presence,
            events,
            closing: watch::Sender::new(false),
            settings,
            stats: Arc::new(EdgeStats::default()),
            sessions: DashMap::new(),
            next_id: AtomicU64::new(1),
            connections: Arc::new(tokio::sync::Semaphore::new(permits)),
        })
    }

    pub fn stats(&self) -> Arc<EdgeStats> {
        self.stats.clone()
    }

    /// Number of devices logged in here.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_connected(&self, did: &str) -> bool {
        self.sessions.contains_key(did)
    }

    /// The sessions held here now, for a resync of presence.
    pub fn live_sessions(&self) -> Vec<LiveSession> {
        self.sessions
            .iter()
            .map(|s| LiveSession { did: s.key().clone(), session_ms: s.session_ms, ip: Some(s.ip.clone()) })
            .collect()
    }

    /// Closes every session (the gateway stops); new connections are closed at once.
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// After [`Edge::close_all`]: waits, at most `within`, until every connection has ended,
    /// those in the middle of a login included, so each has queued its presence change
    /// before the gateway writes its last word. False when some were still running.
    pub async fn wait_closed(&self, within: Duration) -> bool {
        let all = u32::try_from(self.settings.max_connections).unwrap_or(u32::MAX);
        matches!(tokio::time::timeout(within, self.connections.acquire_many(all)).await, Ok(Ok(_)))
    }

    /// Accepts devices until the listener fails for good.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    bump(&self.stats.connections);
                    let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "too many device connections; closing a new one");
                        continue;
                    };
                    let edge = self.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _ = stream.set_nodelay(true);
                        edge.connection(stream, peer).await;
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; never stop serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Delivers a broker message to the local session it is for, if any and if subscribed.
    /// A push envelope (`ota/push/<did>`) goes out as its frame on `ser2cli_res/<did>` and is
    /// acknowledged once written.
    pub fn deliver(&self, topic: &str, payload: &Bytes) {
        if let Some(did) = topic.strip_prefix(PUSH_TOPIC_PREFIX) {
            match PushEnvelope::decode(payload) {
                Some(push) if push.deadline_ms < self.domain.clock.now_ms() => {
                    bump(&self.stats.stale_pushes);
                    tracing::info!(topic, upgrade_id = push.upgrade_id, "a push past its deadline; dropped");
                }
                Some(push) => {
                    let device_topic = format!("ser2cli_res/{did}");
                    let ack = Ack { upgrade_id: push.upgrade_id, opening: push.opening, deadline_ms: push.deadline_ms };
                    self.deliver_to(&device_topic, &push.frame, Some(ack));
                }
                None => {
                    bump(&self.stats.malformed);
                    tracing::warn!(topic, "a push without a valid envelope; dropped");
                }
            }
            return;
        }
        self.deliver_to(topic, payload, None);
    }

    fn deliver_to(&self, topic: &str, payload: &Bytes, ack: Option<Ack>) {
        if topic.starts_with("ser2cli_res/") || topic.starts_with("app2dev/") {
            // One device: one shard locked for the lookup, nothing allocated but the packet.
            let Some(did) = topic.split('/').nth(1) else { return };
            let tx = match self.sessions.get(did) {
                Some(s) if subscribed(&s.subscriptions, topic) => s.tx.clone(),
                _ => return,
            };
            if let Some(packet) = self.device_packet(topic, payload)
                && tx.try_send(Outbound { bytes: packet, ack }).is_err()
            {
                bump(&self.stats.dropped_outbound);
            }
        } else if let Some(pk) = topic.strip_prefix("ser2cli_noti/") {
            // A product's devices: the packet is encoded once and shared (`Bytes`).
            let targets: Vec<mpsc::Sender<Outbound>> = self
                .sessions
                .iter()
                .filter(|s| s.product_key == pk && subscribed(&s.subscriptions, topic))
                .map(|s| s.tx.clone())
                .collect();
            if targets.is_empty() {
                return;
            }
            let Some(packet) = self.device_packet(topic, payload) else { return };
            for tx in targets {
                if tx.try_send(Outbound { bytes: packet.clone(), ack }).is_err() {
                    bump(&self.stats.dropped_outbound);
                }
            }
        }
    }

    /// The PUBLISH a device gets, if it fits a device's read.
    fn device_packet(&self, topic: &str, payload: &Bytes) -> Option<Bytes> {
        match gagent_codec::publish_qos0(topic, payload) {
            Ok(p) if p.len() <= DEVICE_PACKET_LIMIT => Some(p),
            _ => {
                bump(&self.stats.dropped_outbound);
                tracing::warn!(topic, len = payload.len(), "message too large for a device; dropped");
                None
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let (mut reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel::<Outbound>(64);
        let out = Writer {
            pace: self.settings.pace,
            stats: self.stats.clone(),
            events: self.events.clone(),
            clock: self.domain.clock.clone(),
        };
        let writer_task = tokio::spawn(out.run(writer, rx));
        if *self.closing.borrow() {
            return;
        }
        let mut buf = BytesMut::with_capacity(1024);
        let connect = match read_packet(&mut reader, &mut buf, 8 * 1024, Some(self.settings.connect_timeout)).await {
            Ok(Packet::Connect(c)) => c,
            Ok(_) => {
                login_refused("protocol");
                self.ended(peer, None, End::Protocol("the first packet was not CONNECT"));
                return;
            }
            Err(End::Malformed(CodecError::UnsupportedProtocol { name, level })) => {
                login_refused("protocol");
                tracing::info!(%peer, %name, level, "unsupported MQTT protocol");
                let _ = tx.send(Outbound::plain(connack(ConnectReturnCode::UnacceptableProtocol))).await;
                drop(tx);
                let _ = writer_task.await;
                return;
            }
            Err(end) => {
                self.ended(peer, None, end);
                return;
            }
        };
        let checked = match self.throttle.begin(peer.ip()) {
            // Too many attempts in flight from this address: answered as wrong, unchecked.
            None => {
                login_refused("throttled");
                Err(ConnectReturnCode::BadUsernameOrPassword)
            }
            Some(attempt) => {
                let checked = self.admitted_login(&connect, peer).await;
                if checked.as_ref().err() == Some(&ConnectReturnCode::BadUsernameOrPassword) {
                    let wait = self.throttle.wrong(&attempt, &connect.client_id);
                    tokio::time::sleep(wait).await;
                }
                checked
            }
        };
        let admission = match checked {
            Ok(admission) => admission,
            Err(code) => {
                bump(&self.stats.refused_logins);
                tracing::info!(%peer, client_id = %connect.client_id, ?code, "device login refused");
                let _ = tx.send(Outbound::plain(connack(code))).await;
                drop(tx);
                let _ = writer_task.await;
                return;
            }
        };
        let protocol = connect.protocol;
        let (identity, first_subscribe, carried) = match admission {
            Admission::Known(identity) => (identity, None, Vec::new()),
            Admission::Provisional { did, passcode } => {
                bump(&self.stats.provisional);
                let _ = tx.send(Outbound::plain(connack(ConnectReturnCode::Accepted))).await;
                match self.provisional(&did, &passcode, protocol, peer, &tx, &mut reader, &mut buf).await {
                    Ok((identity, subscribe, carried)) => {
                        bump(&self.stats.adopted);
                        (identity, Some(subscribe), carried)
                    }
                    Err(end) => {
                        if matches!(end, End::NotAdopted | End::Timeout) {
                            bump(&self.stats.refused_adoptions);
                            login_refused("not_adopted");
                        }
                        if matches!(end, End::Timeout) {
                            let reason = "named no product within adoption_timeout";
                            let channel = ota_domain::security::Channel::Mqtt;
                            self.domain.note_unknown_did(&did, channel, reason, Some(&peer.ip().to_string())).await;
                        }
                        self.ended(peer, Some(&did), end);
                        drop(tx);
                        let _ = writer_task.await;
                        return;
                    }
                }
            }
        };
        bump(&self.stats.logins);
        metrics::counter!(ota_domain::metrics::DEVICE_LOGINS).increment(1);
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriptions = Arc::new(Mutex::new(carried));
        let kick = Arc::new(Notify::new());
        let session_ms = self.domain.clock.now_ms();
        let replaced = self.sessions.insert(
            identity.did.clone(),
            SessionEntry {
                id: session_id,
                product_key: identity.product_key.clone(),
                tx: tx.clone(),
                subscriptions: subscriptions.clone(),
                kick: kick.clone(),
                session_ms,
                ip: peer.ip().to_string(),
            },
        );
        if replaced.is_none() {
            sessions_changed(1);
        }
        if let Some(old) = replaced {
            // MQTT: a second login with the same client id takes the session over.
            old.kick.notify_one();
        }
        self.presence.online(&identity.did, &self.settings.gateway_id, Some(peer.ip().to_string()), session_ms);
        let adopted_now = first_subscribe.is_some();
        let session = Session {
            identity: identity.clone(),
            protocol,
            tx: tx.clone(),
            subscriptions,
            nudge_check: std::sync::atomic::AtomicBool::new(adopted_now),
        };
        let first = match first_subscribe {
            // Adopted: the SUBSCRIBE that named the product is answered now, as in any session.
            Some(subscribe) => self.subscribe(&session, subscribe).await,
            None => {
                let _ = tx.send(Outbound::plain(connack(ConnectReturnCode::Accepted))).await;
                Ok(())
            }
        };

        let keep_alive = keep_alive_limit(connect.keep_alive);
        let mut closing = self.closing.subscribe();
        let end = match first {
            Err(end) => end,
            Ok(()) => tokio::select! {
                end = self.session_loop(&session, &mut reader, &mut buf, keep_alive) => end,
                _ = kick.notified() => End::Kicked,
                _ = closing.wait_for(|c| *c) => End::Closed,
            },
        };
        if self.sessions.remove_if(&identity.did, |_, e| e.id == session_id).is_some() {
            sessions_changed(-1);
        }
        self.presence.offline(&identity.did, session_ms, self.domain.clock.now_ms());
        self.ended(peer, Some(&identity.did), end);
        drop(session);
        drop(tx);
        let _ = writer_task.await;
    }

    fn ended(&self, peer: SocketAddr, did: Option<&str>, end: End) {
        if matches!(end, End::Malformed(_) | End::Protocol(_) | End::ForeignSubscription(_)) {
            bump(&self.stats.malformed);
            tracing::info!(%peer, did, ?end, "device connection closed");
        } else {
            tracing::debug!(%peer, did, ?end, "device connection closed");
        }
    }

    /// [`Edge::login`] in a login slot ([`crate::admission`]). With every slot taken for the
    /// admission wait, the login is refused as "server unavailable" before its passcode is
    /// looked at: the firmware logs in again a few seconds later.
    async fn admitted_login(&self, c: &mqtt::Connect, peer: SocketAddr) -> Result<Admission, ConnectReturnCode> {
        let Some(_slot) = self.gates.logins.enter().await else {
            login_refused("busy");
            return Err(ConnectReturnCode::ServerUnavailable);
        };
        self.login(c, peer).await
    }

    async fn login(&self, c: &mqtt::Connect, peer: SocketAddr) -> Result<Admission, ConnectReturnCode> {
        let (Some(user), Some(pass)) = (&c.username, &c.password) else {
            login_refused("no_credentials");
            return Err(ConnectReturnCode::BadUsernameOrPassword);
        };
        if &c.client_id != user {
            login_refused("client_id_mismatch");
            return Err(ConnectReturnCode::IdentifierRejected);
        }
        let passcode = std::str::from_utf8(pass).map_err(|_| {
            login_refused("protocol");
            ConnectReturnCode::BadUsernameOrPassword
        })?;
        match self.domain.device_login(user, passcode, Some(peer.ip().to_string())).await {
            Ok(LoginDecision::Accepted(identity)) => Ok(Admission::Known(identity)),
            Ok(LoginDecision::Provisional) if is_did(user) => {
                Ok(Admission::Provisional { did: user.clone(), passcode: passcode.to_owned() })
            }
            Ok(LoginDecision::Provisional) => {
                login_refused("unknown_did");
                Err(ConnectReturnCode::BadUsernameOrPassword)
            }
            // Counted by the domain, with its reason.
            Ok(LoginDecision::Refused) => Err(ConnectReturnCode::BadUsernameOrPassword),
            Err(DomainError::Expected { code: ErrorCode::InvalidCredentials, .. }) => {
                login_refused("wrong_passcode");
                Err(ConnectReturnCode::BadUsernameOrPassword)
            }
            Err(e) => {
                login_refused("server_error");
                tracing::error!(error = %e, "device login check failed");
                Err(ConnectReturnCode::ServerUnavailable)
            }
        }
    }

    /// A provisional session: only pings until the device subscribes `ser2cli_noti/<pk>`;
    /// then that product adopts it (returns the SUBSCRIBE to answer, with the own-did filters
    /// granted meanwhile) or refuses it.
    #[allow(clippy::too_many_arguments)]
    async fn provisional(
        &self,
        did: &str,
        passcode: &str,
        protocol: Protocol,
        peer: SocketAddr,
        tx: &mpsc::Sender<Outbound>,
        reader: &mut OwnedReadHalf,
        buf: &mut BytesMut,
    ) -> Result<(DeviceIdentity, Subscribe, Vec<String>), End> {
        let deadline = tokio::time::Instant::now() + self.settings.adoption_timeout;
        // MQTT 3.1: own-did filters granted before the product is known, kept if adopted.
        let mut carried: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(End::Timeout);
            }
            match read_packet(reader, buf, 64 * 1024, Some(left)).await? {
                Packet::Subscribe(sub) => {
                    let named = sub.filters.iter().find_map(|(f, _)| {
                        f.strip_prefix("ser2cli_noti/").filter(|pk| !pk.is_empty() && !pk.contains(['+', '#', '/']))
                    });
                    let refuse_all =
                        Suback { pkid: sub.pkid, return_codes: vec![mqtt::suback::FAILURE; sub.filters.len()] };
                    let Some(pk) = named else {
                        if protocol == Protocol::V31 {
                            // No product yet: only the did's own topics can be told apart.
                            if let Some((f, _)) = sub.filters.iter().find(|(f, _)| !acl::is_own(f, did, "")) {
                                bump(&self.stats.denied_subscriptions);
                                return Err(End::ForeignSubscription(f.clone()));
                            }
                            for (f, _) in &sub.filters {
                                if acl::may_subscribe(f, did, "") && !carried.contains(f) {
                                    carried.push(f.clone());
                                }
                            }
                            let granted = Suback { pkid: sub.pkid, return_codes: vec![0; sub.filters.len()] };
                            send_packet(tx, Packet::Suback(granted)).await;
                            continue;
                        }
                        bump(&self.stats.denied_subscriptions);
                        send_packet(tx, Packet::Suback(refuse_all)).await;
                        continue;
                    };
                    match self.domain.adopt_unknown(did, passcode, pk, Some(peer.ip().to_string())).await {
                        Ok(Some(identity)) => {
                            tracing::info!(%peer, did, product_key = pk, "unknown device adopted");
                            return Ok((identity, sub, carried));
                        }
                        Ok(None) => {
                            tracing::debug!(%peer, did, product_key = pk, "unknown device refused");
                            // MQTT 3.1 has no failure code: the refusal is the close itself.
                            if protocol == Protocol::V311 {
                                send_packet(tx, Packet::Suback(refuse_all)).await;
                            }
                            return Err(End::NotAdopted);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "adoption check failed");
                            if protocol == Protocol::V311 {
                                send_packet(tx, Packet::Suback(refuse_all)).await;
                            }
                            return Err(End::Protocol("the adoption check failed"));
                        }
                    }
                }
                Packet::PingReq => send_packet(tx, Packet::PingResp).await,
                Packet::Publish(p) => {
                    match p.qos {
                        0 => {}
                        1 => send_packet(tx, Packet::Puback(p.pkid.unwrap_or(1))).await,
                        _ => return Err(End::Protocol("QoS 2 is not supported for devices")),
                    }
                    bump(&self.stats.denied_publishes);
                }
                Packet::Unsubscribe(unsub) => send_packet(tx, Packet::Unsuback(unsub.pkid)).await,
                Packet::Disconnect => return Err(End::Closed),
                Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_) => {}
                Packet::Connect(_) => return Err(End::Protocol("a second CONNECT")),
                Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::PingResp => {
                    return Err(End::Protocol("a server-to-client packet from a device"));
                }
            }
        }
    }

    /// Answers a SUBSCRIBE (see the module doc); `Err` ends an MQTT 3.1 session that asked for
    /// another device's topics (nothing is stored and no SUBACK is sent).
    async fn subscribe(&self, s: &Session, sub: Subscribe) -> Result<(), End> {
        let (did, pk) = (&s.identity.did, &s.identity.product_key);
        if s.protocol == Protocol::V31
            && let Some((filter, _)) = sub.filters.iter().find(|(f, _)| !acl::is_own(f, did, pk))
        {
            bump(&self.stats.denied_subscriptions);
            bump(&self.stats.closed_for_subscription);
            tracing::info!(%did, %filter, "MQTT 3.1 subscription beyond the device's own topics; connection closed");
            return Err(End::ForeignSubscription(filter.clone()));
        }
        let mut codes = Vec::with_capacity(sub.filters.len());
        for (filter, _qos) in &sub.filters {
            if acl::may_subscribe(filter, did, pk) {
                if let Ok(mut subs) = s.subscriptions.lock()
                    && !subs.contains(filter)
                {
                    subs.push(filter.clone());
                }
                codes.push(0);
            } else if s.protocol == Protocol::V31 {
                // Own, but nothing is ever published there: granted, never stored or delivered.
                bump(&self.stats.unserved_subscriptions);
                tracing::debug!(%did, %filter, "own topic we do not serve; granted QoS 0");
                codes.push(0);
            } else {
                bump(&self.stats.denied_subscriptions);
                tracing::info!(%did, %filter, "subscription refused");
                codes.push(mqtt::suback::FAILURE);
            }
        }
        s.send(Packet::Suback(Suback { pkid: sub.pkid, return_codes: codes })).await;
        Ok(())
    }

    /// After an open-window adoption, once the device is in its online loop (its first PINGREQ:
    /// GAgent drops anything but its SUBACK while it subscribes,
    /// `device-protocol.md#subscriptions-one-at-a-time`), one 0x0211 type 1 asks it to check, so
    /// its versions are known without waiting for a reboot. It goes out [`NUDGE_DELAY`] after the
    /// PINGRESP, not just one pace later: a device that reads both in one `recv` would lose it
    /// (`device-protocol.md#observed-pacing`), and a busy gateway can fall behind the pace.
    fn nudge_check(&self, s: &Session) {
        let own = format!("ser2cli_res/{}", s.identity.did);
        let subscribed = s.subscriptions.lock().is_ok_and(|subs| subs.contains(&own));
        if !subscribed || !s.nudge_check.swap(false, Ordering::Relaxed) {
            return;
        }
        let nudge = gagent_codec::ServiceMessage::OtaPushV41 {
            fw_type: gagent_codec::legacy::FW_TYPE_WIFI,
            did: Some(s.identity.did.clone()),
        };
        let packet = match nudge
            .encode()
            .map_err(|e| e.to_string())
            .and_then(|frame| gagent_codec::publish_qos0(&own, &frame).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "could not encode 0x0211");
                return;
            }
        };
        let tx = s.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(NUDGE_DELAY).await;
            // The session may have ended meanwhile; then there is nobody to nudge.
            let _ = tx.send(Outbound::plain(packet)).await;
        });
    }

    async fn session_loop(
        &self,
        s: &Session,
        reader: &mut OwnedReadHalf,
        buf: &mut BytesMut,
        keep_alive: Option<Duration>,
    ) -> End {
        loop {
            let packet = match read_packet(reader, buf, self.settings.max_inbound_bytes, keep_alive).await {
                Ok(p) => p,
                Err(end) => return end,
            };
            match packet {
                Packet::Subscribe(sub) => {
                    if let Err(end) = self.subscribe(s, sub).await {
                        return end;
                    }
                }
                Packet::Unsubscribe(unsub) => {
                    if let Ok(mut subs) = s.subscriptions.lock() {
                        subs.retain(|f| !unsub.filters.contains(f));
                    }
                    s.send(Packet::Unsuback(unsub.pkid)).await;
                }
                Packet::Publish(p) => {
                    match p.qos {
                        0 => {}
                        1 => s.send(Packet::Puback(p.pkid.unwrap_or(1))).await,
                        _ => return End::Protocol("QoS 2 is not supported for devices"),
                    }
                    self.presence.seen(&s.identity.did, self.domain.clock.now_ms());
                    match acl::classify_publish(&p.topic, &s.identity.did) {
                        Some(acl::Inbound::Service) => {
                            bump(&self.stats.service_frames);
                            self.service(s, &p.payload).await;
                        }
                        Some(acl::Inbound::Uplink) => {
                            bump(&self.stats.uplinks);
                            if let Err(e) = self.bus.publish(&p.topic, p.payload.clone()).await {
                                tracing::warn!(error = %e, "uplink not forwarded to the broker");
                            }
                        }
                        None => {
                            bump(&self.stats.denied_publishes);
                            tracing::info!(did = %s.identity.did, topic = %p.topic, "publish refused");
                        }
                    }
                }
                Packet::PingReq => {
                    self.presence.seen(&s.identity.did, self.domain.clock.now_ms());
                    s.send(Packet::PingResp).await;
                    self.nudge_check(s);
                }
                Packet::Disconnect => return End::Closed,
                Packet::Connect(_) => return End::Protocol("a second CONNECT"),
                Packet::Puback(_) | Packet::Pubrec(_) | Packet::Pubrel(_) | Packet::Pubcomp(_) => {}
                Packet::Connack(_) | Packet::Suback(_) | Packet::Unsuback(_) | Packet::PingResp => {
                    return End::Protocol("a server-to-client packet from a device");
                }
            }
        }
    }
}

/// What a session's handlers need.
pub(crate) struct Session {
    pub(crate) identity: DeviceIdentity,
    /// MQTT 3.1 or 3.1.1: decides how refused subscriptions are answered.
    protocol: Protocol,
    tx: mpsc::Sender<Outbound>,
    subscriptions: Arc<Mutex<Vec<String>>>,
    /// Adopted by an open window in this session: its first boot's checks failed (the did was
    /// unknown then), so one 0x0211 type 1 asks it to check now and report its versions.
    nudge_check: std::sync::atomic::AtomicBool,
}

impl Session {
    async fn send(&self, packet: Packet) {
        send_packet(&self.tx, packet).await;
    }

    /// A PUBLISH on `ser2cli_res/<did>`; `allow_large` only for the V1V3 blob.
    pub(crate) async fn send_service(&self, payload: &[u8], allow_large: bool) -> bool {
        let topic = format!("ser2cli_res/{}", self.identity.did);
        match gagent_codec::publish_qos0(&topic, payload) {
            Ok(p) if allow_large || p.len() <= DEVICE_PACKET_LIMIT => self.tx.send(Outbound::plain(p)).await.is_ok(),
            Ok(_) | Err(_) => false,
        }
    }
}

async fn send_packet(tx: &mpsc::Sender<Outbound>, packet: Packet) {
    match packet.encode() {
        Ok(bytes) => {
            let _ = tx.send(Outbound::plain(bytes)).await;
        }
        Err(e) => tracing::error!(error = %e, "could not encode a packet for a device"),
    }
}

/// How long a session may stay silent: 1.5 × the declared keep-alive, never under 150 s
/// (`device-protocol.md#open-question-keep-alive`: GAgent declares 30–300 s and pings every 50 s);
/// 0 means no limit, as in MQTT.
pub fn keep_alive_limit(declared_secs: u16) -> Option<Duration> {
    match declared_secs {
        0 => None,
        k => Some(Duration::from_millis(u64::from(k) * 1500).max(Duration::from_secs(150))),
    }
}

fn connack(code: ConnectReturnCode) -> Bytes {
    // Infallible for a CONNACK; the fallback is the same four bytes written by hand.
    Packet::Connack(Connack::new(code)).encode().unwrap_or_else(|_| Bytes::from(vec![0x20, 0x02, 0x00, code as u8]))
}

/// Reads until one whole packet is buffered (or the timeout, EOF or a bad packet).
async fn read_packet(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
    timeout: Option<Duration>,
) -> Result<Packet, End> {
    loop {
        match mqtt::decode(buf, max) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => return Err(End::Malformed(e)),
        }
        buf.reserve(4096);
        let read = reader.read_buf(buf);
        let n = match timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return Err(End::Timeout),
            },
            None => read.await,
        };
        match n {
            Ok(0) => return Err(End::Closed),
            Ok(_) => {}
            Err(e) => return Err(End::Io(e)),
        }
    }
}

/// The only writer of a device socket: one packet per `write_all`, then a pause. A push is
/// reported delivered once its packet is written; one whose deadline passed while it waited
/// in the queue is dropped instead (the scheduler may have sent it again).
struct Writer {
    pace: Duration,
    stats: Arc<EdgeStats>,
    events: RecordEventWriter,
    clock: Arc<dyn ota_domain::Clock>,
}

impl Writer {
    async fn run(self, mut writer: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Outbound>) {
        // The pace is a gap before the next packet, waited only when there is one: a device
        // that gets a single push (a fleet's fan-out) costs one wake-up and one write, no timer.
        let mut next_at: Option<tokio::time::Instant> = None;
        while let Some(out) = rx.recv().await {
            if let Some(at) = next_at
                && at > tokio::time::Instant::now()
            {
                tokio::time::sleep_until(at).await;
            }
            if let Some(ack) = out.ack
                && ack.deadline_ms < self.clock.now_ms()
            {
                bump(&self.stats.stale_pushes);
                continue;
            }
            if writer.write_all(&out.bytes).await.is_err() {
                return;
            }
            bump(&self.stats.packets_sent);
            if let Some(ack) = out.ack {
                bump(&self.stats.pushes_delivered);
                self.events.send(ack.upgrade_id, Event::Delivered { opening: ack.opening });
            }
            if !self.pace.is_zero() {
                next_at = Some(tokio::time::Instant::now() + self.pace);
            }
        }
        let _ = writer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_one_and_a_half_times_and_never_under_150_s() {
        assert_eq!(keep_alive_limit(0), None);
        assert_eq!(keep_alive_limit(30), Some(Duration::from_secs(150)));
        assert_eq!(keep_alive_limit(55), Some(Duration::from_secs(150)));
        assert_eq!(keep_alive_limit(120), Some(Duration::from_secs(180)));
        assert_eq!(keep_alive_limit(300), Some(Duration::from_secs(450)));
    }
}
