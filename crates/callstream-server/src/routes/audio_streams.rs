//! Seed 004's Stream resource, Plivo/Vobiz style, under
//! `/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/`:
//!
//! - `POST …/Stream/`: start a stream (`201 {"api_id","message","stream_id"}`).
//! - `GET …/Stream/` (a page: `meta` + `objects`) and `GET …/Stream/{stream_id}/`.
//! - `DELETE …/Stream/{stream_id}/` and `DELETE …/Stream/` (every active stream of the call):
//!   `204`; nothing active, `404`.
//!
//! Authentication is the seed's: `X-Auth-ID` (the workspace's `auth_id`) and `X-Auth-Token` (an
//! API key of that workspace), or HTTP Basic with the same pair as Plivo's SDKs send it. Errors
//! carry the API's `{"error_code","message"}` and, for Plivo clients, `api_id` and `error`.
//! `call_uuid` is the call's id (`call_…`) or the `external_id` the runtime gave it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use callstream_audio::MediaFormat;
use callstream_core::audio::{AudioTrack, StreamStatus, is_stream_id, new_stream_id};
use callstream_core::{Call, CallId, KeyKind, WorkspaceId, time};
use callstream_store::{AudioStreamRecord, CallbackMethod, StoreError};
use serde_json::{Map, Value, json};

use crate::auth::{authenticate, url_pairs};
use crate::error::ApiError;
use crate::state::AppState;

/// The longest `extra_headers` (the seed: under 512 bytes).
const MAX_EXTRA_HEADERS: usize = 511;
/// `stream_timeout` bounds, in seconds (Plivo's default is its maximum, a day).
const MAX_STREAM_TIMEOUT: u64 = 86_400;
const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// An error of this resource: the API's own body plus Plivo's `api_id` and `error`.
pub struct StreamError(pub ApiError);

impl From<ApiError> for StreamError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for StreamError {
    fn from(e: StoreError) -> Self {
        Self(ApiError::from(e))
    }
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({
            "api_id": new_stream_id(),
            "error": e.message,
            "error_code": e.code,
            "message": e.message,
        });
        (e.status, Json(body)).into_response()
    }
}

fn bad(message: impl Into<String>) -> StreamError {
    StreamError(ApiError::bad_request(message))
}

/// The workspace a request's `X-Auth-ID`/`X-Auth-Token` (or Basic credentials) name, checked
/// against the path's `auth_id`.
pub struct Account {
    pub workspace_id: WorkspaceId,
    pub auth_id: String,
}

fn credentials(headers: &HeaderMap) -> Result<(String, String), ApiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).map(str::to_owned))
            .transpose()
            .map_err(|_| ApiError::unauthorized(format!("{name} is not valid text")))
    };
    if let (Some(id), Some(token)) = (text("x-auth-id")?, text("x-auth-token")?) {
        return Ok((id, token));
    }
    // Plivo's SDKs send the same pair as HTTP Basic credentials.
    if let Some(auth) = text("authorization")?
        && let Some((scheme, encoded)) = auth.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| ApiError::unauthorized("Basic credentials are not valid base64 text"))?;
        if let Some((id, token)) = decoded.split_once(':') {
            return Ok((id.to_owned(), token.to_owned()));
        }
    }
    Err(ApiError::unauthorized(
        "missing credentials: send X-Auth-ID (the account's auth_id) and X-Auth-Token (an API key)",
    ))
}

impl FromRequestParts<AppState> for Account {
    type Rejection = StreamError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, StreamError> {
        let headers = &parts.headers;
        let no_credentials = ["x-auth-id", "x-auth-token", "authorization"]
            .iter()
            .all(|h| !headers.contains_key(*h));
        // The dashboard's session cookie, beside the seed's credentials (docs/dashboard.md).
        let (who, auth_id) = if no_credentials
            && let Some(session) = crate::auth::session_cookie(parts)
        {
            if !crate::auth::same_origin(parts) {
                return Err(ApiError::forbidden(
                    "a request signed in by the session cookie that changes something must come from the gateway's own pages",
                )
                .into());
            }
            let who = crate::auth::authenticate_session(state.store(), &session).await?;
            (who, None)
        } else {
            let (auth_id, token) = credentials(headers)?;
            let who = authenticate(state.store(), &token)
                .await
                .map_err(|_| ApiError::unauthorized("invalid X-Auth-Token"))?;
            if who.kind != KeyKind::Api {
                return Err(ApiError::unauthorized(
                    "X-Auth-Token must be an API key (pk_live_…); runtime keys only ingest",
                )
                .into());
            }
            (who, Some(auth_id))
        };
        let workspace = state
            .store()
            .workspace(&who.workspace_id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid X-Auth-Token"))?;
        if auth_id.is_some_and(|id| id != workspace.auth_id) {
            return Err(ApiError::unauthorized(
                "the account id (X-Auth-ID, or the Basic user) is not the auth_id of this key's account",
            )
            .into());
        }
        // Another account in the path is "not found", as any foreign id is.
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found("account"))?;
        let path_account = params
            .iter()
            .find(|(k, _)| k == "auth_id")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if path_account != workspace.auth_id {
            return Err(ApiError::not_found("account").into());
        }
        Ok(Self {
            workspace_id: workspace.id,
            auth_id: workspace.auth_id,
        })
    }
}

/// The call a `call_uuid` names in the workspace: its id, or its `external_id`.
async fn find_call(
    state: &AppState,
    workspace: &WorkspaceId,
    call_uuid: &str,
) -> Result<Call, StreamError> {
    let found = match CallId::parse(call_uuid) {
        Ok(id) => state.store().call(workspace, &id).await?,
        Err(_) if !call_uuid.is_empty() && call_uuid.len() <= 128 => {
            state
                .store()
                .call_by_external_id(workspace, call_uuid)
                .await?
        }
        Err(_) => None,
    };
    let mut call = found.ok_or_else(|| ApiError::not_found("call"))?;
    state.live().overlay(&mut call);
    Ok(call)
}

/// A request body as fields, JSON or form-encoded.
fn fields(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, StreamError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            let mut fields = Map::new();
            for (k, v) in form_urlencoded::parse(body) {
                if fields
                    .insert(k.clone().into_owned(), Value::String(v.into_owned()))
                    .is_some()
                {
                    return Err(bad(format!("{k}: given more than once")));
                }
            }
            Ok(fields)
        }
        "application/json" | "" => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(bad("body: expected a JSON object")),
            Err(e) if body.is_empty() => Err(bad(format!("body: empty ({e})"))),
            Err(e) => Err(bad(format!("body is not valid JSON: {e}"))),
        },
        other => Err(StreamError(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{other}: send application/json or application/x-www-form-urlencoded"),
        ))),
    }
}

fn string(v: &Value, field: &str) -> Result<String, StreamError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(bad(format!("{field}: expected a string"))),
    }
}

fn boolean(v: &Value, field: &str) -> Result<bool, StreamError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(bad(format!("{field}: expected true or false"))),
    }
}

fn seconds(v: &Value, field: &str) -> Result<u64, StreamError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| (1..=MAX_STREAM_TIMEOUT).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "{field}: expected whole seconds from 1 to {MAX_STREAM_TIMEOUT}"
            ))
        })
}

/// `k1=v1;k2=v2` (or a JSON object of strings), checked and in that form.
fn extra_headers(v: &Value) -> Result<String, StreamError> {
    let pairs: Vec<(String, String)> = match v {
        Value::String(s) if s.trim().is_empty() => Vec::new(),
        Value::String(s) => s
            .split([';', ','])
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| bad(format!("extra_headers: {p:?} is not key=value")))
            })
            .collect::<Result<_, _>>()?,
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(v) => Ok((k.clone(), v.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect::<Result<_, StreamError>>()?,
        _ => return Err(bad("extra_headers: expected \"key=value;key2=value2\"")),
    };
    for (k, v) in &pairs {
        let ok_key = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok_key {
            return Err(bad(format!(
                "extra_headers: key {k:?} must be letters, digits, '-', '_' or '.'"
            )));
        }
        if v.chars().any(|c| c.is_control() || c == ';' || c == '=') {
            return Err(bad(format!(
                "extra_headers: the value of {k} must not hold ';', '=' or control characters"
            )));
        }
    }
    let joined = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    if joined.len() > MAX_EXTRA_HEADERS {
        return Err(bad(format!(
            "extra_headers: {} bytes; must be under 512",
            joined.len()
        )));
    }
    Ok(joined)
}

/// The three content types of the seed.
fn content_type(v: &Value) -> Result<MediaFormat, StreamError> {
    let text = string(v, "content_type")?;
    let allowed = "audio/x-l16;rate=8000, audio/x-l16;rate=16000 or audio/x-mulaw;rate=8000";
    match MediaFormat::parse(&text) {
        Ok(format)
            if [
                MediaFormat::L16_8K,
                MediaFormat::L16_16K,
                MediaFormat::MULAW_8K,
            ]
            .contains(&format) =>
        {
            Ok(format)
        }
        _ => Err(bad(format!(
            "content_type: {:?} is not offered; expected {allowed}",
            text.chars().take(64).collect::<String>()
        ))),
    }
}

/// Any other method on the Stream paths: `405`, in this resource's error shape.
pub async fn method_not_allowed() -> StreamError {
    StreamError(ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the Stream resource takes GET, POST and DELETE",
    ))
}

/// `POST …/Stream/`.
#[utoipa::path(
    post,
    path = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/",
    tag = "audio streams",
    summary = "Stream a call's audio to your WebSocket service",
    description = "Seed 004 (Plivo's Audio Stream API): the gateway connects to `service_url` and sends the call's audio as `media` messages; with `bidirectional`, what the service sends back is played into the call. JSON or form-encoded. The same path without the trailing slash works too.",
    security(("auth_id" = [], "auth_token" = [])),
    params(("auth_id" = String, Path, description = "The workspace's `auth_id` (`GET /v1/workspace`)"), ("call_uuid" = String, Path, description = "The call's id (`call_…`) or its `external_id`")),
    request_body(content = crate::openapi::CreateAudioStream, content_type = "application/json"),
    responses(
        (status = 201, description = "Started", body = crate::openapi::AudioStreamStarted),
        (status = 400, description = "A field is malformed, or `service_url` is refused", body = crate::openapi::AudioStreamError),
        (status = 401, description = "No credentials, or not valid for this `auth_id`", body = crate::openapi::AudioStreamError),
        (status = 404, description = "No such call (or stream) in the workspace", body = crate::openapi::AudioStreamError),
        (status = 409, description = "The call has ended", body = crate::openapi::AudioStreamError),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    account: Account,
    Path((_, call_uuid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, StreamError> {
    let body = fields(&headers, &body)?;
    let policy = state.config().target_policy();
    let mut service_url = None;
    let mut bidirectional = false;
    let mut audio_track = AudioTrack::Inbound;
    let mut format = MediaFormat::L16_8K;
    let mut stream_timeout = MAX_STREAM_TIMEOUT;
    let mut callback_url = None;
    let mut callback_method = CallbackMethod::Post;
    let mut extra = String::new();
    let mut big_endian = false;
    for (key, value) in &body {
        match key.as_str() {
            "service_url" => service_url = Some(string(value, key)?),
            "bidirectional" => bidirectional = boolean(value, key)?,
            "audio_track" => {
                let text = string(value, key)?;
                audio_track = AudioTrack::parse(&text).ok_or_else(|| {
                    bad(format!(
                        "audio_track: {text:?}; expected inbound, outbound or both"
                    ))
                })?;
            }
            "content_type" => format = content_type(value)?,
            "stream_timeout" => stream_timeout = seconds(value, key)?,
            "status_callback_url" if value.is_null() => callback_url = None,
            "status_callback_url" => {
                let text = string(value, key)?;
                if !text.is_empty() {
                    crate::targets::check_target(policy, &text, crate::targets::Kind::Http)
                        .await
                        .map_err(|e| bad(format!("status_callback_url: {e}")))?;
                    callback_url = Some(text);
                }
            }
            "status_callback_method" => {
                let text = string(value, key)?;
                callback_method = CallbackMethod::parse(&text).ok_or_else(|| {
                    bad(format!(
                        "status_callback_method: {text:?}; expected GET or POST"
                    ))
                })?;
            }
            "extra_headers" => extra = extra_headers(value)?,
            "l16_byte_order" => {
                big_endian = match string(value, key)?.to_ascii_lowercase().as_str() {
                    "little" | "little-endian" | "le" => false,
                    "big" | "big-endian" | "be" | "network" => true,
                    other => {
                        return Err(bad(format!(
                            "l16_byte_order: {other:?}; expected little-endian (the default) or big-endian"
                        )));
                    }
                };
            }
            other => {
                return Err(bad(format!(
                    "{other}: unknown field; expected service_url, bidirectional, audio_track, content_type, \
                     stream_timeout, status_callback_url, status_callback_method, extra_headers or l16_byte_order"
                )));
            }
        }
    }
    let service_url =
        service_url.ok_or_else(|| bad("service_url: required (a ws:// or wss:// URL)"))?;
    crate::targets::check_target(policy, &service_url, crate::targets::Kind::WebSocket)
        .await
        .map_err(|e| bad(format!("service_url: {e}")))?;
    if bidirectional && audio_track != AudioTrack::Inbound {
        return Err(bad(format!(
            "audio_track: {} is not allowed with bidirectional; only inbound is",
            audio_track.as_str()
        )));
    }
    let call = find_call(&state, &account.workspace_id, &call_uuid).await?;
    if !call.status.is_active() {
        return Err(bad(format!(
            "call_uuid: the call has ended ({})",
            call.status
        )));
    }
    let active = state
        .store()
        .active_call_audio_streams(&account.workspace_id, &call.id)
        .await?;
    let limit = state.config().audio_streams_per_call;
    if active.len() >= limit {
        return Err(StreamError(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_streams",
            format!("the call already has {limit} active streams, the most it may have"),
        )));
    }
    if callback_url.is_some() {
        // Minted now, so that the customer can fetch it before the first callback arrives.
        crate::audio::callbacks::ensure_signing_secret(&state, &account.workspace_id).await?;
    }
    let rec = AudioStreamRecord {
        stream_id: new_stream_id(),
        workspace_id: account.workspace_id.clone(),
        call_id: call.id.clone(),
        service_url,
        audio_track,
        bidirectional,
        content_type: format.to_string(),
        l16_big_endian: big_endian,
        stream_timeout_secs: stream_timeout,
        status_callback_url: callback_url,
        status_callback_method: callback_method,
        extra_headers: extra,
        status: StreamStatus::Connecting,
        created_at: time::now(),
        start_time: None,
        end_time: None,
        end_reason: None,
    };
    state
        .store()
        .create_audio_stream(&rec)
        .await
        .map_err(|e| match e {
            StoreError::Invalid(message) => bad(message),
            StoreError::CallEnded(status) => {
                bad(format!("call_uuid: the call has ended ({status})"))
            }
            other => StreamError::from(other),
        })?;
    let stream_id = rec.stream_id.clone();
    if let Err(err) = state
        .audio_streams()
        .start_new(&state, rec, account.auth_id)
        .await
    {
        // Recorded and active: a node of the cluster adopts it once the store answers.
        tracing::warn!(error = %err, stream_id = %stream_id, "could not claim a new audio stream");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "api_id": new_stream_id(),
            "message": "Stream started",
            "stream_id": stream_id,
        })),
    )
        .into_response())
}

/// A stream as the API shows it.
fn view(state: &AppState, s: &AudioStreamRecord) -> Value {
    let opt_time = |t: &Option<chrono::DateTime<chrono::Utc>>| t.as_ref().map(time::format);
    let mut v = json!({
        "stream_id": s.stream_id,
        "call_uuid": s.call_id,
        "service_url": s.service_url,
        "audio_track": s.audio_track.as_str(),
        "bidirectional": s.bidirectional,
        "content_type": s.content_type,
        "l16_byte_order": if s.l16_big_endian { "big-endian" } else { "little-endian" },
        "stream_timeout": s.stream_timeout_secs,
        "status": s.status.as_str(),
        "status_callback_url": s.status_callback_url,
        "status_callback_method": s.status_callback_method.as_str(),
        "extra_headers": s.extra_headers,
        "created_at": time::format(&s.created_at),
        "start_time": opt_time(&s.start_time),
        "end_time": opt_time(&s.end_time),
        "end_reason": s.end_reason,
    });
    if s.status.is_active()
        && let Some(ms) = state.audio_streams().queued_ms(&s.stream_id)
    {
        v["playout_queued_ms"] = json!(ms);
    }
    v
}

/// `GET …/Stream/{stream_id}/`.
#[utoipa::path(
    get,
    path = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/{stream_id}/",
    tag = "audio streams",
    summary = "One audio stream",
    description = "The same path without the trailing slash works too.",
    security(("auth_id" = [], "auth_token" = [])),
    params(("auth_id" = String, Path, description = "The workspace's `auth_id` (`GET /v1/workspace`)"), ("call_uuid" = String, Path, description = "The call's id (`call_…`) or its `external_id`"), ("stream_id" = String, Path, description = "The stream's id")),
    responses(
        (status = 200, description = "The stream", body = crate::openapi::AudioStream),
        (status = 401, description = "No credentials, or not valid for this `auth_id`", body = crate::openapi::AudioStreamError),
        (status = 404, description = "No such call (or stream) in the workspace", body = crate::openapi::AudioStreamError),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    account: Account,
    Path((_, call_uuid, stream_id)): Path<(String, String, String)>,
) -> Result<Response, StreamError> {
    let stream = find_stream(&state, &account, &call_uuid, &stream_id).await?;
    let mut v = view(&state, &stream);
    v["api_id"] = json!(new_stream_id());
    Ok(Json(v).into_response())
}

async fn find_stream(
    state: &AppState,
    account: &Account,
    call_uuid: &str,
    stream_id: &str,
) -> Result<AudioStreamRecord, StreamError> {
    let call = find_call(state, &account.workspace_id, call_uuid).await?;
    if !is_stream_id(stream_id) {
        return Err(ApiError::not_found("stream").into());
    }
    state
        .store()
        .audio_stream(&account.workspace_id, stream_id)
        .await?
        .filter(|s| s.call_id == call.id)
        .ok_or_else(|| ApiError::not_found("stream").into())
}

/// `GET …/Stream/?limit=&offset=`: the call's streams, oldest first, as Plivo pages them.
#[utoipa::path(
    get,
    path = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/",
    tag = "audio streams",
    summary = "A call's audio streams",
    description = "Oldest first, paged as Plivo pages them. The same path without the trailing slash works too.",
    security(("auth_id" = [], "auth_token" = [])),
    params(("auth_id" = String, Path, description = "The workspace's `auth_id` (`GET /v1/workspace`)"), ("call_uuid" = String, Path, description = "The call's id (`call_…`) or its `external_id`"),
        ("limit" = Option<u32>, Query, description = "1 to 100 (20)"),
        ("offset" = Option<u64>, Query, description = "Streams to skip")),
    responses(
        (status = 200, description = "A page of streams", body = crate::openapi::AudioStreamPage),
        (status = 400, description = "A query parameter is unknown or malformed", body = crate::openapi::AudioStreamError),
        (status = 401, description = "No credentials, or not valid for this `auth_id`", body = crate::openapi::AudioStreamError),
        (status = 404, description = "No such call (or stream) in the workspace", body = crate::openapi::AudioStreamError),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    account: Account,
    Path((auth_id, call_uuid)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, StreamError> {
    let (mut limit, mut offset) = (DEFAULT_PAGE, 0u64);
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_PAGE).contains(l))
                    .ok_or_else(|| bad(format!("limit: expected 1 to {MAX_PAGE}")))?;
            }
            "offset" => {
                offset = value
                    .parse()
                    .map_err(|_| bad("offset: expected a whole number"))?;
            }
            other => return Err(bad(format!("{other}: unknown query parameter"))),
        }
    }
    let call = find_call(&state, &account.workspace_id, &call_uuid).await?;
    let (streams, total) = state
        .store()
        .audio_streams(&account.workspace_id, &call.id, limit, offset)
        .await?;
    let page = |offset: u64| {
        format!("/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/?limit={limit}&offset={offset}")
    };
    let next = (offset + u64::from(limit) < total).then(|| page(offset + u64::from(limit)));
    let previous = (offset > 0).then(|| page(offset.saturating_sub(u64::from(limit))));
    let objects: Vec<Value> = streams.iter().map(|s| view(&state, s)).collect();
    Ok(Json(json!({
        "api_id": new_stream_id(),
        "meta": {
            "limit": limit,
            "offset": offset,
            "total_count": total,
            "next": next,
            "previous": previous,
        },
        "objects": objects,
    }))
    .into_response())
}

/// `DELETE …/Stream/{stream_id}/`.
#[utoipa::path(
    delete,
    path = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/{stream_id}/",
    tag = "audio streams",
    summary = "Stop an audio stream",
    description = "The same path without the trailing slash works too.",
    security(("auth_id" = [], "auth_token" = [])),
    params(("auth_id" = String, Path, description = "The workspace's `auth_id` (`GET /v1/workspace`)"), ("call_uuid" = String, Path, description = "The call's id (`call_…`) or its `external_id`"), ("stream_id" = String, Path, description = "The stream's id")),
    responses(
        (status = 204, description = "Stopped"),
        (status = 401, description = "No credentials, or not valid for this `auth_id`", body = crate::openapi::AudioStreamError),
        (status = 404, description = "No such call or stream, or the stream has ended", body = crate::openapi::AudioStreamError),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    account: Account,
    Path((_, call_uuid, stream_id)): Path<(String, String, String)>,
) -> Result<Response, StreamError> {
    let stream = find_stream(&state, &account, &call_uuid, &stream_id).await?;
    if !stop(&state, &stream).await {
        return Err(StreamError(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no active stream with this id (it has ended)",
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE …/Stream/`: every active stream of the call.
#[utoipa::path(
    delete,
    path = "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/",
    tag = "audio streams",
    summary = "Stop every audio stream of a call",
    description = "The same path without the trailing slash works too.",
    security(("auth_id" = [], "auth_token" = [])),
    params(("auth_id" = String, Path, description = "The workspace's `auth_id` (`GET /v1/workspace`)"), ("call_uuid" = String, Path, description = "The call's id (`call_…`) or its `external_id`")),
    responses(
        (status = 204, description = "Stopped"),
        (status = 401, description = "No credentials, or not valid for this `auth_id`", body = crate::openapi::AudioStreamError),
        (status = 404, description = "No such call, or it has no active stream", body = crate::openapi::AudioStreamError),
    )
)]
pub async fn delete_all(
    State(state): State<AppState>,
    account: Account,
    Path((_, call_uuid)): Path<(String, String)>,
) -> Result<Response, StreamError> {
    let call = find_call(&state, &account.workspace_id, &call_uuid).await?;
    let streams = state
        .store()
        .active_call_audio_streams(&account.workspace_id, &call.id)
        .await?;
    let mut stopped = 0;
    for stream in &streams {
        if stop(&state, stream).await {
            stopped += 1;
        }
    }
    if stopped == 0 {
        return Err(StreamError(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the call has no active stream",
        )));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends a stream as deleted and stops it if it runs here; `false` if it had already ended.
async fn stop(state: &AppState, stream: &AudioStreamRecord) -> bool {
    let ended = crate::audio::finish(state, stream, StreamStatus::Stopped, "deleted").await;
    if ended {
        crate::audio::stop_anywhere(state, &stream.stream_id);
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_headers_are_checked_and_normalised() {
        assert_eq!(
            extra_headers(&json!("a=1; b = two")).ok(),
            Some("a=1;b=two".into())
        );
        assert_eq!(
            extra_headers(&json!({"a": "1", "b": 2})).ok(),
            Some("a=1;b=2".into())
        );
        assert_eq!(extra_headers(&json!("")).ok(), Some(String::new()));
        for bad in [
            json!("novalue"),
            json!("a b=1"),
            json!({"k": "x;y"}),
            json!(5),
            json!(format!("k={}", "v".repeat(600))),
        ] {
            assert!(extra_headers(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_seeds_content_types() {
        for (text, ok) in [
            ("audio/x-l16;rate=8000", true),
            ("audio/x-l16;rate=16000", true),
            ("audio/x-mulaw;rate=8000", true),
            ("AUDIO/X-MULAW; rate=8000", true),
            ("audio/x-alaw;rate=8000", false),
            ("audio/x-l16", false),
            ("audio/x-l16;rate=44100", false),
            ("text/plain", false),
        ] {
            assert_eq!(content_type(&json!(text)).is_ok(), ok, "{text}");
        }
    }
}
