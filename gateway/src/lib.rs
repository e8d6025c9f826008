//! The device gateway: the HTTP calls GAgent makes ([`device_http`]) and the MQTT edge devices
//! log in to ([`edge`]), with the broker behind the edge ([`bus`]) carrying pushes between
//! gateways, so a push decided anywhere reaches a device connected anywhere.

pub mod admission;
pub mod bus;
pub mod device_http;
pub mod edge;
pub mod http;
pub mod notifier;
pub mod push;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;

use ota_domain::Domain;
use ota_domain::devices::PresenceWriter;
use ota_domain::liveness::Heartbeat;
use ota_domain::upgrades::RecordEventWriter;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use bus::{Bus, BusConfig};
pub use device_http::DeviceEndpoints;
pub use edge::{Edge, EdgeSettings, EdgeStats};

/// Topics every gateway takes from the broker: pushes (in their envelope, and plain frames
/// from backends) and app messages for its devices.
pub const GATEWAY_SUBSCRIPTIONS: &[&str] = &["ota/push/+", "ser2cli_res/+", "ser2cli_noti/+", "app2dev/#"];

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Device HTTP listener (GAgent always calls port 80; see the README).
    pub http_bind: SocketAddr,
    /// MQTT edge listener.
    pub mqtt_bind: SocketAddr,
    /// Host name in download URLs (devices fetch them from port 80 of that host).
    pub public_host: String,
    /// MQTT host handed out by provision.
    pub mqtt_public_host: String,
    /// MQTT port handed out by provision; `None` = the port the edge listens on.
    pub mqtt_public_port: Option<u16>,
    pub bus: BusConfig,
    pub edge: EdgeSettings,
    pub http: http::ServerSettings,
    pub push: PushSettings,
    /// How wrong device passcodes are slowed down.
    pub throttle: throttle::ThrottleSettings,
    pub liveness: LivenessSettings,
    /// How many registrations, provisions and MQTT logins are worked on at once.
    pub admission: admission::AdmissionSettings,
}

/// This gateway's lease (see `ota_domain::liveness`); its node id is `edge.gateway_id`.
#[derive(Debug, Clone)]
pub struct LivenessSettings {
    /// A gateway silent for this long is dead: the others mark its devices offline. The
    /// heartbeat runs every third of it.
    pub lease: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        LivenessSettings { lease: Duration::from_millis(ota_domain::liveness::DEFAULT_LEASE_MS as u64) }
    }
}

/// The fleet scheduler of this gateway (see `ota_domain::rules::schedule`).
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Pushes per second this gateway sends at most; 0 sends none from here (the round's
    /// time-driven work, timeouts and rule completion, still runs).
    pub rate_per_second: u32,
    /// How often a round starts.
    pub interval: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings { rate_per_second: 50, interval: Duration::from_secs(1) }
    }
}

/// Runs scheduler rounds for ever. Each round claims, sends and records a batch: as many
/// pushes as the gateway's token bucket holds (`rate_per_second` over real time, see
/// `ota_domain::rules::rollout::PushBudget`), handed to the broker at once. The batches are
/// a round apart, so the rate holds over any second without a sleep per push (a sleep of a
/// few milliseconds per push, rounded up by the timer and added to the round's own time,
/// left a rollout at a fifth of its `push_rate`).
async fn run_scheduler(domain: Domain, push: PushSettings) {
    let interval = push.interval.max(Duration::from_millis(10));
    let per_round = (f64::from(push.rate_per_second) * interval.as_secs_f64()).ceil() as u32;
    let mut budget =
        ota_domain::rules::rollout::PushBudget::new(push.rate_per_second, per_round.max(push.rate_per_second));
    let epoch = std::time::Instant::now();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = std::time::Instant::now();
        let limit = budget.allow(i64::try_from(epoch.elapsed().as_millis()).unwrap_or(i64::MAX));
        let outcome = domain.push_round(limit, Duration::ZERO).await;
        metrics::histogram!(ota_domain::metrics::SCHEDULER_ROUND_SECONDS).record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(round) => {
                budget.spend(round.claimed);
                if round.claimed > 0 || round.due > 0 {
                    tracing::info!(due = round.due, notified = round.notified, failed = round.failed, "push round");
                }
            }
            Err(e) => tracing::warn!(error = %e, "push round failed; retrying next round"),
        }
    }
}

/// Refreshes the rule gauges (a count per live rule), the pool and the session gauges once per
/// scheduler interval (at most once a second), in a task of its own: the push loop never waits
/// for these counts.
async fn run_gauges(domain: Domain, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = domain.record_rule_progress().await {
            tracing::debug!(error = %e, "rule gauges not refreshed");
        }
        ota_domain::metrics::record_pool(&domain.db);
        edge::refresh_sessions_gauge();
    }
}

/// Keeps this gateway's lease and reaps dead ones; writes the live sessions again when the
/// database may have fallen behind them (a failed presence batch, an outage long enough for
/// the lease to lapse).
async fn run_liveness(
    domain: Domain,
    node: String,
    started_at: i64,
    lease: Duration,
    edge: Arc<Edge>,
    presence: PresenceWriter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut ticks = tokio::time::interval((lease / 3).max(Duration::from_millis(50)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Stops only between beats: a heartbeat or resync is never cut off with its write
        // still running on the blocking pool (it could then land after the gateway's last word).
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match domain.gateway_heartbeat(&node, started_at, lease_ms).await {
            Ok(beat) => {
                if beat == Heartbeat::Reregistered || presence.take_dirty() {
                    let edge = edge.clone();
                    if !presence.resync(&node, Box::new(move || edge.live_sessions())).await {
                        presence.mark_dirty();
                    }
                }
                match domain.reap_gateways(&node).await {
                    Ok(c) if c.gateways > 0 => {
                        tracing::warn!(
                            gateways = c.gateways,
                            devices = c.devices,
                            downloads = c.downloads,
                            "dead gateways reaped"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reaping dead gateways failed"),
                }
            }
            Err(e) => {
                // Whatever happens to sessions meanwhile may not reach the database.
                presence.mark_dirty();
                tracing::warn!(error = %e, "gateway heartbeat failed");
            }
        }
    }
}

/// Startup failures, each naming the setting to change.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} ({setting}): {cause}")]
    Bind { setting: &'static str, addr: SocketAddr, cause: std::io::Error },
    #[error("the message broker is not usable (bus settings): {0}")]
    Bus(#[from] bus::BusError),
    #[error("the database is not usable: {0}")]
    Database(ota_domain::DomainError),
}

/// For a node that serves the management API but no devices: a broker connection that
/// subscribes to nothing, attached to the domain as its notifier, so a push decided here
/// (a verification's, say) reaches the gateway holding the device's session.
pub async fn attach_push_link(domain: &Domain, bus: BusConfig, public_host: String) -> Result<Bus, GatewayError> {
    let (bus, mut inbound) = Bus::start(bus, &[]).await?;
    tokio::spawn(async move { while inbound.recv().await.is_some() {} });
    domain.attach_notifier(Arc::new(notifier::BusNotifier {
        bus: bus.clone(),
        public_host,
        clock: domain.clock.clone(),
        delivery_timeout_ms: domain.settings.delivery_timeout_ms,
    }));
    Ok(bus)
}

/// A running gateway. Dropping it stops its tasks.
pub struct Gateway {
    pub http_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub bus: Bus,
    pub edge: Arc<Edge>,
    pub http_stats: Arc<http::ServerStats>,
    pub presence: PresenceWriter,
    /// Slows down passcode guessing (shared by the edge and device HTTP).
    pub throttle: Arc<throttle::AuthThrottle>,
    /// Bounds registrations, provisions and logins in flight (shared by the edge and device HTTP).
    pub admission: Arc<admission::Admission>,
    pub events: RecordEventWriter,
    /// This gateway's node id.
    pub node: String,
    domain: Domain,
    tasks: Vec<JoinHandle<()>>,
    /// The lease and presence loop, stopped by a signal rather than aborted (see `shutdown`).
    liveness: Option<(tokio::sync::watch::Sender<bool>, JoinHandle<()>)>,
}

/// Send buffer of device HTTP sockets (accepted sockets inherit it from the listener). Small
/// on purpose: a download then tracks what the device actually took, so a device that drops
/// the connection halfway shows as a failed download instead of vanishing into kernel
/// buffers, and 10,000 concurrent downloads do not pin gigabytes of socket memory.
pub const DEVICE_HTTP_SEND_BUFFER: u32 = 64 * 1024;

/// The two device-facing listeners, bound before anything else happens (so `ota up` can
/// report every taken port at once, before it changes the database).
pub struct DeviceListeners {
    pub http: std::net::TcpListener,
    pub mqtt: std::net::TcpListener,
}

impl DeviceListeners {
    /// Binds both; every failure is returned (not just the first), each naming its setting.
    pub fn bind(http: SocketAddr, mqtt: SocketAddr) -> Result<DeviceListeners, Vec<GatewayError>> {
        let http = bind_http(http);
        let mqtt = std::net::TcpListener::bind(mqtt)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|cause| GatewayError::Bind { setting: "device_mqtt_bind", addr: mqtt, cause });
        match (http, mqtt) {
            (Ok(http), Ok(mqtt)) => Ok(DeviceListeners { http, mqtt }),
            (http, mqtt) => Err([http.err(), mqtt.err()].into_iter().flatten().collect()),
        }
    }
}

fn bind_http(addr: SocketAddr) -> Result<std::net::TcpListener, GatewayError> {
    use socket2::{Domain, Socket, Type};
    let setting = "device_http_bind";
    let err = |cause| GatewayError::Bind { setting, addr, cause };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_send_buffer_size(DEVICE_HTTP_SEND_BUFFER as usize).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(socket.into())
}

impl Gateway {
    /// Binds both listeners, cleans up after an earlier run of this node, connects the broker,
    /// and attaches itself to the domain as the way pushes reach devices.
    pub async fn start(domain: Domain, settings: GatewaySettings) -> Result<Gateway, GatewayError> {
        let listeners = DeviceListeners::bind(settings.http_bind, settings.mqtt_bind)
            .map_err(|mut errors| errors.swap_remove(0))?;
        Gateway::start_on(domain, settings, listeners).await
    }

    /// [`Gateway::start`] on listeners bound beforehand (`settings`' binds only name them in
    /// errors).
    pub async fn start_on(
        domain: Domain,
        settings: GatewaySettings,
        listeners: DeviceListeners,
    ) -> Result<Gateway, GatewayError> {
        let listener = |setting: &'static str, addr: SocketAddr, l: std::net::TcpListener| {
            TcpListener::from_std(l).map_err(|cause| GatewayError::Bind { setting, addr, cause })
        };
        let http_listener = listener("device_http_bind", settings.http_bind, listeners.http)?;
        let mqtt_listener = listener("device_mqtt_bind", settings.mqtt_bind, listeners.mqtt)?;
        let http_addr = http_listener.local_addr().map_err(|cause| GatewayError::Bind {
            setting: "device_http_bind",
            addr: settings.http_bind,
            cause,
        })?;
        let mqtt_addr = mqtt_listener.local_addr().map_err(|cause| GatewayError::Bind {
            setting: "device_mqtt_bind",
            addr: settings.mqtt_bind,
            cause,
        })?;
        let node = settings.edge.gateway_id.clone();
        let started_at = domain.clock.now_ms();
        let lease_ms = i64::try_from(settings.liveness.lease.as_millis()).unwrap_or(i64::MAX);
        // Sessions and downloads of an earlier run of this node are gone: say so before any
        // device can log in again.
        let cleanup = domain.gateway_started(&node, started_at, lease_ms).await.map_err(GatewayError::Database)?;
        if cleanup.devices > 0 || cleanup.downloads > 0 {
            tracing::info!(node = %node, devices = cleanup.devices, downloads = cleanup.downloads, "cleaned up after the previous run");
        }
        let (bus, mut inbound) = Bus::start(settings.bus.clone(), GATEWAY_SUBSCRIPTIONS).await?;
        let presence = PresenceWriter::start(domain.clone());
        let events = RecordEventWriter::start(domain.clone());
        let throttle = throttle::AuthThrottle::new(settings.throttle.clone());
        let admission = Arc::new(admission::Admission::new(&settings.admission));
        let edge = Edge::new(
            domain.clone(),
            bus.clone(),
            presence.clone(),
            events.clone(),
            settings.edge.clone(),
            throttle.clone(),
            admission.clone(),
        );
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(edge.clone().serve(mqtt_listener)));
        let pump_edge = edge.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(message) = inbound.recv().await {
                pump_edge.deliver(&message.topic, &message.payload);
            }
        }));
        let endpoints = DeviceEndpoints {
            public_host: settings.public_host.clone(),
            mqtt_host: settings.mqtt_public_host.clone(),
            mqtt_port: settings.mqtt_public_port.unwrap_or(mqtt_addr.port()),
        };
        let handler = device_http::DeviceHttp::new(
            domain.clone(),
            endpoints,
            node.clone(),
            events.clone(),
            throttle.clone(),
            admission.clone(),
        );
        let http_stats = settings.http.stats.clone();
        let http_settings = settings.http.clone();
        tasks.push(tokio::spawn(http::serve(http_listener, handler, http_settings, std::future::pending())));
        domain.attach_notifier(Arc::new(notifier::BusNotifier {
            bus: bus.clone(),
            public_host: settings.public_host,
            clock: domain.clock.clone(),
            delivery_timeout_ms: domain.settings.delivery_timeout_ms,
        }));
        tasks.push(tokio::spawn(run_gauges(domain.clone(), settings.push.interval)));
        tasks.push(tokio::spawn(run_scheduler(domain.clone(), settings.push.clone())));
        let (stop_liveness, stopped) = tokio::sync::watch::channel(false);
        let liveness = tokio::spawn(run_liveness(
            domain.clone(),
            node.clone(),
            started_at,
            settings.liveness.lease,
            edge.clone(),
            presence.clone(),
            stopped,
        ));
        Ok(Gateway {
            http_addr,
            mqtt_addr,
            bus,
            edge,
            http_stats,
            presence,
            throttle,
            admission,
            events,
            node,
            domain,
            tasks,
            liveness: Some((stop_liveness, liveness)),
        })
    }

    /// Stops accepting and drops every connection, writing nothing more (a gateway dying,
    /// for tests; its lease lapses as a killed process's would).
    pub fn stop(&mut self) {
        if let Some((_, liveness)) = self.liveness.take() {
            liveness.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.edge.close_all();
    }

    /// A graceful stop (SIGTERM, Ctrl-C): no new sessions or pushes, every session closed,
    /// pending writes flushed, this node's devices marked offline and its lease removed.
    ///
    /// In that order, each step finished before the next: the lease loop first (a resync
    /// still writing when the devices are marked offline would mark them online again, with
    /// no lease left for another gateway to reap), then the listeners and the scheduler, then
    /// the sessions (each queues its offline change as it ends, logins in progress included),
    /// then the queued writes, and the offline mark last.
    pub async fn shutdown(mut self) {
        if let Some((stop, mut liveness)) = self.liveness.take() {
            stop.send_replace(true);
            // Bounded: a database that does not answer must not hold the stop for ever.
            if tokio::time::timeout(Duration::from_secs(5), &mut liveness).await.is_err() {
                liveness.abort();
                tracing::warn!("the lease loop was still writing after 5 s; stopped without it");
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.edge.close_all();
        if !self.edge.wait_closed(Duration::from_secs(5)).await {
            tracing::warn!("some device connections were still closing after 5 s");
        }
        self.presence.flush().await;
        self.events.flush().await;
        // The last-seen times of checks answered from a read (everything else a check
        // changes was written before its answer).
        self.domain.flush_checks().await;
        match self.domain.gateway_stopped(&self.node).await {
            Ok(n) => tracing::info!(node = %self.node, devices = n, "gateway stopped; its devices are offline"),
            Err(e) => tracing::warn!(error = %e, "could not mark this gateway's devices offline; its lease will lapse"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}
