//! Commands to live calls: a customer's request travels to the call runtime that serves the
//! call, and the runtime's answer travels back to whoever asked.
//!
//! [`CommandRouter`] is the seam (request/reply on `cs.{workspace}.cmd.{call_id}` in the NATS
//! design); [`InProcessCommands`] routes between connections of this process. A runtime
//! connection registers a [`RuntimeLink`] and receives [`CommandRequest`]s on it; it answers with
//! [`CommandRouter::complete`]. A request to a workspace with no runtime connected fails at
//! once, and one the runtime never answers fails after the caller's timeout: nothing hangs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
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
    fn connect(&self, workspace: &WorkspaceId) -> RuntimeLink;

    /// Records that `link` serves `call` (it ingested for it), so the call's commands go there.
    fn claim(&self, link: &RuntimeLink, call: &CallId);

    /// Delivers a runtime's answer to the waiting requester; `false` if nobody waits any more.
    fn complete(&self, command_id: &str, outcome: CommandOutcome) -> bool;
}

/// A runtime's connection to the router: its inbox of commands.
pub struct RuntimeLink {
    id: u64,
    workspace: WorkspaceId,
    inbox: mpsc::Receiver<CommandRequest>,
    router: Arc<Links>,
}

impl RuntimeLink {
    /// The next command for this runtime.
    pub async fn next(&mut self) -> Option<CommandRequest> {
        self.inbox.recv().await
    }
}

impl Drop for RuntimeLink {
    fn drop(&mut self) {
        self.router.disconnect(&self.workspace, self.id);
    }
}

struct Outbox {
    id: u64,
    tx: mpsc::Sender<CommandRequest>,
}

/// Connected runtimes, shared with the links so a dropped link removes itself.
#[derive(Default)]
struct Links {
    next_id: AtomicU64,
    by_workspace: DashMap<WorkspaceId, Vec<Outbox>>,
    owners: DashMap<CallId, u64>,
}

impl Links {
    fn disconnect(&self, workspace: &WorkspaceId, id: u64) {
        if let Some(mut links) = self.by_workspace.get_mut(workspace) {
            links.retain(|l| l.id != id);
        }
        self.by_workspace
            .remove_if(workspace, |_, links| links.is_empty());
        self.owners.retain(|_, owner| *owner != id);
    }

    /// The link serving `call`: its owner if still connected, else the workspace's newest.
    fn route(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Option<mpsc::Sender<CommandRequest>> {
        let links = self.by_workspace.get(workspace)?;
        let owner = self.owners.get(call).map(|o| *o);
        owner
            .and_then(|id| links.iter().find(|l| l.id == id))
            .or_else(|| links.last())
            .map(|l| l.tx.clone())
    }
}

/// The embedded command router.
#[derive(Default)]
pub struct InProcessCommands {
    links: Arc<Links>,
    pending: DashMap<String, oneshot::Sender<CommandOutcome>>,
}

/// Commands that may wait for one runtime before new ones are refused as if it were gone.
const INBOX: usize = 256;

impl InProcessCommands {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CommandRouter for InProcessCommands {
    async fn send(
        &self,
        request: CommandRequest,
        timeout: Duration,
    ) -> Result<CommandOutcome, CommandError> {
        let tx = self
            .links
            .route(&request.workspace, &request.call)
            .ok_or(CommandError::NoRuntime)?;
        let (done, answer) = oneshot::channel();
        let id = request.command_id.clone();
        self.pending.insert(id.clone(), done);
        if tx.try_send(request).is_err() {
            self.pending.remove(&id);
            return Err(CommandError::Disconnected);
        }
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(CommandError::Disconnected),
            Err(_) => Err(CommandError::Timeout(timeout)),
        };
        self.pending.remove(&id);
        result
    }

    fn connect(&self, workspace: &WorkspaceId) -> RuntimeLink {
        let id = self.links.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, inbox) = mpsc::channel(INBOX);
        self.links
            .by_workspace
            .entry(workspace.clone())
            .or_default()
            .push(Outbox { id, tx });
        RuntimeLink {
            id,
            workspace: workspace.clone(),
            inbox,
            router: self.links.clone(),
        }
    }

    fn claim(&self, link: &RuntimeLink, call: &CallId) {
        self.links.owners.insert(call.clone(), link.id);
    }

    fn complete(&self, command_id: &str, outcome: CommandOutcome) -> bool {
        match self.pending.remove(command_id) {
            Some((_, done)) => done.send(outcome).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut link = router.connect(&ws);
        let runtime = {
            let router = router.clone();
            tokio::spawn(async move {
                let got = link.next().await.unwrap();
                assert!(router.complete(&got.command_id, CommandOutcome::Done));
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

    #[tokio::test(start_paused = true)]
    async fn a_silent_runtime_times_out_and_other_workspaces_are_never_reached() {
        let router = InProcessCommands::new();
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let _link = router.connect(&ws);
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
            !router.complete("c1", CommandOutcome::Done),
            "nobody waits for a timed-out command"
        );
    }

    #[tokio::test]
    async fn commands_go_to_the_runtime_that_claimed_the_call() {
        let router = InProcessCommands::new();
        let (ws, a, b) = (WorkspaceId::new(), CallId::new(), CallId::new());
        let mut first = router.connect(&ws);
        let mut second = router.connect(&ws);
        router.claim(&first, &a);
        let tx_a = router.links.route(&ws, &a).unwrap();
        tx_a.try_send(request(&ws, &a, "to-first")).unwrap();
        assert_eq!(first.next().await.unwrap().command_id, "to-first");
        // An unclaimed call goes to the newest runtime.
        let tx_b = router.links.route(&ws, &b).unwrap();
        tx_b.try_send(request(&ws, &b, "to-second")).unwrap();
        assert_eq!(second.next().await.unwrap().command_id, "to-second");
    }
}
