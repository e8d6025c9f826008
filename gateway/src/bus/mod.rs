//! The message bus: an MQTT broker that gateway processes and backend consumers share.
//!
//! # The broker sits behind the device edge
//!
//! Devices never talk to the broker. They log in to the gateway's own MQTT edge, which
//! authenticates them (did + passcode) and enforces per-device topic ACLs; the edge then
//! publishes and subscribes on this bus on their behalf. The broker cannot face devices:
//!
//! - GAgent speaks MQTT 3.1 (`MQIsdp`, level 3, `device-protocol.md#connect`); rumqttd 0.20 closes
//!   such a socket without a CONNACK.
//! - rumqttd has no per-topic ACL hook, so one device could read or write another's topics.
//! - In-process links see topic, payload and QoS of a message, never who published it, so a
//!   `cli2ser_req` (whose topic carries no did, `device-protocol.md#topics`) could not be
//!   attributed to a device.
//! - rumqttd packs every pending packet into one TCP write; GAgent handles only the first packet of
//!   a `recv` and drops PUBLISHes longer than 1024 bytes
//!   (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`).
//!
//! Behind the edge none of this matters: every participant is trusted code of ours.
//!
//! # Topics
//!
//! The bus carries the device topics of `device-protocol.md#topics` unchanged, so consumers see the
//! names GAgent uses:
//!
//! | topic | published by | subscribed by |
//! |---|---|---|
//! | `ser2cli_res/<did>` | any gateway or backend (firmware push, V1V3 blob) | every gateway: `ser2cli_res/+` |
//! | `ser2cli_noti/<product_key>` | backend | every gateway: `ser2cli_noti/+` |
//! | `app2dev/<did>/<app_client_id>` | apps | every gateway: `app2dev/#` |
//! | `dev2app/<did>[/<app_client_id>]` | the gateway holding the device's session | apps, backend |
//!
//! Every gateway receives every downlink and delivers those for the devices whose session it
//! holds; the others ignore them. A participant receives its own publishes when it is
//! subscribed to them (MQTT 3.1.1 has no "no local"), which is what lets a single gateway
//! push to its own devices. All traffic is QoS 0 and not retained. Topics with wildcards, `$`
//! topics and packets over [`MAX_PACKET_SIZE`] are refused before they reach a broker, since
//! both brokers answer such a packet by dropping the whole connection.
//!
//! # Modes
//!
//! - **Embedded** (the default): rumqttd 0.20 inside the process, reached through an
//!   in-process link, optionally with an MQTT 3.1.1 TCP listener for backend consumers. The
//!   listener has no authentication: bind it to loopback or a private network.
//! - **External**: rumqttc 0.25 to a broker several gateways share (Mosquitto, EMQX). The
//!   connection comes back with back-off for ever and the subscriptions are made again after
//!   every reconnect. Client ids must be unique per process (the caller should add a random
//!   suffix): two processes with one id make the broker kick them in turn, which shows up as
//!   an ever-growing `reconnects` count.

mod embedded;
mod external;
mod topic;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Largest MQTT packet the bus sends or accepts, in both modes. V1V3 devices receive their firmware
/// over MQTT (`device-protocol.md#v1v3-ota`), in blobs of hundreds of KiB; rumqttc's default
/// is 10 KiB.
pub const MAX_PACKET_SIZE: usize = 4 * 1024 * 1024;

/// Capacity of the channel that [`Bus::start`] returns. Messages that arrive while it is
/// full are dropped and counted in [`BusStats::dropped`]; the broker is never held up.
pub const RECEIVE_CAPACITY: usize = 65_536;

/// How long [`Bus::publish`] may wait for room in the outgoing queue.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`Bus::start`] tries to reach an external broker, or to see the embedded
/// listener up, before it gives up.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub topic: String,
    pub payload: Bytes,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// rumqttd in this process. `listen` adds an MQTT 3.1.1 TCP listener (no authentication)
    /// for backend consumers; port 0 picks a free port, see [`Bus::listen_addr`].
    Embedded { listen: Option<SocketAddr> },
    /// A broker shared by several gateways. `client_id` must be unique per process.
    External { host: String, port: u16, client_id: String, username: Option<String>, password: Option<String> },
}

impl Default for BusConfig {
    fn default() -> BusConfig {
        BusConfig::Embedded { listen: None }
    }
}

/// Counters since [`Bus::start`], shared by all clones of one bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Messages accepted by [`Bus::publish`].
    pub published: u64,
    /// Messages handed to the receiver.
    pub received: u64,
    /// Connections to the external broker made after the first one.
    pub reconnects: u64,
    /// Messages lost because the receiver was full.
    pub dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid bus configuration: {0}")]
    Config(String),
    #[error("invalid bus topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: &'static str },
    #[error("invalid bus subscription filter {filter:?}: {reason}")]
    InvalidFilter { filter: String, reason: &'static str },
    #[error("payload of {size} bytes for {topic} is over the bus limit of {max} bytes")]
    PayloadTooLarge { topic: String, size: usize, max: usize },
    #[error("cannot connect to the MQTT broker at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the MQTT broker at {addr} refused the subscription to {filter:?}")]
    SubscriptionRefused { addr: String, filter: String },
    #[error("embedded MQTT broker: {0}")]
    Embedded(String),
    #[error("bus overloaded: the publish to {topic} could not be queued")]
    Overloaded { topic: String },
    #[error("the bus has stopped")]
    Closed,
}

/// A handle to the bus; clones share one connection. The connection ends, and the receiver
/// returned by [`Bus::start`] yields `None`, when the last clone is dropped.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: Publisher,
    listen_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
}

enum Publisher {
    Embedded(embedded::Publisher),
    External(external::Publisher),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.inner.publisher {
            Publisher::Embedded(_) => "embedded",
            Publisher::External(_) => "external",
        };
        f.debug_struct("Bus").field("mode", &mode).field("listen_addr", &self.inner.listen_addr).finish()
    }
}

impl Bus {
    /// Starts the bus and subscribes to `subscriptions` (MQTT filters). When this returns,
    /// the subscriptions are in place: a message published afterwards reaches the receiver.
    ///
    /// External mode fails, naming `host:port`, only when no connection could be made within
    /// a few seconds; after that it reconnects for ever.
    pub async fn start(
        config: BusConfig,
        subscriptions: &[&str],
    ) -> Result<(Bus, mpsc::Receiver<BusMessage>), BusError> {
        Bus::start_within(config, subscriptions, START_TIMEOUT).await
    }

    async fn start_within(
        config: BusConfig,
        subscriptions: &[&str],
        start_timeout: Duration,
    ) -> Result<(Bus, mpsc::Receiver<BusMessage>), BusError> {
        for filter in subscriptions {
            topic::validate_filter(filter)?;
        }
        let filters: Vec<String> = subscriptions.iter().map(|f| (*f).to_owned()).collect();
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(RECEIVE_CAPACITY);
        let delivery = Delivery::new(tx, shared.clone());
        let (publisher, listen_addr) = match config {
            BusConfig::Embedded { listen } => {
                let (publisher, listen_addr) = embedded::start(listen, filters, delivery).await?;
                (Publisher::Embedded(publisher), listen_addr)
            }
            BusConfig::External { host, port, client_id, username, password } => {
                let options = external::Options { host, port, client_id, username, password };
                let publisher = external::start(options, filters, delivery, start_timeout).await?;
                (Publisher::External(publisher), None)
            }
        };
        Ok((Bus { inner: Arc::new(Inner { publisher, listen_addr, shared }) }, rx))
    }

    /// Publishes at QoS 0. Waits at most a couple of seconds for room in the outgoing queue
    /// (not at all while the external broker is unreachable) and then fails with
    /// [`BusError::Overloaded`].
    pub async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), BusError> {
        topic::validate_topic(topic)?;
        topic::check_publish_size(topic, payload.len())?;
        match &self.inner.publisher {
            Publisher::Embedded(p) => p.publish(topic, payload).await?,
            Publisher::External(p) => p.publish(topic, payload, &self.inner.shared).await?,
        }
        self.inner.shared.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The embedded broker's TCP listener, with the real port when port 0 was asked for.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.listen_addr
    }

    pub fn stats(&self) -> BusStats {
        let shared = &self.inner.shared;
        BusStats {
            published: shared.published.load(Ordering::Relaxed),
            received: shared.received.load(Ordering::Relaxed),
            reconnects: shared.reconnects.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Counters and connection state shared by the handles and the background workers.
#[derive(Default)]
struct Shared {
    published: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    dropped: AtomicU64,
    /// External mode: whether the broker connection is up.
    connected: AtomicBool,
}

/// Hands received messages to the caller's channel without ever waiting: a full channel
/// costs a message, not a stalled broker link.
struct Delivery {
    tx: mpsc::Sender<BusMessage>,
    shared: Arc<Shared>,
    dropping: bool,
}

impl Delivery {
    fn new(tx: mpsc::Sender<BusMessage>, shared: Arc<Shared>) -> Delivery {
        Delivery { tx, shared, dropping: false }
    }

    fn deliver(&mut self, topic: String, payload: Bytes) {
        // Counted before the send, so that whoever takes the message sees it counted.
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(BusMessage { topic, payload });
        if sent.is_err() {
            self.shared.received.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => {
                if self.dropping {
                    self.dropping = false;
                    let dropped = self.shared.dropped.load(Ordering::Relaxed);
                    info!(dropped_total = dropped, "bus receiver has room again");
                }
            }
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.dropping {
                    self.dropping = true;
                    warn!(topic = %message.topic, capacity = RECEIVE_CAPACITY, "bus receiver full; dropping messages");
                }
            }
            // Nobody listens (a publish-only user): nothing to count.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
