//! Ingest: events from the call runtime become stored, sequenced, published envelopes.
//! Every ingest path (REST, the runtime WebSocket, and NATS later) goes through here.

use axum::http::StatusCode;
use callstream_bus::Event;
use callstream_core::{CallId, ConversationId, EventType, Payload, Transport, WorkspaceId, time};
use callstream_store::{Appended, AppendedConversation, NewEvent, StoreError};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::state::AppState;

/// Appends `events` to the call (seqs from the call's sequencer) and publishes them in order,
/// in a task of its own: the store commit and the publish must both happen or neither, so a
/// cancelled request (a client that left, the request timeout) cannot stop between them and
/// leave a stored `call.completed` that no stream ever sees. For callers that are never
/// cancelled mid-way, [`append_call_events_in_place`] saves the task.
///
/// # Errors
/// 404 for an unknown call, 409 once it has ended, 400 for a batch the store refuses.
pub async fn append_call_events(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    events: Vec<NewEvent>,
) -> Result<Appended, ApiError> {
    let (state, workspace, call) = (state.clone(), workspace.clone(), call.clone());
    let task = tokio::spawn(async move {
        append_call_events_in_place(&state, &workspace, &call, events).await
    });
    task.await.map_err(|_| ApiError::internal())?
}

/// [`append_call_events`] on the caller's own task: for a caller that is never dropped between
/// the commit and the publish (the runtime socket's loop). Measured on the wide scenario, the
/// extra task per event cost a cross-thread wake each.
///
/// # Errors
/// As [`append_call_events`].
pub async fn append_call_events_in_place(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    events: Vec<NewEvent>,
) -> Result<Appended, ApiError> {
    let result = state
        .live()
        .append(state.store(), workspace, call, events, |envelopes| async {
            publish(state, &envelopes).await;
            envelopes
        })
        .await;
    if let Ok(appended) = &result
        && !appended.call.status.is_active()
    {
        state.commands().forget(call);
    }
    result
}

/// Appends `events` to the conversation (the store assigns seqs) and publishes them in order.
///
/// # Errors
/// 404 for an unknown conversation, 409 `mode_conflict` for a stale handoff, 400 for a batch the
/// store refuses.
pub async fn append_conversation_events(
    state: &AppState,
    workspace: &WorkspaceId,
    conversation: &ConversationId,
    events: Vec<NewEvent>,
) -> Result<AppendedConversation, ApiError> {
    let (state, workspace, conversation) = (state.clone(), workspace.clone(), conversation.clone());
    // As for calls: commit and publish together, whatever happens to the request.
    let task = tokio::spawn(async move {
        ordered(&state, conversation.as_str(), async {
            let appended = state
                .store()
                .append_conversation_events(&workspace, &conversation, events)
                .await
                .map_err(|e| match e {
                    StoreError::Invalid(m) if m.contains("from_mode") => {
                        ApiError::new(StatusCode::CONFLICT, "mode_conflict", m)
                    }
                    other => ApiError::from_store(other, "conversation"),
                })?;
            publish(&state, &appended.envelopes).await;
            Ok(appended)
        })
        .await
    });
    task.await.map_err(|_| ApiError::internal())?
}

/// Runs `work` under the subject's ingest lock, so the bus sees its events in seq order, and
/// drops the lock's entry afterwards when nobody else waits for it.
async fn ordered<T>(state: &AppState, subject: &str, work: impl Future<Output = T>) -> T {
    let lock = state.ingest_lock(subject);
    let result = {
        let _ordered = lock.lock().await;
        work.await
    };
    drop(lock);
    state.release_ingest_lock(subject);
    result
}

async fn publish(state: &AppState, envelopes: &[callstream_core::Envelope]) {
    for envelope in envelopes {
        state.metrics().ingested(envelope.event_type());
        if let Err(err) = state.bus().publish(Event::new(envelope.clone())).await {
            // The events are stored; only live delivery is affected, and resubmitting would
            // mint duplicate seqs, so the ingest still succeeds.
            tracing::error!(error = %err, subject = envelope.subject.id(), seq = envelope.seq, "publish failed");
        }
    }
}

/// One event as the runtime sends it; the payload stays text until its type is known.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestEvent<'a> {
    event_type: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    timestamp: Option<String>,
}

/// Parses one ingested event; `at` prefixes every field path (`events[3].`) for batches.
/// What an ingest is for: a call (whose transport decides barge-in) or a conversation.
#[derive(Clone, Copy)]
pub enum Target {
    Call(Transport),
    Conversation,
}

/// The transport of a call of `workspace`, from the live sequencer when it knows the call (no
/// store round trip), else from the store.
///
/// # Errors
/// 404 for an unknown or foreign call.
pub async fn call_transport(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
) -> Result<Transport, ApiError> {
    match state.live().known(workspace, call) {
        Some(known) => known,
        None => Ok(crate::routes::load_call(state, workspace, call)
            .await?
            .transport),
    }
}

fn parse_event(json: &str, at: &str, target: Target) -> Result<NewEvent, ApiError> {
    let raw: IngestEvent<'_> = callstream_core::json::from_str(json).map_err(|e| {
        let path = if e.path == "." {
            at.trim_end_matches('.').to_owned()
        } else {
            format!("{at}{}", e.path)
        };
        let path = if path.is_empty() {
            "body".to_owned()
        } else {
            path
        };
        ApiError::invalid_event(format!("{path}: {}", e.error))
    })?;
    let payload = Payload::parse_json(&raw.event_type, raw.payload.get())
        .map_err(|e| ApiError::invalid_event(format!("{at}{e}")))?;
    match payload.event_type() {
        EventType::CallStarted => {
            return Err(ApiError::invalid_event(format!(
                "{at}event_type: call.started is emitted by callstream when the call is created (POST /v1/calls)"
            )));
        }
        ty if matches!(target, Target::Conversation)
            != (ty.subject_kind() == callstream_core::event::SubjectKind::Conversation) =>
        {
            let expected = if matches!(target, Target::Conversation) {
                "a conversation"
            } else {
                "a call"
            };
            return Err(ApiError::invalid_event(format!(
                "{at}event_type: {ty} does not belong to {expected}"
            )));
        }
        EventType::BargeIn => {
            if let Target::Call(transport) = target
                && !transport.is_phone()
            {
                return Err(ApiError::invalid_event(format!(
                    "{at}event_type: call.barge_in exists only for phone transports (sip, esl), not {transport}"
                )));
            }
        }
        _ => {}
    }
    let timestamp = match raw.timestamp {
        Some(text) => time::parse(&text)
            .map_err(|e| ApiError::invalid_event(format!("{at}timestamp: {e}")))?,
        None => time::now(),
    };
    Ok(NewEvent::new(timestamp, payload))
}

/// Parses an ingest body: one event object, or an array of 1 to `max` events, in order. Every
/// refusal names the field, prefixed by `events[i].` inside an array. The body arrives as JSON
/// text (already checked to be JSON) and each event is decoded from it straight into its type.
///
/// # Errors
/// 400 `invalid_event`.
pub fn parse_batch(body: &RawValue, target: Target, max: usize) -> Result<Vec<NewEvent>, ApiError> {
    let json = body.get();
    match json.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json)
                .map_err(|e| ApiError::invalid_event(format!("body: {e}")))?;
            if items.is_empty() || items.len() > max {
                return Err(ApiError::invalid_event(format!(
                    "body: send 1 to {max} events per request"
                )));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_event(item.get(), &format!("events[{i}]."), target))
                .collect()
        }
        Some(b'{') => Ok(vec![parse_event(json, "", target)?]),
        _ => Err(ApiError::invalid_event(
            "body: expected an event object or an array of events",
        )),
    }
}
