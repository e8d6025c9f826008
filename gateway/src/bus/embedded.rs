//! rumqttd 0.20 inside the process.
//!
//! `Broker::new` already spawns the router on its own thread; `Broker::start` only runs the
//! TCP listeners (and refuses to run with none), so the in-process-only bus never calls it.
//! The link API is synchronous: `LinkTx::publish` blocks while the router's 1,000-event
//! queue is full and `LinkRx::recv` blocks until the router notifies. Each side therefore
//! gets a dedicated thread and the tokio runtime never waits on rumqttd:
//!
//! - `bus-publish`: owns `LinkTx`, fed by a bounded tokio channel from [`Publisher`];
//! - `bus-receive`: owns `LinkRx`, hands forwards to the caller's channel (see `Delivery`);
//! - `bus-broker` (only with a listener): `Broker::start`, which blocks for ever.
//!
//! rumqttd has no shutdown. When the last `Bus` clone is dropped the publish thread sends a
//! DISCONNECT for the link, the router drops it and the receive thread ends, so the
//! caller's receiver closes; the router thread (and a listener) stays until the process
//! exits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use super::{BusError, BusMessage, Delivery, MAX_PACKET_SIZE, PUBLISH_TIMEOUT, START_TIMEOUT};

/// Connections the router accepts: the gateway's own link plus backend consumers on the
/// listener. Devices never connect to the broker (they stay on the edge), so this does not
/// grow with the fleet; rumqttd preallocates slabs of this size. rumqttd's default is 0,
/// which refuses every connection, the in-process link included.
const MAX_CONNECTIONS: usize = 1_024;

/// Every subscription filter is one in-memory commit log that keeps published messages
/// until its segments rotate: at most `MAX_SEGMENT_COUNT` full segments of
/// `MAX_SEGMENT_SIZE` plus the active one, about 36 MiB. That is the window a slow TCP
/// consumer may lag before it skips messages (a "cursor jump"). 10,000 devices reporting
/// 200 bytes every 10 s make 200 KB/s, a window of minutes; a burst of V1V3 firmware blobs
/// (hundreds of KiB each, up to 4 MiB) still fits. Messages are reference-counted `Bytes`,
/// shared between the logs they match. rumqttd's defaults (0) make the router panic at the
/// first subscription; its sample config (100 MiB × 10 per filter) would keep up to 1 GiB
/// per filter.
const MAX_SEGMENT_SIZE: usize = 4 * 1024 * 1024;
const MAX_SEGMENT_COUNT: usize = 8;

/// QoS 0 messages the router reads from a log per sweep for one connection; rumqttd's
/// per-connection output buffer holds 200, so more buys nothing.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;

/// A publish that matches no filter makes rumqttd disconnect the publisher (without
/// `dynamic_filters`) or open a new commit log per distinct topic (with them), one per
/// `dev2app/<did>` for ever. A log on `#` that nobody needs to read gives every topic a
/// match and bounds that memory to one log.
const CATCH_ALL_FILTER: &str = "#";

/// Queue between [`Bus::publish`](super::Bus::publish) and the publish thread.
const PUBLISH_QUEUE: usize = 4_096;

/// Attempts at an ephemeral listener port: the port is found by binding port 0 and handed
/// to rumqttd, which binds it again; another socket may take it in between.
const LISTEN_ATTEMPTS: usize = 3;

/// Distinct link ids (and thread names) for the brokers of one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(super) struct Publisher {
    tx: mpsc::Sender<BusMessage>,
}

impl Publisher {
    pub(super) async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        let message = BusMessage { topic: topic.to_owned(), payload };
        self.tx.send_timeout(message, PUBLISH_TIMEOUT).await.map_err(|e| match e {
            mpsc::error::SendTimeoutError::Timeout(_) => BusError::Overloaded { topic: topic.to_owned() },
            mpsc::error::SendTimeoutError::Closed(_) => BusError::Closed,
        })
    }
}

pub(super) async fn start(
    listen: Option<SocketAddr>,
    filters: Vec<String>,
    delivery: Delivery,
) -> Result<(Publisher, Option<SocketAddr>), BusError> {
    let Some(requested) = listen else {
        let (publisher, _broker) = start_router(None, filters, delivery).await?;
        return Ok((publisher, None));
    };
    if !requested.ip().is_loopback() {
        warn!(listen = %requested, "the embedded bus listener has no authentication; keep it on a private network");
    }
    // Each attempt needs a fresh `Delivery`; the channel sender is cloned for retries.
    let mut last_error = String::new();
    for attempt in 1..=LISTEN_ATTEMPTS {
        let addr = if requested.port() == 0 { reserve_port(requested)? } else { requested };
        let delivery = Delivery::new(delivery.tx.clone(), delivery.shared.clone());
        let (publisher, broker) = start_router(Some(addr), filters.clone(), delivery).await?;
        let exited = spawn_listener(broker, addr)?;
        match wait_listening(addr, exited).await {
            Ok(()) => return Ok((publisher, Some(addr))),
            Err(e) if requested.port() == 0 => {
                warn!(listen = %addr, attempt, error = %e, "embedded bus listener did not come up; trying another port");
                last_error = e;
            }
            Err(e) => return Err(BusError::Embedded(format!("listener on {addr}: {e}"))),
        }
    }
    Err(BusError::Embedded(format!("listener on {requested}: {last_error}")))
}

/// The router, the gateway's link, its subscriptions (acknowledged) and the two link
/// threads. The broker is returned for the listener; without one it can be dropped, the
/// router runs on.
async fn start_router(
    listen: Option<SocketAddr>,
    filters: Vec<String>,
    delivery: Delivery,
) -> Result<(Publisher, Broker), BusError> {
    // `Broker::link` and the subscriptions block on the router: off the runtime.
    tokio::task::spawn_blocking(move || {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let broker = Broker::new(broker_config(listen));
        let link_id = format!("gateway-bus-{id}");
        let (mut link_tx, mut link_rx) =
            broker.link(&link_id).map_err(|e| BusError::Embedded(format!("in-process link: {e}")))?;
        let mut delivery = delivery;
        subscribe(&mut link_tx, &mut link_rx, &filters, &mut delivery)?;

        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        spawn_thread(format!("bus-receive-{id}"), move || run_receiver(link_rx, delivery))?;
        spawn_thread(format!("bus-publish-{id}"), move || run_publisher(link_tx, rx))?;
        Ok((Publisher { tx }, broker))
    })
    .await
    .map_err(|e| BusError::Embedded(format!("setup task: {e}")))?
}

fn broker_config(listen: Option<SocketAddr>) -> Config {
    let router = RouterConfig {
        max_connections: MAX_CONNECTIONS,
        max_outgoing_packet_count: MAX_OUTGOING_PACKET_COUNT,
        max_segment_size: MAX_SEGMENT_SIZE,
        max_segment_count: MAX_SEGMENT_COUNT,
        initialized_filters: Some(vec![CATCH_ALL_FILTER.to_owned()]),
        ..RouterConfig::default()
    };
    let v4 = listen.map(|listen| {
        let settings = ServerSettings {
            name: "bus-listener".to_owned(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 10_000,
                // rumqttd checks the remaining length of incoming packets against this.
                max_payload_size: MAX_PACKET_SIZE,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: false,
            },
        };
        HashMap::from([("bus".to_owned(), settings)])
    });
    Config { id: 0, router, v4, ..Config::default() }
}

/// Subscribes one filter per SUBSCRIBE and waits for every SUBACK, so that the caller may
/// publish as soon as `Bus::start` returns.
fn subscribe(
    link_tx: &mut LinkTx,
    link_rx: &mut LinkRx,
    filters: &[String],
    delivery: &mut Delivery,
) -> Result<(), BusError> {
    for filter in filters {
        link_tx.subscribe(filter.as_str()).map_err(|e| BusError::Embedded(format!("subscribe {filter:?}: {e}")))?;
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut acked = 0;
    while acked < filters.len() {
        match link_rx.recv_deadline(deadline) {
            // The link's only acks are SUBACKs: its CONNACK was taken by `Broker::link`
            // and QoS 0 publishes are not acknowledged. (rumqttd does not export `Ack`.)
            Ok(Some(Notification::DeviceAck(_))) => acked += 1,
            Ok(Some(notification)) => {
                if !handle(notification, link_rx, delivery) {
                    return Err(BusError::Embedded("the router dropped the in-process link".to_owned()));
                }
            }
            Ok(None) => {}
            Err(e) => return Err(BusError::Embedded(format!("waiting for subscription acks: {e}"))),
        }
    }
    Ok(())
}

fn run_receiver(mut link_rx: LinkRx, mut delivery: Delivery) {
    loop {
        match link_rx.recv() {
            Ok(Some(notification)) => {
                if !handle(notification, &mut link_rx, &mut delivery) {
                    break;
                }
            }
            Ok(None) => {}
            // The router dropped the link: after our own DISCONNECT, or it rejected a packet.
            Err(e) => {
                debug!(error = %e, "embedded bus link closed");
                break;
            }
        }
    }
}

/// One notification from the router; false when the link is finished.
fn handle(notification: Notification, link_rx: &mut LinkRx, delivery: &mut Delivery) -> bool {
    match notification {
        Notification::Forward(forward) => {
            let publish = forward.publish;
            match String::from_utf8(publish.topic.to_vec()) {
                Ok(topic) => delivery.deliver(topic, publish.payload),
                Err(_) => warn!("embedded bus: dropped a message whose topic is not UTF-8"),
            }
            true
        }
        // The router pauses a link whose output buffer filled up until it says it is
        // ready again; without this the link would go deaf after 200 queued messages.
        Notification::Unschedule => match link_rx.ready() {
            Ok(()) => true,
            Err(e) => {
                error!(error = %e, "embedded bus: cannot reschedule the link");
                false
            }
        },
        Notification::Disconnect(..) => {
            error!("embedded bus: the router disconnected the in-process link");
            false
        }
        _ => true,
    }
}

fn run_publisher(mut link_tx: LinkTx, mut rx: mpsc::Receiver<BusMessage>) {
    while let Some(message) = rx.blocking_recv() {
        if let Err(e) = link_tx.publish(message.topic, message.payload) {
            error!(error = %e, "embedded bus: the router is gone; publishing stops");
            return;
        }
    }
    // Every `Bus` clone is gone. `LinkTx::send` is async in name only (it never awaits), so
    // it completes on the first poll.
    let disconnect = Packet::Disconnect(Disconnect { reason_code: DisconnectReasonCode::NormalDisconnection }, None);
    match link_tx.send(disconnect).now_or_never() {
        Some(Ok(_)) => debug!("embedded bus link disconnected"),
        Some(Err(e)) => debug!(error = %e, "embedded bus: router already gone"),
        None => warn!("embedded bus: link disconnect did not complete"),
    }
}

fn spawn_thread(name: String, f: impl FnOnce() + Send + 'static) -> Result<(), BusError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map(drop)
        .map_err(|e| BusError::Embedded(format!("spawning thread {name}: {e}")))
}

/// The port the OS gives for port 0. rumqttd only takes an address, so the port is found
/// here and handed over.
fn reserve_port(requested: SocketAddr) -> Result<SocketAddr, BusError> {
    std::net::TcpListener::bind(requested)
        .and_then(|listener| listener.local_addr())
        .map_err(|e| BusError::Embedded(format!("cannot bind {requested}: {e}")))
}

/// Runs `Broker::start` (the listeners) on its own thread. The receiver resolves when it
/// returns, which only happens when the listener failed (rumqttd logs why).
fn spawn_listener(mut broker: Broker, addr: SocketAddr) -> Result<oneshot::Receiver<String>, BusError> {
    let (exited_tx, exited_rx) = oneshot::channel();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    spawn_thread(format!("bus-broker-{id}"), move || {
        let reason = match broker.start() {
            Ok(()) => "listener stopped (address in use?)".to_owned(),
            Err(e) => e.to_string(),
        };
        error!(listen = %addr, reason, "embedded bus listener stopped");
        let _ = exited_tx.send(reason);
    })?;
    Ok(exited_rx)
}

/// Waits until the listener answers an MQTT CONNECT, or its thread gives up. rumqttd has no
/// readiness signal, so this polls; the handshake also proves it is our broker listening,
/// not some other socket that took the port.
async fn wait_listening(addr: SocketAddr, mut exited: oneshot::Receiver<String>) -> Result<(), String> {
    let target = probe_target(addr);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(reason) = exited.try_recv() {
            return Err(reason);
        }
        let probe = tokio::time::timeout(Duration::from_secs(1), probe(target)).await;
        match probe {
            Ok(Ok(())) => {
                // A listener that failed to bind exits at once, so by now its thread has
                // said so, and whatever answered is someone else's.
                return match exited.try_recv() {
                    Ok(reason) => Err(reason),
                    Err(_) => Ok(()),
                };
            }
            Ok(Err(e)) => debug!(listen = %addr, error = %e, "embedded bus listener not up yet"),
            Err(_) => debug!(listen = %addr, "embedded bus listener probe timed out"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no MQTT answer within {START_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn probe_target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s, client id `bus-probe-<n>`), expect
/// CONNACK accepted, then DISCONNECT.
async fn probe(target: SocketAddr) -> std::io::Result<()> {
    let client_id = format!("bus-probe-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let mut variable = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A];
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend_from_slice(&variable);

    let mut stream = tokio::net::TcpStream::connect(target).await?;
    stream.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(format!("unexpected CONNACK {connack:02x?}")));
    }
    stream.write_all(&[0xE0, 0x00]).await?;
    Ok(())
}
