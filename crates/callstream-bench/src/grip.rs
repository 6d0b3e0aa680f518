//! The origin behind Pushpin for SSE: every `GET /stream/<channel>` is answered with a
//! `text/event-stream` response that Pushpin holds open (`Grip-Hold: stream`) on that channel;
//! publishes then go to Pushpin directly. This is the standard GRIP setup for SSE.

use anyhow::Result;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;

async fn stream(Path(channel): Path<String>) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("grip-hold", HeaderValue::from_static("stream"));
    headers.insert(
        "grip-channel",
        HeaderValue::from_str(&channel).unwrap_or(HeaderValue::from_static("invalid")),
    );
    headers.insert(
        "grip-keep-alive",
        HeaderValue::from_static(": keep-alive\\n\\n; format=cstring; timeout=30"),
    );
    (headers, "")
}

pub async fn serve(listen: &str) -> Result<()> {
    let app = axum::Router::new().route("/stream/{channel}", axum::routing::get(stream));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("GRIP origin for Pushpin on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
