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

mod sqlite;

use async_trait::async_trait;
use callstream_core::event::{Role, Transcription};
use callstream_core::id::KeyId;
use callstream_core::{
    Call, CallId, CallStatus, Conversation, ConversationId, Envelope, EventError, EventId, KeyKind,
    Payload, Subject, TurnId, Workspace, WorkspaceId,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use sqlite::SqliteStore;

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
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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
    pub revoked: bool,
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
}

impl NewEvent {
    pub fn new(timestamp: DateTime<Utc>, payload: Payload) -> Self {
        Self {
            event_id: EventId::new(),
            timestamp,
            payload,
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
        Envelope::with_id(
            self.event_id,
            workspace.clone(),
            subject,
            seq,
            self.timestamp,
            self.payload,
        )
    }
}

/// Which calls to list.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub status: Option<CallStatus>,
    /// Calls that started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
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
    /// The latest `message.*` payload for it, exactly as ingested.
    pub payload: serde_json::Value,
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
    #[serde(with = "callstream_core::time::millis")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "callstream_core::time::millis_opt")]
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
}

/// One queued delivery. `Debug` leaves the secret and payload out.
#[derive(Clone, PartialEq, Eq)]
pub struct Delivery {
    pub endpoint_id: String,
    pub event_id: String,
    pub url: String,
    pub secret: String,
    /// The canonical envelope JSON.
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub first_attempt_at: Option<DateTime<Utc>>,
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
            .field("endpoint_id", &self.endpoint_id)
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

    /// Assigns the next seqs of the call to `events`, records final transcript turns, and ends the
    /// call if the last event is terminal — all in one transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown call or one of another workspace,
    /// [`StoreError::CallEnded`] once the call has ended, [`StoreError::Invalid`] when a terminal
    /// event is not last or a payload belongs to conversations.
    async fn append_call_events(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        events: Vec<NewEvent>,
    ) -> Result<Appended>;

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
    async fn settle_call_seqs(&self, call: &CallId, reserved_end: u64, used: u64) -> Result<()>;

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
    ) -> Result<AppendedConversation>;

    /// The conversation's messages, oldest first.
    async fn messages(
        &self,
        workspace: &WorkspaceId,
        conversation: &ConversationId,
    ) -> Result<Vec<MessageRecord>>;

    async fn create_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> Result<()>;

    async fn webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<Vec<WebhookEndpoint>>;

    /// Deletes an endpoint and what is queued for it; `false` if the workspace has no such one.
    async fn delete_webhook_endpoint(&self, workspace: &WorkspaceId, id: &str) -> Result<bool>;

    /// Deliveries due at `now`, oldest first, at most `limit`, each claimed until `lease_until`
    /// so that no other worker takes it meanwhile.
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>>;

    /// Records an attempt's outcome.
    async fn record_delivery(
        &self,
        delivery: &Delivery,
        at: DateTime<Utc>,
        result: &DeliveryResult,
    ) -> Result<()>;

    /// Counts of outbox rows by status (`pending`, `delivered`, `abandoned`), for metrics.
    async fn outbox_counts(&self) -> Result<Vec<(String, u64)>>;

    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;
}

/// Checks a batch before any seq is assigned: only call events, and a terminal event only last.
pub fn check_call_batch(events: &[NewEvent]) -> Result<()> {
    for (i, e) in events.iter().enumerate() {
        let ty = e.payload.event_type();
        if ty.subject_kind() != callstream_core::event::SubjectKind::Call {
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
