//! The REST API's OpenAPI 3.1 description, served at `/openapi.json`.
//!
//! It is generated from the code: every REST handler carries a `#[utoipa::path]` annotation
//! (its method, path, parameters, bodies, answers and examples), and `app()` routes the REST
//! surface through utoipa-axum's `OpenApiRouter`, which takes each route's path and method from
//! that annotation; a REST route without a description cannot be routed there. The long-lived
//! streams (SSE and WebSocket) are described by docs/asyncapi.yaml instead (`STREAM_PATHS`).
//!
//! The types below describe answers that the handlers build as JSON on the spot (and a few
//! store records); the integration test `openapi` holds them to the truth: it walks every
//! operation against a running gateway and validates each answer against its schema, with no
//! undocumented field allowed, and validates every example too.

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The description's fixed parts; the paths are added as `app()` routes them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "callstream",
        description = "A live-call streaming gateway: the REST API. The streams (SSE and \
            WebSocket) are described in AsyncAPI 3.0 (docs/asyncapi.yaml). Every refusal is \
            `{\"error_code\", \"message\"}` with the status named per operation \
            (docs/native-api.md).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/", description = "this gateway")),
    modifiers(&Security),
    tags(
        (name = "calls", description = "The call log, ingest by the call runtime, final transcripts and call control (docs/native-api.md)"),
        (name = "conversations", description = "SMS and WhatsApp conversations and the operator handoff"),
        (name = "stream tokens", description = "Short-lived tokens that open one call's browser streams"),
        (name = "workspace", description = "The key's workspace"),
        (name = "keys", description = "Key lifecycle, with an admin key"),
        (name = "webhooks", description = "Webhook endpoints, their delivery log, retry and replay (docs/webhooks.md)"),
        (name = "session", description = "The dashboard's HttpOnly session cookie"),
        (name = "audio streams", description = "Seed 004: a call's audio to the customer's WebSocket service, Plivo's Audio Stream API (docs/audio-streams.md)"),
        (name = "dashboard", description = "The web page and its assets (docs/dashboard.md)"),
        (name = "operations", description = "Health, readiness, metrics and this description (docs/operations.md)"),
    ),
    components(schemas(Error))
)]
pub struct ApiDoc;

/// The schemes named by the operations' `security`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "api_key",
            bearer("An API key (`pk_live_…`): reads, streams, call control."),
        );
        components.add_security_scheme(
            "runtime_key",
            bearer("A runtime key (`rk_live_…`): the call runtime's ingest."),
        );
        components.add_security_scheme(
            "admin_key",
            bearer("An API key minted with `--admin`: manages the workspace's keys."),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "callstream_session",
                "The dashboard's HttpOnly session cookie (`POST /v1/session`); accepted wherever an API key is.",
            ))),
        );
        components.add_security_scheme(
            "auth_id",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-ID",
                "The workspace's `auth_id` (`GET /v1/workspace`), as in the path.",
            ))),
        );
        components.add_security_scheme(
            "auth_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "An API key of the workspace. HTTP Basic (`auth_id:key`) is accepted too.",
            ))),
        );
    }
}

/// `GET /openapi.json`: this description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 description of the REST API", content_type = "application/json", body = serde_json::Value))
)]
pub async fn document(
    axum::Extension(doc): axum::Extension<Document>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0,
    )
}

/// Makes each `operationId` unique, as OpenAPI requires and client generators rely on: utoipa
/// names an operation after its handler (`create`, `get`, … in several modules), so the
/// operation's tag is put before it (`calls_create`, `webhooks_get`, `audio_streams_delete`).
pub fn qualify_operation_ids(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let tag = operation
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .map(|t| t.replace(' ', "_"));
            if let (Some(tag), Some(id)) = (tag, operation.operation_id.as_mut()) {
                *id = format!("{tag}_{id}");
            }
        }
    }
}

/// The description as served, encoded once when the app is built.
#[derive(Clone)]
pub struct Document(pub bytes::Bytes);

/// Every refusal.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"error_code": "not_found", "message": "no such call"}))]
pub struct Error {
    /// What went wrong, for programs: `unauthorized`, `not_found`, `invalid_event`, …
    pub error_code: String,
    /// What went wrong, for people: names the field or the header.
    pub message: String,
}

/// One event from the call runtime: its type and its payload (docs/native-api.md, "Ingest";
/// the payload's fields per type are in docs/stt-tts-events.md).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"event_type": "call.transcription", "payload": {"role": "user", "text": "What time do you open?", "is_final": true, "turn_id": "trn_1"}}))]
pub struct IncomingEvent {
    /// `call.transcription`, `call.dtmf`, `call.completed`, … or a type of the runtime's own.
    pub event_type: String,
    /// The event's fields; carried verbatim.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// When it happened (RFC 3339); the gateway's time when left out.
    #[schema(nullable = false, format = DateTime)]
    pub timestamp: Option<String>,
}

/// One event, or several in order.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(example = json!([
    {"event_type": "call.transcription", "payload": {"role": "user", "text": "What time", "is_final": false, "turn_id": "trn_1"}},
    {"event_type": "call.transcription", "payload": {"role": "user", "text": "What time do you open?", "is_final": true, "turn_id": "trn_1"}}
]))]
pub enum IncomingEvents {
    One(IncomingEvent),
    Many(Vec<IncomingEvent>),
}

/// What an ingest numbered.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"seqs": [2, 3], "event_ids": ["evt_5f1c2a0c9e1f7b3a6d5c8e21", "evt_6a2d3b1d0f2a8c4b7e6d9f32"]}))]
pub struct Accepted {
    /// Each event's sequence number in its call or conversation, in order.
    pub seqs: Vec<u64>,
    /// Each event's id (the `webhook-id` of its webhooks).
    pub event_ids: Vec<String>,
}

/// A page of the call log.
#[derive(Serialize, ToSchema)]
pub struct CallPage {
    pub calls: Vec<callstream_core::Call>,
    /// `?before=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A final transcript turn.
#[derive(Serialize, ToSchema)]
pub struct Turn {
    #[schema(pattern = "^trn_")]
    pub turn_id: String,
    /// The seq of the final `call.transcription` event that recorded it.
    pub seq: u64,
    #[schema(value_type = String, pattern = "^(user|agent)$")]
    pub role: String,
    pub text: String,
    pub confidence: Option<f64>,
    pub segment_start: Option<f64>,
    pub segment_end: Option<f64>,
    #[schema(format = DateTime)]
    pub ts: String,
}

/// A call's final turns so far.
#[derive(Serialize, ToSchema)]
pub struct Transcript {
    #[schema(pattern = "^call_")]
    pub call_id: String,
    pub status: callstream_core::CallStatus,
    pub turns: Vec<Turn>,
}

/// A call command's outcome: the runtime carried it out.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "done"}))]
pub struct CommandDone {
    #[schema(pattern = "^done$")]
    pub status: String,
}

/// `POST /v1/calls/{id}/commands`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"command": "send_dtmf", "digits": "5"}))]
pub struct CommandRequest {
    /// `end_call`, `send_dtmf` or `join_call`.
    #[schema(pattern = "^(end_call|send_dtmf|join_call)$")]
    pub command: String,
    /// `send_dtmf`: 0-9, `*`, `#`, A-D.
    #[schema(nullable = false)]
    pub digits: Option<String>,
    /// `join_call`: who joins.
    #[schema(nullable = false)]
    pub user_id: Option<String>,
}

/// A stream token, shown once.
#[derive(Serialize, ToSchema)]
pub struct StreamToken {
    /// `st_…`: put it in `?token=` of the call's two browser streams.
    pub token: String,
    #[schema(pattern = "^call_")]
    pub call_id: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// The key's workspace.
#[derive(Serialize, ToSchema)]
pub struct WorkspaceView {
    #[schema(pattern = "^ws_")]
    pub id: String,
    pub name: String,
    /// The account id of the audio stream API's paths.
    pub auth_id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Signs the audio streams' status callbacks (`X-Callstream-Signature`).
    pub callback_signing_secret: String,
}

/// A key as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub struct Key {
    #[schema(pattern = "^key_")]
    pub key_id: String,
    #[schema(pattern = "^(api|runtime)$")]
    pub kind: String,
    pub admin: bool,
    /// The first characters of the secret, to recognise it.
    pub hint: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub revoked_at: Option<String>,
    #[schema(pattern = "^(active|expired|revoked)$")]
    pub state: String,
}

/// A new key: as listed, with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub listed: Key,
    /// The secret (`pk_live_…`, `rk_live_…`).
    pub key: String,
}

/// The workspace's keys, newest first.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<Key>,
}

/// A conversation's message, in its latest state.
#[derive(Serialize, ToSchema)]
pub struct MessageView {
    pub message_id: String,
    pub direction: String,
    pub text: Option<String>,
    /// `received`, `delivered`, `read`, … as the latest event said.
    pub status: String,
    /// The latest `message.*` payload for it, exactly as ingested.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A conversation with its message history.
#[derive(Serialize, ToSchema)]
pub struct ConversationWithMessages {
    #[serde(flatten)]
    pub conversation: callstream_core::Conversation,
    pub messages: Vec<MessageView>,
}

/// The workspace's conversations.
#[derive(Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<callstream_core::Conversation>,
}

/// A webhook endpoint: never its secret, except where said.
#[derive(Serialize, ToSchema)]
pub struct Endpoint {
    #[schema(pattern = "^whe_")]
    pub id: String,
    #[schema(pattern = "^ws_")]
    pub workspace_id: String,
    pub url: String,
    /// The event types it receives; `null`: every type.
    #[schema(required = true)]
    pub event_types: Option<Vec<String>>,
    pub description: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Set while it is disabled (by the API, a `410`, or failing for `webhook_disable_after_secs`).
    #[schema(required = true, format = DateTime)]
    pub disabled_at: Option<String>,
    #[schema(required = true)]
    pub disabled_reason: Option<String>,
    /// Until when the previous secret signs beside the new one, after a rotation.
    #[schema(required = true, format = DateTime)]
    pub previous_secret_expires_at: Option<String>,
    /// Since when every attempt failed; `null` while it delivers.
    #[schema(required = true, format = DateTime)]
    pub failing_since: Option<String>,
    /// `whsec_…`: only in the answers of a creation and a rotation.
    pub secret: Option<String>,
}

/// The workspace's webhook endpoints.
#[derive(Serialize, ToSchema)]
pub struct EndpointList {
    pub webhook_endpoints: Vec<Endpoint>,
}

/// `POST /v1/webhook-endpoints`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"url": "https://example.com/hooks/callstream", "event_types": ["call.completed", "call.failed"], "description": "call ends"}))]
pub struct CreateEndpoint {
    /// `https://` (or `http://`); private and loopback addresses are refused (docs/webhooks.md).
    pub url: String,
    /// Left out or `null`: every type.
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
}

/// `PATCH /v1/webhook-endpoints/{id}`: each field left out stays as it is.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"description": "call ends, production"}))]
pub struct ChangeEndpoint {
    pub url: Option<String>,
    /// `null`: every type again.
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A message queued for an endpoint, with its state.
#[derive(Serialize, ToSchema)]
pub struct WebhookMessage {
    /// Sent as `webhook-id`.
    pub event_id: String,
    pub event_type: String,
    #[schema(pattern = "^(pending|failing|delivered|exhausted)$")]
    pub state: String,
    pub attempts: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub first_attempt_at: Option<String>,
    /// When it is tried next (pending and failing messages only).
    #[schema(required = true, format = DateTime)]
    pub next_attempt_at: Option<String>,
    #[schema(required = true)]
    pub last_status_code: Option<u16>,
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// A page of an endpoint's messages, newest first.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<WebhookMessage>,
    /// `?cursor=` for the next page; `null` on the last.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One attempt to deliver a message.
#[derive(Serialize, ToSchema)]
pub struct Attempt {
    #[schema(format = DateTime)]
    pub attempted_at: String,
    /// The receiver's status; `null` when none came (connect error, timeout).
    #[schema(required = true)]
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    /// `null` when delivered; else `timeout`, `connect`, `http_status`, `target_refused`, `other`.
    #[schema(required = true)]
    pub error_kind: Option<String>,
    /// The first bytes of the answer's body.
    pub response_body: String,
}

/// A message's attempts, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<Attempt>,
}

/// How many messages were sent again.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"requeued": 1}))]
pub struct Requeued {
    pub requeued: u64,
}

/// `POST /v1/webhook-endpoints/{id}/replay`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"since": "2026-12-01T00:00:00Z"}))]
pub struct Replay {
    /// RFC 3339.
    pub since: String,
}

/// A new session.
#[derive(Serialize, ToSchema)]
pub struct Session {
    #[schema(pattern = "^ws_")]
    pub workspace_id: String,
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// Whether this browser is signed in.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"signed_in": false}))]
pub struct SessionState {
    pub signed_in: bool,
    #[schema(pattern = "^ws_")]
    pub workspace_id: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// `POST /v1/keys`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"kind": "api", "expires_at": "2099-12-31T00:00:00Z"}))]
pub struct CreateKey {
    /// `api` or `runtime`.
    #[schema(pattern = "^(api|runtime)$")]
    pub kind: String,
    /// May manage keys (API keys only).
    #[serde(default)]
    pub admin: bool,
    /// RFC 3339; never expires when left out.
    #[schema(nullable = false, format = DateTime)]
    pub expires_at: Option<String>,
}

/// `POST /v1/stream-tokens`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"call_id": "call_4bfd2a0c9e1f7b3a6d5c8e21", "ttl_secs": 300}))]
pub struct CreateStreamToken {
    pub call_id: String,
    /// Seconds, 1 to `stream_token_max_ttl_secs`; `stream_token_ttl_secs` when left out.
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/calls`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"}))]
pub struct CreateCall {
    /// E.164.
    pub phone: String,
    pub direction: callstream_core::Direction,
    pub transport: callstream_core::Transport,
    /// The runtime's own id for the call, e.g. a Twilio Call SID (1 to 128 characters).
    pub external_id: Option<String>,
}

/// `POST /v1/conversations`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"channel": "sms", "participants": ["+14155550123"]}))]
pub struct CreateConversation {
    pub channel: callstream_core::Channel,
    /// 1 to 20 addresses (phone numbers or channel handles).
    pub participants: Vec<String>,
    /// `ai` when left out.
    pub mode: Option<callstream_core::ConversationMode>,
}

/// `POST /v1/conversations/{id}/mode`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"mode": "human", "actor_user_id": "usr_ana"}))]
pub struct ChangeMode {
    pub mode: callstream_core::ConversationMode,
    /// Who took over or handed back.
    pub actor_user_id: String,
}

/// `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready"}))]
pub struct Health {
    /// `ok` (`/healthz`); `ready`, `shutting_down`, `store_unavailable`, `bus_unavailable`
    /// (`/readyz`).
    #[schema(pattern = "^(ok|ready|shutting_down|store_unavailable|bus_unavailable)$")]
    pub status: String,
}

/// `POST …/Stream/` (JSON, or form-encoded as Plivo's clients send it).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"service_url": "wss://example.com/audio", "bidirectional": true}))]
pub struct CreateAudioStream {
    /// `wss://` or `ws://`; private and loopback addresses are refused.
    pub service_url: String,
    #[schema(nullable = false)]
    pub bidirectional: Option<bool>,
    /// `inbound` (default), `outbound` or `both`.
    #[schema(nullable = false)]
    pub audio_track: Option<String>,
    /// `audio/x-l16;rate=8000` (default), `audio/x-l16;rate=16000` or `audio/x-mulaw;rate=8000`.
    #[schema(nullable = false)]
    pub content_type: Option<String>,
    /// `little-endian` (default) or `big-endian`, for L16.
    #[schema(nullable = false)]
    pub l16_byte_order: Option<String>,
    /// Seconds, 1 to 86400 (the default).
    #[schema(nullable = false)]
    pub stream_timeout: Option<u64>,
    pub status_callback_url: Option<String>,
    /// `POST` (default) or `GET`.
    #[schema(nullable = false)]
    pub status_callback_method: Option<String>,
    /// `k1=v1;k2=v2`, under 512 bytes, sent in the `start` message.
    #[schema(nullable = false)]
    pub extra_headers: Option<String>,
}

/// A stream was started.
#[derive(Serialize, ToSchema)]
pub struct AudioStreamStarted {
    pub api_id: String,
    #[schema(pattern = "^Stream started$")]
    pub message: String,
    pub stream_id: String,
}

/// An audio stream.
#[derive(Serialize, ToSchema)]
pub struct AudioStream {
    pub stream_id: String,
    #[schema(pattern = "^call_")]
    pub call_uuid: String,
    pub service_url: String,
    pub audio_track: String,
    pub bidirectional: bool,
    pub content_type: String,
    #[schema(pattern = "^(little|big)-endian$")]
    pub l16_byte_order: String,
    pub stream_timeout: u64,
    /// `in-progress`, `stopped`, `failed`, `timeout`, …
    pub status: String,
    #[schema(required = true)]
    pub status_callback_url: Option<String>,
    pub status_callback_method: String,
    #[schema(required = true)]
    pub extra_headers: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required = true, format = DateTime)]
    pub start_time: Option<String>,
    #[schema(required = true, format = DateTime)]
    pub end_time: Option<String>,
    #[schema(required = true)]
    pub end_reason: Option<String>,
    /// Milliseconds of audio waiting to be played into the call (active streams).
    pub playout_queued_ms: Option<u64>,
    /// In the answer of a `GET` of one stream.
    pub api_id: Option<String>,
}

/// Plivo's paging.
#[derive(Serialize, ToSchema)]
pub struct AudioStreamPageMeta {
    pub limit: u32,
    pub offset: u64,
    pub total_count: u64,
    #[schema(required = true)]
    pub next: Option<String>,
    #[schema(required = true)]
    pub previous: Option<String>,
}

/// A call's streams, oldest first.
#[derive(Serialize, ToSchema)]
pub struct AudioStreamPage {
    pub api_id: String,
    pub meta: AudioStreamPageMeta,
    pub objects: Vec<AudioStream>,
}

/// A refusal of the audio stream API: the API's own body plus Plivo's `api_id` and `error`.
#[derive(Serialize, ToSchema)]
pub struct AudioStreamError {
    pub api_id: String,
    pub error: String,
    pub error_code: String,
    pub message: String,
}
