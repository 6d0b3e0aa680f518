//! JSON request bodies with errors in the API's own shape, naming the failing field
//! (`body.phone: …`), instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body decoded into `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            } else {
                ApiError::bad_request(format!(
                    "could not read the body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        decode(&bytes).map(Self)
    }
}

/// Decodes JSON, naming the failing field in the error (`body.direction: unknown variant …`).
///
/// # Errors
/// 400 `invalid_request` for malformed JSON or a field of the wrong shape.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    callstream_core::json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() {
            ApiError::bad_request(format!("body is not valid JSON: {}", e.error))
        } else if e.path == "." {
            ApiError::bad_request(format!("body: {}", e.error))
        } else {
            ApiError::bad_request(format!("body.{}: {}", e.path, e.error))
        }
    })
}
