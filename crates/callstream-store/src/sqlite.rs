use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use callstream_core::event::Role;
use callstream_core::id::KeyId;
use callstream_core::{
    Call, CallId, CallStatus, Channel, Conversation, ConversationId, ConversationMode, Direction,
    Envelope, KeyKind, Payload, Phone, Screening, Subject, Transport, Workspace, WorkspaceId, time,
};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::{
    Appended, AppendedConversation, Attempted, AudioStreamRecord, CallFilter, CallbackMessage,
    CallbackMethod, ConversationFilter, Delivery, DeliveryResult, DeliveryTarget, EndpointChange,
    KeyRecord, MessageFilter, MessageRecord, MessageState, NewEvent, PublishInOrder, Requeue,
    Result, SessionRecord, Skip, Store, StoreError, StreamTokenRecord, TranscriptTurn,
    WebhookAttempt, WebhookEndpoint, WebhookMessage, check_call_batch, last_seq_of, renumbering,
};
use callstream_core::audio::{AudioTrack, StreamStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store: one SQLite file in write-ahead-log mode.
///
/// WAL lets readers run beside the one writer, and lets `callstream keys create` write from
/// another process while the server runs. Every write transaction starts with `BEGIN IMMEDIATE`
/// so that it takes the write lock up front and waits on `busy_timeout`, instead of failing with
/// `SQLITE_BUSY` when it upgrades from a read.
///
/// Writes go through one connection of their own and queue for it in the process, in order;
/// reads have a pool of read-only connections that never wait for a writer. Measured in the soak
/// (`bench/soak.sh`, docs/benchmarks.md): with one pool of 8 connections for both, writes that
/// queued on SQLite's lock (whose busy handler sleeps up to 100 ms between tries) held every
/// connection, and key lookups and call loads waited seconds behind them.
#[derive(Clone)]
pub struct SqliteStore {
    /// Every write transaction and statement: one connection.
    write: SqlitePool,
    /// Reads: read-only connections, so that a write sent here by mistake fails at once.
    read: SqlitePool,
    /// Seq reservations on their way to [`reserver`], which commits them in groups.
    reservations: tokio::sync::mpsc::Sender<Reservation>,
}

/// Read connections: a query waits for one only when this many reads are already running.
const READERS: u32 = 8;

/// How much a commit waits for the disk (SQLite's `synchronous`, in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every commit is on disk before it returns (an fsync of the log per commit): what was
    /// accepted survives a power loss or an operating-system crash, not only a process crash.
    #[default]
    Full,
    /// Commits reach the disk at checkpoints: a crash of the process loses nothing, but a power
    /// loss or an operating-system crash may lose the last commits (never corrupting the file).
    Normal,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, with every commit on disk before it
    /// returns, and runs pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::Full).await
    }

    /// [`SqliteStore::open`] with the given durability.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        let synchronous = match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.create_if_missing(false).read_only(true))
            .await?;
        let (reservations, queue) = tokio::sync::mpsc::channel(RESERVATIONS_PER_COMMIT * 4);
        tokio::spawn(reserver(write.clone(), queue));
        Ok(Self {
            write,
            read,
            reservations,
        })
    }
}

fn ts(text: &str) -> Result<DateTime<Utc>> {
    time::parse(text).map_err(|e| StoreError::Corrupt(format!("timestamp {text:?}: {e}")))
}

/// Whether `workspace` has the webhook endpoint `id`.
async fn has_endpoint(
    conn: &mut sqlx::SqliteConnection,
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

fn endpoint_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<WebhookEndpoint> {
    let types: Option<String> = row.try_get("event_types")?;
    Ok(WebhookEndpoint {
        id: row.try_get("id")?,
        workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
            .map_err(|e| corrupt("workspace id", e))?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        event_types: types
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt("event types", e))?,
        description: row.try_get("description")?,
        created_at: ts(row.try_get("created_at")?)?,
        disabled_at: ts_opt(row.try_get("disabled_at")?)?,
        disabled_reason: row.try_get("disabled_reason")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_secret_until: ts_opt(row.try_get("previous_secret_until")?)?,
        failing_since: ts_opt(row.try_get("failing_since")?)?,
    })
}

fn ts_opt(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.as_deref().map(ts).transpose()
}

fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {value}"))
}

fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn workspace_row(row: &SqliteRow) -> Result<Workspace> {
    Ok(Workspace {
        id: WorkspaceId::parse(row.try_get("id")?).map_err(|e| corrupt("workspace id", e))?,
        name: row.try_get("name")?,
        auth_id: row.try_get("auth_id")?,
        created_at: ts(row.try_get("created_at")?)?,
    })
}

fn key_row(row: &SqliteRow) -> Result<KeyRecord> {
    let hash: Vec<u8> = row.try_get("key_hash")?;
    let kind: &str = row.try_get("kind")?;
    Ok(KeyRecord {
        id: KeyId::parse(row.try_get("id")?).map_err(|e| corrupt("key id", e))?,
        workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
            .map_err(|e| corrupt("workspace id", e))?,
        kind: KeyKind::parse(kind).ok_or_else(|| corrupt("key kind", kind))?,
        key_hash: hash
            .try_into()
            .map_err(|_| corrupt("key hash", "not 32 bytes"))?,
        hint: row.try_get("hint")?,
        created_at: ts(row.try_get("created_at")?)?,
        expires_at: ts_opt(row.try_get("expires_at")?)?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        revoked_at: ts_opt(row.try_get("revoked_at")?)?,
    })
}

fn call_row(row: &SqliteRow) -> Result<Call> {
    let direction: &str = row.try_get("direction")?;
    let transport: &str = row.try_get("transport")?;
    let status: &str = row.try_get("status")?;
    Ok(Call {
        id: CallId::parse(row.try_get("id")?).map_err(|e| corrupt("call id", e))?,
        workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
            .map_err(|e| corrupt("workspace id", e))?,
        phone: Phone::parse(row.try_get("phone")?).map_err(|e| corrupt("phone", e))?,
        direction: Direction::parse(direction).ok_or_else(|| corrupt("direction", direction))?,
        transport: Transport::parse(transport).ok_or_else(|| corrupt("transport", transport))?,
        external_id: row.try_get("external_id")?,
        status: CallStatus::parse(status).ok_or_else(|| corrupt("status", status))?,
        live_conversation_token: row.try_get("live_conversation_token")?,
        started_at: ts(row.try_get("started_at")?)?,
        ended_at: ts_opt(row.try_get("ended_at")?)?,
        end_reason: row.try_get("end_reason")?,
        last_seq: seq_of(row.try_get("last_seq")?),
        screening: match (
            ts_opt(row.try_get("screening_ended_at")?)?,
            row.try_get::<Option<String>, _>("screening_msg")?,
        ) {
            (Some(ended_at), Some(msg)) => Some(Screening { ended_at, msg }),
            _ => None,
        },
    })
}

fn audio_stream_row(row: &SqliteRow) -> Result<AudioStreamRecord> {
    let track: &str = row.try_get("audio_track")?;
    let status: &str = row.try_get("status")?;
    let method: &str = row.try_get("status_callback_method")?;
    Ok(AudioStreamRecord {
        stream_id: row.try_get("id")?,
        workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
            .map_err(|e| corrupt("workspace id", e))?,
        call_id: CallId::parse(row.try_get("call_id")?).map_err(|e| corrupt("call id", e))?,
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
        created_at: ts(row.try_get("created_at")?)?,
        start_time: ts_opt(row.try_get("start_time")?)?,
        end_time: ts_opt(row.try_get("end_time")?)?,
        end_reason: row.try_get("end_reason")?,
    })
}

/// Ends the call's screening phase, the first time only.
async fn end_screening(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    call: &CallId,
    at: &DateTime<Utc>,
    msg: &str,
) -> Result<()> {
    sqlx::query("UPDATE calls SET screening_ended_at = $1, screening_msg = $2 WHERE id = $3 AND screening_ended_at IS NULL")
        .bind(time::format(at))
        .bind(msg)
        .bind(call.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn turn_row(row: &SqliteRow) -> Result<TranscriptTurn> {
    let role: &str = row.try_get("role")?;
    Ok(TranscriptTurn {
        turn_id: callstream_core::TurnId::parse(row.try_get("turn_id")?)
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
        ts: ts(row.try_get("ts")?)?,
    })
}

fn conversation_row(row: &SqliteRow) -> Result<Conversation> {
    let channel: &str = row.try_get("channel")?;
    let mode: &str = row.try_get("mode")?;
    let participants: &str = row.try_get("participants")?;
    Ok(Conversation {
        id: ConversationId::parse(row.try_get("id")?).map_err(|e| corrupt("conversation id", e))?,
        workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
            .map_err(|e| corrupt("workspace id", e))?,
        channel: Channel::parse(channel).ok_or_else(|| corrupt("channel", channel))?,
        participants: serde_json::from_str(participants).map_err(|e| corrupt("participants", e))?,
        mode: ConversationMode::parse(mode).ok_or_else(|| corrupt("mode", mode))?,
        created_at: ts(row.try_get("created_at")?)?,
        last_seq: seq_of(row.try_get("last_seq")?),
    })
}

/// `SELECT <every call column> FROM calls <rest>`, as one static string (sqlx takes only static
/// SQL without an explicit assertion, which keeps injection out by construction).
macro_rules! call_select {
    ($rest:literal $(,)?) => {
        concat!(
            "SELECT id, workspace_id, phone, direction, transport, external_id, status, \
             live_conversation_token, started_at, ended_at, end_reason, last_seq, \
             screening_ended_at, screening_msg FROM calls ",
            $rest
        )
    };
}

#[async_trait]
impl Store for SqliteStore {
    async fn ensure_workspace(&self, name: &str) -> Result<Workspace> {
        let candidate = Workspace {
            id: WorkspaceId::new(),
            name: name.to_owned(),
            auth_id: Workspace::new_auth_id(),
            created_at: time::now(),
        };
        // INSERT OR IGNORE then SELECT makes concurrent first uses of one name agree on one row.
        sqlx::query("INSERT OR IGNORE INTO workspaces (id, name, auth_id, created_at) VALUES ($1, $2, $3, $4)")
            .bind(candidate.id.as_str())
            .bind(&candidate.name)
            .bind(&candidate.auth_id)
            .bind(time::format(&candidate.created_at))
            .execute(&self.write)
            .await?;
        let row =
            sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE name = $1")
                .bind(name)
                .fetch_one(&self.read)
                .await?;
        workspace_row(&row)
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        let row = sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(workspace_row).transpose()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, workspace_id, kind, key_hash, hint, created_at, expires_at, admin) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(key.id.as_str())
        .bind(key.workspace_id.as_str())
        .bind(key.kind.as_str())
        .bind(&key.key_hash[..])
        .bind(&key.hint)
        .bind(time::format(&key.created_at))
        .bind(key.expires_at.as_ref().map(time::format))
        .bind(i64::from(key.admin))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT id, workspace_id, kind, key_hash, hint, created_at, revoked_at, expires_at, admin \
             FROM api_keys WHERE key_hash = $1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(key_row).transpose()
    }

    async fn insert_stream_token(&self, t: &StreamTokenRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO stream_tokens (token_hash, workspace_id, call_id, key_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&t.token_hash[..])
        .bind(t.workspace_id.as_str())
        .bind(t.call_id.as_str())
        .bind(t.key_id.as_str())
        .bind(time::format(&t.created_at))
        .bind(time::format(&t.expires_at))
        .execute(&self.write)
        .await?;
        // Expired tokens are useless; clear them out as new ones arrive.
        sqlx::query("DELETE FROM stream_tokens WHERE expires_at < $1")
            .bind(time::format(&(time::now() - chrono::Duration::days(1))))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn stream_token_by_hash(&self, hash: &[u8; 32]) -> Result<Option<StreamTokenRecord>> {
        let row = sqlx::query(
            "SELECT t.token_hash, t.workspace_id, t.call_id, t.key_id, t.created_at, t.expires_at \
             FROM stream_tokens t JOIN api_keys k ON k.id = t.key_id \
             WHERE t.token_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token_hash: Vec<u8> = row.try_get("token_hash")?;
        Ok(Some(StreamTokenRecord {
            token_hash: token_hash
                .try_into()
                .map_err(|_| corrupt("token hash", "not 32 bytes"))?,
            workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
                .map_err(|e| corrupt("workspace id", e))?,
            call_id: CallId::parse(row.try_get("call_id")?).map_err(|e| corrupt("call id", e))?,
            key_id: KeyId::parse(row.try_get("key_id")?).map_err(|e| corrupt("key id", e))?,
            created_at: ts(row.try_get("created_at")?)?,
            expires_at: ts(row.try_get("expires_at")?)?,
        }))
    }

    async fn insert_session(&self, t: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, workspace_id, key_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&t.token_hash[..])
        .bind(t.workspace_id.as_str())
        .bind(t.key_id.as_str())
        .bind(time::format(&t.created_at))
        .bind(time::format(&t.expires_at))
        .execute(&self.write)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(time::format(&time::now()))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn session_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT s.token_hash, s.workspace_id, s.key_id, s.created_at, s.expires_at \
             FROM sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.token_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token_hash: Vec<u8> = row.try_get("token_hash")?;
        Ok(Some(SessionRecord {
            token_hash: token_hash
                .try_into()
                .map_err(|_| corrupt("session hash", "not 32 bytes"))?,
            workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
                .map_err(|e| corrupt("workspace id", e))?,
            key_id: KeyId::parse(row.try_get("key_id")?).map_err(|e| corrupt("key id", e))?,
            created_at: ts(row.try_get("created_at")?)?,
            expires_at: ts(row.try_get("expires_at")?)?,
        }))
    }

    async fn delete_session(&self, hash: &[u8; 32]) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(&hash[..])
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn create_call(&self, call: &Call) -> Result<()> {
        // The write lock first: no other call with this external id can start meanwhile.
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(external_id) = &call.external_id {
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
        .bind(time::format(&call.started_at))
        .bind(call.ended_at.as_ref().map(time::format))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn call(&self, workspace: &WorkspaceId, id: &CallId) -> Result<Option<Call>> {
        let sql = call_select!("WHERE workspace_id = $1 AND id = $2");
        let row = sqlx::query(sql)
            .bind(workspace.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn call_end_event(
        &self,
        workspace: &WorkspaceId,
        id: &CallId,
    ) -> Result<Option<Vec<u8>>> {
        let event: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT end_event FROM calls WHERE workspace_id = $1 AND id = $2")
                .bind(workspace.as_str())
                .bind(id.as_str())
                .fetch_optional(&self.read)
                .await?;
        Ok(event.flatten())
    }

    async fn calls(&self, workspace: &WorkspaceId, filter: &CallFilter) -> Result<Vec<Call>> {
        // `started_at` is stored in one fixed-width RFC 3339 form: text order is time order.
        let sql = call_select!(
            "WHERE workspace_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR started_at >= $3) \
             AND ($5 = 0 OR status <> 'in_progress') AND ($6 IS NULL OR phone LIKE $6) \
             AND ($7 IS NULL OR (started_at, id) < \
                  (SELECT started_at, id FROM calls WHERE workspace_id = $1 AND id = $7)) \
             ORDER BY started_at DESC, id DESC LIMIT $4",
        );
        let rows = sqlx::query(sql)
            .bind(workspace.as_str())
            .bind(filter.status.map(CallStatus::as_str))
            .bind(filter.since.as_ref().map(time::format))
            .bind(i64::from(filter.limit))
            .bind(filter.ended)
            .bind(filter.phone.as_ref().map(|p| format!("%{p}%")))
            .bind(filter.before.as_ref().map(CallId::as_str))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(call_row).collect()
    }

    async fn call_by_live_token(
        &self,
        workspace: &WorkspaceId,
        token: &str,
    ) -> Result<Option<Call>> {
        let row = sqlx::query(call_select!(
            "WHERE workspace_id = $1 AND live_conversation_token = $2"
        ))
        .bind(workspace.as_str())
        .bind(token)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn call_by_external_id(
        &self,
        workspace: &WorkspaceId,
        external_id: &str,
    ) -> Result<Option<Call>> {
        let row = sqlx::query(call_select!(
            "WHERE workspace_id = $1 AND external_id = $2 ORDER BY started_at DESC LIMIT 1"
        ))
        .bind(workspace.as_str())
        .bind(external_id)
        .fetch_optional(&self.read)
        .await?;
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

    async fn reserve_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        block: u64,
    ) -> Result<(Call, u64)> {
        let block =
            i64::try_from(block).map_err(|_| StoreError::Invalid("block too large".into()))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let reservation = Reservation {
            workspace: workspace.clone(),
            call: call_id.clone(),
            block,
            answer,
        };
        match self.reservations.send(reservation).await {
            Ok(()) => answered
                .await
                .map_err(|_| StoreError::Invalid("the store is closing".into()))?,
            // The committing task is gone (its runtime ended): reserve alone.
            Err(tokio::sync::mpsc::error::SendError(r)) => reserve_alone(&self.write, &r).await,
        }
    }

    async fn record_call_events(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        envelopes: &[Envelope],
    ) -> Result<Option<Call>> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let mut end: Option<(CallStatus, DateTime<Utc>, u64)> = None;
        for env in envelopes {
            match &env.payload {
                Payload::Transcription(t) => {
                    if let Some(turn) = TranscriptTurn::from_event(env.seq, env.timestamp, t) {
                        insert_turn(&mut tx, call_id, &turn).await?;
                    }
                }
                Payload::Completed(_) => {
                    end = Some((CallStatus::Completed, env.timestamp, env.seq))
                }
                Payload::Failed(_) => end = Some((CallStatus::Failed, env.timestamp, env.seq)),
                Payload::ScreeningEnded(screening) => {
                    end_screening(&mut tx, call_id, &env.timestamp, &screening.msg).await?;
                }
                _ => {}
            }
        }
        enqueue_webhooks(&mut tx, workspace, envelopes).await?;
        let mut ended = None;
        if let Some((status, at, seq)) = end {
            let terminal = envelopes.iter().rfind(|e| e.payload.is_terminal());
            sqlx::query(
                "UPDATE calls SET status = $1, ended_at = $2, last_seq = $3, end_reason = $4, \
                 end_event = $5 WHERE workspace_id = $6 AND id = $7",
            )
            .bind(status.as_str())
            .bind(time::format(&at))
            .bind(i64::try_from(seq).unwrap_or(i64::MAX))
            .bind(terminal.and_then(|e| e.payload.end_reason()))
            .bind(terminal.map(Envelope::to_json))
            .bind(workspace.as_str())
            .bind(call_id.as_str())
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(call_select!("WHERE id = $1"))
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
        _workspace: &WorkspaceId,
        call: &CallId,
        reserved_end: u64,
        used: u64,
    ) -> Result<()> {
        sqlx::query("UPDATE calls SET last_seq = $1 WHERE id = $2 AND last_seq = $3 AND status = 'in_progress'")
            .bind(i64::try_from(used).unwrap_or(i64::MAX))
            .bind(call.as_str())
            .bind(i64::try_from(reserved_end).unwrap_or(i64::MAX))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn has_webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<bool> {
        let found = sqlx::query("SELECT 1 FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL LIMIT 1")
            .bind(workspace.as_str())
            .fetch_optional(&self.read)
            .await?;
        Ok(found.is_some())
    }

    async fn transcript(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
    ) -> Result<Vec<TranscriptTurn>> {
        let rows = sqlx::query(
            "SELECT t.turn_id, t.seq, t.role, t.text, t.confidence, t.segment_start, t.segment_end, t.ts \
             FROM transcript_turns t JOIN calls c ON c.id = t.call_id \
             WHERE c.workspace_id = $1 AND c.id = $2 ORDER BY t.seq",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(turn_row).collect()
    }

    async fn create_conversation(&self, c: &Conversation) -> Result<()> {
        let participants = serde_json::to_string(&c.participants)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO conversations (id, workspace_id, channel, participants, mode, created_at, last_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(c.id.as_str())
        .bind(c.workspace_id.as_str())
        .bind(c.channel.as_str())
        .bind(participants)
        .bind(c.mode.as_str())
        .bind(time::format(&c.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn conversation(
        &self,
        workspace: &WorkspaceId,
        id: &ConversationId,
    ) -> Result<Option<Conversation>> {
        let row = sqlx::query(
            "SELECT id, workspace_id, channel, participants, mode, created_at, last_seq \
             FROM conversations WHERE workspace_id = $1 AND id = $2",
        )
        .bind(workspace.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(conversation_row).transpose()
    }

    async fn conversations(
        &self,
        workspace: &WorkspaceId,
        filter: &ConversationFilter,
    ) -> Result<Vec<Conversation>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, channel, participants, mode, created_at, last_seq FROM conversations \
             WHERE workspace_id = $1 AND ($2 IS NULL OR mode = $2) AND ($3 IS NULL OR channel = $3) \
             ORDER BY created_at DESC, id LIMIT $4",
        )
        .bind(workspace.as_str())
        .bind(filter.mode.map(ConversationMode::as_str))
        .bind(filter.channel.map(Channel::as_str))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.read)
        .await?;
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
        let rows = sqlx::query(
            "SELECT m.message_id, m.direction, m.text, m.status, m.payload, m.created_at, m.updated_at \
             FROM messages m JOIN conversations c ON c.id = m.conversation_id \
             WHERE c.workspace_id = $1 AND c.id = $2 ORDER BY m.first_seq",
        )
        .bind(workspace.as_str())
        .bind(conversation.as_str())
        .fetch_all(&self.read)
        .await?;
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
                    created_at: ts(row.try_get("created_at")?)?,
                    updated_at: ts(row.try_get("updated_at")?)?,
                })
            })
            .collect()
    }

    async fn create_webhook_endpoint(&self, e: &WebhookEndpoint) -> Result<()> {
        let types = e
            .event_types
            .as_ref()
            .map(|t| serde_json::to_string(t).unwrap_or_default());
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
        .bind(time::format(&e.created_at))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<Vec<WebhookEndpoint>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 ORDER BY created_at"
        )))
        .bind(workspace.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    async fn webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
    ) -> Result<Option<WebhookEndpoint>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2"
        )))
        .bind(workspace.as_str())
        .bind(id)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(endpoint_from_row).transpose()
    }

    async fn change_webhook_endpoint(
        &self,
        workspace: &WorkspaceId,
        id: &str,
        change: &EndpointChange,
        at: DateTime<Utc>,
    ) -> Result<Option<WebhookEndpoint>> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let found = has_endpoint(&mut tx, workspace, id).await?;
        if !found {
            return Ok(None);
        }
        if let Some(url) = &change.url {
            sqlx::query("UPDATE webhook_endpoints SET url = $1 WHERE id = $2")
                .bind(url)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(types) = &change.event_types {
            let types = types
                .as_ref()
                .map(|t| serde_json::to_string(t).unwrap_or_default());
            sqlx::query("UPDATE webhook_endpoints SET event_types = $1 WHERE id = $2")
                .bind(types)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(description) = &change.description {
            sqlx::query("UPDATE webhook_endpoints SET description = $1 WHERE id = $2")
                .bind(description)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        match change.enabled {
            Some(true) => {
                sqlx::query("UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(false) => {
                // Disabled once: a second disable keeps the first time and reason.
                sqlx::query(
                    "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2 \
                     WHERE id = $3 AND disabled_at IS NULL",
                )
                .bind(time::format(&at))
                .bind(change.disabled_reason.as_deref().unwrap_or("disabled"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            None => {}
        }
        if let Some((secret, until)) = &change.rotate {
            sqlx::query(
                "UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_until = $1, \
                 secret = $2 WHERE id = $3",
            )
            .bind(time::format(until))
            .bind(secret)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
        )))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        endpoint_from_row(&row).map(Some)
    }

    async fn delete_webhook_endpoint(&self, workspace: &WorkspaceId, id: &str) -> Result<bool> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let found = has_endpoint(&mut tx, workspace, id).await?;
        if found {
            for table in ["webhook_outbox", "webhook_attempts"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE endpoint_id = $1"
                )))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn due_deliveries_except(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
        skip: &Skip,
    ) -> Result<Vec<Delivery>> {
        let skip_endpoints = serde_json::to_string(&skip.endpoints).unwrap_or_default();
        let skip_workspaces = serde_json::to_string(
            &skip
                .workspaces
                .iter()
                .map(WorkspaceId::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        // Claim the due rows by pushing their next attempt to the end of the lease: a worker
        // that dies mid-delivery leaves them to be retried when the lease runs out.
        // A disabled endpoint's rows wait, pending, until it is enabled again.
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $1 \
             WHERE rowid IN (SELECT o.rowid FROM webhook_outbox o \
                             JOIN webhook_endpoints e ON e.id = o.endpoint_id AND e.disabled_at IS NULL \
                             WHERE o.status = 'pending' AND o.next_attempt_at <= $2 \
                             AND o.endpoint_id NOT IN (SELECT value FROM json_each($4)) \
                             AND o.workspace_id NOT IN (SELECT value FROM json_each($5)) \
                             ORDER BY o.next_attempt_at LIMIT $3) \
             RETURNING endpoint_id, event_id, workspace_id, payload, attempts, first_attempt_at",
        )
        .bind(time::format(&lease_until))
        .bind(time::format(&now))
        .bind(i64::from(limit))
        .bind(&skip_endpoints)
        .bind(&skip_workspaces)
        .fetch_all(&mut *tx)
        .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let endpoint_id: String = row.try_get("endpoint_id")?;
            let endpoint = sqlx::query(
                "SELECT url, secret, CASE WHEN previous_secret_until > $2 THEN previous_secret END AS previous_secret \
                 FROM webhook_endpoints WHERE id = $1",
            )
            .bind(&endpoint_id)
            .bind(time::format(&now))
            .fetch_one(&mut *tx)
            .await?;
            deliveries.push(Delivery {
                workspace_id: WorkspaceId::parse(row.try_get("workspace_id")?)
                    .map_err(|e| corrupt("workspace id", e))?,
                target: DeliveryTarget::Endpoint(endpoint_id),
                event_id: row.try_get("event_id")?,
                url: endpoint.try_get("url")?,
                secret: endpoint.try_get("secret")?,
                previous_secret: endpoint.try_get("previous_secret")?,
                payload: row.try_get("payload")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                first_attempt_at: ts_opt(row.try_get("first_attempt_at")?)?,
                lease_until,
            });
        }
        // Status callbacks share the batch (and the worker's concurrency).
        let room = i64::from(limit).saturating_sub(deliveries.len() as i64);
        if room > 0 {
            let rows = sqlx::query(
                "UPDATE callback_outbox SET next_attempt_at = $1 \
                 WHERE id IN (SELECT id FROM callback_outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                              AND workspace_id NOT IN (SELECT value FROM json_each($4)) \
                              ORDER BY next_attempt_at LIMIT $3) \
                 RETURNING id, workspace_id, url, method, body, attempts, first_attempt_at",
            )
            .bind(time::format(&lease_until))
            .bind(time::format(&now))
            .bind(room)
            .bind(&skip_workspaces)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let workspace: String = row.try_get("workspace_id")?;
                let secret: Option<String> =
                    sqlx::query_scalar("SELECT signing_secret FROM workspaces WHERE id = $1")
                        .bind(&workspace)
                        .fetch_one(&mut *tx)
                        .await?;
                let method: String = row.try_get("method")?;
                let body: String = row.try_get("body")?;
                deliveries.push(Delivery {
                    workspace_id: WorkspaceId::parse(&workspace)
                        .map_err(|e| corrupt("workspace id", e))?,
                    target: DeliveryTarget::Callback(
                        CallbackMethod::parse(&method)
                            .ok_or_else(|| corrupt("callback method", &method))?,
                    ),
                    event_id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    // A workspace whose secret is missing cannot sign: the attempt is abandoned
                    // with that reason rather than sent unsigned.
                    secret: secret.unwrap_or_default(),
                    previous_secret: None,
                    payload: body.into_bytes(),
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    first_attempt_at: ts_opt(row.try_get("first_attempt_at")?)?,
                    lease_until,
                });
            }
        }
        tx.commit().await?;
        Ok(deliveries)
    }

    async fn release_deliveries(&self, deliveries: &[Delivery], at: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        for d in deliveries {
            match &d.target {
                DeliveryTarget::Endpoint(endpoint) => {
                    sqlx::query(
                        "UPDATE webhook_outbox SET next_attempt_at = $1 \
                         WHERE endpoint_id = $2 AND event_id = $3 AND status = 'pending'",
                    )
                    .bind(time::format(&at))
                    .bind(endpoint)
                    .bind(&d.event_id)
                    .execute(&mut *tx)
                    .await?;
                }
                DeliveryTarget::Callback(_) => {
                    sqlx::query(
                        "UPDATE callback_outbox SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending'",
                    )
                    .bind(time::format(&at))
                    .bind(&d.event_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn record_deliveries(&self, attempts: &[Attempted<'_>]) -> Result<()> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        for attempt in attempts {
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
        let mut tx = self.read.begin().await?;
        let found = has_endpoint(&mut tx, workspace, endpoint).await?;
        if !found {
            return Ok(None);
        }
        let state = filter.state.map_or("1 = 1", MessageState::condition);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT rowid AS cursor, event_id, event_type, status, attempts, \
             COALESCE(created_at, next_attempt_at) AS queued_at, first_attempt_at, next_attempt_at, \
             last_status, last_error FROM webhook_outbox \
             WHERE workspace_id = $1 AND endpoint_id = $2 AND ({state}) \
             AND ($3 IS NULL OR rowid < $3) \
             AND ($4 IS NULL OR COALESCE(created_at, next_attempt_at) >= $4) \
             AND ($5 IS NULL OR COALESCE(created_at, next_attempt_at) < $5) \
             ORDER BY rowid DESC LIMIT $6"
        )))
        .bind(workspace.as_str())
        .bind(endpoint)
        .bind(filter.before)
        .bind(filter.since.as_ref().map(time::format))
        .bind(filter.until.as_ref().map(time::format))
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
                    u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    ts(row.try_get("queued_at")?)?,
                    ts_opt(row.try_get("first_attempt_at")?)?,
                    ts(row.try_get("next_attempt_at")?)?,
                    row.try_get::<Option<i64>, _>("last_status")?
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
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let found = has_endpoint(&mut tx, workspace, endpoint).await?;
        if !found {
            return Ok(None);
        }
        let (condition, value) = match which {
            Requeue::One(event_id) => ("event_id = $4", event_id.clone()),
            Requeue::Since(since) => (
                "COALESCE(created_at, next_attempt_at) >= $4",
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
        .bind(time::format(&at))
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
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
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
                "INSERT OR IGNORE INTO webhook_outbox (endpoint_id, event_id, workspace_id, event_type, payload, status, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)",
            )
            .bind(&endpoint)
            .bind(event_id)
            .bind(workspace.as_str())
            .bind(event_type)
            .bind(body)
            .bind(time::format(&at))
            .execute(&mut *tx)
            .await?;
            queued += 1;
        }
        tx.commit().await?;
        Ok(queued)
    }

    async fn prune_webhook_messages(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = time::format(&before);
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM webhook_attempts WHERE (endpoint_id, event_id) IN \
             (SELECT endpoint_id, event_id FROM webhook_outbox \
              WHERE status IN ('delivered', 'abandoned') AND COALESCE(created_at, next_attempt_at) < $1)",
        )
        .bind(&before)
        .execute(&mut *tx)
        .await?;
        let webhooks = sqlx::query(
            "DELETE FROM webhook_outbox \
             WHERE status IN ('delivered', 'abandoned') AND COALESCE(created_at, next_attempt_at) < $1",
        )
        .bind(&before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let callbacks = sqlx::query(
            "DELETE FROM callback_outbox WHERE status IN ('delivered', 'abandoned') AND created_at < $1",
        )
        .bind(&before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(webhooks + callbacks)
    }

    async fn webhook_attempts(
        &self,
        workspace: &WorkspaceId,
        endpoint: &str,
        event_id: &str,
    ) -> Result<Option<Vec<WebhookAttempt>>> {
        let mut tx = self.read.begin().await?;
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
                    attempted_at: ts(row.try_get("attempted_at")?)?,
                    status_code: row
                        .try_get::<Option<i64>, _>("status_code")?
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
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM calls WHERE workspace_id = $1 AND id = $2")
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
        .bind(i64::try_from(st.stream_timeout_secs).unwrap_or(i64::MAX))
        .bind(st.status_callback_url.as_deref())
        .bind(st.status_callback_method.as_str())
        .bind(&st.extra_headers)
        .bind(st.status.as_str())
        .bind(time::format(&st.created_at))
        .bind(st.start_time.as_ref().map(time::format))
        .bind(st.end_time.as_ref().map(time::format))
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
        let row = sqlx::query("SELECT * FROM audio_streams WHERE workspace_id = $1 AND id = $2")
            .bind(workspace.as_str())
            .bind(stream_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(audio_stream_row).transpose()
    }

    async fn audio_streams(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<AudioStreamRecord>, u64)> {
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audio_streams WHERE workspace_id = $1 AND call_id = $2",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_one(&self.read)
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 \
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?;
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
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 \
             AND status IN ('connecting', 'in-progress') ORDER BY created_at, id",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn active_audio_streams(&self) -> Result<Vec<AudioStreamRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE status IN ('connecting', 'in-progress') ORDER BY created_at",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn set_audio_stream_status(
        &self,
        _workspace: &WorkspaceId,
        stream_id: &str,
        status: StreamStatus,
        at: DateTime<Utc>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let at = time::format(&at);
        let done = if status.is_active() {
            sqlx::query(
                "UPDATE audio_streams SET status = $1, \
                 start_time = CASE WHEN $1 = 'in-progress' THEN COALESCE(start_time, $2) ELSE start_time END \
                 WHERE id = $3 AND status IN ('connecting', 'in-progress')",
            )
            .bind(status.as_str())
            .bind(&at)
            .bind(stream_id)
            .execute(&self.write)
            .await?
        } else {
            sqlx::query(
                "UPDATE audio_streams SET status = $1, end_time = $2, end_reason = $3 \
                 WHERE id = $4 AND status IN ('connecting', 'in-progress')",
            )
            .bind(status.as_str())
            .bind(&at)
            .bind(reason)
            .bind(stream_id)
            .execute(&self.write)
            .await?
        };
        Ok(done.rows_affected() == 1)
    }

    async fn queue_callback(&self, m: &CallbackMessage) -> Result<()> {
        let created = time::format(&m.created_at);
        sqlx::query(
            "INSERT OR IGNORE INTO callback_outbox (id, workspace_id, url, method, body, kind, status, \
             created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)",
        )
        .bind(&m.id)
        .bind(m.workspace_id.as_str())
        .bind(&m.url)
        .bind(m.method.as_str())
        .bind(&m.body)
        .bind(&m.kind)
        .bind(&created)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn signing_secret(&self, workspace: &WorkspaceId, candidate: &str) -> Result<String> {
        sqlx::query(
            "UPDATE workspaces SET signing_secret = $1 WHERE id = $2 AND signing_secret IS NULL",
        )
        .bind(candidate)
        .bind(workspace.as_str())
        .execute(&self.write)
        .await?;
        let secret: Option<Option<String>> =
            sqlx::query_scalar("SELECT signing_secret FROM workspaces WHERE id = $1")
                .bind(workspace.as_str())
                .fetch_optional(&self.read)
                .await?;
        secret.flatten().ok_or(StoreError::NotFound)
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM webhook_outbox GROUP BY status")
            .fetch_all(&self.read)
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
        // One writer at a time: the count and the insert cannot interleave with another's.
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "DELETE FROM connection_places \
             WHERE workspace_id = $1 AND call_id = $2 AND kind = $3 AND expires_at <= $4",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(kind)
        .bind(time::format(&now))
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
        .bind(time::format(&until))
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
        let done = sqlx::query(
            "UPDATE connection_places SET expires_at = $1 WHERE workspace_id = $2 AND holder = $3",
        )
        .bind(time::format(&until))
        .bind(workspace.as_str())
        .bind(holder)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_place(&self, workspace: &WorkspaceId, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM connection_places WHERE workspace_id = $1 AND holder = $2")
            .bind(workspace.as_str())
            .bind(holder)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn touch_calls(&self, touched: &[(WorkspaceId, CallId, DateTime<Utc>)]) -> Result<()> {
        if touched.is_empty() {
            return Ok(());
        }
        // One transaction for them all. It holds the database's one write lock while it runs
        // (about 0.5 s for 8,000 calls), and a seq reservation, and so that call's ingest, waits
        // behind it: the soak shows a stall every sweep once calls need new blocks
        // (docs/benchmarks.md). Smaller transactions were worse (each commit an fsync, and the
        // waiters' busy handler backs off), and so was one `UPDATE … FROM json_each` (SQLite
        // joined it against every call). The fix to make is taking reservations off the ingest
        // path (reserving the next block ahead).
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        for (workspace, call, at) in touched {
            sqlx::query(
                "UPDATE calls SET last_event_at = $1 \
                 WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress'",
            )
            .bind(time::format(at))
            .bind(workspace.as_str())
            .bind(call.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn stale_calls(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(WorkspaceId, CallId)>> {
        let rows = sqlx::query(
            "SELECT workspace_id, id FROM calls WHERE status = 'in_progress' \
             AND COALESCE(last_event_at, started_at) < $1 \
             ORDER BY COALESCE(last_event_at, started_at) LIMIT $2",
        )
        .bind(time::format(&before))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
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
        let rows = sqlx::query(
            "SELECT id, workspace_id, kind, key_hash, hint, created_at, revoked_at, expires_at, admin \
             FROM api_keys WHERE workspace_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(workspace.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(key_row).collect()
    }

    async fn revoke_key(
        &self,
        workspace: &WorkspaceId,
        id: &KeyId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let found = sqlx::query(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE workspace_id = $2 AND id = $3",
        )
        .bind(time::format(&at))
        .bind(workspace.as_str())
        .bind(id.as_str())
        .execute(&self.write)
        .await?;
        Ok(found.rows_affected() > 0)
    }

    async fn keys_revoked_since(&self, since: DateTime<Utc>) -> Result<Vec<KeyId>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM api_keys WHERE revoked_at >= $1")
            .bind(time::format(&since))
            .fetch_all(&self.read)
            .await?;
        ids.iter()
            .map(|id| KeyId::parse(id).map_err(|e| corrupt("key id", e)))
            .collect()
    }

    async fn workspace_by_name(&self, name: &str) -> Result<Option<Workspace>> {
        let row =
            sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.read)
                .await?;
        row.as_ref().map(workspace_row).transpose()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }
}

/// Reserves `count` seqs of a call in the caller's transaction and returns the last of them.
/// The UPDATE is the seq authority: it moves `last_seq` atomically, and only while the call is
/// in progress.
///
/// # Errors
/// [`StoreError::CallEnded`] once the call has ended, [`StoreError::NotFound`] for an unknown
/// or foreign call.
async fn reserve_call_seqs_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    workspace: &WorkspaceId,
    call: &CallId,
    count: i64,
) -> Result<u64> {
    let reserved = sqlx::query(
        "UPDATE calls SET last_seq = last_seq + $1 \
         WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress' RETURNING last_seq",
    )
    .bind(count)
    .bind(workspace.as_str())
    .bind(call.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    match reserved {
        Some(row) => Ok(seq_of(row.try_get(0)?)),
        None => {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM calls WHERE workspace_id = $1 AND id = $2")
                    .bind(workspace.as_str())
                    .bind(call.as_str())
                    .fetch_optional(&mut **tx)
                    .await?;
            Err(match status.as_deref().and_then(CallStatus::parse) {
                Some(status) => StoreError::CallEnded(status),
                None => StoreError::NotFound,
            })
        }
    }
}

/// A seq reservation waiting to be committed with others ([`reserve_together`]).
struct Reservation {
    workspace: WorkspaceId,
    call: CallId,
    block: i64,
    answer: tokio::sync::oneshot::Sender<Result<(Call, u64)>>,
}

/// Reservations committed in one transaction at most.
const RESERVATIONS_PER_COMMIT: usize = 512;

/// Commits the seq reservations of many calls together (group commit): whatever queued while the
/// last commit was on its way goes in the next, so that thousands of calls that need a block at
/// once (a campaign's start, a node's restart) cost a few durable commits, not one each.
async fn reserver(write: SqlitePool, mut queue: tokio::sync::mpsc::Receiver<Reservation>) {
    let mut batch = Vec::with_capacity(RESERVATIONS_PER_COMMIT);
    while queue.recv_many(&mut batch, RESERVATIONS_PER_COMMIT).await > 0 {
        match reserve_together(&write, &batch).await {
            Ok(answers) => {
                for (r, answer) in batch.drain(..).zip(answers) {
                    let _ = r.answer.send(answer);
                }
            }
            // The transaction failed as a whole: each is tried alone, for its own answer.
            Err(_) => {
                for r in batch.drain(..) {
                    let answer = reserve_alone(&write, &r).await;
                    let _ = r.answer.send(answer);
                }
            }
        }
    }
}

/// One transaction for the whole batch: each reservation's own refusal (an ended or unknown
/// call) is its answer; any other error fails the batch.
async fn reserve_together(
    write: &SqlitePool,
    batch: &[Reservation],
) -> Result<Vec<Result<(Call, u64)>>> {
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    let mut answers = Vec::with_capacity(batch.len());
    for r in batch {
        answers.push(
            match reserve_call_seqs_in(&mut tx, &r.workspace, &r.call, r.block).await {
                Ok(end) => Ok((reserved_call(&mut tx, &r.call).await?, end)),
                Err(e @ (StoreError::CallEnded(_) | StoreError::NotFound)) => Err(e),
                Err(e) => return Err(e),
            },
        );
    }
    tx.commit().await?;
    Ok(answers)
}

async fn reserve_alone(write: &SqlitePool, r: &Reservation) -> Result<(Call, u64)> {
    let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
    let end = reserve_call_seqs_in(&mut tx, &r.workspace, &r.call, r.block).await?;
    let call = reserved_call(&mut tx, &r.call).await?;
    tx.commit().await?;
    Ok((call, end))
}

async fn reserved_call(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    call: &CallId,
) -> Result<Call> {
    let row = sqlx::query(call_select!("WHERE id = $1"))
        .bind(call.as_str())
        .fetch_one(&mut **tx)
        .await?;
    call_row(&row)
}

/// Queues every envelope for every enabled endpoint of the workspace that wants its type, in the
/// caller's transaction. Returns whether it queued any.
async fn enqueue_webhooks(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    workspace: &WorkspaceId,
    envelopes: &[Envelope],
) -> Result<bool> {
    let endpoints = sqlx::query("SELECT id, event_types FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL")
        .bind(workspace.as_str())
        .fetch_all(&mut **tx)
        .await?;
    if endpoints.is_empty() {
        return Ok(false);
    }
    let mut wanted = Vec::with_capacity(endpoints.len());
    for row in &endpoints {
        let id: String = row.try_get("id")?;
        let types: Option<String> = row.try_get("event_types")?;
        let types: Option<Vec<String>> = types
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| corrupt("event types", e))?;
        wanted.push((id, types));
    }
    let mut queued = false;
    for env in envelopes {
        let ty = env.payload.type_name();
        let payload = env.to_json();
        for (endpoint, types) in &wanted {
            if types.as_ref().is_some_and(|t| !t.iter().any(|x| x == ty)) {
                continue;
            }
            queued = true;
            sqlx::query(
                "INSERT OR IGNORE INTO webhook_outbox (endpoint_id, event_id, workspace_id, event_type, payload, status, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)",
            )
            .bind(endpoint)
            .bind(env.event_id.as_str())
            .bind(workspace.as_str())
            .bind(ty)
            .bind(&payload)
            .bind(time::format(&env.timestamp.min(time::now())))
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(queued)
}

async fn upsert_message(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
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
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    // The first event of a message creates its row; later ones (delivered, read) update its
    // status, keeping the text the message was first recorded with unless they carry one.
    sqlx::query(
        "INSERT INTO messages (conversation_id, message_id, first_seq, last_seq, direction, text, status, payload, \
         created_at, updated_at) VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (conversation_id, message_id) DO UPDATE SET last_seq = excluded.last_seq, \
         status = excluded.status, payload = excluded.payload, updated_at = excluded.updated_at, \
         text = COALESCE(excluded.text, messages.text)",
    )
    .bind(conversation.as_str())
    .bind(m.message_id())
    .bind(seq)
    .bind(field("direction"))
    .bind(text)
    .bind(field("status"))
    .bind(payload)
    .bind(time::format(&at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_turn(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    call: &CallId,
    turn: &TranscriptTurn,
) -> Result<()> {
    // A second final for the same turn (a correction) replaces the first.
    sqlx::query(
        "INSERT OR REPLACE INTO transcript_turns \
         (call_id, turn_id, seq, role, text, confidence, segment_start, segment_end, ts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(call.as_str())
    .bind(turn.turn_id.as_str())
    .bind(i64::try_from(turn.seq).unwrap_or(i64::MAX))
    .bind(match turn.role {
        Role::User => "user",
        Role::Agent => "agent",
    })
    .bind(&turn.text)
    .bind(turn.confidence)
    .bind(turn.segment_start)
    .bind(turn.segment_end)
    .bind(time::format(&turn.ts))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl SqliteStore {
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
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let reserved = sqlx::query(
            "UPDATE conversations SET last_seq = last_seq + $1 WHERE workspace_id = $2 AND id = $3 \
             RETURNING last_seq, mode",
        )
        .bind(count)
        .bind(workspace.as_str())
        .bind(conversation_id.as_str())
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
        sqlx::query("UPDATE conversations SET mode = $1 WHERE id = $2")
            .bind(mode.as_str())
            .bind(conversation_id.as_str())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT id, workspace_id, channel, participants, mode, created_at, last_seq FROM conversations WHERE id = $1",
        )
        .bind(conversation_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let conversation = conversation_row(&row)?;
        if let Err(reason) = publish.publish(&envelopes).await {
            tx.rollback().await?;
            self.burn_seqs(
                "conversations",
                workspace,
                conversation_id.as_str(),
                reason.burn_to(last_seq_of(&envelopes)),
            )
            .await?;
            return reason.undone(envelopes);
        }
        tx.commit().await?;
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
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let last = reserve_call_seqs_in(&mut tx, workspace, call_id, count).await?;
        let first = last + 1 - events.len() as u64;

        let mut envelopes = Vec::with_capacity(events.len());
        let mut end: Option<(CallStatus, DateTime<Utc>)> = None;
        for (i, event) in events.into_iter().enumerate() {
            let seq = first + i as u64;
            match &event.payload {
                Payload::Transcription(t) => {
                    if let Some(turn) = TranscriptTurn::from_event(seq, event.timestamp, t) {
                        insert_turn(&mut tx, call_id, &turn).await?;
                    }
                }
                Payload::Completed(_) => end = Some((CallStatus::Completed, event.timestamp)),
                Payload::Failed(_) => end = Some((CallStatus::Failed, event.timestamp)),
                Payload::ScreeningEnded(screening) => {
                    end_screening(&mut tx, call_id, &event.timestamp, &screening.msg).await?;
                }
                _ => {}
            }
            let env = event
                .into_envelope(workspace, Subject::Call(call_id.clone()), seq)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            envelopes.push(env);
        }
        let webhooks_queued = enqueue_webhooks(&mut tx, workspace, &envelopes).await?;
        if let Some((status, at)) = end {
            let terminal = envelopes.iter().rfind(|e| e.payload.is_terminal());
            sqlx::query(
                "UPDATE calls SET status = $1, ended_at = $2, end_reason = $3, end_event = $4 \
                 WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(time::format(&at))
            .bind(terminal.and_then(|e| e.payload.end_reason()))
            .bind(terminal.map(Envelope::to_json))
            .bind(call_id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query(call_select!("WHERE id = $1"))
            .bind(call_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let call = call_row(&row)?;
        // Published while the write lock is held: the next batch of this call waits for it.
        if let Err(reason) = publish.publish(&envelopes).await {
            tx.rollback().await?;
            // Part of the batch may still reach subscribers (a publish that timed out can land
            // later): its seqs are never handed out again.
            self.burn_seqs(
                "calls",
                workspace,
                call_id.as_str(),
                reason.burn_to(last_seq_of(&envelopes)),
            )
            .await?;
            return reason.undone(envelopes);
        }
        tx.commit().await?;
        Ok(Ok(Appended {
            envelopes,
            call,
            webhooks_queued,
        }))
    }

    /// Moves the subject's last seq to at least `last`, so that seqs of a batch whose publish
    /// failed are never reused. `table` is `calls` or `conversations` (ours, not input).
    async fn burn_seqs(
        &self,
        table: &'static str,
        workspace: &WorkspaceId,
        id: &str,
        last: u64,
    ) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET last_seq = max(last_seq, $1) WHERE workspace_id = $2 AND id = $3"
        )))
        .bind(i64::try_from(last).unwrap_or(i64::MAX))
        .bind(workspace.as_str())
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

/// One attempt's outcome, recorded in `tx`: the message's state, the endpoint's failing time,
/// the attempt in its log, and on `410 Gone` the endpoint disabled.
async fn record_attempt(tx: &mut sqlx::SqliteConnection, attempt: &Attempted<'_>) -> Result<()> {
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
    let endpoint_id = match &d.target {
        DeliveryTarget::Endpoint(id) => id,
        DeliveryTarget::Callback(_) => {
            sqlx::query(
                    "UPDATE callback_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
                     first_attempt_at = COALESCE(first_attempt_at, $3), last_status = $4, last_error = $5 \
                     WHERE id = $6 AND next_attempt_at = $7",
                )
                .bind(status)
                .bind(time::format(&next))
                .bind(time::format(&d.first_attempt_at.unwrap_or(at)))
                .bind(last_status.map(i64::from))
                .bind(error)
                .bind(&d.event_id)
                .bind(time::format(&d.lease_until))
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
    };
    sqlx::query(
        "UPDATE webhook_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             first_attempt_at = COALESCE(first_attempt_at, $3), last_status = $4, last_error = $5 \
             WHERE endpoint_id = $6 AND event_id = $7 AND next_attempt_at = $8",
    )
    .bind(status)
    .bind(time::format(&next))
    .bind(time::format(&d.first_attempt_at.unwrap_or(at)))
    .bind(last_status.map(i64::from))
    .bind(error)
    .bind(endpoint_id)
    .bind(&d.event_id)
    .bind(time::format(&d.lease_until))
    .execute(&mut *tx)
    .await?;
    // Since when its attempts have all failed: cleared by a delivery.
    let failing_since = match result {
        DeliveryResult::Delivered { .. } => None,
        _ => Some(time::format(&at)),
    };
    sqlx::query(
        "UPDATE webhook_endpoints SET failing_since = $2 WHERE id = $1 \
             AND (failing_since IS NULL) = ($2 IS NOT NULL)",
    )
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
        .bind(time::format(&at))
        .bind(last_status.map(i64::from))
        .bind(i64::try_from(log.latency_ms).unwrap_or(i64::MAX))
        .bind(log.error_kind.as_deref())
        .bind(&log.response_body)
        .execute(&mut *tx)
        .await?;
    if let DeliveryResult::DisableEndpoint { .. } = result {
        sqlx::query(
            "UPDATE webhook_endpoints SET disabled_at = $1, disabled_reason = $2 WHERE id = $3",
        )
        .bind(time::format(&at))
        .bind("the endpoint answered 410 Gone")
        .bind(endpoint_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE webhook_outbox SET status = 'abandoned', last_error = '410 Gone' WHERE endpoint_id = $1 AND status = 'pending'")
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
    use sqlx::Connection;
    use std::sync::Arc;

    /// A SQLite file in a temporary directory, opened anew on each `open`.
    struct TempFile(tempfile::TempDir);

    #[async_trait]
    impl Backend for TempFile {
        async fn open(&self) -> Arc<dyn Store> {
            Arc::new(
                SqliteStore::open(&self.0.path().join("cs.db"))
                    .await
                    .unwrap(),
            )
        }
    }

    async fn fresh() -> TempFile {
        TempFile(tempfile::tempdir().unwrap())
    }

    crate::conformance_tests!(fresh);

    #[tokio::test]
    async fn commits_wait_for_the_disk_unless_told_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        for (durability, pragma) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let store = SqliteStore::open_with(&dir.path().join("d.db"), durability)
                .await
                .unwrap();
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&store.write)
                .await
                .unwrap();
            assert_eq!(level, pragma, "{durability:?}");
        }
        let store = SqliteStore::open(&dir.path().join("d.db")).await.unwrap();
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.write)
            .await
            .unwrap();
        assert_eq!(level, 2, "full by default");
    }

    /// Writers queue in the process for the one write connection; reads never wait behind them.
    /// Before the split, writers waiting on SQLite's lock held every connection of the shared
    /// pool and this read waited until the lock was released.
    #[tokio::test]
    async fn reads_go_on_while_writers_queue_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let acme = store.ensure_workspace("acme").await.unwrap();
        // Another process (`callstream keys create`, say) holds the write lock.
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let writers: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.ensure_workspace(&format!("w{i}")).await })
            })
            .collect();
        tokio::task::yield_now().await;
        tokio::select! {
            found = store.workspace(&acme.id) => {
                assert_eq!(found.unwrap().map(|w| w.name), Some("acme".to_owned()));
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                panic!("a read waited behind writers queued for the lock");
            }
        }
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        // A write sent to a read connection by mistake fails at once.
        let err = sqlx::query("DELETE FROM workspaces")
            .execute(&store.read)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("readonly"), "{err}");
    }
}
