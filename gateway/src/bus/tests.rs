//! Bus tests: the embedded broker on port 0, and the external mode against the Mosquitto at
//! 127.0.0.1:1883 (skipped loudly when it is unreachable, failed under CI). Every test uses
//! random dids, so parallel tests and other users of that Mosquitto do not see each other's
//! messages as theirs.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::*;

const MOSQUITTO_HOST: &str = "127.0.0.1";
const MOSQUITTO_PORT: u16 = 1883;
const WAIT: Duration = Duration::from_secs(10);

fn random_did() -> String {
    format!("t{:021x}", rand::random::<u128>() >> 44)
}

fn loopback_port_0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The next message on `topic`, skipping others (the shared Mosquitto carries strangers').
async fn recv_on(rx: &mut mpsc::Receiver<BusMessage>, topic: &str) -> BusMessage {
    let found = timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(message) if message.topic == topic => return message,
                Some(_) => continue,
                None => panic!("bus receiver closed while waiting for {topic}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("nothing on {topic} within {WAIT:?}"))
}

async fn embedded(subscriptions: &[&str]) -> (Bus, mpsc::Receiver<BusMessage>) {
    Bus::start(BusConfig::Embedded { listen: None }, subscriptions).await.expect("embedded bus starts")
}

fn external_config(client_id: &str) -> BusConfig {
    BusConfig::External {
        host: MOSQUITTO_HOST.to_owned(),
        port: MOSQUITTO_PORT,
        client_id: client_id.to_owned(),
        username: None,
        password: None,
    }
}

fn unique_client_id(role: &str) -> String {
    format!("bus-test-{role}-{:016x}", rand::random::<u64>())
}

/// Whether the shared Mosquitto is there; under CI its absence fails the test.
async fn mosquitto_available(test: &str) -> bool {
    let connect = tokio::net::TcpStream::connect((MOSQUITTO_HOST, MOSQUITTO_PORT));
    if matches!(timeout(Duration::from_secs(2), connect).await, Ok(Ok(_))) {
        return true;
    }
    assert!(!ota_testkit::in_ci(), "{test}: Mosquitto at {MOSQUITTO_HOST}:{MOSQUITTO_PORT} is unreachable under CI");
    eprintln!(
        "SKIPPED: {test}: Mosquitto at {MOSQUITTO_HOST}:{MOSQUITTO_PORT} is unreachable (under CI this test fails)"
    );
    false
}

/// A plain MQTT client with its event loop in a task: incoming publishes go to the channel,
/// and the returned receiver resolves at its first SUBACK.
fn spawn_client(
    options: MqttOptions,
    filter: Option<&str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<rumqttc::Publish>, tokio::sync::oneshot::Receiver<()>) {
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subacked_tx, subacked_rx) = tokio::sync::oneshot::channel();
    let filter = filter.map(str::to_owned);
    let subscriber = client.clone();
    tokio::spawn(async move {
        let mut subacked_tx = Some(subacked_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(filter) = &filter {
                        subscriber.subscribe(filter.clone(), QoS::AtMostOnce).await.expect("queue subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(subacked) = subacked_tx.take() {
                        let _ = subacked.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = tx.send(publish);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx, subacked_rx)
}

// ---------------------------------------------------------------------------------------
// Embedded

#[tokio::test]
async fn embedded_publish_reaches_the_subscriber_through_wildcard_filters() {
    let (bus, mut rx) = embedded(&["ser2cli_res/+", "app2dev/#"]).await;
    let did = random_did();
    let other_handle = bus.clone();

    other_handle.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"push")).await.unwrap();
    bus.publish(&format!("app2dev/{did}/usr6U9jtyINX27hmwBGLV05"), Bytes::from_static(b"p0")).await.unwrap();
    bus.publish(&format!("dev2app/{did}"), Bytes::from_static(b"not subscribed")).await.unwrap();

    let push = recv_on(&mut rx, &format!("ser2cli_res/{did}")).await;
    assert_eq!(push.payload, Bytes::from_static(b"push"));
    let p0 = recv_on(&mut rx, &format!("app2dev/{did}/usr6U9jtyINX27hmwBGLV05")).await;
    assert_eq!(p0.payload, Bytes::from_static(b"p0"));

    let stats = bus.stats();
    assert_eq!(stats.published, 3);
    assert_eq!(stats.received, 2);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.reconnects, 0);
}

#[tokio::test]
async fn embedded_unsubscribed_topics_are_not_delivered() {
    let (bus, mut rx) = embedded(&["ser2cli_res/+"]).await;
    let did = random_did();
    bus.publish(&format!("dev2app/{did}"), Bytes::from_static(b"nobody")).await.unwrap();
    bus.publish(&format!("ser2cli_res/{did}/extra"), Bytes::from_static(b"two levels")).await.unwrap();
    bus.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"sentinel")).await.unwrap();
    let first = timeout(WAIT, rx.recv()).await.expect("a message").expect("open");
    assert_eq!(first.topic, format!("ser2cli_res/{did}"));
    // The bus link is still alive after publishes no subscriber matched.
    bus.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(recv_on(&mut rx, &format!("ser2cli_res/{did}")).await.payload, Bytes::from_static(b"again"));
}

#[tokio::test]
async fn embedded_carries_a_1_mib_firmware_blob() {
    let (bus, mut rx) = embedded(&["ser2cli_res/+"]).await;
    let did = random_did();
    let blob: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    bus.publish(&format!("ser2cli_res/{did}"), blob.clone()).await.unwrap();
    let received = recv_on(&mut rx, &format!("ser2cli_res/{did}")).await;
    assert_eq!(received.payload.len(), blob.len());
    assert_eq!(received.payload, blob);
}

#[tokio::test]
async fn embedded_many_messages_arrive_in_order_past_the_router_buffer() {
    // rumqttd pauses a link after 200 queued forwards until it says it is ready again.
    let (bus, mut rx) = embedded(&["dev2app/#"]).await;
    let topic = format!("dev2app/{}", random_did());
    for i in 0..1_000u32 {
        bus.publish(&topic, Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
    }
    for i in 0..1_000u32 {
        let message = recv_on(&mut rx, &topic).await;
        assert_eq!(message.payload, Bytes::from(i.to_be_bytes().to_vec()));
    }
}

#[tokio::test]
async fn embedded_listener_bridges_tcp_consumers() {
    let (bus, mut rx) =
        Bus::start(BusConfig::Embedded { listen: Some(loopback_port_0()) }, &["app2dev/#"]).await.unwrap();
    let addr = bus.listen_addr().expect("listener address");
    assert_ne!(addr.port(), 0);
    let did = random_did();

    let mut options = MqttOptions::new(unique_client_id("consumer"), addr.ip().to_string(), addr.port());
    options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
    let (client, mut consumer_rx, subacked) = spawn_client(options, Some(&format!("dev2app/{did}/#")));
    timeout(WAIT, subacked).await.expect("consumer SUBACK in time").expect("consumer subscribed");

    // Bus → TCP consumer.
    bus.publish(&format!("dev2app/{did}"), Bytes::from_static(b"status")).await.unwrap();
    let seen = timeout(WAIT, consumer_rx.recv()).await.expect("consumer receives").expect("open");
    assert_eq!(seen.topic, format!("dev2app/{did}"));
    assert_eq!(seen.payload, Bytes::from_static(b"status"));

    // TCP consumer → bus.
    let topic = format!("app2dev/{did}/usr6U9jtyINX27hmwBGLV05");
    client.publish(topic.clone(), QoS::AtMostOnce, false, b"p0".to_vec()).await.unwrap();
    assert_eq!(recv_on(&mut rx, &topic).await.payload, Bytes::from_static(b"p0"));
}

#[tokio::test]
async fn two_embedded_buses_in_one_process_do_not_conflict() {
    let config = || BusConfig::Embedded { listen: Some(loopback_port_0()) };
    let (a, mut a_rx) = Bus::start(config(), &["ser2cli_res/+"]).await.unwrap();
    let (b, mut b_rx) = Bus::start(config(), &["ser2cli_res/+"]).await.unwrap();
    assert_ne!(a.listen_addr(), b.listen_addr());
    let did = random_did();
    a.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"a")).await.unwrap();
    b.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"b")).await.unwrap();
    assert_eq!(recv_on(&mut a_rx, &format!("ser2cli_res/{did}")).await.payload, Bytes::from_static(b"a"));
    assert_eq!(recv_on(&mut b_rx, &format!("ser2cli_res/{did}")).await.payload, Bytes::from_static(b"b"));
}

#[tokio::test]
async fn dropping_the_embedded_bus_closes_the_receiver() {
    let (bus, mut rx) = embedded(&["ser2cli_res/+"]).await;
    let clone = bus.clone();
    drop(bus);
    clone.publish(&format!("ser2cli_res/{}", random_did()), Bytes::new()).await.unwrap();
    assert!(timeout(WAIT, rx.recv()).await.expect("message").is_some());
    drop(clone);
    assert!(timeout(WAIT, rx.recv()).await.expect("receiver closes").is_none());
}

#[tokio::test]
async fn bad_topics_filters_and_oversized_payloads_are_refused_before_the_broker() {
    let err = Bus::start(BusConfig::Embedded { listen: None }, &["a/#/b"]).await.unwrap_err();
    assert!(matches!(err, BusError::InvalidFilter { .. }), "{err}");

    let (bus, mut rx) = embedded(&["ser2cli_res/+"]).await;
    let did = random_did();
    for topic in ["ser2cli_res/+", "app2dev/#", "$SYS/x", ""] {
        let err = bus.publish(topic, Bytes::new()).await.unwrap_err();
        assert!(matches!(err, BusError::InvalidTopic { .. }), "{topic:?}: {err}");
    }
    let too_big = Bytes::from(vec![0u8; MAX_PACKET_SIZE]);
    let err = bus.publish(&format!("ser2cli_res/{did}"), too_big).await.unwrap_err();
    assert!(matches!(err, BusError::PayloadTooLarge { .. }), "{err}");
    assert_eq!(bus.stats().published, 0);

    // None of that cost the link.
    bus.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"ok")).await.unwrap();
    assert_eq!(recv_on(&mut rx, &format!("ser2cli_res/{did}")).await.payload, Bytes::from_static(b"ok"));
}

#[test]
fn a_full_receiver_drops_and_counts_instead_of_waiting() {
    let shared = Arc::new(Shared::default());
    let (tx, mut rx) = mpsc::channel(2);
    let mut delivery = Delivery::new(tx, shared.clone());
    for i in 0..5u8 {
        delivery.deliver(format!("dev2app/{i}"), Bytes::new());
    }
    assert_eq!(shared.received.load(Ordering::Relaxed), 2);
    assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
    assert_eq!(rx.try_recv().map(|m| m.topic).ok().as_deref(), Some("dev2app/0"));
    delivery.deliver("dev2app/5".to_owned(), Bytes::new());
    assert_eq!(shared.received.load(Ordering::Relaxed), 3);
}

// ---------------------------------------------------------------------------------------
// External (Mosquitto)

#[tokio::test]
async fn external_start_fails_naming_the_broker_address() {
    // A port nothing listens on: bind port 0 and let it go.
    let port = std::net::TcpListener::bind(loopback_port_0()).unwrap().local_addr().unwrap().port();
    let config = BusConfig::External {
        host: "127.0.0.1".to_owned(),
        port,
        client_id: unique_client_id("nobroker"),
        username: None,
        password: None,
    };
    let err = Bus::start_within(config, &["ser2cli_res/+"], Duration::from_millis(800)).await.unwrap_err();
    assert!(matches!(err, BusError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn external_gateways_reach_each_other_through_the_shared_broker() {
    if !mosquitto_available("external_gateways_reach_each_other_through_the_shared_broker").await {
        return;
    }
    let subscriptions = ["ser2cli_res/+", "app2dev/#"];
    let (gateway_a, mut a_rx) = Bus::start(external_config(&unique_client_id("a")), &subscriptions).await.unwrap();
    let (gateway_b, mut b_rx) = Bus::start(external_config(&unique_client_id("b")), &subscriptions).await.unwrap();
    let did = random_did();

    // A firmware push decided on B, for a device whose session A holds: a V1V3 blob.
    let blob: Bytes = (0..1024 * 1024).map(|i| (i % 253) as u8).collect::<Vec<u8>>().into();
    gateway_b.publish(&format!("ser2cli_res/{did}"), blob.clone()).await.unwrap();
    assert_eq!(recv_on(&mut a_rx, &format!("ser2cli_res/{did}")).await.payload, blob);

    let topic = format!("app2dev/{did}/usr6U9jtyINX27hmwBGLV05");
    gateway_a.publish(&topic, Bytes::from_static(b"p0")).await.unwrap();
    assert_eq!(recv_on(&mut b_rx, &topic).await.payload, Bytes::from_static(b"p0"));
    assert!(gateway_a.stats().received >= 1);
    assert_eq!(gateway_b.stats().published, 1);
}

#[tokio::test]
async fn external_subscriptions_come_back_after_a_reconnect() {
    if !mosquitto_available("external_subscriptions_come_back_after_a_reconnect").await {
        return;
    }
    let client_id = unique_client_id("kicked");
    let (gateway, mut rx) = Bus::start(external_config(&client_id), &["ser2cli_res/+"]).await.unwrap();
    let (other, _other_rx) = Bus::start(external_config(&unique_client_id("other")), &[]).await.unwrap();
    let mut subscribed = match &gateway.inner.publisher {
        Publisher::External(p) => p.subscribed.clone(),
        Publisher::Embedded(_) => unreachable!("external config"),
    };
    assert_eq!(*subscribed.borrow(), 1);

    // A second client with the same id makes Mosquitto drop the gateway's session. It is
    // not polled after its CONNACK, so it does not fight back when the gateway returns.
    let (_intruder, mut intruder_loop) =
        AsyncClient::new(MqttOptions::new(&client_id, MOSQUITTO_HOST, MOSQUITTO_PORT), 8);
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = intruder_loop.poll().await.expect("intruder connects") {
                return;
            }
        }
    })
    .await
    .expect("intruder CONNACK in time");

    timeout(Duration::from_secs(20), subscribed.wait_for(|n| *n >= 2))
        .await
        .expect("re-subscribed in time")
        .expect("bus alive");
    drop(intruder_loop);
    assert!(gateway.stats().reconnects >= 1);

    let did = random_did();
    other.publish(&format!("ser2cli_res/{did}"), Bytes::from_static(b"after reconnect")).await.unwrap();
    assert_eq!(recv_on(&mut rx, &format!("ser2cli_res/{did}")).await.payload, Bytes::from_static(b"after reconnect"));
}

#[tokio::test]
async fn dropping_the_external_bus_closes_the_receiver() {
    if !mosquitto_available("dropping_the_external_bus_closes_the_receiver").await {
        return;
    }
    let (bus, mut rx) = Bus::start(external_config(&unique_client_id("drop")), &["ser2cli_res/+"]).await.unwrap();
    drop(bus);
    // Strangers' messages may still be queued; the channel must end.
    while timeout(WAIT, rx.recv()).await.expect("receiver closes").is_some() {}
}
