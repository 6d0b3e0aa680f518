//! API keys and who a request is.
//!
//! Secrets are `pk_live_…` (API) or `rk_live_…` (runtime) followed by 32 random characters
//! (about 190 bits). Only their SHA-256 is stored. A presented secret is hashed and looked up by
//! hash; because the lookup key is a hash, response timing says nothing useful about any stored
//! secret, and the stored hash is then compared again in constant time as a second guard.
//!
//! `?token=` is accepted only on the browser paths seed 000 names (see
//! [`token_query_allowed`]); a middleware refuses it with 401 everywhere else, before any
//! handler runs, so a key in a URL is never honoured where it would end up in logs by design.

use axum::extract::{FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use callstream_core::id::KeyId;
use callstream_core::{CallId, KeyKind, WorkspaceId, time};
use callstream_store::{KeyRecord, Store};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

const SECRET_CHARS: usize = 32;

/// A freshly minted key: the secret (shown once) and the record to store.
pub struct NewKey {
    pub secret: String,
    pub record: KeyRecord,
}

/// `prefix` followed by 32 random letters and digits (about 190 bits).
pub fn random_secret(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut secret = String::from(prefix);
    while secret.len() < prefix.len() + SECRET_CHARS {
        let mut bytes = [0u8; 64];
        callstream_core::id::random_bytes(&mut bytes);
        // Rejection sampling: 248 = 4 * 62, so every accepted byte maps without bias.
        for b in bytes.into_iter().filter(|b| *b < 248) {
            if secret.len() == prefix.len() + SECRET_CHARS {
                break;
            }
            secret.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
        }
    }
    secret
}

/// Mints a key of `kind` for `workspace`, with no expiry and no admin scope.
pub fn mint(workspace: &WorkspaceId, kind: KeyKind) -> NewKey {
    mint_with(workspace, kind, false, None)
}

/// Mints a key of `kind` for `workspace`: an admin key when `admin` (an API key that may also
/// manage the workspace's keys), expiring at `expires_at` if given.
pub fn mint_with(
    workspace: &WorkspaceId,
    kind: KeyKind,
    admin: bool,
    expires_at: Option<DateTime<Utc>>,
) -> NewKey {
    let secret = random_secret(kind.prefix());
    let record = KeyRecord {
        id: KeyId::new(),
        workspace_id: workspace.clone(),
        kind,
        key_hash: hash(&secret),
        hint: secret[..kind.prefix().len() + 4].to_owned(),
        created_at: time::now(),
        expires_at,
        admin: admin && kind == KeyKind::Api,
        revoked_at: None,
    };
    NewKey { secret, record }
}

/// The prefix of stream tokens (`POST /v1/stream-tokens`).
pub const STREAM_TOKEN_PREFIX: &str = "st_";

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub workspace_id: WorkspaceId,
    pub kind: KeyKind,
    pub key_id: KeyId,
    /// Set for a stream token: the one call it may watch.
    pub call_scope: Option<CallId>,
    /// When the credential stops working (a stream token's or session's end, or the key's own
    /// expiry): streams opened with it end then.
    pub expires_at: Option<DateTime<Utc>>,
    /// An admin key: it may manage the workspace's keys.
    pub admin: bool,
}

impl Principal {
    /// Refuses a stream token used for a call other than its own.
    ///
    /// # Errors
    /// 404 when the token is scoped to another call, exactly as for a foreign call.
    pub fn check_call(&self, call: &CallId) -> Result<(), ApiError> {
        match &self.call_scope {
            // Like a foreign id: the token's holder learns nothing about other calls.
            Some(scope) if scope != call => Err(ApiError::not_found("call")),
            _ => Ok(()),
        }
    }
}

/// Resolves a stream token.
///
/// # Errors
/// 401 for an unknown, expired or revoked token.
pub async fn authenticate_stream_token(
    store: &dyn Store,
    secret: &str,
) -> Result<Principal, ApiError> {
    if secret.len() > 128 {
        return Err(ApiError::unauthorized("invalid stream token"));
    }
    let presented = hash(secret);
    let token = store
        .stream_token_by_hash(&presented)
        .await?
        .filter(|t| bool::from(t.token_hash.ct_eq(&presented)))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "invalid stream token (unknown, or the key that minted it was revoked)",
            )
        })?;
    if token.expires_at <= time::now() {
        return Err(ApiError::unauthorized(
            "the stream token has expired; ask for a new one",
        ));
    }
    Ok(Principal {
        workspace_id: token.workspace_id,
        kind: KeyKind::Api,
        key_id: token.key_id,
        call_scope: Some(token.call_id),
        expires_at: Some(token.expires_at),
        admin: false,
    })
}

/// Resolves a presented secret to its principal.
///
/// # Errors
/// 401 for anything that is not a live key; 500 when the store fails.
pub async fn authenticate(store: &dyn Store, secret: &str) -> Result<Principal, ApiError> {
    // Named by the kind the secret claims to be, so a runtime's operator is not told of API keys.
    let what = match KeyKind::of_secret(secret) {
        Some(KeyKind::Runtime) => "runtime key",
        _ => "API key",
    };
    let invalid = || ApiError::unauthorized(format!("invalid {what}"));
    // Other secrets of the gateway, presented where they do not work: say what they are for.
    let elsewhere = if secret.starts_with(STREAM_TOKEN_PREFIX) {
        Some(
            "a stream token (st_…) opens only the browser streams (/v1/calls/{id}/transcript/stream, /v1/calls/{id}/stream, /live-transcript/{call_sid}); send an API key here",
        )
    } else if secret.starts_with(SESSION_PREFIX) {
        Some("a session (ss_…) works only as the browser's session cookie; send an API key here")
    } else if secret.starts_with(crate::routes::session::SIGN_IN_PREFIX) {
        Some(
            "a sign-in link's secret (sl_…) signs a browser in once, with POST /v1/session; send an API key here",
        )
    } else {
        None
    };
    if let Some(message) = elsewhere {
        return Err(ApiError::unauthorized(message));
    }
    if KeyKind::of_secret(secret).is_none() || secret.len() > 128 {
        return Err(invalid());
    }
    let presented = hash(secret);
    let record = store.key_by_hash(&presented).await?.ok_or_else(invalid)?;
    if !bool::from(record.key_hash.ct_eq(&presented)) {
        return Err(invalid());
    }
    // Only the holder of the whole secret learns this, and it tells them what to do.
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "the {what} has been revoked; use another key"
        )));
    }
    if !record.live_at(time::now()) {
        return Err(ApiError::unauthorized(format!("the {what} has expired")));
    }
    Ok(Principal {
        workspace_id: record.workspace_id,
        kind: record.kind,
        key_id: record.id,
        call_scope: None,
        expires_at: record.expires_at,
        admin: record.admin,
    })
}

pub(crate) fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not valid text"))?;
    // The scheme name is case-insensitive (RFC 9110 section 11.1).
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "Authorization must be `Bearer <key>`",
        ));
    }
    Ok(Some(token.trim()))
}

/// The value of the `token` query parameter, if present.
pub fn query_token(query: Option<&str>) -> Option<String> {
    let query = query?;
    url_pairs(query).find(|(k, _)| k == "token").map(|(_, v)| v)
}

/// `application/x-www-form-urlencoded` pairs of a query string.
pub fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// The paths on which a seed allows `?token=`: seed 000's call transcript SSE stream and call
/// event WebSocket, and seed 003's live transcript socket, all opened by browsers that cannot
/// set headers.
pub fn token_query_allowed(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "v1", "calls", _, "transcript", "stream"]
            | ["", "v1", "calls", _, "stream"]
            | ["", "live-transcript", _]
    )
}

/// Middleware: refuses `?token=` with 401 on every path but the browser streams.
pub async fn refuse_query_tokens(request: Request, next: Next) -> Response {
    let has_token = request
        .uri()
        .query()
        .is_some_and(|q| url_pairs(q).any(|(k, _)| k == "token"));
    if has_token && !token_query_allowed(request.uri().path()) {
        return ApiError::unauthorized(
            "the ?token= query parameter is not accepted on this path; send `Authorization: Bearer <key>`",
        )
        .into_response();
    }
    next.run(request).await
}

async fn principal(
    parts: &Parts,
    state: &AppState,
    allow_query: bool,
    kind: KeyKind,
) -> Result<Principal, ApiError> {
    let header = bearer(parts)?.map(str::to_owned);
    let query = if allow_query {
        query_token(parts.uri.query())
    } else {
        None
    };
    let secret = header.or(query).ok_or_else(|| {
        ApiError::unauthorized(if allow_query {
            "missing credentials: send `Authorization: Bearer <key>` or `?token=`"
        } else {
            "missing credentials: send `Authorization: Bearer <key>`"
        })
    })?;
    let principal = authenticate(state.store(), &secret).await?;
    crate::RequestLog::workspace(parts, &principal.workspace_id);
    if principal.kind != kind {
        return Err(ApiError::forbidden(match kind {
            KeyKind::Api => "this endpoint needs an API key (pk_live_…); runtime keys only ingest",
            KeyKind::Runtime => "this endpoint needs a runtime key (rk_live_…)",
        }));
    }
    Ok(principal)
}

/// An API key (`pk_live_…`) from the `Authorization` header, or, without that header, the
/// dashboard's session cookie (`POST /v1/session`). A request that changes something with the
/// cookie must come from the gateway's own origin ([`same_origin`]).
pub struct ApiKey(pub Principal);

/// On the browser paths: an API key or a stream token, from the header or `?token=`. Handlers
/// must call [`Principal::check_call`] for the call they serve.
pub struct BrowserPrincipal(pub Principal);

/// A runtime key (`rk_live_…`) from the `Authorization` header.
pub struct RuntimeKey(pub Principal);

/// An admin API key (`callstream keys create --admin`) from the `Authorization` header.
pub struct AdminKey(pub Principal);

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let refused = || {
            ApiError::forbidden(
                "managing keys takes an admin API key (pk_live_…, made with `callstream keys create --admin`)",
            )
        };
        match principal(parts, state, false, KeyKind::Api).await {
            Ok(who) if who.admin => Ok(Self(who)),
            Ok(_) => Err(refused()),
            Err(e) if e.code == "forbidden" => Err(refused()),
            Err(e) => Err(e),
        }
    }
}

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer(parts)?.is_none()
            && let Some(token) = session_cookie(parts)
        {
            if !same_origin(parts) {
                return Err(ApiError::forbidden(
                    "a request signed in by the session cookie that changes something must come from the gateway's own pages",
                ));
            }
            let who = authenticate_session(state.store(), &token).await?;
            crate::RequestLog::workspace(parts, &who.workspace_id);
            return Ok(Self(who));
        }
        principal(parts, state, false, KeyKind::Api).await.map(Self)
    }
}

/// Whether a request that the session cookie signs in may act: reads always may; anything else
/// must come from a page of the gateway's own origin. Browsers send `Origin` and
/// `Sec-Fetch-Site` with every such request; the cookie's `SameSite=Strict` already keeps other
/// sites' requests from carrying it, and this also refuses other origins of the same site (a
/// sibling subdomain, another port). Clients that send neither header are not browsers, and
/// carry the cookie only if someone gave it to them.
pub fn same_origin(parts: &Parts) -> bool {
    use axum::http::Method;
    if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = parts.headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return false;
    }
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return true;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, rest)| Some(rest) == host)
}

impl FromRequestParts<AppState> for BrowserPrincipal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = bearer(parts)?.map(str::to_owned);
        let query = query_token(parts.uri.query());
        if let Some(token) = header
            .as_deref()
            .or(query.as_deref())
            .filter(|s| s.starts_with(STREAM_TOKEN_PREFIX))
        {
            let who = authenticate_stream_token(state.store(), token).await?;
            crate::RequestLog::workspace(parts, &who.workspace_id);
            return Ok(Self(who));
        }
        // Before a WebSocket upgrade every auth failure is 401 (or 404), so a runtime key here
        // is "unauthorized", not "forbidden".
        principal(parts, state, true, KeyKind::Api)
            .await
            .map(Self)
            .map_err(|mut e| {
                if e.code == "forbidden" {
                    e.status = axum::http::StatusCode::UNAUTHORIZED;
                    e.code = "unauthorized";
                }
                e
            })
    }
}

impl FromRequestParts<AppState> for RuntimeKey {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        principal(parts, state, false, KeyKind::Runtime)
            .await
            .map(Self)
    }
}

/// The browser session cookie's name.
pub const SESSION_COOKIE: &str = "callstream_session";
/// The prefix of session tokens.
pub const SESSION_PREFIX: &str = "ss_";

/// The session cookie's value, if the request carries one.
pub fn session_cookie(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|cookies| {
            cookies.split(';').find_map(|c| {
                c.trim()
                    .strip_prefix(SESSION_COOKIE)?
                    .strip_prefix('=')
                    .map(str::to_owned)
            })
        })
}

/// Resolves a session token.
///
/// # Errors
/// 401 for an unknown, expired or revoked session.
pub async fn authenticate_session(store: &dyn Store, token: &str) -> Result<Principal, ApiError> {
    if !token.starts_with(SESSION_PREFIX) || token.len() > 128 {
        return Err(ApiError::unauthorized(
            "invalid session; sign in again with POST /v1/session",
        ));
    }
    let presented = hash(token);
    let session = store
        .session_by_hash(&presented)
        .await?
        .filter(|s| bool::from(s.token_hash.ct_eq(&presented)))
        .ok_or_else(|| {
            ApiError::unauthorized("invalid session; sign in again with POST /v1/session")
        })?;
    if session.expires_at <= time::now() {
        return Err(ApiError::unauthorized(
            "the session has expired; sign in again with POST /v1/session",
        ));
    }
    Ok(Principal {
        workspace_id: session.workspace_id,
        kind: KeyKind::Api,
        key_id: session.key_id,
        call_scope: None,
        expires_at: Some(session.expires_at),
        admin: false,
    })
}

/// An API key from the `Authorization` header, or a logged-in browser's session cookie (seed
/// 002: "Also accepts session cookies for browser-based auth").
pub struct ApiKeyOrSession(pub Principal);

impl FromRequestParts<AppState> for ApiKeyOrSession {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if bearer(parts)?.is_none()
            && let Some(token) = session_cookie(parts)
        {
            return authenticate_session(state.store(), &token).await.map(Self);
        }
        principal(parts, state, false, KeyKind::Api).await.map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_secrets_have_prefix_length_and_hash() {
        let ws = WorkspaceId::new();
        let k = mint(&ws, KeyKind::Api);
        assert!(k.secret.starts_with("pk_live_"));
        assert_eq!(k.secret.len(), 8 + SECRET_CHARS);
        assert!(k.secret[8..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(k.record.key_hash, hash(&k.secret));
        assert!(!k.record.hint.contains(&k.secret[12..]));
        assert_ne!(mint(&ws, KeyKind::Api).secret, k.secret);
    }

    #[test]
    fn token_paths() {
        let cases = [
            ("/v1/calls/call_1/transcript/stream", true),
            ("/v1/calls/call_1/stream", true),
            ("/v1/calls/call_1/stream/", true),
            ("/v1/conversations/conv_1/stream", false),
            ("/v1/calls/call_1", false),
            ("/v1/calls", false),
            ("/metrics", false),
            ("/v1/calls/call_1/transcript", false),
            ("/live-transcript/CA0123", true),
            ("/live-transcript", false),
        ];
        for (path, ok) in cases {
            assert_eq!(token_query_allowed(path), ok, "{path}");
        }
    }

    #[test]
    fn query_tokens_decode() {
        assert_eq!(
            query_token(Some("a=1&token=pk%5Flive%5Fx")),
            Some("pk_live_x".into())
        );
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(Some("token=%zz%")), Some("%zz%".into()));
        assert_eq!(query_token(None), None);
    }
}
