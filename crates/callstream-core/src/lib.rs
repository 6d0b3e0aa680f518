//! The callstream domain: identifiers, workspaces, API keys, calls, conversations, the canonical
//! event envelope with its typed payloads, and the commands that travel back to a live call.
//!
//! This crate deliberately knows nothing of sockets, HTTP, databases, buses or any wire format
//! other than the canonical envelope's JSON (which *is* the domain's own format: it is what the
//! bus, the native WebSocket and webhooks all carry). The only thing it reads from the outside
//! world is the operating system's random number generator, to mint identifiers.

pub mod audio;
pub mod command;
pub mod event;
pub mod id;
pub mod incoming;
pub mod json;
pub mod model;
#[doc(hidden)]
pub mod testing;
pub mod time;

pub use command::{Command, CommandError};
pub use event::{Envelope, EventError, EventType, Payload, Subject};
pub use id::{CallId, ConversationId, EventId, Id, IdError, KeyId, TurnId, WorkspaceId};
pub use model::{
    Call, CallStatus, Channel, Conversation, ConversationMode, Direction, KeyKind, ModelError,
    Phone, Screening, Transport, Workspace,
};
