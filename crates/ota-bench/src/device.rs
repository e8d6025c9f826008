//! A lean MQTT device: GAgent's login (CONNECT as MQTT 3.1 `MQIsdp`, then the three SUBSCRIBEs one
//! at a time, each waiting for its SUBACK, `device-protocol.md#subscriptions-one-at-a-time`), then
//! it holds the session, counts the PUBLISHes it receives and pings so the edge keeps it.
//!
//! One task and one 1 KB buffer per device, so 10,000 of them fit in one process next to
//! nothing else. The full simulator (`ota_sim::Device`) models the whole firmware and is
//! heavier; the benchmark needs only the socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gagent_codec::mqtt::{self, Connect, ConnectReturnCode, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// GA's MQTT receive buffer (`device-protocol.md#inbound-limit-1-kb-one-packet-per-read`).
const BUFFER: usize = mqtt::DEVICE_RECV_LIMIT;

/// What the fleet of lean devices saw, shared by all of them.
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// PUBLISH packets received after login.
    pub publishes: AtomicU64,
    /// Sessions the server closed (or that failed) after a complete login.
    pub lost: AtomicU64,
    /// Reads that held more than one packet; GAgent would have lost all but the first
    /// (`device-protocol.md#observed-pacing`).
    pub coalesced_reads: AtomicU64,
    /// Packets other than PUBLISH and PINGRESP after login.
    pub unexpected: AtomicU64,
    /// PINGREQs sent.
    pub pings: AtomicU64,
}

/// One device's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub did: String,
    pub passcode: String,
}

pub struct Session {
    /// Reported back with the login result.
    pub index: usize,
    pub addr: SocketAddr,
    pub product_key: Arc<str>,
    pub identity: Identity,
    pub keep_alive_secs: u16,
    pub reply_timeout: Duration,
    pub counters: Arc<FleetCounters>,
}

impl Session {
    /// Logs in (holding `permit` only for the login), reports the login time or why it failed
    /// on `ready`, then holds the session until the socket closes.
    pub async fn run(
        self,
        permit: impl std::future::Future<Output = Option<OwnedSemaphorePermit>>,
        ready: mpsc::UnboundedSender<(usize, Result<Duration, String>)>,
    ) {
        let Some(permit) = permit.await else {
            let _ = ready.send((self.index, Err("the login limiter closed".to_owned())));
            return;
        };
        let started = Instant::now();
        let login = tokio::time::timeout(self.reply_timeout * 4, self.login()).await;
        drop(permit);
        let (stream, buf) = match login {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                let _ = ready.send((self.index, Err(e)));
                return;
            }
            Err(_) => {
                let _ = ready.send((self.index, Err("login did not finish in time".to_owned())));
                return;
            }
        };
        let _ = ready.send((self.index, Ok(started.elapsed())));
        drop(ready);
        self.hold(stream, buf).await;
    }

    async fn login(&self) -> Result<(TcpStream, BytesMut), String> {
        let mut stream = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let connect = Connect::gagent(Protocol::V31, &self.identity.did, &self.identity.passcode, self.keep_alive_secs);
        let bytes = Packet::Connect(connect).encode().map_err(|e| format!("encode CONNECT: {e}"))?;
        stream.write_all(&bytes).await.map_err(|e| format!("write CONNECT: {e}"))?;
        let mut buf = BytesMut::with_capacity(BUFFER);
        match self.next_packet(&mut stream, &mut buf).await? {
            Packet::Connack(ack) if ack.code == ConnectReturnCode::Accepted => {}
            Packet::Connack(ack) => return Err(format!("CONNACK refused: {:?}", ack.code)),
            other => return Err(format!("expected CONNACK, got {}", other.name())),
        }
        for (pkid, topic) in (1u16..).zip(ota_sim::mqtt_io::topics(&self.product_key, &self.identity.did)) {
            let subscribe = ota_sim::mqtt_io::subscribe_bytes(pkid, &topic).map_err(|e| e.to_string())?;
            stream.write_all(&subscribe).await.map_err(|e| format!("write SUBSCRIBE: {e}"))?;
            match self.next_packet(&mut stream, &mut buf).await? {
                Packet::Suback(ack)
                    if ack.pkid == pkid && ack.return_codes.iter().all(|c| *c != mqtt::suback::FAILURE) => {}
                Packet::Suback(ack) => return Err(format!("SUBACK for {topic}: {ack:?}")),
                other => return Err(format!("expected SUBACK, got {}", other.name())),
            }
        }
        Ok((stream, buf))
    }

    async fn next_packet(&self, stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet, String> {
        loop {
            if let Some(packet) = mqtt::decode(buf, BUFFER).map_err(|e| format!("decode: {e}"))? {
                return Ok(packet);
            }
            let read = tokio::time::timeout(self.reply_timeout, stream.read_buf(buf)).await;
            match read {
                Err(_) => return Err(format!("no reply within {:?}", self.reply_timeout)),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err("the server closed the connection".to_owned()),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads until the socket closes; pings at half the keep-alive.
    async fn hold(self, mut stream: TcpStream, mut buf: BytesMut) {
        let c = &self.counters;
        let period = Duration::from_secs(u64::from(self.keep_alive_secs.max(2)) / 2);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                read = stream.read_buf(&mut buf) => {
                    match read {
                        Ok(0) | Err(_) => {
                            c.lost.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Ok(_) => {}
                    }
                    let mut in_this_read = 0;
                    loop {
                        match mqtt::decode(&mut buf, BUFFER) {
                            Ok(Some(packet)) => {
                                in_this_read += 1;
                                match packet {
                                    Packet::Publish(_) => c.publishes.fetch_add(1, Ordering::Relaxed),
                                    Packet::PingResp => 0,
                                    _ => c.unexpected.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                            Ok(None) => break,
                            Err(_) => {
                                c.lost.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                    if in_this_read > 1 {
                        c.coalesced_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    // Keep the buffer at 1 KB: a partial packet stays, the spare room goes.
                    if buf.is_empty() && buf.capacity() > BUFFER {
                        buf = BytesMut::with_capacity(BUFFER);
                    }
                }
                _ = ping.tick() => {
                    if stream.write_all(&[0xC0, 0x00]).await.is_err() {
                        c.lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    c.pings.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
