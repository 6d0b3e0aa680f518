//! Webhook endpoints: `POST /v1/webhook-endpoints` (the secret is shown once),
//! `GET /v1/webhook-endpoints`, `DELETE /v1/webhook-endpoints/{id}`. API key only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callstream_core::{EventType, time};
use callstream_store::WebhookEndpoint;
use callstream_webhooks::Secret;
use serde::Deserialize;
use serde_json::json;

use crate::auth::ApiKey;
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    url: String,
    #[serde(default)]
    event_types: Option<Vec<String>>,
}

pub async fn create(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    JsonBody(body): JsonBody<CreateEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    crate::targets::check_target(
        state.config().target_policy(),
        &body.url,
        crate::targets::Kind::Http,
    )
    .await
    .map_err(|e| ApiError::bad_request(format!("body.url: {e}")))?;
    if let Some(types) = &body.event_types {
        if types.is_empty() {
            return Err(ApiError::bad_request(
                "body.event_types: leave it out for every type, or name at least one",
            ));
        }
        if let Some(bad) = types.iter().find(|t| EventType::parse(t).is_none()) {
            return Err(ApiError::bad_request(format!(
                "body.event_types: unknown event type {bad:?}"
            )));
        }
    }
    let secret = Secret::generate().map_err(|_| ApiError::internal())?;
    let endpoint = WebhookEndpoint {
        id: format!(
            "whe_{}",
            callstream_core::EventId::new()
                .as_str()
                .trim_start_matches("evt_")
        ),
        workspace_id: who.workspace_id,
        url: body.url,
        secret: secret.expose_whsec(),
        event_types: body.event_types,
        created_at: time::now(),
        disabled_at: None,
        disabled_reason: None,
    };
    state.store().create_webhook_endpoint(&endpoint).await?;
    state.live().webhooks_changed(&endpoint.workspace_id);
    let mut view = serde_json::to_value(&endpoint).map_err(|_| ApiError::internal())?;
    // The secret is shown once, at creation; it is needed to verify signatures.
    view["secret"] = json!(endpoint.secret);
    Ok((StatusCode::CREATED, Json(view)))
}

pub async fn list(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
) -> Result<impl IntoResponse, ApiError> {
    let endpoints = state.store().webhook_endpoints(&who.workspace_id).await?;
    Ok(Json(json!({ "webhook_endpoints": endpoints })))
}

pub async fn delete(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    if state
        .store()
        .delete_webhook_endpoint(&who.workspace_id, &id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook endpoint"))
    }
}
