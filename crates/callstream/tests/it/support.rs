//! Test support: a real server on 127.0.0.1 port 0 with a real SQLite file (or, in the cluster
//! suite, a NATS server and a PostgreSQL database of each test's own), real HTTP clients, an SSE
//! reader, and a capture of every log line the process writes.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use callstream_core::KeyKind;
use callstream_server::{Config, Server, auth};
use futures::StreamExt;
use serde_json::{Value, json};

/// Every log line written by any test in this binary, at TRACE for callstream and the HTTP stack,
/// and every record of the `log` crate (tungstenite, native-tls and others log through it),
/// turned into the same lines.
pub fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        // `try_init` also installs the bridge from the `log` crate (tracing-log).
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace,sqlx=debug")
            .with_ansi(false)
            .with_writer(move || CaptureWriter(writer.clone()))
            .try_init();
        buffer
    })
}

struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A workspace's keys.
#[derive(Clone)]
pub struct Tenant {
    pub api: String,
    pub runtime: String,
}

/// The outside services of a test on the cluster backends: its own NATS server and its own
/// PostgreSQL database.
pub struct Cluster {
    /// Stopped and started by the cluster suite's fault tests.
    #[allow(dead_code)]
    pub nats: Mutex<callstream_bus::testing::NatsTestServer>,
    pub db: callstream_store::testing::PgTestDb,
    pub nats_url: String,
}

impl Cluster {
    /// Both services, or `None` (after one line) where the machine has neither and services are
    /// not required.
    pub async fn start(label: &str) -> Option<Arc<Self>> {
        let nats = callstream_bus::testing::NatsTestServer::start(label)?;
        let db = callstream_store::testing::PgTestDb::create(label).await?;
        Some(Arc::new(Self {
            nats_url: nats.url.clone(),
            nats: Mutex::new(nats),
            db,
        }))
    }

    /// Points `config` at these services.
    pub fn configure(&self, config: &mut Config) {
        config.database_url = Some(self.db.app_url());
        config.nats_url = Some(self.nats_url.clone());
    }
}

pub struct TestServer {
    pub server: Option<Server>,
    /// The NATS server and database when the suite runs on the cluster backends.
    pub cluster: Option<Arc<Cluster>>,
    /// What the server was started with (a restart uses it again).
    pub config: Config,
    pub base: String,
    pub acme: Tenant,
    pub other: Tenant,
    pub http: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        // Every receiver and service in these tests listens on 127.0.0.1: allowed explicitly
        // here (the default refuses it; `targets` tests that).
        allow_private_webhook_targets: true,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server with `tune` applied to its configuration; in the cluster suite (`it_cluster`),
    /// on a NATS server and a PostgreSQL database of its own.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut c = config(dir.path());
        let cluster = if crate::CLUSTER {
            Cluster::start("the cluster suite").await
        } else {
            None
        };
        if let Some(cluster) = &cluster {
            cluster.configure(&mut c);
        }
        tune(&mut c);
        let server = callstream_server::start(c.clone()).await.unwrap();
        let acme = tenant(&server, "acme").await;
        let other = tenant(&server, "other").await;
        let mut ts = Self::wrap(server, c, dir, acme, other);
        ts.cluster = cluster;
        ts
    }

    /// Another node on the same store and bus (the cluster suite), or on the same data
    /// directory (embedded: then only one may run at a time).
    #[allow(dead_code)]
    pub async fn another_node(&self) -> Self {
        let server = callstream_server::start(self.config.clone()).await.unwrap();
        let mut ts = Self::wrap(
            server,
            self.config.clone(),
            self.dir.clone(),
            self.acme.clone(),
            self.other.clone(),
        );
        ts.cluster = self.cluster.clone();
        ts
    }

    /// Starts another server on the same data directory (after a restart).
    pub async fn restart(mut self) -> Self {
        let old = self.server.take().unwrap();
        old.shutdown();
        old.wait().await.unwrap();
        let server = callstream_server::start(self.config.clone()).await.unwrap();
        let mut ts = Self::wrap(
            server,
            self.config.clone(),
            self.dir.clone(),
            self.acme.clone(),
            self.other.clone(),
        );
        ts.cluster = self.cluster.take();
        ts
    }

    fn wrap(
        server: Server,
        config: Config,
        dir: Arc<tempfile::TempDir>,
        acme: Tenant,
        other: Tenant,
    ) -> Self {
        logs();
        let base = format!("http://{}", server.addr());
        // No total timeout on the client: it would also cut stream bodies. Plain requests get
        // one each (below); streams are bounded per frame by `SseReader::next`.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self {
            server: Some(server),
            cluster: None,
            config,
            base,
            acme,
            other,
            http,
            dir,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Signs in with `secret` (an API key or a sign-in link's), as the dashboard does:
    /// `POST /v1/session`'s status, the session cookie (`name=value`) if one was set, and the
    /// answer's JSON.
    pub async fn sign_in(&self, secret: &str) -> (u16, Option<String>, Value) {
        let r = self
            .http
            .post(self.url("/v1/session"))
            .bearer_auth(secret)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        (status, cookie, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a call as acme's runtime and returns its JSON.
    pub async fn create_call(&self, transport: &str) -> Value {
        let (status, call) = self
            .post(
                "/v1/calls",
                &self.acme.runtime,
                &json!({"phone": "+14155550123", "direction": "inbound", "transport": transport}),
            )
            .await;
        assert_eq!(status, 201, "{call}");
        call
    }

    pub async fn ingest(&self, call_id: &str, events: Value) -> Value {
        let (status, body) = self
            .post(
                &format!("/v1/calls/{call_id}/events"),
                &self.acme.runtime,
                &events,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name_and_labels} not in:\n{text}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.shutdown();
        }
    }
}

async fn tenant(server: &Server, name: &str) -> Tenant {
    let store = server.state().store();
    let ws = store.ensure_workspace(name).await.unwrap();
    let api = auth::mint(&ws.id, KeyKind::Api);
    let runtime = auth::mint(&ws.id, KeyKind::Runtime);
    store.insert_key(&api.record).await.unwrap();
    store.insert_key(&runtime.record).await.unwrap();
    Tenant {
        api: api.secret,
        runtime: runtime.secret,
    }
}

/// Puts `event_type` with `payload` on the bus as the call's next event (seq one above the
/// store's) without recording it, as a batch looks to readers between its publish and its
/// commit (the store publishes a group while its writes complete), and waits until this
/// node's bus holds it. On the cluster backends the node then takes that seq as published:
/// nothing more may be ingested for the call afterwards.
pub async fn publish_before_commit(
    ts: &TestServer,
    call_id: &str,
    event_type: &str,
    payload: Value,
) -> u64 {
    use callstream_bus::{Event, Resume, SubscribeOptions, Topic};
    let state = ts.server().state();
    let who = auth::authenticate(state.store(), &ts.acme.api)
        .await
        .unwrap();
    let call_id = callstream_core::CallId::parse(call_id).unwrap();
    let mut call = state
        .store()
        .call(&who.workspace_id, &call_id)
        .await
        .unwrap()
        .unwrap();
    // The embedded store holds the end of the call's seq reservation; the node knows the last
    // seq it published.
    state.live().overlay(&mut call);
    let seq = call.last_seq + 1;
    let envelope = callstream_core::Envelope::new(
        who.workspace_id.clone(),
        callstream_core::Subject::Call(call_id.clone()),
        seq,
        callstream_core::time::now(),
        callstream_core::Payload::parse(event_type, payload).unwrap(),
    )
    .unwrap();
    let topic = Topic::call(&who.workspace_id, &call_id);
    let options = SubscribeOptions {
        queue_capacity: 8,
        dropped: Default::default(),
    };
    let mut watch = state
        .bus()
        .subscribe(&topic, Resume::Live, options)
        .await
        .unwrap();
    state.bus().publish(Event::new(envelope)).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the bus hands the event over within 10 s")
        .expect("the subscription stays open");
    assert_eq!(held.seq(), seq);
    seq
}

pub fn transcription(role: &str, text: &str, is_final: bool, turn_id: &str) -> Value {
    json!({"event_type": "call.transcription", "payload": {"role": role, "text": text, "is_final": is_final, "turn_id": turn_id}})
}

pub fn completed() -> Value {
    json!({"event_type": "call.completed", "payload": {"reason": "hangup"}})
}

/// One parsed SSE frame (or comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("frame data {:?}: {e}", self.data))
    }
}

/// Reads SSE frames from a streaming response.
pub struct SseReader {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: BytesMut,
}

impl SseReader {
    pub async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Self {
            status,
            headers,
            body: response.bytes_stream().boxed(),
            buf: BytesMut::new(),
        }
    }

    /// The next frame or comment; `None` when the server closed the stream. Panics after 10 s.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(10), self.next_inner())
            .await
            .expect("no SSE frame within 10 s")
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw = self.buf.split_to(end + 2);
                let text = String::from_utf8(raw.to_vec()).unwrap();
                let mut frame = Frame::default();
                let mut data = Vec::new();
                for line in text.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        frame.comment = Some(c.trim().to_owned());
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "id" => frame.id = Some(v.to_owned()),
                            "event" => frame.event = Some(v.to_owned()),
                            "data" => data.push(v.to_owned()),
                            _ => {}
                        }
                    }
                }
                frame.data = data.join("\n");
                return Some(frame);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                // A clean end of the chunked body is the server closing the stream; anything else
                // (a reset, a truncated chunk) is a failure, not a close.
                Some(Err(e)) => panic!("the stream broke instead of closing: {e}"),
                None => return None,
            }
        }
    }

    /// The next data frame, skipping heartbeat comments.
    pub async fn next_data(&mut self) -> Option<Frame> {
        loop {
            let f = self.next().await?;
            if f.comment.is_none() {
                return Some(f);
            }
        }
    }
}

/// Opens the transcript stream of a call with a Bearer key.
pub async fn transcript_stream(
    ts: &TestServer,
    call_id: &str,
    key: &str,
    last_event_id: Option<u64>,
) -> SseReader {
    let mut req = ts
        .http
        .get(ts.url(&format!("/v1/calls/{call_id}/transcript/stream")))
        .bearer_auth(key);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    SseReader::open(req).await
}

pub use callstream_core::testing::services_required;

/// A client that opens a call's transcript stream on a raw socket with a tiny receive buffer
/// and then never reads.
pub async fn stuck_client(ts: &TestServer, call_id: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(ts.server().addr()).await.unwrap();
    let request = format!(
        "GET /v1/calls/{call_id}/transcript/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        ts.acme.api
    );
    stuck.write_all(request.as_bytes()).await.unwrap();
    stuck
}

/// Waits (at most 5 s) until the metric reaches `want`.
pub async fn wait_for_metric(
    ts: &TestServer,
    name_and_labels: &str,
    want: impl Fn(f64) -> bool,
) -> bool {
    for _ in 0..250 {
        if want(ts.metric(name_and_labels).await) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

// === WebSocket clients (tokio-tungstenite: not the project's own code) ===

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Connects a WebSocket; `Err(status)` when the server refuses the upgrade.
pub async fn ws_connect(url: &str, bearer: Option<&str>) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    if let Some(key) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

impl TestServer {
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.base.trim_start_matches("http://"))
    }

    /// Another node of this cluster as a process of its own (the real binary, with this node's
    /// `cluster_lease_secs`), for faults a process in this one cannot suffer (`kill -9`). Its
    /// handle kills it when dropped.
    #[allow(dead_code)]
    pub async fn process_node(&self) -> (Self, tokio::process::Child) {
        let cluster = self
            .cluster
            .as_ref()
            .expect("a process node needs the cluster backends");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstream"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("CALLSTREAM_DATA_DIR", self.dir.path())
            .env("CALLSTREAM_DATABASE_URL", cluster.db.app_url())
            .env("CALLSTREAM_NATS_URL", &cluster.nats_url)
            .env("CALLSTREAM_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true")
            .env(
                "CALLSTREAM_CLUSTER_LEASE_SECS",
                self.config.cluster_lease_secs.to_string(),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                let node = Self {
                    server: None,
                    cluster: self.cluster.clone(),
                    config: self.config.clone(),
                    base,
                    acme: self.acme.clone(),
                    other: self.other.clone(),
                    http,
                    dir: self.dir.clone(),
                };
                return (node, child);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node process did not become ready within 10 s");
    }
}

/// What a socket received next: a JSON text frame, or a close with its code.
#[derive(Debug, PartialEq)]
pub enum WsEvent {
    Json(Value),
    Close(u16),
}

/// The next text frame or close (pings skipped); panics after 10 s.
pub async fn ws_next(ws: &mut Ws) -> WsEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    return WsEvent::Json(serde_json::from_str(&t).unwrap());
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return WsEvent::Close(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error instead of a close: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    })
    .await
    .expect("nothing on the socket within 10 s")
}

/// The next JSON frame; panics on a close.
pub async fn ws_json(ws: &mut Ws) -> Value {
    match ws_next(ws).await {
        WsEvent::Json(v) => v,
        WsEvent::Close(code) => panic!("closed with {code} while a frame was expected"),
    }
}

pub async fn ws_send(ws: &mut Ws, value: &Value) {
    use futures::SinkExt;
    ws.send(WsMessage::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// A test runtime on `/v1/runtime` that obeys commands the way a real one would: it ingests the
/// event a command causes, then reports the result.
pub async fn obedient_runtime(ts: &TestServer) -> tokio::task::JoinHandle<()> {
    let mut ws = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let WsEvent::Json(m) = ws_next(&mut ws).await else {
                return;
            };
            if m["type"] != "command" {
                continue;
            }
            let event = match m["command"].as_str().unwrap() {
                "send_dtmf" => {
                    json!({"event_type": "call.dtmf", "payload": {"digits": m["digits"]}})
                }
                "end_call" => completed(),
                "join_call" => {
                    json!({"event_type": "call.transferred", "payload": {"to": m["user_id"], "user_id": m["user_id"]}})
                }
                other => panic!("unexpected command {other}"),
            };
            ws_send(&mut ws, &json!({"type": "events", "ref": m["command_id"], "call_id": m["call_id"], "events": [event]})).await;
            let accepted = ws_json(&mut ws).await;
            assert_eq!(accepted["type"], "accepted", "{accepted}");
            ws_send(
                &mut ws,
                &json!({"type": "command_result", "command_id": m["command_id"], "ok": true}),
            )
            .await;
        }
    })
}

/// Sends `message(i)` 100 times a second, for at most 5 s, until the server closes the socket;
/// returns the close code.
pub async fn flood_until_closed(ws: Ws, message: impl Fn(usize) -> WsMessage) -> Option<u16> {
    use futures::SinkExt;
    let (mut sink, mut stream) = ws.split();
    let close_code = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let WsMessage::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    });
    for i in 0..500 {
        if sink.send(message(i)).await.is_err() || close_code.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    close_code.await.unwrap()
}

/// Breaks the real database under the running server: its calls table goes away, so every
/// read of a call fails as a store error.
pub async fn break_the_calls_table(ts: &TestServer) {
    use sqlx::Connection;
    if let Some(cluster) = &ts.cluster {
        let mut db = sqlx::PgConnection::connect(&cluster.db.admin_db_url())
            .await
            .unwrap();
        sqlx::query("ALTER TABLE calls RENAME TO calls_gone")
            .execute(&mut db)
            .await
            .unwrap();
        return;
    }
    let path = ts.dir.path().join("callstream.db");
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("ALTER TABLE calls RENAME TO calls_gone")
        .execute(&mut db)
        .await
        .unwrap();
}

/// A call socket (`/v1/calls/{id}/stream?{query}`) at `ts`.
#[allow(dead_code)]
pub async fn call_socket(ts: &TestServer, id: &str, query: &str) -> Ws {
    ws_connect(&ts.ws_url(&format!("/v1/calls/{id}/stream?{query}")), None)
        .await
        .unwrap()
}

/// Whether the suite runs on the cluster backends; says in one line that `test` is skipped
/// when it does not.
#[allow(dead_code)]
pub fn clustered(ts: &TestServer, test: &str) -> bool {
    if ts.cluster.is_none() {
        eprintln!("SKIP {test}: needs the cluster backends");
        return false;
    }
    true
}

/// `tests/browser`: the Node programs and packages the tests use (`npm ci --prefix tests/browser`).
pub fn node_tools_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// Why a test that needs Node and these packages of `tests/browser` cannot run here, if it
/// cannot.
pub fn missing_node(packages: &[&str]) -> Option<String> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    packages
        .iter()
        .find(|p| !node_tools_dir().join("node_modules").join(p).exists())
        .map(|p| format!("{p} is not installed (npm ci --prefix tests/browser)"))
}
