//! Seed 000 `GET /v1/calls/{id}/transcript/stream`: the live per-turn transcript over SSE.
//!
//! A new connection first gets the latest partial of a turn still being spoken (the seed's
//! "in-flight turn"), then live frames. Beyond the seed (which buffers nothing more), every frame's `id:` is the event's `seq`, and a
//! client that reconnects with `Last-Event-ID` first gets what it missed: from the bus history
//! while it reaches back, and final turns from the store before that. A finished call's stream
//! replays its final turns (after `Last-Event-ID`) and closes; a failed call's then ends with its
//! terminal `event: error` (`call_failed`, with the reason) whenever the client connects, and a
//! completed call with nothing left to replay answers `204 No Content`, which tells a browser
//! `EventSource` to stop reconnecting.

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use callstream_bus::{Resume, Topic};
use callstream_core::{CallId, CallStatus, Payload, WorkspaceId};
use callstream_store::TranscriptTurn;
use callstream_surfaces::native::{self, TranscriptFrame};
use callstream_surfaces::sse;

use crate::auth::BrowserPrincipal;
use crate::error::ApiError;
use crate::metrics::{Surface, SurfaceLabels};
use crate::routes::sse_stream::{AtEnd, SseStream, SseSurface, Step};
use crate::routes::{CallPath, IdPath, load_call};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::native_transcript_sse,
};

pub async fn stream(
    State(state): State<AppState>,
    BrowserPrincipal(who): BrowserPrincipal,
    IdPath(id): CallPath,
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
        // Read the history too: it holds the in-flight turn, or what a resuming client missed.
        let topic = Topic::call(&who.workspace_id, &id);
        let mut sub = state
            .subscribe(&topic, Resume::After(resume_after.unwrap_or(0)), &LABELS)
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
        // A failed call says so, with its reason, whenever the client connects; a completed
        // one with nothing left to replay answers 204, which stops a browser's EventSource.
        if call.status == CallStatus::Failed {
            prefix.push_back(call_failed(call.end_reason.as_deref()));
        } else if prefix.is_empty() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        None
    };

    let surface = TranscriptFrames {
        ended: EndCheck {
            state: state.clone(),
            workspace: who.workspace_id,
            call: id,
            seen_terminal: false,
        },
    };
    Ok(SseStream::new(
        &state,
        &LABELS,
        prefix,
        subscription,
        who.expires_at,
        surface,
    )
    .revocable(&state, &who.key_id)
    .into_response())
}

/// Seed 000 transcript frames; a failed call ends with a terminal `event: error`.
struct TranscriptFrames {
    ended: EndCheck,
}

impl SseSurface for TranscriptFrames {
    fn frame(&mut self, event: &callstream_bus::Event) -> Step {
        match &event.envelope().payload {
            Payload::Failed(f) => {
                self.ended.seen_terminal = true;
                return Step::Finish(call_failed(Some(&f.reason)));
            }
            Payload::Completed(_) => self.ended.seen_terminal = true,
            _ => {}
        }
        native::transcript_sse(event).map_or(Step::Skip, Step::Send)
    }

    fn at_end(&mut self) -> AtEnd {
        // Say that the call failed if the terminal event itself was lost to a full queue.
        let ended = self.ended.clone();
        Box::pin(async move { ended.failure().await })
    }
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
#[derive(Clone)]
struct EndCheck {
    state: AppState,
    workspace: WorkspaceId,
    call: CallId,
    seen_terminal: bool,
}

impl EndCheck {
    /// The terminal error frame, with the reason, if the call failed and its event was not seen.
    async fn failure(&self) -> Option<Bytes> {
        if self.seen_terminal {
            return None;
        }
        match self.state.store().call(&self.workspace, &self.call).await {
            Ok(Some(call)) if call.status == CallStatus::Failed => {
                Some(call_failed(call.end_reason.as_deref()))
            }
            _ => None,
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
