//! callstream's durable records: workspaces, hashed keys, calls, final transcript turns and
//! conversations, behind one trait, [`Store`].
//!
//! SQLite ([`SqliteStore`]) is the embedded default. The store is also the single authority for
//! event `seq` numbers: [`Store::append_call_events`] assigns them in the same transaction that
//! records what the events change, so several gateway nodes ingesting for one call still produce
//! one gap-free sequence.
//!
//! The store knows records and SQL. It does not know HTTP, the bus, key secrets (only their
//! hashes) or who is asking: every read of a workspace's data takes that workspace's id.

#[doc(hidden)]
pub mod conformance;
mod postgres;
mod sqlite;
#[doc(hidden)]
pub mod testing;

use async_trait::async_trait;
use callstream_core::audio::{AudioTrack, StreamStatus};
use callstream_core::event::{RawPayload, Role, Transcription};
use callstream_core::id::KeyId;
use callstream_core::{
    Call, CallId, CallStatus, Conversation, ConversationId, Envelope, EventError, EventId, KeyKind,
    Payload, Subject, TurnId, Workspace, WorkspaceId,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use postgres::PgStore;
pub use sqlite::{Durability, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist in that workspace.
    #[error("not found")]
    NotFound,
    /// The call has ended; nothing more may be appended to it.
    #[error("call has already ended ({0})")]
    CallEnded(CallStatus),
    /// The request contradicts itself or the stored state.
    #[error("{0}")]
    Invalid(String),
    /// Another live record already holds what this one asks for (a live call with the same
    /// `external_id`): the message says which.
    #[error("{0}")]
    Conflict(String),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The events could not be published while they were being recorded, so nothing was.
    #[error("publishing the events failed: {0}")]
    Publish(String),
}

/// The refusal of a second live call with `external_id` in a workspace.
pub(crate) fn external_id_in_use(external_id: &str, live: &str) -> StoreError {
    StoreError::Conflict(format!(
        "external_id {external_id:?} belongs to the live call {live}; a call's external_id may be reused once it has ended"
    ))
}

/// The seq of the last envelope of a batch (0 for none).
pub(crate) fn last_seq_of(envelopes: &[Envelope]) -> u64 {
    envelopes.last().map_or(0, |e| e.seq)
}

impl StoreError {
    /// Whether the database could not be reached (down, or every pooled connection busy past
    /// the timeout): retryable, nothing was recorded.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // PostgreSQL's own words for "not now": a connection exception (class 08), an
            // operator intervention (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot
            // connect now), too many connections (53300), or a database that does not accept
            // connections (55000, as it says at connect time).
            Self::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|code| {
                code.starts_with("08")
                    || matches!(
                        code.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "55000"
                    )
            }),
            _ => false,
        }
    }
}

/// Publishes a batch of a call's events the moment they are numbered, while the store still
/// holds the call's seq authority ([`Store::append_call_events`]): no other batch of the same
/// call is numbered or published until it returns, whichever node ingests, so every subscriber
/// sees the call's events in seq order.
#[async_trait]
pub trait PublishInOrder: Send + Sync {
    /// # Errors
    /// Why the events could not be published; the append is then undone.
    async fn publish(&self, envelopes: &[Envelope]) -> std::result::Result<(), NotPublished>;

    /// The highest seq of the subject the bus is known to hold (0: none known). A cluster's
    /// store (PostgreSQL) numbers after it as well as after its own `last_seq`, so a batch that
    /// went out although its transaction failed, before the burn of its seqs landed, is never
    /// numbered over. (One node's SQLite store numbers alone; its bus holds nothing it did not.)
    fn seen_up_to(&self, _workspace: &WorkspaceId, _subject: &Subject) -> u64 {
        0
    }
}

/// How many times an append numbers its events again when the bus already held the seqs
/// ([`NotPublished::Taken`]): once is what the failure it answers needs.
pub(crate) const RENUMBERINGS: usize = 3;

/// Why a batch was not published ([`PublishInOrder::publish`]). Either way the append is
/// undone and its seqs are burnt, never handed out again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotPublished {
    /// The bus could not take it (down, or no acknowledgement in time).
    Failed(String),
    /// The bus already holds this subject's seqs up to `last`, from a batch the store never
    /// recorded: another node's batch that went out although its transaction failed, before
    /// the burn of its seqs landed. The store burns past `last` and numbers the events again.
    Taken { last: u64 },
}

impl NotPublished {
    /// The seq to burn up to, for a batch whose own last seq is `own`.
    pub fn burn_to(&self, own: u64) -> u64 {
        match self {
            Self::Failed(_) => own,
            Self::Taken { last } => own.max(*last),
        }
    }

    /// What an append answers once its transaction is undone and its seqs burnt: its events,
    /// to number again, when the bus held their seqs; the failure otherwise.
    pub(crate) fn undone<T>(self, envelopes: Vec<Envelope>) -> Result<Try<T>> {
        match self {
            Self::Taken { .. } => Ok(Err(envelopes.into_iter().map(NewEvent::from).collect())),
            Self::Failed(reason) => Err(StoreError::Publish(reason)),
        }
    }
}

/// One try of an append: what it appended, or its events back to number again
/// ([`NotPublished::Taken`]).
pub(crate) type Try<T> = std::result::Result<T, Vec<NewEvent>>;

/// Tries an append until it is not refused for seqs the bus held, numbering the same events
/// again each time, at most [`RENUMBERINGS`] times; `subject` names what for the error.
pub(crate) async fn renumbering<T, F, Fut>(
    events: Vec<NewEvent>,
    subject: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Vec<NewEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<Try<T>>>,
{
    let mut events = events;
    for _ in 0..RENUMBERINGS {
        match attempt(events).await? {
            Ok(done) => return Ok(done),
            Err(again) => events = again,
        }
    }
    Err(taken_too_often(subject))
}

/// The refusal of an append whose seqs the bus held [`RENUMBERINGS`] times over.
pub(crate) fn taken_too_often(subject: &str) -> StoreError {
    StoreError::Publish(format!(
        "the {subject}'s seqs were taken {RENUMBERINGS} times over"
    ))
}

impl From<String> for NotPublished {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

impl std::fmt::Display for NotPublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(reason) => f.write_str(reason),
            Self::Taken { last } => write!(
                f,
                "seqs up to {last} were already published by a batch the store never recorded"
            ),
        }
    }
}

/// Publishes nothing: for appends whose events are published some other way.
pub struct NoPublish;

#[async_trait]
impl PublishInOrder for NoPublish {
    async fn publish(&self, _: &[Envelope]) -> std::result::Result<(), NotPublished> {
        Ok(())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored key: what a presented secret resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub workspace_id: WorkspaceId,
    pub kind: KeyKind,
    pub key_hash: [u8; 32],
    /// The first characters of the secret (`pk_live_ab12…`), to tell keys apart in listings.
    pub hint: String,
    pub created_at: DateTime<Utc>,
    /// When it stops working, if it does.
    pub expires_at: Option<DateTime<Utc>>,
    /// An admin key may list, create and revoke its workspace's keys.
    pub admin: bool,
    /// When it was revoked; a revoked key is refused, and so is every token and session it
    /// minted.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// Whether the key works at `now`: not revoked, not expired.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// A stream token: a call-scoped, short-lived credential for browsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTokenRecord {
    pub token_hash: [u8; 32],
    pub workspace_id: WorkspaceId,
    pub call_id: CallId,
    pub key_id: KeyId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A browser session (`POST /v1/session`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: [u8; 32],
    pub workspace_id: WorkspaceId,
    pub key_id: KeyId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One event to append: everything but the `seq`, which the store assigns.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub timestamp: DateTime<Utc>,
    pub payload: Payload,
    /// The payload as the runtime sent it, carried verbatim ([`RawPayload`]).
    pub payload_json: Option<RawPayload>,
}

impl From<Envelope> for NewEvent {
    /// The event as it was before it was numbered (to number it again).
    fn from(envelope: Envelope) -> Self {
        Self {
            event_id: envelope.event_id,
            timestamp: envelope.timestamp,
            payload: envelope.payload,
            payload_json: envelope.payload_json,
        }
    }
}

impl NewEvent {
    pub fn new(timestamp: DateTime<Utc>, payload: Payload) -> Self {
        Self {
            event_id: EventId::new(),
            timestamp,
            payload,
            payload_json: None,
        }
    }

    /// An event from outside, whose payload's JSON is kept as it arrived.
    pub fn arrived(timestamp: DateTime<Utc>, payload: Payload, json: RawPayload) -> Self {
        Self {
            payload_json: Some(json),
            ..Self::new(timestamp, payload)
        }
    }

    /// The event numbered `seq` of `subject`, keeping the id it was given on arrival.
    ///
    /// # Errors
    /// When the payload's type does not belong to the subject's kind.
    pub fn into_envelope(
        self,
        workspace: &WorkspaceId,
        subject: Subject,
        seq: u64,
    ) -> Result<Envelope, EventError> {
        Ok(Envelope::with_id(
            self.event_id,
            workspace.clone(),
            subject,
            seq,
            self.timestamp,
            self.payload,
        )?
        .with_payload_json(self.payload_json))
    }
}

/// Which calls to list.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub status: Option<CallStatus>,
    /// Only calls that have ended (completed or failed).
    pub ended: bool,
    /// Calls that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Calls whose phone number contains these characters (`+` and digits only).
    pub phone: Option<String>,
    /// Calls listed after this one (newest first): the cursor of the next page.
    pub before: Option<CallId>,
    /// At most this many, newest first (ties in `started_at` by id, descending).
    pub limit: u32,
}

/// One final transcript turn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranscriptTurn {
    pub turn_id: TurnId,
    /// The seq of the final `call.transcription` event that recorded it.
    pub seq: u64,
    pub role: Role,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_end: Option<f64>,
    #[serde(with = "callstream_core::time::millis")]
    pub ts: DateTime<Utc>,
}

impl TranscriptTurn {
    /// The final turn a `call.transcription` event records, if it is final.
    pub fn from_event(seq: u64, ts: DateTime<Utc>, t: &Transcription) -> Option<Self> {
        t.is_final.then(|| Self {
            turn_id: t.turn_id.clone(),
            seq,
            role: t.role,
            text: t.text.clone(),
            confidence: t.confidence,
            segment_start: t.segment_start,
            segment_end: t.segment_end,
            ts,
        })
    }
}

/// One message of a conversation with its latest status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRecord {
    pub message_id: String,
    pub direction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `received`, `delivered`, `read`, … as the latest event said.
    pub status: String,
    /// The latest `message.*` payload for it, exactly as ingested (its JSON text).
    pub payload: RawPayload,
    #[serde(with = "callstream_core::time::millis")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "callstream_core::time::millis")]
    pub updated_at: DateTime<Utc>,
}

/// Which conversations to list.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub mode: Option<callstream_core::ConversationMode>,
    pub channel: Option<callstream_core::Channel>,
    pub limit: u32,
}

/// What a conversation append did.
#[derive(Debug, Clone)]
pub struct AppendedConversation {
    pub envelopes: Vec<Envelope>,
    pub conversation: Conversation,
}

/// A customer's webhook endpoint. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct WebhookEndpoint {
    pub id: String,
    pub workspace_id: WorkspaceId,
    pub url: String,
    /// `whsec_…`: never serialised in listings (see the route that mints it).
    #[serde(skip)]
    pub secret: String,
    /// `None` means every event type.
    pub event_types: Option<Vec<String>>,
    /// The workspace's own words for it (empty when none were given).
    pub description: String,
    #[serde(with = "callstream_core::time::millis")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "callstream_core::time::millis_opt")]
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// The secret a rotation replaced: it keeps signing beside the new one until
    /// `previous_secret_until`. Never serialised.
    #[serde(skip)]
    pub previous_secret: Option<String>,
    #[serde(
        rename = "previous_secret_expires_at",
        with = "callstream_core::time::millis_opt"
    )]
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Since when every attempt to it has failed; `None` after a delivery.
    #[serde(with = "callstream_core::time::millis_opt")]
    pub failing_since: Option<DateTime<Utc>>,
}

/// What `PATCH /v1/webhook-endpoints/{id}` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointChange {
    pub url: Option<String>,
    /// `Some(None)`: every event type again.
    pub event_types: Option<Option<Vec<String>>>,
    pub description: Option<String>,
    /// `Some(true)` enables (clearing the reason it was disabled for), `Some(false)` disables
    /// with `disabled_reason`.
    pub enabled: Option<bool>,
    pub disabled_reason: Option<String>,
    /// A new secret, the old one signing beside it until this time.
    pub rotate: Option<(String, DateTime<Utc>)>,
}

/// What one delivery attempt did, beside its outcome: for the endpoint's delivery log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptLog {
    /// From sending the request to the answer's head (or the failure).
    pub latency_ms: u64,
    /// `timeout`, `connect`, `http_status`, `target_refused`, `other`; `None` when delivered.
    pub error_kind: Option<String>,
    /// The first bytes of the answer's body (at most a kilobyte, as text).
    pub response_body: String,
}

/// One finished attempt, to record: the delivery as claimed, when it ended, what comes next, and
/// what the delivery log keeps of it.
#[derive(Debug, Clone, Copy)]
pub struct Attempted<'a> {
    pub delivery: &'a Delivery,
    pub at: DateTime<Utc>,
    pub result: &'a DeliveryResult,
    pub log: &'a AttemptLog,
}

/// One attempt in an endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookAttempt {
    #[serde(with = "callstream_core::time::millis")]
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub latency_ms: u64,
    pub error_kind: Option<String>,
    pub response_body: String,
}

/// Where a webhook message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Not attempted yet.
    Pending,
    /// Attempted, not delivered, and still to be retried.
    Failing,
    Delivered,
    /// Given up: its 24 hours ran out, its target was refused, or its endpoint answered 410.
    Exhausted,
}

impl MessageState {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Failing,
        Self::Delivered,
        Self::Exhausted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Failing => "failing",
            Self::Delivered => "delivered",
            Self::Exhausted => "exhausted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The outbox rows in this state, as an SQL condition (the same on both stores).
    pub const fn condition(self) -> &'static str {
        match self {
            Self::Pending => "status = 'pending' AND attempts = 0",
            Self::Failing => "status = 'pending' AND attempts > 0",
            Self::Delivered => "status = 'delivered'",
            Self::Exhausted => "status = 'abandoned'",
        }
    }

    fn of(status: &str, attempts: u32) -> Self {
        match status {
            "delivered" => Self::Delivered,
            "abandoned" => Self::Exhausted,
            _ if attempts == 0 => Self::Pending,
            _ => Self::Failing,
        }
    }
}

/// One message of an endpoint: an event queued for it, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookMessage {
    /// Where the next page starts (`?cursor=`).
    #[serde(skip)]
    pub cursor: i64,
    /// Sent as `webhook-id`.
    pub event_id: String,
    pub event_type: String,
    pub state: MessageState,
    pub attempts: u32,
    #[serde(with = "callstream_core::time::millis")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "callstream_core::time::millis_opt")]
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// When it is tried next (pending and failing messages only).
    #[serde(with = "callstream_core::time::millis_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
}

impl WebhookMessage {
    /// Builds one from an outbox row's columns.
    #[allow(clippy::too_many_arguments)]
    pub fn from_columns(
        cursor: i64,
        event_id: String,
        event_type: String,
        status: &str,
        attempts: u32,
        created_at: DateTime<Utc>,
        first_attempt_at: Option<DateTime<Utc>>,
        next_attempt_at: DateTime<Utc>,
        last_status_code: Option<u16>,
        last_error: Option<String>,
    ) -> Self {
        let state = MessageState::of(status, attempts);
        Self {
            cursor,
            event_id,
            event_type,
            state,
            attempts,
            created_at,
            first_attempt_at,
            next_attempt_at: matches!(state, MessageState::Pending | MessageState::Failing)
                .then_some(next_attempt_at),
            last_status_code,
            last_error,
        }
    }
}

/// Which messages of an endpoint to list: newest first, `limit` of them, older than `before`
/// (a cursor) if given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageFilter {
    pub state: Option<MessageState>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// What [`Store::due_deliveries_except`] leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skip {
    /// Webhook endpoint ids.
    pub endpoints: Vec<String>,
    /// Workspaces (their webhooks and status callbacks).
    pub workspaces: Vec<WorkspaceId>,
}

/// Which messages [`Store::requeue_webhook_messages`] sends again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requeue {
    /// One message, by its event id.
    One(String),
    /// Every message queued at or after this time.
    Since(DateTime<Utc>),
}

/// Where a queued delivery goes, and so how it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryTarget {
    /// A webhook endpoint: `POST` of the canonical envelope JSON, signed with the endpoint's
    /// secret.
    Endpoint(String),
    /// A status callback URL: form fields, in the query for `GET` or as the body for `POST`,
    /// signed with the workspace's signing secret.
    Callback(CallbackMethod),
}

/// The HTTP method a status callback is sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackMethod {
    Get,
    Post,
}

impl CallbackMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }

    /// `GET` or `POST`, in any case.
    pub fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("GET") {
            Some(Self::Get)
        } else if text.eq_ignore_ascii_case("POST") {
            Some(Self::Post)
        } else {
            None
        }
    }
}

/// One queued delivery. `Debug` leaves the secret and payload out.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    pub workspace_id: WorkspaceId,
    pub target: DeliveryTarget,
    /// The message's id, sent as `webhook-id`: the event id for a webhook, `msg_…` for a
    /// callback.
    pub event_id: String,
    pub url: String,
    pub secret: String,
    /// An endpoint's secret from before a rotation, while it still signs (empty otherwise).
    pub previous_secret: Option<String>,
    /// The canonical envelope JSON (webhooks) or the form-encoded fields (callbacks).
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub first_attempt_at: Option<DateTime<Utc>>,
    /// The lease this claim holds the message with (its `next_attempt_at` while in flight).
    /// The attempt's outcome changes the message only while the message still holds it: a
    /// retry or replay asked for during the attempt, or a claim by another worker after the
    /// lease ran out, is not undone when this attempt finishes.
    pub lease_until: DateTime<Utc>,
}

/// A status callback to queue (seed 004's `StartStream`, `PlayedStream`, …).
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackMessage {
    /// `msg_…`, unique: the receiver de-duplicates retries by it (`webhook-id`).
    pub id: String,
    pub workspace_id: WorkspaceId,
    pub url: String,
    pub method: CallbackMethod,
    /// `application/x-www-form-urlencoded` fields.
    pub body: String,
    /// What it reports, e.g. `StartStream`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for CallbackMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackMessage")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// An audio stream (seed 004) as stored: what it was created with, and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStreamRecord {
    /// A UUID.
    pub stream_id: String,
    pub workspace_id: WorkspaceId,
    pub call_id: CallId,
    pub service_url: String,
    pub audio_track: AudioTrack,
    pub bidirectional: bool,
    /// The canonical content type, e.g. `audio/x-l16;rate=8000`.
    pub content_type: String,
    /// L16 payloads in network byte order instead of the stream's default little-endian.
    pub l16_big_endian: bool,
    pub stream_timeout_secs: u64,
    pub status_callback_url: Option<String>,
    pub status_callback_method: CallbackMethod,
    /// `k1=v1;k2=v2`, or empty.
    pub extra_headers: String,
    pub status: StreamStatus,
    pub created_at: DateTime<Utc>,
    /// When the service first accepted the connection.
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// Why it ended, in words (`call ended`, `service unreachable: …`).
    pub end_reason: Option<String>,
}

impl std::fmt::Debug for WebhookEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("url", &self.url)
            .field("secret", &"whsec_<redacted>")
            .field("event_types", &self.event_types)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("target", &self.target)
            .field("event_id", &self.event_id)
            .field("url", &self.url)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    Delivered {
        status: u16,
    },
    RetryAt {
        at: DateTime<Utc>,
        status: Option<u16>,
        error: String,
    },
    Abandon {
        status: Option<u16>,
        error: String,
    },
    /// The endpoint answered 410 Gone: disable it and drop what is queued for it.
    DisableEndpoint {
        status: u16,
    },
}

/// What an append did.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The events with their seqs, in order, ready to publish.
    pub envelopes: Vec<Envelope>,
    /// The call after the append (status changed if a terminal event was among them).
    pub call: Call,
    /// Whether the append queued webhook deliveries: the caller wakes the webhook workers only
    /// then (on a cluster every wake is a NATS message and an outbox claim at every node).
    pub webhooks_queued: bool,
}

/// callstream's durable state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Returns the workspace with this name, creating it on first use.
    async fn ensure_workspace(&self, name: &str) -> Result<Workspace>;

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>>;

    async fn insert_key(&self, key: &KeyRecord) -> Result<()>;

    /// The key whose secret hashes to `hash`, revoked or not.
    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>>;

    async fn insert_stream_token(&self, token: &StreamTokenRecord) -> Result<()>;

    /// The stream token whose secret hashes to `hash`, if its key is not revoked (expiry is the
    /// caller's to check, against its own clock).
    async fn stream_token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<StreamTokenRecord>>;

    async fn insert_session(&self, session: &SessionRecord) -> Result<()>;

    /// The session whose token hashes to `hash`, if its key is not revoked (expiry is the
    /// caller's to check).
    async fn session_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>>;

    async fn delete_session(&self, hash: &[u8; 32]) -> Result<()>;

    /// Records a new call. Its `last_seq` must be 0; events follow through
    /// [`Store::append_call_events`].
    async fn create_call(&self, call: &Call) -> Result<()>;

    async fn call(&self, workspace: &WorkspaceId, id: &CallId) -> Result<Option<Call>>;

    async fn calls(&self, workspace: &WorkspaceId, filter: &CallFilter) -> Result<Vec<Call>>;

    /// An ended call's terminal event as the native WebSocket carried it (the canonical envelope
    /// JSON): what a client that connects after the end is sent. `None` for a live, unknown or
    /// foreign call, and for one that ended before this was recorded.
    async fn call_end_event(&self, workspace: &WorkspaceId, id: &CallId)
    -> Result<Option<Vec<u8>>>;

    /// The workspace's call whose live conversation token this is.
    async fn call_by_live_token(
        &self,
        workspace: &WorkspaceId,
        token: &str,
    ) -> Result<Option<Call>>;

    /// The workspace's most recent call with this `external_id` (e.g. a Twilio Call SID).
    async fn call_by_external_id(
        &self,
        workspace: &WorkspaceId,
        external_id: &str,
    ) -> Result<Option<Call>>;

    /// Assigns the next seqs of the call to `events`, records final transcript turns, ends the
    /// call if the last event is terminal, queues webhook outbox rows, and hands the numbered
    /// events to `publish` before it commits, all while holding the call's seq authority: the
    /// way several nodes ingest for one call and every subscriber still gets one contiguous,
    /// ordered sequence. (One node alone may number from blocks instead,
    /// [`Store::reserve_call_seqs`].)
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown call or one of another workspace,
    /// [`StoreError::CallEnded`] once the call has ended, [`StoreError::Invalid`] when a terminal
    /// event is not last or a payload belongs to conversations, [`StoreError::Publish`] when
    /// `publish` failed (nothing was recorded).
    async fn append_call_events(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<Appended>;

    /// [`Store::append_call_events`] for several calls of one workspace at once, in one
    /// transaction (a group commit): each call's batch is numbered after its own `last_seq` and
    /// handed to its own publisher (`publish[i]` for `batches[i]`) before the commit. One result
    /// per batch, in order: a batch that would be refused on its own (an unknown or ended call,
    /// a malformed batch) is refused alone, the others go on. The calls must be distinct. The
    /// default appends them one by one.
    ///
    /// A failed publish fails its batch (nothing of it recorded, its seqs never handed out
    /// again); PostgreSQL, which appends the group in one transaction, then fails every batch
    /// of the group alike.
    ///
    /// # Errors
    /// When the store cannot be asked.
    async fn append_calls_events(
        &self,
        workspace: &WorkspaceId,
        batches: Vec<(CallId, Vec<NewEvent>)>,
        publish: &[&dyn PublishInOrder],
    ) -> Result<Vec<Result<Appended>>> {
        let mut out = Vec::with_capacity(batches.len());
        let mut seen = std::collections::HashSet::new();
        for ((call, events), publish) in batches.into_iter().zip(publish) {
            if !seen.insert(call.clone()) {
                out.push(Err(StoreError::Invalid(
                    "a call appears twice in one group".into(),
                )));
                continue;
            }
            out.push(
                self.append_call_events(workspace, &call, events, *publish)
                    .await,
            );
        }
        Ok(out)
    }

    /// Reserves the next `block` seqs of an in-progress call (hi/lo allocation): the store stays
    /// the one authority, and a node may then number that many events without asking again.
    /// Returns the call and the last reserved seq; the block is `end - block + 1 ..= end`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], or [`StoreError::CallEnded`] once the call has ended.
    async fn reserve_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        block: u64,
    ) -> Result<(Call, u64)>;

    /// Records what must outlive the process for events whose seqs were reserved: final turns,
    /// the call's end (status, time, and its last seq), and webhook outbox rows, in one
    /// transaction. Returns the call when the batch ended it.
    async fn record_call_events(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        envelopes: &[Envelope],
    ) -> Result<Option<Call>>;

    /// Gives back the unused end of a reservation: sets the call's last seq to `used` if it is
    /// still `reserved_end` (nobody reserved after us).
    async fn settle_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        reserved_end: u64,
        used: u64,
    ) -> Result<()>;

    /// Whether the workspace has any enabled webhook endpoint (so events need outbox rows).
    async fn has_webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<bool>;

    /// The call's final transcript turns in the order they were spoken (by seq).
    async fn transcript(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Result<Vec<TranscriptTurn>>;

    async fn create_conversation(&self, conversation: &Conversation) -> Result<()>;

    async fn conversation(
        &self,
        workspace: &WorkspaceId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>>;

    async fn conversations(
        &self,
        workspace: &WorkspaceId,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>>;

    /// Assigns the conversation's next seqs to `events`, records messages and mode changes, in
    /// one transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or foreign conversation; [`StoreError::Invalid`]
    /// for call events or a mode change whose `from_mode` is not the current mode.
    async fn append_conversation_events(
        &self,
        workspace: &WorkspaceId,
        conversation: &ConversationId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<AppendedConversation>;

    /// The conversation's messages, oldest first.
    async fn messages(
        &self,
        workspace: &WorkspaceId,
        conversation: &ConversationId,
    ) -> Result<Vec<MessageRecord>>;

    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<()>;

    async fn webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<Vec<WebhookEndpoint>>;

    /// One endpoint of the workspace.
    async fn webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>>;

    /// Changes an endpoint at `at` and returns it as it is now; `None` if the workspace has no
    /// such one. A disabled endpoint's queued deliveries wait (they are not claimed) until it is
    /// enabled again; a rotation moves the current secret to `previous_secret`.
    async fn change_webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
        change: &EndpointChange,
        at: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>>;

    /// Deletes an endpoint and what is queued for it; `false` if the workspace has no such one.
    async fn delete_webhook_endpoint(&self, workspace: &WorkspaceId, id: &str) -> Result<bool>;

    /// Deliveries due at `now`, oldest first, at most `limit`, each claimed until `lease_until`
    /// so that no other worker takes it meanwhile.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        self.due_deliveries_except(now, lease_until, limit, &Skip::default())
            .await
    }

    /// [`Store::due_deliveries`], leaving out the endpoints and workspaces in `skip` (those a
    /// worker already has as many requests in flight to as it allows).
    async fn due_deliveries_except(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        skip: &Skip,
    ) -> Result<Vec<Delivery>>;

    /// Gives claimed deliveries back unattempted, due at `at` (a worker took more than it may
    /// send at once).
    async fn release_deliveries(&self, deliveries: &[Delivery], at: DateTime<Utc>) -> Result<()>;

    /// Records an attempt's outcome, and for a webhook endpoint the attempt in its log.
    async fn record_delivery(
        &self,
        delivery: &Delivery,
        at: DateTime<Utc>,
        result: &DeliveryResult,
        log: &AttemptLog,
    ) -> Result<()> {
        self.record_deliveries(&[Attempted {
            delivery,
            at,
            result,
            log,
        }])
        .await
    }

    /// Records several attempts' outcomes in one transaction: all of them or none. The worker
    /// records what finished while its previous write was committing, so that deliveries per
    /// second are not bound by one durable commit each.
    async fn record_deliveries(&self, attempts: &[Attempted<'_>]) -> Result<()>;

    /// An endpoint's messages; `None` if the workspace has no such endpoint.
    async fn webhook_messages(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        filter: &MessageFilter,
    ) -> Result<Option<Vec<WebhookMessage>>>;

    /// Sends messages of an endpoint again from `at`, as new attempts with their same ids: one
    /// message, or every message queued at or after a time, whatever its state. Each starts a
    /// new retry schedule; its earlier attempts stay in its log. How many; `None` if the
    /// workspace has no such endpoint (or, for one message, the endpoint no such message).
    async fn requeue_webhook_messages(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        which: &Requeue,
        at: DateTime<Utc>,
    ) -> Result<Option<u64>>;

    /// Queues a message the gateway makes about its webhooks (`webhook.delivery_exhausted`) for
    /// every enabled endpoint of the workspace, but `except`, that names `event_type` in its
    /// `event_types` (an endpoint that takes every type does not get these). `body` is the
    /// message's JSON, `event_id` its `webhook-id`. How many endpoints it was queued for.
    async fn queue_webhook_notice(
        &self,
        workspace: &WorkspaceId,
        except: &str,
        event_type: &str,
        event_id: &str,
        body: &[u8],
        at: DateTime<Utc>,
    ) -> Result<u32>;

    /// Deletes delivered and given-up webhook messages (with their delivery logs) and status
    /// callbacks queued before `before`, in every workspace; how many messages went.
    async fn prune_webhook_messages(&self, before: DateTime<Utc>) -> Result<u64>;

    /// One message's attempts, oldest first; `None` if the endpoint has no such message.
    async fn webhook_attempts(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        event_id: &str,
    ) -> Result<Option<Vec<WebhookAttempt>>>;

    /// Records a new audio stream of an in-progress call, unless the call already has an active
    /// stream to the same URL.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or foreign call, [`StoreError::CallEnded`] once it
    /// has ended, [`StoreError::Invalid`] (naming `service_url`) for a second active stream to
    /// one URL.
    async fn create_audio_stream(&self, stream: &AudioStreamRecord) -> Result<()>;

    async fn audio_stream(
        &self,
        workspace: &WorkspaceId,
        stream_id: &str,
    ) -> Result<Option<AudioStreamRecord>>;

    /// A call's streams, oldest first, `limit` from `offset`, and how many there are in all.
    async fn audio_streams(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AudioStreamRecord>, u64)>;

    /// A call's streams that are still active.
    async fn active_call_audio_streams(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Result<Vec<AudioStreamRecord>>;

    /// Every stream that is still active, in any workspace (for a gateway starting up).
    async fn active_audio_streams(&self) -> Result<Vec<AudioStreamRecord>>;

    /// Moves an active stream to `status` at `at`: `in-progress` sets its start time (once);
    /// `stopped` and `dropped` end it with `reason`. Returns `false` when the stream had already
    /// ended, so that exactly one ending is reported.
    async fn set_audio_stream_status(
        &self,
        workspace: &WorkspaceId,
        stream_id: &str,
        status: StreamStatus,
        at: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<bool>;

    /// Queues a status callback for delivery on the webhook retry schedule.
    async fn queue_callback(&self, message: &CallbackMessage) -> Result<()>;

    /// The workspace's signing secret for status callbacks: the stored one, or `candidate`,
    /// stored now, when it has none yet.
    async fn signing_secret(&self, workspace: &WorkspaceId, candidate: &str) -> Result<String>;

    /// Counts of outbox rows by status (`pending`, `delivered`, `abandoned`), for metrics.
    async fn outbox_counts(&self) -> Result<Vec<(String, u64)>>;

    /// Takes one of `max` places on `call`'s connections of `kind` for `holder` (a connection's
    /// unique id) until `until`, unless `max` unexpired places are held already (`false`). The
    /// holder renews its lease while it lives ([`Store::renew_place`]) and gives the place back
    /// when it ends ([`Store::release_place`]); a holder that vanished gives it back when its
    /// lease runs out. Concurrent takers of one call's places never exceed `max` together.
    #[allow(clippy::too_many_arguments)]
    async fn take_place(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        kind: &str,
        max: u32,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Extends `holder`'s lease to `until`; `false` when it no longer holds a place (it
    /// expired and may have been taken).
    async fn renew_place(
        &self,
        workspace: &WorkspaceId,
        holder: &str,
        until: DateTime<Utc>,
    ) -> Result<bool>;

    /// Gives `holder`'s place back.
    async fn release_place(&self, workspace: &WorkspaceId, holder: &str) -> Result<()>;

    /// Records when live calls last had an event (each `(workspace, call, at)`); ended calls
    /// are left alone. Nodes call it every few seconds with what they ingested since.
    async fn touch_calls(&self, touched: &[(WorkspaceId, CallId, DateTime<Utc>)]) -> Result<()>;

    /// Live calls of every workspace whose last recorded event (or start, if none was
    /// recorded) is older than `before`: at most `limit`, the longest idle first.
    async fn stale_calls(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(WorkspaceId, CallId)>>;

    /// A workspace's keys, newest first (hashes included; never shown to anyone).
    async fn keys(&self, workspace: &WorkspaceId) -> Result<Vec<KeyRecord>>;

    /// Revokes a key of `workspace` at `at`; `false` for an unknown or foreign key. Revoking
    /// again keeps the first time.
    async fn revoke_key(
        &self,
        workspace: &WorkspaceId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<bool>;

    /// Keys of every workspace revoked at or after `since`.
    async fn keys_revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<KeyId>>;

    /// The workspace with this name, if there is one.
    async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>>;

    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;
}

/// Checks a batch before any seq is assigned: only call events, and a terminal event only last.
pub fn check_call_batch(events: &[NewEvent]) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        let ty = e.payload.event_type();
        if !ty.fits(callstream_core::event::SubjectKind::Call) {
            return Err(StoreError::Invalid(format!(
                "events[{i}].event_type: {ty} is not a call event"
            )));
        }
        if e.payload.is_terminal() && i + 1 != events.len() {
            return Err(StoreError::Invalid(format!(
                "events[{i}]: {ty} ends the call, so it must be the last event of the batch"
            )));
        }
    }
    Ok(())
}
