//! The scale-out store: PostgreSQL, shared by every gateway node, with row-level security per
//! workspace.
//!
//! The gateway connects as `callstream_app`, a role that owns nothing and cannot bypass RLS.
//! Every operation on a workspace's data runs in a transaction that first sets
//! `app.workspace_id` (`set_config(…, true)`: for that transaction only, so a pooled connection
//! never carries it to the next user); the policies (`migrations/postgres`) then let it see and
//! write that workspace's rows and nothing else. The few questions that must be answered before
//! a workspace is known (a key by its hash) or across workspaces (the outboxes' due rows, the
//! streams to resume at start-up) are `SECURITY DEFINER` functions owned by the owner role, each
//! answering exactly that.
//!
//! Migrations run separately, as the owner role ([`PgStore::migrate`], `callstream migrate`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use callstream_core::audio::{AudioTrack, StreamStatus};
use callstream_core::event::Role;
use callstream_core::id::KeyId;
use callstream_core::{
    Call, CallId, CallStatus, Channel, Conversation, ConversationId, ConversationMode, Direction,
    Envelope, KeyKind, Payload, Phone, Screening, Subject, Transport, Workspace, WorkspaceId, time,
};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::{
    Appended, AppendedConversation, Attempted, AudioStreamRecord, CallFilter, CallbackMessage,
    CallbackMethod, ConversationFilter, Delivery, DeliveryResult, DeliveryTarget, EndpointChange,
    KeyRecord, MessageFilter, MessageRecord, MessageState, NewEvent, NotPublished, PublishInOrder,
    RENUMBERINGS, Requeue, Result, SessionRecord, Skip, Store, StoreError, StreamTokenRecord,
    TranscriptTurn, WebhookAttempt, WebhookEndpoint, WebhookMessage, check_call_batch, last_seq_of,
    renumbering,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Burns that could not be written (the database was away): applied to this node's next
    /// numbering of their call or conversation, and retried until the database takes them.
    unburnt: Arc<Unburnt>,
}

/// Seqs handed to a batch that may have gone out (published, or a publish that may still land)
/// while its transaction failed, and whose burn failed too, because the database was away then
/// (lost between the publish and the commit). Without them the next batch would take the same
/// seqs and every node would drop it as already seen. Until a burn lands, this node numbers
/// after them (`GREATEST(last_seq, floor)` in the numbering `UPDATE`), and a task retries the
/// burns every [`BURN_RETRY`]; another node may number from the database's word only in the
/// moments between the database's return and the retry (docs/operations.md, failure modes).
#[derive(Default)]
struct Unburnt {
    floors: std::sync::Mutex<Floors>,
}

#[derive(Default)]
struct Floors {
    /// (table, id) to the workspace and the last seq that went out.
    pending: HashMap<(&'static str, String), (WorkspaceId, u64)>,
    /// Whether a task is retrying them.
    retrying: bool,
}

/// How often a burn that failed is tried again.
const BURN_RETRY: Duration = Duration::from_secs(1);

impl Unburnt {
    fn lock(&self) -> std::sync::MutexGuard<'_, Floors> {
        self.floors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The seq a new batch of `id` must be numbered after, at least (0: none pending).
    fn floor(&self, table: &'static str, id: &str) -> u64 {
        let floors = self.lock();
        if floors.pending.is_empty() {
            return 0;
        }
        floors
            .pending
            .get(&(table, id.to_owned()))
            .map_or(0, |(_, last)| *last)
    }

    /// Forgets a floor the database now holds (a commit or a burn put `upto` or more there).
    fn settled(&self, table: &'static str, id: &str, upto: u64) {
        let mut floors = self.lock();
        let key = (table, id.to_owned());
        if floors
            .pending
            .get(&key)
            .is_some_and(|(_, last)| *last <= upto)
        {
            floors.pending.remove(&key);
        }
    }

    /// Keeps a burn that failed; starts the retrying task if none runs.
    fn keep(
        self: &Arc<Self>,
        pool: &PgPool,
        table: &'static str,
        workspace: &WorkspaceId,
        id: &str,
        last: u64,
    ) {
        let mut floors = self.lock();
        let entry = floors
            .pending
            .entry((table, id.to_owned()))
            .or_insert_with(|| (workspace.clone(), last));
        entry.1 = entry.1.max(last);
        if !floors.retrying {
            floors.retrying = true;
            tokio::spawn(retry_burns(pool.clone(), Arc::downgrade(self)));
        }
    }
}

/// Tries the kept burns every [`BURN_RETRY`] until none is left (or the store is gone).
async fn retry_burns(pool: PgPool, unburnt: std::sync::Weak<Unburnt>) {
    loop {
        tokio::time::sleep(BURN_RETRY).await;
        let Some(unburnt) = unburnt.upgrade() else {
            return;
        };
        let pending: Vec<_> = {
            let mut floors = unburnt.lock();
            if floors.pending.is_empty() {
                floors.retrying = false;
                return;
            }
            floors
                .pending
                .iter()
                .map(|((table, id), (workspace, last))| {
                    (*table, id.clone(), workspace.clone(), *last)
                })
                .collect()
        };
        for (table, id, workspace, last) in pending {
            if burn_on(&pool, table, &workspace, &id, last).await.is_ok() {
                unburnt.settled(table, &id, last);
            }
        }
    }
}

impl PgStore {
    /// Connects as the gateway's role. The schema must exist ([`PgStore::migrate`]).
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            // A connection that was in use within the last second is handed out as it is; one
            // idle longer is pinged first (and replaced if the server went away meanwhile).
            // Pinging every one, sqlx's default, put a round trip in front of every
            // transaction: at 20,000 events/s it was a tenth of the cluster's ingest latency
            // (docs/benchmarks.md, "Several nodes").
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > IDLE_BEFORE_PING {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            // Every statement is planned for its parameters, each time. PostgreSQL otherwise
            // settles on one generic plan per prepared statement after five runs and keeps it
            // for the connection's life: planned while a workspace had a few calls, a lookup by
            // id went on an index of `workspace_id` and read every call of the workspace once it
            // had thousands (2.2 ms a lookup; the wide benchmark's 16,000 streams held PostgreSQL
            // at 1.4 cores opening). The planning costs some tens of microseconds a statement.
            .connect_with(
                options
                    .application_name("callstream")
                    .options([("plan_cache_mode", "force_custom_plan")]),
            )
            .await?;
        // Row-level security is what keeps workspaces apart here: a role that bypasses it
        // would serve every tenant's rows to every request.
        let (superuser, bypass): (bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&pool)
        .await?;
        if superuser || bypass {
            pool.close().await;
            return Err(StoreError::Invalid(
                "the database role is a superuser or has BYPASSRLS, so row-level security \
                 would not keep workspaces apart: connect as the gateway's own role \
                 (callstream_app, docs/operations.md)"
                    .into(),
            ));
        }
        Ok(Self {
            pool,
            unburnt: Arc::default(),
        })
    }

    /// Runs the pending migrations, connected as the owner role.
    ///
    /// # Errors
    /// When the database cannot be reached or a migration fails.
    pub async fn migrate(owner_url: &str) -> Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(owner_url)
            .await?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    /// A transaction scoped to `workspace`: row-level security shows and accepts its rows only.
    /// `BEGIN` and the setting go in one round trip (one simple query of two statements); a
    /// workspace id is ASCII letters, digits, `_` and `-` only, so it is safe as a literal there,
    /// and anything else is bound as a parameter in a second round trip instead.
    async fn scoped(&self, workspace: &WorkspaceId) -> Result<Transaction<'static, Postgres>> {
        scoped_on(&self.pool, workspace).await
    }
}

/// A transaction on `pool` scoped to `workspace` ([`PgStore::scoped`]).
async fn scoped_on(
    pool: &PgPool,
    workspace: &WorkspaceId,
) -> Result<Transaction<'static, Postgres>> {
    let id = workspace.as_str();
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Ok(pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT set_config('app.workspace_id', '{id}', true)"
            )))
            .await?);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.workspace_id', $1, true)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The endpoint an attempt was for (`None` for a status callback).
fn endpoint_of<'a>(attempt: &Attempted<'a>) -> Option<&'a str> {
    match &attempt.delivery.target {
        DeliveryTarget::Endpoint(id) => Some(id),
        DeliveryTarget::Callback(_) => None,
    }
}

/// How long a pooled connection may have been idle before it is pinged on its way out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// A group commit's batches, by call id: each with its place among the caller's batches.
type Group = std::collections::BTreeMap<String, (usize, Vec<NewEvent>)>;

fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {value}"))
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether `workspace` has the webhook endpoint `id`.
async fn has_endpoint(
    conn: &mut sqlx::PgConnection,
    workspace: &WorkspaceId,
    id: &str,
) -> Result<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2")
            .bind(workspace.as_str())
            .bind(id)
            .fetch_optional(conn)
            .await?
            .is_some(),
    )
}

/// The columns [`endpoint_from_row`] reads.
const ENDPOINT_COLUMNS: &str = "id, workspace_id, url, secret, event_types, description, created_at, \
     disabled_at, disabled_reason, previous_secret, previous_secret_until, failing_since";

fn endpoint_from_row(row: &PgRow) -> Result<WebhookEndpoint> {
    let types: Option<String> = row.try_get("event_types")?;
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        workspace_id: workspace_id(row, "workspace_id")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        event_types: types
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt("event types", e))?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
        disabled_reason: row.try_get("disabled_reason")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: row.try_get("previous_secret_until")?,
        failing_since: row.try_get("failing_since")?,
    })
}

fn workspace_id(row: &PgRow, column: &str) -> Result<WorkspaceId> {
    WorkspaceId::parse(row.try_get::<&str, _>(column)?).map_err(|e| corrupt("workspace id", e))
}

fn hash32(bytes: Vec<u8>, what: &str) -> Result<[u8; 32]> {
    bytes.try_into().map_err(|_| corrupt(what, "not 32 bytes"))
}

fn workspace_row(row: &PgRow) -> Result<Workspace> {
    Ok(Workspace {
        id: workspace_id(row, "id")?,
        name: row.try_get("name")?,
        auth_id: row.try_get("auth_id")?,
        created_at: row.try_get("created_at")?,
    })
}

fn key_row(row: &PgRow) -> Result<KeyRecord> {
    let kind: &str = row.try_get("kind")?;
    Ok(KeyRecord {
        id: KeyId::parse(row.try_get::<&str, _>("id")?).map_err(|e| corrupt("key id", e))?,
        workspace_id: workspace_id(row, "workspace_id")?,
        kind: KeyKind::parse(kind).ok_or_else(|| corrupt("key kind", kind))?,
        key_hash: hash32(row.try_get("key_hash")?, "key hash")?,
        hint: row.try_get("hint")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        admin: row.try_get("admin")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// The calls columns `call_row` reads (a macro: sqlx takes only static SQL).
macro_rules! call_columns {
    () => {
        "id, workspace_id, phone, direction, transport, external_id, status, \
         live_conversation_token, started_at, ended_at, end_reason, last_seq, screening_ended_at, \
         screening_msg"
    };
}

fn call_row(row: &PgRow) -> Result<Call> {
    let direction: &str = row.try_get("direction")?;
    let transport: &str = row.try_get("transport")?;
    let status: &str = row.try_get("status")?;
    Ok(Call {
        id: CallId::parse(row.try_get::<&str, _>("id")?).map_err(|e| corrupt("call id", e))?,
        workspace_id: workspace_id(row, "workspace_id")?,
        phone: Phone::parse(row.try_get::<&str, _>("phone")?).map_err(|e| corrupt("phone", e))?,
        direction: Direction::parse(direction).ok_or_else(|| corrupt("direction", direction))?,
        transport: Transport::parse(transport).ok_or_else(|| corrupt("transport", transport))?,
        external_id: row.try_get("external_id")?,
        status: CallStatus::parse(status).ok_or_else(|| corrupt("status", status))?,
        live_conversation_token: row.try_get("live_conversation_token")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get("end_reason")?,
        last_seq: seq_of(row.try_get("last_seq")?),
        screening: match (
            row.try_get::<Option<DateTime<Utc>>, _>("screening_ended_at")?,
            row.try_get::<Option<String>, _>("screening_msg")?,
        ) {
            (Some(ended_at), Some(msg)) => Some(Screening { ended_at, msg }),
            _ => None,
        },
    })
}

fn turn_row(row: &PgRow) -> Result<TranscriptTurn> {
    let role: &str = row.try_get("role")?;
    Ok(TranscriptTurn {
        turn_id: callstream_core::TurnId::parse(row.try_get::<&str, _>("turn_id")?)
            .map_err(|e| corrupt("turn id", e))?,
        seq: seq_of(row.try_get("seq")?),
        role: match role {
            "user" => Role::User,
            "agent" => Role::Agent,
            other => return Err(corrupt("role", other)),
        },
        text: row.try_get("text")?,
        confidence: row.try_get("confidence")?,
        segment_start: row.try_get("segment_start")?,
        segment_end: row.try_get("segment_end")?,
        ts: row.try_get("ts")?,
    })
}

/// The conversations columns `conversation_row` reads.
macro_rules! conversation_columns {
    () => {
        "id, workspace_id, channel, participants, mode, created_at, last_seq"
    };
}

fn conversation_row(row: &PgRow) -> Result<Conversation> {
    let channel: &str = row.try_get("channel")?;
    let mode: &str = row.try_get("mode")?;
    let participants: &str = row.try_get("participants")?;
    Ok(Conversation {
        id: ConversationId::parse(row.try_get::<&str, _>("id")?)
            .map_err(|e| corrupt("conversation id", e))?,
        workspace_id: workspace_id(row, "workspace_id")?,
        channel: Channel::parse(channel).ok_or_else(|| corrupt("channel", channel))?,
        participants: serde_json::from_str(participants).map_err(|e| corrupt("participants", e))?,
        mode: ConversationMode::parse(mode).ok_or_else(|| corrupt("mode", mode))?,
        created_at: row.try_get("created_at")?,
        last_seq: seq_of(row.try_get("last_seq")?),
    })
}

fn audio_stream_row(row: &PgRow) -> Result<AudioStreamRecord> {
    let track: &str = row.try_get("audio_track")?;
    let status: &str = row.try_get("status")?;
    let method: &str = row.try_get("status_callback_method")?;
    Ok(AudioStreamRecord {
        stream_id: row.try_get("id")?,
        workspace_id: workspace_id(row, "workspace_id")?,
        call_id: CallId::parse(row.try_get::<&str, _>("call_id")?)
            .map_err(|e| corrupt("call id", e))?,
        service_url: row.try_get("service_url")?,
        audio_track: AudioTrack::parse(track).ok_or_else(|| corrupt("audio track", track))?,
        bidirectional: row.try_get("bidirectional")?,
        content_type: row.try_get("content_type")?,
        l16_big_endian: row.try_get("l16_big_endian")?,
        stream_timeout_secs: seq_of(row.try_get("stream_timeout_secs")?),
        status_callback_url: row.try_get("status_callback_url")?,
        status_callback_method: CallbackMethod::parse(method)
            .ok_or_else(|| corrupt("callback method", method))?,
        extra_headers: row.try_get("extra_headers")?,
        status: StreamStatus::parse(status).ok_or_else(|| corrupt("stream status", status))?,
        created_at: row.try_get("created_at")?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        end_reason: row.try_get("end_reason")?,
    })
}

/// The status of a call that an append could not reserve seqs on: ended, or not there.
async fn why_not(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    call: &CallId,
) -> Result<StoreError> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM calls WHERE workspace_id = $1 AND id = $2")
            .bind(workspace.as_str())
            .bind(call.as_str())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match status.as_deref().and_then(CallStatus::parse) {
        Some(status) => StoreError::CallEnded(status),
        None => StoreError::NotFound,
    })
}

/// Marks a call ended by the terminal event among `envelopes`, with its reason and the event.
async fn end_call(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    call: &CallId,
    status: CallStatus,
    at: DateTime<Utc>,
    envelopes: &[Envelope],
) -> Result<()> {
    let terminal = envelopes.iter().rfind(|e| e.payload.is_terminal());
    sqlx::query(
        "UPDATE calls SET status = $1, ended_at = $2, end_reason = $3, end_event = $4 \
         WHERE workspace_id = $5 AND id = $6",
    )
    .bind(status.as_str())
    .bind(at)
    .bind(terminal.and_then(|e| e.payload.end_reason()))
    .bind(terminal.map(Envelope::to_json))
    .bind(workspace.as_str())
    .bind(call.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The end of a call a batch brought, if any: its status, when, and the terminal event's seq.
type CallEnd = Option<(CallStatus, DateTime<Utc>, u64)>;

/// Records what a batch of a call's events changes: final turns, the end of screening, the
/// webhook rows; returns the call's end if the batch ended it, and whether webhooks were queued.
async fn record_effects(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    call: &CallId,
    envelopes: &[Envelope],
) -> Result<(CallEnd, bool)> {
    let end = record_call_effects(tx, workspace, call, envelopes).await?;
    let queued = enqueue_webhooks(tx, workspace, envelopes).await?;
    Ok((end, queued))
}

/// [`record_effects`] without the webhook rows (a group commit queues them once for all).
async fn record_call_effects(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    call: &CallId,
    envelopes: &[Envelope],
) -> Result<Option<(CallStatus, DateTime<Utc>, u64)>> {
    let mut end = None;
    for env in envelopes {
        match &env.payload {
            Payload::Transcription(t) => {
                if let Some(turn) = TranscriptTurn::from_event(env.seq, env.timestamp, t) {
                    insert_turn(tx, workspace, call, &turn).await?;
                }
            }
            Payload::Completed(_) => end = Some((CallStatus::Completed, env.timestamp, env.seq)),
            Payload::Failed(_) => end = Some((CallStatus::Failed, env.timestamp, env.seq)),
            Payload::ScreeningEnded(screening) => {
                sqlx::query(
                    "UPDATE calls SET screening_ended_at = $1, screening_msg = $2 \
                     WHERE workspace_id = $3 AND id = $4 AND screening_ended_at IS NULL",
                )
                .bind(env.timestamp)
                .bind(&screening.msg)
                .bind(workspace.as_str())
                .bind(call.as_str())
                .execute(&mut **tx)
                .await?;
            }
            _ => {}
        }
    }
    Ok(end)
}

#[async_trait]
impl Store for PgStore {
    async fn ensure_workspace(&self, name: &str) -> Result<Workspace> {
        let candidate = Workspace {
            id: WorkspaceId::new(),
            name: name.to_owned(),
            auth_id: Workspace::new_auth_id(),
            created_at: time::now(),
        };
        let row = sqlx::query(
            "SELECT id, name, auth_id, created_at FROM cs_ensure_workspace($1, $2, $3, $4)",
        )
        .bind(candidate.id.as_str())
        .bind(&candidate.name)
        .bind(&candidate.auth_id)
        .bind(candidate.created_at)
        .fetch_one(&self.pool)
        .await?;
        workspace_row(&row)
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        let mut tx = self.scoped(id).await?;
        let row = sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(workspace_row).transpose()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        let mut tx = self.scoped(&key.workspace_id).await?;
        sqlx::query(
            "INSERT INTO api_keys (id, workspace_id, kind, key_hash, hint, created_at, expires_at, admin) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id.as_str())
        .bind(key.workspace_id.as_str())
        .bind(key.kind.as_str())
        .bind(&key.key_hash[..])
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.admin)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT id, workspace_id, kind, key_hash, hint, created_at, revoked_at, expires_at, admin \
             FROM cs_key_by_hash($1)",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn insert_stream_token(&self, t: &StreamTokenRecord) -> Result<()> {
        let mut tx = self.scoped(&t.workspace_id).await?;
        sqlx::query(
            "INSERT INTO stream_tokens (token_hash, workspace_id, call_id, key_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.token_hash[..])
        .bind(t.workspace_id.as_str())
        .bind(t.call_id.as_str())
        .bind(t.key_id.as_str())
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
        // Expired tokens are useless; clear the workspace's out as new ones arrive.
        sqlx::query("DELETE FROM stream_tokens WHERE workspace_id = $1 AND expires_at < $2")
            .bind(t.workspace_id.as_str())
            .bind(time::now() - chrono::Duration::days(1))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stream_token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<StreamTokenRecord>> {
        let row = sqlx::query(
            "SELECT token_hash, workspace_id, call_id, key_id, created_at, expires_at \
             FROM cs_stream_token_by_hash($1)",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StreamTokenRecord {
            token_hash: hash32(row.try_get("token_hash")?, "token hash")?,
            workspace_id: workspace_id(&row, "workspace_id")?,
            call_id: CallId::parse(row.try_get::<&str, _>("call_id")?)
                .map_err(|e| corrupt("call id", e))?,
            key_id: KeyId::parse(row.try_get::<&str, _>("key_id")?)
                .map_err(|e| corrupt("key id", e))?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn insert_session(&self, t: &SessionRecord) -> Result<()> {
        let mut tx = self.scoped(&t.workspace_id).await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, workspace_id, key_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.token_hash[..])
        .bind(t.workspace_id.as_str())
        .bind(t.key_id.as_str())
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE workspace_id = $1 AND expires_at < $2")
            .bind(t.workspace_id.as_str())
            .bind(time::now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn session_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT token_hash, workspace_id, key_id, created_at, expires_at \
             FROM cs_session_by_hash($1)",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(SessionRecord {
            token_hash: hash32(row.try_get("token_hash")?, "session hash")?,
            workspace_id: workspace_id(&row, "workspace_id")?,
            key_id: KeyId::parse(row.try_get::<&str, _>("key_id")?)
                .map_err(|e| corrupt("key id", e))?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    async fn delete_session(&self, hash: &[u8; 32]) -> Result<()> {
        sqlx::query("SELECT cs_delete_session($1)")
            .bind(&hash[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_call(&self, call: &Call) -> Result<()> {
        let mut tx = self.scoped(&call.workspace_id).await?;
        if let Some(external_id) = &call.external_id {
            // Creations with one external id take turns (a lock for this transaction only), so
            // two nodes cannot both find no live call with it and both start one.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("{}:{external_id}", call.workspace_id))
                .execute(&mut *tx)
                .await?;
            let live: Option<String> = sqlx::query_scalar(
                "SELECT id FROM calls WHERE workspace_id = $1 AND external_id = $2 \
                 AND status = 'in_progress' LIMIT 1",
            )
            .bind(call.workspace_id.as_str())
            .bind(external_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(live) = live {
                return Err(crate::external_id_in_use(external_id, &live));
            }
        }
        sqlx::query(
            "INSERT INTO calls (id, workspace_id, phone, direction, transport, external_id, status, \
             live_conversation_token, started_at, ended_at, last_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(call.id.as_str())
        .bind(call.workspace_id.as_str())
        .bind(call.phone.as_str())
        .bind(call.direction.as_str())
        .bind(call.transport.as_str())
        .bind(call.external_id.as_deref())
        .bind(call.status.as_str())
        .bind(&call.live_conversation_token)
        .bind(call.started_at)
        .bind(call.ended_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn call(&self, workspace: &WorkspaceId, id: &CallId) -> Result<Option<Call>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE workspace_id = $1 AND id = $2"
        ))
        .bind(workspace.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn call_end_event(
        &self,
        workspace: &WorkspaceId,
        id: &CallId,
    ) -> Result<Option<Vec<u8>>> {
        let mut tx = self.scoped(workspace).await?;
        let event: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT end_event FROM calls WHERE workspace_id = $1 AND id = $2")
                .bind(workspace.as_str())
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(event.flatten())
    }

    async fn calls(&self, workspace: &WorkspaceId, filter: &CallFilter) -> Result<Vec<Call>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(concat!("SELECT ", call_columns!(), " FROM calls WHERE workspace_id = $1 \
             AND ($2::TEXT IS NULL OR status = $2) AND ($3::TIMESTAMPTZ IS NULL OR started_at >= $3) \
             AND (NOT $5::BOOLEAN OR status <> 'in_progress') AND ($6::TEXT IS NULL OR phone LIKE $6) \
             AND ($7::TEXT IS NULL OR (started_at, id) < \
                  (SELECT started_at, id FROM calls WHERE workspace_id = $1 AND id = $7)) \
             ORDER BY started_at DESC, id DESC LIMIT $4"))
        .bind(workspace.as_str())
        .bind(filter.status.map(CallStatus::as_str))
        .bind(filter.since)
        .bind(i64::from(filter.limit))
        .bind(filter.ended)
        .bind(filter.phone.as_ref().map(|p| format!("%{p}%")))
        .bind(filter.before.as_ref().map(CallId::as_str))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(call_row).collect()
    }

    async fn call_by_live_token(
        &self,
        workspace: &WorkspaceId,
        token: &str,
    ) -> Result<Option<Call>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE workspace_id = $1 AND live_conversation_token = $2"
        ))
        .bind(workspace.as_str())
        .bind(token)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn call_by_external_id(
        &self,
        workspace: &WorkspaceId,
        external_id: &str,
    ) -> Result<Option<Call>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            call_columns!(),
            " FROM calls WHERE workspace_id = $1 AND external_id = $2 \
             ORDER BY started_at DESC LIMIT 1"
        ))
        .bind(workspace.as_str())
        .bind(external_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn append_call_events(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<Appended> {
        check_call_batch(&events)?;
        renumbering(events, "call", |events| {
            self.append_call_events_once(workspace, call_id, events, publish)
        })
        .await
    }

    async fn append_calls_events(
        &self,
        workspace: &WorkspaceId,
        batches: Vec<(CallId, Vec<NewEvent>)>,
        publish: &[&dyn PublishInOrder],
    ) -> Result<Vec<Result<Appended>>> {
        if publish.len() != batches.len() {
            return Err(StoreError::Invalid("one publisher per batch".into()));
        }
        let mut out: Vec<Option<Result<Appended>>> = Vec::with_capacity(batches.len());
        // What each call takes, by call id (sorted: every group locks its calls in one order,
        // so two nodes' groups never deadlock), with its place in `batches`.
        let mut wanted = Group::new();
        for (i, (call, events)) in batches.into_iter().enumerate() {
            if let Err(e) = check_call_batch(&events) {
                out.push(Some(Err(e)));
            } else if wanted.contains_key(call.as_str()) {
                out.push(Some(Err(StoreError::Invalid(
                    "a call appears twice in one group".into(),
                ))));
            } else {
                out.push(None);
                wanted.insert(call.as_str().to_owned(), (i, events));
            }
        }
        // Calls another transaction holds (another group, another node's ingest) are not waited
        // for inside this group, which would hold every other call of it meanwhile: they go in a
        // second group of their own, after this one.
        // A group whose seqs the bus held already (`NotPublished::Taken`) comes back whole, to
        // be numbered again after them.
        let mut round = self
            .append_group(workspace, wanted, publish, &mut out, false)
            .await?;
        for _ in 0..RENUMBERINGS {
            if round.is_empty() {
                break;
            }
            round = self
                .append_group(workspace, round, publish, &mut out, true)
                .await?;
        }
        for (i, _) in round.into_values() {
            out[i] = Some(Err(crate::taken_too_often("call")));
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::NotFound)))
            .collect())
    }

    async fn reserve_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        block: u64,
    ) -> Result<(Call, u64)> {
        let floor = self.unburnt.floor("calls", call_id.as_str());
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(concat!(
            "UPDATE calls SET last_seq = GREATEST(last_seq, $4) + $1 \
             WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress' RETURNING ",
            call_columns!()
        ))
        .bind(signed(block))
        .bind(workspace.as_str())
        .bind(call_id.as_str())
        .bind(signed(floor))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(why_not(&mut tx, workspace, call_id).await?);
        };
        let call = call_row(&row)?;
        tx.commit().await?;
        let end = call.last_seq;
        if floor > 0 {
            self.unburnt.settled("calls", call_id.as_str(), end);
        }
        Ok((call, end))
    }

    async fn record_call_events(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        envelopes: &[Envelope],
    ) -> Result<Option<Call>> {
        let mut tx = self.scoped(workspace).await?;
        let mut ended = None;
        if let (Some((status, at, seq)), _) =
            record_effects(&mut tx, workspace, call_id, envelopes).await?
        {
            let terminal = envelopes.iter().rfind(|e| e.payload.is_terminal());
            let row = sqlx::query(concat!(
                "UPDATE calls SET status = $1, ended_at = $2, last_seq = $3, end_reason = $4, \
                 end_event = $5 WHERE workspace_id = $6 AND id = $7 RETURNING ",
                call_columns!()
            ))
            .bind(status.as_str())
            .bind(at)
            .bind(signed(seq))
            .bind(terminal.and_then(|e| e.payload.end_reason()))
            .bind(terminal.map(Envelope::to_json))
            .bind(workspace.as_str())
            .bind(call_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            ended = Some(call_row(&row)?);
        }
        tx.commit().await?;
        Ok(ended)
    }

    async fn settle_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        reserved_end: u64,
        used: u64,
    ) -> Result<()> {
        let mut tx = self.scoped(workspace).await?;
        sqlx::query(
            "UPDATE calls SET last_seq = $1 WHERE workspace_id = $2 AND id = $3 AND last_seq = $4",
        )
        .bind(signed(used))
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(signed(reserved_end))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn has_webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        let found = sqlx::query(
            "SELECT 1 FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL LIMIT 1",
        )
        .bind(workspace.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(found.is_some())
    }

    async fn transcript(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Result<Vec<TranscriptTurn>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(
            "SELECT turn_id, seq, role, text, confidence, segment_start, segment_end, ts \
             FROM transcript_turns WHERE workspace_id = $1 AND call_id = $2 ORDER BY seq",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(turn_row).collect()
    }

    async fn create_conversation(&self, c: &Conversation) -> Result<()> {
        let participants = serde_json::to_string(&c.participants)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.scoped(&c.workspace_id).await?;
        sqlx::query(
            "INSERT INTO conversations (id, workspace_id, channel, participants, mode, created_at, last_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(c.id.as_str())
        .bind(c.workspace_id.as_str())
        .bind(c.channel.as_str())
        .bind(participants)
        .bind(c.mode.as_str())
        .bind(c.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn conversation(
        &self,
        workspace: &WorkspaceId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations WHERE workspace_id = $1 AND id = $2"
        ))
        .bind(workspace.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(conversation_row).transpose()
    }

    async fn conversations(
        &self,
        workspace: &WorkspaceId,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations WHERE workspace_id = $1 \
             AND ($2::TEXT IS NULL OR mode = $2) AND ($3::TEXT IS NULL OR channel = $3) \
             ORDER BY created_at DESC, id LIMIT $4"
        ))
        .bind(workspace.as_str())
        .bind(filter.mode.map(ConversationMode::as_str))
        .bind(filter.channel.map(Channel::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(conversation_row).collect()
    }

    async fn append_conversation_events(
        &self,
        workspace: &WorkspaceId,
        conversation_id: &ConversationId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<AppendedConversation> {
        renumbering(events, "conversation", |events| {
            self.append_conversation_events_once(workspace, conversation_id, events, publish)
        })
        .await
    }

    async fn messages(
        &self,
        workspace: &WorkspaceId,
        conversation: &ConversationId,
    ) -> Result<Vec<MessageRecord>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(
            "SELECT message_id, direction, text, status, payload, created_at, updated_at \
             FROM messages WHERE workspace_id = $1 AND conversation_id = $2 ORDER BY first_seq",
        )
        .bind(workspace.as_str())
        .bind(conversation.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let payload: &str = row.try_get("payload")?;
                Ok(MessageRecord {
                    message_id: row.try_get("message_id")?,
                    direction: row.try_get("direction")?,
                    text: row.try_get("text")?,
                    status: row.try_get("status")?,
                    payload: callstream_core::event::RawPayload::new(
                        serde_json::value::RawValue::from_string(payload.to_owned())
                            .map_err(|e| corrupt("message payload", e))?,
                    ),
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<()> {
        let types = e
            .event_types
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_default());
        let mut tx = self.scoped(&e.workspace_id).await?;
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, workspace_id, url, secret, event_types, description, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&e.id)
        .bind(e.workspace_id.as_str())
        .bind(&e.url)
        .bind(&e.secret)
        .bind(types)
        .bind(&e.description)
        .bind(e.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<Vec<WebhookEndpoint>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 ORDER BY created_at"
        )))
        .bind(workspace.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2"
        )))
        .bind(workspace.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn change_webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
        change: &EndpointChange,
        at: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>> {
        let mut tx = self.scoped(workspace).await?;
        // One statement: each field is set only when the change names it.
        let types = change.event_types.as_ref().map(|t| {
            t.as_ref()
                .map(|t| serde_json::to_string(t).unwrap_or_default())
        });
        let (secret, until) = change
            .rotate
            .as_ref()
            .map(|(secret, until)| (Some(secret.as_str()), Some(*until)))
            .unwrap_or_default();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_endpoints SET \
               url = COALESCE($3, url), \
               event_types = CASE WHEN $4 THEN $5 ELSE event_types END, \
               description = COALESCE($6, description), \
               failing_since = CASE WHEN $7 IS TRUE THEN NULL ELSE failing_since END, \
               disabled_at = CASE WHEN $7 IS TRUE THEN NULL \
                                  WHEN $7 IS FALSE THEN COALESCE(disabled_at, $8) ELSE disabled_at END, \
               disabled_reason = CASE WHEN $7 IS TRUE THEN NULL \
                                      WHEN $7 IS FALSE AND disabled_at IS NULL THEN $9 ELSE disabled_reason END, \
               previous_secret = CASE WHEN $10::TEXT IS NULL THEN previous_secret ELSE secret END, \
               previous_secret_until = CASE WHEN $10::TEXT IS NULL THEN previous_secret_until ELSE $11 END, \
               secret = COALESCE($10, secret) \
             WHERE workspace_id = $1 AND id = $2 RETURNING {ENDPOINT_COLUMNS}"
        )))
        .bind(workspace.as_str())
        .bind(id)
        .bind(change.url.as_deref())
        .bind(types.is_some())
        .bind(types.flatten())
        .bind(change.description.as_deref())
        .bind(change.enabled)
        .bind(at)
        .bind(change.disabled_reason.as_deref().unwrap_or("disabled"))
        .bind(secret)
        .bind(until)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn delete_webhook_endpoint(&self, workspace: &WorkspaceId, id: &str) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        for table in ["webhook_outbox", "webhook_attempts"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE workspace_id = $1 AND endpoint_id = $2"
            )))
            .bind(workspace.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let deleted =
            sqlx::query("DELETE FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2")
                .bind(workspace.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    async fn due_deliveries_except(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        skip: &Skip,
    ) -> Result<Vec<Delivery>> {
        let skip_workspaces: Vec<&str> = skip.workspaces.iter().map(WorkspaceId::as_str).collect();
        let rows = sqlx::query(
            "SELECT kind, workspace_id, endpoint_id, message_id, url, secret, previous_secret, method, \
             payload, attempts, first_attempt_at FROM cs_claim_deliveries($1, $2, $3, $4, $5)",
        )
        .bind(now)
        .bind(lease_until)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        .bind(&skip.endpoints)
        .bind(&skip_workspaces)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: &str = row.try_get("kind")?;
                let target = if kind == "webhook" {
                    DeliveryTarget::Endpoint(row.try_get("endpoint_id")?)
                } else {
                    let method: &str = row.try_get("method")?;
                    DeliveryTarget::Callback(
                        CallbackMethod::parse(method)
                            .ok_or_else(|| corrupt("callback method", method))?,
                    )
                };
                Ok(Delivery {
                    workspace_id: workspace_id(row, "workspace_id")?,
                    target,
                    event_id: row.try_get("message_id")?,
                    url: row.try_get("url")?,
                    // A workspace without a signing secret cannot sign: the worker gives the
                    // attempt up with that reason rather than send it unsigned.
                    secret: row
                        .try_get::<Option<String>, _>("secret")?
                        .unwrap_or_default(),
                    previous_secret: row.try_get("previous_secret")?,
                    payload: row.try_get("payload")?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    first_attempt_at: row.try_get("first_attempt_at")?,
                    lease_until,
                })
            })
            .collect()
    }

    async fn release_deliveries(&self, deliveries: &[Delivery], at: DateTime<Utc>) -> Result<()> {
        for d in deliveries {
            let mut tx = self.scoped(&d.workspace_id).await?;
            match &d.target {
                DeliveryTarget::Endpoint(endpoint) => {
                    sqlx::query(
                        "UPDATE webhook_outbox SET next_attempt_at = $1 \
                         WHERE workspace_id = $2 AND endpoint_id = $3 AND event_id = $4 AND status = 'pending'",
                    )
                    .bind(at)
                    .bind(d.workspace_id.as_str())
                    .bind(endpoint)
                    .bind(&d.event_id)
                    .execute(&mut *tx)
                    .await?;
                }
                DeliveryTarget::Callback(_) => {
                    sqlx::query(
                        "UPDATE callback_outbox SET next_attempt_at = $1 \
                         WHERE workspace_id = $2 AND id = $3 AND status = 'pending'",
                    )
                    .bind(at)
                    .bind(d.workspace_id.as_str())
                    .bind(&d.event_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
        Ok(())
    }

    async fn record_deliveries(&self, attempts: &[Attempted<'_>]) -> Result<()> {
        if attempts.is_empty() {
            return Ok(());
        }
        // In workspace and endpoint order: an attempt locks its endpoint's row when it changes
        // it, and a batch holds its locks until it commits, so two nodes' batches must take
        // them in one order (or PostgreSQL would break a deadlock by failing one of them).
        let mut attempts = attempts.to_vec();
        attempts.sort_by_key(|a| (a.delivery.workspace_id.as_str(), endpoint_of(a)));
        let first = attempts[0];
        // One transaction; its workspace setting follows each attempt's workspace, so that
        // every statement runs under the row-level security of the workspace it touches.
        let mut workspace = &first.delivery.workspace_id;
        let mut tx = self.scoped(workspace).await?;
        for attempt in &attempts {
            if attempt.delivery.workspace_id != *workspace {
                workspace = &attempt.delivery.workspace_id;
                sqlx::query("SELECT set_config('app.workspace_id', $1, true)")
                    .bind(workspace.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            record_attempt(&mut tx, attempt).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn webhook_messages(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        filter: &MessageFilter,
    ) -> Result<Option<Vec<WebhookMessage>>> {
        let mut tx = self.scoped(workspace).await?;
        let found = has_endpoint(&mut tx, workspace, endpoint).await?;
        if !found {
            return Ok(None);
        }
        let state = filter.state.map_or("TRUE", MessageState::condition);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id AS cursor, event_id, event_type, status, attempts, \
             COALESCE(created_at, next_attempt_at) AS queued_at, first_attempt_at, next_attempt_at, \
             last_status, last_error FROM webhook_outbox \
             WHERE workspace_id = $1 AND endpoint_id = $2 AND ({state}) \
             AND ($3::BIGINT IS NULL OR id < $3) \
             AND ($4::TIMESTAMPTZ IS NULL OR COALESCE(created_at, next_attempt_at) >= $4) \
             AND ($5::TIMESTAMPTZ IS NULL OR COALESCE(created_at, next_attempt_at) < $5) \
             ORDER BY id DESC LIMIT $6"
        )))
        .bind(workspace.as_str())
        .bind(endpoint)
        .bind(filter.before)
        .bind(filter.since)
        .bind(filter.until)
        .bind(i64::from(filter.limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(WebhookMessage::from_columns(
                    row.try_get("cursor")?,
                    row.try_get("event_id")?,
                    row.try_get("event_type")?,
                    &status,
                    u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                    row.try_get("queued_at")?,
                    row.try_get("first_attempt_at")?,
                    row.try_get("next_attempt_at")?,
                    row.try_get::<Option<i32>, _>("last_status")?
                        .and_then(|s| u16::try_from(s).ok()),
                    row.try_get("last_error")?,
                ))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn requeue_webhook_messages(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        which: &Requeue,
        at: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let mut tx = self.scoped(workspace).await?;
        let found = has_endpoint(&mut tx, workspace, endpoint).await?;
        if !found {
            return Ok(None);
        }
        let (condition, value) = match which {
            Requeue::One(event_id) => ("event_id = $4", event_id.clone()),
            Requeue::Since(since) => (
                "COALESCE(created_at, next_attempt_at) >= $4::TIMESTAMPTZ",
                time::format(since),
            ),
        };
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_outbox SET status = 'pending', attempts = 0, first_attempt_at = NULL, \
             next_attempt_at = $3, last_status = NULL, last_error = NULL \
             WHERE workspace_id = $1 AND endpoint_id = $2 AND {condition}"
        )))
        .bind(workspace.as_str())
        .bind(endpoint)
        .bind(at)
        .bind(value)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(match which {
            Requeue::One(_) if done == 0 => None,
            _ => Some(done),
        })
    }

    async fn queue_webhook_notice(
        &self,
        workspace: &WorkspaceId,
        except: &str,
        event_type: &str,
        event_id: &str,
        body: &[u8],
        at: DateTime<Utc>,
    ) -> Result<u32> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(
            "SELECT id, event_types FROM webhook_endpoints \
             WHERE workspace_id = $1 AND id <> $2 AND disabled_at IS NULL AND event_types IS NOT NULL",
        )
        .bind(workspace.as_str())
        .bind(except)
        .fetch_all(&mut *tx)
        .await?;
        let mut queued = 0;
        for row in &rows {
            let types: String = row.try_get("event_types")?;
            let types: Vec<String> =
                serde_json::from_str(&types).map_err(|e| corrupt("event types", e))?;
            if !types.iter().any(|t| t == event_type) {
                continue;
            }
            let endpoint: String = row.try_get("id")?;
            sqlx::query(
                "INSERT INTO webhook_outbox (endpoint_id, event_id, workspace_id, event_type, payload, status, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&endpoint)
            .bind(event_id)
            .bind(workspace.as_str())
            .bind(event_type)
            .bind(body)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            queued += 1;
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn prune_webhook_messages(&self, before: DateTime<Utc>) -> Result<u64> {
        let pruned: i64 = sqlx::query_scalar("SELECT cs_prune_webhook_messages($1)")
            .bind(before)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(pruned).unwrap_or(0))
    }

    async fn webhook_attempts(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        event_id: &str,
    ) -> Result<Option<Vec<WebhookAttempt>>> {
        let mut tx = self.scoped(workspace).await?;
        let found = sqlx::query(
            "SELECT 1 FROM webhook_outbox WHERE workspace_id = $1 AND endpoint_id = $2 AND event_id = $3",
        )
        .bind(workspace.as_str())
        .bind(endpoint)
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !found {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT attempted_at, status_code, latency_ms, error_kind, response_body FROM webhook_attempts \
             WHERE workspace_id = $1 AND endpoint_id = $2 AND event_id = $3 ORDER BY id",
        )
        .bind(workspace.as_str())
        .bind(endpoint)
        .bind(event_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                Ok(WebhookAttempt {
                    attempted_at: row.try_get("attempted_at")?,
                    status_code: row
                        .try_get::<Option<i32>, _>("status_code")?
                        .and_then(|s| u16::try_from(s).ok()),
                    latency_ms: u64::try_from(row.try_get::<i64, _>("latency_ms")?).unwrap_or(0),
                    error_kind: row.try_get("error_kind")?,
                    response_body: row.try_get("response_body")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn create_audio_stream(&self, st: &AudioStreamRecord) -> Result<()> {
        let mut tx = self.scoped(&st.workspace_id).await?;
        // The call's row, locked: two nodes creating streams on one call take turns, so the
        // one-active-stream-per-URL rule holds across them.
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM calls WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(st.workspace_id.as_str())
        .bind(st.call_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let status = status.ok_or(StoreError::NotFound)?;
        let status = CallStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?;
        if !status.is_active() {
            return Err(StoreError::CallEnded(status));
        }
        let duplicate: Option<String> = sqlx::query_scalar(
            "SELECT id FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 AND service_url = $3 \
             AND status IN ('connecting', 'in-progress') LIMIT 1",
        )
        .bind(st.workspace_id.as_str())
        .bind(st.call_id.as_str())
        .bind(&st.service_url)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(existing) = duplicate {
            return Err(StoreError::Invalid(format!(
                "service_url: stream {existing} to this URL is already active on this call"
            )));
        }
        sqlx::query(
            "INSERT INTO audio_streams (id, workspace_id, call_id, service_url, audio_track, bidirectional, \
             content_type, l16_big_endian, stream_timeout_secs, status_callback_url, status_callback_method, \
             extra_headers, status, created_at, start_time, end_time, end_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&st.stream_id)
        .bind(st.workspace_id.as_str())
        .bind(st.call_id.as_str())
        .bind(&st.service_url)
        .bind(st.audio_track.as_str())
        .bind(st.bidirectional)
        .bind(&st.content_type)
        .bind(st.l16_big_endian)
        .bind(signed(st.stream_timeout_secs))
        .bind(st.status_callback_url.as_deref())
        .bind(st.status_callback_method.as_str())
        .bind(&st.extra_headers)
        .bind(st.status.as_str())
        .bind(st.created_at)
        .bind(st.start_time)
        .bind(st.end_time)
        .bind(st.end_reason.as_deref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audio_stream(
        &self,
        workspace: &WorkspaceId,
        stream_id: &str,
    ) -> Result<Option<AudioStreamRecord>> {
        let mut tx = self.scoped(workspace).await?;
        let row = sqlx::query("SELECT * FROM audio_streams WHERE workspace_id = $1 AND id = $2")
            .bind(workspace.as_str())
            .bind(stream_id)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        row.as_ref().map(audio_stream_row).transpose()
    }

    async fn audio_streams(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AudioStreamRecord>, u64)> {
        let mut tx = self.scoped(workspace).await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audio_streams WHERE workspace_id = $1 AND call_id = $2",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 \
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(i64::from(limit))
        .bind(signed(offset))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let streams = rows
            .iter()
            .map(audio_stream_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((streams, seq_of(total)))
    }

    async fn active_call_audio_streams(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Result<Vec<AudioStreamRecord>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 \
             AND status IN ('connecting', 'in-progress') ORDER BY created_at, id",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn active_audio_streams(&self) -> Result<Vec<AudioStreamRecord>> {
        let rows = sqlx::query("SELECT * FROM cs_active_audio_streams()")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn set_audio_stream_status(
        &self,
        workspace: &WorkspaceId,
        stream_id: &str,
        status: StreamStatus,
        at: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        let done = if status.is_active() {
            sqlx::query(
                "UPDATE audio_streams SET status = $1, \
                 start_time = CASE WHEN $1 = 'in-progress' THEN COALESCE(start_time, $2) ELSE start_time END \
                 WHERE workspace_id = $3 AND id = $4 AND status IN ('connecting', 'in-progress')",
            )
            .bind(status.as_str())
            .bind(at)
            .bind(workspace.as_str())
            .bind(stream_id)
            .execute(&mut *tx)
            .await?
        } else {
            sqlx::query(
                "UPDATE audio_streams SET status = $1, end_time = $2, end_reason = $3 \
                 WHERE workspace_id = $4 AND id = $5 AND status IN ('connecting', 'in-progress')",
            )
            .bind(status.as_str())
            .bind(at)
            .bind(reason)
            .bind(workspace.as_str())
            .bind(stream_id)
            .execute(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn queue_callback(&self, m: &CallbackMessage) -> Result<()> {
        let mut tx = self.scoped(&m.workspace_id).await?;
        sqlx::query(
            "INSERT INTO callback_outbox (id, workspace_id, url, method, body, kind, status, \
             created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&m.id)
        .bind(m.workspace_id.as_str())
        .bind(&m.url)
        .bind(m.method.as_str())
        .bind(&m.body)
        .bind(&m.kind)
        .bind(m.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn signing_secret(&self, workspace: &WorkspaceId, candidate: &str) -> Result<String> {
        let mut tx = self.scoped(workspace).await?;
        sqlx::query(
            "UPDATE workspaces SET signing_secret = $1 WHERE id = $2 AND signing_secret IS NULL",
        )
        .bind(candidate)
        .bind(workspace.as_str())
        .execute(&mut *tx)
        .await?;
        let secret: Option<Option<String>> =
            sqlx::query_scalar("SELECT signing_secret FROM workspaces WHERE id = $1")
                .bind(workspace.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        secret.flatten().ok_or(StoreError::NotFound)
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT status, n FROM cs_outbox_counts()")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, seq_of(r.try_get("n")?))))
            .collect()
    }

    async fn take_place(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        kind: &str,
        max: u32,
        holder: &str,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        // Takers of one call's places (on any node) queue here until this transaction ends, so
        // the count below cannot be stale when the insert lands.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("places/{workspace}/{call}/{kind}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM connection_places \
             WHERE workspace_id = $1 AND call_id = $2 AND kind = $3 AND expires_at <= $4",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(kind)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM connection_places \
             WHERE workspace_id = $1 AND call_id = $2 AND kind = $3",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(kind)
        .fetch_one(&mut *tx)
        .await?;
        if held >= i64::from(max) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO connection_places (holder, workspace_id, call_id, kind, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(holder)
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(kind)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn renew_place(
        &self,
        workspace: &WorkspaceId,
        holder: &str,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        let done = sqlx::query(
            "UPDATE connection_places SET expires_at = $1 WHERE workspace_id = $2 AND holder = $3",
        )
        .bind(until)
        .bind(workspace.as_str())
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_place(&self, workspace: &WorkspaceId, holder: &str) -> Result<()> {
        let mut tx = self.scoped(workspace).await?;
        sqlx::query("DELETE FROM connection_places WHERE workspace_id = $1 AND holder = $2")
            .bind(workspace.as_str())
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn touch_calls(&self, touched: &[(WorkspaceId, CallId, DateTime<Utc>)]) -> Result<()> {
        // One transaction per workspace: each is scoped to its own rows.
        let mut by_workspace: Vec<(&WorkspaceId, Vec<(&CallId, &DateTime<Utc>)>)> = Vec::new();
        for (workspace, call, at) in touched {
            match by_workspace.iter_mut().find(|(w, _)| *w == workspace) {
                Some((_, calls)) => calls.push((call, at)),
                None => by_workspace.push((workspace, vec![(call, at)])),
            }
        }
        for (workspace, calls) in by_workspace {
            let mut tx = self.scoped(workspace).await?;
            let ids: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
            let ats: Vec<DateTime<Utc>> = calls.iter().map(|(_, at)| **at).collect();
            sqlx::query(
                "UPDATE calls SET last_event_at = v.at \
                 FROM UNNEST($1::text[], $2::timestamptz[]) AS v(id, at) \
                 WHERE calls.workspace_id = $3 AND calls.id = v.id AND calls.status = 'in_progress'",
            )
            .bind(&ids)
            .bind(&ats)
            .bind(workspace.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn stale_calls(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(WorkspaceId, CallId)>> {
        let rows = sqlx::query("SELECT workspace_id, id FROM cs_stale_calls($1, $2)")
            .bind(before)
            .bind(i32::try_from(limit).unwrap_or(i32::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    WorkspaceId::parse(row.try_get("workspace_id")?)
                        .map_err(|e| corrupt("workspace id", e))?,
                    CallId::parse(row.try_get("id")?).map_err(|e| corrupt("call id", e))?,
                ))
            })
            .collect()
    }

    async fn keys(&self, workspace: &WorkspaceId) -> Result<Vec<KeyRecord>> {
        let mut tx = self.scoped(workspace).await?;
        let rows = sqlx::query(
            "SELECT id, workspace_id, kind, key_hash, hint, created_at, revoked_at, expires_at, admin \
             FROM api_keys WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(workspace.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(key_row).collect()
    }

    async fn revoke_key(
        &self,
        workspace: &WorkspaceId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.scoped(workspace).await?;
        let found = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE workspace_id = $2 AND id = $3",
        )
        .bind(at)
        .bind(workspace.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(found.rows_affected() > 0)
    }

    async fn keys_revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<KeyId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM cs_keys_revoked_since($1)")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        ids.iter()
            .map(|id| KeyId::parse(id).map_err(|e| corrupt("key id", e)))
            .collect()
    }

    async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>> {
        let row = sqlx::query("SELECT id, name, auth_id, created_at FROM cs_workspace_by_name($1)")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(workspace_row).transpose()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// What a group's numbered events change, recorded in its transaction: each call's final turns
/// and end, the group's outbox rows; returns the calls read again where an event changed more
/// than the seq (an end, the end of screening).
async fn record_group_effects(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    numbered: &[(usize, CallId, Vec<Envelope>)],
    endpoints: &Endpoints,
) -> Result<(Vec<Call>, bool)> {
    for (_, call_id, envelopes) in numbered {
        if let Some((status, at, _)) =
            record_call_effects(tx, workspace, call_id, envelopes).await?
        {
            end_call(tx, workspace, call_id, status, at, envelopes).await?;
        }
    }
    let mut queued = false;
    for (_, _, envelopes) in numbered {
        queued |= enqueue_for(tx, workspace, envelopes, endpoints).await?;
    }
    let changed: Vec<&str> = numbered
        .iter()
        .filter(|(_, _, envelopes)| {
            envelopes.iter().any(|e| {
                matches!(
                    e.payload,
                    Payload::Completed(_) | Payload::Failed(_) | Payload::ScreeningEnded(_)
                )
            })
        })
        .map(|(_, c, _)| c.as_str())
        .collect();
    if changed.is_empty() {
        return Ok((Vec::new(), queued));
    }
    let rows = sqlx::query(concat!(
        "SELECT ",
        call_columns!(),
        " FROM calls WHERE workspace_id = $1 AND id = ANY($2)"
    ))
    .bind(workspace.as_str())
    .bind(&changed)
    .fetch_all(&mut **tx)
    .await?;
    let calls = rows.iter().map(call_row).collect::<Result<_>>()?;
    Ok((calls, queued))
}

/// A workspace's enabled webhook endpoints: each id with the event types it wants (`None`: all).
type Endpoints = Vec<(String, Option<Vec<String>>)>;

/// Reads the workspace's enabled endpoints in the caller's transaction.
async fn endpoints_of(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
) -> Result<Endpoints> {
    let rows = sqlx::query(
        "SELECT id, event_types FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL",
    )
    .bind(workspace.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut wanted = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("id")?;
        let types: Option<String> = row.try_get("event_types")?;
        wanted.push((id, event_types(types.as_deref())?));
    }
    Ok(wanted)
}

fn event_types(stored: Option<&str>) -> Result<Option<Vec<String>>> {
    stored
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| corrupt("event types", e))
}

/// The workspace's enabled endpoints as one value, read in the statement that numbers a group
/// (an uncorrelated subquery: evaluated once per statement), which saves the group a round trip.
const ENDPOINTS_COLUMN: &str = "(SELECT coalesce(json_agg(json_build_array(e.id, e.event_types)), '[]')::text \
     FROM webhook_endpoints e WHERE e.workspace_id = $1 AND e.disabled_at IS NULL) AS endpoints";

/// Decodes [`ENDPOINTS_COLUMN`].
fn endpoints_from_column(row: &PgRow) -> Result<Endpoints> {
    let text: &str = row.try_get("endpoints")?;
    let pairs: Vec<(String, Option<String>)> =
        serde_json::from_str(text).map_err(|e| corrupt("endpoints", e))?;
    pairs
        .into_iter()
        .map(|(id, types)| Ok((id, event_types(types.as_deref())?)))
        .collect()
}

/// Queues every envelope for every enabled endpoint of the workspace that wants its type, in the
/// caller's transaction. Returns whether it queued any.
async fn enqueue_webhooks(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    envelopes: &[Envelope],
) -> Result<bool> {
    let wanted = endpoints_of(tx, workspace).await?;
    enqueue_for(tx, workspace, envelopes, &wanted).await
}

/// [`enqueue_webhooks`] for endpoints already read.
async fn enqueue_for(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    envelopes: &[Envelope],
    wanted: &Endpoints,
) -> Result<bool> {
    if wanted.is_empty() {
        return Ok(false);
    }
    let mut queued = false;
    for env in envelopes {
        let ty = env.payload.type_name();
        // Serialised once an endpoint wants it, and once only.
        let mut payload: Option<Vec<u8>> = None;
        for (endpoint, types) in wanted {
            if types.as_ref().is_some_and(|t| !t.iter().any(|x| x == ty)) {
                continue;
            }
            queued = true;
            let payload = payload.get_or_insert_with(|| env.to_json());
            sqlx::query(
                "INSERT INTO webhook_outbox (endpoint_id, event_id, workspace_id, event_type, payload, status, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT DO NOTHING",
            )
            .bind(endpoint)
            .bind(env.event_id.as_str())
            .bind(workspace.as_str())
            .bind(ty)
            .bind(&*payload)
            .bind(env.timestamp.min(time::now()))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(queued)
}

async fn upsert_message(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    conversation: &ConversationId,
    seq: u64,
    at: DateTime<Utc>,
    m: &callstream_core::event::Message,
    json: Option<&callstream_core::event::RawPayload>,
) -> Result<()> {
    let raw = m.as_map();
    let text = raw.get("text").and_then(serde_json::Value::as_str);
    let field = |k: &str| {
        raw.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    // As it arrived when it came from outside (numbers, fields and order as sent).
    let payload = match json {
        Some(json) => json.get().to_owned(),
        None => serde_json::to_string(raw).map_err(|e| StoreError::Invalid(e.to_string()))?,
    };
    // The first event of a message creates its row; later ones (delivered, read) update its
    // status, keeping the text the message was first recorded with unless they carry one.
    sqlx::query(
        "INSERT INTO messages (workspace_id, conversation_id, message_id, first_seq, last_seq, direction, text, \
         status, payload, created_at, updated_at) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (conversation_id, message_id) DO UPDATE SET last_seq = excluded.last_seq, \
         status = excluded.status, payload = excluded.payload, updated_at = excluded.updated_at, \
         text = COALESCE(excluded.text, messages.text)",
    )
    .bind(workspace.as_str())
    .bind(conversation.as_str())
    .bind(m.message_id())
    .bind(signed(seq))
    .bind(field("direction"))
    .bind(text)
    .bind(field("status"))
    .bind(payload)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_turn(
    tx: &mut Transaction<'_, Postgres>,
    workspace: &WorkspaceId,
    call: &CallId,
    turn: &TranscriptTurn,
) -> Result<()> {
    // A second final for the same turn (a correction) replaces the first.
    sqlx::query(
        "INSERT INTO transcript_turns \
         (workspace_id, call_id, turn_id, seq, role, text, confidence, segment_start, segment_end, ts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (call_id, turn_id) DO UPDATE SET seq = excluded.seq, role = excluded.role, \
         text = excluded.text, confidence = excluded.confidence, segment_start = excluded.segment_start, \
         segment_end = excluded.segment_end, ts = excluded.ts",
    )
    .bind(workspace.as_str())
    .bind(call.as_str())
    .bind(turn.turn_id.as_str())
    .bind(signed(turn.seq))
    .bind(match turn.role {
        Role::User => "user",
        Role::Agent => "agent",
    })
    .bind(&turn.text)
    .bind(turn.confidence)
    .bind(turn.segment_start)
    .bind(turn.segment_end)
    .bind(turn.ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl PgStore {
    /// One try of [`Store::append_conversation_events`]: `Ok(Err(events))` when the bus already
    /// held the seqs it numbered (`NotPublished::Taken`), burnt past now, to number again.
    async fn append_conversation_events_once(
        &self,
        workspace: &WorkspaceId,
        conversation_id: &ConversationId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<crate::Try<AppendedConversation>> {
        for (i, e) in events.iter().enumerate() {
            let ty = e.payload.event_type();
            if !ty.fits(callstream_core::event::SubjectKind::Conversation) {
                return Err(StoreError::Invalid(format!(
                    "events[{i}].event_type: {ty} is not a conversation event"
                )));
            }
        }
        let count = i64::try_from(events.len())
            .map_err(|_| StoreError::Invalid("too many events".into()))?;
        let mut tx = self.scoped(workspace).await?;
        let floor = self
            .unburnt
            .floor("conversations", conversation_id.as_str())
            .max(publish.seen_up_to(workspace, &Subject::Conversation(conversation_id.clone())));
        let reserved = sqlx::query(
            "UPDATE conversations SET last_seq = GREATEST(last_seq, $4) + $1 \
             WHERE workspace_id = $2 AND id = $3 RETURNING last_seq, mode",
        )
        .bind(count)
        .bind(workspace.as_str())
        .bind(conversation_id.as_str())
        .bind(signed(floor))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let last = seq_of(reserved.try_get(0)?);
        let mode_text: String = reserved.try_get(1)?;
        let mut mode =
            ConversationMode::parse(&mode_text).ok_or_else(|| corrupt("mode", &mode_text))?;
        let first = last + 1 - events.len() as u64;
        let mut envelopes = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let seq = first + i as u64;
            match &event.payload {
                Payload::MessageReceived(m)
                | Payload::MessageDelivered(m)
                | Payload::MessageRead(m) => {
                    upsert_message(
                        &mut tx,
                        workspace,
                        conversation_id,
                        seq,
                        event.timestamp,
                        m,
                        event.payload_json.as_ref(),
                    )
                    .await?;
                }
                Payload::ModeChanged(change) => {
                    if change.from_mode != mode {
                        return Err(StoreError::Invalid(format!(
                            "events[{i}].payload.from_mode: the conversation is in {mode} mode, not {}",
                            change.from_mode
                        )));
                    }
                    mode = change.to_mode;
                }
                _ => {}
            }
            let env = event
                .into_envelope(
                    workspace,
                    Subject::Conversation(conversation_id.clone()),
                    seq,
                )
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            envelopes.push(env);
        }
        enqueue_webhooks(&mut tx, workspace, &envelopes).await?;
        let row = sqlx::query(concat!(
            "UPDATE conversations SET mode = $1 WHERE workspace_id = $2 AND id = $3 \
             RETURNING ",
            conversation_columns!()
        ))
        .bind(mode.as_str())
        .bind(workspace.as_str())
        .bind(conversation_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let conversation = conversation_row(&row)?;
        let last = last_seq_of(&envelopes);
        if let Err(reason) = publish.publish(&envelopes).await {
            let _ = tx.rollback().await;
            self.burn_or_keep(
                "conversations",
                workspace,
                conversation_id.as_str(),
                reason.burn_to(last),
            )
            .await;
            return reason.undone(envelopes);
        }
        if let Err(err) = tx.commit().await {
            self.burn_or_keep("conversations", workspace, conversation_id.as_str(), last)
                .await;
            return Err(err.into());
        }
        if floor > 0 {
            self.unburnt
                .settled("conversations", conversation_id.as_str(), last);
        }
        Ok(Ok(AppendedConversation {
            envelopes,
            conversation,
        }))
    }

    /// One try of [`Store::append_call_events`]: `Ok(Err(events))` when the bus already held
    /// the seqs it numbered (`NotPublished::Taken`), burnt past now, to number again.
    async fn append_call_events_once(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        events: Vec<NewEvent>,
        publish: &dyn PublishInOrder,
    ) -> Result<crate::Try<Appended>> {
        let count = i64::try_from(events.len())
            .map_err(|_| StoreError::Invalid("too many events".into()))?;
        let mut tx = self.scoped(workspace).await?;
        // The UPDATE is the seq authority: it locks the call's row until this transaction ends,
        // so another node's append to the same call waits here, and so does its publish. It
        // numbers after a burn this node could not write yet, if any (`Unburnt`).
        // Also after what the bus holds of the call: a batch of another node's that went out
        // although its transaction failed, its burn not landed yet.
        let floor = self
            .unburnt
            .floor("calls", call_id.as_str())
            .max(publish.seen_up_to(workspace, &Subject::Call(call_id.clone())));
        let reserved: Option<i64> = sqlx::query_scalar(
            "UPDATE calls SET last_seq = GREATEST(last_seq, $4) + $1 \
             WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress' RETURNING last_seq",
        )
        .bind(count)
        .bind(workspace.as_str())
        .bind(call_id.as_str())
        .bind(signed(floor))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(last) = reserved else {
            return Err(why_not(&mut tx, workspace, call_id).await?);
        };
        let first = seq_of(last) + 1 - events.len() as u64;
        let mut envelopes = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let env = event
                .into_envelope(workspace, Subject::Call(call_id.clone()), first + i as u64)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            envelopes.push(env);
        }
        // Published while the same transaction records what the events change (as in
        // `append_group`): the commit waits for both, and either failing burns the seqs.
        let recording = async {
            let (end, queued) = record_effects(&mut tx, workspace, call_id, &envelopes).await?;
            if let Some((status, at, _)) = end {
                end_call(&mut tx, workspace, call_id, status, at, &envelopes).await?;
            }
            let row = sqlx::query(concat!(
                "SELECT ",
                call_columns!(),
                " FROM calls WHERE workspace_id = $1 AND id = $2"
            ))
            .bind(workspace.as_str())
            .bind(call_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            Ok((call_row(&row)?, queued))
        };
        let (published, recorded) = futures::join!(publish.publish(&envelopes), recording);
        let last = last_seq_of(&envelopes);
        let (call, webhooks_queued) = match recorded {
            Ok(recorded) => recorded,
            Err(err) => {
                let _ = tx.rollback().await;
                self.burn_or_keep("calls", workspace, call_id.as_str(), last)
                    .await;
                return Err(err);
            }
        };
        if let Err(reason) = published {
            let _ = tx.rollback().await;
            // Part of the batch may still reach subscribers (a publish that timed out can land
            // later): its seqs are never handed out again. Seqs the bus held already (another
            // node's batch the store never recorded) are burnt too, and the events numbered
            // after them.
            self.burn_or_keep("calls", workspace, call_id.as_str(), reason.burn_to(last))
                .await;
            return reason.undone(envelopes);
        }
        if let Err(err) = tx.commit().await {
            // The batch went out; the database may have lost it (a connection lost with the
            // commit on its way): its seqs are never handed out again either.
            self.burn_or_keep("calls", workspace, call_id.as_str(), last)
                .await;
            return Err(err.into());
        }
        if floor > 0 {
            self.unburnt.settled("calls", call_id.as_str(), last);
        }
        Ok(Ok(Appended {
            envelopes,
            call,
            webhooks_queued,
        }))
    }

    /// Moves the subject's last seq to at least `last`, so that seqs of a batch whose publish
    /// failed are never reused. `table` is `calls` or `conversations` (ours, not input).
    /// One group commit of [`Store::append_calls_events`]: fills `out` for the calls it
    /// appends or refuses, and returns the calls it left alone because another transaction held
    /// them (none when `wait`, which waits for them instead).
    async fn append_group(
        &self,
        workspace: &WorkspaceId,
        mut wanted: Group,
        publish: &[&dyn PublishInOrder],
        out: &mut [Option<Result<Appended>>],
        wait: bool,
    ) -> Result<Group> {
        if wanted.is_empty() {
            return Ok(Group::new());
        }
        let mut tx = self.scoped(workspace).await?;
        let ids: Vec<String> = wanted.keys().cloned().collect();
        let counts: Vec<i64> = wanted.values().map(|(_, e)| e.len() as i64).collect();
        // After a burn this node could not write yet, if any (`Unburnt`).
        // After what the bus holds of each call, too (as in `append_call_events_once`).
        let mut floors: Vec<i64> = Vec::with_capacity(ids.len());
        for (id, (i, _)) in &wanted {
            let call = CallId::parse(id).map_err(|e| corrupt("call id", e))?;
            let seen = publish[*i].seen_up_to(workspace, &Subject::Call(call));
            floors.push(signed(self.unburnt.floor("calls", id).max(seen)));
        }
        // The seq authority, as in `append_call_events`: each call's row is locked (in id
        // order, so two nodes' groups never deadlock) and stays locked until the group is
        // published and committed. Locking, numbering, reading the calls back and reading the
        // workspace's webhook endpoints are one statement, one round trip.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE calls SET last_seq = GREATEST(calls.last_seq, v.f) + v.n \
             FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS v(cid, n, f) \
             WHERE calls.workspace_id = $1 AND calls.id = v.cid AND calls.id IN \
             (SELECT id FROM calls WHERE workspace_id = $1 AND id = ANY($2) \
              AND status = 'in_progress' ORDER BY id FOR UPDATE{}) \
             RETURNING {}, {ENDPOINTS_COLUMN}",
            if wait { "" } else { " SKIP LOCKED" },
            call_columns!()
        )))
        .bind(workspace.as_str())
        .bind(&ids)
        .bind(&counts)
        .bind(&floors)
        .fetch_all(&mut *tx)
        .await?;
        let mut calls = std::collections::HashMap::new();
        for row in &rows {
            let call = call_row(row)?;
            calls.insert(call.id.as_str().to_owned(), call);
        }
        let endpoints = match rows.first() {
            Some(row) => endpoints_from_column(row)?,
            None => Endpoints::new(),
        };
        let mut busy = Group::new();
        if !wait && calls.len() < ids.len() {
            // In progress but not locked here: held by another transaction.
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT id FROM calls WHERE workspace_id = $1 AND id = ANY($2) \
                 AND status = 'in_progress'",
            )
            .bind(workspace.as_str())
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
            for id in live {
                if !calls.contains_key(&id)
                    && let Some(batch) = wanted.remove(&id)
                {
                    busy.insert(id, batch);
                }
            }
        }
        // Number each call's events; unknown and ended calls are refused alone.
        let mut numbered: Vec<(usize, CallId, Vec<Envelope>)> = Vec::new();
        for (id, (i, events)) in wanted {
            let call_id = CallId::parse(&id).map_err(|e| corrupt("call id", e))?;
            let Some(last) = calls.get(&id).map(|c| c.last_seq) else {
                out[i] = Some(Err(why_not(&mut tx, workspace, &call_id).await?));
                continue;
            };
            let first = last + 1 - events.len() as u64;
            let mut envelopes = Vec::with_capacity(events.len());
            for (k, event) in events.into_iter().enumerate() {
                match event.into_envelope(
                    workspace,
                    Subject::Call(call_id.clone()),
                    first + k as u64,
                ) {
                    Ok(env) => envelopes.push(env),
                    Err(e) => {
                        // Checked before any seq was taken; a refusal here is a payload that
                        // belongs elsewhere, and the group cannot leave a hole in this call.
                        tx.rollback().await?;
                        return Err(StoreError::Invalid(e.to_string()));
                    }
                }
            }
            numbered.push((i, call_id, envelopes));
        }
        // Once numbered, every call's batch goes to its own subject at once (each waits for its
        // acknowledgement) while the same transaction records what the events change: final
        // turns, ends, the outbox rows, the calls read back. Either failing rolls both back and
        // burns the seqs, as a failed publish always did; the commit waits for both. Done one
        // after the other, the writes' round trips (p99 2.4 ms on two shared cores) sat in
        // every frame's way to a node's streams (docs/benchmarks.md, "Several nodes").
        let publishing = futures::future::join_all(
            numbered
                .iter()
                .map(|(i, _, envelopes)| publish[*i].publish(envelopes)),
        );
        let recording = record_group_effects(&mut tx, workspace, &numbered, &endpoints);
        let (published, recorded) = futures::join!(publishing, recording);
        let (reread, webhooks_queued) = match recorded {
            Ok(recorded) => recorded,
            Err(err) => {
                let _ = tx.rollback().await;
                self.burn_group(workspace, &numbered).await;
                return Err(err);
            }
        };
        for call in reread {
            calls.insert(call.id.as_str().to_owned(), call);
        }
        if published.iter().any(Result::is_err) {
            let _ = tx.rollback().await;
            let failed = published.iter().find_map(|p| match p {
                Err(NotPublished::Failed(reason)) => Some(reason.clone()),
                _ => None,
            });
            for ((_, call_id, envelopes), result) in numbered.iter().zip(&published) {
                let own = last_seq_of(envelopes);
                let to = result.as_ref().err().map_or(own, |r| r.burn_to(own));
                self.burn_or_keep("calls", workspace, call_id.as_str(), to)
                    .await;
            }
            match failed {
                Some(reason) => {
                    for (i, _, _) in &numbered {
                        out[*i] = Some(Err(StoreError::Publish(reason.clone())));
                    }
                }
                // Only seqs another batch took (`NotPublished::Taken`), burnt past now: the
                // whole group is numbered again.
                None => {
                    for (i, call_id, envelopes) in numbered {
                        busy.insert(
                            call_id.as_str().to_owned(),
                            (i, envelopes.into_iter().map(NewEvent::from).collect()),
                        );
                    }
                }
            }
            return Ok(busy);
        }
        if let Err(err) = tx.commit().await {
            // The group went out; the database may have lost it: its seqs are never handed
            // out again.
            self.burn_group(workspace, &numbered).await;
            return Err(err.into());
        }
        if floors.iter().any(|f| *f > 0) {
            for (_, call_id, envelopes) in &numbered {
                self.unburnt
                    .settled("calls", call_id.as_str(), last_seq_of(envelopes));
            }
        }
        for (i, call_id, envelopes) in numbered {
            let call = calls
                .remove(call_id.as_str())
                .ok_or_else(|| corrupt("call", call_id.as_str()))?;
            out[i] = Some(Ok(Appended {
                envelopes,
                call,
                webhooks_queued,
            }));
        }
        Ok(busy)
    }

    /// Burns the seqs of a group whose transaction failed after its events may have gone out.
    async fn burn_group(
        &self,
        workspace: &WorkspaceId,
        numbered: &[(usize, CallId, Vec<Envelope>)],
    ) {
        for (_, call_id, envelopes) in numbered {
            self.burn_or_keep("calls", workspace, call_id.as_str(), last_seq_of(envelopes))
                .await;
        }
    }

    /// Moves the table row's `last_seq` past `last`, so that seqs of a batch that may have gone
    /// out are never handed out again; when the database is away, keeps the burn for this
    /// node's next numbering and retries it ([`Unburnt`]).
    async fn burn_or_keep(
        &self,
        table: &'static str,
        workspace: &WorkspaceId,
        id: &str,
        last: u64,
    ) {
        if let Err(err) = burn_on(&self.pool, table, workspace, id, last).await {
            tracing::warn!(
                table,
                error = %err,
                "a failed batch's seqs cannot be burnt now; numbering after them here, retrying"
            );
            self.unburnt.keep(&self.pool, table, workspace, id, last);
        }
    }
}

/// `UPDATE {table} SET last_seq = GREATEST(last_seq, last)` for one row, in its own transaction.
async fn burn_on(
    pool: &PgPool,
    table: &'static str,
    workspace: &WorkspaceId,
    id: &str,
    last: u64,
) -> Result<()> {
    let mut tx = scoped_on(pool, workspace).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET last_seq = GREATEST(last_seq, $1) WHERE workspace_id = $2 AND id = $3"
    )))
    .bind(signed(last))
    .bind(workspace.as_str())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One attempt's outcome, recorded in `tx` (scoped to the delivery's workspace): the message's
/// state, the endpoint's failing time, the attempt in its log, and on `410 Gone` the endpoint
/// disabled.
async fn record_attempt(tx: &mut sqlx::PgConnection, attempt: &Attempted<'_>) -> Result<()> {
    let Attempted {
        delivery: d,
        at,
        result,
        log,
    } = *attempt;
    let (status, next, last_status, error): (&str, DateTime<Utc>, Option<u16>, Option<&str>) =
        match result {
            DeliveryResult::Delivered { status } => ("delivered", at, Some(*status), None),
            DeliveryResult::RetryAt {
                at: next,
                status,
                error,
            } => ("pending", *next, *status, Some(error)),
            DeliveryResult::Abandon { status, error } => ("abandoned", at, *status, Some(error)),
            DeliveryResult::DisableEndpoint { status } => {
                ("abandoned", at, Some(*status), Some("410 Gone"))
            }
        };
    let first = d.first_attempt_at.unwrap_or(at);
    let endpoint_id = match &d.target {
        DeliveryTarget::Endpoint(id) => id,
        DeliveryTarget::Callback(_) => {
            sqlx::query(
                    "UPDATE callback_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
                     first_attempt_at = COALESCE(first_attempt_at, $3), last_status = $4, last_error = $5 \
                     WHERE workspace_id = $6 AND id = $7 AND next_attempt_at = $8",
                )
                .bind(status)
                .bind(next)
                .bind(first)
                .bind(last_status.map(i32::from))
                .bind(error)
                .bind(d.workspace_id.as_str())
                .bind(&d.event_id)
                .bind(d.lease_until)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
    };
    sqlx::query(
            "UPDATE webhook_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             first_attempt_at = COALESCE(first_attempt_at, $3), last_status = $4, last_error = $5 \
             WHERE workspace_id = $6 AND endpoint_id = $7 AND event_id = $8 AND next_attempt_at = $9",
        )
        .bind(status)
        .bind(next)
        .bind(first)
        .bind(last_status.map(i32::from))
        .bind(error)
        .bind(d.workspace_id.as_str())
        .bind(endpoint_id)
        .bind(&d.event_id)
        .bind(d.lease_until)
        .execute(&mut *tx)
        .await?;
    // Since when its attempts have all failed: cleared by a delivery.
    let failing_since = match result {
        DeliveryResult::Delivered { .. } => None,
        _ => Some(at),
    };
    sqlx::query(
        // Only a row that changes is written (and locked): a batch holds what it locks until
        // it commits, and most attempts change nothing here.
        "UPDATE webhook_endpoints SET failing_since = $3 WHERE workspace_id = $1 AND id = $2 \
             AND (failing_since IS NULL) = ($3::TIMESTAMPTZ IS NOT NULL)",
    )
    .bind(d.workspace_id.as_str())
    .bind(endpoint_id)
    .bind(failing_since)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
            "INSERT INTO webhook_attempts (workspace_id, endpoint_id, event_id, attempted_at, status_code, \
             latency_ms, error_kind, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d.workspace_id.as_str())
        .bind(endpoint_id)
        .bind(&d.event_id)
        .bind(at)
        .bind(last_status.map(i32::from))
        .bind(i64::try_from(log.latency_ms).unwrap_or(i64::MAX))
        .bind(log.error_kind.as_deref())
        .bind(&log.response_body)
        .execute(&mut *tx)
        .await?;
    if let DeliveryResult::DisableEndpoint { .. } = result {
        sqlx::query(
            "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2 \
                 WHERE workspace_id = $3 AND id = $4",
        )
        .bind(at)
        .bind("the endpoint answered 410 Gone")
        .bind(d.workspace_id.as_str())
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_outbox SET status = 'abandoned', last_error = '410 Gone' \
                 WHERE workspace_id = $1 AND endpoint_id = $2 AND status = 'pending'",
        )
        .bind(d.workspace_id.as_str())
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Backend;
    use crate::testing::PgTestDb;
    use std::sync::Arc;

    /// A test database; `open` connects anew as the gateway's role.
    struct Db(PgTestDb);

    #[async_trait]
    impl Backend for Db {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(self.0.store().await)
        }
    }

    async fn fresh() -> Option<Db> {
        PgTestDb::create("PostgreSQL store conformance")
            .await
            .map(Db)
    }

    crate::conformance_tests!(optional fresh);

    /// Connects to the test database as the gateway's role, with a pool of one connection.
    async fn one_connection(db: &PgTestDb) -> PgPool {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.app_url())
            .await
            .unwrap()
    }

    /// Publishes a batch, then takes the database away from the gateway while the batch's
    /// transaction is still open (new connections refused, every open one ended): the batch
    /// went out, and then its commit fails, and so does any burn of its seqs.
    struct LoseTheDatabase {
        name: String,
        seen: std::sync::Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl PublishInOrder for LoseTheDatabase {
        async fn publish(&self, envelopes: &[Envelope]) -> std::result::Result<(), NotPublished> {
            self.seen
                .lock()
                .unwrap()
                .extend(envelopes.iter().map(|e| e.seq));
            // The transaction's own writes finish first (they run beside the publish), so that
            // what is lost is the commit.
            tokio::time::sleep(Duration::from_millis(200)).await;
            allow_connections(&self.name, false).await;
            Ok(())
        }
    }

    async fn allow_connections(database: &str, allowed: bool) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&crate::testing::admin_url())
            .await
            .unwrap();
        // The name is the test's own (hex), not input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS {allowed}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        if !allowed {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(database)
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }

    fn dtmf(digits: &str) -> NewEvent {
        NewEvent::new(
            time::now(),
            Payload::parse("call.dtmf", serde_json::json!({"digits": digits})).unwrap(),
        )
    }

    /// docs/operations.md's failure "PostgreSQL lost after a batch was published, before its
    /// commit": the batch's seqs could not be burnt, and the call's next batch took them again,
    /// so every node dropped it as already seen. Both ways in (one call, a group) are tried.
    #[tokio::test]
    async fn seqs_that_went_out_before_the_database_was_lost_are_never_handed_out_again() {
        let Some(db) = PgTestDb::create("PostgreSQL lost between a publish and its commit").await
        else {
            return;
        };
        let store = db.store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let call = crate::conformance::new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let first = store
            .append_call_events(&ws.id, &call.id, vec![dtmf("1")], &crate::NoPublish)
            .await
            .unwrap();
        assert_eq!(first.envelopes[0].seq, 1);

        // Once through `append_call_events`, once through a group.
        let mut went_out = 1;
        for group in [false, true] {
            let losing = LoseTheDatabase {
                name: db.name.clone(),
                seen: std::sync::Mutex::new(Vec::new()),
            };
            let lost = if group {
                store
                    .append_calls_events(
                        &ws.id,
                        vec![(call.id.clone(), vec![dtmf("2")])],
                        &[&losing as &dyn PublishInOrder],
                    )
                    .await
                    .and_then(|mut each| each.remove(0))
            } else {
                store
                    .append_call_events(&ws.id, &call.id, vec![dtmf("2")], &losing)
                    .await
            };
            assert!(lost.is_err(), "the commit was lost: {lost:?}");
            let seen = losing.seen.lock().unwrap().clone();
            assert_eq!(seen.len(), 1, "the batch went out");
            assert!(seen[0] > went_out, "{seen:?} after {went_out}");
            went_out = seen[0];

            allow_connections(&db.name, true).await;
            // The pool's connections ended with the database's; the first tries may meet one.
            let mut next = None;
            for _ in 0..20 {
                match store
                    .append_call_events(&ws.id, &call.id, vec![dtmf("3")], &crate::NoPublish)
                    .await
                {
                    Ok(appended) => {
                        next = Some(appended.envelopes[0].seq);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let next = next.expect("the database is back");
            assert!(
                next > went_out,
                "seq {went_out} went out before the database was lost; the next batch took {next}"
            );
            went_out = next;
        }
    }

    /// A call is found by its key however much its workspace grew since the connection first
    /// looked one up. PostgreSQL plans a prepared statement generically after five runs and
    /// keeps that plan for the connection's life: planned while the workspace had one call, the
    /// lookup went on an index of `workspace_id` and, thousands of calls later, read every call
    /// of the workspace for each lookup (2.2 ms each, PostgreSQL at 1.4 cores while the wide
    /// benchmark opened 16,000 streams on two nodes). The plan checked here is the one the
    /// server holds for the store's own statement on its own connection.
    #[tokio::test]
    async fn a_lookup_by_id_stays_on_the_primary_key_as_the_workspace_grows() {
        let Some(db) = PgTestDb::create("PostgreSQL plans as a workspace grows").await else {
            return;
        };
        let store = PgStore::connect(&db.app_url(), 1).await.unwrap();
        let ws = store.ensure_workspace("growing").await.unwrap();
        let call = crate::conformance::new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        for _ in 0..8 {
            assert!(store.call(&ws.id, &call.id).await.unwrap().is_some());
        }
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.admin_db_url())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO calls (id, workspace_id, phone, direction, transport, status, \
             live_conversation_token, started_at) SELECT 'call_grown' || g, $1, '+1', 'inbound', \
             'sip', 'in_progress', 'tok_grown' || g, now() FROM generate_series(1, 5000) g",
        )
        .bind(ws.id.as_str())
        .execute(&admin)
        .await
        .unwrap();
        assert!(store.call(&ws.id, &call.id).await.unwrap().is_some());

        let mut conn = store.pool.acquire().await.unwrap();
        let name: String = sqlx::query_scalar(
            "SELECT name FROM pg_prepared_statements \
             WHERE statement LIKE '%FROM calls WHERE workspace_id = $1 AND id = $2'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE {name}('{}', '{}')",
            ws.id.as_str(),
            call.id.as_str()
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("calls_pkey") && !plan.contains("Index Cond: (workspace_id"),
            "the lookup reads the workspace's calls instead of one:\n{plan}"
        );
    }

    #[tokio::test]
    async fn row_level_security_shows_a_workspace_only_its_own_rows() {
        let Some(db) = PgTestDb::create("PostgreSQL row-level security").await else {
            return;
        };
        let store = db.store().await;
        let a = store.ensure_workspace("a").await.unwrap();
        let b = store.ensure_workspace("b").await.unwrap();
        for ws in [&a, &b] {
            let call = Call {
                id: CallId::new(),
                workspace_id: ws.id.clone(),
                phone: Phone::parse("+14155550123").unwrap(),
                direction: Direction::Inbound,
                transport: Transport::Sip,
                external_id: None,
                status: CallStatus::InProgress,
                live_conversation_token: Call::new_live_conversation_token(),
                screening: None,
                started_at: time::now(),
                ended_at: None,
                end_reason: None,
                last_seq: 0,
            };
            store.create_call(&call).await.unwrap();
        }
        let pool = one_connection(&db).await;

        // Without the setting: nothing is visible, and an insert is refused by the policy.
        let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(visible, 0);
        let refused = sqlx::query(
            "INSERT INTO conversations (id, workspace_id, channel, participants, mode, created_at) \
             VALUES ('conv_x', $1, 'sms', '[]', 'ai', now())",
        )
        .bind(a.id.as_str())
        .execute(&pool)
        .await
        .unwrap_err();
        assert!(
            refused.to_string().contains("row-level security"),
            "{refused}"
        );

        // Scoped to A: A's call only, and B's rows cannot be written either.
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.workspace_id', $1, true)")
            .bind(a.id.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        let seen: Vec<String> = sqlx::query_scalar("SELECT workspace_id FROM calls")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_eq!(seen, [a.id.as_str().to_owned()]);
        let touched = sqlx::query("UPDATE calls SET status = 'failed' WHERE workspace_id = $1")
            .bind(b.id.as_str())
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(touched.rows_affected(), 0, "B's rows are invisible to A");
        tx.commit().await.unwrap();

        // The same pooled connection, after A's transaction, sees nothing again.
        let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM calls")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            visible, 0,
            "the workspace setting leaked to the next use of the connection"
        );
        let setting: Option<String> =
            sqlx::query_scalar("SELECT nullif(current_setting('app.workspace_id', true), '')")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(setting, None);
    }

    #[tokio::test]
    async fn the_gateway_role_is_plain_and_every_tenant_table_forces_row_level_security() {
        let Some(db) = PgTestDb::create("PostgreSQL roles and policies").await else {
            return;
        };
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.admin_db_url())
            .await
            .unwrap();
        let (superuser, bypass): (bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'callstream_app'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert!(!superuser && !bypass, "callstream_app must be a plain role");
        let owns: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
             WHERE r.rolname = 'callstream_app'",
        )
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(owns, 0, "callstream_app owns nothing");
        let tables: Vec<(String, bool, bool)> = sqlx::query_as(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' \
             AND (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'workspace_id' AND NOT a.attisdropped) \
                  OR c.relname = 'workspaces')",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        assert!(tables.len() >= 12, "{tables:?}");
        for (table, enabled, forced) in tables {
            assert!(
                enabled && forced,
                "{table}: row-level security must be enabled and forced"
            );
        }
    }
}
