//! HTTP handlers, one module per resource. Handlers parse, authorise and call into the core,
//! store, bus and surfaces; they hold no state of their own.

pub mod audio_streams;
pub mod call_socket;
pub mod calls;
pub mod conversations;
pub mod dashboard;
pub mod keys;
pub mod live_calls;
pub mod live_transcript;
pub mod ops;
pub mod runtime_socket;
pub mod session;
pub mod speech_stream;
pub mod sse_stream;
pub mod stream_tokens;
pub mod transcript_stream;
pub mod webhooks;
pub mod workspace;
pub mod ws;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use callstream_core::id::{CallKind, ConversationKind, Id, Kind};
use callstream_core::{Call, CallId, Conversation, ConversationId, WorkspaceId};

use crate::error::ApiError;
use crate::state::AppState;

/// Most frames joined into one write (a socket) or one chunk (an SSE stream) when a subscriber
/// has fallen behind.
pub(crate) const COALESCE_MAX_FRAMES: usize = 32;

/// The `{id}` of a path, as an id of kind `K`. Anything that is not a well-formed id of that
/// kind (bad percent-encoding, another kind of id, garbage) is "not found", exactly like an
/// unknown or foreign id, and always in the API's JSON error shape.
pub struct IdPath<K: Kind>(pub Id<K>);

/// A call path's `{id}`.
pub type CallPath = IdPath<CallKind>;
/// A conversation path's `{id}`.
pub type ConversationPath = IdPath<ConversationKind>;

/// The noun an id kind's 404 uses.
fn noun(prefix: &str) -> &'static str {
    match prefix {
        "call_" => "call",
        "conv_" => "conversation",
        _ => "record",
    }
}

impl<S: Send + Sync, K: Kind> FromRequestParts<S> for IdPath<K> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let missing = || ApiError::not_found(noun(K::PREFIX));
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| missing())?;
        Id::parse(&text).map(Self).map_err(|_| missing())
    }
}

/// The workspace's call, or the 404 that a missing and a foreign id share.
///
/// # Errors
/// 404 when the workspace has no such call; 500 when the store fails.
pub async fn load_call(
    state: &AppState,
    workspace: &WorkspaceId,
    id: &CallId,
) -> Result<Call, ApiError> {
    let mut call = state
        .store()
        .call(workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("call"))?;
    // While a call is live the store holds the end of its seq reservation; show the real one.
    state.live().overlay(&mut call);
    Ok(call)
}

/// The workspace's conversation, or the 404 that a missing and a foreign id share.
///
/// # Errors
/// 404 when the workspace has no such conversation; 500 when the store fails.
pub async fn load_conversation(
    state: &AppState,
    workspace: &WorkspaceId,
    id: &ConversationId,
) -> Result<Conversation, ApiError> {
    state
        .store()
        .conversation(workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))
}
