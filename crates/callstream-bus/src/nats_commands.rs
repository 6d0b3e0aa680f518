//! Commands across nodes on NATS: a command asked at any node reaches the runtime that serves
//! the call, on whichever node its socket is, and the answer comes back to the asking node.
//!
//! Each node keeps its own runtimes in an [`InProcessCommands`] and speaks for them on NATS:
//! - for every call a runtime here claimed, it subscribes to `cs.{workspace}.cmd.{call_id}`
//!   (request/reply) and announces the claim on `cs.{workspace}.claimed.{call_id}`, so a node
//!   whose runtime served the call before lets go of it;
//! - for every workspace with a runtime here, it joins the queue group `callstream-runtimes` on
//!   `cs.{workspace}.cmd`, for calls no runtime claimed yet.
//!
//! A command goes to the local runtime serving the call if there is one; else to the call's
//! subject; if nobody answers there ("no responders", at once), to a runtime of the workspace
//! here, else to the workspace's queue; if nobody is there either, it fails at once with
//! [`CommandError::NoRuntime`]. Audio to play into a call travels on the call's subject as
//! messages with the header `Cs-Play` (no reply), queued for a sending task so that handing it
//! over never waits.
//!
//! Request payload: `{"command_id", "call_id", "command", "timeout_ms"}`; answer:
//! `{"outcome": "done"}`, `{"outcome": "refused", "error_code", "message"}`, or
//! `{"error": "no_runtime" | "timeout" | "disconnected" | "busy"}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use callstream_core::{CallId, Command, WorkspaceId};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::commands::{
    CommandError, CommandOutcome, CommandRequest, CommandRouter, InProcessCommands, RuntimeLink,
};

/// The queue group of nodes with a runtime of a workspace.
const QUEUE_GROUP: &str = "callstream-runtimes";
/// The header that marks audio to play (not a command).
const PLAY_HEADER: &str = "Cs-Play";
/// Audio frames waiting to be sent to other nodes before new ones are refused as busy.
const AUDIO_QUEUE: usize = 8192;

#[derive(Serialize, Deserialize)]
struct WireRequest {
    command_id: String,
    call_id: CallId,
    command: Command,
    timeout_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct WireAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WireAnswer {
    fn from_result(result: &Result<CommandOutcome, CommandError>) -> Self {
        let mut answer = Self {
            outcome: None,
            error_code: None,
            message: None,
            error: None,
        };
        match result {
            Ok(CommandOutcome::Done) => answer.outcome = Some("done".into()),
            Ok(CommandOutcome::Refused {
                error_code,
                message,
            }) => {
                answer.outcome = Some("refused".into());
                answer.error_code = Some(error_code.clone());
                answer.message = Some(message.clone());
            }
            Err(e) => {
                answer.error = Some(
                    match e {
                        CommandError::NoRuntime => "no_runtime",
                        CommandError::Timeout(_) => "timeout",
                        CommandError::Disconnected => "disconnected",
                        CommandError::Busy => "busy",
                    }
                    .into(),
                );
            }
        }
        answer
    }

    fn into_result(self, timeout: Duration) -> Result<CommandOutcome, CommandError> {
        match (self.outcome.as_deref(), self.error.as_deref()) {
            (Some("done"), _) => Ok(CommandOutcome::Done),
            (Some("refused"), _) => Ok(CommandOutcome::Refused {
                error_code: self.error_code.unwrap_or_default(),
                message: self.message.unwrap_or_default(),
            }),
            (_, Some("no_runtime")) => Err(CommandError::NoRuntime),
            (_, Some("timeout")) => Err(CommandError::Timeout(timeout)),
            (_, Some("busy")) => Err(CommandError::Busy),
            _ => Err(CommandError::Disconnected),
        }
    }
}

enum Op {
    /// A runtime here claimed the call: subscribe to its subject and announce it.
    Claimed(WorkspaceId, CallId),
    /// Stop speaking for the call.
    Release(CallId),
    /// A runtime of the workspace connected here: join its queue (answered once joined).
    Workspace(WorkspaceId, oneshot::Sender<()>),
}

/// The command router on NATS. See the module documentation.
pub struct NatsCommands {
    client: Client,
    local: Arc<InProcessCommands>,
    /// Calls this node speaks for, with their workspace.
    calls: Arc<crate::FastMap<CallId, WorkspaceId>>,
    ops: mpsc::UnboundedSender<Op>,
    audio_out: mpsc::Sender<(String, Bytes)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NatsCommands {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn call_subject(workspace: &WorkspaceId, call: &CallId) -> String {
    format!("cs.{workspace}.cmd.{call}")
}

impl NatsCommands {
    /// Starts this node's side of the router on `client`; `node` names this node in claims.
    ///
    /// # Errors
    /// When NATS refuses the claims subscription.
    pub async fn start(client: Client, node: String) -> Result<Self, CommandError> {
        let local = Arc::new(InProcessCommands::new());
        let calls: Arc<crate::FastMap<CallId, WorkspaceId>> = Arc::default();
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let (audio_out, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        let claims = client
            .subscribe("cs.*.claimed.*")
            .await
            .map_err(|_| CommandError::NoRuntime)?;
        let manager = tokio::spawn(manage(
            client.clone(),
            node.clone(),
            local.clone(),
            calls.clone(),
            ops_rx,
        ));
        let listener = tokio::spawn(listen_for_claims(
            claims,
            node,
            local.clone(),
            calls.clone(),
            ops.clone(),
        ));
        let sender = tokio::spawn(send_audio(client.clone(), audio_rx));
        Ok(Self {
            client,
            local,
            calls,
            ops,
            audio_out,
            tasks: vec![manager, listener, sender],
        })
    }

    /// Sends `request` to whoever answers on `subject`; `None` when nobody listens there.
    async fn ask(
        &self,
        subject: String,
        request: &CommandRequest,
        timeout: Duration,
    ) -> Option<Result<CommandOutcome, CommandError>> {
        let wire = WireRequest {
            command_id: request.command_id.clone(),
            call_id: request.call.clone(),
            command: request.command.clone(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let payload = Bytes::from(serde_json::to_vec(&wire).unwrap_or_default());
        // A little longer than the runtime's own wait, so that its "timeout" comes back first.
        let ask = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout + Duration::from_millis(250)));
        match self.client.send_request(subject, ask).await {
            Ok(reply) => Some(match serde_json::from_slice::<WireAnswer>(&reply.payload) {
                Ok(answer) => answer.into_result(timeout),
                Err(_) => Err(CommandError::Disconnected),
            }),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => None,
                async_nats::RequestErrorKind::TimedOut => Some(Err(CommandError::Timeout(timeout))),
                _ => Some(Err(CommandError::Disconnected)),
            },
        }
    }
}

#[async_trait]
impl CommandRouter for NatsCommands {
    async fn send(
        &self,
        request: CommandRequest,
        timeout: Duration,
    ) -> Result<CommandOutcome, CommandError> {
        if self.local.serves(&request.call) {
            return self.local.send(request, timeout).await;
        }
        let subject = call_subject(&request.workspace, &request.call);
        if let Some(answer) = self.ask(subject, &request, timeout).await {
            return answer;
        }
        if self.local.has_runtime(&request.workspace) {
            return self.local.send(request, timeout).await;
        }
        let subject = format!("cs.{}.cmd", request.workspace);
        self.ask(subject, &request, timeout)
            .await
            .unwrap_or(Err(CommandError::NoRuntime))
    }

    async fn connect(&self, workspace: &WorkspaceId) -> Result<RuntimeLink, CommandError> {
        let link = self.local.connect(workspace).await?;
        let (joined, done) = oneshot::channel();
        if self
            .ops
            .send(Op::Workspace(workspace.clone(), joined))
            .is_ok()
        {
            // Joined before the runtime is told it is connected; a NATS outage does not hold
            // the runtime up (the queue is joined when NATS is back).
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
        Ok(link)
    }

    fn claim(&self, link: &RuntimeLink, call: &CallId) {
        self.local.claim(link, call);
        if self.calls.contains_key(call) {
            return;
        }
        self.calls.insert(call.clone(), link.workspace().clone());
        let _ = self
            .ops
            .send(Op::Claimed(link.workspace().clone(), call.clone()));
    }

    async fn forget(&self, call: &CallId) {
        self.local.forget(call).await;
        if self.calls.remove(call).is_some() {
            let _ = self.ops.send(Op::Release(call.clone()));
        }
    }

    fn lost(&self, for_at_least: Duration) -> Vec<(WorkspaceId, CallId)> {
        // Only this node sees its runtimes leave; a claim by another node's runtime makes this
        // node forget the call (`listen_for_claims`), so it is no longer lost here.
        self.local.lost(for_at_least)
    }

    fn play_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        frame: Bytes,
    ) -> Result<(), CommandError> {
        if self.local.serves(call) {
            return self.local.play_audio(workspace, call, frame);
        }
        self.audio_out
            .try_send((call_subject(workspace, call), frame))
            .map_err(|_| CommandError::Busy)
    }

    async fn complete(
        &self,
        link: &RuntimeLink,
        command_id: &str,
        outcome: CommandOutcome,
    ) -> bool {
        // Every waiter of a runtime here waits here: a remote asker's request is held by the
        // task answering it on NATS.
        self.local.complete(link, command_id, outcome).await
    }
}

/// Keeps this node's subscriptions in step with its runtimes' claims.
async fn manage(
    client: Client,
    node: String,
    local: Arc<InProcessCommands>,
    calls: Arc<crate::FastMap<CallId, WorkspaceId>>,
    mut ops: mpsc::UnboundedReceiver<Op>,
) {
    let mut by_call: HashMap<CallId, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut by_workspace: HashMap<WorkspaceId, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut tidy = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            op = ops.recv() => match op {
                None => return,
                Some(Op::Claimed(workspace, call)) => {
                    if by_call.contains_key(&call) {
                        continue;
                    }
                    match client.subscribe(call_subject(&workspace, &call)).await {
                        Ok(sub) => {
                            let task = tokio::spawn(serve(sub, client.clone(), local.clone(), workspace.clone(), Some(call.clone())));
                            by_call.insert(call.clone(), task);
                            let claimed = format!("cs.{workspace}.claimed.{call}");
                            if let Err(e) = client.publish(claimed, Bytes::from(node.clone())).await {
                                tracing::debug!(error = %e, "claim not announced");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot subscribe to a call's commands");
                            calls.remove(&call);
                        }
                    }
                }
                Some(Op::Release(call)) => {
                    if let Some(task) = by_call.remove(&call) {
                        task.abort();
                    }
                }
                Some(Op::Workspace(workspace, joined)) => {
                    if let std::collections::hash_map::Entry::Vacant(entry) = by_workspace.entry(workspace.clone()) {
                        match client.queue_subscribe(format!("cs.{workspace}.cmd"), QUEUE_GROUP.to_owned()).await {
                            Ok(sub) => {
                                entry.insert(tokio::spawn(serve(sub, client.clone(), local.clone(), workspace, None)));
                                let _ = client.flush().await;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot join a workspace's command queue"),
                        }
                    }
                    let _ = joined.send(());
                }
            },
            _ = tidy.tick() => {
                // Runtimes that went away (or whose calls another node took) leave no subscription.
                by_call.retain(|call, task| {
                    let keep = local.serves(call);
                    if !keep {
                        task.abort();
                        calls.remove(call);
                    }
                    keep
                });
                by_workspace.retain(|workspace, task| {
                    let keep = local.has_runtime(workspace);
                    if !keep {
                        task.abort();
                    }
                    keep
                });
            }
        }
    }
}

/// Another node's runtime claimed a call this node speaks for: let it go.
async fn listen_for_claims(
    mut claims: Subscriber,
    node: String,
    local: Arc<InProcessCommands>,
    calls: Arc<crate::FastMap<CallId, WorkspaceId>>,
    ops: mpsc::UnboundedSender<Op>,
) {
    while let Some(message) = claims.next().await {
        if message.payload.as_ref() == node.as_bytes() {
            continue;
        }
        let Some(call) = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|id| CallId::parse(id).ok())
        else {
            continue;
        };
        if calls.remove(&call).is_some() {
            local.forget(&call).await;
            let _ = ops.send(Op::Release(call));
        }
    }
}

/// Answers requests (and plays audio) that arrive on one subscription, through the runtimes
/// here. `call` is the call of a call's subject; `None` on a workspace's queue.
async fn serve(
    mut sub: Subscriber,
    client: Client,
    local: Arc<InProcessCommands>,
    workspace: WorkspaceId,
    call: Option<CallId>,
) {
    while let Some(message) = sub.next().await {
        if message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(PLAY_HEADER).is_some())
        {
            if let Some(call) = &call {
                let _ = local.play_audio(&workspace, call, message.payload);
            }
            continue;
        }
        let Some(reply) = message.reply else {
            continue;
        };
        let Ok(wire) = serde_json::from_slice::<WireRequest>(&message.payload) else {
            tracing::debug!("a malformed command request on NATS");
            continue;
        };
        if call.as_ref().is_some_and(|c| *c != wire.call_id) {
            continue;
        }
        let (client, local, workspace) = (client.clone(), local.clone(), workspace.clone());
        tokio::spawn(async move {
            let timeout = Duration::from_millis(wire.timeout_ms.min(3_600_000));
            let request = CommandRequest {
                command_id: wire.command_id,
                workspace,
                call: wire.call_id,
                command: wire.command,
            };
            let result = local.send(request, timeout).await;
            let answer = serde_json::to_vec(&WireAnswer::from_result(&result)).unwrap_or_default();
            if let Err(e) = client.publish(reply, Bytes::from(answer)).await {
                tracing::debug!(error = %e, "a command's answer was not sent");
            }
        });
    }
}

async fn send_audio(client: Client, mut frames: mpsc::Receiver<(String, Bytes)>) {
    let mut headers = HeaderMap::new();
    headers.insert(PLAY_HEADER, "1");
    while let Some((subject, frame)) = frames.recv().await {
        if let Err(e) = client
            .publish_with_headers(subject, headers.clone(), frame)
            .await
        {
            tracing::debug!(error = %e, "audio to play was not sent");
        }
    }
}
