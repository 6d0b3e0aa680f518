//! Calls: creation and event ingest (runtime key), the call log and final transcripts (API key).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callstream_core::{Call, CallId, CallStatus, Direction, Payload, Phone, Transport, time};
use callstream_store::{CallFilter, NewEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::auth::{ApiKey, RuntimeKey, url_pairs};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::ingest;
use crate::routes::{CallPath, IdPath, load_call};
use crate::state::AppState;

const MAX_EXTERNAL_ID: usize = 128;
const DEFAULT_LIST_LIMIT: u32 = 50;
const MAX_LIST_LIMIT: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    phone: Phone,
    direction: Direction,
    transport: Transport,
    #[serde(default)]
    external_id: Option<String>,
}

/// `POST /v1/calls`: the runtime announces a call. Publishes `call.started` as seq 1.
#[utoipa::path(
    post,
    path = "/v1/calls",
    tag = "calls",
    summary = "Announce a call (the call runtime)",
    description = "Records the call and publishes `call.started` as its event 1.",
    security(("runtime_key" = [])),
    request_body = crate::openapi::CreateCall,
    responses(
        (status = 201, description = "The call", body = callstream_core::Call),
        (status = 400, description = "A field is missing or malformed (`invalid_request`)", body = crate::openapi::Error),
        (status = 401, description = "No runtime key, or not a valid one (`unauthorized`)", body = crate::openapi::Error),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    RuntimeKey(who): RuntimeKey,
    JsonBody(body): JsonBody<CreateCall>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(ext) = &body.external_id
        && (ext.is_empty() || ext.len() > MAX_EXTERNAL_ID || ext.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "body.external_id: must be 1 to {MAX_EXTERNAL_ID} printable characters"
        )));
    }
    let call = Call {
        id: callstream_core::CallId::new(),
        workspace_id: who.workspace_id.clone(),
        phone: body.phone,
        direction: body.direction,
        transport: body.transport,
        external_id: body.external_id,
        status: CallStatus::InProgress,
        live_conversation_token: Call::new_live_conversation_token(),
        started_at: time::now(),
        ended_at: None,
        end_reason: None,
        last_seq: 0,
        screening: None,
    };
    state.store().create_call(&call).await?;
    let started = Payload::CallStarted(callstream_core::event::CallStarted {
        phone: call.phone.clone(),
        direction: call.direction,
        transport: call.transport,
        external_id: call.external_id.clone(),
    });
    let appended = ingest::append_call_events(
        &state,
        &who.workspace_id,
        &call.id,
        vec![NewEvent::new(call.started_at, started)],
    )
    .await?;
    Ok((StatusCode::CREATED, Json(appended.subject)))
}

/// `POST /v1/calls/{id}/events`: one event object, or an array of them, in order.
#[utoipa::path(
    post,
    path = "/v1/calls/{id}/events",
    tag = "calls",
    summary = "Send a call's events (the call runtime)",
    description = "One event object, or an array of them, numbered and published in order to every stream, stored where durable (final turns, the end) and queued for webhooks. `call.completed` or `call.failed` ends the call.",
    security(("runtime_key" = [])),
    params(("id" = String, Path, description = "The call's id (`call_…`)")),
    request_body = crate::openapi::IncomingEvents,
    responses(
        (status = 202, description = "Numbered and published", body = crate::openapi::Accepted),
        (status = 400, description = "An event is malformed (`invalid_event`, naming the field)", body = crate::openapi::Error),
        (status = 401, description = "No runtime key, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such call in the workspace (`not_found`)", body = crate::openapi::Error),
        (status = 409, description = "The call has ended (`call_ended`)", body = crate::openapi::Error),
        (status = 413, description = "The body or an event is too large (`payload_too_large`)", body = crate::openapi::Error),
    )
)]
pub async fn ingest_events(
    State(state): State<AppState>,
    RuntimeKey(who): RuntimeKey,
    IdPath(id): CallPath,
    JsonBody(body): JsonBody<Box<RawValue>>,
) -> Result<impl IntoResponse, ApiError> {
    ingest::check_event_sizes(body.get(), state.config().max_event_bytes)?;
    let transport = ingest::call_transport(&state, &who.workspace_id, &id).await?;
    let events = ingest::parse_batch(
        &body,
        ingest::Target::Call(transport),
        state.config().max_events_per_request,
    )?;
    let appended = ingest::append_call_events(&state, &who.workspace_id, &id, events).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "seqs": appended.seqs(), "event_ids": appended.event_ids() })),
    ))
}

/// `GET /v1/calls?status=&since=&phone=&before=&limit=&case=`: the call log, newest first,
/// paged by `next_cursor`.
#[utoipa::path(
    get,
    path = "/v1/calls",
    tag = "calls",
    summary = "The call log",
    description = "Newest first, paged by `next_cursor`.",
    security(("api_key" = []), ("session" = [])),
    params(
        ("status" = Option<String>, Query, description = "`in_progress`, `completed`, `failed`, or `ended` (both ends)"),
        ("since" = Option<String>, Query, description = "Calls started at or after this RFC 3339 time"),
        ("phone" = Option<String>, Query, description = "Calls whose phone contains these digits"),
        ("before" = Option<String>, Query, description = "A page's `next_cursor`: the calls after it"),
        ("limit" = Option<u32>, Query, description = "1 to 500 (50)"),
        ("case" = Option<String>, Query, description = "`snake` (default) or `camel` field names"),
    ),
    responses(
        (status = 200, description = "A page of calls", body = crate::openapi::CallPage),
        (status = 400, description = "A query parameter is unknown or malformed", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut filter = CallFilter {
        limit: DEFAULT_LIST_LIMIT,
        ..Default::default()
    };
    let mut case = Case::Snake;
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "status" if value == "ended" => filter.ended = true,
            "status" => {
                filter.status = Some(CallStatus::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "status: expected one of in_progress, completed, failed, ended",
                    )
                })?);
            }
            "phone" => {
                let ok = (1..=16).contains(&value.len())
                    && value
                        .bytes()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'));
                if !ok {
                    return Err(ApiError::bad_request(
                        "phone: expected 1 to 16 digits, optionally after a leading +",
                    ));
                }
                filter.phone = Some(value);
            }
            "before" => {
                filter.before = Some(CallId::parse(&value).map_err(|_| {
                    ApiError::bad_request("before: expected a call id (a page's next_cursor)")
                })?);
            }
            "since" => {
                filter.since = Some(time::parse(&value).map_err(|e| {
                    ApiError::bad_request(format!("since: expected an RFC 3339 time: {e}"))
                })?);
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("limit: expected 1 to {MAX_LIST_LIMIT}"))
                    })?;
            }
            "case" => case = Case::parse(&value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    let mut calls = state.store().calls(&who.workspace_id, &filter).await?;
    for call in &mut calls {
        state.live().overlay(call);
    }
    // A full page may have a next one: it starts after this page's last call.
    let next_cursor = (calls.len() == filter.limit as usize)
        .then(|| calls.last().map(|c| c.id.to_string()))
        .flatten();
    let calls: Vec<Value> = calls.iter().map(|c| case.view(c)).collect();
    Ok(Json(json!({ "calls": calls, "next_cursor": next_cursor })))
}

/// `GET /v1/calls/{id}?case=`: one call log entry.
#[utoipa::path(
    get,
    path = "/v1/calls/{id}",
    tag = "calls",
    summary = "One call",
    security(("api_key" = []), ("session" = [])),
    params(
        ("id" = String, Path, description = "The call's id (`call_…`)"),
        ("case" = Option<String>, Query, description = "`snake` (default) or `camel` field names"),
    ),
    responses(
        (status = 200, description = "The call", body = callstream_core::Call),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such call in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): CallPath,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut case = Case::Snake;
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "case" => case = Case::parse(&value)?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    let call = load_call(&state, &who.workspace_id, &id).await?;
    Ok(Json(case.view(&call)))
}

/// How the call log names its fields: snake_case, callstream's own, or camelCase (`?case=camel`)
/// for clients written against camelCase contracts such as seed 001, which calls the live
/// conversation token `liveConversationToken`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Snake,
    Camel,
}

impl Case {
    fn parse(value: &str) -> Result<Self, ApiError> {
        match value {
            "snake" => Ok(Self::Snake),
            "camel" => Ok(Self::Camel),
            _ => Err(ApiError::bad_request("case: expected snake or camel")),
        }
    }

    fn view(self, call: &Call) -> Value {
        let value = serde_json::to_value(call).unwrap_or(Value::Null);
        match self {
            Self::Snake => value,
            Self::Camel => camel_keys(value),
        }
    }
}

fn camel_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, v)| {
                    let mut out = String::with_capacity(key.len());
                    let mut upper = false;
                    for c in key.chars() {
                        if c == '_' {
                            upper = true;
                        } else if upper {
                            out.extend(c.to_uppercase());
                            upper = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel_keys(v))
                })
                .collect(),
        ),
        other => other,
    }
}

/// `GET /v1/calls/{id}/transcript`: the final turns so far.
#[utoipa::path(
    get,
    path = "/v1/calls/{id}/transcript",
    tag = "calls",
    summary = "A call's final transcript turns so far",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The call's id (`call_…`)")),
    responses(
        (status = 200, description = "The stored final turns, in order", body = crate::openapi::Transcript),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such call in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn transcript(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): CallPath,
) -> Result<impl IntoResponse, ApiError> {
    let call = load_call(&state, &who.workspace_id, &id).await?;
    let turns = state.store().transcript(&who.workspace_id, &id).await?;
    Ok(Json(
        json!({ "call_id": call.id, "status": call.status, "turns": turns }),
    ))
}

#[derive(Deserialize)]
#[serde(transparent)]
pub struct CommandBody(callstream_core::Command);

/// `POST /v1/calls/{id}/commands`: `{"command": "end_call" | "send_dtmf" | "join_call", …}`.
/// Answers once the call runtime has carried it out.
#[utoipa::path(
    post,
    path = "/v1/calls/{id}/commands",
    tag = "calls",
    summary = "Control a live call",
    description = "`end_call`, `send_dtmf` (`digits`) or `join_call` (`user_id`), carried to the call's runtime; answers once the runtime has carried it out.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The call's id (`call_…`)")),
    request_body = crate::openapi::CommandRequest,
    responses(
        (status = 200, description = "The runtime carried it out", body = crate::openapi::CommandDone),
        (status = 400, description = "Not a command, or a bad field (`invalid_command`)", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such call in the workspace", body = crate::openapi::Error),
        (status = 409, description = "The call has ended (`call_ended`)", body = crate::openapi::Error),
        (status = 422, description = "The runtime refused it (`command_refused`, with its reason)", body = crate::openapi::Error),
        (status = 503, description = "No runtime holds the call (`runtime_unavailable`), or its inbox is full (`runtime_busy`, with `Retry-After`)", body = crate::openapi::Error),
        (status = 504, description = "The runtime did not answer in time (`runtime_timeout`)", body = crate::openapi::Error),
    )
)]
pub async fn command(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    IdPath(id): CallPath,
    JsonBody(CommandBody(command)): JsonBody<CommandBody>,
) -> Result<impl IntoResponse, ApiError> {
    crate::commands::execute(&state, &who.workspace_id, &id, command).await?;
    Ok(Json(json!({ "status": "done" })))
}
