//! HTTP handlers, one module per resource. Handlers parse, authorise and call into the core,
//! store, bus and surfaces; they hold no state of their own.

pub mod call_socket;
pub mod calls;
pub mod demo;
pub mod ops;
pub mod runtime_socket;
pub mod sse_stream;
pub mod stream_tokens;
pub mod transcript_stream;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use callstream_core::{Call, CallId, WorkspaceId};

use crate::error::ApiError;
use crate::state::AppState;

/// The workspace's call, or the 404 that a missing and a foreign id share.
///
/// # Errors
/// 404 when the workspace has no such call; 500 when the store fails.
pub async fn load_call(
    state: &AppState,
    workspace: &WorkspaceId,
    id: &CallId,
) -> Result<Call, ApiError> {
    state
        .store()
        .call(workspace, id)
        .await?
        .ok_or_else(|| ApiError::not_found("call"))
}

/// The `{id}` of a call path. Anything that is not a well-formed call id (bad percent-encoding,
/// another kind of id, garbage) is "call not found", exactly like an unknown or foreign id, and
/// always in the API's JSON error shape.
pub struct CallPath(pub CallId);

impl<S: Send + Sync> FromRequestParts<S> for CallPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("call"))?;
        CallId::parse(&text)
            .map(Self)
            .map_err(|_| ApiError::not_found("call"))
    }
}
