//! The origin behind Pushpin. SSE: every `GET /stream/<channel>` is answered with a
//! `text/event-stream` response that Pushpin holds open (`Grip-Hold: stream`) on that channel.
//! WebSocket: Pushpin speaks WebSocket-over-HTTP to `POST /ws?channel=<channel>` (the route's
//! `over_http` option), and the answer to the connection's `OPEN` subscribes it to the channel
//! with a GRIP control message. Publishes then go to Pushpin directly. Both are the standard
//! GRIP setups.

use std::collections::HashMap;

use anyhow::Result;
use axum::extract::{Path, Query};
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

/// One WebSocket-over-HTTP request: events in, events out (`application/websocket-events`).
async fn websocket(
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/websocket-events"),
    );
    let mut out = String::new();
    if body.starts_with(b"OPEN") {
        // Accept, and subscribe the connection to its channel; `grip` marks `c:` messages as
        // control messages for Pushpin rather than text for the client.
        headers.insert("sec-websocket-extensions", HeaderValue::from_static("grip"));
        let channel = query.get("channel").map_or("none", String::as_str);
        let control = format!(
            "c:{}",
            serde_json::json!({"type": "subscribe", "channel": channel})
        );
        out.push_str("OPEN\r\n");
        out.push_str(&format!("TEXT {:x}\r\n{control}\r\n", control.len()));
    } else if body.windows(5).any(|w| w == b"CLOSE") {
        out.push_str("CLOSE\r\n");
    }
    (headers, out)
}

pub async fn serve(listen: &str) -> Result<()> {
    let app = axum::Router::new()
        .route("/stream/{channel}", axum::routing::get(stream))
        .route("/ws", axum::routing::post(websocket));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("GRIP origin for Pushpin on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
