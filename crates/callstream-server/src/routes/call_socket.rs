//! Seed 000 `GET /v1/calls/{id}/stream`: the call event WebSocket.
//!
//! Frames are canonical envelopes, byte for byte the JSON a webhook of the same event carries
//! (both come from `surfaces::native::envelope_json`). Clients may send commands
//! (`surfaces::control`); each is answered with an `ack` or an `error` naming its `id`.
//!
//! Close codes: 1000 when the call ends, 1001 when the server shuts down, 1003 for a binary
//! frame, 1008 for a policy violation (an expired stream token, a client that keeps flooding past
//! the rate limit), 1009 for a message over `ws_max_message_bytes`. Failures before the upgrade
//! are HTTP errors with a JSON body (401, 404, 400).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use callstream_bus::{End, Resume, Subscription, Topic};
use callstream_core::{CallId, KeyKind, WorkspaceId};
use callstream_surfaces::{control, native};
use futures::SinkExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::{BrowserPrincipal, url_pairs};
use crate::error::ApiError;
use crate::limit::{FloodGuard, Verdict};
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::sse_stream::COALESCE_MAX_FRAMES;
use crate::routes::{CallPath, IdPath, load_call};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::native_call_ws,
};

/// How much a socket reads at a time: for sockets whose clients send only small commands (the
/// streaming surfaces). tungstenite zeroes this much of its read buffer on every read attempt,
/// and a streaming socket is polled for reads after every frame it is sent: at 4 KiB that
/// zeroing was 41 % of the server's userspace instructions per WebSocket frame (callgrind,
/// docs/benchmarks.md). A larger message is still read whole, in more reads.
pub const COMMAND_READS: usize = 512;
/// How much the runtime socket reads at a time: its messages are batches of events.
pub const INGEST_READS: usize = 4096;

/// The WebSocket settings every socket surface shares: small read buffers (`reads`;
/// tungstenite's default is 128 KiB per connection), writes gathered up to 16 KiB between
/// flushes (so frames queued for a client that fell behind go out in one write), and the cap
/// on what a client may send.
///
/// What the server sends has no cap of its own: the sink accepts a frame only after it has
/// flushed what it held beyond `WRITE_BUFFER` (its `poll_ready` waits for that), so it never
/// holds more than `WRITE_BUFFER` plus one frame, and every frame is bounded by the event it
/// carries (`max_event_bytes`, checked at ingest). A cap here (`max_write_buffer_size`) could
/// only fail a frame the gateway had accepted, and tungstenite fails the whole socket then: a
/// cap of 256 KiB once closed every viewer of a call on a 300 KB transcript turn.
pub fn configure(upgrade: WebSocketUpgrade, state: &AppState, reads: usize) -> WebSocketUpgrade {
    let max = state.config().ws_max_message_bytes;
    upgrade
        .read_buffer_size(reads)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(max)
        .max_frame_size(max)
}

/// Bytes a socket gathers before it writes them out.
const WRITE_BUFFER: usize = 16 * 1024;

/// The upgrade, or a JSON 400 for a plain HTTP request.
pub fn require_upgrade(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    upgrade.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            format!("this endpoint is a WebSocket: {}", e.body_text()),
        )
    })
}

pub async fn socket(
    State(state): State<AppState>,
    BrowserPrincipal(who): BrowserPrincipal,
    IdPath(id): CallPath,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut since = None;
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "token" => {}
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
    let session = Session {
        state: state.clone(),
        workspace: who.workspace_id.clone(),
        call: id,
        may_command: who.kind == KeyKind::Api && who.call_scope.is_none(),
        expires_at: who.expires_at,
        since,
        last_seq: call.last_seq,
        ended_at_connect: !call.status.is_active(),
    };
    Ok(configure(upgrade, &state, COMMAND_READS)
        .on_upgrade(move |socket| session.run(socket, subscription)))
}

/// How long until `expires_at` (a year when there is none: keys do not expire mid-stream).
pub fn until(expires_at: Option<chrono::DateTime<chrono::Utc>>) -> Duration {
    expires_at.map_or(Duration::from_secs(365 * 24 * 3600), |at| {
        (at - callstream_core::time::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    })
}

struct Session {
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

/// What one read from a client's socket brought, for each socket surface to answer in its own
/// seed's way (the close codes differ: seed 003 closes an oversized message with 1003, the
/// others with 1009; seed 001 answers a binary frame with an error and stays open).
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// A ping or pong (tungstenite answers pings itself).
    Control,
    /// The client closed, or the connection is gone.
    Closed,
    /// A message over `ws_max_message_bytes`.
    TooBig,
    /// Any other violation of the WebSocket protocol.
    Broken,
}

impl Incoming {
    pub fn from_read(read: Option<Result<Message, axum::Error>>) -> Self {
        match read {
            None | Some(Ok(Message::Close(_))) => Self::Closed,
            Some(Ok(Message::Text(text))) => Self::Text(text),
            Some(Ok(Message::Binary(bytes))) => Self::Binary(bytes),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Self::Control,
            Some(Err(err)) => {
                let too_big = err
                    .into_inner()
                    .downcast::<tungstenite::Error>()
                    .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                if too_big { Self::TooBig } else { Self::Broken }
            }
        }
    }
}

/// The keep-alive ping every socket surface sends, then every period; a client that stops
/// reading them is found by the write stall guard.
///
/// The first ping comes at a random point in the second half of the first period, not one
/// period after the socket opened: sockets opened together (a reconnect storm after a deploy,
/// a benchmark's thousand subscribers) would otherwise ping together, every period, for life,
/// and each such burst of writes and pongs delays every stream's frames behind it.
pub fn ping_timer(state: &AppState) -> tokio::time::Interval {
    let period = state.config().ws_ping();
    let first = first_ping(period, getrandom::u32().unwrap_or(u32::MAX));
    let mut ping = tokio::time::interval_at(Instant::now() + first, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping
}

/// When the first ping (or SSE heartbeat) is due: `random` spread over the second half of
/// `period`.
pub(crate) fn first_ping(period: Duration, random: u32) -> Duration {
    let half = period / 2;
    half + half.mul_f64(f64::from(random) / (f64::from(u32::MAX) + 1.0))
}

/// The close every socket surface sends when its subscription was interrupted rather than
/// finished (1013, try again later: reconnect and resume).
pub fn interrupted() -> Message {
    close(
        close_code::AGAIN,
        "the live stream was interrupted; reconnect to resume",
    )
}

/// The close every socket surface sends at shutdown (1001).
pub fn going_away() -> Message {
    close(close_code::AWAY, "the server is shutting down")
}

/// The close for a binary frame where JSON text is expected (1003).
pub fn binary_refused() -> Message {
    close(
        close_code::UNSUPPORTED,
        "binary frames are not accepted; send JSON text",
    )
}

pub fn text(bytes: Bytes) -> Message {
    // Every frame is serde_json output, which is always UTF-8.
    Message::Text(Utf8Bytes::try_from(bytes).unwrap_or_default())
}

pub fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// [`close`] with a reason made at run time (at most 123 bytes fit a close frame).
pub fn close_with(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

impl Session {
    async fn run(self, mut socket: WebSocket, mut subscription: Subscription) {
        let metrics = self.state.metrics();
        let _open = OpenStream::new(metrics.open_streams.get_or_create(&LABELS).clone());
        let sent = metrics.frames_sent.get_or_create(&LABELS).clone();
        let limited = metrics.rate_limited.get_or_create(&LABELS).clone();

        // What the bus still holds may not reach back to the resume point (its history is
        // bounded, and empty after a restart): say which seqs are gone.
        if let Some(since) = self.since {
            let history_from = subscription
                .first_backlog_seq()
                .unwrap_or(self.last_seq.saturating_add(1));
            if since.saturating_add(1) < history_from.min(self.last_seq.saturating_add(1)) {
                let message = format!(
                    "events after seq {since} up to {} are no longer held; the stream resumes after them",
                    history_from.min(self.last_seq.saturating_add(1)) - 1
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
            // A finished call: what the history still holds after `since`, then the close. The
            // subscription's live side is not used (the bus may have forgotten the call).
            for event in subscription.take_backlog() {
                sent.inc();
                if socket
                    .send(text(native::envelope_json(&event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = socket
                .send(close(close_code::NORMAL, "the call has ended"))
                .await;
            return;
        }

        let config = self.state.config();
        let mut guard = FloodGuard::new(
            config.ws_client_messages_per_sec,
            config.ws_flood_close_secs,
        );
        let in_flight = Arc::new(Semaphore::new(config.ws_max_commands_in_flight));
        let (replies, mut reply_rx) =
            mpsc::channel::<Bytes>(config.ws_max_commands_in_flight.max(1));
        let mut ping = ping_timer(&self.state);
        let shutdown = self.state.shutdown().clone();
        let expiry = tokio::time::sleep(until(self.expires_at));
        tokio::pin!(expiry);

        loop {
            let outgoing = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = socket.send(going_away()).await;
                    return;
                }
                () = &mut expiry => {
                    let _ = socket.send(close(close_code::POLICY, "the stream token has expired")).await;
                    return;
                }
                Some(reply) = reply_rx.recv() => text(reply),
                event = subscription.next() => match event {
                    Some(event) => {
                        // Hand what is already queued behind this event to the socket too, and
                        // flush once: a client that fell behind costs one write, not one each.
                        sent.inc();
                        if socket.feed(text(native::envelope_json(&event))).await.is_err() {
                            return;
                        }
                        for _ in 0..COALESCE_MAX_FRAMES {
                            let Some(more) = subscription.try_next() else { break };
                            sent.inc();
                            if socket.feed(text(native::envelope_json(&more))).await.is_err() {
                                return;
                            }
                        }
                        if socket.flush().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    None if subscription.end() != End::Finished => {
                        // The stream was interrupted (the bus lost what it cannot replay, or
                        // stopped): the client resumes with `since`, and is told what is gone.
                        let _ = socket.send(interrupted()).await;
                        return;
                    }
                    None => {
                        // The call ended. Answer the commands still in flight first (an
                        // `end_call` is typically one of them), then close: each holds a sender
                        // of `replies`, so once ours is dropped the channel ends when they have
                        // all answered.
                        drop(replies);
                        let deadline = Instant::now() + config.command_timeout();
                        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, reply_rx.recv()).await {
                            if socket.send(text(reply)).await.is_err() {
                                return;
                            }
                        }
                        let _ = socket.send(close(close_code::NORMAL, "the call has ended")).await;
                        return;
                    }
                },
                incoming = socket.recv() => match Incoming::from_read(incoming) {
                    Incoming::Closed | Incoming::Broken => return,
                    Incoming::TooBig => {
                        let _ = socket.send(close(close_code::SIZE, "message too big")).await;
                        return;
                    }
                    Incoming::Binary(_) => {
                        let _ = socket.send(binary_refused()).await;
                        return;
                    }
                    Incoming::Control => continue,
                    Incoming::Text(message) => {
                        let verdict = guard.check();
                        if verdict == Verdict::Serve {
                            match self.handle(message.as_str(), &in_flight, &replies) {
                                Some(frame) => text(frame),
                                None => continue,
                            }
                        } else {
                            limited.inc();
                            if verdict == Verdict::Close {
                                let _ = socket.send(close(close_code::POLICY, "too many messages")).await;
                                return;
                            }
                            let id = control::peek_id(message.as_str());
                            let notice = format!(
                                "more than {} messages per second; this one was not carried out",
                                config.ws_client_messages_per_sec
                            );
                            text(control::error_frame(id.as_deref(), "rate_limited", &notice))
                        }
                    }
                },
                _ = ping.tick() => Message::Ping(Bytes::new()),
            };
            if socket.send(outgoing).await.is_err() {
                return;
            }
        }
    }

    /// Handles one client message: an immediate answer, or `None` when the command was sent on
    /// and its answer will come through `replies`.
    fn handle(
        &self,
        message: &str,
        in_flight: &Arc<Semaphore>,
        replies: &mpsc::Sender<Bytes>,
    ) -> Option<Bytes> {
        let parsed = match control::parse(message) {
            Ok(parsed) => parsed,
            Err(refusal) => return Some(refusal.to_frame()),
        };
        if !self.may_command {
            return Some(control::error_frame(
                Some(&parsed.id),
                "forbidden",
                "this connection may watch the call but not control it (a stream token); use an API key",
            ));
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            return Some(control::error_frame(
                Some(&parsed.id),
                "too_many_commands",
                "too many commands are waiting for the call runtime; wait for their answers",
            ));
        };
        let (state, workspace, call, replies) = (
            self.state.clone(),
            self.workspace.clone(),
            self.call.clone(),
            replies.clone(),
        );
        tokio::spawn(async move {
            let frame =
                match crate::commands::execute(&state, &workspace, &call, parsed.command).await {
                    Ok(()) => control::ack_frame(&parsed.id),
                    Err(err) => control::error_frame(Some(&parsed.id), err.code, &err.message),
                };
            let _ = replies.send(frame).await;
            drop(permit);
        });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pings_spread_over_the_second_half_of_the_period() {
        let period = Duration::from_secs(30);
        assert_eq!(first_ping(period, 0), Duration::from_secs(15));
        assert!(first_ping(period, u32::MAX) < period);
        assert!(first_ping(period, u32::MAX) > Duration::from_millis(29_999));
        assert_eq!(first_ping(period, 1 << 31), Duration::from_millis(22_500));
        assert_eq!(first_ping(Duration::ZERO, 12345), Duration::ZERO);
    }
}
