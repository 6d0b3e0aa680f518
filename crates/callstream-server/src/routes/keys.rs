//! `/v1/keys`: a workspace's keys, managed with an admin key (`callstream keys create --admin`).
//!
//! `GET /v1/keys` lists them (never a secret: an id, a hint of the first characters, the kind,
//! the times, the state); `POST /v1/keys` creates one and shows its secret once; `DELETE
//! /v1/keys/{id}` revokes one: it is refused at once, and every stream opened with it (or with a
//! stream token or session it minted) closes within a second, on every node.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callstream_core::id::KeyId;
use callstream_core::{KeyKind, time};
use callstream_store::KeyRecord;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, AdminKey};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// A key as listed: everything but its hash.
fn listed(k: &KeyRecord) -> Value {
    let now = time::now();
    let state = if k.revoked_at.is_some() {
        "revoked"
    } else if k.live_at(now) {
        "active"
    } else {
        "expired"
    };
    json!({
        "key_id": k.id,
        "kind": k.kind.as_str(),
        "admin": k.admin,
        "hint": k.hint,
        "created_at": time::format(&k.created_at),
        "expires_at": k.expires_at.as_ref().map(time::format),
        "revoked_at": k.revoked_at.as_ref().map(time::format),
        "state": state,
    })
}

/// `GET /v1/keys` (admin key): the workspace's keys, newest first.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    summary = "The workspace's keys",
    description = "Newest first; never a secret.",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The keys", body = crate::openapi::KeyList),
        (status = 400, description = "A query parameter was given (it takes none)", body = crate::openapi::Error),
        (status = 401, description = "No key, or not a valid one", body = crate::openapi::Error),
        (status = 403, description = "Not an admin key (`forbidden`)", body = crate::openapi::Error),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    AdminKey(who): AdminKey,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    if let Some((name, _)) = crate::auth::url_pairs(query.as_deref().unwrap_or("")).next() {
        return Err(ApiError::bad_request(format!(
            "{name}: unknown query parameter; GET /v1/keys takes none"
        )));
    }
    let keys = state.store().keys(&who.workspace_id).await?;
    Ok(Json(
        json!({ "keys": keys.iter().map(listed).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// `api` or `runtime`.
    kind: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /v1/keys` (admin key): a new key; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = "keys",
    summary = "Mint a key",
    description = "Its secret is in this answer only.",
    security(("admin_key" = [])),
    request_body = crate::openapi::CreateKey,
    responses(
        (status = 201, description = "The key, with its secret", body = crate::openapi::NewKey),
        (status = 400, description = "A field is missing or malformed", body = crate::openapi::Error),
        (status = 401, description = "No key, or not a valid one", body = crate::openapi::Error),
        (status = 403, description = "Not an admin key", body = crate::openapi::Error),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    AdminKey(who): AdminKey,
    JsonBody(body): JsonBody<CreateKey>,
) -> Result<impl IntoResponse, ApiError> {
    let kind = match body.kind.as_str() {
        "api" => KeyKind::Api,
        "runtime" => KeyKind::Runtime,
        _ => return Err(ApiError::bad_request("body.kind: expected api or runtime")),
    };
    if body.admin && kind != KeyKind::Api {
        return Err(ApiError::bad_request(
            "body.admin: only an API key may be an admin key",
        ));
    }
    let expires_at: Option<DateTime<Utc>> = match &body.expires_at {
        None => None,
        Some(text) => {
            let at = time::parse(text).map_err(|e| {
                ApiError::bad_request(format!(
                    "body.expires_at: expected an RFC 3339 time such as 2027-01-31T00:00:00Z ({e})"
                ))
            })?;
            if at <= time::now() {
                return Err(ApiError::bad_request("body.expires_at: already past"));
            }
            Some(at)
        }
    };
    let key = auth::mint_with(&who.workspace_id, kind, body.admin, expires_at);
    state.store().insert_key(&key.record).await?;
    let mut answer = listed(&key.record);
    answer["key"] = json!(key.secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `DELETE /v1/keys/{id}` (admin key): revokes the key. 204; 404 for an unknown or another
/// workspace's key. Revoking a revoked key again changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/keys/{id}",
    tag = "keys",
    summary = "Revoke a key",
    description = "Refused at once; every stream opened with it (or with a stream token or session it minted) closes within a second, on every node. Revoking a revoked key again changes nothing.",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The key's id (`key_…`)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No key, or not a valid one", body = crate::openapi::Error),
        (status = 403, description = "Not an admin key", body = crate::openapi::Error),
        (status = 404, description = "No such key in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    AdminKey(who): AdminKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = KeyId::parse(&id).map_err(|_| ApiError::not_found("key"))?;
    if !state
        .store()
        .revoke_key(&who.workspace_id, &id, time::now())
        .await?
    {
        return Err(ApiError::not_found("key"));
    }
    // This node's streams close now; the others' when their watch next looks.
    state.revocations().revoke(&id);
    Ok(StatusCode::NO_CONTENT)
}
