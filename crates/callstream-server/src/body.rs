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
            ApiError::bad_request(format!("body: {}", e.message()))
        } else {
            ApiError::bad_request(format!("body.{}: {}", e.path, e.message()))
        }
    })
}

/// Says `Connection: close` on the answer to a request whose body was not read to its end (a
/// refusal sent before the body arrived: a bad key, a wrong route). hyper cannot reuse such a
/// connection, since the rest of the body would be read as the next request, so it closes it
/// after the answer; without the header, a client that reuses connections would send its next
/// request into a socket about to close, and lose it.
pub async fn close_if_body_unread(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = !axum::body::HttpBody::is_end_stream(request.body());
    if !has_body {
        return next.run(request).await;
    }
    let read = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|body| {
        axum::body::Body::new(Tracked {
            inner: body,
            read: read.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !read.load(std::sync::atomic::Ordering::Acquire) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: axum::body::Body,
    read: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl axum::body::HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
