//! Live progress of a rule as server-sent events (`proto-docs/api.md`, "Live progress").
//!
//! Each open stream reads the rule every [`POLL`] and sends its view when it changed: cheap
//! (one indexed read of one rule per stream and poll; streams per tenant are bounded by
//! [`MAX_STREAMS_PER_TENANT`]) and the same on every API node, whichever node's scheduler
//! moved the rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, web};
use bytes::Bytes;
use futures_util::stream;
use ota_domain::access::Read;
use ota_domain::{Authorized, Domain, DomainError};
use ota_wire::rules::RuleView;
use ota_wire::{ErrorBody, ErrorCode};

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// Open event streams per tenant at most; past it 503 `too_many_event_streams`.
pub const MAX_STREAMS_PER_TENANT: usize = 64;
/// How often a stream reads its rule.
pub const POLL: Duration = Duration::from_millis(500);
/// A comment line after this long without an event, so a closed connection is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// What a refused stream is told to wait.
const RETRY_AFTER_SECONDS: i64 = 5;

/// Open streams per tenant, shared by the workers of one API node.
#[derive(Debug, Default)]
pub struct StreamSlots(Mutex<HashMap<i64, usize>>);

/// One open stream's place; given back when the stream is dropped (ended or disconnected).
pub struct Slot {
    slots: Arc<StreamSlots>,
    tenant: i64,
}

impl StreamSlots {
    fn acquire(self: &Arc<Self>, tenant: i64, max: usize) -> Result<Slot, ApiError> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(tenant).or_default();
        if *n >= max {
            return Err(ApiError(DomainError::with_details(
                ErrorCode::TooManyEventStreams,
                format!("{max} event streams are open for your tenant; close one or retry later"),
                serde_json::json!({ "retry_after_seconds": RETRY_AFTER_SECONDS, "limit": max }),
            )));
        }
        *n += 1;
        Ok(Slot { slots: self.clone(), tenant })
    }

    /// Streams open for `tenant` now.
    pub fn open(&self, tenant: i64) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

struct Follow {
    domain: Domain,
    who: Authorized<Read>,
    id: i64,
    /// The view read at connect, sent first.
    first: Option<RuleView>,
    last_sent: Option<serde_json::Value>,
    last_id: i64,
    done: bool,
    _slot: Slot,
}

impl Follow {
    /// An event frame for `view`, with the next id: the domain clock's milliseconds, or one
    /// more than the last id when the clock has not moved past it.
    fn frame(&mut self, view: &RuleView, value: serde_json::Value) -> Bytes {
        self.last_id = self.domain.clock.now_ms().max(self.last_id + 1);
        self.done = view.status.is_final();
        let frame = format!("id: {}\nevent: rule\ndata: {}\n\n", self.last_id, value);
        self.last_sent = Some(value);
        Bytes::from(frame)
    }

    async fn next(mut self) -> Option<(Result<Bytes, actix_web::Error>, Follow)> {
        if self.done {
            return None;
        }
        let mut quiet = Duration::ZERO;
        loop {
            let view = match self.first.take() {
                Some(view) => view,
                None => {
                    tokio::time::sleep(POLL).await;
                    quiet += POLL;
                    match self.domain.get_rule(&self.who, self.id).await {
                        Ok(view) => view,
                        Err(DomainError::Expected { code: ErrorCode::RuleNotFound, .. }) => {
                            self.done = true;
                            self.last_id = self.domain.clock.now_ms().max(self.last_id + 1);
                            let frame = format!(
                                "id: {}\nevent: deleted\ndata: {{\"request_id\":{}}}\n\n",
                                self.last_id, self.id
                            );
                            return Some((Ok(Bytes::from(frame)), self));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, rule = self.id, "rule event stream could not read its rule");
                            continue;
                        }
                    }
                }
            };
            let value = match serde_json::to_value(&view) {
                Ok(value) => value,
                Err(e) => {
                    tracing::error!(error = %e, "rule view not serialisable");
                    return None;
                }
            };
            if self.last_sent.as_ref() != Some(&value) {
                let frame = self.frame(&view, value);
                return Some((Ok(frame), self));
            }
            if quiet >= KEEP_ALIVE {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), self));
            }
        }
    }
}

/// Live progress of a rule as server-sent events (`text/event-stream`). Each event is
/// `event: rule` with the rule's whole view (status, counts, waves, halt …) as `data`: one at
/// once, then one whenever the view changes (the server reads the rule every 500 ms). The
/// stream ends after the event whose status is `completed` or `cancelled`; for a rule already
/// finished that is the first event. A rule deleted meanwhile ends it with `event: deleted`.
/// Event ids grow per rule (the server's clock in milliseconds, always above the last id
/// sent or the `Last-Event-ID` given); a client that reconnects with `Last-Event-ID` gets the
/// current view at once (the view is cumulative: it replaces every event missed) and the
/// changes after it. At most 64 streams per tenant and API node are open at once.
#[utoipa::path(
    tag = "rules",
    params(
        ("request_id" = i64, Path),
        ("Last-Event-ID" = Option<i64>, Header, description = "the id of the last event received, to resume"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String,
            description = "`event: rule` frames with a RuleView as `data`, until the rule is final"),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 503, description = "`too_many_event_streams`", body = ErrorBody,
            headers(("Retry-After" = u32, description = "seconds to wait"))),
    ),
    security(("bearer" = ["read"]))
)]
#[get("/rules/{request_id}/events")]
pub async fn rule_events(
    st: web::Data<AppState>,
    who: Auth<Read>,
    id: web::Path<i64>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    let first = st.domain.get_rule(&who, id).await?;
    let slot = st.streams.acquire(who.tenant_id(), MAX_STREAMS_PER_TENANT)?;
    let follow = Follow {
        domain: st.domain.clone(),
        who: who.0.clone(),
        id,
        first: Some(first),
        last_sent: None,
        last_id,
        done: false,
        _slot: slot,
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream::unfold(follow, Follow::next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_tenant_and_given_back() {
        let slots = Arc::new(StreamSlots::default());
        let a = slots.acquire(1, 2).unwrap();
        let _b = slots.acquire(1, 2).unwrap();
        let refused = slots.acquire(1, 2).err().unwrap();
        assert_eq!(refused.body().code, ErrorCode::TooManyEventStreams);
        let _other = slots.acquire(2, 2).unwrap();
        drop(a);
        assert_eq!(slots.open(1), 1);
        let _c = slots.acquire(1, 2).unwrap();
    }
}
