//! Commands to live calls: a customer's request travels to the call runtime that serves the
//! call, and the runtime's answer travels back to whoever asked.
//!
//! [`CommandRouter`] is the seam (request/reply on `cs.{workspace}.cmd.{call_id}` in the NATS
//! design); [`InProcessCommands`] routes between connections of this process. A runtime
//! connection registers a [`RuntimeLink`] and receives [`CommandRequest`]s on it; it answers with
//! [`CommandRouter::complete`]. Nothing hangs: a request to a workspace with no runtime fails at
//! once, one whose runtime disconnects fails as it disconnects, and one the runtime never answers
//! fails after the caller's timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callstream_core::{CallId, Command, WorkspaceId};
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

/// One command on its way to a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// Unique per request; the runtime names it in its answer.
    pub command_id: String,
    pub workspace: WorkspaceId,
    pub call: CallId,
    pub command: Command,
}

/// What the runtime answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Done,
    Refused { error_code: String, message: String },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("no call runtime is connected for this workspace")]
    NoRuntime,
    #[error("the call runtime did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the call runtime disconnected before answering")]
    Disconnected,
    /// The runtime's inbox is full: it is connected but not keeping up. Retryable.
    #[error("the call runtime is busy (its inbox is full)")]
    Busy,
}

/// What travels down a runtime's link: commands, and audio to play into its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downlink {
    Command(CommandRequest),
    /// Audio to play into a call now: one frame in its binary form (`core::audio`, track
    /// `outbound`). The sender paces it in real time, so the runtime plays each as it arrives.
    Audio(Bytes),
}

/// Routes commands to runtimes and answers back.
#[async_trait]
pub trait CommandRouter: Send + Sync + 'static {
    /// Sends `request` to the runtime serving its call and waits for the answer.
    ///
    /// # Errors
    /// [`CommandError`] when no runtime is connected, it does not answer in time, or it goes away.
    async fn send(
        &self,
        request: CommandRequest,
        timeout: Duration,
    ) -> Result<CommandOutcome, CommandError>;

    /// Connects a runtime of `workspace`; commands arrive on the link until it is dropped.
    ///
    /// # Errors
    /// When the backend cannot register the runtime (a NATS server down).
    async fn connect(&self, workspace: &WorkspaceId) -> Result<RuntimeLink, CommandError>;

    /// Records that `link` serves `call` (it ingested for it), so the call's commands go there.
    /// Called for every message a runtime sends, so it returns at once: a backend that must tell
    /// other nodes does so in the background.
    fn claim(&self, link: &RuntimeLink, call: &CallId);

    /// Forgets who serves `call` (it ended).
    async fn forget(&self, call: &CallId);

    /// Calls whose runtime left: the runtime link that served each (the last to send events or
    /// audio for it) disconnected at least `for_at_least` ago, and no link has claimed the call
    /// since. A call stays listed until it is claimed or forgotten.
    fn lost(&self, for_at_least: Duration) -> Vec<(WorkspaceId, CallId)>;

    /// Hands an audio frame (its binary form) to the runtime serving `call`, to be played into
    /// the call at once. Never waits.
    ///
    /// # Errors
    /// [`CommandError::NoRuntime`] when no runtime of the workspace is connected,
    /// [`CommandError::Busy`] when its inbox is full (the frame is not queued).
    fn play_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        frame: Bytes,
    ) -> Result<(), CommandError>;

    /// Delivers `link`'s answer to the waiting requester (on this node or another); `false` if
    /// nobody waits any more, or the command was not sent to that link (a runtime may answer only
    /// its own commands).
    async fn complete(&self, link: &RuntimeLink, command_id: &str, outcome: CommandOutcome)
    -> bool;
}

/// A runtime's connection to the router: its inbox of commands and of audio to play.
pub struct RuntimeLink {
    id: u64,
    workspace: WorkspaceId,
    inbox: mpsc::Receiver<CommandRequest>,
    audio: mpsc::Receiver<Bytes>,
    links: Arc<Links>,
}

impl RuntimeLink {
    /// The next thing for this runtime: a command before audio when both wait.
    pub async fn next(&mut self) -> Option<Downlink> {
        tokio::select! {
            biased;
            Some(command) = self.inbox.recv() => Some(Downlink::Command(command)),
            Some(frame) = self.audio.recv() => Some(Downlink::Audio(frame)),
            else => None,
        }
    }

    /// The workspace this runtime serves.
    pub fn workspace(&self) -> &WorkspaceId {
        &self.workspace
    }

    /// Audio already queued for this runtime, without waiting.
    pub fn try_next_audio(&mut self) -> Option<Bytes> {
        self.audio.try_recv().ok()
    }
}

impl Drop for RuntimeLink {
    fn drop(&mut self) {
        self.links.disconnect(&self.workspace, self.id);
    }
}

struct Outbox {
    id: u64,
    tx: mpsc::Sender<CommandRequest>,
    audio: mpsc::Sender<Bytes>,
}

/// Connected runtimes and waiting commands, shared with the links so a dropped link cleans up
/// after itself.
#[derive(Default)]
struct Links {
    next_id: AtomicU64,
    by_workspace: DashMap<WorkspaceId, Vec<Outbox>>,
    owners: crate::FastMap<CallId, u64>,
    /// Calls whose owner disconnected, since when.
    lost: crate::FastMap<CallId, (WorkspaceId, std::time::Instant)>,
    /// Commands waiting for an answer: the link they went to, and the waiter.
    pending: DashMap<String, (u64, oneshot::Sender<CommandOutcome>)>,
}

impl Links {
    fn disconnect(&self, workspace: &WorkspaceId, id: u64) {
        if let Some(mut links) = self.by_workspace.get_mut(workspace) {
            links.retain(|l| l.id != id);
        }
        self.by_workspace
            .remove_if(workspace, |_, links| links.is_empty());
        let now = std::time::Instant::now();
        self.owners.retain(|call, owner| {
            if *owner != id {
                return true;
            }
            self.lost.insert(call.clone(), (workspace.clone(), now));
            false
        });
        // Its waiters learn at once that it is gone (their senders drop), instead of timing out.
        self.pending.retain(|_, (link, _)| *link != id);
    }

    /// The link serving `call`: its owner if still connected, else the workspace's newest.
    fn route(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Option<(u64, mpsc::Sender<CommandRequest>)> {
        self.with_route(workspace, call, |l| (l.id, l.tx.clone()))
    }

    fn with_route<R>(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        f: impl FnOnce(&Outbox) -> R,
    ) -> Option<R> {
        let links = self.by_workspace.get(workspace)?;
        let owner = self.owners.get(call).map(|o| *o);
        owner
            .and_then(|id| links.iter().find(|l| l.id == id))
            .or_else(|| links.last())
            .map(f)
    }
}

/// Removes a pending command when its waiter finishes or is dropped (a client that went away),
/// so nothing is left behind.
struct Waiting<'a> {
    links: &'a Links,
    id: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.links.pending.remove(&self.id);
    }
}

/// The embedded command router.
#[derive(Default)]
pub struct InProcessCommands {
    links: Arc<Links>,
}

/// Commands that may wait for one runtime before new ones are refused as if it were gone.
const INBOX: usize = 256;
/// Audio frames that may wait for one runtime: a runtime serves many calls, and every stream
/// playing into them hands over a frame on the same 20 ms beat, so a thousand arrive together.
const AUDIO_INBOX: usize = 4096;

impl InProcessCommands {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a runtime connected here claimed `call`.
    pub fn serves(&self, call: &CallId) -> bool {
        self.links.owners.contains_key(call)
    }

    /// Whether a runtime of `workspace` is connected here.
    pub fn has_runtime(&self, workspace: &WorkspaceId) -> bool {
        self.links
            .by_workspace
            .get(workspace)
            .is_some_and(|links| !links.is_empty())
    }
}

#[async_trait]
impl CommandRouter for InProcessCommands {
    async fn send(
        &self,
        request: CommandRequest,
        timeout: Duration,
    ) -> Result<CommandOutcome, CommandError> {
        let (link, tx) = self
            .links
            .route(&request.workspace, &request.call)
            .ok_or(CommandError::NoRuntime)?;
        let (done, answer) = oneshot::channel();
        let id = request.command_id.clone();
        self.links.pending.insert(id.clone(), (link, done));
        let _waiting = Waiting {
            links: &self.links,
            id,
        };
        if let Err(e) = tx.try_send(request) {
            // A full inbox is a runtime that is there but behind (retry soon); a closed one is
            // a runtime that left.
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => CommandError::Busy,
                mpsc::error::TrySendError::Closed(_) => CommandError::Disconnected,
            });
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(CommandError::Disconnected),
            Err(_) => Err(CommandError::Timeout(timeout)),
        }
    }

    async fn connect(&self, workspace: &WorkspaceId) -> Result<RuntimeLink, CommandError> {
        let id = self.links.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::channel(INBOX);
        let (audio_tx, audio) = mpsc::channel(AUDIO_INBOX);
        self.links
            .by_workspace
            .entry(workspace.clone())
            .or_default()
            .push(Outbox {
                id,
                tx,
                audio: audio_tx,
            });
        Ok(RuntimeLink {
            id,
            workspace: workspace.clone(),
            inbox,
            audio,
            links: self.links.clone(),
        })
    }

    fn claim(&self, link: &RuntimeLink, call: &CallId) {
        // Claimed once per message ingested: the common case (already this link's) takes a read
        // lock and allocates nothing.
        if self
            .links
            .owners
            .get(call)
            .is_some_and(|owner| *owner == link.id)
        {
            return;
        }
        self.links.owners.insert(call.clone(), link.id);
        self.links.lost.remove(call);
    }

    async fn forget(&self, call: &CallId) {
        self.links.owners.remove(call);
        self.links.lost.remove(call);
    }

    fn lost(&self, for_at_least: Duration) -> Vec<(WorkspaceId, CallId)> {
        self.links
            .lost
            .iter()
            .filter(|entry| entry.value().1.elapsed() >= for_at_least)
            .map(|entry| (entry.value().0.clone(), entry.key().clone()))
            .collect()
    }

    fn play_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        frame: Bytes,
    ) -> Result<(), CommandError> {
        let sent = self
            .links
            .with_route(workspace, call, |l| l.audio.try_send(frame))
            .ok_or(CommandError::NoRuntime)?;
        sent.map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommandError::Busy,
            mpsc::error::TrySendError::Closed(_) => CommandError::NoRuntime,
        })
    }

    async fn complete(
        &self,
        link: &RuntimeLink,
        command_id: &str,
        outcome: CommandOutcome,
    ) -> bool {
        match self
            .links
            .pending
            .remove_if(command_id, |_, (sent_to, _)| *sent_to == link.id)
        {
            Some((_, (_, done))) => done.send(outcome).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;

    #[tokio::test]
    async fn the_command_router_contract_holds() {
        let router: Arc<dyn CommandRouter> = Arc::new(InProcessCommands::new());
        conformance::commands_reach_the_runtime_and_answers_come_back(router.clone()).await;
        conformance::silent_or_vanished_runtimes_fail_commands(router.clone()).await;
        conformance::a_calls_commands_and_audio_go_to_the_runtime_that_claimed_it(router.clone())
            .await;
        conformance::a_runtime_that_leaves_loses_its_calls_until_they_are_claimed(router).await;
    }

    fn request(ws: &WorkspaceId, call: &CallId, id: &str) -> CommandRequest {
        CommandRequest {
            command_id: id.into(),
            workspace: ws.clone(),
            call: call.clone(),
            command: Command::EndCall,
        }
    }

    #[tokio::test]
    async fn a_command_reaches_the_runtime_and_its_answer_comes_back() {
        let router = Arc::new(InProcessCommands::new());
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let mut link = router.connect(&ws).await.unwrap();
        let runtime = {
            let router = router.clone();
            tokio::spawn(async move {
                let Some(Downlink::Command(got)) = link.next().await else {
                    panic!("no command");
                };
                assert!(
                    router
                        .complete(&link, &got.command_id, CommandOutcome::Done)
                        .await
                );
                link
            })
        };
        let outcome = router
            .send(request(&ws, &call, "c1"), Duration::from_secs(5))
            .await;
        assert_eq!(outcome, Ok(CommandOutcome::Done));
        drop(runtime.await.unwrap());
        // Its link dropped: the workspace has no runtime now, and that fails at once.
        let gone = router
            .send(request(&ws, &call, "c2"), Duration::from_secs(60))
            .await;
        assert_eq!(gone, Err(CommandError::NoRuntime));
    }

    #[tokio::test]
    async fn a_runtime_that_disconnects_fails_its_waiters_at_once_and_only_it_may_answer() {
        let router = Arc::new(InProcessCommands::new());
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let mut link = router.connect(&ws).await.unwrap();
        let impostor = router.connect(&WorkspaceId::new()).await.unwrap();
        let waiter = {
            let router = router.clone();
            let request = request(&ws, &call, "c1");
            tokio::spawn(async move { router.send(request, Duration::from_secs(3600)).await })
        };
        let Some(Downlink::Command(got)) = link.next().await else {
            panic!("no command");
        };
        assert!(
            !router
                .complete(&impostor, &got.command_id, CommandOutcome::Done)
                .await,
            "another runtime cannot answer"
        );
        drop(link);
        assert_eq!(waiter.await.unwrap(), Err(CommandError::Disconnected));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_runtime_times_out_and_other_workspaces_are_never_reached() {
        let router = InProcessCommands::new();
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let silent = router.connect(&ws).await.unwrap();
        let other = WorkspaceId::new();
        assert_eq!(
            router
                .send(request(&other, &call, "x"), Duration::from_secs(1))
                .await,
            Err(CommandError::NoRuntime)
        );
        let slow = router
            .send(request(&ws, &call, "c1"), Duration::from_secs(3))
            .await;
        assert_eq!(slow, Err(CommandError::Timeout(Duration::from_secs(3))));
        assert!(
            !router.complete(&silent, "c1", CommandOutcome::Done).await,
            "nobody waits for a timed-out command"
        );
        assert!(router.links.pending.is_empty(), "nothing is left pending");
    }

    #[tokio::test]
    async fn commands_go_to_the_runtime_that_claimed_the_call_until_it_ends() {
        let router = InProcessCommands::new();
        let (ws, a, b) = (WorkspaceId::new(), CallId::new(), CallId::new());
        let first = router.connect(&ws).await.unwrap();
        let second = router.connect(&ws).await.unwrap();
        router.claim(&first, &a);
        assert_eq!(
            router.links.route(&ws, &a).map(|(id, _)| id),
            Some(first.id)
        );
        // An unclaimed call goes to the newest runtime.
        assert_eq!(
            router.links.route(&ws, &b).map(|(id, _)| id),
            Some(second.id)
        );
        router.forget(&a).await;
        assert!(router.links.owners.is_empty());
    }

    #[tokio::test]
    async fn audio_goes_to_the_runtime_serving_the_call_and_a_full_inbox_is_busy() {
        use callstream_core::audio::{Codec, Track};
        let router = InProcessCommands::new();
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let frame = callstream_core::audio::encode(
            &call,
            Track::Outbound,
            Codec::Mulaw,
            8000,
            0,
            &[0xff; 160],
        );
        assert_eq!(
            router.play_audio(&ws, &call, frame.clone()),
            Err(CommandError::NoRuntime)
        );
        let mut serving = router.connect(&ws).await.unwrap();
        let other = router.connect(&WorkspaceId::new()).await.unwrap();
        router.claim(&serving, &call);
        for _ in 0..AUDIO_INBOX {
            assert_eq!(router.play_audio(&ws, &call, frame.clone()), Ok(()));
        }
        assert_eq!(
            router.play_audio(&ws, &call, frame.clone()),
            Err(CommandError::Busy)
        );
        assert_eq!(serving.next().await, Some(Downlink::Audio(frame.clone())));
        assert!(serving.try_next_audio().is_some());
        drop(other);
        drop(serving);
        assert_eq!(
            router.play_audio(&ws, &call, frame),
            Err(CommandError::NoRuntime)
        );
    }
}
