//! rumqttc 0.25 to a broker shared by several gateways.
//!
//! The event loop runs in one tokio task. rumqttc reconnects when it is polled again after
//! an error, but with a clean session the broker forgets the subscriptions and rumqttc does
//! not make them again; so the task queues the SUBSCRIBE itself on every CONNACK, ahead of
//! any publish waiting in the queue.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, Request, SubAck, Subscribe,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{BusError, Delivery, MAX_PACKET_SIZE, PUBLISH_TIMEOUT, Shared};

/// Requests (mostly publishes) queued for the event loop.
const REQUEST_QUEUE: usize = 4_096;
/// The broker drops us after 1.5 × this without traffic; rumqttc pings in between.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// One TCP connect + CONNACK attempt.
const CONNECT_TIMEOUT_SECS: u64 = 3;
/// Pause between failed attempts while `Bus::start` is still trying.
const START_RETRY: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub(super) struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

pub(super) struct Publisher {
    client: AsyncClient,
    task: AbortHandle,
    /// How many times the broker has confirmed the subscriptions (1 after `start`).
    #[cfg(test)]
    pub(super) subscribed: watch::Receiver<u64>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // The event loop keeps a sender of its own request channel, so it would never see
        // the last client go; end it here, which also closes the caller's receiver.
        self.task.abort();
    }
}

impl Publisher {
    pub(super) async fn publish(&self, topic: &str, payload: Bytes, shared: &Shared) -> Result<(), BusError> {
        // While disconnected, queue what fits and fail at once when the queue is full
        // rather than hold every caller for the timeout. (`timeout` polls the send first,
        // so a zero timeout still succeeds when there is room.)
        let wait = if shared.connected.load(Ordering::Relaxed) { PUBLISH_TIMEOUT } else { Duration::ZERO };
        let send = self.client.publish_bytes(topic, QoS::AtMostOnce, false, payload);
        match tokio::time::timeout(wait, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => Err(BusError::Overloaded { topic: topic.to_owned() }),
        }
    }
}

pub(super) async fn start(
    options: Options,
    filters: Vec<String>,
    delivery: Delivery,
    start_timeout: Duration,
) -> Result<Publisher, BusError> {
    let addr = format!("{}:{}", options.host, options.port);
    let mqtt_options = mqtt_options(options)?;
    let (client, eventloop) = AsyncClient::new(mqtt_options, REQUEST_QUEUE);
    let (subscribed_tx, _subscribed_rx) = watch::channel(0u64);
    let mut connection = Connection { eventloop, filters, addr, delivery, subscribed: subscribed_tx };
    connection.connect_first(start_timeout).await?;
    #[cfg(test)]
    let subscribed = connection.subscribed.subscribe();
    let task = tokio::spawn(connection.run()).abort_handle();
    Ok(Publisher {
        client,
        task,
        #[cfg(test)]
        subscribed,
    })
}

fn mqtt_options(options: Options) -> Result<MqttOptions, BusError> {
    let Options { host, port, client_id, username, password } = options;
    if host.is_empty() {
        return Err(BusError::Config("external bus: empty broker host".to_owned()));
    }
    if client_id.is_empty() {
        return Err(BusError::Config(
            "external bus: empty client id (it must be unique per gateway process)".to_owned(),
        ));
    }
    let mut mqtt_options = MqttOptions::new(client_id, host, port);
    mqtt_options
        .set_keep_alive(KEEP_ALIVE)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE)
        .set_request_channel_capacity(REQUEST_QUEUE);
    match (username, password) {
        (Some(user), password) => {
            mqtt_options.set_credentials(user, password.unwrap_or_default());
        }
        (None, Some(_)) => {
            // MQTT 3.1.1 §3.1.2.9: no password without a user name.
            return Err(BusError::Config("external bus: a password needs a username".to_owned()));
        }
        (None, None) => {}
    }
    Ok(mqtt_options)
}

struct Connection {
    eventloop: EventLoop,
    filters: Vec<String>,
    addr: String,
    delivery: Delivery,
    subscribed: watch::Sender<u64>,
}

enum Step {
    Connected,
    Subscribed,
    Other,
}

impl Connection {
    /// Until the first SUBACK (or CONNACK without subscriptions), retrying for `timeout`.
    async fn connect_first(&mut self, timeout: Duration) -> Result<(), BusError> {
        // Network options live on the event loop, not in `MqttOptions`.
        let mut network = self.eventloop.network_options();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        self.eventloop.set_network_options(network);

        let deadline = Instant::now() + timeout;
        let mut last_error: Option<String> = None;
        loop {
            let polled = tokio::time::timeout_at(deadline, self.eventloop.poll()).await;
            let reason = match polled {
                Ok(Ok(event)) => match self.on_event(event)? {
                    Step::Connected if self.filters.is_empty() => return Ok(()),
                    Step::Subscribed => return Ok(()),
                    Step::Connected | Step::Other => continue,
                },
                // Wrong credentials or a banned client id will not get better by waiting.
                Ok(Err(ConnectionError::ConnectionRefused(code))) => {
                    return Err(self.connect_error(format!("connection refused: {code:?}")));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => {
                    let reason = last_error.unwrap_or_else(|| format!("no answer within {timeout:?}"));
                    return Err(self.connect_error(reason));
                }
            };
            debug!(broker = %self.addr, error = %reason, "bus: first connection attempt failed");
            last_error = Some(reason);
            self.mark_disconnected();
            tokio::time::sleep_until(deadline.min(Instant::now() + START_RETRY)).await;
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut attempt: u32 = 0;
        loop {
            match self.eventloop.poll().await {
                Ok(event) => match self.on_event(event) {
                    Ok(Step::Connected) => {
                        self.delivery.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        info!(broker = %self.addr, failed_attempts = attempt, "bus reconnected to the MQTT broker");
                        attempt = 0;
                        backoff.reset();
                    }
                    Ok(Step::Subscribed | Step::Other) => {}
                    // A refusal is logged in `on_event`; the subscriptions come back on the
                    // next reconnect, which is all that can be done about it.
                    Err(_) => {}
                },
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    let was_connected = self.mark_disconnected();
                    let delay = backoff.next_delay();
                    if was_connected {
                        warn!(broker = %self.addr, error = %e, retry_in = ?delay, "bus lost the MQTT broker");
                    } else {
                        attempt += 1;
                        warn!(broker = %self.addr, attempt, error = %e, retry_in = ?delay, "bus cannot reach the MQTT broker");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Result<Step, BusError> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.delivery.shared.connected.store(true, Ordering::Relaxed);
                self.queue_subscriptions();
                Ok(Step::Connected)
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                self.check_suback(&ack)?;
                self.subscribed.send_modify(|n| *n += 1);
                debug!(broker = %self.addr, filters = ?self.filters, "bus subscriptions confirmed");
                Ok(Step::Subscribed)
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.delivery.deliver(publish.topic, publish.payload);
                Ok(Step::Other)
            }
            _ => Ok(Step::Other),
        }
    }

    /// On a new clean session `EventLoop::poll` has already cleared its pending queue when
    /// it yields the CONNACK, so the SUBSCRIBE put at its front goes out first.
    fn queue_subscriptions(&mut self) {
        if self.filters.is_empty() {
            return;
        }
        let filters = self.filters.iter().map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
        self.eventloop.pending.push_front(Request::Subscribe(Subscribe::new_many(filters)));
    }

    fn check_suback(&self, ack: &SubAck) -> Result<(), BusError> {
        let refused: Vec<&String> = ack
            .return_codes
            .iter()
            .zip(&self.filters)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, filter)| filter)
            .collect();
        match refused.first() {
            None => Ok(()),
            Some(filter) => {
                error!(broker = %self.addr, refused = ?refused, "the MQTT broker refused bus subscriptions");
                Err(BusError::SubscriptionRefused { addr: self.addr.clone(), filter: (*filter).clone() })
            }
        }
    }

    /// Returns whether the connection was up.
    fn mark_disconnected(&self) -> bool {
        self.delivery.shared.connected.swap(false, Ordering::Relaxed)
    }

    fn connect_error(&self, reason: String) -> BusError {
        BusError::Connect { addr: self.addr.clone(), reason }
    }
}

/// Doubling delay with ±20 % jitter, so that gateways cut off together do not come back in
/// lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay.mul_f64(rand::random_range(0.8..1.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_MIN.mul_f64(0.8) && delays[0] <= BACKOFF_MIN.mul_f64(1.2));
        assert!(delays[1] >= BACKOFF_MIN.mul_f64(1.6));
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX.mul_f64(1.2)));
        assert!(delays[11] >= BACKOFF_MAX.mul_f64(0.8));
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_MIN.mul_f64(1.2));
    }

    #[test]
    fn options_are_checked() {
        let options = |client_id: &str, username: Option<&str>, password: Option<&str>| Options {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            client_id: client_id.to_owned(),
            username: username.map(str::to_owned),
            password: password.map(str::to_owned),
        };
        assert!(matches!(mqtt_options(options("", None, None)), Err(BusError::Config(_))));
        assert!(matches!(mqtt_options(options("gw", None, Some("p"))), Err(BusError::Config(_))));
        let ok = mqtt_options(options("gw-1", Some("u"), Some("p"))).expect("valid options");
        assert_eq!(ok.max_packet_size(), MAX_PACKET_SIZE);
        assert!(ok.clean_session());
    }
}
