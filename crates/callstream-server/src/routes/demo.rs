//! `GET /demo`: a one-page live transcript viewer for the demo and the 5-minute tour. It uses
//! only the public API: `GET /v1/calls` with the header, and the transcript `EventSource` with
//! `?token=` exactly as seed 000's snippet does.

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/demo.html"))
}
