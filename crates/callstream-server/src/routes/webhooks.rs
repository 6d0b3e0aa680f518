//! Webhook endpoints, API key only: `POST /v1/webhook-endpoints` (the secret is shown once),
//! `GET /v1/webhook-endpoints`, and per endpoint `GET`, `PATCH` (`url`, `event_types`,
//! `description`), `DELETE`, `POST …/disable`, `POST …/enable` and `POST …/rotate-secret` (the new
//! secret signs at once, the old one beside it for `webhook_secret_overlap_secs`).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use callstream_core::{EventType, time};
use callstream_store::{EndpointChange, MessageFilter, MessageState, Requeue, WebhookEndpoint};
use callstream_webhooks::Secret;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::auth::{ApiKey, url_pairs};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

/// The most event types one endpoint may name.
pub const MAX_EVENT_TYPES: usize = 64;
/// The longest description, in characters.
pub const MAX_DESCRIPTION: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    url: String,
    #[serde(default)]
    event_types: Option<Vec<String>>,
    #[serde(default)]
    description: Option<String>,
}

/// `PATCH`: each field left out stays as it is; `"event_types": null` means every type again.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEndpoint {
    #[serde(default)]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    event_types: Option<Option<Vec<String>>>,
    #[serde(default)]
    description: Option<String>,
}

/// A field that is present, `null` included (a field left out stays `None` by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// The types as given, each once (in their first order), every one known, at most
/// [`MAX_EVENT_TYPES`].
fn event_types(types: Vec<String>) -> Result<Vec<String>, ApiError> {
    if types.is_empty() {
        return Err(ApiError::bad_request(
            "body.event_types: leave it out (or null) for every type, or name at least one",
        ));
    }
    if types.len() > MAX_EVENT_TYPES {
        return Err(ApiError::bad_request(format!(
            "body.event_types: at most {MAX_EVENT_TYPES} event types, got {}",
            types.len()
        )));
    }
    if let Some(bad) = types
        .iter()
        .find(|t| EventType::parse(t).is_none() && *t != crate::webhooks::DELIVERY_EXHAUSTED)
    {
        return Err(ApiError::bad_request(format!(
            "body.event_types: unknown event type {bad:?}"
        )));
    }
    let mut unique: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !unique.contains(&t) {
            unique.push(t);
        }
    }
    Ok(unique)
}

fn description(text: String) -> Result<String, ApiError> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(ApiError::bad_request(format!(
            "body.description: at most {MAX_DESCRIPTION} characters"
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "body.description: no control characters",
        ));
    }
    Ok(text)
}

async fn checked_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    crate::targets::check_target(
        state.config().target_policy(),
        url,
        crate::targets::Kind::Http,
    )
    .await
    .map(drop)
    .map_err(|e| ApiError::bad_request(format!("body.url: {e}")))
}

/// An endpoint as answered: everything but its secrets.
fn view(endpoint: &WebhookEndpoint) -> Result<Value, ApiError> {
    serde_json::to_value(endpoint).map_err(|_| ApiError::internal())
}

fn new_secret() -> Result<Secret, ApiError> {
    Secret::generate().map_err(|_| ApiError::internal())
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    summary = "Add a webhook endpoint",
    description = "Its secret (`whsec_…`) is in this answer only; it signs every request (Standard Webhooks).",
    security(("api_key" = []), ("session" = [])),
    request_body = crate::openapi::CreateEndpoint,
    responses(
        (status = 201, description = "The endpoint, with its secret", body = crate::openapi::Endpoint),
        (status = 400, description = "A field is malformed, or the URL is refused (a private address, a bad scheme)", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 409, description = "The workspace has `max_webhook_endpoints` already (`too_many_endpoints`)", body = crate::openapi::Error),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    JsonBody(body): JsonBody<CreateEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    checked_url(&state, &body.url).await?;
    let types = body.event_types.map(event_types).transpose()?;
    let description = description(body.description.unwrap_or_default())?;
    let max = state.config().max_webhook_endpoints;
    if state
        .store()
        .webhook_endpoints(&who.workspace_id)
        .await?
        .len()
        >= max
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_endpoints",
            format!(
                "the workspace has {max} webhook endpoints, the most it may have (max_webhook_endpoints); delete one first"
            ),
        ));
    }
    let secret = new_secret()?;
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
        event_types: types,
        description,
        created_at: time::now(),
        disabled_at: None,
        disabled_reason: None,
        previous_secret: None,
        previous_secret_until: None,
        failing_since: None,
    };
    state.store().create_webhook_endpoint(&endpoint).await?;
    state.live().webhooks_changed(&endpoint.workspace_id);
    let mut view = view(&endpoint)?;
    // The secret is shown once, at creation; it is needed to verify signatures.
    view["secret"] = json!(endpoint.secret);
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints",
    tag = "webhooks",
    summary = "The workspace's webhook endpoints",
    security(("api_key" = []), ("session" = [])),
    responses(
        (status = 200, description = "The endpoints, never their secrets", body = crate::openapi::EndpointList),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
) -> Result<impl IntoResponse, ApiError> {
    let endpoints = state.store().webhook_endpoints(&who.workspace_id).await?;
    Ok(Json(json!({ "webhook_endpoints": endpoints })))
}

#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    summary = "One webhook endpoint",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    responses(
        (status = 200, description = "The endpoint", body = crate::openapi::Endpoint),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let endpoint = state
        .store()
        .webhook_endpoint(&who.workspace_id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    Ok(Json(view(&endpoint)?))
}

/// Applies `change` to the workspace's endpoint `id`.
async fn change(
    state: &AppState,
    who: &crate::auth::Principal,
    id: &str,
    change: EndpointChange,
) -> Result<WebhookEndpoint, ApiError> {
    let endpoint = state
        .store()
        .change_webhook_endpoint(&who.workspace_id, id, &change, time::now())
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    state.live().webhooks_changed(&who.workspace_id);
    Ok(endpoint)
}

#[utoipa::path(
    patch,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    summary = "Change a webhook endpoint",
    description = "`url`, `event_types`, `description`; each field left out stays as it is, `\"event_types\": null` means every type again.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    request_body = crate::openapi::ChangeEndpoint,
    responses(
        (status = 200, description = "The endpoint as changed", body = crate::openapi::Endpoint),
        (status = 400, description = "A field is malformed, or the URL is refused", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ChangeEndpoint>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(url) = &body.url {
        checked_url(&state, url).await?;
    }
    let wanted = EndpointChange {
        url: body.url,
        event_types: body
            .event_types
            .map(|types| types.map(event_types).transpose())
            .transpose()?,
        description: body.description.map(description).transpose()?,
        ..EndpointChange::default()
    };
    let endpoint = change(&state, &who, &id, wanted).await?;
    Ok(Json(view(&endpoint)?))
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/disable",
    tag = "webhooks",
    summary = "Disable a webhook endpoint",
    description = "Nothing is sent to it until it is enabled; its messages wait.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    responses(
        (status = 200, description = "The endpoint, disabled", body = crate::openapi::Endpoint),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn disable(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let wanted = EndpointChange {
        enabled: Some(false),
        disabled_reason: Some("disabled with the API".to_owned()),
        ..EndpointChange::default()
    };
    let endpoint = change(&state, &who, &id, wanted).await?;
    Ok(Json(view(&endpoint)?))
}

#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/enable",
    tag = "webhooks",
    summary = "Enable a webhook endpoint",
    description = "Also one disabled by a `410` or by failing for `webhook_disable_after_secs`.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    responses(
        (status = 200, description = "The endpoint, enabled", body = crate::openapi::Endpoint),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn enable(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let wanted = EndpointChange {
        enabled: Some(true),
        ..EndpointChange::default()
    };
    let endpoint = change(&state, &who, &id, wanted).await?;
    Ok(Json(view(&endpoint)?))
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`: a new secret, shown this once; the old one
/// signs beside it (a second `v1,` entry in `webhook-signature`) until
/// `previous_secret_expires_at`. Rotating again before then drops the oldest at once.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/rotate-secret",
    tag = "webhooks",
    summary = "Rotate an endpoint's secret",
    description = "The new secret signs at once; the old one signs beside it (a second `v1,` signature) until `previous_secret_expires_at`.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    responses(
        (status = 200, description = "The endpoint, with its new secret", body = crate::openapi::Endpoint),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let secret = new_secret()?;
    let overlap = i64::try_from(state.config().webhook_secret_overlap_secs).unwrap_or(i64::MAX);
    let until = time::now() + chrono::Duration::seconds(overlap.min(10 * 365 * 86_400));
    let wanted = EndpointChange {
        rotate: Some((secret.expose_whsec(), until)),
        ..EndpointChange::default()
    };
    let endpoint = change(&state, &who, &id, wanted).await?;
    let mut view = view(&endpoint)?;
    view["secret"] = json!(endpoint.secret);
    Ok(Json(view))
}

#[utoipa::path(
    delete,
    path = "/v1/webhook-endpoints/{id}",
    tag = "webhooks",
    summary = "Delete a webhook endpoint",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
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
        state.live().webhooks_changed(&who.workspace_id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook endpoint"))
    }
}

/// Messages per page when `limit` is not given, and the most a page may hold.
const MESSAGES_PER_PAGE: u32 = 50;
const MAX_MESSAGES_PER_PAGE: u32 = 250;

/// `GET /v1/webhook-endpoints/{id}/messages?status=&since=&until=&limit=&cursor=`: the events
/// queued for the endpoint, newest first, each with its state; `next_cursor` (when there may be
/// more) fetches the next page.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/messages",
    tag = "webhooks",
    summary = "An endpoint's delivery log",
    description = "The events queued for it, newest first, each with its state; paged by `next_cursor`.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)"), ("status" = Option<String>, Query, description = "`pending`, `failing`, `delivered` or `exhausted`"), ("since" = Option<String>, Query, description = "Queued at or after this RFC 3339 time"), ("until" = Option<String>, Query, description = "Queued before this RFC 3339 time"), ("limit" = Option<u32>, Query, description = "1 to 250 (50)"), ("cursor" = Option<String>, Query, description = "A page's `next_cursor`")),
    responses(
        (status = 200, description = "A page of messages", body = crate::openapi::MessagePage),
        (status = 400, description = "A query parameter is unknown or malformed", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let mut filter = MessageFilter {
        limit: MESSAGES_PER_PAGE,
        ..MessageFilter::default()
    };
    let parse_time = |name: &str, value: &str| {
        time::parse(value)
            .map_err(|e| ApiError::bad_request(format!("{name}: expected an RFC 3339 time: {e}")))
    };
    for (key, value) in url_pairs(query.as_deref().unwrap_or("")) {
        match key.as_str() {
            "status" => {
                filter.state = Some(MessageState::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "status: expected one of pending, failing, delivered, exhausted",
                    )
                })?);
            }
            "since" => filter.since = Some(parse_time("since", &value)?),
            "until" => filter.until = Some(parse_time("until", &value)?),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_MESSAGES_PER_PAGE).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: expected 1 to {MAX_MESSAGES_PER_PAGE}"
                        ))
                    })?;
            }
            "cursor" => {
                filter.before = Some(
                    value
                        .strip_prefix("c")
                        .and_then(|n| n.parse().ok())
                        .ok_or_else(|| {
                            ApiError::bad_request("cursor: not a cursor this API gave")
                        })?,
                );
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    let messages = state
        .store()
        .webhook_messages(&who.workspace_id, &id, &filter)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    let next_cursor = (messages.len() == filter.limit as usize)
        .then(|| messages.last().map(|m| format!("c{}", m.cursor)))
        .flatten();
    Ok(Json(
        json!({ "messages": messages, "next_cursor": next_cursor }),
    ))
}

/// `GET /v1/webhook-endpoints/{id}/messages/{event_id}/attempts`: every attempt to deliver one
/// message, oldest first: time, status code, latency, error kind, the first bytes of the answer.
#[utoipa::path(
    get,
    path = "/v1/webhook-endpoints/{id}/messages/{event_id}/attempts",
    tag = "webhooks",
    summary = "Every attempt to deliver one message",
    description = "Oldest first: time, status code, latency, error kind, the first bytes of the answer.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)"), ("event_id" = String, Path, description = "The message's event id (`evt_…`, its `webhook-id`)")),
    responses(
        (status = 200, description = "The attempts", body = crate::openapi::AttemptList),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint, or no such message of it", body = crate::openapi::Error),
    )
)]
pub async fn attempts(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path((id, event_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let attempts = state
        .store()
        .webhook_attempts(&who.workspace_id, &id, &event_id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook message"))?;
    Ok(Json(json!({ "attempts": attempts })))
}

/// `POST /v1/webhook-endpoints/{id}/messages/{event_id}/retry`: sends one message again now,
/// whatever its state, with its same `webhook-id`, on a new retry schedule.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/messages/{event_id}/retry",
    tag = "webhooks",
    summary = "Send one message again now",
    description = "Whatever its state, with its same `webhook-id`, on a new retry schedule.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)"), ("event_id" = String, Path, description = "The message's event id (`evt_…`, its `webhook-id`)")),
    responses(
        (status = 202, description = "Queued again", body = crate::openapi::Requeued),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint, or no such message of it", body = crate::openapi::Error),
    )
)]
pub async fn retry(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path((id, event_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let requeued = state
        .store()
        .requeue_webhook_messages(&who.workspace_id, &id, &Requeue::One(event_id), time::now())
        .await?
        .ok_or_else(|| ApiError::not_found("webhook message"))?;
    state.outbox_written();
    Ok((StatusCode::ACCEPTED, Json(json!({ "requeued": requeued }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    since: String,
}

/// `POST /v1/webhook-endpoints/{id}/replay` `{"since": "<RFC 3339>"}`: sends again every message
/// queued for the endpoint since then, whatever its state, each with its same `webhook-id` (so
/// receivers de-duplicate), on a new retry schedule.
#[utoipa::path(
    post,
    path = "/v1/webhook-endpoints/{id}/replay",
    tag = "webhooks",
    summary = "Send again everything since a time",
    description = "Every message queued for the endpoint since then, whatever its state, each with its same `webhook-id` (receivers de-duplicate), on a new retry schedule.",
    security(("api_key" = []), ("session" = [])),
    params(("id" = String, Path, description = "The endpoint's id (`whe_…`)")),
    request_body = crate::openapi::Replay,
    responses(
        (status = 202, description = "Queued again", body = crate::openapi::Requeued),
        (status = 400, description = "`since` is missing or not an RFC 3339 time", body = crate::openapi::Error),
        (status = 401, description = "No API key or session, or not a valid one", body = crate::openapi::Error),
        (status = 404, description = "No such endpoint in the workspace", body = crate::openapi::Error),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    ApiKey(who): ApiKey,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Replay>,
) -> Result<impl IntoResponse, ApiError> {
    let since = time::parse(&body.since).map_err(|e| {
        ApiError::bad_request(format!("body.since: expected an RFC 3339 time: {e}"))
    })?;
    let requeued = state
        .store()
        .requeue_webhook_messages(&who.workspace_id, &id, &Requeue::Since(since), time::now())
        .await?
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    state.outbox_written();
    Ok((StatusCode::ACCEPTED, Json(json!({ "requeued": requeued }))))
}
