//! Seed 000 `GET /v1/calls/{id}/stream`: the call event WebSocket.
//!
//! Frames are canonical envelopes, byte for byte the JSON a webhook of the same event carries
//! (both come from `surfaces::native::envelope_json`). Clients may send commands
//! (`surfaces::control`); each is answered with an `ack` or an `error` naming its `id`.
//!
//! `?audio=inbound|outbound|both` adds the call's audio of those tracks as binary messages, in
//! the runtime socket's frame format, from the upgrade on (for listening in a browser).
//!
//! Close codes: 1000 when the call ends, 1001 when the server shuts down, 1003 for a binary
//! frame, 1008 for a policy violation (an expired stream token, a client that keeps flooding past
//! the rate limit), 1009 for a message over `ws_max_message_bytes`. Failures before the upgrade
//! are HTTP errors with a JSON body (401, 404, 400).

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use callstream_bus::{Event, Resume, SubscribeOptions, Subscription, Topic};
use callstream_core::{CallId, KeyKind, WorkspaceId};
use callstream_surfaces::{control, native};

use crate::auth::{BrowserPrincipal, url_pairs};
use crate::error::ApiError;
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::ws::{
    COMMAND_READS, Limits, Listen, Reply, SocketSurface, close, configure, drive, require_upgrade,
    text,
};
use crate::routes::{CallPath, IdPath, load_call};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::native_call_ws,
};

/// Audio frames that may wait for a listening viewer (both tracks: 200 ms) before newer ones are
/// dropped for it alone.
const AUDIO_QUEUE: usize = 20;

pub async fn socket(
    State(state): State<AppState>,
    BrowserPrincipal(who): BrowserPrincipal,
    IdPath(id): CallPath,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut since = None;
    let mut audio = None;
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "token" => {}
            "audio" => {
                audio = Some(match value.as_str() {
                    "inbound" => (true, false),
                    "outbound" => (false, true),
                    "both" => (true, true),
                    _ => {
                        return Err(ApiError::bad_request(
                            "audio: expected inbound, outbound or both",
                        ));
                    }
                });
            }
            "since" => {
                since = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("since: expected a seq (a whole number)")
                })?);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    who.check_call(&id)?;
    let call = load_call(&state, &who.workspace_id, &id).await?;
    let upgrade = require_upgrade(upgrade)?;
    let topic = Topic::call(&who.workspace_id, &id);
    // Subscribe before the upgrade so nothing published in between is missed. A call that has
    // ended gives a subscription that ends after its backlog.
    let subscription = state
        .subscribe(&topic, since.map_or(Resume::Live, Resume::After), &LABELS)
        .await
        .map_err(|e| ApiError::unavailable(format!("live events are unavailable: {e}")))?;
    // The call's audio, from now on, for a viewer that asked for it (binary messages).
    let listen = match audio {
        Some((inbound, outbound)) if call.status.is_active() => {
            let options = SubscribeOptions {
                queue_capacity: AUDIO_QUEUE,
                dropped: state.metrics().audio.listener_dropped.clone(),
            };
            let audio = state
                .bus()
                .subscribe_audio(&who.workspace_id, &id, options)
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("the call's audio is unavailable: {e}"))
                })?;
            Some(Listen {
                audio,
                inbound,
                outbound,
            })
        }
        _ => None,
    };
    let session = Session {
        listen,
        state: state.clone(),
        workspace: who.workspace_id.clone(),
        call: id,
        may_command: who.kind == KeyKind::Api && who.call_scope.is_none(),
        expires_at: who.expires_at,
        key: who.key_id.clone(),
        since,
        last_seq: call.last_seq,
        ended_at_connect: !call.status.is_active(),
    };
    Ok(configure(upgrade, &state, COMMAND_READS)
        .on_upgrade(move |socket| session.run(socket, subscription)))
}

struct Session {
    /// The call's audio, when the viewer asked for it.
    listen: Option<Listen>,
    /// The key the socket was opened with, or that minted its stream token.
    key: callstream_core::id::KeyId,
    state: AppState,
    workspace: WorkspaceId,
    call: CallId,
    /// Stream tokens are for watching: they may not control the call.
    may_command: bool,
    /// The client's resume point.
    since: Option<u64>,
    /// The call's last seq when the client connected (the store's word, whatever the bus holds).
    last_seq: u64,
    ended_at_connect: bool,
    /// A stream token's expiry: the socket closes with 1008 then.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Session {
    async fn run(self, mut socket: WebSocket, mut subscription: Subscription) {
        let metrics = self.state.metrics();
        let _open = OpenStream::new(metrics.open_streams.get_or_create(&LABELS).clone());
        let sent = metrics.frames_sent.get_or_create(&LABELS).clone();

        // A finished call's terminal event is kept with the call: a viewer who connects after
        // the end learns how it ended, as one who watched did, even once the history has
        // forgotten the call.
        let stored_end = if self.ended_at_connect {
            self.state
                .store()
                .call_end_event(&self.workspace, &self.call)
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        // What the bus still holds may not reach back to the resume point (its history is
        // bounded, and empty after a restart): say which seqs are gone.
        if let Some(since) = self.since {
            let mut held_from = subscription
                .first_backlog_seq()
                .unwrap_or(self.last_seq.saturating_add(1))
                .min(self.last_seq.saturating_add(1));
            if stored_end.is_some() {
                held_from = held_from.min(self.last_seq);
            }
            if since.saturating_add(1) < held_from {
                let message = format!(
                    "events after seq {since} up to {} are no longer held; the stream resumes after them",
                    held_from - 1
                );
                if socket
                    .send(text(control::error_frame(None, "resume_gap", &message)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if self.ended_at_connect {
            // A finished call: what the history still holds after `since`, then its terminal
            // event from the store if the history did not hold it, then the close. The
            // subscription's live side is not used (the bus may have forgotten the call).
            let mut told_end = false;
            for event in subscription.take_backlog() {
                told_end |= event.envelope().payload.is_terminal();
                sent.inc();
                if socket
                    .send(text(native::envelope_json(&event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(end) = stored_end
                && !told_end
                && self.since.is_none_or(|since| since < self.last_seq)
            {
                sent.inc();
                if socket.send(text(Bytes::from(end))).await.is_err() {
                    return;
                }
            }
            let _ = socket
                .send(close(close_code::NORMAL, "the call has ended"))
                .await;
            return;
        }

        let limits = Limits {
            messages_per_sec: self.state.config().ws_client_messages_per_sec,
            expires_at: self.expires_at,
            key: self.key.clone(),
        };
        let state = self.state.clone();
        let mut surface = self;
        let listen = surface.listen.take();
        drive(
            &state,
            &mut socket,
            &mut subscription,
            &mut surface,
            &LABELS,
            limits,
            listen,
        )
        .await;
    }
}

impl SocketSurface for Session {
    fn frame(&mut self, event: &Arc<Event>) -> Option<Bytes> {
        Some(native::envelope_json(event))
    }

    async fn text(&mut self, message: &str) -> Reply {
        let parsed = match control::parse(message) {
            Ok(parsed) => parsed,
            Err(refusal) => return Reply::Frame(refusal.to_frame()),
        };
        if !self.may_command {
            return Reply::Frame(control::error_frame(
                Some(&parsed.id),
                "forbidden",
                "this connection may watch the call but not control it (a stream token); use an API key",
            ));
        }
        let if_busy = control::error_frame(
            Some(&parsed.id),
            "too_many_commands",
            "too many commands are waiting for the call runtime; wait for their answers",
        );
        let (state, workspace, call) = (
            self.state.clone(),
            self.workspace.clone(),
            self.call.clone(),
        );
        Reply::Command {
            run: Box::pin(async move {
                match crate::commands::execute(&state, &workspace, &call, parsed.command).await {
                    Ok(()) => control::ack_frame(&parsed.id),
                    Err(err) => control::error_frame(Some(&parsed.id), err.code, &err.message),
                }
            }),
            if_busy,
        }
    }

    fn rate_limited(&self, message: Option<&str>) -> Bytes {
        let id = message.and_then(control::peek_id);
        let notice = format!(
            "more than {} messages per second; this one was not carried out",
            self.state.config().ws_client_messages_per_sec
        );
        control::error_frame(id.as_deref(), "rate_limited", &notice)
    }
}
