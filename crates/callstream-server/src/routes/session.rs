//! `POST /v1/session`: a browser exchanges an API key for an HttpOnly, SameSite=Strict session
//! cookie, so the dashboard's requests carry no key. `DELETE /v1/session` signs out.
//!
//! `callstream demo` prints a one-time sign-in link instead of asking a newcomer to paste a key:
//! its secret (`sl_…`) sits in the URL fragment, which browsers never send, and the dashboard
//! exchanges it here once (`Authorization: Bearer sl_…`) and removes it from the address bar.
//! Links live in the memory of the node that minted them, for [`SIGN_IN_LINK_TTL`].

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callstream_core::id::KeyId;
use callstream_core::time;
use callstream_core::{KeyKind, WorkspaceId};
use callstream_store::SessionRecord;
use dashmap::DashMap;
use serde_json::json;

use crate::auth::{self, ApiKey, Principal, SESSION_COOKIE, SESSION_PREFIX};
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

/// The prefix of one-time sign-in secrets.
pub const SIGN_IN_PREFIX: &str = "sl_";
/// How long a sign-in link works if nobody uses it.
pub const SIGN_IN_LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// One-time sign-in links: the hash of each secret, whom it signs in, and until when.
#[derive(Default)]
pub struct SignInLinks(DashMap<[u8; 32], (WorkspaceId, KeyId, Instant)>);

impl SignInLinks {
    /// A new link's secret, signing in as `key_id` of `workspace` (an API key) once.
    pub fn mint(&self, workspace: &WorkspaceId, key_id: KeyId) -> String {
        let now = Instant::now();
        self.0.retain(|_, (_, _, until)| *until > now);
        let secret = auth::random_secret(SIGN_IN_PREFIX);
        self.0.insert(
            auth::hash(&secret),
            (workspace.clone(), key_id, now + SIGN_IN_LINK_TTL),
        );
        secret
    }

    /// Uses a link up: whoever presents it first signs in, once.
    fn redeem(&self, secret: &str) -> Option<(WorkspaceId, KeyId)> {
        let (_, (workspace, key_id, until)) = self.0.remove(&auth::hash(secret))?;
        (until > Instant::now()).then_some((workspace, key_id))
    }
}

/// `POST /v1/session`: an API key (or a one-time sign-in link's secret) for a session cookie.
#[utoipa::path(
    post,
    path = "/v1/session",
    tag = "session",
    summary = "Sign in: a session cookie for an API key",
    description = "Send an API key, or the `sl_…` secret of a one-time sign-in link (`callstream demo` prints one), as `Authorization: Bearer`. The answer sets the HttpOnly, SameSite=Strict `callstream_session` cookie, which then works wherever an API key does.",
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Signed in; `Set-Cookie` carries the session", body = crate::openapi::Session),
        (status = 401, description = "No key, not a valid one, or a used or expired sign-in link", body = crate::openapi::Error),
    )
)]
pub async fn create(State(state): State<AppState>, mut parts: Parts) -> Result<Response, ApiError> {
    let link = auth::bearer(&parts)?
        .filter(|secret| secret.starts_with(SIGN_IN_PREFIX))
        .map(str::to_owned);
    let who = match link {
        Some(secret) => {
            let (workspace_id, key_id) =
                state.sign_in_links().redeem(&secret).ok_or_else(|| {
                    ApiError::unauthorized(
                        "this sign-in link has been used or has expired; sign in with an API key",
                    )
                })?;
            // A session whose key is revoked is refused at its first use (the store looks).
            Principal {
                workspace_id,
                kind: KeyKind::Api,
                key_id,
                call_scope: None,
                expires_at: None,
                admin: false,
            }
        }
        None => {
            <ApiKey as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                &mut parts, &state,
            )
            .await?
            .0
        }
    };
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

/// `DELETE /v1/session`: signs out.
#[utoipa::path(
    delete,
    path = "/v1/session",
    tag = "session",
    summary = "Sign out",
    description = "Ends the session and clears its cookie; `204` even when there was none.",
    responses((status = 204, description = "Signed out"))
)]
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

/// `GET /v1/session`: whether this browser is signed in, always `200` (a page asks without a
/// failed request in its console): `{"signed_in": false}`, or `true` with the `workspace_id` and
/// the session's `expires_at`.
#[utoipa::path(
    get,
    path = "/v1/session",
    tag = "session",
    summary = "Whether this browser is signed in",
    description = "Always `200`, so that a page can ask without a failed request in its console.",
    security((), ("session" = [])),
    responses((status = 200, description = "Signed in or not", body = crate::openapi::SessionState))
)]
pub async fn current(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let signed_out = || axum::Json(json!({ "signed_in": false })).into_response();
    let Some(token) = auth::session_cookie(&parts) else {
        return Ok(signed_out());
    };
    match auth::authenticate_session(state.store(), &token).await {
        Ok(who) => Ok(axum::Json(json!({
            "signed_in": true,
            "workspace_id": who.workspace_id,
            "expires_at": who.expires_at.as_ref().map(time::format),
        }))
        .into_response()),
        Err(err) if err.status == StatusCode::UNAUTHORIZED => Ok(signed_out()),
        Err(err) => Err(err),
    }
}
