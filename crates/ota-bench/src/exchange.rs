//! One device HTTP request on a fresh TCP connection, as GAgent makes them
//! (`device-protocol.md#hosts-and-ports`).
//!
//! Unlike the firmware (one `recv` of 1 KB) the whole reply is read, up to the server's close,
//! so a reply split across writes is not misread as an error; the server answers every
//! request with `Connection: close`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Replies of the device API are at most 1 KB; anything past this is not read.
const MAX_REPLY: u64 = 16 * 1024;

pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Result<Vec<u8>, String> {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream.write_all(request).await.map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::with_capacity(1024);
        (&mut stream).take(MAX_REPLY).read_to_end(&mut reply).await.map_err(|e| format!("read: {e}"))?;
        if reply.is_empty() {
            return Err("the server closed without a reply".to_owned());
        }
        Ok(reply)
    };
    tokio::time::timeout(wait, work).await.unwrap_or_else(|_| Err(format!("no complete reply within {wait:?}")))
}
