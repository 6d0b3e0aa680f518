//! `GET /v1/workspace` (API key): the key's workspace: its id, name, the `auth_id` that the audio
//! stream API (seed 004) puts in its paths, and the secret that signs its status callbacks.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::json;

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/workspace",
    tag = "workspace",
    summary = "The key's workspace",
    security(("api_key" = []), ("session" = [])),
    responses(
        (status = 200, description = "The workspace", body = crate::openapi::WorkspaceView),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
) -> Result<impl IntoResponse, ApiError> {
    let workspace = state
        .store()
        .workspace(&who.workspace_id)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace"))?;
    let secret = crate::audio::callbacks::ensure_signing_secret(&state, &workspace.id).await?;
    Ok(Json(json!({
        "id": workspace.id,
        "name": workspace.name,
        "auth_id": workspace.auth_id,
        "created_at": callstream_core::time::format(&workspace.created_at),
        "callback_signing_secret": secret,
    })))
}
