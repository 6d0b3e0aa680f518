//! Conversations (SMS and WhatsApp): creation and event ingest by the runtime, list/get with
//! message history and operator handoff by API clients, and seed 000's conversation stream.
//!
//! The stream takes the `Authorization` header only: the middleware refuses `?token=` on this
//! path with 401 before anything else runs, as the seed requires.

use std::collections::VecDeque;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use callstream_bus::{Event, Resume, Topic};
use callstream_core::event::ModeChanged;
use callstream_core::{Channel, Conversation, ConversationId, ConversationMode, Payload, time};
use callstream_store::{ConversationFilter, NewEvent};
use callstream_surfaces::{native, sse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::{ApiKey, RuntimeKey, url_pairs};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::ingest;
use crate::metrics::{Surface, SurfaceLabels};
use crate::routes::sse_stream::{AtEnd, SseStream, SseSurface, Step};
use crate::routes::{ConversationPath, IdPath, load_conversation};
use crate::state::AppState;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::native_conversation_sse,
};
const MAX_PARTICIPANTS: usize = 20;
const MAX_PARTICIPANT_LEN: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    channel: Channel,
    participants: Vec<String>,
    #[serde(default)]
    mode: Option<ConversationMode>,
}

/// `POST /v1/conversations` (runtime key).
#[utoipa::path(
    post,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "Announce a conversation (the runtime)",
    security(("runtime_key" = [])),
    request_body = crate::openapi::CreateConversation,
    responses(
        (status = 201, description = "The conversation", body = callstream_core::Conversation),
        (status = 400, description = "A field is missing or malformed", body = crate::openapi::Error),
        (status = 401, description = "No runtime key, or not a valid one", body = crate::openapi::Error),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    RuntimeKey(who): RuntimeKey,
    JsonBody(body): JsonBody<CreateConversation>,
) -> Result<impl IntoResponse, ApiError> {
    let valid = !body.participants.is_empty()
        && body.participants.len() <= MAX_PARTICIPANTS
        && body.participants.iter().all(|p| {
            !p.is_empty() && p.len() <= MAX_PARTICIPANT_LEN && !p.chars().any(char::is_control)
        });
    if !valid {
        return Err(ApiError::bad_request(format!(
            "body.participants: 1 to {MAX_PARTICIPANTS} addresses (phone numbers or channel handles) of 1 to {MAX_PARTICIPANT_LEN} printable characters"
        )));
    }
    let conversation = Conversation {
        id: ConversationId::new(),
        workspace_id: who.workspace_id,
        channel: body.channel,
        participants: body.participants,
        mode: body.mode.unwrap_or(ConversationMode::Ai),
        created_at: time::now(),
        last_seq: 0,
    };
    state.store().create_conversation(&conversation).await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

/// `POST /v1/conversations/{id}/events` (runtime key): `message.*` and
/// `conversation.mode_changed` events, one or an array.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/events",
    tag = "conversations",
    summary = "Send a conversation's events (the runtime)",
    description = "`message.received`, `message.sent`, `message.delivered`, `message.read`, `message.failed` and `conversation.mode_changed`, one or an array, in order.",
    security(("runtime_key" = [])),
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    request_body(content = crate::openapi::IncomingEvents, example = json!({"event_type": "message.received", "payload": {"message_id": "msg_1", "direction": "inbound", "status": "received", "text": "Can I move my appointment?"}})),
    responses(
        (status = 202, description = "Numbered and published", body = crate::openapi::Accepted),
        (status = 400, description = "An event is malformed (`invalid_event`, naming the field)", body = crate::openapi::Error),
        (status = 401, description = "No runtime key, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such conversation in the workspace", body = crate::openapi::Error),
        (status = 413, description = "The body or an event is too large", body = crate::openapi::Error),
    )
)]
pub async fn ingest_events(
    State(state): State<AppState>,
    RuntimeKey(who): RuntimeKey,
    IdPath(id): ConversationPath,
    JsonBody(body): JsonBody<Box<RawValue>>,
) -> Result<impl IntoResponse, ApiError> {
    ingest::check_event_sizes(body.get(), state.config().max_event_bytes)?;
    load_conversation(&state, &who.workspace_id, &id).await?;
    let events = ingest::parse_batch(
        &body,
        ingest::Target::Conversation,
        state.config().max_events_per_request,
    )?;
    let appended =
        ingest::append_conversation_events(&state, &who.workspace_id, &id, events).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "seqs": appended.seqs(), "event_ids": appended.event_ids() })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMode {
    mode: ConversationMode,
    actor_user_id: String,
}

/// `POST /v1/conversations/{id}/mode` (API key): operator handoff, e.g. `ai` → `human`.
/// Publishes `conversation.mode_changed` with the actor.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/mode",
    tag = "conversations",
    summary = "Hand a conversation over (operator handoff)",
    description = "`human`: an operator takes over from the AI; `ai`: hands it back. Publishes `conversation.mode_changed` with the actor.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    request_body = crate::openapi::ChangeMode,
    responses(
        (status = 200, description = "The conversation in its new mode", body = callstream_core::Conversation),
        (status = 400, description = "A field is missing or malformed", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such conversation in the workspace", body = crate::openapi::Error),
        (status = 409, description = "Already in that mode (`mode_conflict`)", body = crate::openapi::Error),
    )
)]
pub async fn change_mode(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): ConversationPath,
    JsonBody(body): JsonBody<ChangeMode>,
) -> Result<impl IntoResponse, ApiError> {
    if body.actor_user_id.is_empty() || body.actor_user_id.len() > MAX_PARTICIPANT_LEN {
        return Err(ApiError::bad_request(format!(
            "body.actor_user_id: 1 to {MAX_PARTICIPANT_LEN} characters"
        )));
    }
    let current = load_conversation(&state, &who.workspace_id, &id).await?;
    if current.mode == body.mode {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "mode_conflict",
            format!("the conversation is already in {} mode", body.mode),
        ));
    }
    let change = Payload::ModeChanged(ModeChanged {
        from_mode: current.mode,
        to_mode: body.mode,
        actor_user_id: body.actor_user_id,
    });
    let appended = ingest::append_conversation_events(
        &state,
        &who.workspace_id,
        &id,
        vec![NewEvent::new(time::now(), change)],
    )
    .await?;
    Ok(Json(appended.subject))
}

/// `GET /v1/conversations?mode=&channel=&limit=` (API key).
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    summary = "The workspace's conversations",
    security(("api_key" = []), ("session" = [])),
    params(
        ("mode" = Option<String>, Query, description = "`ai` or `human`"),
        ("channel" = Option<String>, Query, description = "`sms` or `whatsapp`"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (50)"),
    ),
    responses(
        (status = 200, description = "The conversations, newest first", body = crate::openapi::ConversationList),
        (status = 400, description = "A query parameter is unknown or malformed", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut filter = ConversationFilter {
        limit: 50,
        ..Default::default()
    };
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "mode" => {
                filter.mode = Some(
                    ConversationMode::parse(&value)
                        .ok_or_else(|| ApiError::bad_request("mode: expected ai or human"))?,
                );
            }
            "channel" => {
                filter.channel =
                    Some(Channel::parse(&value).ok_or_else(|| {
                        ApiError::bad_request("channel: expected sms or whatsapp")
                    })?);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| ApiError::bad_request("limit: expected 1 to 500"))?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    let conversations = state
        .store()
        .conversations(&who.workspace_id, &filter)
        .await?;
    Ok(Json(json!({ "conversations": conversations })))
}

/// `GET /v1/conversations/{id}` (API key): the conversation with its message history.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    summary = "One conversation with its messages",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The conversation's id (`conv_…`)")),
    responses(
        (status = 200, description = "The conversation and each message in its latest state", body = crate::openapi::ConversationWithMessages),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such conversation in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): ConversationPath,
) -> Result<impl IntoResponse, ApiError> {
    let conversation = load_conversation(&state, &who.workspace_id, &id).await?;
    let messages = state.store().messages(&who.workspace_id, &id).await?;
    // Written straight from the records, not through a `serde_json::Value`, which would turn a
    // payload's large numbers into floats: payloads go out exactly as they arrived.
    #[derive(serde::Serialize)]
    struct WithMessages {
        #[serde(flatten)]
        conversation: Conversation,
        messages: Vec<callstream_store::MessageRecord>,
    }
    Ok(Json(WithMessages {
        conversation,
        messages,
    }))
}

/// `GET /v1/conversations/{id}/stream` (API key, header only): seed 000's conversation SSE.
pub async fn stream(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): ConversationPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let conversation = load_conversation(&state, &who.workspace_id, &id).await?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(sse::last_event_id);
    let topic = Topic::conversation(&who.workspace_id, &id);
    let mut subscription = state
        .subscribe(
            &topic,
            resume_after.map_or(Resume::Live, Resume::After),
            &LABELS,
        )
        .await
        .map_err(|e| ApiError::unavailable(format!("live events are unavailable: {e}")))?;
    // The history is bounded (and empty after a restart): when it no longer reaches back to the
    // resume point, say so, and where the full message history is.
    let mut prefix = VecDeque::new();
    if let Some(after) = resume_after {
        let history_from = subscription
            .first_backlog_seq()
            .unwrap_or(conversation.last_seq.saturating_add(1))
            .min(conversation.last_seq.saturating_add(1));
        if after.saturating_add(1) < history_from {
            let message = format!(
                "events after seq {after} up to {} are no longer held; the message history is at GET /v1/conversations/{id}",
                history_from - 1
            );
            prefix.push_back(native::sse_event("resume_gap", &message));
        }
    }
    prefix.extend(
        subscription
            .take_backlog()
            .iter()
            .filter_map(|e| native::conversation_sse(e)),
    );
    Ok(SseStream::new(
        &state,
        &LABELS,
        prefix,
        Some(subscription),
        who.expires_at,
        ConversationFrames,
    )
    .revocable(&state, &who.key_id)
    .into_response())
}

/// Seed 000 conversation frames. Conversations do not end, so neither does the stream.
struct ConversationFrames;

impl SseSurface for ConversationFrames {
    fn frame(&mut self, event: &Event) -> Step {
        native::conversation_sse(event).map_or(Step::Skip, Step::Send)
    }

    fn at_end(&mut self) -> AtEnd {
        Box::pin(std::future::ready(None))
    }
}
