//! The device doors under attack and abuse: confinement to a device's own topics, refused
//! logins, malformed MQTT and HTTP that fail only their own connection, registration rules.

use std::time::Duration;

use bytes::BytesMut;
use gagent_codec::mqtt::{self, Connect, ConnectReturnCode, Packet, Protocol, Publish, Subscribe};
use gagent_codec::{ServiceMessage, publish_qos0};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::device_plane::Plane;

/// Registers over the device HTTP API and returns the did.
pub(crate) async fn register(p: &Plane, mac: &str, passcode: &str) -> String {
    let body = format!("passcode={passcode}&mac={mac}&product_key={}", p.pk);
    let r = reqwest::Client::new()
        .post(format!("http://{}/dev/devices", p.gw.http_addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().await.unwrap();
    text.strip_prefix("did=").unwrap().to_owned()
}

/// A hand-driven MQTT client (also used by `adoption.rs`).
pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub(crate) async fn connect(p: &Plane, did: &str, passcode: &str, protocol: Protocol) -> (Raw, ConnectReturnCode) {
        Self::connect_from(p, [127, 0, 0, 1], did, passcode, protocol).await
    }

    /// The same from another loopback address (the source address the edge sees).
    pub(crate) async fn connect_from(
        p: &Plane,
        local: [u8; 4],
        did: &str,
        passcode: &str,
        protocol: Protocol,
    ) -> (Raw, ConnectReturnCode) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((std::net::Ipv4Addr::from(local), 0).into()).unwrap();
        let mut stream = socket.connect(p.gw.mqtt_addr).await.unwrap();
        let connect = Packet::Connect(Connect::gagent(protocol, did, passcode, 120)).encode().unwrap();
        stream.write_all(&connect).await.unwrap();
        let mut raw = Raw { stream, buf: BytesMut::new() };
        match raw.next().await {
            Some(Packet::Connack(c)) => {
                let code = c.code;
                (raw, code)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, packet: Packet) {
        self.stream.write_all(&packet.encode().unwrap()).await.unwrap();
    }

    /// The next packet, or `None` when the server closed the connection or stayed silent 3 s.
    pub(crate) async fn next(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = mqtt::decode(&mut self.buf, 1 << 20).unwrap() {
                return Some(p);
            }
            let mut chunk = [0u8; 2048];
            match tokio::time::timeout(Duration::from_secs(3), self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub(crate) async fn subscribe(&mut self, pkid: u16, filter: &str) -> u8 {
        self.send(Packet::Subscribe(Subscribe { pkid, filters: vec![(filter.to_owned(), 0)] })).await;
        match self.next().await {
            Some(Packet::Suback(s)) => {
                assert_eq!(s.pkid, pkid);
                s.return_codes[0]
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_confined_to_their_own_topics() {
    let p = Plane::start().await;
    let a = register(&p, "0A0000000001", "AAAAAAAAAA").await;
    let b = register(&p, "0A0000000002", "BBBBBBBBBB").await;
    // A speaks MQTT 3.1.1, whose SUBACK has a failure code (3.1 sessions: `mqtt31_*` below).
    let (mut ra, code) = Raw::connect(&p, &a, "AAAAAAAAAA", Protocol::V311).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    let (mut rb, code) = Raw::connect(&p, &b, "BBBBBBBBBB", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);

    // A may take its own three topics, one SUBACK each, and nothing of B's.
    assert_eq!(ra.subscribe(1, &format!("ser2cli_noti/{}", p.pk)).await, 0);
    assert_eq!(ra.subscribe(2, &format!("ser2cli_res/{a}")).await, 0);
    assert_eq!(ra.subscribe(3, &format!("app2dev/{a}/#")).await, 0);
    assert_eq!(ra.subscribe(4, &format!("ser2cli_res/{b}")).await, 0x80);
    assert_eq!(ra.subscribe(5, &format!("app2dev/{b}/#")).await, 0x80);
    assert_eq!(ra.subscribe(6, "ser2cli_res/+").await, 0x80);
    assert_eq!(ra.subscribe(7, "#").await, 0x80);
    assert_eq!(rb.subscribe(1, &format!("ser2cli_res/{b}")).await, 0);
    let stats = p.gw.edge.stats();
    assert_eq!(stats.denied_subscriptions.load(std::sync::atomic::Ordering::Relaxed), 4);

    // A publishing on B's topics is dropped and counted; B receives nothing.
    let before = stats.denied_publishes.load(std::sync::atomic::Ordering::Relaxed);
    ra.send(Packet::Publish(Publish::qos0(format!("dev2app/{b}"), vec![0, 0, 0, 3, 3, 0, 0, 0x91]))).await;
    ra.send(Packet::Publish(Publish::qos0(
        format!("cli2ser_req/{b}"),
        ServiceMessage::AppCountQuery.encode().unwrap(),
    )))
    .await;
    ra.send(Packet::Publish(Publish::qos0(format!("ser2cli_res/{b}"), vec![0, 0, 0, 3, 2, 0x11, 1]))).await;
    // A ping afterwards proves the three publishes were read (the edge answers in order).
    ra.send(Packet::PingReq).await;
    assert_eq!(ra.next().await, Some(Packet::PingResp));
    assert_eq!(stats.denied_publishes.load(std::sync::atomic::Ordering::Relaxed), before + 3);
    rb.send(Packet::PingReq).await;
    assert_eq!(rb.next().await, Some(Packet::PingResp), "B must get nothing but its own PINGRESP");

    // A large upload on its own topic, written in small pieces, is accepted
    // (device-protocol.md#mcu-uploads-over-1-kb).
    let uplinks = stats.uplinks.load(std::sync::atomic::Ordering::Relaxed);
    let big = publish_qos0(&format!("dev2app/{a}"), &vec![7u8; 50_000]).unwrap();
    for piece in big.chunks(700) {
        ra.stream.write_all(piece).await.unwrap();
    }
    ra.send(Packet::PingReq).await;
    assert_eq!(ra.next().await, Some(Packet::PingResp));
    assert_eq!(stats.uplinks.load(std::sync::atomic::Ordering::Relaxed), uplinks + 1);

    // Nor can A report versions for B over HTTP: the passcode is checked against the did.
    let report = |did: &str, pc: &str| {
        let body = format!("passcode={pc}&type=1&hard_version=00ESP826&soft_version=04020019");
        reqwest::Client::new()
            .post(format!("http://{}/dev/ota/v4.1/update_and_check/{did}", p.gw.http_addr))
            .body(body)
            .send()
    };
    assert_eq!(report(&b, "AAAAAAAAAA").await.unwrap().status(), StatusCode::FORBIDDEN);
    let own = report(&a, "AAAAAAAAAA").await.unwrap();
    assert_eq!(own.status(), StatusCode::BAD_REQUEST, "no update for A, but the report is taken");
    assert!(own.text().await.unwrap().contains("9500"));
    let b_view = crate::support::expect_status(p.s.get(&format!("/api/v1/devices/{b}")).await, StatusCode::OK).await;
    assert!(b_view["wifi"]["soft_version"].is_null(), "B's versions were not touched: {b_view:#}");

    // Its own 0x020F is answered on its own topic, identity from the session.
    ra.send(Packet::Publish(Publish::qos0("cli2ser_req", ServiceMessage::AppCountQuery.encode().unwrap()))).await;
    match ra.next().await {
        Some(Packet::Publish(reply)) => {
            assert_eq!(reply.topic, format!("ser2cli_res/{a}"));
            assert_eq!(ServiceMessage::decode(&reply.payload).unwrap(), ServiceMessage::AppCount { count: 0 });
        }
        other => panic!("expected the 0x0210 reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passcodes_and_unknown_dids_are_refused() {
    let p = Plane::start().await;
    let a = register(&p, "0A0000000011", "AAAAAAAAAA").await;
    let (_, code) = Raw::connect(&p, &a, "WRONGWRONG", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    let (_, code) = Raw::connect(&p, "AbCdEfGhIjKlMnOpQrStUv", "AAAAAAAAAA", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    // client id ≠ user name
    let mut stream = TcpStream::connect(p.gw.mqtt_addr).await.unwrap();
    let mut c = Connect::gagent(Protocol::V31, &a, "AAAAAAAAAA", 120);
    c.client_id = "someone-else".into();
    stream.write_all(&Packet::Connect(c).encode().unwrap()).await.unwrap();
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, ConnectReturnCode::IdentifierRejected as u8]);
    // MQTT 5 (level 5) is answered with "unacceptable protocol".
    let mut stream = TcpStream::connect(p.gw.mqtt_addr).await.unwrap();
    stream.write_all(&[0x10, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0]).await.unwrap();
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, ConnectReturnCode::UnacceptableProtocol as u8]);
    let (_, code) = Raw::connect(&p, &a, "AAAAAAAAAA", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted, "the right passcode still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mqtt_and_http_fail_only_their_own_connection() {
    let p = Plane::start().await;
    let a = register(&p, "0A0000000021", "AAAAAAAAAA").await;
    let (mut good, _) = Raw::connect(&p, &a, "AAAAAAAAAA", Protocol::V31).await;
    let junk: &[&[u8]] = &[
        b"\x00\x00\x00\x00garbage",
        b"\xF0\x00",
        b"\x10\xFF\xFF\xFF\xFF\x7F",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x10\x0C\x00\x06MQIsdp\x03\xC3\x00\x78",
    ];
    for bytes in junk {
        let mut s = TcpStream::connect(p.gw.mqtt_addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut sink = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(12), async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the edge kept a connection open after {bytes:?}");
    }
    // A device mid-session sending a bad packet loses only its own session.
    let b = register(&p, "0A0000000022", "BBBBBBBBBB").await;
    let (mut bad, _) = Raw::connect(&p, &b, "BBBBBBBBBB", Protocol::V31).await;
    bad.stream.write_all(b"\x82\x05\x00\x00\x00\x00\x00").await.unwrap();
    assert_eq!(bad.next().await, None, "a SUBSCRIBE with packet id 0 ends that session");
    good.send(Packet::PingReq).await;
    assert_eq!(good.next().await, Some(Packet::PingResp));

    let http = |bytes: &'static [u8]| async move {
        let mut s = TcpStream::connect(p.gw.http_addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(http(b"\x16\x03\x01\x02\x00\x01 junk\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(http(b"POST /dev/devices HTTP/1.1\r\nContent-Length: -5\r\n\r\n").await.starts_with("HTTP/1.1 400"));
    assert!(http(b"POST /dev/devices HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").await.starts_with("HTTP/1.1 413"));
    let missing = http(b"POST /dev/devices HTTP/1.1\r\nHost:x\r\nContent-Length:5\r\n\r\nmac=1").await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    assert!(missing.contains("missing_field"), "{missing}");
    let unknown = http(b"GET /dev/nothing/here HTTP/1.1\r\nHost:x\r\n\r\n").await;
    assert!(unknown.starts_with("HTTP/1.1 404"), "{unknown}");
    // And the gateway still serves a good request.
    let did = register(&p, "0A0000000023", "CCCCCCCCCC").await;
    assert_eq!(did.len(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_keeps_one_did_per_product_and_mac() {
    let p = Plane::start().await;
    let first = register(&p, "0a0000000031", "AAAAAAAAAA").await;
    // A reset device registers again with a new passcode: same did, new passcode works.
    let again = register(&p, "0A:00:00:00:00:31", "DDDDDDDDDD").await;
    assert_eq!(first, again);
    let (_, code) = Raw::connect(&p, &first, "AAAAAAAAAA", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::BadUsernameOrPassword);
    let (_, code) = Raw::connect(&p, &first, "DDDDDDDDDD", Protocol::V31).await;
    assert_eq!(code, ConnectReturnCode::Accepted);
    // DELETE with the old passcode cannot remove the live device.
    let client = reqwest::Client::new();
    let del = |did: String, pc: &'static str| {
        client.delete(format!("http://{}/dev/devices", p.gw.http_addr)).body(format!("did={did}&passcode={pc}")).send()
    };
    assert_eq!(del(first.clone(), "AAAAAAAAAA").await.unwrap().status(), StatusCode::FORBIDDEN);
    let provision = client.get(format!("http://{}/dev/devices/{first}", p.gw.http_addr)).send().await.unwrap();
    assert_eq!(provision.status(), StatusCode::OK);
    let body = provision.text().await.unwrap();
    let port = p.gw.mqtt_addr.port();
    assert!(body.starts_with(&format!("host=127.0.0.1&port={port}&server_ts=")), "{body}");
    assert_eq!(del(first.clone(), "DDDDDDDDDD").await.unwrap().status(), StatusCode::OK);
    let gone = client.get(format!("http://{}/dev/devices/{first}", p.gw.http_addr)).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_registration_and_provision_with_the_product_secret() {
    let p = Plane::start().await;
    let mut spec = p.spec("0A0000000041", ota_sim::Method::V41);
    spec.product_secret = Some(p.secret.clone());
    let device = p.spawn(spec);
    let view = p.wait_device("0A0000000041", "online", |d| d["online"] == true).await;
    assert_eq!(view["registered_via"], "encrypted");
    let did = view["did"].as_str().unwrap().to_owned();
    let snapshot = device.stop().await;
    assert_eq!(snapshot.did.as_deref(), Some(did.as_str()));
    // The plain forms are refused for a device that registered encrypted.
    let body = format!("passcode=AAAAAAAAAA&mac=0A0000000041&product_key={}", p.pk);
    let client = reqwest::Client::new();
    let r = client.post(format!("http://{}/dev/devices", p.gw.http_addr)).body(body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client.get(format!("http://{}/dev/devices/{did}", p.gw.http_addr)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
