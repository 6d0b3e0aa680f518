//! `GET /v1/runtime`: the call runtime's own socket (runtime key, header only). Events travel
//! up into ingest (for calls and conversations), commands travel down, and the runtime's results
//! travel back to whoever sent the command. Call audio travels both ways in binary messages
//! (`callstream_core::audio`): the calls' tracks up onto the bus, audio to play into a call
//! down. The protocol is in `surfaces::runtime` and `docs/native-api.md`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

use callstream_bus::{CommandOutcome, Downlink, RuntimeLink};
use callstream_core::audio::AudioFrame;
use callstream_core::{CallId, ConversationId, WorkspaceId};
use callstream_surfaces::runtime::{self, EventsMessage, RuntimeMessage};
use futures::{FutureExt, SinkExt};

use crate::auth::{RuntimeKey, url_pairs};
use crate::error::ApiError;
use crate::ingest;
use crate::metrics::{OpenStream, Surface, SurfaceLabels};
use crate::routes::load_conversation;
use crate::routes::ws::{
    INGEST_READS, Incoming, close, configure, going_away, ping_timer, require_upgrade, text,
};
use crate::state::AppState;
use callstream_store::NewEvent;

const LABELS: SurfaceLabels = SurfaceLabels {
    surface: Surface::runtime_ws,
};

/// Which `events` messages are answered (`?acks=`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    /// Every message gets its `accepted` or `error` (the default).
    All,
    /// Only refusals are answered: a runtime that publishes at a high rate and does not need
    /// the seqs saves the gateway one write per batch of messages (as Kafka's `acks=0`).
    Errors,
}

fn acks(query: Option<&str>) -> Result<Acks, ApiError> {
    let mut acks = Acks::All;
    for (key, value) in url_pairs(query.unwrap_or("")) {
        match (key.as_str(), value.as_str()) {
            ("acks", "all") => acks = Acks::All,
            ("acks", "errors") => acks = Acks::Errors,
            ("acks", _) => return Err(ApiError::bad_request("acks: expected all or errors")),
            (other, _) => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown parameter; the runtime socket takes only acks"
                )));
            }
        }
    }
    Ok(acks)
}

pub async fn socket(
    State(state): State<AppState>,
    RuntimeKey(who): RuntimeKey,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let acks = acks(query.as_deref())?;
    let upgrade = require_upgrade(upgrade)?;
    let workspace = who.workspace_id;
    let key = (who.key_id, who.expires_at);
    Ok(configure(upgrade, &state, INGEST_READS)
        .on_upgrade(move |socket| run(state, workspace, key, acks, socket)))
}

/// Answers gathered into one write at most, before the loop looks at shutdown and commands.
const GATHER: usize = 64;

/// Messages read together on a cluster, whose call events are appended in one transaction.
const GROUP: usize = 64;

/// A cluster runtime socket's group commits in flight at once: the next group is read and
/// appended while earlier ones are published and committed, when it shares no call with them.
/// One at a time, a socket took its next messages only as each commit finished, and the wide
/// scenario's ingest on two nodes stopped at some 14,500 events/s (docs/benchmarks.md).
const PIPELINE: usize = 4;

/// Audio frames to play gathered into one write at most.
const AUDIO_GATHER: usize = 256;
/// Calls a connection remembers having checked (their audio needs no store lookup); past this
/// the memory starts again, so a runtime naming endless ids holds a bounded map.
const CHECKED_CALLS: usize = 16_384;

/// What one connection knows of the calls its audio names.
#[derive(Default)]
struct AudioCalls {
    /// `true`: the call is the workspace's; `false`: it is not (unknown or foreign).
    checked: HashMap<CallId, bool>,
}

async fn run(
    state: AppState,
    workspace: WorkspaceId,
    (key, expires_at): (
        callstream_core::id::KeyId,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
    acks: Acks,
    mut socket: WebSocket,
) {
    let _open = OpenStream::new(state.metrics().open_streams.get_or_create(&LABELS).clone());
    let mut link = match state.commands().connect(&workspace).await {
        Ok(link) => link,
        Err(err) => {
            tracing::warn!(error = %err, "a runtime could not be registered for commands");
            let _ = socket
                .send(close(
                    close_code::AGAIN,
                    "commands are unavailable; reconnect",
                ))
                .await;
            return;
        }
    };
    let mut calls = AudioCalls::default();
    let shutdown = state.shutdown().clone();
    let grouped = state.config().clustered();
    // A cluster's group commits in flight, oldest first, each with its calls: their answers go
    // out in the order the messages came.
    let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
    // Pings keep NAT and proxies from dropping an idle runtime.
    let mut ping = ping_timer(&state);
    let revoked = state.revocations().watch(&key);
    let expiry = tokio::time::sleep(crate::routes::ws::until(expires_at));
    tokio::pin!(expiry);
    loop {
        let outgoing = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                settle(&mut socket, &state, &link, &mut in_flight).await;
                let _ = socket.send(going_away()).await;
                return;
            }
            () = revoked.cancelled() => {
                settle(&mut socket, &state, &link, &mut in_flight).await;
                let _ = socket.send(close(close_code::POLICY, "the runtime key was revoked")).await;
                return;
            }
            () = &mut expiry => {
                settle(&mut socket, &state, &link, &mut in_flight).await;
                let _ = socket.send(close(close_code::POLICY, "the runtime key has expired")).await;
                return;
            }
            Some(down) = link.next() => match down {
                Downlink::Command(command) => {
                    text(runtime::command_frame(&command.command_id, command.call.as_str(), &command.command))
                }
                Downlink::Audio(frame) => {
                    // Audio for many calls arrives on one beat: write what is queued together.
                    if socket.feed(Message::Binary(frame)).await.is_err() {
                        return;
                    }
                    for _ in 0..AUDIO_GATHER {
                        let Some(more) = link.try_next_audio() else { break };
                        if socket.feed(Message::Binary(more)).await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            done = async {
                match in_flight.front_mut() {
                    Some(group) => (&mut group.task).await,
                    None => std::future::pending().await,
                }
            }, if !in_flight.is_empty() => {
                in_flight.pop_front();
                if let Err(last) = send_answers(&mut socket, &state, &link, done).await {
                    return finish(&mut socket, last).await;
                }
                if socket.flush().await.is_err() {
                    return;
                }
                continue;
            }
            incoming = socket.recv(), if in_flight.len() < PIPELINE => {
                if grouped {
                    // In a cluster every batch costs a database transaction: the messages
                    // already waiting are read together and their calls' events appended in one.
                    let mut reads = vec![Incoming::from_read(incoming)];
                    while reads.len() < GROUP {
                        let Some(more) = socket.recv().now_or_never() else { break };
                        reads.push(Incoming::from_read(more));
                    }
                    let (prepared, rest) = read_leading_call_events(&state, &workspace, reads).await;
                    if rest.is_empty() {
                        // Appended beside the groups in flight, after those it shares a call
                        // with (each call's events are numbered in the order they came).
                        let group = InFlight::start(&in_flight, &state, &workspace, acks, prepared);
                        in_flight.push_back(group);
                    } else {
                        // Anything but call events waits for every append before it.
                        while let Some(group) = in_flight.pop_front() {
                            if let Err(last) = send_answers(&mut socket, &state, &link, group.task.await).await {
                                return finish(&mut socket, last).await;
                            }
                        }
                        let done = append_waiting(state.clone(), workspace.clone(), acks, prepared).await;
                        if let Err(last) = send_answers(&mut socket, &state, &link, Ok(done)).await {
                            return finish(&mut socket, last).await;
                        }
                        let answers = answer_group(&state, &workspace, &link, &mut calls, acks, rest).await;
                        if let Err(last) = send_answers(&mut socket, &state, &link, Ok((answers, Vec::new()))).await {
                            return finish(&mut socket, last).await;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                    continue;
                }
                match answer(&state, &workspace, &link, &mut calls, acks, incoming).await {
                    Answer::Send(message) => message,
                    Answer::Nothing => continue,
                    Answer::Close(last) => return finish(&mut socket, last).await,
                }
            },
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        if socket.feed(outgoing).await.is_err() {
            return;
        }
        // A runtime that sends faster than a round trip has more messages waiting already: their
        // answers are written behind this one and flushed together, one write instead of one
        // per message (the ack sends were a quarter of the server's CPU at 20k events/s). Idle,
        // the answer is flushed at once. (On a cluster, what is waiting is read as a group by
        // the loop, behind the appends in flight.)
        for _ in 0..if grouped { 0 } else { GATHER } {
            let Some(incoming) = socket.recv().now_or_never() else {
                break;
            };
            match answer(&state, &workspace, &link, &mut calls, acks, incoming).await {
                Answer::Send(message) => {
                    if socket.feed(message).await.is_err() {
                        return;
                    }
                }
                Answer::Nothing => {}
                Answer::Close(last) => return finish(&mut socket, last).await,
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
}

/// One group commit of a cluster's runtime socket, in flight.
struct InFlight {
    calls: std::collections::HashSet<CallId>,
    /// Becomes `true` when its append is done (committed or refused).
    done: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<(Vec<Answer>, Vec<CallId>)>,
}

impl InFlight {
    /// Starts appending `prepared` once every group in flight that shares a call with it is
    /// done; the socket reads on meanwhile.
    fn start(
        in_flight: &std::collections::VecDeque<InFlight>,
        state: &AppState,
        workspace: &WorkspaceId,
        acks: Acks,
        prepared: Prepared,
    ) -> Self {
        let calls = prepared.calls();
        let before: Vec<tokio::sync::watch::Receiver<bool>> = in_flight
            .iter()
            .filter(|g| !g.calls.is_disjoint(&calls))
            .map(|g| g.done.clone())
            .collect();
        let (finished, done) = tokio::sync::watch::channel(false);
        let (state, workspace) = (state.clone(), workspace.clone());
        let task = tokio::spawn(async move {
            for mut earlier in before {
                // A group whose task is gone (it failed) holds nothing any more.
                let _ = earlier.wait_for(|done| *done).await;
            }
            let answered = append_waiting(state, workspace, acks, prepared).await;
            let _ = finished.send(true);
            answered
        });
        Self { calls, done, task }
    }
}

/// Waits for the group commits in flight and sends their answers, before the socket is closed
/// on the server's side: a node shutting down leaves no append half done (its shutdown waits for
/// the sockets), and the runtime learns which of its messages went in.
async fn settle(
    socket: &mut WebSocket,
    state: &AppState,
    link: &RuntimeLink,
    in_flight: &mut std::collections::VecDeque<InFlight>,
) {
    let mut writing = true;
    while let Some(group) = in_flight.pop_front() {
        let done = group.task.await;
        if writing && send_answers(socket, state, link, done).await.is_err() {
            writing = false;
        }
    }
    if writing {
        let _ = socket.flush().await;
    }
}

/// Claims the calls a finished group served and writes its answers (without flushing); `Err`
/// ends the socket, after the close frame if there is one.
async fn send_answers(
    socket: &mut WebSocket,
    state: &AppState,
    link: &RuntimeLink,
    done: Result<(Vec<Answer>, Vec<CallId>), tokio::task::JoinError>,
) -> Result<(), Option<Message>> {
    let (answers, served) = done.map_err(|e| {
        tracing::warn!(error = %e, "a group commit's task failed");
        Some(close(close_code::ERROR, "internal error; reconnect"))
    })?;
    for call in &served {
        state.commands().claim(link, call);
    }
    for answer in answers {
        match answer {
            Answer::Send(message) => {
                if socket.feed(message).await.is_err() {
                    return Err(None);
                }
            }
            Answer::Nothing => {}
            Answer::Close(last) => return Err(last),
        }
    }
    Ok(())
}

enum Answer {
    Send(Message),
    Nothing,
    /// End the socket, after sending this close frame if there is one.
    Close(Option<Message>),
}

async fn finish(socket: &mut WebSocket, last: Option<Message>) {
    match last {
        Some(message) => {
            let _ = socket.send(message).await;
        }
        None => {
            let _ = socket.flush().await;
        }
    }
}

/// What one read from the runtime calls for.
async fn answer(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    calls: &mut AudioCalls,
    acks: Acks,
    incoming: Option<Result<Message, axum::Error>>,
) -> Answer {
    answer_incoming(
        state,
        workspace,
        link,
        calls,
        acks,
        Incoming::from_read(incoming),
    )
    .await
}

/// [`answer`] for what was read.
async fn answer_incoming(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    calls: &mut AudioCalls,
    acks: Acks,
    incoming: Incoming,
) -> Answer {
    match incoming {
        Incoming::Closed | Incoming::Broken => Answer::Close(None),
        Incoming::TooBig => Answer::Close(Some(close(close_code::SIZE, "message too big"))),
        Incoming::Binary(bytes) => match audio(state, workspace, link, calls, &bytes).await {
            Ok(()) => Answer::Nothing,
            Err(frame) => Answer::Send(text(frame)),
        },
        Incoming::Control => Answer::Nothing,
        Incoming::Text(message) => {
            match handle(state, workspace, link, acks, message.as_str()).await {
                Some(frame) => Answer::Send(text(frame)),
                None => Answer::Nothing,
            }
        }
    }
}

/// A call's events from one message, read and checked, waiting for the group commit.
struct Waiting {
    /// Where its answer goes among the group's answers.
    slot: usize,
    message: EventsMessage,
    call: CallId,
    events: Vec<NewEvent>,
}

/// A group's call events messages, read and checked, with the answers of the group so far (a
/// `None` is a message whose answer waits for the append).
#[derive(Default)]
struct Prepared {
    answers: Vec<Option<Answer>>,
    waiting: Vec<Waiting>,
}

impl Prepared {
    /// The calls whose events wait in this group.
    fn calls(&self) -> std::collections::HashSet<CallId> {
        self.waiting.iter().map(|w| w.call.clone()).collect()
    }
}

/// Reads the leading call events messages of a group (and what needs no action: pings, pongs,
/// messages refused on their own) up to the first message of any other kind: that one and all
/// after it are returned, to be answered only once every append before them is done.
async fn read_leading_call_events(
    state: &AppState,
    workspace: &WorkspaceId,
    incomings: Vec<Incoming>,
) -> (Prepared, Vec<Incoming>) {
    let mut prepared = Prepared::default();
    let mut incomings = incomings.into_iter();
    while let Some(incoming) = incomings.next() {
        let text = match incoming {
            Incoming::Text(text) => text,
            Incoming::Control => {
                prepared.answers.push(Some(Answer::Nothing));
                continue;
            }
            other => {
                return (prepared, std::iter::once(other).chain(incomings).collect());
            }
        };
        if let Err((reference, err)) =
            ingest::check_message_event_sizes(text.as_str(), state.config().max_event_bytes)
        {
            prepared
                .answers
                .push(Some(Answer::Send(self::text(runtime::error_frame(
                    reference.as_deref(),
                    err.code,
                    &err.message,
                )))));
            continue;
        }
        match runtime::parse(text.as_str()) {
            Ok(RuntimeMessage::Events(mut m)) if m.call_id.is_some() => {
                match read_call_events(state, workspace, &mut m).await {
                    Ok((call, events)) => {
                        prepared.waiting.push(Waiting {
                            slot: prepared.answers.len(),
                            message: m,
                            call,
                            events,
                        });
                        prepared.answers.push(None);
                    }
                    Err(err) => {
                        prepared
                            .answers
                            .push(Some(Answer::Send(self::text(runtime::error_frame(
                                m.reference.as_deref(),
                                err.code,
                                &err.message,
                            )))))
                    }
                }
            }
            _ => {
                return (
                    prepared,
                    std::iter::once(Incoming::Text(text))
                        .chain(incomings)
                        .collect(),
                );
            }
        }
    }
    (prepared, Vec::new())
}

/// Appends a group's waiting call events (a cluster's group commit) and fills in their answers;
/// also says which calls the runtime now serves (claimed by the caller, who holds the link).
/// Each call's messages join into one batch, in the order they came.
async fn append_waiting(
    state: AppState,
    workspace: WorkspaceId,
    acks: Acks,
    prepared: Prepared,
) -> (Vec<Answer>, Vec<CallId>) {
    let Prepared {
        mut answers,
        mut waiting,
    } = prepared;
    let mut served = Vec::new();
    // Rounds: each call's messages join into one batch, up to and including one that ends the
    // call (what follows it for that call waits for the next round, and is refused there as
    // it would be alone).
    while !waiting.is_empty() {
        let mut batches: Vec<(CallId, Vec<NewEvent>)> = Vec::new();
        let mut members: Vec<Vec<(usize, EventsMessage, usize)>> = Vec::new();
        let mut sealed: Vec<bool> = Vec::new();
        let mut later = Vec::new();
        for w in waiting {
            let ends = w.events.last().is_some_and(|e| e.payload.is_terminal());
            match batches.iter().position(|(c, _)| *c == w.call) {
                Some(i) if !sealed[i] => {
                    members[i].push((w.slot, w.message, w.events.len()));
                    batches[i].1.extend(w.events);
                    sealed[i] = ends;
                }
                Some(_) => later.push(w),
                None => {
                    members.push(vec![(w.slot, w.message, w.events.len())]);
                    batches.push((w.call, w.events));
                    sealed.push(ends);
                }
            }
        }
        let calls_in_round: Vec<CallId> = batches.iter().map(|(c, _)| c.clone()).collect();
        let results = ingest::append_calls_events_grouped(&state, &workspace, batches).await;
        for ((result, members), call) in results.into_iter().zip(members).zip(calls_in_round) {
            match result {
                Ok(published) => {
                    if published.subject.status.is_active() {
                        served.push(call);
                    }
                    let seqs = published.seqs();
                    let mut at = 0;
                    for (slot, message, n) in members {
                        let mine = seqs.get(at..at + n).unwrap_or_default();
                        at += n;
                        answers[slot] = Some(if acks == Acks::Errors {
                            Answer::Nothing
                        } else {
                            Answer::Send(self::text(runtime::accepted_frame(&message, mine)))
                        });
                    }
                }
                Err(err) => {
                    for (slot, message, _) in members {
                        answers[slot] = Some(Answer::Send(self::text(runtime::error_frame(
                            message.reference.as_deref(),
                            err.code,
                            &err.message,
                        ))));
                    }
                }
            }
        }
        waiting = later;
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or(Answer::Nothing))
        .collect();
    (answers, served)
}

/// The answers to several reads, in order, with every append done before the next message
/// that is not call events is looked at: the group's leading call events are appended
/// together, then the rest is answered one by one (its call events, in runs, again together).
async fn answer_group(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    calls: &mut AudioCalls,
    acks: Acks,
    mut incomings: Vec<Incoming>,
) -> Vec<Answer> {
    let mut out = Vec::with_capacity(incomings.len());
    loop {
        let (prepared, rest) = read_leading_call_events(state, workspace, incomings).await;
        let (answers, served) =
            append_waiting(state.clone(), workspace.clone(), acks, prepared).await;
        for call in &served {
            state.commands().claim(link, call);
        }
        out.extend(answers);
        let mut rest = rest.into_iter();
        let Some(first) = rest.next() else {
            return out;
        };
        let answer = answer_incoming(state, workspace, link, calls, acks, first).await;
        let closing = matches!(answer, Answer::Close(_));
        out.push(answer);
        if closing {
            return out;
        }
        incomings = rest.collect();
    }
}

/// A call events message's call and events, checked as ingest checks them.
async fn read_call_events(
    state: &AppState,
    workspace: &WorkspaceId,
    m: &mut EventsMessage,
) -> Result<(CallId, Vec<NewEvent>), ApiError> {
    let call_id = m.call_id.as_deref().unwrap_or_default();
    let id = CallId::parse(call_id).map_err(|_| ApiError::not_found("call"))?;
    let transport = ingest::call_transport(state, workspace, &id).await?;
    let batch = std::mem::take(&mut m.events);
    let events = ingest::events_of(
        batch,
        ingest::Target::Call(transport),
        state.config().max_events_per_request,
    )?;
    Ok((id, events))
}

/// One binary message: a frame of a call's audio, for the bus. Nothing is answered unless it is
/// refused (a malformed header, a call that is not the workspace's): the runtime sends fifty a
/// second per track and needs no receipt.
async fn audio(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    calls: &mut AudioCalls,
    bytes: &Bytes,
) -> Result<(), Bytes> {
    let metrics = state.metrics();
    let frame = AudioFrame::decode(bytes).map_err(|e| {
        metrics.audio_frames_refused.inc();
        runtime::error_frame(None, "invalid_audio", &e.to_string())
    })?;
    let ours = match calls.checked.get(&frame.call) {
        Some(ours) => *ours,
        None => {
            let ours = match ingest::call_transport(state, workspace, &frame.call).await {
                Ok(_) => true,
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => false,
                Err(e) => return Err(runtime::error_frame(None, e.code, &e.message)),
            };
            if calls.checked.len() >= CHECKED_CALLS {
                calls.checked.clear();
            }
            calls.checked.insert(frame.call.clone(), ours);
            ours
        }
    };
    if !ours {
        metrics.audio_frames_refused.inc();
        return Err(runtime::error_frame(
            None,
            "not_found",
            &format!("audio frame: call {} not found", frame.call),
        ));
    }
    // The runtime that sends a call's audio serves the call: audio to play goes back to it.
    state.commands().claim(link, &frame.call);
    metrics.audio_frame_received(frame.track);
    if let Err(err) = state.bus().publish_audio(workspace, Arc::new(frame)).await {
        tracing::warn!(error = %err, "audio publish failed");
    }
    Ok(())
}

/// One runtime message; the answer to send, if any.
async fn handle(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    acks: Acks,
    message: &str,
) -> Option<Bytes> {
    if let Err((reference, err)) =
        ingest::check_message_event_sizes(message, state.config().max_event_bytes)
    {
        return Some(runtime::error_frame(
            reference.as_deref(),
            err.code,
            &err.message,
        ));
    }
    match runtime::parse(message) {
        Err(message) => Some(runtime::error_frame(None, "invalid_message", &message)),
        Ok(RuntimeMessage::CommandResult(result)) => {
            let outcome = if result.ok {
                CommandOutcome::Done
            } else {
                CommandOutcome::Refused {
                    error_code: result.error_code.unwrap_or_else(|| "refused".to_owned()),
                    message: result.message.unwrap_or_default(),
                }
            };
            // A result nobody waits for (the requester timed out or left, or it was answered
            // already), or for a command this runtime was never sent, is said to be so.
            if state
                .commands()
                .complete(link, &result.command_id, outcome)
                .await
            {
                None
            } else {
                Some(runtime::error_frame(
                    None,
                    "unknown_command",
                    &format!(
                        "command_result: no command {} waits for this runtime's answer (it timed out, was answered already, or was never sent here)",
                        result.command_id.chars().take(128).collect::<String>()
                    ),
                ))
            }
        }
        Ok(RuntimeMessage::Events(events)) => {
            ingest_events(state, workspace, link, acks, events).await
        }
    }
}

async fn ingest_events(
    state: &AppState,
    workspace: &WorkspaceId,
    link: &RuntimeLink,
    acks: Acks,
    mut m: EventsMessage,
) -> Option<Bytes> {
    let max = state.config().max_events_per_request;
    // The events move into ingest; the rest of the message names the answer.
    let batch = std::mem::take(&mut m.events);
    let result = async {
        if let Some(call_id) = &m.call_id {
            let id = CallId::parse(call_id).map_err(|_| ApiError::not_found("call"))?;
            let transport = ingest::call_transport(state, workspace, &id).await?;
            let events = ingest::events_of(batch, ingest::Target::Call(transport), max)?;
            let appended =
                ingest::append_call_events_in_place(state, workspace, &id, events).await?;
            if appended.subject.status.is_active() {
                // This runtime serves the call now: the call's commands come here.
                state.commands().claim(link, &id);
            }
            Ok::<_, ApiError>(appended.seqs())
        } else {
            let conversation_id = m.conversation_id.as_deref().unwrap_or_default();
            let id = ConversationId::parse(conversation_id)
                .map_err(|_| ApiError::not_found("conversation"))?;
            load_conversation(state, workspace, &id).await?;
            let events = ingest::events_of(batch, ingest::Target::Conversation, max)?;
            let appended =
                ingest::append_conversation_events(state, workspace, &id, events).await?;
            Ok(appended.seqs())
        }
    }
    .await;
    match result {
        Ok(_) if acks == Acks::Errors => None,
        Ok(seqs) => Some(runtime::accepted_frame(&m, &seqs)),
        Err(err) => Some(runtime::error_frame(
            m.reference.as_deref(),
            err.code,
            &err.message,
        )),
    }
}
