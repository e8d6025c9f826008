//! The parent's side of the server child: start it, read its ready line, send commands.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::serve::ServeArgs;

/// What the child printed when it was ready.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub product_key: String,
    pub pid: u32,
}

pub struct Server {
    pub info: ServerInfo,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// Re-executes this binary as `serve` and waits for its ready line.
    pub async fn start(args: &ServeArgs, wait: Duration) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut command = Command::new(exe);
        command.arg("serve").arg("--pace-ms").arg(args.pace_ms.to_string());
        command.arg("--db-pool").arg(args.db_pool.to_string());
        if let Some(broker) = &args.broker {
            command.arg("--broker").arg(broker);
        }
        if let Some(url) = &args.database_url {
            command.arg("--database-url").arg(url);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
        let mut child = command.spawn().context("starting the server child")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = read_json(&mut lines, wait).await.context("waiting for the server to start")?;
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            ready[key].as_str().ok_or_else(|| anyhow!("ready line without {key}: {ready}"))?.parse().context("address")
        };
        let info = ServerInfo {
            http: addr("http")?,
            mqtt: addr("mqtt")?,
            product_key: ready["product_key"].as_str().context("ready line without product_key")?.to_owned(),
            pid: ready["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).context("ready line without pid")?,
        };
        Ok(Server { info, child, stdin: Some(stdin), lines })
    }

    /// Sends one command line and returns its JSON answer (an `error` answer is an error).
    pub async fn call(&mut self, command: &str, wait: Duration) -> anyhow::Result<Value> {
        let stdin = self.stdin.as_mut().context("the server's stdin is closed")?;
        stdin.write_all(format!("{command}\n").as_bytes()).await.context("writing to the server")?;
        stdin.flush().await.context("writing to the server")?;
        let answer = read_json(&mut self.lines, wait).await.with_context(|| format!("server command `{command}`"))?;
        if let Some(e) = answer.get("error") {
            bail!("server command `{command}` failed: {e}");
        }
        Ok(answer)
    }

    /// Closes the child's stdin and waits for it to exit; kills it after `wait`.
    pub async fn stop(mut self, wait: Duration) -> anyhow::Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("the server exited with {status}"),
            Ok(Err(e)) => bail!("waiting for the server: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the server did not exit within {wait:?} of its stdin closing; killed")
            }
        }
    }
}

async fn read_json(lines: &mut Lines<BufReader<ChildStdout>>, wait: Duration) -> anyhow::Result<Value> {
    let line = tokio::time::timeout(wait, lines.next_line())
        .await
        .map_err(|_| anyhow!("no answer within {wait:?}"))?
        .context("reading the server's stdout")?
        .context("the server exited")?;
    serde_json::from_str(&line).with_context(|| format!("not JSON from the server: {line}"))
}
