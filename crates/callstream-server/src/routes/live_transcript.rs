//! Seed 003: `GET /live-transcript/{call_sid}`, the live transcript socket of a call found by its
//! Twilio Call SID (the call's `external_id`). Frames and client messages are in
//! `surfaces::live_transcript`.
//!
//! As the seed says, authentication problems are answered after the upgrade, by closing at once
//! with 1008: a bad or missing key, another organisation's call, an unknown or malformed SID, and
//! the 11th connection to one call. The key may come as `?token=`, as `Authorization: Bearer`,
//! or as a WebSocket subprotocol (the offered protocol is echoed, as browsers require).
//!
//! Close codes, only those of the seed's table: 1000 when the call ends, 1001 when the server
//! shuts down, 1002 for a protocol error, 1003 for binary or oversized messages, 1008 for
//! access problems and clients that keep flooding, 1011 for a server error. 1006 is never sent
//! (it means the connection dropped without a close).

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;
use callstream_bus::{Event, Resume, Topic};
use callstream_core::{Call, CallStatus, KeyKind, Payload};
use callstream_surfaces::live_transcript::{self as lt, ClientMessage};

use crate::auth::{self, STREAM_TOKEN_PREFIX, query_token};
use crate::error::ApiError;
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::ws::{
    COMMAND_READS, Limits, Reply, SocketSurface, close, close_with, configure, drive,
    require_upgrade, text,
};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::live_transcript_ws,
};

/// Why a connection is refused with 1008.
type Refusal = &'static str;

/// The subprotocol a browser offers first, before its key (`new WebSocket(url, [PROTOCOL,
/// key])`), and the only one the handshake ever selects.
pub const PROTOCOL: &str = "callstream.live-transcript";

pub async fn socket(
    State(state): State<AppState>,
    Path(call_sid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = require_upgrade(upgrade)?;
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let token = query_token(query.as_deref()).or(bearer).or_else(|| {
        offered
            .iter()
            .find(|p| p.starts_with("pk_live_") || p.starts_with(STREAM_TOKEN_PREFIX))
            .cloned()
    });
    let decision = decide(&state, &call_sid, token.as_deref()).await;
    // A browser that offered subprotocols fails the handshake unless one is selected, and what
    // is selected goes back in a response header, where proxies log it: only the fixed name is
    // ever selected, never a key or token. A client offering the key alone gets no protocol
    // back (browsers then fail the handshake: they must offer the name first).
    let upgrade = if offered.iter().any(|p| p == PROTOCOL) {
        upgrade.protocols([PROTOCOL])
    } else {
        upgrade
    };
    Ok(configure(upgrade, &state, COMMAND_READS)
        .on_upgrade(move |socket| run(state, decision, call_sid, socket)))
}

/// The call to stream, when the credential stops working, and the key behind it.
type Admitted = (
    Call,
    Option<chrono::DateTime<chrono::Utc>>,
    callstream_core::id::KeyId,
);

async fn decide(
    state: &AppState,
    call_sid: &str,
    token: Option<&str>,
) -> Result<Admitted, Refusal> {
    if !lt::valid_call_sid(call_sid) {
        return Err("invalid call SID: expected CA followed by 32 hexadecimal characters");
    }
    let token = token
        .ok_or("authentication required: send ?token=, Authorization: Bearer, or a subprotocol")?;
    let principal = if token.starts_with(STREAM_TOKEN_PREFIX) {
        auth::authenticate_stream_token(state.store(), token).await
    } else {
        auth::authenticate(state.store(), token).await
    }
    .map_err(|_| "authentication failed")?;
    if principal.kind != KeyKind::Api {
        return Err("authentication failed: an API key is required");
    }
    let mut call = state
        .store()
        .call_by_external_id(&principal.workspace_id, call_sid)
        .await
        .map_err(|_| "access denied")?
        .ok_or("access denied: no such call in this organisation")?;
    principal
        .check_call(&call.id)
        .map_err(|_| "access denied: the token is for another call")?;
    state.live().overlay(&mut call);
    Ok((call, principal.expires_at, principal.key_id))
}

async fn run(
    state: AppState,
    decision: Result<Admitted, Refusal>,
    call_sid: String,
    mut socket: WebSocket,
) {
    let (call, expires_at, key) = match decision {
        Ok(admitted) => admitted,
        Err(reason) => {
            let _ = socket.send(close(close_code::POLICY, reason)).await;
            return;
        }
    };
    let config = state.config();
    let max = config.live_transcript_max_connections;
    let _place = match state
        .take_transcript_place(&call.workspace_id, &call.id, max)
        .await
    {
        Ok(Some(place)) => place,
        Ok(None) => {
            let reason = format!("too many connections to this call's transcript (at most {max})");
            let _ = socket.send(close_with(close_code::POLICY, reason)).await;
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot count the call's transcript connections");
            let _ = socket
                .send(close(
                    close_code::ERROR,
                    "the server cannot take connections now; retry",
                ))
                .await;
            return;
        }
    };
    let metrics = state.metrics();
    let _open = OpenStream::new(metrics.open_streams.get_or_create(&LABELS).clone());
    let sent = metrics.frames_sent.get_or_create(&LABELS).clone();

    // The history first, then the events after it. An event can reach this node before the
    // transaction that numbered it commits (a batch is published while its writes complete,
    // docs/operations.md), so a read can miss what a subscription opened just before it already
    // passed by: subscribed after the seqs the reads reflect, such an event comes from the bus's
    // history instead. Live segments the history already holds are skipped by seq.
    let Ok(history) = state.store().transcript(&call.workspace_id, &call.id).await else {
        let _ = socket.send(close(close_code::ERROR, "server error")).await;
        return;
    };
    let history_seq = history.last().map_or(0, |t| t.seq);
    let Ok(mut subscription) = state
        .subscribe(
            &Topic::call(&call.workspace_id, &call.id),
            Resume::After(call.last_seq.max(history_seq)),
            &LABELS,
        )
        .await
    else {
        let _ = socket.send(close(close_code::ERROR, "server error")).await;
        return;
    };
    let mut opening = vec![lt::established(&call_sid, call.status)];
    opening.extend(history.iter().map(|t| {
        lt::transcript(
            &t.text,
            t.role,
            true,
            t.confidence,
            (t.segment_start, t.segment_end),
            &t.ts,
        )
    }));
    for frame in opening {
        sent.inc();
        if socket.send(text(frame)).await.is_err() {
            return;
        }
    }
    if !call.status.is_active() {
        let _ = socket
            .send(text(lt::status(
                &call_sid,
                call.status,
                call.end_reason.as_deref(),
            )))
            .await;
        let _ = socket
            .send(close(close_code::NORMAL, "the call has ended"))
            .await;
        return;
    }

    let limits = Limits {
        messages_per_sec: config.live_transcript_messages_per_sec,
        expires_at,
        key,
    };
    let mut surface = LiveTranscript {
        state: state.clone(),
        call,
        call_sid,
        history_seq,
        saw_end: false,
    };
    drive(
        &state,
        &mut socket,
        &mut subscription,
        &mut surface,
        &LABELS,
        limits,
        None,
    )
    .await;
}

/// Seed 003's words for one call's socket.
struct LiveTranscript {
    state: AppState,
    call: Call,
    call_sid: String,
    /// The last final turn the opening history sent: live ones up to it are not sent again.
    history_seq: u64,
    /// Whether the call's end went out (as a status message).
    saw_end: bool,
}

impl SocketSurface for LiveTranscript {
    fn frame(&mut self, event: &Arc<Event>) -> Option<Bytes> {
        let payload = &event.envelope().payload;
        let repeat = matches!(payload, Payload::Transcription(t) if t.is_final)
            && event.seq() <= self.history_seq;
        self.saw_end |= payload.is_terminal();
        if repeat {
            return None;
        }
        lt::frame(event, &self.call_sid)
    }

    async fn text(&mut self, message: &str) -> Reply {
        match lt::parse(message) {
            Ok(ClientMessage::Ping) => Reply::Frame(lt::pong()),
            Ok(ClientMessage::GetStatus) => {
                match self
                    .state
                    .store()
                    .call(&self.call.workspace_id, &self.call.id)
                    .await
                {
                    Ok(Some(now)) => Reply::Frame(lt::status(
                        &self.call_sid,
                        now.status,
                        now.end_reason.as_deref(),
                    )),
                    _ => Reply::Close(close(close_code::ERROR, "server error")),
                }
            }
            Err(message) => Reply::Frame(lt::error(&message)),
        }
    }

    fn rate_limited(&self, _message: Option<&str>) -> Bytes {
        lt::error(&format!(
            "rate limit: at most {} messages per second",
            self.state.config().live_transcript_messages_per_sec
        ))
    }

    /// The seed's table has 1003 for oversized messages.
    fn too_big(&self) -> Message {
        close(close_code::UNSUPPORTED, "message too big")
    }

    fn broken(&self) -> Option<Message> {
        Some(close(close_code::PROTOCOL, "protocol error"))
    }

    async fn at_end(&mut self) -> Vec<Bytes> {
        // The call's status went out with its last event, unless that was dropped for a full
        // queue.
        if !self.saw_end
            && let Ok(Some(ended)) = self
                .state
                .store()
                .call(&self.call.workspace_id, &self.call.id)
                .await
            && ended.status != CallStatus::InProgress
        {
            return vec![lt::status(
                &self.call_sid,
                ended.status,
                ended.end_reason.as_deref(),
            )];
        }
        Vec::new()
    }
}
