//! `ota rules watch`: follows a rule until it ends.
//!
//! Where the rule's states come from ([`RuleSource`]) is apart from what is shown
//! ([`Display`]) and when to stop ([`verdict`]): today the source polls `GET /rules/{id}`;
//! server-sent events (`GET /rules/{id}/events`), once the API has them, become another
//! source, and nothing else changes.

use std::io::IsTerminal;
use std::time::Duration;

use ota_wire::rules::{RuleStatus, RuleView};

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
