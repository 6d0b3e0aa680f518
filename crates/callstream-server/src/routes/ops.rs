//! Operations: liveness, readiness and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process is up",
    description = "Served on `internal_listen` instead, when it is set.",
    responses((status = 200, description = "Up", body = crate::openapi::Health, example = json!({"status": "ok"})))
)]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: the store and the bus answer and the server is not shutting down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the store and the bus answer",
    description = "Served on `internal_listen` instead, when it is set.",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Health, example = json!({"status": "ready"})),
        (status = 503, description = "Shutting down, or the store or the bus does not answer", body = crate::openapi::Health, example = json!({"status": "store_unavailable"})),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown().is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        )
            .into_response();
    }
    if let Err(err) = state.store().ping().await {
        tracing::warn!(error = %err, "readiness check: store unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "store_unavailable" })),
        )
            .into_response();
    }
    if let Err(err) = state.bus().check().await {
        tracing::warn!(error = %err, "readiness check: bus unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "bus_unavailable" })),
        )
            .into_response();
    }
    Json(json!({ "status": "ready" })).into_response()
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "OpenMetrics text; every family in docs/operations.md. Served on `internal_listen` instead, when it is set.",
    responses((status = 200, description = "The metrics", content_type = "application/openmetrics-text", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics().render(state.bus().stats());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
