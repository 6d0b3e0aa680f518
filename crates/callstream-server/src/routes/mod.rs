//! HTTP handlers, one module per resource. Handlers parse, authorise and call into the core,
//! store, bus and surfaces; they hold no state of their own.

pub mod calls;
pub mod demo;
pub mod ops;
pub mod transcript_stream;

use callstream_core::CallId;

use crate::error::ApiError;

/// A call id from a path. A malformed id is "not found", exactly like an unknown one.
pub fn call_id(text: &str) -> Result<CallId, ApiError> {
    CallId::parse(text).map_err(|_| ApiError::not_found("call"))
}
