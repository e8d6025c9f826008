//! Firmware downloads as the kernel sends them (`sendfile` after a first write that holds the
//! head and the start of the body), read from raw sockets against a running gateway: the
//! device's 600-byte first read, byte-exact bodies around every size edge, and a connection cut
//! by the client recorded with the bytes the gateway had sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_sim::Method;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::device_plane::Plane;
use crate::support::*;

/// GAgent's first `recv` of a download (`device-protocol.md#the-600-byte-first-read`).
const FIRST_READ: usize = 600;

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

/// Sends `GET <path>` as GAgent does and makes its first `recv` of 600 bytes: one `read`,
/// not a loop. Returns that read and the rest of the reply.
async fn gagent_get(addr: SocketAddr, path: &str) -> (Vec<u8>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: api.gizwits.com\r\nContent-Type: application/text\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.readable().await.unwrap();
    let mut first = vec![0; FIRST_READ];
    let n = stream.read(&mut first).await.unwrap();
    first.truncate(n);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    (first, rest)
}

/// Verified V4.1 MCU images (served by `/dev/ota/v4.1/firmware/<id>`, which needs no upgrade
/// record) of sizes around the edges of the first write: the smallest image the domain takes
/// (1 KiB), the first write's 4 KiB body part and one byte either side, and a large odd size.
/// The device's first single 600-byte read is full and holds every header; the body is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_fill_the_first_read_and_are_byte_exact() {
    let p = Plane::start().await;
    for (i, size) in [1024usize, 4095, 4096, 4097, (1 << 20) + 12_345].into_iter().enumerate() {
        let sw = format!("000100{:02}", i + 2);
        let fields = [
            ("name", "mcu"),
            ("type", "mcu"),
            ("push_method", "V4.1"),
            ("hard_version", "00STM032"),
            ("soft_version", &sw),
        ];
        let data = image(size, i as u8 + 1);
        let id = p.upload(&fields, ("mcu.bin", data.clone())).await;
        p.s.verify_directly(id).await;

        let (first, rest) = gagent_get(p.gw.http_addr, &format!("/dev/ota/v4.1/firmware/{id}")).await;
        assert_eq!(first.len(), FIRST_READ, "size {size}: the first 600-byte read is full");
        let text = String::from_utf8_lossy(&first);
        let end = text.find("\r\n\r\n").expect("every header inside the first read") + 4;
        let head = &text[..end];
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(head, "Content-Length"), Some(size.to_string().as_str()), "{head}");
        assert_eq!(header(head, "Firmware-MD5"), Some(md5_hex(&data).as_str()), "{head}");
        assert_eq!(header(head, "Soft-Version"), Some(sw.as_str()), "{head}");
        assert!(!head.contains("Transfer-Encoding"), "{head}");

        let mut body = first[end..].to_vec();
        body.extend_from_slice(&rest);
        assert_eq!(body.len(), size);
        assert!(body == data, "size {size}: the body differs from the image");
    }
}

/// A device-HTTP proxy in front of the gateway that forwards everything but download
/// requests: those it only remembers (the path) and closes, so the simulated device's
/// download fails on its side without reaching the gateway, and the test downloads the offer
/// itself.
async fn proxy_keeping_downloads(gateway: SocketAddr) -> (SocketAddr, Arc<Mutex<Option<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut device, _)) = listener.accept().await {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let Ok(n) = device.read(&mut buf).await else { return };
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = text.strip_prefix("GET ").and_then(|t| t.split(' ').next()).unwrap_or_default();
                if path.starts_with("/dev/ota/v4.1/download/") {
                    *slot.lock().unwrap() = Some(path.to_owned());
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(gateway).await else { return };
                if upstream.write_all(&buf[..n]).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut device, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

/// A client that reads 64 KiB of a 3 MB download and closes: the record fails with
/// `download_cut`, and the reason counts the body bytes the gateway had handed to the kernel,
/// at least what the client read and far from the whole image (the gateway's send buffer is
/// small on purpose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_the_client_is_recorded_with_the_bytes_sent() {
    let p = Plane::start().await;
    let (proxy, seen) = proxy_keeping_downloads(p.gw.http_addr).await;
    let mac = "5CCF7F0000D1";
    let config = ota_sim::DeviceConfig { timing: ota_sim::Timing::fast(), ..ota_sim::DeviceConfig::new(proxy) };
    let _device = ota_sim::Device::new(p.spec(mac, Method::V41), config).unwrap().spawn();
    p.wait_device(mac, "online", |d| d["online"] == true && d["push_method"] == "V4.1").await;

    let size = 3_000_000usize;
    let fields = [
        ("name", "fw"),
        ("type", "wifi"),
        ("push_method", "V4.1"),
        ("hard_version", "00ESP826"),
        ("soft_version", "04020021"),
    ];
    let fw = p.upload(&fields, ("a.bin", image(size, 9))).await;
    expect_status(p.start_verification(fw, mac).await, StatusCode::CREATED).await;
    let mut path = None;
    for _ in 0..600 {
        path = seen.lock().unwrap().clone();
        if path.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = path.expect("the device asked for its download");

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut stream = socket.connect(p.gw.http_addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: api.gizwits.com\r\n\r\n").as_bytes()).await.unwrap();
    let read = 64 * 1024;
    let mut got = vec![0; read];
    stream.read_exact(&mut got).await.unwrap();
    let head_len = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got[head_len..], image(size, 9)[..read - head_len]);
    drop(stream);

    let failed = p.wait_verification(fw, "failed").await;
    assert_eq!(failed["failure"], json!({ "kind": "download_cut", "stage": "downloading" }), "{failed:#}");
    let reason = failed["reason"].as_str().unwrap();
    let sent: u64 = reason
        .strip_prefix("download cut after ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {reason:?}"));
    assert!(reason.contains(&format!(" of {size} bytes")), "{reason}");
    assert!(sent >= (read - head_len) as u64, "{reason}: less than the client read");
    assert!(sent < (size / 2) as u64, "{reason}: the cut is far from the end of the image");
}
