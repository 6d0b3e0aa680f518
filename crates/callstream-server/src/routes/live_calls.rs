//! Seed 001: `GET /ws/v1/liveCalls?conversationToken=…`, the live-call control socket.
//!
//! Before the upgrade, exactly the seed's answers: 401 for missing or bad authentication
//! (`Authorization: Bearer` with an API key is required), 400 for a missing or malformed
//! `conversationToken` or a malformed header parameter, 404 for an unknown token or a call that is
//! no longer active. The token is the call log entry's `live_conversation_token`.
//!
//! Header parameters (the seed describes them without naming them): `X-Product-Version`, which
//! must be `major.minor.patch` when sent, and `X-User-Id`, the logged-in user, who becomes the
//! user a `client:joinCall` transfers the call to.
//!
//! After the upgrade: `event:start` at once (and `event:end` right after it when screening had
//! already ended); then `event:end` when screening ends, `transcript`
//! for each final turn, and `event:callEnd` when the call ends, after which the socket closes
//! with 1000. `client:joinCall` and `client:endCall` are carried out on the call through the
//! runtime and answered with `ack` (`ackId`), or `error` with a `description`. Malformed
//! messages get an `error` and the socket stays open.

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use callstream_bus::{Resume, Topic};
use callstream_core::{Call, Command, Payload, time};
use callstream_surfaces::live_calls::{self as lc, Request};
use futures::SinkExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::auth::{ApiKey, url_pairs};
use crate::error::ApiError;
use crate::limit::{FloodGuard, Verdict};
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::call_socket::{
    COMMAND_READS, Incoming, close, configure, going_away, ping_timer, require_upgrade, text,
};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::live_calls_ws,
};

/// The user a join transfers to when the request names none.
const DEFAULT_USER: &str = "operator";

fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn valid_token(t: &str) -> bool {
    t.strip_prefix("lct_")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub async fn socket(
    State(state): State<AppState>,
    who: Result<ApiKey, ApiError>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // The seed answers every authentication failure with 401, a runtime key included.
    let ApiKey(who) = who.map_err(|mut e| {
        if e.code == "forbidden" {
            e.status = axum::http::StatusCode::UNAUTHORIZED;
            e.code = "unauthorized";
        }
        e
    })?;
    let token = url_pairs(query.as_deref().unwrap_or(""))
        .find(|(k, _)| k == "conversationToken")
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::bad_request("conversationToken: required"))?;
    if !valid_token(&token) {
        return Err(ApiError::bad_request("conversationToken: malformed"));
    }
    if let Some(version) = headers.get("x-product-version")
        && !version.to_str().is_ok_and(valid_version)
    {
        return Err(ApiError::bad_request(
            "X-Product-Version: expected major.minor.patch, e.g. 2.1.3",
        ));
    }
    let user = match headers.get("x-user-id") {
        Some(v) => {
            let user = v
                .to_str()
                .ok()
                .filter(|u| !u.is_empty() && u.len() <= 128)
                .map(str::to_owned);
            Some(user.ok_or_else(|| {
                ApiError::bad_request("X-User-Id: expected 1 to 128 printable characters")
            })?)
        }
        None => None,
    };
    let mut call = state
        .store()
        .call_by_live_token(&who.workspace_id, &token)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation token"))?;
    if !call.status.is_active() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "the call is no longer active",
        ));
    }
    state.live().overlay(&mut call);
    let upgrade = require_upgrade(upgrade)?;
    let user = user.unwrap_or_else(|| DEFAULT_USER.to_owned());
    Ok(configure(upgrade, &state, COMMAND_READS)
        .on_upgrade(move |socket| run(state, call, user, socket)))
}

async fn run(state: AppState, call: Call, user: String, mut socket: WebSocket) {
    let metrics = state.metrics();
    let _open = OpenStream::new(metrics.open_streams.get_or_create(&LABELS).clone());
    let sent = metrics.frames_sent.get_or_create(&LABELS).clone();
    let config = state.config();
    let Ok(mut subscription) = state
        .subscribe(
            &Topic::call(&call.workspace_id, &call.id),
            Resume::Live,
            &LABELS,
        )
        .await
    else {
        let _ = socket
            .send(text(lc::error("live events are unavailable")))
            .await;
        let _ = socket.send(close(close_code::ERROR, "server error")).await;
        return;
    };
    // Read the call again now that the subscription is open: the end of screening (and the
    // call's end) are recorded before they are published, so what happened before this read is
    // in the record, and what happens after reaches the subscription.
    let call = match state.store().call(&call.workspace_id, &call.id).await {
        Ok(Some(call)) => call,
        _ => {
            let _ = socket
                .send(text(lc::error("the call could not be read")))
                .await;
            let _ = socket.send(close(close_code::ERROR, "server error")).await;
            return;
        }
    };
    let mut opening = vec![lc::start(call.phone.as_str(), &call.started_at)];
    let mut screening_said = false;
    if let Some(screening) = &call.screening {
        opening.push(lc::screening_end(&screening.msg));
        screening_said = true;
    }
    if let Some(ended_at) = call.ended_at.filter(|_| !call.status.is_active()) {
        opening.push(lc::call_end(&ended_at));
    }
    for frame in opening {
        sent.inc();
        if socket.send(text(frame)).await.is_err() {
            return;
        }
    }
    if !call.status.is_active() {
        let _ = socket
            .send(close(close_code::NORMAL, "the call has ended"))
            .await;
        return;
    }
    let mut guard = FloodGuard::new(
        config.ws_client_messages_per_sec,
        config.ws_flood_close_secs,
    );
    let limited = metrics.rate_limited.get_or_create(&LABELS).clone();
    let in_flight = Arc::new(Semaphore::new(config.ws_max_commands_in_flight));
    let (replies, mut reply_rx) = mpsc::channel::<Bytes>(config.ws_max_commands_in_flight.max(1));
    let mut ping = ping_timer(&state);
    let shutdown = state.shutdown().clone();
    let mut ended = false;
    loop {
        let outgoing = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                let _ = socket.send(going_away()).await;
                return;
            }
            Some(reply) = reply_rx.recv() => text(reply),
            event = subscription.next() => match event {
                Some(event) => {
                    let payload = &event.envelope().payload;
                    if payload.is_terminal() {
                        // Answer the requests still in flight first (the endCall that ended the
                        // call is typically one): a client that closes on `event:callEnd`, as the
                        // seed's lifecycle suggests, must have its ack by then. Bounded by the
                        // command timeout, like the wait at the end of the stream.
                        let waiting = config.ws_max_commands_in_flight - in_flight.available_permits();
                        let deadline = Instant::now() + config.command_timeout();
                        for _ in 0..waiting {
                            match tokio::time::timeout_at(deadline, reply_rx.recv()).await {
                                Ok(Some(reply)) => {
                                    if socket.send(text(reply)).await.is_err() {
                                        return;
                                    }
                                }
                                _ => break,
                            }
                        }
                        while let Ok(reply) = reply_rx.try_recv() {
                            if socket.send(text(reply)).await.is_err() {
                                return;
                            }
                        }
                    }
                    ended |= payload.is_terminal();
                    if matches!(payload, Payload::ScreeningEnded(_)) {
                        if screening_said {
                            continue;
                        }
                        screening_said = true;
                    }
                    match lc::frame(&event) {
                        Some(frame) => {
                            sent.inc();
                            text(frame)
                        }
                        None => continue,
                    }
                }
                None if subscription.end() != callstream_bus::End::Finished => {
                    let _ = socket.send(crate::routes::call_socket::interrupted()).await;
                    return;
                }
                None => {
                    // The call ended: the answers to requests still in flight (an endCall is
                    // typically one), the end if it was lost to a full queue, then the close.
                    drop(replies);
                    let deadline = Instant::now() + config.command_timeout();
                    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, reply_rx.recv()).await {
                        if socket.feed(text(reply)).await.is_err() {
                            return;
                        }
                    }
                    if !ended {
                        let _ = socket.feed(text(lc::call_end(&time::now()))).await;
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
                Incoming::Control => continue,
                message @ (Incoming::Binary(_) | Incoming::Text(_)) => {
                    // Every message counts toward the limit, binary ones included. A client over it
                    // for more than `ws_flood_close_secs` seconds in a row is closed with 1008.
                    let verdict = guard.check();
                    if verdict != Verdict::Serve {
                        limited.inc();
                        if verdict == Verdict::Close {
                            let _ = socket.send(close(close_code::POLICY, "too many messages")).await;
                            return;
                        }
                        text(lc::error(&format!("rate limit: more than {} messages per second; this one was not carried out", config.ws_client_messages_per_sec)))
                    } else if let Incoming::Text(message) = message {
                        match lc::parse(message.as_str()) {
                            Err(description) => text(lc::error(&description)),
                            Ok(request) => {
                                let (id, command) = match request {
                                    Request::JoinCall { id } => (id, Command::JoinCall { user_id: user.clone() }),
                                    Request::EndCall { id } => (id, Command::EndCall),
                                };
                                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                                    let _ = socket.send(text(lc::error("too many requests are waiting for the call runtime"))).await;
                                    continue;
                                };
                                let (state, call_id, workspace, replies) =
                                    (state.clone(), call.id.clone(), call.workspace_id.clone(), replies.clone());
                                tokio::spawn(async move {
                                    let frame = match crate::commands::execute(&state, &workspace, &call_id, command).await {
                                        Ok(()) => lc::ack(&id),
                                        Err(err) => lc::error(&format!("{id}: {}", err.message)),
                                    };
                                    // The answer is queued before the permit is given back, so
                                    // that a request still holding one always has its answer to come.
                                    let _ = replies.send(frame).await;
                                    drop(permit);
                                });
                                continue;
                            }
                        }
                    } else {
                        text(lc::error("binary messages are not accepted; send JSON text"))
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
