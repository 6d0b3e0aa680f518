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
use axum::extract::ws::{WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use callstream_bus::{Event, Resume, Topic};
use callstream_core::{Call, Command, Payload, time};
use callstream_surfaces::live_calls::{self as lc, Request};

use crate::auth::{ApiKey, url_pairs};
use crate::error::ApiError;
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::ws::{
    COMMAND_READS, Limits, Reply, SocketSurface, close, configure, drive, require_upgrade, text,
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
        .on_upgrade(move |socket| run(state, call, user, who, socket)))
}

async fn run(
    state: AppState,
    call: Call,
    user: String,
    who: crate::auth::Principal,
    mut socket: WebSocket,
) {
    let metrics = state.metrics();
    let _open = OpenStream::new(metrics.open_streams.get_or_create(&LABELS).clone());
    let sent = metrics.frames_sent.get_or_create(&LABELS).clone();
    let config = state.config();
    // Read the call again, then subscribe after the seq the read reflects. An event can reach
    // this node before the transaction that numbered it commits (a batch is published while its
    // writes complete, docs/operations.md): a subscription opened before the read could let an
    // end of screening pass by that the read does not show yet. Subscribed after the read's seq,
    // such an event comes from the bus's history.
    let mut call = match state.store().call(&call.workspace_id, &call.id).await {
        Ok(Some(call)) => call,
        _ => {
            let _ = socket
                .send(text(lc::error("the call could not be read")))
                .await;
            let _ = socket.send(close(close_code::ERROR, "server error")).await;
            return;
        }
    };
    // The embedded store holds the end of the call's seq reservation: this node's last
    // published seq is the one the read reflects.
    state.live().overlay(&mut call);
    let Ok(mut subscription) = state
        .subscribe(
            &Topic::call(&call.workspace_id, &call.id),
            Resume::After(call.last_seq),
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
    let limits = Limits {
        messages_per_sec: config.ws_client_messages_per_sec,
        expires_at: who.expires_at,
        key: who.key_id,
    };
    let mut surface = LiveCall {
        state: state.clone(),
        call,
        user,
        screening_said,
        ended: false,
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

/// Seed 001's words for one call's socket.
struct LiveCall {
    state: AppState,
    call: Call,
    /// The user a join transfers the call to.
    user: String,
    /// Whether `event:end` (screening over) went out: it is said once.
    screening_said: bool,
    /// Whether `event:callEnd` went out.
    ended: bool,
}

impl SocketSurface for LiveCall {
    fn frame(&mut self, event: &Arc<Event>) -> Option<Bytes> {
        let payload = &event.envelope().payload;
        self.ended |= payload.is_terminal();
        if matches!(payload, Payload::ScreeningEnded(_)) {
            if self.screening_said {
                return None;
            }
            self.screening_said = true;
        }
        lc::frame(event)
    }

    async fn text(&mut self, message: &str) -> Reply {
        let request = match lc::parse(message) {
            Ok(request) => request,
            Err(description) => return Reply::Frame(lc::error(&description)),
        };
        let (id, command) = match request {
            Request::JoinCall { id } => (
                id,
                Command::JoinCall {
                    user_id: self.user.clone(),
                },
            ),
            Request::EndCall { id } => (id, Command::EndCall),
        };
        let (state, call_id, workspace) = (
            self.state.clone(),
            self.call.id.clone(),
            self.call.workspace_id.clone(),
        );
        Reply::Command {
            run: Box::pin(async move {
                match crate::commands::execute(&state, &workspace, &call_id, command).await {
                    Ok(()) => lc::ack(&id),
                    Err(err) => lc::error(&format!("{id}: {}", err.message)),
                }
            }),
            if_busy: lc::error("too many requests are waiting for the call runtime"),
        }
    }

    /// Binary messages count toward the rate limit, and are answered with an error: the socket
    /// stays open, as for any malformed message.
    fn binary(&mut self) -> Reply {
        Reply::Frame(lc::error(
            "binary messages are not accepted; send JSON text",
        ))
    }

    fn limits_binary(&self) -> bool {
        true
    }

    fn rate_limited(&self, _message: Option<&str>) -> Bytes {
        lc::error(&format!(
            "rate limit: more than {} messages per second; this one was not carried out",
            self.state.config().ws_client_messages_per_sec
        ))
    }

    /// A client that closes on `event:callEnd`, as the seed's lifecycle suggests, must have its
    /// ack by then.
    fn answers_before_end(&self) -> bool {
        true
    }

    async fn at_end(&mut self) -> Vec<Bytes> {
        // The end, if it was lost to a full queue.
        if self.ended {
            Vec::new()
        } else {
            vec![lc::call_end(&time::now())]
        }
    }
}
