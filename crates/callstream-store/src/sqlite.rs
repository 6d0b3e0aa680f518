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
    Appended, AppendedConversation, AudioStreamRecord, CallFilter, CallbackMessage, CallbackMethod,
    ConversationFilter, Delivery, DeliveryResult, DeliveryTarget, KeyRecord, MessageRecord,
    NewEvent, Result, SessionRecord, Store, StoreError, StreamTokenRecord, TranscriptTurn,
    WebhookEndpoint, check_call_batch,
};
use callstream_core::audio::{AudioTrack, StreamStatus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded store: one SQLite file in write-ahead-log mode.
///
/// WAL lets readers run beside the one writer, and lets `callstream keys create` write from
/// another process while the server runs. Every write transaction starts with `BEGIN IMMEDIATE`
/// so that it takes the write lock up front and waits on `busy_timeout`, instead of failing with
/// `SQLITE_BUSY` when it upgrades from a read.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs pending migrations.
    ///
    /// # Errors
    /// When the file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

fn ts(text: &str) -> Result<DateTime<Utc>> {
    time::parse(text).map_err(|e| StoreError::Corrupt(format!("timestamp {text:?}: {e}")))
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
        revoked: row.try_get::<Option<String>, _>("revoked_at")?.is_some(),
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
             live_conversation_token, started_at, ended_at, last_seq, screening_ended_at, \
             screening_msg FROM calls ",
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
            .execute(&self.pool)
            .await?;
        let row =
            sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        workspace_row(&row)
    }

    async fn workspace(&self, id: &WorkspaceId) -> Result<Option<Workspace>> {
        let row = sqlx::query("SELECT id, name, auth_id, created_at FROM workspaces WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(workspace_row).transpose()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, workspace_id, kind, key_hash, hint, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id.as_str())
        .bind(key.workspace_id.as_str())
        .bind(key.kind.as_str())
        .bind(&key.key_hash[..])
        .bind(&key.hint)
        .bind(time::format(&key.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>> {
        let row = sqlx::query(
            "SELECT id, workspace_id, kind, key_hash, hint, created_at, revoked_at \
             FROM api_keys WHERE key_hash = $1",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
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
        .execute(&self.pool)
        .await?;
        // Expired tokens are useless; clear them out as new ones arrive.
        sqlx::query("DELETE FROM stream_tokens WHERE expires_at < $1")
            .bind(time::format(&(time::now() - chrono::Duration::days(1))))
            .execute(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(time::format(&time::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn session_by_hash(&self, hash: &[u8; 32]) -> Result<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT s.token_hash, s.workspace_id, s.key_id, s.created_at, s.expires_at \
             FROM sessions s JOIN api_keys k ON k.id = s.key_id WHERE s.token_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&self.pool)
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
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_call(&self, call: &Call) -> Result<()> {
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn call(&self, workspace: &WorkspaceId, id: &CallId) -> Result<Option<Call>> {
        let sql = call_select!("WHERE workspace_id = $1 AND id = $2");
        let row = sqlx::query(sql)
            .bind(workspace.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn calls(&self, workspace: &WorkspaceId, filter: &CallFilter) -> Result<Vec<Call>> {
        let sql = call_select!(
            "WHERE workspace_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR started_at >= $3) \
             ORDER BY started_at DESC, id LIMIT $4",
        );
        let rows = sqlx::query(sql)
            .bind(workspace.as_str())
            .bind(filter.status.map(CallStatus::as_str))
            .bind(filter.since.as_ref().map(time::format))
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(call_row).transpose()
    }

    async fn append_call_events(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        check_call_batch(&events)?;
        let count = i64::try_from(events.len())
            .map_err(|_| StoreError::Invalid("too many events".into()))?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // The UPDATE is the seq authority: it reserves `count` numbers atomically, and only while
        // the call is still in progress.
        let reserved = sqlx::query(
            "UPDATE calls SET last_seq = last_seq + $1 \
             WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress' RETURNING last_seq",
        )
        .bind(count)
        .bind(workspace.as_str())
        .bind(call_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(reserved) = reserved else {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM calls WHERE workspace_id = $1 AND id = $2")
                    .bind(workspace.as_str())
                    .bind(call_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match status.as_deref().and_then(CallStatus::parse) {
                Some(status) => StoreError::CallEnded(status),
                None => StoreError::NotFound,
            });
        };
        let last = seq_of(reserved.try_get(0)?);
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
        enqueue_webhooks(&mut tx, workspace, &envelopes).await?;
        if let Some((status, at)) = end {
            sqlx::query("UPDATE calls SET status = $1, ended_at = $2 WHERE id = $3")
                .bind(status.as_str())
                .bind(time::format(&at))
                .bind(call_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let row = sqlx::query(call_select!("WHERE id = $1"))
            .bind(call_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let call = call_row(&row)?;
        tx.commit().await?;
        Ok(Appended { envelopes, call })
    }

    async fn reserve_call_seqs(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        block: u64,
    ) -> Result<(Call, u64)> {
        let block =
            i64::try_from(block).map_err(|_| StoreError::Invalid("block too large".into()))?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let reserved = sqlx::query(
            "UPDATE calls SET last_seq = last_seq + $1 \
             WHERE workspace_id = $2 AND id = $3 AND status = 'in_progress' RETURNING last_seq",
        )
        .bind(block)
        .bind(workspace.as_str())
        .bind(call_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(reserved) = reserved else {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM calls WHERE workspace_id = $1 AND id = $2")
                    .bind(workspace.as_str())
                    .bind(call_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match status.as_deref().and_then(CallStatus::parse) {
                Some(status) => StoreError::CallEnded(status),
                None => StoreError::NotFound,
            });
        };
        let end = seq_of(reserved.try_get(0)?);
        let row = sqlx::query(call_select!("WHERE id = $1"))
            .bind(call_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let call = call_row(&row)?;
        tx.commit().await?;
        Ok((call, end))
    }

    async fn record_call_events(
        &self,
        workspace: &WorkspaceId,
        call_id: &CallId,
        envelopes: &[Envelope],
    ) -> Result<Option<Call>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
            sqlx::query("UPDATE calls SET status = $1, ended_at = $2, last_seq = $3 WHERE workspace_id = $4 AND id = $5")
                .bind(status.as_str())
                .bind(time::format(&at))
                .bind(i64::try_from(seq).unwrap_or(i64::MAX))
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

    async fn settle_call_seqs(&self, call: &CallId, reserved_end: u64, used: u64) -> Result<()> {
        sqlx::query("UPDATE calls SET last_seq = $1 WHERE id = $2 AND last_seq = $3 AND status = 'in_progress'")
            .bind(i64::try_from(used).unwrap_or(i64::MAX))
            .bind(call.as_str())
            .bind(i64::try_from(reserved_end).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn has_webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<bool> {
        let found = sqlx::query("SELECT 1 FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL LIMIT 1")
            .bind(workspace.as_str())
            .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
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
        .execute(&self.pool)
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
        .fetch_optional(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(conversation_row).collect()
    }

    async fn append_conversation_events(
        &self,
        workspace: &WorkspaceId,
        conversation_id: &ConversationId,
        events: Vec<NewEvent>,
    ) -> Result<AppendedConversation> {
        for (i, e) in events.iter().enumerate() {
            let ty = e.payload.event_type();
            if ty.subject_kind() != callstream_core::event::SubjectKind::Conversation {
                return Err(StoreError::Invalid(format!(
                    "events[{i}].event_type: {ty} is not a conversation event"
                )));
            }
        }
        let count = i64::try_from(events.len())
            .map_err(|_| StoreError::Invalid("too many events".into()))?;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
                    upsert_message(&mut tx, conversation_id, seq, event.timestamp, m).await?;
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
        tx.commit().await?;
        Ok(AppendedConversation {
            envelopes,
            conversation,
        })
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let payload: &str = row.try_get("payload")?;
                Ok(MessageRecord {
                    message_id: row.try_get("message_id")?,
                    direction: row.try_get("direction")?,
                    text: row.try_get("text")?,
                    status: row.try_get("status")?,
                    payload: serde_json::from_str(payload)
                        .map_err(|e| corrupt("message payload", e))?,
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
            "INSERT INTO webhook_endpoints (id, workspace_id, url, secret, event_types, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&e.id)
        .bind(e.workspace_id.as_str())
        .bind(&e.url)
        .bind(&e.secret)
        .bind(types)
        .bind(time::format(&e.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn webhook_endpoints(&self, workspace: &WorkspaceId) -> Result<Vec<WebhookEndpoint>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, url, secret, event_types, created_at, disabled_at, disabled_reason \
             FROM webhook_endpoints WHERE workspace_id = $1 ORDER BY created_at",
        )
        .bind(workspace.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
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
                    created_at: ts(row.try_get("created_at")?)?,
                    disabled_at: ts_opt(row.try_get("disabled_at")?)?,
                    disabled_reason: row.try_get("disabled_reason")?,
                })
            })
            .collect()
    }

    async fn delete_webhook_endpoint(&self, workspace: &WorkspaceId, id: &str) -> Result<bool> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let found =
            sqlx::query("SELECT 1 FROM webhook_endpoints WHERE workspace_id = $1 AND id = $2")
                .bind(workspace.as_str())
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if found {
            sqlx::query("DELETE FROM webhook_outbox WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(found)
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Claim the due rows by pushing their next attempt to the end of the lease: a worker
        // that dies mid-delivery leaves them to be retried when the lease runs out.
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $1 \
             WHERE rowid IN (SELECT rowid FROM webhook_outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                             ORDER BY next_attempt_at LIMIT $3) \
             RETURNING endpoint_id, event_id, payload, attempts, first_attempt_at",
        )
        .bind(time::format(&lease_until))
        .bind(time::format(&now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let endpoint_id: String = row.try_get("endpoint_id")?;
            let endpoint = sqlx::query("SELECT url, secret FROM webhook_endpoints WHERE id = $1")
                .bind(&endpoint_id)
                .fetch_one(&mut *tx)
                .await?;
            deliveries.push(Delivery {
                target: DeliveryTarget::Endpoint(endpoint_id),
                event_id: row.try_get("event_id")?,
                url: endpoint.try_get("url")?,
                secret: endpoint.try_get("secret")?,
                payload: row.try_get("payload")?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                first_attempt_at: ts_opt(row.try_get("first_attempt_at")?)?,
            });
        }
        // Status callbacks share the batch (and the worker's concurrency).
        let room = i64::from(limit).saturating_sub(deliveries.len() as i64);
        if room > 0 {
            let rows = sqlx::query(
                "UPDATE callback_outbox SET next_attempt_at = $1 \
                 WHERE id IN (SELECT id FROM callback_outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                              ORDER BY next_attempt_at LIMIT $3) \
                 RETURNING id, workspace_id, url, method, body, attempts, first_attempt_at",
            )
            .bind(time::format(&lease_until))
            .bind(time::format(&now))
            .bind(room)
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
                    target: DeliveryTarget::Callback(
                        CallbackMethod::parse(&method)
                            .ok_or_else(|| corrupt("callback method", &method))?,
                    ),
                    event_id: row.try_get("id")?,
                    url: row.try_get("url")?,
                    // A workspace whose secret is missing cannot sign: the attempt is abandoned
                    // with that reason rather than sent unsigned.
                    secret: secret.unwrap_or_default(),
                    payload: body.into_bytes(),
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    first_attempt_at: ts_opt(row.try_get("first_attempt_at")?)?,
                });
            }
        }
        tx.commit().await?;
        Ok(deliveries)
    }

    async fn record_delivery(
        &self,
        d: &Delivery,
        at: DateTime<Utc>,
        result: &DeliveryResult,
    ) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (status, next, last_status, error): (&str, DateTime<Utc>, Option<u16>, Option<&str>) =
            match result {
                DeliveryResult::Delivered { status } => ("delivered", at, Some(*status), None),
                DeliveryResult::RetryAt {
                    at: next,
                    status,
                    error,
                } => ("pending", *next, *status, Some(error)),
                DeliveryResult::Abandon { status, error } => {
                    ("abandoned", at, *status, Some(error))
                }
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
                     WHERE id = $6",
                )
                .bind(status)
                .bind(time::format(&next))
                .bind(time::format(&d.first_attempt_at.unwrap_or(at)))
                .bind(last_status.map(i64::from))
                .bind(error)
                .bind(&d.event_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(());
            }
        };
        sqlx::query(
            "UPDATE webhook_outbox SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             first_attempt_at = COALESCE(first_attempt_at, $3), last_status = $4, last_error = $5 \
             WHERE endpoint_id = $6 AND event_id = $7",
        )
        .bind(status)
        .bind(time::format(&next))
        .bind(time::format(&d.first_attempt_at.unwrap_or(at)))
        .bind(last_status.map(i64::from))
        .bind(error)
        .bind(endpoint_id)
        .bind(&d.event_id)
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
        tx.commit().await?;
        Ok(())
    }

    async fn create_audio_stream(&self, st: &AudioStreamRecord) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
            .fetch_optional(&self.pool)
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
        .fetch_one(&self.pool)
        .await?;
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE workspace_id = $1 AND call_id = $2 \
             ORDER BY created_at, id LIMIT $3 OFFSET $4",
        )
        .bind(workspace.as_str())
        .bind(call.as_str())
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn active_audio_streams(&self) -> Result<Vec<AudioStreamRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM audio_streams WHERE status IN ('connecting', 'in-progress') ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audio_stream_row).collect()
    }

    async fn set_audio_stream_status(
        &self,
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
            .execute(&self.pool)
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
            .execute(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn signing_secret(&self, workspace: &WorkspaceId, candidate: &str) -> Result<String> {
        sqlx::query(
            "UPDATE workspaces SET signing_secret = $1 WHERE id = $2 AND signing_secret IS NULL",
        )
        .bind(candidate)
        .bind(workspace.as_str())
        .execute(&self.pool)
        .await?;
        let secret: Option<Option<String>> =
            sqlx::query_scalar("SELECT signing_secret FROM workspaces WHERE id = $1")
                .bind(workspace.as_str())
                .fetch_optional(&self.pool)
                .await?;
        secret.flatten().ok_or(StoreError::NotFound)
    }

    async fn outbox_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM webhook_outbox GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, seq_of(r.try_get("n")?))))
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Queues every envelope for every enabled endpoint of the workspace that wants its type, in the
/// caller's transaction.
async fn enqueue_webhooks(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    workspace: &WorkspaceId,
    envelopes: &[Envelope],
) -> Result<()> {
    let endpoints = sqlx::query("SELECT id, event_types FROM webhook_endpoints WHERE workspace_id = $1 AND disabled_at IS NULL")
        .bind(workspace.as_str())
        .fetch_all(&mut **tx)
        .await?;
    if endpoints.is_empty() {
        return Ok(());
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
    for env in envelopes {
        let ty = env.event_type().as_str();
        let payload = env.to_json();
        for (endpoint, types) in &wanted {
            if types.as_ref().is_some_and(|t| !t.iter().any(|x| x == ty)) {
                continue;
            }
            sqlx::query(
                "INSERT OR IGNORE INTO webhook_outbox (endpoint_id, event_id, workspace_id, event_type, payload, status, next_attempt_at) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
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
    Ok(())
}

async fn upsert_message(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conversation: &ConversationId,
    seq: u64,
    at: DateTime<Utc>,
    m: &callstream_core::event::Message,
) -> Result<()> {
    let raw = m.as_map();
    let text = raw.get("text").and_then(serde_json::Value::as_str);
    let field = |k: &str| {
        raw.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let payload = serde_json::to_string(raw).map_err(|e| StoreError::Invalid(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_core::TurnId;
    use serde_json::json;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        (dir, store)
    }

    fn new_call(ws: &WorkspaceId) -> Call {
        Call {
            id: CallId::new(),
            workspace_id: ws.clone(),
            phone: Phone::parse("+14155550123").unwrap(),
            direction: Direction::Inbound,
            transport: Transport::Sip,
            external_id: Some("CA0123".into()),
            status: CallStatus::InProgress,
            live_conversation_token: Call::new_live_conversation_token(),
            screening: None,
            started_at: time::now(),
            ended_at: None,
            last_seq: 0,
        }
    }

    fn ev(ty: &str, payload: serde_json::Value) -> NewEvent {
        NewEvent::new(time::now(), Payload::parse(ty, payload).unwrap())
    }

    fn turn(id: &TurnId, text: &str, is_final: bool) -> NewEvent {
        ev(
            "call.transcription",
            json!({"role": "user", "text": text, "is_final": is_final, "turn_id": id}),
        )
    }

    #[tokio::test]
    async fn seqs_are_gap_free_and_finals_are_kept_across_reopen() {
        let (dir, store) = store().await;
        let ws = store.ensure_workspace("acme").await.unwrap();
        assert_eq!(store.ensure_workspace("acme").await.unwrap(), ws);
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let t1 = TurnId::new();
        let a = store
            .append_call_events(
                &ws.id,
                &call.id,
                vec![turn(&t1, "hel", false), turn(&t1, "hello", true)],
            )
            .await
            .unwrap();
        assert_eq!(
            a.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        let b = store
            .append_call_events(
                &ws.id,
                &call.id,
                vec![ev("call.completed", json!({"reason": "hangup"}))],
            )
            .await
            .unwrap();
        assert_eq!(b.envelopes[0].seq, 3);
        assert_eq!(b.call.status, CallStatus::Completed);
        assert!(b.call.ended_at.is_some());
        drop(store);

        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        let got = store.call(&ws.id, &call.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.last_seq), (CallStatus::Completed, 3));
        let turns = store.transcript(&ws.id, &call.id).await.unwrap();
        assert_eq!(turns.len(), 1);
        assert_eq!((turns[0].text.as_str(), turns[0].seq), ("hello", 2));
        let more = store
            .append_call_events(
                &ws.id,
                &call.id,
                vec![ev("call.dtmf", json!({"digits": "1"}))],
            )
            .await;
        assert!(
            matches!(more, Err(StoreError::CallEnded(CallStatus::Completed))),
            "{more:?}"
        );
    }

    #[tokio::test]
    async fn another_workspace_sees_nothing() {
        let (_dir, store) = store().await;
        let a = store.ensure_workspace("a").await.unwrap();
        let b = store.ensure_workspace("b").await.unwrap();
        let call = new_call(&a.id);
        store.create_call(&call).await.unwrap();
        assert!(store.call(&b.id, &call.id).await.unwrap().is_none());
        assert!(
            store
                .calls(
                    &b.id,
                    &CallFilter {
                        limit: 10,
                        ..Default::default()
                    }
                )
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.transcript(&b.id, &call.id).await.unwrap().is_empty());
        let r = store
            .append_call_events(
                &b.id,
                &call.id,
                vec![ev("call.dtmf", json!({"digits": "1"}))],
            )
            .await;
        assert!(matches!(r, Err(StoreError::NotFound)));
        // Nothing was reserved on the real call by the refused append.
        assert_eq!(
            store.call(&a.id, &call.id).await.unwrap().unwrap().last_seq,
            0
        );
    }

    #[tokio::test]
    async fn terminal_must_be_last_and_concurrent_appends_never_share_a_seq() {
        let (_dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let bad = store
            .append_call_events(
                &ws.id,
                &call.id,
                vec![
                    ev("call.completed", json!({})),
                    ev("call.dtmf", json!({"digits": "1"})),
                ],
            )
            .await;
        assert!(matches!(bad, Err(StoreError::Invalid(_))));

        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, ws, id) = (store.clone(), ws.id.clone(), call.id.clone());
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for _ in 0..10 {
                    let a = store
                        .append_call_events(&ws, &id, vec![ev("call.dtmf", json!({"digits": "1"}))])
                        .await
                        .unwrap();
                    seqs.push(a.envelopes[0].seq);
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=80).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn keys_resolve_by_hash_and_filters_apply() {
        let (_dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let key = KeyRecord {
            id: KeyId::new(),
            workspace_id: ws.id.clone(),
            kind: KeyKind::Runtime,
            key_hash: [7; 32],
            hint: "rk_live_ab".into(),
            created_at: time::now(),
            revoked: false,
        };
        store.insert_key(&key).await.unwrap();
        assert_eq!(store.key_by_hash(&[7; 32]).await.unwrap(), Some(key));
        assert_eq!(store.key_by_hash(&[8; 32]).await.unwrap(), None);

        let live = new_call(&ws.id);
        let done = new_call(&ws.id);
        store.create_call(&live).await.unwrap();
        store.create_call(&done).await.unwrap();
        store
            .append_call_events(
                &ws.id,
                &done.id,
                vec![ev("call.failed", json!({"reason": "busy"}))],
            )
            .await
            .unwrap();
        let active = store
            .calls(
                &ws.id,
                &CallFilter {
                    status: Some(CallStatus::InProgress),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            active.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
            [live.id]
        );
        let future = store
            .calls(
                &ws.id,
                &CallFilter {
                    since: Some(time::now() + chrono::Duration::hours(1)),
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(future.is_empty());
    }

    #[tokio::test]
    async fn conversation_events_keep_message_history_and_mode() {
        let (_dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let other = store.ensure_workspace("b").await.unwrap();
        let c = Conversation {
            id: ConversationId::new(),
            workspace_id: ws.id.clone(),
            channel: Channel::Sms,
            participants: vec!["+14155550123".into()],
            mode: ConversationMode::Ai,
            created_at: time::now(),
            last_seq: 0,
        };
        store.create_conversation(&c).await.unwrap();
        let msg = |ty: &str, status: &str, text: Option<&str>| {
            let mut p = json!({"message_id": "m1", "direction": "inbound", "status": status});
            if let Some(t) = text {
                p["text"] = json!(t);
            }
            ev(ty, p)
        };
        let a = store
            .append_conversation_events(
                &ws.id,
                &c.id,
                vec![
                    msg("message.received", "received", Some("hi")),
                    msg("message.read", "read", None),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            a.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        let history = store.messages(&ws.id, &c.id).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].text.as_deref(), history[0].status.as_str()),
            (Some("hi"), "read")
        );

        let handoff = ev(
            "conversation.mode_changed",
            json!({"from_mode": "ai", "to_mode": "human", "actor_user_id": "usr_1"}),
        );
        let b = store
            .append_conversation_events(&ws.id, &c.id, vec![handoff.clone()])
            .await
            .unwrap();
        assert_eq!(
            (b.conversation.mode, b.conversation.last_seq),
            (ConversationMode::Human, 3)
        );
        // A stale from_mode is refused and takes no seq.
        assert!(matches!(
            store
                .append_conversation_events(&ws.id, &c.id, vec![handoff])
                .await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(
            store
                .conversation(&ws.id, &c.id)
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            3
        );
        // Another workspace sees nothing and can append nothing.
        assert!(matches!(
            store
                .append_conversation_events(
                    &other.id,
                    &c.id,
                    vec![msg("message.read", "read", None)]
                )
                .await,
            Err(StoreError::NotFound)
        ));
        assert!(store.messages(&other.id, &c.id).await.unwrap().is_empty());
        assert!(matches!(
            store
                .append_conversation_events(
                    &ws.id,
                    &c.id,
                    vec![ev("call.dtmf", json!({"digits": "1"}))]
                )
                .await,
            Err(StoreError::Invalid(_))
        ));
    }

    fn audio_stream(ws: &WorkspaceId, call: &CallId, url: &str) -> AudioStreamRecord {
        AudioStreamRecord {
            stream_id: callstream_core::audio::new_stream_id(),
            workspace_id: ws.clone(),
            call_id: call.clone(),
            service_url: url.into(),
            audio_track: AudioTrack::Inbound,
            bidirectional: true,
            content_type: "audio/x-l16;rate=8000".into(),
            l16_big_endian: false,
            stream_timeout_secs: 86400,
            status_callback_url: Some("http://127.0.0.1:9/status".into()),
            status_callback_method: CallbackMethod::Get,
            extra_headers: "a=1".into(),
            status: StreamStatus::Connecting,
            created_at: time::now(),
            start_time: None,
            end_time: None,
            end_reason: None,
        }
    }

    #[tokio::test]
    async fn audio_streams_are_one_active_per_url_end_once_and_survive_reopen() {
        let (dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let other = store.ensure_workspace("b").await.unwrap();
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let first = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/a");
        store.create_audio_stream(&first).await.unwrap();
        let again = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/a");
        let refused = store.create_audio_stream(&again).await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Invalid(m) if m.starts_with("service_url:")),
            "{refused:?}"
        );
        let second = audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/b");
        store.create_audio_stream(&second).await.unwrap();
        // Another workspace can neither create on the call nor read the streams.
        assert!(matches!(
            store
                .create_audio_stream(&audio_stream(&other.id, &call.id, "ws://x/"))
                .await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            store
                .audio_stream(&other.id, &first.stream_id)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .audio_streams(&other.id, &call.id, 10, 0)
                .await
                .unwrap(),
            (vec![], 0)
        );

        let at = time::now();
        assert!(
            store
                .set_audio_stream_status(&first.stream_id, StreamStatus::InProgress, at, None)
                .await
                .unwrap()
        );
        assert!(
            store
                .set_audio_stream_status(&first.stream_id, StreamStatus::Dropped, at, Some("gone"))
                .await
                .unwrap()
        );
        // Ended once: a second ending is not reported.
        assert!(
            !store
                .set_audio_stream_status(&first.stream_id, StreamStatus::Stopped, at, Some("x"))
                .await
                .unwrap()
        );
        // The URL is free again once its stream ended.
        store.create_audio_stream(&again).await.unwrap();

        drop(store);
        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        let read = store
            .audio_stream(&ws.id, &first.stream_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.status, StreamStatus::Dropped);
        assert_eq!(read.end_reason.as_deref(), Some("gone"));
        assert_eq!(
            read.start_time.map(|t| time::format(&t)),
            Some(time::format(&at))
        );
        assert_eq!(read.extra_headers, "a=1");
        assert_eq!(read.status_callback_method, CallbackMethod::Get);
        let (page, total) = store.audio_streams(&ws.id, &call.id, 2, 1).await.unwrap();
        assert_eq!(total, 3);
        assert_eq!(page.len(), 2);
        let mut active: Vec<String> = store
            .active_audio_streams()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.stream_id)
            .collect();
        active.sort();
        let mut expect = [second.stream_id.clone(), again.stream_id.clone()];
        expect.sort();
        assert_eq!(active, expect);

        // An ended call takes no new stream.
        store
            .append_call_events(&ws.id, &call.id, vec![ev("call.completed", json!({}))])
            .await
            .unwrap();
        assert!(matches!(
            store
                .create_audio_stream(&audio_stream(&ws.id, &call.id, "ws://127.0.0.1:9/c"))
                .await,
            Err(StoreError::CallEnded(_))
        ));
    }

    #[tokio::test]
    async fn callbacks_are_queued_signed_by_the_workspace_and_claimed_like_webhooks() {
        let (_dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let secret = store
            .signing_secret(&ws.id, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
            .await
            .unwrap();
        // The first secret stays.
        assert_eq!(
            store.signing_secret(&ws.id, "whsec_other").await.unwrap(),
            secret
        );
        let message = CallbackMessage {
            id: "msg_1".into(),
            workspace_id: ws.id.clone(),
            url: "http://127.0.0.1:9/status".into(),
            method: CallbackMethod::Post,
            body: "Event=StartStream&StreamID=x".into(),
            kind: "StartStream".into(),
            created_at: time::now(),
        };
        store.queue_callback(&message).await.unwrap();
        // Queuing the same message twice keeps one.
        store.queue_callback(&message).await.unwrap();
        let now = time::now();
        let lease = now + chrono::Duration::seconds(60);
        let due = store.due_deliveries(now, lease, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let d = &due[0];
        assert_eq!(d.target, DeliveryTarget::Callback(CallbackMethod::Post));
        assert_eq!(
            (d.event_id.as_str(), d.secret.as_str()),
            ("msg_1", secret.as_str())
        );
        assert_eq!(d.payload, b"Event=StartStream&StreamID=x");
        // Claimed: not due again until the lease ends.
        assert!(
            store
                .due_deliveries(now, lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let retry = now + chrono::Duration::seconds(5);
        store
            .record_delivery(
                d,
                now,
                &DeliveryResult::RetryAt {
                    at: retry,
                    status: Some(500),
                    error: "HTTP 500".into(),
                },
            )
            .await
            .unwrap();
        let again = store.due_deliveries(retry, lease, 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        store
            .record_delivery(&again[0], retry, &DeliveryResult::Delivered { status: 204 })
            .await
            .unwrap();
        assert!(
            store
                .due_deliveries(retry + chrono::Duration::hours(1), lease, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn webhooks_are_queued_with_the_events_and_survive_reopen() {
        let (dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let endpoint = WebhookEndpoint {
            id: "whe_1".into(),
            workspace_id: ws.id.clone(),
            url: "http://127.0.0.1:9/hook".into(),
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD".into(),
            event_types: Some(vec!["call.dtmf".into()]),
            created_at: time::now(),
            disabled_at: None,
            disabled_reason: None,
        };
        store.create_webhook_endpoint(&endpoint).await.unwrap();
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let appended = store
            .append_call_events(
                &ws.id,
                &call.id,
                vec![
                    ev("call.dtmf", json!({"digits": "1"})),
                    ev("call.metrics", json!({})),
                ],
            )
            .await
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        let now = time::now();
        let lease = now + chrono::Duration::seconds(60);
        let due = store.due_deliveries(now, lease, 10).await.unwrap();
        assert_eq!(due.len(), 1, "only the wanted type is queued");
        assert_eq!(
            due[0].payload,
            appended.envelopes[0].to_json(),
            "the payload is the canonical envelope"
        );
        assert!(
            store
                .due_deliveries(now, lease, 10)
                .await
                .unwrap()
                .is_empty(),
            "a claimed delivery is leased"
        );
        let retry = now + chrono::Duration::seconds(5);
        let result = DeliveryResult::RetryAt {
            at: retry,
            status: Some(500),
            error: "HTTP 500".into(),
        };
        store.record_delivery(&due[0], now, &result).await.unwrap();
        let again = store
            .due_deliveries(retry, retry + chrono::Duration::seconds(60), 10)
            .await
            .unwrap();
        assert_eq!(
            (again.len(), again[0].attempts, again[0].first_attempt_at),
            (1, 1, Some(now))
        );
        store
            .record_delivery(&again[0], retry, &DeliveryResult::Delivered { status: 204 })
            .await
            .unwrap();
        assert_eq!(
            store.outbox_counts().await.unwrap(),
            [("delivered".to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn reserved_seqs_are_never_reused_and_settling_returns_the_rest() {
        let (dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let call = new_call(&ws.id);
        store.create_call(&call).await.unwrap();
        let (_, end) = store
            .reserve_call_seqs(&ws.id, &call.id, 100)
            .await
            .unwrap();
        assert_eq!(end, 100);
        // A "crash": the next process reserves after the whole first block.
        drop(store);
        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        let (_, end) = store
            .reserve_call_seqs(&ws.id, &call.id, 100)
            .await
            .unwrap();
        assert_eq!(end, 200);
        // Used up to 150: settling gives back 151..=200.
        store.settle_call_seqs(&call.id, 200, 150).await.unwrap();
        assert_eq!(
            store
                .call(&ws.id, &call.id)
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            150
        );
        // Settling is refused if someone reserved after us.
        store.reserve_call_seqs(&ws.id, &call.id, 10).await.unwrap();
        store.settle_call_seqs(&call.id, 150, 140).await.unwrap();
        assert_eq!(
            store
                .call(&ws.id, &call.id)
                .await
                .unwrap()
                .unwrap()
                .last_seq,
            160
        );
        // The end is recorded with its seq; then reserving is refused.
        let end_event = Envelope::new(
            ws.id.clone(),
            Subject::Call(call.id.clone()),
            161,
            time::now(),
            Payload::parse("call.completed", json!({})).unwrap(),
        )
        .unwrap();
        let ended = store
            .record_call_events(&ws.id, &call.id, &[end_event])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ended.status, ended.last_seq), (CallStatus::Completed, 161));
        assert!(matches!(
            store.reserve_call_seqs(&ws.id, &call.id, 1).await,
            Err(StoreError::CallEnded(_))
        ));
        let other = store.ensure_workspace("b").await.unwrap();
        assert!(matches!(
            store.reserve_call_seqs(&other.id, &call.id, 1).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn conversations_survive_reopen() {
        let (dir, store) = store().await;
        let ws = store.ensure_workspace("a").await.unwrap();
        let c = Conversation {
            id: ConversationId::new(),
            workspace_id: ws.id.clone(),
            channel: Channel::Whatsapp,
            participants: vec!["+14155550123".into()],
            mode: ConversationMode::Ai,
            created_at: time::now(),
            last_seq: 0,
        };
        store.create_conversation(&c).await.unwrap();
        drop(store);
        let store = SqliteStore::open(&dir.path().join("cs.db")).await.unwrap();
        assert_eq!(store.conversation(&ws.id, &c.id).await.unwrap(), Some(c));
    }
}
