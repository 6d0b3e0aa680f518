//! Seed 002: `GET /v1/speech-events/stream?callId=…`, the STT/TTS event stream of one active
//! call (frames in `surfaces::speech`). Auth: an API key as Bearer, or the session cookie of a
//! logged-in browser (`POST /v1/session`). `sse_init` comes at once; at the call's end,
//! `call_end` then `sse_close`, and the server closes. A completed call answers 400; an
//! unknown or foreign one 404.

use std::collections::VecDeque;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use callstream_bus::{Event, Resume, Topic};
use callstream_core::{CallId, Payload};
use callstream_surfaces::speech;

use crate::auth::{ApiKeyOrSession, url_pairs};
use crate::error::ApiError;
use crate::metrics::{Surface, SurfaceLabels};
use crate::routes::load_call;
use crate::routes::sse_stream::{AtEnd, SseStream, SseSurface, Step};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::speech_sse,
};

pub async fn stream(
    State(state): State<AppState>,
    ApiKeyOrSession(who): ApiKeyOrSession,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let mut call_id = None;
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "callId" => call_id = Some(value),
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    let call_id = call_id.ok_or_else(|| ApiError::bad_request("callId: required"))?;
    let id = CallId::parse(&call_id).map_err(|_| ApiError::not_found("call"))?;
    let call = load_call(&state, &who.workspace_id, &id).await?;
    if !call.status.is_active() {
        return Err(ApiError::bad_request(format!(
            "the call has ended ({}); only active calls can be subscribed",
            call.status
        )));
    }
    let subscription = state
        .subscribe(&Topic::call(&who.workspace_id, &id), Resume::Live, &LABELS)
        .await
        .map_err(|e| ApiError::unavailable(format!("live events are unavailable: {e}")))?;
    let prefix = VecDeque::from([speech::lifecycle("sse_init", id.as_str())]);
    let surface = SpeechFrames {
        call_id: id,
        closed: false,
    };
    Ok(SseStream::new(
        &state,
        &LABELS,
        prefix,
        Some(subscription),
        who.expires_at,
        surface,
    )
    .revocable(&state, &who.key_id)
    .into_response())
}

/// Seed 002 frames; the call's end is `call_end` then `sse_close`.
struct SpeechFrames {
    call_id: CallId,
    closed: bool,
}

impl SseSurface for SpeechFrames {
    fn frame(&mut self, event: &Event) -> Step {
        let frame = speech::speech_sse(event);
        if event.envelope().payload.is_terminal()
            || matches!(event.envelope().payload, Payload::Failed(_))
        {
            self.closed = true;
            let mut last = frame.map(|f| f.to_vec()).unwrap_or_default();
            last.extend_from_slice(&speech::lifecycle("sse_close", self.call_id.as_str()));
            return Step::Finish(Bytes::from(last));
        }
        frame.map_or(Step::Skip, Step::Send)
    }

    fn at_end(&mut self) -> AtEnd {
        // The call ended but its terminal event was dropped for a full queue: still say goodbye.
        let last = (!self.closed).then(|| speech::lifecycle("sse_close", self.call_id.as_str()));
        Box::pin(std::future::ready(last))
    }
}
