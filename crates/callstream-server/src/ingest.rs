//! Ingest: events from the call runtime become stored, sequenced, published envelopes.
//! Every ingest path (REST, the runtime WebSocket, and NATS later) goes through here.

use std::sync::Arc;

use axum::http::StatusCode;
use callstream_bus::{BusError, Event, Topic};
use callstream_core::event::RawPayload;
use callstream_core::incoming::IncomingBatch;
use callstream_core::{
    Call, CallId, Conversation, ConversationId, Envelope, EventType, Payload, Subject, Transport,
    WorkspaceId, time,
};
use callstream_store::{NewEvent, NotPublished, PublishInOrder, StoreError};
use callstream_surfaces::runtime::Batch;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::state::AppState;

/// What an append published, in order, and its subject after it.
pub struct Published<S> {
    pub events: Vec<Arc<Event>>,
    pub subject: S,
}

impl<S> Published<S> {
    /// The seqs the events were given, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.seq()).collect()
    }

    /// The events' ids, in order.
    pub fn event_ids(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|e| e.envelope().event_id.as_str())
            .collect()
    }
}

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
) -> Result<Published<Call>, ApiError> {
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
) -> Result<Published<Call>, ApiError> {
    let started = std::time::Instant::now();
    let result = append_timed(state, workspace, call, events).await;
    state.metrics().appended(false, started.elapsed());
    result
}

/// The body of [`append_call_events_in_place`], which times it, refusals included.
async fn append_timed(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    events: Vec<NewEvent>,
) -> Result<Published<Call>, ApiError> {
    let (published, webhooks_queued) = if state.config().clustered() {
        // Several nodes may ingest for this call: the store numbers every batch and holds the
        // call until the bus has it, so every node's subscribers see one gap-free order.
        let publisher = BusPublisher::new(state);
        let appended = state
            .store()
            .append_call_events(workspace, call, events, &publisher)
            .await
            .map_err(|e| ApiError::from_store(e, "call"))?;
        state.live().remember(&appended.call);
        let published = Published {
            events: publisher.into_events(),
            subject: appended.call,
        };
        (published, appended.webhooks_queued)
    } else {
        let (events, subject) = state
            .live()
            .append(state.store_handle(), workspace, call, events, |envelopes| {
                publish(state, envelopes)
            })
            .await?;
        // One node knows when its workspace has no endpoint (the worker looks at most every
        // 20 ms however often it is told).
        let may_queue = state.live().may_queue_webhooks(workspace);
        (Published { events, subject }, may_queue)
    };
    // A cluster's store says whether the batch queued webhooks: only then are the nodes' workers
    // woken (each wake is a NATS message and an outbox claim at every node).
    if webhooks_queued {
        state.outbox_written();
    }
    if !published.subject.status.is_active() {
        state.commands().forget(call).await;
    }
    Ok(published)
}

/// Appends several calls' batches of one workspace in one store transaction (a cluster's
/// group commit: the runtime socket gathers the messages waiting on it, so a busy runtime pays
/// one transaction for many calls instead of one each). One result per batch, in order, each
/// what [`append_call_events_in_place`] would answer for it alone. The calls must be distinct.
pub async fn append_calls_events_grouped(
    state: &AppState,
    workspace: &WorkspaceId,
    batches: Vec<(CallId, Vec<NewEvent>)>,
) -> Vec<Result<Published<Call>, ApiError>> {
    let publishers: Vec<BusPublisher<'_>> =
        batches.iter().map(|_| BusPublisher::new(state)).collect();
    let started = std::time::Instant::now();
    let results = {
        let refs: Vec<&dyn PublishInOrder> = publishers
            .iter()
            .map(|p| p as &dyn PublishInOrder)
            .collect();
        state
            .store()
            .append_calls_events(workspace, batches, &refs)
            .await
    };
    state.metrics().appended(true, started.elapsed());
    let results = match results {
        Ok(results) => results,
        Err(e) => {
            let err = ApiError::from_store(e, "call");
            return publishers.iter().map(|_| Err(err.clone())).collect();
        }
    };
    let mut out = Vec::with_capacity(results.len());
    let mut webhooks_queued = false;
    for (result, publisher) in results.into_iter().zip(publishers) {
        match result {
            Ok(appended) => {
                webhooks_queued |= appended.webhooks_queued;
                state.live().remember(&appended.call);
                if !appended.call.status.is_active() {
                    state.commands().forget(&appended.call.id).await;
                }
                out.push(Ok(Published {
                    events: publisher.into_events(),
                    subject: appended.call,
                }));
            }
            Err(e) => out.push(Err(ApiError::from_store(e, "call"))),
        }
    }
    if webhooks_queued {
        state.outbox_written();
    }
    out
}

/// Appends `events` to the conversation (the store assigns seqs and publishes them in order
/// while it holds the conversation's seq authority).
///
/// # Errors
/// 404 for an unknown conversation, 409 `mode_conflict` for a stale handoff, 400 for a batch the
/// store refuses, 503 when the bus or the database is unreachable (nothing was recorded).
pub async fn append_conversation_events(
    state: &AppState,
    workspace: &WorkspaceId,
    conversation: &ConversationId,
    events: Vec<NewEvent>,
) -> Result<Published<Conversation>, ApiError> {
    let (state, workspace, conversation) = (state.clone(), workspace.clone(), conversation.clone());
    // As for calls: commit and publish together, whatever happens to the request.
    let task = tokio::spawn(async move {
        let publisher = BusPublisher::new(&state);
        let appended = state
            .store()
            .append_conversation_events(&workspace, &conversation, events, &publisher)
            .await
            .map_err(|e| match e {
                StoreError::Invalid(m) if m.contains("from_mode") => {
                    ApiError::new(StatusCode::CONFLICT, "mode_conflict", m)
                }
                other => ApiError::from_store(other, "conversation"),
            })?;
        state.outbox_written();
        Ok(Published {
            events: publisher.into_events(),
            subject: appended.conversation,
        })
    });
    task.await.map_err(|_| ApiError::internal())?
}

/// Publishes a batch to the bus while the store holds its subject's seq authority (the store
/// commits only once the bus took it), and keeps the events for the caller.
pub(crate) struct BusPublisher<'a> {
    state: &'a AppState,
    events: std::sync::Mutex<Vec<Arc<Event>>>,
}

impl<'a> BusPublisher<'a> {
    pub(crate) fn new(state: &'a AppState) -> Self {
        Self {
            state,
            events: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn into_events(self) -> Vec<Arc<Event>> {
        self.events
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl PublishInOrder for BusPublisher<'_> {
    fn seen_up_to(&self, workspace: &WorkspaceId, subject: &Subject) -> u64 {
        let topic = match subject {
            Subject::Call(call) => Topic::call(workspace, call),
            Subject::Conversation(conversation) => Topic::conversation(workspace, conversation),
        };
        self.state.bus().seen_up_to(&topic)
    }

    async fn publish(&self, envelopes: &[Envelope]) -> Result<(), NotPublished> {
        let events: Vec<Arc<Event>> = envelopes
            .iter()
            .map(|envelope| Event::new(envelope.clone()))
            .collect();
        self.state
            .bus()
            .publish_batch(&events)
            .await
            .map_err(|e| match e {
                BusError::SeqsTaken { last } => NotPublished::Taken { last },
                other => NotPublished::Failed(other.to_string()),
            })?;
        for event in &events {
            self.state.metrics().ingested(event.envelope().event_type());
        }
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(events);
        Ok(())
    }
}

/// Publishes the envelopes in order and returns them as the bus's events. The envelopes move
/// into the events: cloning each (its ids, its payload's strings) for the caller, which needs
/// only seqs and event ids, was about 1,000 instructions per event under callgrind.
async fn publish(state: &AppState, envelopes: Vec<Envelope>) -> Vec<Arc<Event>> {
    let mut events = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        state.metrics().ingested(envelope.event_type());
        let event = Event::new(envelope);
        if let Err(err) = state.bus().publish(event.clone()).await {
            // The events are stored; only live delivery is affected, and resubmitting would
            // mint duplicate seqs, so the ingest still succeeds.
            let envelope = event.envelope();
            tracing::error!(error = %err, subject = envelope.subject.id(), seq = envelope.seq, "publish failed");
        }
        events.push(event);
    }
    events
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
        ApiError::invalid_event(format!("{path}: {}", e.message()))
    })?;
    let payload = Payload::parse_json(&raw.event_type, raw.payload.get())
        .map_err(|e| ApiError::invalid_event(format!("{at}{e}")))?;
    let json = RawPayload::new(raw.payload.to_owned());
    accept(payload, json, raw.timestamp.as_deref(), at, target)
}

/// The checks every decoded event passes, whichever way it was decoded: the type belongs to
/// the target (and barge-in to a phone call), and the timestamp, if any, is RFC 3339.
fn accept(
    payload: Payload,
    json: RawPayload,
    timestamp: Option<&str>,
    at: &str,
    target: Target,
) -> Result<NewEvent, ApiError> {
    match payload.event_type() {
        EventType::CallStarted => {
            return Err(ApiError::invalid_event(format!(
                "{at}event_type: call.started is emitted by callstream when the call is created (POST /v1/calls)"
            )));
        }
        ty if !ty.fits(match target {
            Target::Conversation => callstream_core::event::SubjectKind::Conversation,
            Target::Call(_) => callstream_core::event::SubjectKind::Call,
        }) =>
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
    let timestamp = match timestamp {
        Some(text) => {
            let at_time = time::parse(text)
                .map_err(|e| ApiError::invalid_event(format!("{at}timestamp: {e}")))?;
            check_timestamp(&at_time)
                .map_err(|why| ApiError::invalid_event(format!("{at}timestamp: {why}")))?;
            at_time
        }
        None => time::now(),
    };
    Ok(NewEvent::arrived(timestamp, payload, json))
}

/// Refuses a time no event can have happened at: before 1970, or more than a day ahead of the
/// gateway's clock (a runtime's clock may be off by seconds, not by days).
fn check_timestamp(at: &chrono::DateTime<chrono::Utc>) -> Result<(), &'static str> {
    if at.timestamp() < 0 {
        return Err("must not be before 1970");
    }
    if *at > time::now() + chrono::Duration::days(1) {
        return Err("must not be more than a day ahead of the gateway's clock");
    }
    Ok(())
}

/// The events of a runtime message: checked as they are when decoded in one pass with it,
/// else decoded the careful way. Events stay text only when the one pass refused them (the
/// message around them decodes the same either way), so trying it again would be wasted.
///
/// # Errors
/// 400 `invalid_event`, as [`parse_batch`].
pub fn events_of(batch: Batch, target: Target, max: usize) -> Result<Vec<NewEvent>, ApiError> {
    match batch {
        Batch::Decoded(batch) => accept_batch(batch, target, max),
        Batch::Text(text) => careful_batch(&text, target, max),
    }
}

/// A batch holds 1 to `max` events; both decoding paths refuse any other count in these words.
fn batch_size(n: usize, max: usize) -> Result<(), ApiError> {
    if n == 0 || n > max {
        return Err(ApiError::invalid_event(format!(
            "body: send 1 to {max} events per request"
        )));
    }
    Ok(())
}

/// Checks events that were decoded in one pass, with the same refusals, in the same order, as
/// [`parse_batch`] gives for their text.
fn accept_batch(
    batch: IncomingBatch,
    target: Target,
    max: usize,
) -> Result<Vec<NewEvent>, ApiError> {
    let IncomingBatch { events, array } = batch;
    batch_size(events.len(), max)?;
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let at = if array {
                format!("events[{i}].")
            } else {
                String::new()
            };
            accept(
                e.payload,
                e.payload_json,
                e.timestamp.as_deref(),
                &at,
                target,
            )
        })
        .collect()
}

/// The refusal of an event larger than `limit` bytes: 413 `event_too_large`, naming the limit.
fn too_large(at: &str, size: usize, limit: usize) -> ApiError {
    let at = if at.is_empty() { "event" } else { at };
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "event_too_large",
        format!(
            "{at}: {size} bytes of JSON; an event may be at most {limit} bytes (max_event_bytes)"
        ),
    )
}

/// Refuses events larger than `limit` bytes of JSON as sent, in `events` (one event object or
/// an array of them): every event is bounded, so that no envelope the gateway accepts is too
/// large for the history, a webhook or a viewer's socket. Text no larger than the limit cannot
/// hold a larger event, so the usual batch costs only a length comparison here. Text that is
/// not JSON passes: the decoders refuse it with their own words.
///
/// # Errors
/// 413 `event_too_large` for the first event over the limit.
pub fn check_event_sizes(events: &str, limit: usize) -> Result<(), ApiError> {
    if events.len() <= limit {
        return Ok(());
    }
    match events.trim_start().as_bytes().first() {
        Some(b'[') => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(events) else {
                return Ok(());
            };
            for (i, item) in items.iter().enumerate() {
                let size = item.get().len();
                if size > limit {
                    return Err(too_large(&format!("events[{i}]"), size, limit));
                }
            }
            Ok(())
        }
        _ => Err(too_large("", events.trim().len(), limit)),
    }
}

/// [`check_event_sizes`] for a runtime socket message, whose `events` sit beside its `type`,
/// `ref` and subject. The `ref` comes back with the refusal, for the answer to name it.
///
/// # Errors
/// 413 `event_too_large`, with the message's `ref` if it has one.
pub fn check_message_event_sizes(
    message: &str,
    limit: usize,
) -> Result<(), (Option<String>, ApiError)> {
    #[derive(Deserialize)]
    struct Sized<'a> {
        #[serde(default, rename = "ref")]
        reference: Option<String>,
        #[serde(borrow)]
        events: Option<&'a RawValue>,
    }
    if message.len() <= limit {
        return Ok(());
    }
    let Ok(sized) = serde_json::from_str::<Sized<'_>>(message) else {
        return Ok(());
    };
    match sized.events {
        Some(events) => check_event_sizes(events.get(), limit).map_err(|e| (sized.reference, e)),
        None => Ok(()),
    }
}

/// Parses an ingest body: one event object, or an array of 1 to `max` events, in order. Every
/// refusal names the field, prefixed by `events[i].` inside an array. The body arrives as JSON
/// text (already checked to be JSON) and each event is decoded from it straight into its type.
/// The caller bounds each event's size first ([`check_event_sizes`]).
///
/// # Errors
/// 400 `invalid_event`.
pub fn parse_batch(body: &RawValue, target: Target, max: usize) -> Result<Vec<NewEvent>, ApiError> {
    let json = body.get();
    // Well-formed events decode in one pass, each payload straight into its type; anything
    // that pass refuses is decoded again below, where a refusal names the field.
    match serde_json::from_str::<IncomingBatch>(json) {
        Ok(batch) => accept_batch(batch, target, max),
        Err(_) => careful_batch(body, target, max),
    }
}

/// [`parse_batch`] without the one pass: event by event, each refusal naming its field. (Public
/// to the crate so that the fuzz target can check that both paths agree.)
pub(crate) fn careful_batch(
    body: &RawValue,
    target: Target,
    max: usize,
) -> Result<Vec<NewEvent>, ApiError> {
    let json = body.get();
    match json.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json).map_err(|e| {
                ApiError::invalid_event(format!(
                    "body: {}",
                    callstream_core::json::message(&e, "body")
                ))
            })?;
            batch_size(items.len(), max)?;
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
