//! HTTP handlers, one module per resource. Handlers parse, authorise and call into the core,
//! store, bus and surfaces; they hold no state of their own.

pub mod calls;
pub mod demo;
pub mod ops;
pub mod transcript_stream;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use callstream_core::CallId;

use crate::error::ApiError;

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
