//! Seed 000 `GET /v1/calls/{id}/transcript/stream`: the live per-turn transcript over SSE.
//!
//! A new connection first gets the latest partial of a turn still being spoken (the seed's
//! "in-flight turn"), then live frames. Beyond the seed (which buffers nothing more), every frame's `id:` is the event's `seq`, and a
//! client that reconnects with `Last-Event-ID` first gets what it missed: from the bus history
//! while it reaches back, and final turns from the store before that. A finished call's stream
//! replays its final turns and closes; reconnecting after that answers `204 No Content`, which
//! tells a browser `EventSource` to stop reconnecting.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callstream_bus::{Resume, SubscribeOptions, Subscription, Topic};
use callstream_core::{CallId, CallStatus, Payload, WorkspaceId};
use callstream_store::TranscriptTurn;
use callstream_surfaces::native::{self, TranscriptFrame};
use callstream_surfaces::sse;
use futures::stream;
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::auth::BrowserPrincipal;
use crate::error::ApiError;
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::{CallPath, load_call};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::native_transcript_sse,
};

pub async fn stream(
    State(state): State<AppState>,
    BrowserPrincipal(who): BrowserPrincipal,
    CallPath(id): CallPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    who.check_call(&id)?;
    let call = load_call(&state, &who.workspace_id, &id).await?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(sse::last_event_id);

    let mut prefix = VecDeque::new();
    let subscription = if call.status.is_active() {
        let options = SubscribeOptions {
            queue_capacity: state.config().stream_queue_capacity,
            dropped: state
                .metrics()
                .frames_dropped
                .get_or_create(&LABELS)
                .clone(),
        };
        // Read the history too: it holds the in-flight turn, or what a resuming client missed.
        let topic = Topic::call(&who.workspace_id, &id);
        let mut sub = state
            .bus()
            .subscribe(&topic, Resume::After(resume_after.unwrap_or(0)), options)
            .await
            .map_err(|e| ApiError::unavailable(format!("live events are unavailable: {e}")))?;
        let history = sub.take_backlog();
        match resume_after {
            None => prefix.extend(in_flight_turn(&history)),
            Some(after) => {
                // The history is bounded (and empty after a restart), so it may not reach back
                // to `after`: the stored final turns cover the stretch before it. Anything
                // newer than the call as read above is in the history or still to come live.
                let history_from = history
                    .front()
                    .map_or(call.last_seq.saturating_add(1), |e| e.seq());
                if after.saturating_add(1) < history_from {
                    let turns = state.store().transcript(&who.workspace_id, &id).await?;
                    prefix.extend(
                        turns
                            .iter()
                            .filter(|t| t.seq > after && t.seq < history_from)
                            .map(stored_frame),
                    );
                }
                prefix.extend(history.iter().filter_map(|e| native::transcript_sse(e)));
            }
        }
        Some(sub)
    } else {
        let turns = state.store().transcript(&who.workspace_id, &id).await?;
        prefix.extend(
            turns
                .iter()
                .filter(|t| t.seq > resume_after.unwrap_or(0))
                .map(stored_frame),
        );
        if prefix.is_empty() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        if call.status == CallStatus::Failed {
            prefix.push_back(call_failed(None));
        }
        None
    };

    let live = LiveStream {
        prefix,
        subscription,
        heartbeat: heartbeat(state.config().heartbeat()),
        shutdown: state.shutdown().clone(),
        sent: state.metrics().frames_sent.get_or_create(&LABELS).clone(),
        finished: false,
        expiry: Box::pin(tokio::time::sleep(crate::routes::call_socket::until(
            who.expires_at,
        ))),
        ended: EndCheck {
            state: state.clone(),
            workspace: who.workspace_id,
            call: id,
            seen_terminal: false,
        },
        _open: OpenStream::new(state.metrics().open_streams.get_or_create(&LABELS).clone()),
    };
    Ok(sse_response(Body::from_stream(stream::unfold(
        live,
        LiveStream::next,
    ))))
}

/// The terminal `event: error` frame for a failed call (seed 000: "event: error frames carry a
/// terminal {error_code, message}").
fn call_failed(reason: Option<&str>) -> Bytes {
    let message = match reason {
        Some(reason) => format!("the call failed: {reason}"),
        None => "the call failed".to_owned(),
    };
    native::error_sse("call_failed", &message)
}

/// What the stream needs to tell, at its end, whether the call failed when the terminal event
/// itself was dropped for a full queue.
struct EndCheck {
    state: AppState,
    workspace: WorkspaceId,
    call: CallId,
    seen_terminal: bool,
}

impl EndCheck {
    async fn failed(&self) -> bool {
        if self.seen_terminal {
            return false;
        }
        match self.state.store().call(&self.workspace, &self.call).await {
            Ok(Some(call)) => call.status == CallStatus::Failed,
            _ => false,
        }
    }
}

/// The latest partial of the last turn in `history` if that turn has no final yet.
fn in_flight_turn(history: &VecDeque<std::sync::Arc<callstream_bus::Event>>) -> Option<Bytes> {
    let last = history
        .iter()
        .rev()
        .find(|e| matches!(e.envelope().payload, Payload::Transcription(_)))?;
    match &last.envelope().payload {
        Payload::Transcription(t) if !t.is_final => native::transcript_sse(last),
        _ => None,
    }
}

fn stored_frame(turn: &TranscriptTurn) -> Bytes {
    TranscriptFrame {
        role: turn.role,
        text: &turn.text,
        is_final: true,
        turn_id: &turn.turn_id,
        ts: turn.ts,
    }
    .to_sse(turn.seq)
}

fn heartbeat(period: std::time::Duration) -> Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// The response head every SSE stream shares. `X-Accel-Buffering: no` keeps nginx from
/// buffering the stream; `no-cache` keeps any proxy from caching it.
pub fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One open transcript stream: stored frames first, then the live subscription, with
/// heartbeats in between, until the call ends, the client leaves (the body is dropped) or the
/// server shuts down.
struct LiveStream {
    prefix: VecDeque<Bytes>,
    subscription: Option<Subscription>,
    heartbeat: Interval,
    shutdown: CancellationToken,
    sent: Counter,
    finished: bool,
    /// A stream token's expiry: the stream ends then with `event: error` `token_expired`.
    expiry: std::pin::Pin<Box<tokio::time::Sleep>>,
    ended: EndCheck,
    _open: OpenStream,
}

impl LiveStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.finished {
            return None;
        }
        if let Some(frame) = self.prefix.pop_front() {
            self.sent.inc();
            return Some((Ok(frame), self));
        }
        let sub = self.subscription.as_mut()?;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.finished = true;
                    let frame = native::error_sse(
                        "going_away",
                        "the server is shutting down; reconnect with Last-Event-ID to resume",
                    );
                    return Some((Ok(frame), self));
                }
                () = &mut self.expiry => {
                    self.finished = true;
                    let frame = native::error_sse("token_expired", "the stream token has expired; ask for a new one");
                    return Some((Ok(frame), self));
                }
                event = sub.next() => {
                    let Some(event) = event else {
                        // The call ended. Say so if it failed and the terminal event was lost.
                        self.finished = true;
                        return self.ended.failed().await.then(|| (Ok(call_failed(None)), self));
                    };
                    match &event.envelope().payload {
                        Payload::Failed(f) => {
                            self.ended.seen_terminal = true;
                            self.finished = true;
                            let frame = call_failed(Some(&f.reason));
                            return Some((Ok(frame), self));
                        }
                        Payload::Completed(_) => self.ended.seen_terminal = true,
                        _ => {}
                    }
                    if let Some(frame) = native::transcript_sse(&event) {
                        self.sent.inc();
                        return Some((Ok(frame), self));
                    }
                }
                _ = self.heartbeat.tick() => {
                    return Some((Ok(sse::comment("heartbeat")), self));
                }
            }
        }
    }
}
