//! `POST /v1/stream-tokens`: a short-lived token for one call, for browsers.
//!
//! Seed 000 warns that `?token=` keys leak through browser history, `Referer` and proxy logs.
//! A stream token limits the damage: it opens only the two browser streams of one call, only
//! for a few minutes, may watch but not control the call, and dies with the key it came from.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callstream_core::{CallId, time};
use callstream_store::StreamTokenRecord;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, ApiKey, STREAM_TOKEN_PREFIX};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::routes::load_call;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStreamToken {
    call_id: String,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /v1/stream-tokens`: a token for one call's two browser streams.
#[utoipa::path(
    post,
    path = "/v1/stream-tokens",
    tag = "stream tokens",
    summary = "Mint a stream token for one call",
    description = "Opens only that call's transcript SSE and call WebSocket (`?token=`), watch-only, until it expires; never outlives the key that minted it.",
    security(("api_key" = []), ("session" = [])),
    request_body = crate::openapi::CreateStreamToken,
    responses(
        (status = 201, description = "The token, shown once", body = crate::openapi::StreamToken),
        (status = 400, description = "A field is missing or malformed", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such call in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    JsonBody(body): JsonBody<CreateStreamToken>,
) -> Result<impl IntoResponse, ApiError> {
    let max = state.config().stream_token_max_ttl_secs;
    let ttl = body
        .ttl_secs
        .unwrap_or(state.config().stream_token_ttl_secs);
    if ttl == 0 || ttl > max {
        return Err(ApiError::bad_request(format!(
            "body.ttl_secs: must be 1 to {max}"
        )));
    }
    let call_id = CallId::parse(&body.call_id).map_err(|_| ApiError::not_found("call"))?;
    let call = load_call(&state, &who.workspace_id, &call_id).await?;
    let secret = auth::random_secret(STREAM_TOKEN_PREFIX);
    let now = time::now();
    // A token never outlives the key that minted it.
    let expires_at = (now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX))).min(
        who.expires_at
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    );
    state
        .store()
        .insert_stream_token(&StreamTokenRecord {
            token_hash: auth::hash(&secret),
            workspace_id: who.workspace_id,
            call_id: call.id.clone(),
            key_id: who.key_id,
            created_at: now,
            expires_at,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token": secret, "call_id": call.id, "expires_at": time::format(&expires_at) }),
        ),
    ))
}
