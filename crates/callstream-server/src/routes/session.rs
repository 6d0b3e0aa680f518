//! `POST /v1/session`: a browser exchanges an API key for an HttpOnly, SameSite=Strict session
//! cookie, so the dashboard's requests carry no key. `DELETE /v1/session` signs out.

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callstream_core::time;
use callstream_store::SessionRecord;
use serde_json::json;

use crate::auth::{self, ApiKey, SESSION_COOKIE, SESSION_PREFIX};
use crate::error::ApiError;
use crate::state::AppState;

fn cookie(state: &AppState, value: &str, max_age: u64) -> Result<HeaderValue, ApiError> {
    let secure = if state.config().session_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .map_err(|_| ApiError::internal())
}

pub async fn create(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
) -> Result<Response, ApiError> {
    let token = auth::random_secret(SESSION_PREFIX);
    let ttl = state.config().session_ttl_secs;
    let now = time::now();
    // A session never outlives the key that opened it.
    let expires_at = (now
        + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2).min(365 * 86_400)))
    .min(
        who.expires_at
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
    );
    state
        .store()
        .insert_session(&SessionRecord {
            token_hash: auth::hash(&token),
            workspace_id: who.workspace_id.clone(),
            key_id: who.key_id,
            created_at: now,
            expires_at,
        })
        .await?;
    let mut response = (
        StatusCode::CREATED,
        axum::Json(
            json!({ "workspace_id": who.workspace_id, "expires_at": time::format(&expires_at) }),
        ),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, &token, ttl)?);
    Ok(response)
}

pub async fn delete(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    if let Some(token) = auth::session_cookie(&parts) {
        state.store().delete_session(&auth::hash(&token)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie(&state, "", 0)?);
    Ok(response)
}
