//! `ota rules watch`: follows a rule until it ends.
//!
//! Where the rule's states come from ([`RuleSource`]) is apart from what is shown
//! ([`Display`]) and when to stop ([`verdict`]). The source is the rule's server-sent events
//! (`GET /rules/{id}/events`, `proto-docs/api.md#live-progress`, read with the
//! `eventsource-stream` crate): a cut stream is resumed with `Last-Event-ID`, and a server
//! that refuses the stream (all of a tenant's streams taken: 503 `too_many_event_streams`) is
//! polled instead (`GET /rules/{id}` every `--interval`).

use std::io::IsTerminal;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::{Stream, StreamExt as _};
use ota_wire::ErrorCode;
use ota_wire::rules::{RuleStatus, RuleView};
use reqwest::Method;

use super::error::{Class, CliError, CliResult};
use super::http::Api;

/// States of one rule, as they change.
pub trait RuleSource {
    /// The next state of the rule (may equal the last one; the display shows changes only).
    async fn next(&mut self) -> CliResult<RuleView>;
}

/// Polls `GET /rules/{id}`: the first state at once, then one every `interval`.
pub struct Poller {
    api: Api,
    id: i64,
    interval: Duration,
    first: bool,
}

impl Poller {
    pub fn new(api: Api, id: i64, interval: Duration) -> Poller {
        Poller { api, id, interval, first: true }
    }
}

impl RuleSource for Poller {
    async fn next(&mut self) -> CliResult<RuleView> {
        if !std::mem::take(&mut self.first) {
            tokio::time::sleep(self.interval).await;
        }
        self.api.get(&format!("/rules/{}", self.id)).await
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// Consecutive failed (re)connections after which watching gives up.
const MAX_RECONNECTS: u32 = 5;
/// Wait between reconnections of a cut stream.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Follows `GET /rules/{id}/events`; falls back to a [`Poller`] when the server refuses the
/// stream for capacity.
pub struct EventSource {
    api: Api,
    id: i64,
    interval: Duration,
    events: Option<Events>,
    last_event_id: Option<String>,
    failures: u32,
    fallback: Option<Poller>,
}

impl EventSource {
    pub fn new(api: Api, id: i64, interval: Duration) -> EventSource {
        EventSource { api, id, interval, events: None, last_event_id: None, failures: 0, fallback: None }
    }

    async fn connect(&mut self) -> CliResult<()> {
        let mut request = self
            .api
            .request(Method::GET, &format!("/rules/{}/events", self.id))
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = &self.last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = self.api.send_raw(request).await?;
        let events = response.bytes_stream().eventsource().map(|e| e.map_err(|e| e.to_string()));
        self.events = Some(Box::pin(events));
        Ok(())
    }

    /// A cut stream or a failed reconnection: try again, up to [`MAX_RECONNECTS`] in a row.
    async fn retry(&mut self, why: String) -> CliResult<()> {
        self.events = None;
        self.failures += 1;
        if self.failures > MAX_RECONNECTS {
            return Err(CliError::new(
                Class::Server,
                format!("the event stream of rule {} was cut {MAX_RECONNECTS} times in a row: {why}", self.id),
            ));
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
        Ok(())
    }
}

impl RuleSource for EventSource {
    async fn next(&mut self) -> CliResult<RuleView> {
        loop {
            if let Some(poller) = self.fallback.as_mut() {
                return poller.next().await;
            }
            let Some(events) = self.events.as_mut() else {
                match self.connect().await {
                    Ok(()) => continue,
                    Err(e) if e.code() == Some(ErrorCode::TooManyEventStreams) => {
                        eprintln!("ota: {}; polling the rule every {:?} instead", e.message, self.interval);
                        self.fallback = Some(Poller::new(self.api.clone(), self.id, self.interval));
                        continue;
                    }
                    // A refusal (no such rule, no right to read it) is final; only a lost
                    // connection or a server error is worth another try.
                    Err(e) if e.class == Class::Server => {
                        self.retry(e.message).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            match events.next().await {
                Some(Ok(event)) => {
                    if !event.id.is_empty() {
                        self.last_event_id = Some(event.id.clone());
                    }
                    match event.event.as_str() {
                        "rule" => {
                            let view: RuleView = serde_json::from_str(&event.data).map_err(|e| {
                                CliError::new(
                                    Class::Server,
                                    format!("an event of rule {} is not a rule view: {e}", self.id),
                                )
                            })?;
                            self.failures = 0;
                            return Ok(view);
                        }
                        "deleted" => {
                            return Err(CliError::new(Class::NotFound, format!("rule {} was deleted", self.id)));
                        }
                        // Events this client does not know are skipped, as SSE wants.
                        _ => continue,
                    }
                }
                Some(Err(e)) => self.retry(e).await?,
                // The server ends the stream after a final event, which ends watching before
                // this is read; an end before it is a cut.
                None => self.retry("the stream ended before the rule did".into()).await?,
            }
        }
    }
}

/// Whether watching is over: `Some(Ok)` on completion, `Some(Err)` when the rule ended
/// otherwise (or is held), `None` while it is on its way.
pub fn verdict(rule: &RuleView) -> Option<CliResult<()>> {
    match rule.status {
        RuleStatus::Completed => Some(Ok(())),
        RuleStatus::Halted => {
            let why = rule
                .halt
                .as_ref()
                .map(|h| {
                    format!(" at wave {}: {} of {} finished failed ({})", h.wave, h.failed, h.finished, h.threshold)
                })
                .unwrap_or_default();
            Some(Err(CliError::new(
                Class::Ended,
                format!(
                    "rule {} halted{why}; see `ota rules devices {} --filter failed`, then exclude/resume or cancel",
                    rule.request_id, rule.request_id
                ),
            )))
        }
        RuleStatus::Cancelled | RuleStatus::Stopped => Some(Err(CliError::new(
            Class::Ended,
            format!(
                "rule {} is {} with {} of {} targets succeeded",
                rule.request_id,
                status_name(rule.status),
                rule.counts.succeeded,
                rule.counts.targets
            ),
        ))),
        RuleStatus::NotStarted | RuleStatus::Pushing | RuleStatus::Paused => None,
    }
}

pub fn status_name(status: RuleStatus) -> &'static str {
    match status {
        RuleStatus::NotStarted => "not_started",
        RuleStatus::Pushing => "pushing",
        RuleStatus::Paused => "paused",
        RuleStatus::Halted => "halted",
        RuleStatus::Stopped => "stopped",
        RuleStatus::Completed => "completed",
        RuleStatus::Cancelled => "cancelled",
    }
}

/// How progress is shown: a bar on a terminal, JSON lines otherwise (or with `--json`).
pub enum Display {
    Bar(indicatif::ProgressBar),
    JsonLines { last: Option<serde_json::Value> },
    Quiet,
}

impl Display {
    pub fn choose(json: bool, quiet: bool) -> Display {
        if quiet {
            Display::Quiet
        } else if json || !std::io::stderr().is_terminal() {
            Display::JsonLines { last: None }
        } else {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} rule {prefix} [{bar:30}] {pos}/{len} succeeded  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Display::Bar(bar)
        }
    }

    pub fn show(&mut self, rule: &RuleView) {
        let c = &rule.counts;
        match self {
            Display::Bar(bar) => {
                bar.set_prefix(rule.request_id.to_string());
                bar.set_length(c.targets.max(0) as u64);
                bar.set_position(c.succeeded.max(0) as u64);
                let wave = rule.current_wave.map(|w| format!(" wave {w}")).unwrap_or_default();
                bar.set_message(format!(
                    "{}{wave}  in progress {}  failed {}  pending {}",
                    status_name(rule.status),
                    c.in_progress,
                    c.failed,
                    c.pending
                ));
            }
            Display::JsonLines { last } => {
                let line = serde_json::json!({
                    "request_id": rule.request_id,
                    "status": rule.status,
                    "current_wave": rule.current_wave,
                    "counts": c,
                    "halt": rule.halt,
                });
                if last.as_ref() != Some(&line) {
                    println!("{line}");
                    *last = Some(line);
                }
            }
            Display::Quiet => {}
        }
    }

    pub fn finish(&mut self) {
        if let Display::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// Follows the rule from `source` until [`verdict`] says it is over or `timeout` passes.
pub async fn watch(
    mut source: impl RuleSource,
    mut display: Display,
    timeout: Option<Duration>,
) -> CliResult<RuleView> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = source.next();
        let rule = match deadline {
            Some(at) => tokio::time::timeout_at(at, next).await.map_err(|_| {
                display.finish();
                CliError::new(Class::Timeout, "the rule did not end within --timeout")
            })??,
            None => next.await?,
        };
        display.show(&rule);
        if let Some(outcome) = verdict(&rule) {
            display.finish();
            return outcome.map(|()| rule);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    fn view(status: &str, succeeded: i64) -> String {
        serde_json::json!({
            "request_id": 7, "firmware_id": 1, "firmware_name": "fw.bin", "product_key": "pk",
            "name": null, "target": "all", "regions": [], "mac_list_id": null, "mac_count": null,
            "old_versions": [], "to_version": "2", "period": {"start": "2026-12-01", "end": "2026-12-31"},
            "daily_window": {"start_hour": 0, "end_hour": 24}, "status": status, "policy": {},
            "window_open": true, "openings": [], "current_wave": null, "waves": [], "halt": null,
            "paused_at": null, "cancelled_at": null,
            "counts": {"targets": 2, "succeeded": succeeded, "not_succeeded": 2 - succeeded, "notified": 2,
                "pending": 0, "in_progress": 2 - succeeded, "failed": 0, "expired": 0, "excluded": 0, "cancelled": 0},
            "started_at": null, "stopped_at": null, "completed_at": null,
            "created_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:00Z",
        })
        .to_string()
    }

    const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    fn json_reply(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// A server that answers its n-th connection with `replies[n]` and then closes it, and
    /// keeps each request's head (lowercased) for the test to read.
    async fn server(replies: Vec<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for reply in replies {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0_u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed before its request head ended");
                    head.extend_from_slice(&buf[..n]);
                }
                log.lock().unwrap().push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                socket.write_all(reply.as_bytes()).await.unwrap();
                socket.shutdown().await.unwrap();
            }
        });
        (base, seen)
    }

    fn source(base: &str) -> EventSource {
        EventSource::new(Api::new(base, "tok").unwrap(), 7, Duration::from_millis(10))
    }

    #[tokio::test]
    async fn a_cut_stream_is_resumed_with_the_last_event_id() {
        let (base, seen) = server(vec![
            format!("{SSE_HEAD}id: 41\nevent: rule\ndata: {}\n\n: keep-alive\n\n", view("pushing", 1)),
            format!("{SSE_HEAD}event: progress\ndata: x\n\nid: 42\nevent: rule\ndata: {}\n\n", view("completed", 2)),
        ])
        .await;
        let rule = watch(source(&base), Display::Quiet, Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!((rule.status, rule.counts.succeeded), (RuleStatus::Completed, 2));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen[0].starts_with("get /api/v1/rules/7/events "), "{}", seen[0]);
        assert!(seen[0].contains("accept: text/event-stream") && seen[0].contains("authorization: bearer tok"));
        assert!(!seen[0].contains("last-event-id"), "{}", seen[0]);
        assert!(seen[1].contains("last-event-id: 41"), "the reconnection resumes: {}", seen[1]);
    }

    #[tokio::test]
    async fn a_stream_refused_for_capacity_falls_back_to_polling() {
        let refused = r#"{"code":"too_many_event_streams","message":"64 event streams are open","details":null}"#;
        let (base, seen) = server(vec![
            json_reply("503 Service Unavailable", refused),
            json_reply("200 OK", &view("pushing", 0)),
            json_reply("200 OK", &view("completed", 2)),
        ])
        .await;
        let rule = watch(source(&base), Display::Quiet, Some(Duration::from_secs(20))).await.unwrap();
        assert_eq!(rule.status, RuleStatus::Completed);
        let seen = seen.lock().unwrap();
        assert!(seen[0].starts_with("get /api/v1/rules/7/events "));
        assert!(seen[1].starts_with("get /api/v1/rules/7 ") && seen[2].starts_with("get /api/v1/rules/7 "));
    }

    #[tokio::test]
    async fn a_refusal_or_a_deleted_rule_ends_watching() {
        let missing = r#"{"code":"rule_not_found","message":"no rule 7","details":null}"#;
        let (base, seen) = server(vec![json_reply("404 Not Found", missing)]).await;
        let err = watch(source(&base), Display::Quiet, Some(Duration::from_secs(20))).await.unwrap_err();
        assert_eq!((err.class, err.code()), (Class::NotFound, Some(ErrorCode::RuleNotFound)));
        assert_eq!(seen.lock().unwrap().len(), 1, "a refusal is not retried");

        let (base, _) = server(vec![format!(
            "{SSE_HEAD}id: 1\nevent: rule\ndata: {}\n\nid: 2\nevent: deleted\ndata: {{\"request_id\":7}}\n\n",
            view("pushing", 0)
        )])
        .await;
        let err = watch(source(&base), Display::Quiet, Some(Duration::from_secs(20))).await.unwrap_err();
        assert_eq!(err.class, Class::NotFound);
        assert!(err.message.contains("deleted"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_stream_that_keeps_being_cut_gives_up() {
        let cut = format!("{SSE_HEAD}: keep-alive\n\n");
        let (base, seen) = server(vec![cut; MAX_RECONNECTS as usize + 1]).await;
        let err = watch(source(&base), Display::Quiet, Some(Duration::from_secs(30))).await.unwrap_err();
        assert_eq!(err.class, Class::Server);
        assert_eq!(seen.lock().unwrap().len(), MAX_RECONNECTS as usize + 1);
    }
}
