use std::fmt;
use std::sync::Arc;

use callstream_core::{CallId, ConversationId, Envelope, Subject, WorkspaceId};

/// One stream of events: a call's or a conversation's. Its text is the NATS subject the event
/// travels on (`cs.{workspace}.call.{call_id}`, `cs.{workspace}.conv.{conversation_id}`), so that
/// every backend names topics alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(Arc<str>);

impl Topic {
    pub fn call(workspace: &WorkspaceId, call: &CallId) -> Self {
        Self(format!("cs.{workspace}.call.{call}").into())
    }

    pub fn conversation(workspace: &WorkspaceId, conversation: &ConversationId) -> Self {
        Self(format!("cs.{workspace}.conv.{conversation}").into())
    }

    pub fn of(envelope: &Envelope) -> Self {
        match &envelope.subject {
            Subject::Call(id) => Self::call(&envelope.workspace_id, id),
            Subject::Conversation(id) => Self::conversation(&envelope.workspace_id, id),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
