//! callstream's HTTP server: configuration, authentication, ingest, the surfaces' handlers,
//! metrics, and a graceful shutdown that closes streams.
//!
//! [`app`] builds the router from an [`AppState`] (so tests can drive it), [`start`] opens the
//! backends chosen by the configuration, binds, and serves until told to stop. The server owns
//! the I/O; the domain lives in `callstream-core`, formats in `callstream-surfaces`, fan-out in
//! `callstream-bus`, and records in `callstream-store`.

pub mod audio;
pub mod auth;
pub mod body;
pub mod commands;
pub mod config;
pub mod conn;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ingest;
pub mod limit;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod reaper;
pub mod revocations;
pub mod routes;
pub mod state;
pub mod stream_http;
pub mod targets;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use callstream_bus::{
    Bus, CommandRouter, InProcessBus, InProcessCommands, InProcessConfig, NatsBus, NatsCommands,
    NatsConfig,
};
use callstream_store::{PgStore, SqliteStore, Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;

/// The SSE stream paths of [`app`]: their `GET`s are answered by [`stream_http`], which holds
/// no HTTP buffers while a stream is open. Keep in step with the `streams` routes below.
pub(crate) fn is_sse_stream(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "v1", "calls", id, "transcript", "stream"] | ["", "v1", "conversations", id, "stream"]
            if !id.is_empty()
    ) || path == "/v1/speech-events/stream"
}

/// Every long-lived stream route (SSE and WebSocket), as routed below. docs/asyncapi.yaml
/// describes each one; a test holds the two lists together, and another that each is routed.
pub const STREAM_PATHS: &[&str] = &[
    "/v1/calls/{id}/transcript/stream",
    "/v1/calls/{id}/stream",
    "/v1/conversations/{id}/stream",
    "/v1/speech-events/stream",
    "/live-transcript/{call_sid}",
    "/ws/v1/liveCalls",
    "/v1/runtime",
];

/// `/healthz`, `/readyz` and `/metrics`: on the public listener, or alone on `internal_listen`.
fn ops_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(routes::ops::healthz))
        .routes(routes!(routes::ops::readyz))
        .routes(routes!(routes::ops::metrics))
}

fn ops_routes() -> Router<AppState> {
    ops_api().into()
}

/// The REST surface, each route described by its handler's `#[utoipa::path]` (src/openapi.rs):
/// a REST route added here without a description does not compile.
fn rest_api(state: &AppState) -> OpenApiRouter<AppState> {
    use routes::{
        audio_streams, calls, conversations, dashboard, keys, session, stream_tokens, webhooks,
        workspace,
    };
    // Seed 004's resource answers any other method with 405 in its own error shape, and takes
    // its paths with and without the trailing slash (the alias is not described twice).
    let (schemas, paths, streams) = routes!(
        audio_streams::create,
        audio_streams::list,
        audio_streams::delete_all
    );
    let streams = streams.fallback(audio_streams::method_not_allowed);
    let (one_schemas, one_paths, one_stream) = routes!(audio_streams::get, audio_streams::delete);
    let one_stream = one_stream.fallback(audio_streams::method_not_allowed);
    let rest = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(calls::create, calls::list))
        .routes(routes!(workspace::get))
        .routes(routes!(calls::get))
        .routes(routes!(calls::ingest_events))
        .routes(routes!(calls::transcript))
        .routes(routes!(calls::command))
        .routes(routes!(stream_tokens::create))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(conversations::create, conversations::list))
        .routes(routes!(conversations::get))
        .routes(routes!(conversations::ingest_events))
        .routes(routes!(conversations::change_mode))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::disable))
        .routes(routes!(webhooks::enable))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::messages))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::retry))
        .routes(routes!(webhooks::replay))
        .routes(routes!(session::current, session::create, session::delete))
        .routes((schemas, paths, streams.clone()))
        .route("/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream", streams)
        .routes((one_schemas, one_paths, one_stream.clone()))
        .route(
            "/api/v1/Account/{auth_id}/Call/{call_uuid}/Stream/{stream_id}",
            one_stream,
        )
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style))
        .routes(routes!(dashboard::demo))
        .routes(routes!(openapi::document));
    // Health and metrics here, unless an internal listener serves them.
    if state.config().internal_listen.is_none() {
        rest.merge(ops_api())
    } else {
        rest
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    // Everything but the long-lived streams answers within `request_timeout_secs`.
    let timeout = state.config().request_timeout();
    let (bounded, mut description) = rest_api(&state).split_for_parts();
    openapi::qualify_operation_ids(&mut description);
    let document = openapi::Document(bytes::Bytes::from(
        description.to_pretty_json().unwrap_or_default(),
    ));
    let bounded = bounded
        .layer(axum::Extension(document))
        .route_layer(middleware::from_fn(move |request, next| {
            answer_within(timeout, request, next)
        }));
    let streams = Router::new()
        .route(
            "/v1/calls/{id}/transcript/stream",
            get(routes::transcript_stream::stream),
        )
        .route("/v1/calls/{id}/stream", get(routes::call_socket::socket))
        .route(
            "/v1/conversations/{id}/stream",
            get(routes::conversations::stream),
        )
        .route(
            "/v1/speech-events/stream",
            get(routes::speech_stream::stream),
        )
        .route(
            "/live-transcript/{call_sid}",
            get(routes::live_transcript::socket),
        )
        .route("/ws/v1/liveCalls", get(routes::live_calls::socket))
        .route("/v1/runtime", get(routes::runtime_socket::socket));

    Router::new()
        .merge(bounded)
        .merge(streams)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config().max_body_bytes))
        .layer(middleware::from_fn(auth::refuse_query_tokens))
        // Outside every refusal, so that each says `Connection: close` when it left a body unread.
        .layer(middleware::from_fn(body::close_if_body_unread))
        .layer(middleware::from_fn(log_request))
        .layer(cors(state.config()))
        .with_state(state)
}

fn cors(config: &Config) -> CorsLayer {
    let origins = if config.cors_allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .cors_allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-auth-id"),
            HeaderName::from_static("x-auth-token"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Answers 503 `timeout` when the inner handler takes longer than `limit`. Applied to every
/// route except the long-lived streams (seed 000's 10-second write timeout).
async fn answer_within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// One log line per request: method, path, status, latency. Never the query string or headers,
/// which may carry a key.
/// What a request's log line says beyond its method, path and status: filled in by whoever
/// learns it (the auth extractors name the workspace).
#[derive(Clone, Default)]
pub struct RequestLog(Arc<std::sync::OnceLock<String>>);

impl RequestLog {
    /// Names the request's workspace in its log line (the first one named counts).
    pub fn workspace(parts: &axum::http::request::Parts, workspace: &callstream_core::WorkspaceId) {
        if let Some(log) = parts.extensions.get::<Self>() {
            let _ = log.0.set(workspace.to_string());
        }
    }
}

/// The request's id: the caller's `X-Request-Id` when it is a plain token (1–64 letters, digits,
/// `.`, `_`, `-`), so one id follows a request through proxies; else a new `req_` and 16 hex
/// digits.
fn request_id(request: &Request) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
        .map_or_else(
            || {
                let mut bytes = [0u8; 8];
                callstream_core::id::random_bytes(&mut bytes);
                format!("req_{:016x}", u64::from_be_bytes(bytes))
            },
            str::to_owned,
        )
}

/// One log line per request: its id (also answered as `X-Request-Id`), method, path (never the
/// query, where a key may be), status, time to the answer's head in milliseconds (to 0.1), the
/// workspace when known, and a refusal's `error_code`. Never a key, token or body.
async fn log_request(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let id = request_id(&request);
    let log = RequestLog::default();
    request.extensions_mut().insert(log.clone());
    let started = Instant::now();
    let mut response = next.run(request).await;
    let ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
    let error_code = response.extensions().get::<error::ErrorCode>().map(|c| c.0);
    tracing::info!(
        request_id = %id,
        %method,
        path,
        status = response.status().as_u16(),
        ms,
        workspace = log.0.get().map(String::as_str),
        error_code,
        "request"
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("webhooks: {0}")]
    Webhooks(String),
    #[error("opening the bus: {0}")]
    Bus(String),
    #[error("cannot listen on {addr}: {}", bind_advice(.reason))]
    Bind {
        addr: SocketAddr,
        reason: std::io::Error,
    },
}

/// What a failed bind means, and what to do about it.
fn bind_advice(reason: &std::io::Error) -> String {
    match reason.kind() {
        std::io::ErrorKind::AddrInUse => "the address is already in use (another callstream, or another program, is listening there); stop it, or choose another address with --listen or CALLSTREAM_LISTEN".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges); choose a port above 1023 with --listen or CALLSTREAM_LISTEN".into(),
        std::io::ErrorKind::AddrNotAvailable => "no interface of this machine has that address; use 127.0.0.1 or 0.0.0.0 with --listen or CALLSTREAM_LISTEN".into(),
        _ => reason.to_string(),
    }
}

/// Opens the store and bus the configuration names. One place chooses backends: PostgreSQL
/// when `database_url` is set (else SQLite in `data_dir`), NATS when `nats_url` is set (else
/// the in-process bus and command router).
///
/// # Errors
/// When the data directory, the database or NATS cannot be opened.
pub async fn open_backends(config: &Config) -> Result<Backends, StartError> {
    let store: Arc<dyn Store> = match &config.database_url {
        Some(url) => Arc::new(PgStore::connect(url, config.database_max_connections).await?),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
            Arc::new(
                SqliteStore::open_with(&config.database_path(), config.sqlite_synchronous).await?,
            )
        }
    };
    let local = InProcessConfig {
        history_capacity: config.history_capacity,
        history_max_bytes_per_topic: config.history_max_bytes_per_call,
        history_max_bytes: config.history_max_bytes,
        ended_retention: Duration::from_secs(config.history_retention_secs),
        ..InProcessConfig::default()
    };
    let Some(nats_url) = &config.nats_url else {
        return Ok(Backends {
            store,
            bus: Arc::new(InProcessBus::new(local)),
            commands: Arc::new(InProcessCommands::new()),
            nats: None,
        });
    };
    let node = node_name();
    let bus = NatsBus::connect(NatsConfig {
        url: nats_url.clone(),
        stream: config.nats_stream.clone(),
        max_age: Duration::from_secs(config.nats_max_age_secs),
        replicas: config.nats_replicas,
        local,
        name: node.clone(),
        ..NatsConfig::default()
    })
    .await
    .map_err(|e| StartError::Bus(e.to_string()))?;
    let client = bus.client().clone();
    let commands = NatsCommands::start(client.clone(), node)
        .await
        .map_err(|e| StartError::Bus(e.to_string()))?;
    Ok(Backends {
        store,
        bus: Arc::new(bus),
        commands: Arc::new(commands),
        nats: Some(client),
    })
}

/// This process's name on NATS: host and process id.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("callstream-{host}-{}", std::process::id())
}

/// The backends one server runs on.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub commands: Arc<dyn CommandRouter>,
    /// The NATS connection when the bus is NATS (for wake-ups between nodes).
    pub nats: Option<async_nats::Client>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    task: JoinHandle<std::io::Result<()>>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served when `internal_listen` is set.
    internal_addr: Option<SocketAddr>,
}

/// Opens the backends, binds `config.listen` and serves in the background.
///
/// # Errors
/// When the backends cannot be opened or the address cannot be bound.
pub async fn start(config: Config) -> Result<Server, StartError> {
    // The address first: a port in use stops the start before any data directory or database
    // is made.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|reason| StartError::Bind {
            addr: config.listen,
            reason,
        })?;
    let addr = listener.local_addr().map_err(|reason| StartError::Bind {
        addr: config.listen,
        reason,
    })?;
    let internal = match config.internal_listen {
        Some(at) => Some(
            tokio::net::TcpListener::bind(at)
                .await
                .map_err(|reason| StartError::Bind { addr: at, reason })?,
        ),
        None => None,
    };
    let backends = open_backends(&config).await?;
    let shutdown = CancellationToken::new();
    let state = AppState::new(config, backends, shutdown.clone());

    let maintenance_state = state.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                () = maintenance_state.shutdown().cancelled() => break,
                _ = every.tick() => maintenance_state.bus().maintain().await,
            }
        }
    });

    let schedule = Arc::new(
        state
            .config()
            .retry_schedule()
            .map_err(|e| StartError::Webhooks(e.to_string()))?,
    );
    let http = webhooks::client(
        Duration::from_secs(state.config().webhook_timeout_secs),
        state.config().target_policy(),
    )
    .map_err(|e| StartError::Webhooks(e.to_string()))?;
    tokio::spawn(webhooks::run(state.clone(), http, schedule));
    tokio::spawn(webhooks::listen_for_wakes(state.clone()));
    tokio::spawn(webhooks::prune(state.clone()));
    tokio::spawn(reaper::run(state.clone()));
    tokio::spawn(revocations::run(state.clone()));

    // Build the router's services once: each connection then clones an `Arc` (axum's own
    // `serve(listener, router)` rebuilt the whole router per accepted connection, which massif
    // showed as the largest share of an idle SSE stream's memory).
    let router = app(state.clone()).with_state(());
    let metrics = state.metrics();
    let limits = conn::ConnectionLimits::new(
        state.config().max_connections,
        state.config().max_connections_per_source,
        metrics.connections_open.clone(),
        metrics
            .connections_refused
            .get_or_create(&metrics::ReasonLabels { reason: "total" })
            .clone(),
        metrics
            .connections_refused
            .get_or_create(&metrics::ReasonLabels {
                reason: "per_source",
            })
            .clone(),
    );
    let listener = conn::GuardedListener::new(
        listener,
        state.config().write_stall_timeout(),
        state.config().socket_send_buffer(),
        limits,
    );
    let task = tokio::spawn(http::serve(
        listener,
        router,
        shutdown.clone(),
        Duration::from_secs(state.config().header_read_timeout_secs),
    ));
    // Audio streams that were active when the last process stopped reconnect once their
    // calls' audio flows again.
    // In a cluster, the nodes share them: each runs those it claimed, and takes over those
    // whose node stopped or died.
    if state.config().clustered() {
        tokio::spawn(audio::adopt(state.clone()));
        tokio::spawn(audio::listen_for_stops(state.clone()));
    } else {
        let resume_state = state.clone();
        tokio::spawn(async move {
            resume_state.audio_streams().resume_all(&resume_state).await;
        });
    }
    let internal_addr = internal.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(internal) = internal {
        let at = internal_addr;
        let ops = ops_routes().with_state(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(internal, ops)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "the internal listener failed");
            }
        });
        tracing::info!(addr = ?at, "health and metrics on the internal listener");
    }
    tracing::info!(%addr, "callstream listening");
    Ok(Server {
        addr,
        state,
        task,
        internal_addr,
    })
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The internal listener's address (`internal_listen`), if there is one.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.internal_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Starts a graceful shutdown: streams get a closing frame and end, new connections are
    /// refused, in-flight requests finish.
    pub fn shutdown(&self) {
        self.state.shutdown().cancel();
    }

    /// Waits for the server to stop, at most `shutdown_timeout_secs` after shutdown began;
    /// connections still open then are abandoned with a warning.
    ///
    /// # Errors
    /// When serving itself failed.
    pub async fn wait(self) -> std::io::Result<()> {
        self.state.shutdown().cancelled().await;
        let limit = Duration::from_secs(self.state.config().shutdown_timeout_secs);
        let result = tokio::time::timeout(limit, self.task).await;
        // Give the unused ends of seq reservations back, so a clean restart shows no gaps.
        self.state.live().settle_all(self.state.store()).await;
        match result {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(
                    seconds = limit.as_secs(),
                    "connections still open after the shutdown timeout; closing them"
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn sse_stream_paths_are_exactly_the_sse_routes() {
        for path in [
            "/v1/calls/call_1/transcript/stream",
            "/v1/conversations/conv_1/stream",
            "/v1/speech-events/stream",
        ] {
            assert!(is_sse_stream(path), "{path}");
        }
        for path in [
            "/v1/calls/call_1/stream",
            "/v1/calls//transcript/stream",
            "/v1/calls/call_1/transcript",
            "/v1/calls/call_1/transcript/stream/x",
            "/v1/conversations/conv_1/stream/",
            "/live-transcript/CA1",
            "/ws/v1/liveCalls",
            "/",
        ] {
            assert!(!is_sse_stream(path), "{path}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_routes_answer_503_after_the_limit() {
        let limit = Duration::from_secs(10);
        let router: Router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(11)).await;
                    "late"
                }),
            )
            .route(
                "/fast",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(9)).await;
                    "ok"
                }),
            )
            .route_layer(middleware::from_fn(move |r, n| answer_within(limit, r, n)));
        let call = |path: &'static str| {
            router
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
        };
        let slow = call("/slow").await.unwrap();
        assert_eq!(slow.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(slow.into_body(), 1024).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error_code": "timeout", "message": "the request took longer than 10 s"})
        );
        assert_eq!(call("/fast").await.unwrap().status(), StatusCode::OK);
    }
}
