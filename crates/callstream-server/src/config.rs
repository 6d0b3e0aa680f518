//! The server's configuration: one typed struct, defaults embedded, then a TOML file, then
//! `CALLSTREAM_*` environment variables, then command-line flags; validated once at load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Everything the server can be told. Each field is also a `CALLSTREAM_<FIELD>` variable
/// (upper case), e.g. `CALLSTREAM_STREAM_QUEUE_CAPACITY=128`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// A second, internal address for `/metrics`, `/healthz` and `/readyz` (Centrifugo's
    /// internal port): when set, they are served there only, so that they need not face the
    /// internet. Unset, they are on `listen`.
    pub internal_listen: Option<SocketAddr>,
    /// Directory for the embedded SQLite database (`callstream.db`).
    pub data_dir: PathBuf,
    /// The embedded store's durability: `full` (every commit on disk before it is answered,
    /// so an accepted event keeps its webhooks through a power loss) or `normal` (a process
    /// crash loses nothing; a power loss may lose the last commits).
    pub sqlite_synchronous: callstream_store::Durability,
    /// PostgreSQL URL of the store several nodes share
    /// (`postgres://callstream_app:…@host/callstream`), connected as the gateway's role: one
    /// that owns nothing and has no `BYPASSRLS` (docs/operations.md). Unset: the embedded
    /// SQLite database in `data_dir`.
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool.
    pub database_max_connections: u32,
    /// NATS URL(s) of the bus several nodes share (`nats://host:4222`, comma-separated for a
    /// cluster); needs `database_url`. Unset: the in-process bus.
    pub nats_url: Option<String>,
    /// The JetStream stream that keeps events for resume.
    pub nats_stream: String,
    /// Seconds events stay resumable on NATS.
    pub nats_max_age_secs: u64,
    /// Replicas of the event stream (1 on one NATS server, 3 on a cluster of three).
    pub nats_replicas: usize,
    /// Seconds a node's claim on shared work (a live transcript socket's place in its call's
    /// limit, an audio stream it runs) lasts unless renewed: a node that dies gives them back
    /// this long after its last renewal. Renewed every third of it. Clustered only.
    pub cluster_lease_secs: u64,
    /// Frames that may wait for one stream before newer frames are dropped for it.
    pub stream_queue_capacity: usize,
    /// Events kept per call and per conversation for resume (`Last-Event-ID`).
    pub history_capacity: usize,
    /// Seconds a finished call's history stays available for resume.
    pub history_retention_secs: u64,
    /// Bytes of history kept per call and per conversation (each event counted at its canonical
    /// JSON size): the oldest events go first when either this or `history_capacity` is reached.
    pub history_max_bytes_per_call: usize,
    /// Bytes of history kept by this node over all calls and conversations: past it, each topic
    /// that publishes gives up its oldest events, and the sweep empties finished then idle
    /// topics. A resume that reaches back past what is left is told of the gap.
    pub history_max_bytes: usize,
    /// The largest event accepted at ingest, in bytes of its JSON as the runtime sends it
    /// (refused with 413 `event_too_large`).
    pub max_event_bytes: usize,
    /// Connections this process holds open at most; more are closed as soon as they are
    /// accepted. Keep it under the open-files limit, with room for the store and the bus.
    pub max_connections: usize,
    /// Connections one source address may hold open at most (0: no per-source limit, for a
    /// gateway behind a proxy whose clients all come from one address).
    pub max_connections_per_source: usize,
    /// Seconds a client may take to send a request's head before the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a live call may go on without its runtime's socket (the runtime that created it
    /// or last sent for it) before it is ended as `call.failed` with reason `runtime_lost`.
    pub runtime_lost_grace_secs: u64,
    /// Seconds a live call may go without any event before it is ended as `call.failed` with
    /// reason `stale` (0: never).
    pub call_stale_secs: u64,
    /// Seconds between SSE comment heartbeats.
    pub sse_heartbeat_secs: u64,
    /// Seconds a non-streaming request may take before it is answered with a timeout.
    pub request_timeout_secs: u64,
    /// Seconds graceful shutdown waits for open requests before exiting anyway.
    pub shutdown_timeout_secs: u64,
    /// Seconds a connection may make no write progress (its client reads nothing) before it is
    /// closed. A slow reader keeps progressing and is never cut off by this.
    pub write_stall_timeout_secs: u64,
    /// The kernel send buffer of every accepted connection (`SO_SNDBUF`; Linux reserves twice
    /// this for bookkeeping). Bounded so that a client that stops reading fills it soon and
    /// starts losing frames from its own queue, instead of parking megabytes in the kernel:
    /// left to autotuning, a stuck client's buffer grew to 3.9 MB on loopback. 0 leaves the
    /// size to the kernel's autotuning.
    pub socket_send_buffer_bytes: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most events one ingest request may carry.
    pub max_events_per_request: usize,
    /// Seconds between WebSocket pings on idle sockets.
    pub ws_ping_secs: u64,
    /// Largest WebSocket message a client may send, in bytes (larger closes with 1009).
    pub ws_max_message_bytes: usize,
    /// Messages per second one client may send on a socket before they are refused.
    pub ws_client_messages_per_sec: u32,
    /// Seconds in a row a socket may stay over its message rate limit before it is closed with
    /// 1008.
    pub ws_flood_close_secs: u32,
    /// Commands one socket may have waiting for the call runtime at once.
    pub ws_max_commands_in_flight: usize,
    /// Seconds a command waits for the call runtime's answer.
    pub command_timeout_secs: u64,
    /// Seconds a stream token lives when the request names no `ttl_secs`.
    pub stream_token_ttl_secs: u64,
    /// The longest `ttl_secs` a stream token may ask for.
    pub stream_token_max_ttl_secs: u64,
    /// Connections one call's live transcript socket (seed 003) may have at once.
    pub live_transcript_max_connections: usize,
    /// Messages per second a live transcript socket client may send.
    pub live_transcript_messages_per_sec: u32,
    /// Seconds a browser session (`POST /v1/session`) lasts.
    pub session_ttl_secs: u64,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Off by default so the demo works
    /// on http://127.0.0.1; turn it on behind TLS.
    pub session_cookie_secure: bool,
    /// Seconds between webhook retries, in order, after the first attempt (which is at once).
    /// Empty means the default 24-hour schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, and a
    /// last attempt at the 24-hour mark.
    #[serde(deserialize_with = "numbers_or_csv")]
    pub webhook_retry_secs: Vec<u64>,
    /// Seconds after a webhook's first attempt at which it is given up.
    pub webhook_deadline_secs: u64,
    /// Seconds one webhook request may take.
    pub webhook_timeout_secs: u64,
    /// Webhook requests in flight at once.
    pub webhook_concurrency: usize,
    /// Webhook requests in flight at once to one endpoint: a slow or dead endpoint holds at most
    /// these many of the `webhook_concurrency` places.
    pub webhook_endpoint_concurrency: usize,
    /// Webhook requests (and status callbacks) in flight at once for one workspace.
    pub webhook_workspace_concurrency: usize,
    /// Milliseconds between looks at the webhook outbox.
    pub webhook_poll_ms: u64,
    /// Seconds an endpoint's old secret keeps signing beside the new one after a rotation
    /// (`POST /v1/webhook-endpoints/{id}/rotate-secret`); `0` stops it at once.
    pub webhook_secret_overlap_secs: u64,
    /// Webhook endpoints one workspace may have.
    pub max_webhook_endpoints: usize,
    /// Seconds after which an endpoint whose every attempt has failed is disabled (as Svix
    /// does, 5 days); `0`: never.
    pub webhook_disable_after_failing_secs: u64,
    /// Seconds delivered and given-up webhook messages (and their delivery logs) and status
    /// callbacks are kept, from when they were queued; `0`: for ever.
    pub webhook_retention_secs: u64,
    /// Let webhook endpoints, audio stream services and status callbacks point at loopback,
    /// private, link-local (cloud metadata), unique-local and other non-public addresses. Off:
    /// a tenant must not reach the gateway's own network. Tests and the local demo turn it on.
    #[serde(deserialize_with = "flag")]
    pub allow_private_webhook_targets: bool,
    /// Seconds of audio a bidirectional stream may have waiting to be played into the call;
    /// what a service sends beyond it is dropped (and `DegradedStream` reports 30, 60 and 90 %).
    pub audio_playout_max_secs: u64,
    /// Seconds one attempt to connect to an audio stream's service may take.
    pub audio_connect_timeout_secs: u64,
    /// Attempts after the first to connect to a service before the stream is dropped.
    pub audio_connect_retries: u32,
    /// Seconds a service may read nothing (the gateway's writes make no progress) before its
    /// stream is dropped.
    pub audio_service_stall_secs: u64,
    /// Largest message a service may send (a `playAudio` with its base64), in bytes.
    pub audio_max_service_message_bytes: usize,
    /// Active audio streams one call may have.
    pub audio_streams_per_call: usize,
    /// Origins allowed to call the API from a browser (CORS); `*` allows any. Streams are
    /// authorised by key or stream token, never by cookie, so `*` exposes nothing by itself.
    #[serde(deserialize_with = "list_or_csv")]
    pub cors_allowed_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal_listen: None,
            data_dir: PathBuf::from("./callstream-data"),
            sqlite_synchronous: callstream_store::Durability::Full,
            database_url: None,
            database_max_connections: 16,
            nats_url: None,
            nats_stream: "CALLSTREAM_EVENTS".to_owned(),
            nats_max_age_secs: 24 * 3600,
            nats_replicas: 1,
            cluster_lease_secs: 30,
            stream_queue_capacity: 64,
            history_capacity: 128,
            history_retention_secs: 300,
            history_max_bytes_per_call: 1024 * 1024,
            history_max_bytes: 128 * 1024 * 1024,
            max_event_bytes: 64 * 1024,
            max_connections: 16_384,
            max_connections_per_source: 1_024,
            header_read_timeout_secs: 5,
            runtime_lost_grace_secs: 60,
            call_stale_secs: 3600,
            sse_heartbeat_secs: 30,
            request_timeout_secs: 10,
            shutdown_timeout_secs: 10,
            write_stall_timeout_secs: 60,
            socket_send_buffer_bytes: 64 * 1024,
            max_body_bytes: 1024 * 1024,
            max_events_per_request: 500,
            cors_allowed_origins: vec!["*".to_owned()],
            ws_ping_secs: 30,
            ws_max_message_bytes: 64 * 1024,
            ws_client_messages_per_sec: 100,
            ws_flood_close_secs: 10,
            ws_max_commands_in_flight: 16,
            command_timeout_secs: 5,
            stream_token_ttl_secs: 300,
            stream_token_max_ttl_secs: 3600,
            live_transcript_max_connections: 10,
            live_transcript_messages_per_sec: 100,
            session_ttl_secs: 12 * 3600,
            session_cookie_secure: false,
            webhook_retry_secs: Vec::new(),
            webhook_deadline_secs: 24 * 3600,
            webhook_timeout_secs: 10,
            webhook_concurrency: 16,
            webhook_endpoint_concurrency: 4,
            webhook_workspace_concurrency: 8,
            webhook_poll_ms: 500,
            webhook_secret_overlap_secs: 24 * 3600,
            max_webhook_endpoints: 100,
            webhook_disable_after_failing_secs: 5 * 24 * 3600,
            webhook_retention_secs: 30 * 24 * 3600,
            allow_private_webhook_targets: false,
            audio_playout_max_secs: 40,
            audio_connect_timeout_secs: 10,
            audio_connect_retries: 2,
            audio_service_stall_secs: 10,
            audio_max_service_message_bytes: 2 * 1024 * 1024,
            audio_streams_per_call: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The smallest send buffer worth asking for: below it the kernel raises the size anyway, and
/// a frame or two would fill it.
const MIN_SEND_BUFFER: usize = 4 * 1024;
/// The largest: Linux caps `SO_SNDBUF` at `net.core.wmem_max` in any case.
const MAX_SEND_BUFFER: usize = 16 * 1024 * 1024;

/// `CALLSTREAM_*` variables that configure the command line rather than the server; every
/// other `CALLSTREAM_*` variable must name a [`Config`] field, so that a typo is an error.
pub const COMMAND_LINE_VARIABLES: &[&str] = &[
    "CONFIG",
    "LOG_FORMAT",
    "REQUIRE_SERVICES",
    "SERVER",
    "RUNTIME_KEY",
    "SIM_CALLS",
    "SIM_RATE",
    "SIM_SPEED",
    "SIM_SEED",
    "SIM_CONVERSATIONS",
    "SIM_AUDIO",
    "WORKSPACE",
    "KEY_RUNTIME",
    "KEY_JSON",
    "OWNER_DATABASE_URL",
    "TEST_POSTGRES",
    "NATS_SERVER",
];

fn numbers_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<u64>),
        One(u64),
        Csv(String),
    }
    match Either::deserialize(d)? {
        Either::List(l) => Ok(l),
        Either::One(n) => Ok(vec![n]),
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|n| {
                n.parse().map_err(|_| {
                    serde::de::Error::custom(format!("{n:?} is not a number of seconds"))
                })
            })
            .collect(),
    }
}

/// `true`/`false`, or `1`/`0` as environment variables usually say it.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Bool(bool),
        Number(i64),
    }
    match Either::deserialize(d)? {
        Either::Bool(b) => Ok(b),
        Either::Number(0) => Ok(false),
        Either::Number(1) => Ok(true),
        Either::Number(n) => Err(serde::de::Error::custom(format!(
            "{n} is not a flag: expected true, false, 1 or 0"
        ))),
    }
}

fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(l) => l,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The name of every setting: the field list serde knows for [`Config`].
pub fn setting_names() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};

    struct FieldNames<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for FieldNames<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("only the field names are read"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("only the field names are read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    static NAMES: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: &'static [&'static str] = &[];
        let _ = Config::deserialize(FieldNames(&mut names));
        names
    })
}

/// The setting closest to a misspelt `key` (edit distance), if one is close enough to be meant.
fn closest(key: &str, names: &[&'static str]) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let substitution = previous + usize::from(ca != *cb);
                previous = row[j + 1];
                row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
            }
        }
        row[b.len()]
    }
    names
        .iter()
        .map(|name| (distance(key, name), *name))
        .filter(|(d, name)| *d <= (name.len() / 3).max(2))
        .min()
        .map(|(_, name)| name)
}

impl Config {
    /// Loads defaults, then `file` (TOML) if given, then every `CALLSTREAM_*` pair of `env`.
    /// `env` is passed in rather than read here so tests never touch the process environment.
    ///
    /// # Errors
    /// When the file cannot be read, a value has the wrong type, a key is unknown, or a value
    /// is out of range; the message names the file or variable.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            table = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let mut from_env = std::collections::HashSet::new();
        for (key, value) in env {
            let Some(field) = key.strip_prefix("CALLSTREAM_") else {
                continue;
            };
            if COMMAND_LINE_VARIABLES.contains(&field) {
                continue;
            }
            from_env.insert(field.to_ascii_lowercase());
            table.insert(field.to_ascii_lowercase(), env_value(&value));
        }
        // A misspelt setting is named as it was written, with the closest real one.
        let names = setting_names();
        for key in table.keys() {
            if names.contains(&key.as_str()) {
                continue;
            }
            let env = from_env.contains(key);
            let spell = |name: &str| {
                if env {
                    format!("CALLSTREAM_{}", name.to_ascii_uppercase())
                } else {
                    name.to_owned()
                }
            };
            let origin = match file {
                Some(path) if !env => format!("{} ({key})", path.display()),
                _ => spell(key),
            };
            let hint = closest(key, names)
                .map(|name| format!("; did you mean {}?", spell(name)))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                origin,
                message: format!(
                    "not a setting{hint} (the README's Configuration table lists them all)"
                ),
            });
        }
        let config: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin: "configuration".into(),
                message: e.message().to_owned(),
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("stream_queue_capacity", self.stream_queue_capacity as u64),
            ("history_capacity", self.history_capacity as u64),
            ("sse_heartbeat_secs", self.sse_heartbeat_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("write_stall_timeout_secs", self.write_stall_timeout_secs),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_event_bytes", self.max_event_bytes as u64),
            (
                "history_max_bytes_per_call",
                self.history_max_bytes_per_call as u64,
            ),
            ("history_max_bytes", self.history_max_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("runtime_lost_grace_secs", self.runtime_lost_grace_secs),
            ("max_events_per_request", self.max_events_per_request as u64),
            ("ws_ping_secs", self.ws_ping_secs),
            ("ws_max_message_bytes", self.ws_max_message_bytes as u64),
            (
                "ws_client_messages_per_sec",
                u64::from(self.ws_client_messages_per_sec),
            ),
            (
                "ws_max_commands_in_flight",
                self.ws_max_commands_in_flight as u64,
            ),
            ("command_timeout_secs", self.command_timeout_secs),
            ("stream_token_ttl_secs", self.stream_token_ttl_secs),
            ("stream_token_max_ttl_secs", self.stream_token_max_ttl_secs),
            ("webhook_deadline_secs", self.webhook_deadline_secs),
            ("session_ttl_secs", self.session_ttl_secs),
            (
                "live_transcript_max_connections",
                self.live_transcript_max_connections as u64,
            ),
            (
                "live_transcript_messages_per_sec",
                u64::from(self.live_transcript_messages_per_sec),
            ),
            ("webhook_timeout_secs", self.webhook_timeout_secs),
            ("webhook_concurrency", self.webhook_concurrency as u64),
            (
                "webhook_endpoint_concurrency",
                self.webhook_endpoint_concurrency as u64,
            ),
            (
                "webhook_workspace_concurrency",
                self.webhook_workspace_concurrency as u64,
            ),
            ("webhook_poll_ms", self.webhook_poll_ms),
            ("max_webhook_endpoints", self.max_webhook_endpoints as u64),
            ("audio_playout_max_secs", self.audio_playout_max_secs),
            (
                "audio_connect_timeout_secs",
                self.audio_connect_timeout_secs,
            ),
            ("audio_service_stall_secs", self.audio_service_stall_secs),
            (
                "audio_max_service_message_bytes",
                self.audio_max_service_message_bytes as u64,
            ),
            ("audio_streams_per_call", self.audio_streams_per_call as u64),
            (
                "database_max_connections",
                u64::from(self.database_max_connections),
            ),
            ("nats_max_age_secs", self.nats_max_age_secs),
            ("nats_replicas", self.nats_replicas as u64),
            ("cluster_lease_secs", self.cluster_lease_secs),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    origin: name.into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        self.retry_schedule()?;
        if self.nats_url.is_some() && self.database_url.is_none() {
            return Err(ConfigError::Invalid {
                origin: "nats_url".into(),
                message: "needs database_url: nodes that share a bus must share one store \
                          (PostgreSQL)"
                    .into(),
            });
        }
        if self.nats_stream.is_empty()
            || !self
                .nats_stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::Invalid {
                origin: "nats_stream".into(),
                message: "letters, digits, `_` and `-` only".into(),
            });
        }
        if self.socket_send_buffer_bytes != 0
            && !(MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&self.socket_send_buffer_bytes)
        {
            return Err(ConfigError::Invalid {
                origin: "socket_send_buffer_bytes".into(),
                message: format!(
                    "0 (the kernel's autotuning) or from {MIN_SEND_BUFFER} to {MAX_SEND_BUFFER}"
                ),
            });
        }
        if self.audio_playout_max_secs > 600 {
            return Err(ConfigError::Invalid {
                origin: "audio_playout_max_secs".into(),
                message: "at most 600 (10 minutes of queued audio per stream)".into(),
            });
        }
        if self.stream_token_max_ttl_secs > 7 * 24 * 3600 {
            return Err(ConfigError::Invalid {
                origin: "stream_token_max_ttl_secs".into(),
                message: "at most 604800 (7 days): stream tokens are meant to be short-lived"
                    .into(),
            });
        }
        if self.max_event_bytes > self.max_body_bytes {
            return Err(ConfigError::Invalid {
                origin: "max_event_bytes".into(),
                message: "must not exceed max_body_bytes (an event arrives in a request body)"
                    .into(),
            });
        }
        if self.stream_token_ttl_secs > self.stream_token_max_ttl_secs {
            return Err(ConfigError::Invalid {
                origin: "stream_token_ttl_secs".into(),
                message: "must not exceed stream_token_max_ttl_secs".into(),
            });
        }
        Ok(())
    }

    /// The outbound-address policy every call-out follows.
    pub fn target_policy(&self) -> crate::targets::Policy {
        crate::targets::Policy {
            allow_private: self.allow_private_webhook_targets,
        }
    }

    /// Whether several nodes may run on this configuration (NATS and PostgreSQL).
    pub fn clustered(&self) -> bool {
        self.nats_url.is_some()
    }

    /// How long a cluster claim lasts unless renewed (`cluster_lease_secs`).
    pub fn cluster_lease(&self) -> Duration {
        Duration::from_secs(self.cluster_lease_secs)
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("callstream.db")
    }

    pub fn audio_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.audio_connect_timeout_secs)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse_heartbeat_secs)
    }

    /// The webhook retry schedule this configuration names.
    ///
    /// # Errors
    /// When the retries do not fit in the deadline.
    pub fn retry_schedule(&self) -> Result<callstream_webhooks::RetrySchedule, ConfigError> {
        if self.webhook_retry_secs.is_empty() && self.webhook_deadline_secs == 24 * 3600 {
            return Ok(callstream_webhooks::RetrySchedule::default());
        }
        let delays = if self.webhook_retry_secs.is_empty() {
            callstream_webhooks::RetrySchedule::default()
                .retry_delays()
                .to_vec()
        } else {
            self.webhook_retry_secs
                .iter()
                .map(|s| Duration::from_secs(*s))
                .collect()
        };
        callstream_webhooks::RetrySchedule::new(
            delays,
            Duration::from_secs(self.webhook_deadline_secs),
        )
        .map(callstream_webhooks::RetrySchedule::without_jitter)
        .map_err(|e| ConfigError::Invalid {
            origin: "webhook_retry_secs".into(),
            message: e.to_string(),
        })
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs)
    }

    pub fn ws_ping(&self) -> Duration {
        Duration::from_secs(self.ws_ping_secs)
    }

    pub fn write_stall_timeout(&self) -> Duration {
        Duration::from_secs(self.write_stall_timeout_secs)
    }

    /// The send buffer to ask the kernel for on each connection, if any.
    pub fn socket_send_buffer(&self) -> Option<usize> {
        (self.socket_send_buffer_bytes > 0).then_some(self.socket_send_buffer_bytes)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// An environment value as TOML: numbers and booleans as such, everything else a string.
fn env_value(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = text.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn layers_defaults_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "stream_queue_capacity = 16\nsse_heartbeat_secs = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CALLSTREAM_SSE_HEARTBEAT_SECS", "7"),
                (
                    "CALLSTREAM_CORS_ALLOWED_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("CALLSTREAM_CONFIG", "ignored"),
                ("CALLSTREAM_LOG_FORMAT", "json"),
                ("CALLSTREAM_SIM_RATE", "2"),
                ("CALLSTREAM_WEBHOOK_RETRY_SECS", "5, 300,1800"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.stream_queue_capacity, 16);
        assert_eq!(c.sse_heartbeat_secs, 7);
        assert_eq!(
            c.cors_allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.history_capacity, Config::default().history_capacity);
        assert_eq!(c.webhook_retry_secs, [5, 300, 1800]);
        assert_eq!(c.retry_schedule().unwrap().retry_delays().len(), 3);
    }

    #[test]
    fn sqlite_durability_is_full_unless_set_to_normal() {
        use callstream_store::Durability;
        assert_eq!(Config::default().sqlite_synchronous, Durability::Full);
        let c = Config::load(None, env(&[("CALLSTREAM_SQLITE_SYNCHRONOUS", "normal")])).unwrap();
        assert_eq!(c.sqlite_synchronous, Durability::Normal);
        let err = Config::load(None, env(&[("CALLSTREAM_SQLITE_SYNCHRONOUS", "off")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("full") && err.contains("normal"), "{err}");
    }

    #[test]
    fn a_send_buffer_of_zero_leaves_it_to_the_kernel() {
        assert_eq!(Config::default().socket_send_buffer(), Some(64 * 1024));
        let c = Config::load(None, env(&[("CALLSTREAM_SOCKET_SEND_BUFFER_BYTES", "0")])).unwrap();
        assert_eq!(c.socket_send_buffer(), None);
    }

    #[test]
    fn every_field_is_a_setting_name_and_a_file_key_is_named_with_its_file() {
        let names = setting_names();
        assert!(names.contains(&"listen") && names.contains(&"nats_url"));
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        for key in defaults.as_table().unwrap().keys() {
            assert!(names.contains(&key.as_str()), "{key}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("callstream.toml");
        std::fs::write(&file, "data_dri = \"/tmp\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(
            err.ends_with("callstream.toml (data_dri): not a setting; did you mean data_dir? (the README's Configuration table lists them all)"),
            "{err}"
        );
    }

    #[test]
    fn refuses_unknown_keys_wrong_types_and_zeroes() {
        let cases = [
            (
                vec![("CALLSTREAM_STREAM_QUEUE_CAPACITY", "0")],
                "stream_queue_capacity: must be at least 1",
            ),
            (
                vec![("CALLSTREAM_STREAM_QUEUE_CAPACITY", "many")],
                "invalid type",
            ),
            (
                vec![("CALLSTREAM_NOPE", "1")],
                "CALLSTREAM_NOPE: not a setting (the README",
            ),
            (
                vec![("CALLSTREAM_LISTN", "127.0.0.1:1")],
                "CALLSTREAM_LISTN: not a setting; did you mean CALLSTREAM_LISTEN?",
            ),
            (
                vec![("CALLSTREAM_WEBHOOK_TIMEOUT_SEC", "5")],
                "did you mean CALLSTREAM_WEBHOOK_TIMEOUT_SECS?",
            ),
            (
                vec![("CALLSTREAM_LISTEN", "not-an-address")],
                "invalid socket address",
            ),
            (
                vec![("CALLSTREAM_SOCKET_SEND_BUFFER_BYTES", "100")],
                "socket_send_buffer_bytes: 0 (the kernel's autotuning) or from 4096",
            ),
            (
                vec![("CALLSTREAM_SOCKET_SEND_BUFFER_BYTES", "1000000000")],
                "socket_send_buffer_bytes: 0 (the kernel's autotuning) or from 4096",
            ),
        ];
        for (vars, expect) in cases {
            let err = Config::load(None, env(&vars)).unwrap_err().to_string();
            assert!(err.contains(expect), "{vars:?}: {err}");
        }
    }
}
