//! Seed 004's audio streams over real sockets: a WebSocket service on 127.0.0.1 (tokio-tungstenite
//! here; `audio_node.rs` uses one written in Node, independently of this project), a call runtime
//! on `/v1/runtime` sending and receiving binary audio frames, the REST resource, and status
//! callbacks to an HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes as BodyBytes;
use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use callstream_audio::g711;
use callstream_core::CallId;
use callstream_core::audio::{AudioFrame, Codec, Track};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::TestServer;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// === a customer's WebSocket service ===

/// A WebSocket server standing in for the customer's service: each connection's messages, with
/// when they arrived, and a way to send.
pub struct Service {
    pub url: String,
    conns: mpsc::UnboundedReceiver<Conn>,
}

pub struct Conn {
    rx: mpsc::UnboundedReceiver<(Instant, Message)>,
    tx: mpsc::UnboundedSender<Message>,
}

impl Service {
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// `reading: false` accepts connections and then never reads from them, with a tiny
    /// receive buffer, as a service that hung would.
    pub async fn start_with(reading: bool) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if !reading {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let url = format!("ws://{}/audio", listener.local_addr().unwrap());
        let (conn_tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn_tx = conn_tx.clone();
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let (mut sink, mut stream) = ws.split();
                    let (in_tx, rx) = mpsc::unbounded_channel();
                    let (tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
                    let _ = conn_tx.send(Conn { rx, tx });
                    tokio::spawn(async move {
                        while let Some(m) = out_rx.recv().await {
                            if sink.send(m).await.is_err() {
                                return;
                            }
                        }
                    });
                    if !reading {
                        // Hold the connection open and read nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        drop(stream);
                        return;
                    }
                    while let Some(Ok(m)) = stream.next().await {
                        if in_tx.send((Instant::now(), m)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, conns }
    }

    pub async fn next_conn(&mut self) -> Conn {
        tokio::time::timeout(Duration::from_secs(15), self.conns.recv())
            .await
            .expect("the gateway did not connect to the service within 15 s")
            .unwrap()
    }

    /// Whether a connection came in within `wait`.
    pub async fn connected_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.conns.recv())
            .await
            .is_ok_and(|c| c.is_some())
    }
}

impl Conn {
    /// The next text message as JSON, with when it arrived.
    pub async fn next_json(&mut self) -> (Instant, Value) {
        loop {
            let (at, m) = tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("no message from the gateway within 10 s")
                .expect("the gateway closed the socket");
            match m {
                Message::Text(t) => return (at, serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(c) => panic!("closed by the gateway: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next message whose `event` is `event`, skipping others.
    pub async fn next_event(&mut self, event: &str) -> (Instant, Value) {
        loop {
            let (at, v) = self.next_json().await;
            if v["event"] == event {
                return (at, v);
            }
        }
    }

    /// The next message that is not `media`.
    pub async fn next_control(&mut self) -> (Instant, Value) {
        loop {
            let (at, v) = self.next_json().await;
            if v["event"] != "media" {
                return (at, v);
            }
        }
    }

    pub fn send(&self, v: &Value) {
        self.tx.send(Message::Text(v.to_string().into())).unwrap();
    }

    pub fn send_raw(&self, m: Message) {
        self.tx.send(m).unwrap();
    }

    /// Waits for the gateway's close and returns its code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
                .await
                .expect("the gateway did not close within 10 s")
            {
                Some((_, Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Every text message that arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<(Instant, Value)> {
        let until = Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(Some((at, m))) = tokio::time::timeout_at(until, self.rx.recv()).await {
            if let Message::Text(t) = m {
                got.push((at, serde_json::from_str(t.as_str()).unwrap()));
            }
        }
        got
    }
}

// === the call runtime ===

/// A call runtime on `/v1/runtime`: sends audio frames and text, and keeps what the gateway sends
/// (audio to play, commands), with when it arrived.
pub struct Runtime {
    tx: mpsc::UnboundedSender<Message>,
    pub played: mpsc::UnboundedReceiver<(Instant, AudioFrame)>,
    pub text: mpsc::UnboundedReceiver<Value>,
}

impl Runtime {
    pub async fn open(ts: &TestServer) -> Self {
        let mut request = ts.ws_url("/v1/runtime").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", ts.acme.runtime).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (tx, mut out) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let (played_tx, played) = mpsc::unbounded_channel();
        let (text_tx, text) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let at = Instant::now();
                match m {
                    Message::Binary(b) => {
                        let _ = played_tx.send((at, AudioFrame::decode(&b).unwrap()));
                    }
                    Message::Text(t) => {
                        let _ = text_tx.send(serde_json::from_str(t.as_str()).unwrap());
                    }
                    _ => {}
                }
            }
        });
        Self { tx, played, text }
    }

    pub fn send_frame(&self, frame: &AudioFrame) {
        self.tx.send(Message::Binary(frame.encode())).unwrap();
    }

    pub fn send_binary(&self, bytes: Vec<u8>) {
        self.tx.send(Message::Binary(bytes.into())).unwrap();
    }

    pub fn send_text(&self, v: &Value) {
        self.tx.send(Message::Text(v.to_string().into())).unwrap();
    }

    /// Sends `frames` 20 ms mu-law frames of `samples` (8 kHz) on `call`'s inbound track, paced
    /// by absolute deadlines, in a task of its own.
    pub fn speak(&self, call: &str, samples: Vec<i16>) -> tokio::task::JoinHandle<()> {
        let tx = self.tx.clone();
        let call = CallId::parse(call).unwrap();
        tokio::spawn(async move {
            let start = Instant::now();
            for (k, chunk) in samples.chunks(160).enumerate() {
                tokio::time::sleep_until(start + Duration::from_millis(20 * k as u64)).await;
                let frame = mulaw_frame(&call, Track::Inbound, chunk);
                if tx.send(Message::Binary(frame.encode())).is_err() {
                    return;
                }
            }
        })
    }

    /// The next frame played into the call.
    pub async fn next_played(&mut self) -> (Instant, AudioFrame) {
        tokio::time::timeout(Duration::from_secs(10), self.played.recv())
            .await
            .expect("nothing played into the call within 10 s")
            .unwrap()
    }

    pub async fn next_text(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), self.text.recv())
            .await
            .expect("no text from the gateway within 10 s")
            .unwrap()
    }
}

pub fn mulaw_frame(call: &CallId, track: Track, samples: &[i16]) -> AudioFrame {
    let payload: Vec<u8> = samples.iter().map(|s| g711::encode_mulaw(*s)).collect();
    AudioFrame {
        call: call.clone(),
        track,
        codec: Codec::Mulaw,
        sample_rate: 8000,
        timestamp_ms: now_ms(),
        payload: Bytes::from(payload),
    }
}

fn now_ms() -> u64 {
    u64::try_from(callstream_core::time::now().timestamp_millis()).unwrap()
}

/// `n` samples of a `hz` tone at 8 kHz.
pub fn tone(hz: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

fn l16_le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

// === the REST resource ===

impl TestServer {
    /// acme's `auth_id`.
    pub async fn auth_id(&self) -> String {
        let (status, ws) = self.get("/v1/workspace", &self.acme.api).await;
        assert_eq!(status, 200, "{ws}");
        ws["auth_id"].as_str().unwrap().to_owned()
    }

    pub fn streams_path(&self, auth_id: &str, call: &str) -> String {
        format!("/api/v1/Account/{auth_id}/Call/{call}/Stream/")
    }

    /// A request to the Stream API with acme's `X-Auth-ID`/`X-Auth-Token`.
    pub async fn stream_api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth_id = self.auth_id().await;
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("X-Auth-ID", auth_id)
            .header("X-Auth-Token", &self.acme.api)
            .timeout(Duration::from_secs(20));
        if let Some(body) = body {
            request = request.json(body);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts a stream on `call` and returns its id.
    pub async fn start_stream(&self, call: &str, body: Value) -> String {
        let path = self.streams_path(&self.auth_id().await, call);
        let (status, created) = self
            .stream_api(reqwest::Method::POST, &path, Some(&body))
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["message"], "Stream started");
        created["stream_id"].as_str().unwrap().to_owned()
    }

    pub async fn stream_view(&self, call: &str, stream_id: &str) -> Value {
        let path = format!(
            "{}{stream_id}/",
            self.streams_path(&self.auth_id().await, call)
        );
        let (status, view) = self.stream_api(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{view}");
        view
    }

    /// Waits until the stream's status is `status`.
    pub async fn wait_stream_status(&self, call: &str, stream_id: &str, status: &str) -> Value {
        for _ in 0..300 {
            let view = self.stream_view(call, stream_id).await;
            if view["status"] == status {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "stream {stream_id} never became {status}: {}",
            self.stream_view(call, stream_id).await
        );
    }
}

/// An HTTP receiver of status callbacks: every request's method, query, headers and body.
#[derive(Clone, Debug)]
pub struct Callback {
    pub method: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: BodyBytes,
}

impl Callback {
    /// The form fields, from the query (GET) or the body (POST).
    pub fn fields(&self) -> Vec<(String, String)> {
        let raw = match self.method.as_str() {
            "GET" => self.query.clone().unwrap_or_default().into_bytes(),
            _ => self.body.to_vec(),
        };
        form_urlencoded::parse(&raw).into_owned().collect()
    }

    pub fn field(&self, name: &str) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

pub struct Callbacks {
    pub url: String,
    got: Arc<Mutex<Vec<Callback>>>,
}

impl Callbacks {
    pub async fn start() -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let app = axum::Router::new().route(
            "/status",
            axum::routing::any(
                move |method: axum::http::Method,
                      uri: axum::http::Uri,
                      headers: HeaderMap,
                      body: BodyBytes| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(Callback {
                            method: method.to_string(),
                            query: uri.query().map(str::to_owned),
                            headers,
                            body,
                        });
                        "ok"
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/status", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, got }
    }

    /// Waits for a callback whose `Event` is `event`.
    pub async fn wait_for(&self, event: &str) -> Callback {
        for _ in 0..500 {
            if let Some(c) = self
                .got
                .lock()
                .unwrap()
                .iter()
                .find(|c| c.field("Event").as_deref() == Some(event))
            {
                return c.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no {event} callback; got {:?}",
            self.got
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.field("Event"))
                .collect::<Vec<_>>()
        );
    }

    pub fn events(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| c.field("Event"))
            .collect()
    }
}

fn fast(c: &mut callstream_server::Config) {
    c.webhook_poll_ms = 20;
    c.webhook_retry_secs = vec![1, 1];
    c.webhook_deadline_secs = 60;
}

/// Decodes a `media` message's payload.
fn payload(media: &Value) -> Vec<u8> {
    B64.decode(media["media"]["payload"].as_str().unwrap())
        .unwrap()
}

// === the tests ===

#[tokio::test]
async fn a_stream_starts_and_carries_the_callers_audio_paced_on_the_20_ms_beat() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    let runtime = Runtime::open(&ts).await;
    let auth_id = ts.auth_id().await;
    let stream_id = ts
        .start_stream(
            &id,
            json!({"service_url": service.url, "extra_headers": "tenant=acme;agent=7"}),
        )
        .await;
    let mut conn = service.next_conn().await;
    let (_, start) = conn.next_json().await;
    assert_eq!(
        start,
        json!({
            "event": "start",
            "sequenceNumber": 1,
            "start": {
                "callId": id, "streamId": stream_id, "accountId": auth_id,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000},
            },
            "extra_headers": "tenant=acme;agent=7",
        })
    );
    let view = ts.wait_stream_status(&id, &stream_id, "in-progress").await;
    assert!(view["start_time"].is_string(), "{view}");

    // One second of the caller's voice, in real time.
    let voice = tone(440.0, 8000);
    runtime.speak(&id, voice.clone());
    let mut media = Vec::new();
    while media.len() < 50 {
        let (at, m) = conn.next_json().await;
        assert_eq!(m["event"], "media", "{m}");
        media.push((at, m));
    }
    let mut heard = Vec::new();
    for (i, (_, m)) in media.iter().enumerate() {
        assert_eq!(m["sequenceNumber"], json!(i as u64 + 2));
        assert_eq!(m["streamId"], json!(stream_id));
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], json!(i as u64));
        assert!(
            m["media"]["timestamp"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .is_ok()
        );
        assert_eq!(m["extra_headers"], "tenant=acme;agent=7");
        let bytes = payload(m);
        assert_eq!(bytes.len(), 320, "20 ms of L16 at 8 kHz");
        heard.extend(
            bytes
                .chunks_exact(2)
                .map(|p| i16::from_le_bytes([p[0], p[1]])),
        );
    }
    // L16 little-endian, exactly the caller's mu-law decoded.
    let sent: Vec<i16> = voice
        .iter()
        .map(|s| g711::decode_mulaw(g711::encode_mulaw(*s)))
        .collect();
    assert_eq!(heard, sent);

    // The runtime now sends a burst of 200 ms at once: the gateway still paces it (a forwarder
    // would pass all ten on at once).
    let call_id = CallId::parse(&id).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..10 {
        runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    }
    let mut burst = Vec::new();
    while burst.len() < 10 {
        burst.push(conn.next_event("media").await.0);
    }
    let spread = burst[9].duration_since(burst[0]);
    assert!(
        spread >= Duration::from_millis(60),
        "ten frames that arrived at once left within {spread:?}: not paced"
    );
}

#[tokio::test]
async fn played_audio_reaches_the_call_in_real_time_and_a_checkpoint_waits_for_its_end() {
    let ts = TestServer::start_with(fast).await;
    let callbacks = Callbacks::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = Runtime::open(&ts).await;
    let stream_id = ts
        .start_stream(
            &id,
            json!({"service_url": service.url, "bidirectional": true,
                   "status_callback_url": format!("{}?tenant=a%20b", callbacks.url),
                   "status_callback_method": "GET"}),
        )
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    // The runtime's caller speaks mu-law: the call's format. (It must serve the call.)
    let call_id = CallId::parse(&id).unwrap();
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // One second of L16 at 8 kHz, then a checkpoint.
    let speech = tone(300.0, 8000);
    let sent_at = Instant::now();
    conn.send(&json!({"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": "8000", "payload": B64.encode(l16_le(&speech))}}));
    conn.send(&json!({"event": "checkpoint", "streamId": stream_id, "name": "greeting"}));

    let mut played = Vec::new();
    let mut first_at = None;
    let mut last_at = None;
    while played.len() < 8000 {
        let (at, frame) = runtime.next_played().await;
        assert_eq!(
            (
                frame.track,
                frame.codec,
                frame.sample_rate,
                frame.payload.len()
            ),
            (Track::Outbound, Codec::Mulaw, 8000, 160)
        );
        assert_eq!(frame.call, call_id);
        first_at.get_or_insert(at);
        last_at = Some(at);
        played.extend_from_slice(&frame.payload);
    }
    let expected: Vec<u8> = speech.iter().map(|s| g711::encode_mulaw(*s)).collect();
    assert_eq!(played, expected, "transcoded once to the call's mu-law");
    let (played_at, message) = conn.next_control().await;
    assert_eq!(
        (
            message["event"].as_str(),
            message["name"].as_str(),
            message["streamId"].as_str()
        ),
        (
            Some("playedStream"),
            Some("greeting"),
            Some(stream_id.as_str())
        )
    );
    let (first_at, last_at) = (first_at.unwrap(), last_at.unwrap());
    // Real time: a second of audio took (at least nearly) a second to hand over, and the
    // checkpoint came only after the last frame, not when the audio was queued.
    assert!(
        last_at.duration_since(first_at) >= Duration::from_millis(900),
        "{:?}",
        last_at.duration_since(first_at)
    );
    assert!(played_at > last_at);
    assert!(played_at.duration_since(sent_at) >= Duration::from_millis(950));
    // The status callback says the same, as GET query fields.
    let cb = callbacks.wait_for("PlayedStream").await;
    assert_eq!(cb.method, "GET");
    assert_eq!(cb.field("Name").as_deref(), Some("greeting"));
    assert_eq!(cb.field("StreamID").as_deref(), Some(stream_id.as_str()));
    assert_eq!(cb.field("CallUUID").as_deref(), Some(id.as_str()));
    // The URL's own parameters come first and stay, and the signature covers the whole query
    // exactly as it arrived.
    let query = cb.query.clone().unwrap();
    assert!(query.starts_with("tenant=a%20b&"), "{query}");
    let (_, workspace) = ts.get("/v1/workspace", &ts.acme.api).await;
    let secret: callstream_webhooks::Secret = workspace["callback_signing_secret"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = cb
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    callstream_webhooks::verify(
        &[secret],
        headers,
        query.as_bytes(),
        callstream_core::time::now(),
        callstream_webhooks::DEFAULT_TOLERANCE,
    )
    .expect("a valid signature over the query string");
    callbacks.wait_for("StartStream").await;
}

#[tokio::test]
async fn clear_audio_drops_everything_queued_at_once_and_its_checkpoints_are_never_answered() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = Runtime::open(&ts).await;
    let call_id = CallId::parse(&id).unwrap();
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    let stream_id = ts
        .start_stream(&id, json!({"service_url": service.url, "bidirectional": true, "content_type": "audio/x-mulaw;rate=8000"}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    // Five seconds of mu-law, and a checkpoint at its end.
    let long: Vec<u8> = tone(200.0, 40_000)
        .iter()
        .map(|s| g711::encode_mulaw(*s))
        .collect();
    conn.send(&json!({"event": "playAudio", "streamId": stream_id, "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": B64.encode(&long)}}));
    conn.send(&json!({"event": "checkpoint", "name": "never"}));
    for _ in 0..10 {
        runtime.next_played().await;
    }
    conn.send(&json!({"event": "clearAudio", "streamId": stream_id}));
    let (cleared_at, cleared) = conn.next_control().await;
    assert_eq!(cleared["event"], "clearedAudio", "{cleared}");
    assert_eq!(cleared["streamId"], json!(stream_id));
    // Nothing more is played: at most the frame that was already on its way.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut after = 0;
    while let Ok((at, _)) = runtime.played.try_recv() {
        if at > cleared_at {
            after += 1;
        }
    }
    assert!(after <= 1, "{after} frames played after clearedAudio");
    // New audio plays, and only its own checkpoint is answered.
    conn.send(&json!({"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "payload": B64.encode(&long[..1600])}}));
    conn.send(&json!({"event": "checkpoint", "name": "after"}));
    let (_, played) = conn.next_control().await;
    assert_eq!(played["name"], "after", "{played}");
    assert!(
        conn.drain(Duration::from_millis(300))
            .await
            .iter()
            .all(|(_, m)| m["name"] != "never")
    );
}

#[tokio::test]
async fn dtmf_travels_both_ways_and_malformed_service_messages_harm_nothing() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = Runtime::open(&ts).await;
    let call_id = CallId::parse(&id).unwrap();
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    ts.start_stream(&id, json!({"service_url": service.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;

    // The caller presses 1 then 2.
    ts.ingest(
        &id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "12"}}),
    )
    .await;
    let (_, one) = conn.next_event("dtmf").await;
    let (_, two) = conn.next_event("dtmf").await;
    assert_eq!(
        (one["dtmf"]["digit"].as_str(), two["dtmf"]["digit"].as_str()),
        (Some("1"), Some("2"))
    );

    // Garbage of every kind: ignored and counted, never the end of the stream.
    let refused_before = ts
        .metric("callstream_audio_stream_service_messages_refused_total")
        .await;
    for bad in [
        Message::Text("not json".into()),
        Message::Text(r#"{"event":"stop"}"#.into()),
        Message::Text(r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":8000,"payload":"AAAA"}}"#.into()),
        Message::Text(r#"{"event":"checkpoint","streamId":"another-stream","name":"x"}"#.into()),
        Message::Binary(vec![1, 2, 3].into()),
    ] {
        conn.send_raw(bad);
    }
    // sendDTMF becomes the runtime's DTMF command.
    conn.send(&json!({"event": "sendDTMF", "dtmf": "9#"}));
    let command = runtime.next_text().await;
    assert_eq!(
        (
            command["type"].as_str(),
            command["command"].as_str(),
            command["digits"].as_str()
        ),
        (Some("command"), Some("send_dtmf"), Some("9#")),
        "{command}"
    );
    runtime.send_text(
        &json!({"type": "command_result", "command_id": command["command_id"], "ok": true}),
    );
    let refused_after = ts
        .metric("callstream_audio_stream_service_messages_refused_total")
        .await;
    assert!(
        refused_after - refused_before >= 5.0,
        "{refused_before} -> {refused_after}"
    );
    // Still streaming.
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    let (_, media) = conn.next_event("media").await;
    assert_eq!(media["media"]["track"], "inbound");
}

#[tokio::test]
async fn both_tracks_and_big_endian_l16_at_16_khz() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = Runtime::open(&ts).await;
    let call_id = CallId::parse(&id).unwrap();
    ts.start_stream(
        &id,
        json!({"service_url": service.url, "audio_track": "both", "content_type": "audio/x-l16;rate=16000", "l16_byte_order": "big-endian"}),
    )
    .await;
    let mut conn = service.next_conn().await;
    let (_, start) = conn.next_event("start").await;
    assert_eq!(start["start"]["tracks"], json!(["inbound", "outbound"]));
    assert_eq!(
        start["start"]["mediaFormat"],
        json!({"encoding": "audio/x-l16", "sampleRate": 16000})
    );
    // A loud constant on the caller's side, silence played to them.
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[12_000; 160]));
    runtime.send_frame(&mulaw_frame(&call_id, Track::Outbound, &[0; 160]));
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let (_, m) = conn.next_event("media").await;
        seen.insert(m["media"]["track"].as_str().unwrap().to_owned(), m);
    }
    assert_eq!(
        seen["outbound"]["media"]["chunk"], 0,
        "each track counts its own chunks"
    );
    let inbound = payload(&seen["inbound"]);
    assert_eq!(inbound.len(), 640, "20 ms of L16 at 16 kHz");
    // Past the resampler's start-up, samples are near the decoded constant, in big-endian.
    let tail = &inbound[600..];
    let be = i16::from_be_bytes([tail[0], tail[1]]);
    let le = i16::from_le_bytes([tail[0], tail[1]]);
    let level = g711::decode_mulaw(g711::encode_mulaw(12_000));
    assert!(
        (i32::from(be) - i32::from(level)).abs() < 600,
        "big-endian {be}, expected about {level}"
    );
    assert!(
        (i32::from(le) - i32::from(level)).abs() > 600,
        "read as little-endian it is not the signal"
    );
}

#[tokio::test]
async fn the_stream_ends_with_the_call_and_reports_stop_as_a_signed_form_post() {
    let ts = TestServer::start_with(fast).await;
    let callbacks = Callbacks::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream_id = ts
        .start_stream(
            &id,
            json!({"service_url": service.url, "status_callback_url": callbacks.url}),
        )
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    ts.ingest(&id, crate::support::completed()).await;
    assert_eq!(conn.closed().await, Some(1000));
    let view = ts.wait_stream_status(&id, &stream_id, "stopped").await;
    assert_eq!(view["end_reason"], "the call ended");
    assert!(view["end_time"].is_string());

    let stop = callbacks.wait_for("StopStream").await;
    assert_eq!(stop.method, "POST");
    assert_eq!(
        stop.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    // Signed with the workspace's secret, over exactly the form body.
    let (_, workspace) = ts.get("/v1/workspace", &ts.acme.api).await;
    let secret: callstream_webhooks::Secret = workspace["callback_signing_secret"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = stop
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    callstream_webhooks::verify(
        &[secret],
        headers,
        &stop.body,
        callstream_core::time::now(),
        callstream_webhooks::DEFAULT_TOLERANCE,
    )
    .expect("a valid Standard Webhooks signature");
    assert_eq!(stop.field("StreamID").as_deref(), Some(stream_id.as_str()));
    assert_eq!(
        stop.field("ServiceURL").as_deref(),
        Some(service.url.as_str())
    );
    // Each callback is its own delivery: they may arrive in any order (each has a Timestamp),
    // so the start may still be on its way when the stop is here.
    let start = callbacks.wait_for("StartStream").await;
    assert_eq!(start.field("StreamID").as_deref(), Some(stream_id.as_str()));
}

#[tokio::test]
async fn an_unreachable_service_is_tried_three_times_then_reported_dropped() {
    let ts = TestServer::start_with(|c| {
        fast(c);
        c.audio_connect_timeout_secs = 2;
    })
    .await;
    let callbacks = Callbacks::start().await;
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/audio", closed.local_addr().unwrap());
    drop(closed);
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failures = ts
        .metric("callstream_audio_stream_connect_failures_total")
        .await;
    let stream_id = ts
        .start_stream(
            &id,
            json!({"service_url": url, "status_callback_url": callbacks.url}),
        )
        .await;
    let dropped = callbacks.wait_for("DroppedStream").await;
    assert!(
        dropped.field("Error").unwrap().contains("after 3 attempts"),
        "{:?}",
        dropped.field("Error")
    );
    let view = ts.wait_stream_status(&id, &stream_id, "dropped").await;
    assert!(
        view["end_reason"]
            .as_str()
            .unwrap()
            .contains("could not connect")
    );
    assert_eq!(
        ts.metric("callstream_audio_stream_connect_failures_total")
            .await
            - failures,
        3.0
    );
    assert!(!callbacks.events().contains(&"StartStream".to_owned()));
}

#[tokio::test]
async fn a_busy_call_does_not_cut_the_pauses_between_connect_attempts_short() {
    let ts = TestServer::start_with(fast).await;
    let callbacks = Callbacks::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/audio", closed.local_addr().unwrap());
    drop(closed);
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let started = Instant::now();
    ts.start_stream(
        &id,
        json!({"service_url": url, "status_callback_url": callbacks.url}),
    )
    .await;
    // The call keeps talking while the gateway retries: an event every 50 ms (bounded).
    let talking = {
        let ts_url = ts.url(&format!("/v1/calls/{id}/events"));
        let http = ts.http.clone();
        let key = ts.acme.runtime.clone();
        tokio::spawn(async move {
            for n in 0..200 {
                let event =
                    crate::support::transcription("user", "hello", false, &format!("trn_{n}"));
                let r = http
                    .post(&ts_url)
                    .bearer_auth(&key)
                    .json(&event)
                    .send()
                    .await;
                assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(202));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    callbacks.wait_for("DroppedStream").await;
    assert!(!talking.is_finished(), "the call stopped talking early");
    talking.abort();
    // Three attempts, with pauses of 1 s and 2 s between them: the call's events did not wake
    // the session into trying again early.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "gave up after {took:?}"
    );
}

#[tokio::test]
async fn a_service_that_closes_is_answered_and_one_that_sends_too_much_gets_1009() {
    let ts = TestServer::start_with(|c| c.audio_max_service_message_bytes = 64 * 1024).await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The service says goodbye: the gateway answers its close, and the stream is dropped with
    // the service's reason.
    let closing = ts
        .start_stream(&id, json!({"service_url": service.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    conn.send_raw(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 4000.into(),
            reason: "bye".into(),
        },
    )));
    assert_eq!(conn.closed().await, Some(4000), "the close is answered");
    let view = ts.wait_stream_status(&id, &closing, "dropped").await;
    assert_eq!(
        view["end_reason"],
        "the service closed the connection with 4000 bye"
    );

    // A message over the limit: closed with 1009, and the stream is dropped saying why.
    let flooding = ts
        .start_stream(
            &id,
            json!({"service_url": service.url, "bidirectional": true}),
        )
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    conn.send(
        &json!({"event": "playAudio", "media": {"contentType": "audio/x-mulaw",
        "sampleRate": "8000", "payload": B64.encode(vec![0xffu8; 128 * 1024])}}),
    );
    assert_eq!(conn.closed().await, Some(1009));
    let view = ts.wait_stream_status(&id, &flooding, "dropped").await;
    assert!(
        view["end_reason"]
            .as_str()
            .unwrap()
            .contains("audio_max_service_message_bytes"),
        "{view}"
    );

    // The call is unharmed: a third stream works.
    ts.start_stream(&id, json!({"service_url": service.url}))
        .await;
    service.next_conn().await.next_event("start").await;
}

#[tokio::test]
async fn a_service_that_stops_reading_is_dropped_without_slowing_another_stream() {
    let ts = TestServer::start_with(|c| c.audio_service_stall_secs = 2).await;
    let mut stuck = Service::start_with(false).await;
    let mut healthy = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = Runtime::open(&ts).await;
    let call_id = CallId::parse(&id).unwrap();
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    let stuck_id = ts
        .start_stream(
            &id,
            json!({"service_url": stuck.url, "content_type": "audio/x-l16;rate=16000"}),
        )
        .await;
    ts.start_stream(&id, json!({"service_url": healthy.url}))
        .await;
    let _stuck_conn = stuck.next_conn().await;
    let mut conn = healthy.next_conn().await;
    conn.next_event("start").await;
    // Twenty seconds of audio at most: the stuck stream must be dropped well within that, and
    // the healthy one must get every frame meanwhile.
    let speaking = runtime.speak(&id, vec![0; 8000 * 20]);
    let mut received = 0;
    let view = loop {
        let (_, m) = conn.next_json().await;
        if m["event"] == "media" {
            received += 1;
        }
        let view = ts.stream_view(&id, &stuck_id).await;
        if view["status"] == "dropped" {
            break view;
        }
        assert!(received < 1000, "the stuck stream was never dropped");
    };
    speaking.abort();
    assert!(
        view["end_reason"]
            .as_str()
            .unwrap()
            .contains("stopped reading"),
        "{view}"
    );
    assert!(
        received >= 50,
        "the healthy stream got only {received} frames meanwhile"
    );
    assert!(
        ts.metric("callstream_audio_stream_frames_dropped_total{direction=\"to_service\"}")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn a_stream_that_was_live_when_the_gateway_restarted_reconnects_with_a_fresh_start() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream_id = ts
        .start_stream(&id, json!({"service_url": service.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    let ts = ts.restart().await;
    // The old socket was closed as going away, not as the end of the stream.
    assert_eq!(conn.closed().await, Some(1001));
    assert_eq!(
        ts.stream_view(&id, &stream_id).await["status"],
        "in-progress"
    );
    // No audio yet: no reconnect.
    assert!(!service.connected_within(Duration::from_millis(500)).await);
    let runtime = Runtime::open(&ts).await;
    let call_id = CallId::parse(&id).unwrap();
    runtime.send_frame(&mulaw_frame(&call_id, Track::Inbound, &[0; 160]));
    let mut again = service.next_conn().await;
    let (_, start) = again.next_event("start").await;
    assert_eq!(start["start"]["streamId"], json!(stream_id));
    assert_eq!(start["sequenceNumber"], 1);
    // The frame that woke it is streamed too.
    let (_, media) = again.next_event("media").await;
    assert_eq!(media["media"]["chunk"], 0);
    assert_eq!(
        ts.metric("callstream_audio_stream_reconnects_total").await,
        1.0
    );
}

#[tokio::test]
async fn stream_timeout_and_delete_end_a_stream_once() {
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let short = ts
        .start_stream(
            &id,
            json!({"service_url": format!("{}?s=1", service.url), "stream_timeout": "1"}),
        )
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    assert_eq!(conn.closed().await, Some(1000));
    let view = ts.wait_stream_status(&id, &short, "stopped").await;
    assert_eq!(view["end_reason"], "stream_timeout reached");

    let auth_id = ts.auth_id().await;
    let base = ts.streams_path(&auth_id, &id);
    let a = ts
        .start_stream(&id, json!({"service_url": format!("{}?s=2", service.url)}))
        .await;
    let mut conn_a = service.next_conn().await;
    let b = ts
        .start_stream(&id, json!({"service_url": format!("{}?s=3", service.url)}))
        .await;
    let mut conn_b = service.next_conn().await;
    let (status, _) = ts
        .stream_api(reqwest::Method::DELETE, &format!("{base}{a}/"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(conn_a.closed().await, Some(1000));
    let view = ts.stream_view(&id, &a).await;
    assert_eq!(
        (view["status"].as_str(), view["end_reason"].as_str()),
        (Some("stopped"), Some("deleted"))
    );
    // Deleting it again: nothing active.
    let (status, body) = ts
        .stream_api(reqwest::Method::DELETE, &format!("{base}{a}/"), None)
        .await;
    assert_eq!(status, 404, "{body}");
    // All of the call's streams: the one left.
    let (status, _) = ts.stream_api(reqwest::Method::DELETE, &base, None).await;
    assert_eq!(status, 204);
    assert_eq!(conn_b.closed().await, Some(1000));
    assert_eq!(ts.stream_view(&id, &b).await["status"], "stopped");
    let (status, body) = ts.stream_api(reqwest::Method::DELETE, &base, None).await;
    assert_eq!(status, 404, "{body}");

    // The list pages as Plivo does, oldest first.
    let (status, page) = ts
        .stream_api(
            reqwest::Method::GET,
            &format!("{base}?limit=2&offset=1"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["meta"]["total_count"], 3);
    assert_eq!(page["meta"]["limit"], 2);
    assert_eq!(page["meta"]["offset"], 1);
    assert!(page["meta"]["next"].is_null());
    assert!(
        page["meta"]["previous"]
            .as_str()
            .unwrap()
            .ends_with("limit=2&offset=0")
    );
    let ids: Vec<&str> = page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["stream_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    for key in [
        "stream_id",
        "call_uuid",
        "service_url",
        "audio_track",
        "bidirectional",
        "content_type",
        "status",
        "start_time",
        "end_time",
    ] {
        assert!(page["objects"][0].get(key).is_some(), "{key} missing");
    }
}

#[tokio::test]
async fn bad_requests_are_refused_and_name_the_field() {
    let ts = TestServer::start().await;
    let service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth_id = ts.auth_id().await;
    let path = ts.streams_path(&auth_id, &id);
    let post = |body: Value| {
        let ts = &ts;
        let path = path.clone();
        async move {
            ts.stream_api(reqwest::Method::POST, &path, Some(&body))
                .await
        }
    };
    let url = service.url.clone();
    for (body, field) in [
        (json!({}), "service_url: required"),
        (
            json!({"service_url": "http://example.com/x"}),
            "service_url: expected a ws or wss URL",
        ),
        (json!({"service_url": "ws://"}), "service_url"),
        (
            json!({"service_url": "ws://user:pw@example.com/"}),
            "service_url: must not carry credentials",
        ),
        (
            json!({"service_url": url, "bidirectional": true, "audio_track": "both"}),
            "audio_track: both is not allowed with bidirectional",
        ),
        (
            json!({"service_url": url, "audio_track": "sideways"}),
            "audio_track",
        ),
        (
            json!({"service_url": url, "content_type": "audio/x-alaw;rate=8000"}),
            "content_type",
        ),
        (
            json!({"service_url": url, "content_type": "audio/wav"}),
            "content_type",
        ),
        (
            json!({"service_url": url, "bidirectional": "maybe"}),
            "bidirectional: expected true or false",
        ),
        (
            json!({"service_url": url, "stream_timeout": 0}),
            "stream_timeout",
        ),
        (
            json!({"service_url": url, "stream_timeout": 86401}),
            "stream_timeout",
        ),
        (
            json!({"service_url": url, "status_callback_url": "ftp://x/"}),
            "status_callback_url",
        ),
        (
            json!({"service_url": url, "status_callback_method": "PUT"}),
            "status_callback_method",
        ),
        (
            json!({"service_url": url, "extra_headers": format!("k={}", "v".repeat(520))}),
            "extra_headers",
        ),
        (
            json!({"service_url": url, "extra_headers": "novalue"}),
            "extra_headers",
        ),
        (
            json!({"service_url": url, "colour": "blue"}),
            "colour: unknown field",
        ),
        (json!([1]), "body: expected a JSON object"),
    ] {
        let (status, answer) = post(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
        // Plivo's own error field, for Plivo's SDKs.
        assert_eq!(answer["error"], answer["message"]);
        assert!(answer["api_id"].is_string());
    }
    // Malformed JSON.
    let r = ts
        .http
        .post(ts.url(&path))
        .header("X-Auth-ID", &auth_id)
        .header("X-Auth-Token", &ts.acme.api)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A form body, as Plivo's SDKs send it, is accepted.
    let r = ts
        .http
        .post(ts.url(&path))
        .header("X-Auth-ID", &auth_id)
        .header("X-Auth-Token", &ts.acme.api)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            form_urlencoded::Serializer::new(String::new())
                .append_pair("service_url", &url)
                .append_pair("bidirectional", "true")
                .finish(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // A second active stream to the same URL.
    let (status, answer) = post(json!({"service_url": url})).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("service_url: stream "),
        "{answer}"
    );

    // Credentials: anything but this account's auth_id and one of its API keys is 401.
    let other_path = path.clone();
    for (id_header, token, why) in [
        (None, None, "none"),
        (Some(auth_id.as_str()), Some("pk_live_nope"), "unknown key"),
        (
            Some(auth_id.as_str()),
            Some(ts.acme.runtime.as_str()),
            "runtime key",
        ),
        (
            Some("MAOTHER"),
            Some(ts.acme.api.as_str()),
            "another auth_id",
        ),
        (
            Some(auth_id.as_str()),
            Some(ts.other.api.as_str()),
            "another account's key",
        ),
    ] {
        let mut r = ts.http.get(ts.url(&other_path));
        if let Some(v) = id_header {
            r = r.header("X-Auth-ID", v);
        }
        if let Some(v) = token {
            r = r.header("X-Auth-Token", v);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error_code"], "unauthorized", "{why}");
    }
    // HTTP Basic with the same pair, as Plivo's SDKs send it.
    let r = ts
        .http
        .get(ts.url(&path))
        .basic_auth(&auth_id, Some(&ts.acme.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Another workspace's call, an unknown call, an unknown stream: 404 alike.
    let foreign = {
        let (status, call) = ts
            .post(
                "/v1/calls",
                &ts.other.runtime,
                &json!({"phone": "+14155550100", "direction": "inbound", "transport": "sip"}),
            )
            .await;
        assert_eq!(status, 201);
        call["id"].as_str().unwrap().to_owned()
    };
    for p in [
        ts.streams_path(&auth_id, &foreign),
        ts.streams_path(&auth_id, "call_unknown"),
        format!("{path}00000000-0000-4000-8000-000000000000/"),
        format!("{path}not-a-uuid/"),
    ] {
        let (status, body) = ts.stream_api(reqwest::Method::GET, &p, None).await;
        assert_eq!(status, 404, "{p}: {body}");
    }
    let (status, _) = ts
        .stream_api(
            reqwest::Method::POST,
            &ts.streams_path(&auth_id, &foreign),
            Some(&json!({"service_url": url})),
        )
        .await;
    assert_eq!(status, 404);
    // Another account in the path is not found either.
    let other_account = ts.streams_path("MA000000000000000000", &id);
    let (status, _) = ts
        .stream_api(reqwest::Method::GET, &other_account, None)
        .await;
    assert_eq!(status, 404, "another account in the path");

    // An ended call takes no stream.
    ts.ingest(&id, crate::support::completed()).await;
    let (status, answer) = post(json!({"service_url": format!("{url}?again")})).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("call_uuid: the call has ended")
    );
}

#[tokio::test]
async fn private_targets_are_refused_unless_the_operator_allows_them() {
    let ts = TestServer::start_with(|c| c.allow_private_webhook_targets = false).await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = ts.streams_path(&ts.auth_id().await, &id);
    for (body, expect) in [
        (
            json!({"service_url": "ws://127.0.0.1:9/a"}),
            "service_url: 127.0.0.1 is a loopback address",
        ),
        (
            json!({"service_url": "wss://10.0.0.8/a"}),
            "service_url: 10.0.0.8 is a private address",
        ),
        (
            json!({"service_url": "ws://169.254.169.254/latest"}),
            "link-local (cloud metadata)",
        ),
        (
            json!({"service_url": "ws://[::1]:9/"}),
            "::1 is a loopback address",
        ),
        (json!({"service_url": "ws://localhost:9/"}), "loopback"),
        (
            json!({"service_url": "wss://example.com/a", "status_callback_url": "http://192.168.1.1/cb"}),
            "status_callback_url: 192.168.1.1 is a private address",
        ),
    ] {
        let (status, answer) = ts
            .stream_api(reqwest::Method::POST, &path, Some(&body))
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            answer["message"].as_str().unwrap().contains(expect),
            "{body}: {answer}"
        );
    }
    // The same policy guards webhook endpoints.
    let (status, answer) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.acme.api,
            &json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("loopback"),
        "{answer}"
    );
}

#[tokio::test]
async fn the_runtime_socket_refuses_bad_audio_frames_and_stays_open() {
    let ts = TestServer::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = Runtime::open(&ts).await;
    let foreign = {
        let (_, call) = ts
            .post(
                "/v1/calls",
                &ts.other.runtime,
                &json!({"phone": "+14155550100", "direction": "inbound", "transport": "sip"}),
            )
            .await;
        CallId::parse(call["id"].as_str().unwrap()).unwrap()
    };
    let refused = ts.metric("callstream_audio_frames_refused_total").await;
    runtime.send_binary(vec![9, 9, 9]);
    let answer = runtime.next_text().await;
    assert_eq!(answer["error_code"], "invalid_audio", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("16-byte header")
    );
    let mut bad_codec = mulaw_frame(&CallId::parse(&id).unwrap(), Track::Inbound, &[0; 160])
        .encode()
        .to_vec();
    bad_codec[2] = 7;
    runtime.send_binary(bad_codec);
    assert!(
        runtime.next_text().await["message"]
            .as_str()
            .unwrap()
            .contains("codec 7")
    );
    // Another workspace's call is not this runtime's: "not found", like an unknown one.
    runtime.send_frame(&mulaw_frame(&foreign, Track::Inbound, &[0; 160]));
    let answer = runtime.next_text().await;
    assert_eq!(answer["error_code"], "not_found", "{answer}");
    assert_eq!(
        ts.metric("callstream_audio_frames_refused_total").await - refused,
        3.0
    );
    // Still open: events are still ingested.
    runtime.send_text(&json!({"type": "events", "ref": "r1", "call_id": id, "events": [{"event_type": "call.dtmf", "payload": {"digits": "1"}}]}));
    assert_eq!(runtime.next_text().await["type"], "accepted");
    runtime.send_frame(&mulaw_frame(
        &CallId::parse(&id).unwrap(),
        Track::Inbound,
        &[0; 160],
    ));
    assert!(
        crate::support::wait_for_metric(
            &ts,
            "callstream_audio_frames_received_total{track=\"inbound\"}",
            |n| n >= 1.0
        )
        .await
    );
}

#[tokio::test]
async fn a_filling_play_out_queue_is_reported_at_30_60_and_90_percent_and_beyond_it_dropped() {
    let ts = TestServer::start_with(|c| {
        fast(c);
        c.audio_playout_max_secs = 2;
    })
    .await;
    let callbacks = Callbacks::start().await;
    let mut service = Service::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = Runtime::open(&ts).await;
    runtime.send_frame(&mulaw_frame(
        &CallId::parse(&id).unwrap(),
        Track::Inbound,
        &[0; 160],
    ));
    let stream_id = ts
        .start_stream(&id, json!({"service_url": service.url, "bidirectional": true, "status_callback_url": callbacks.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    let second: Vec<u8> = vec![0xff; 8000];
    let play = json!({"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "payload": B64.encode(&second)}});
    // 0.7 s of 2 s queued: 35 %.
    let part = json!({"event": "playAudio", "media": {"contentType": "audio/x-mulaw", "payload": B64.encode(&second[..5600])}});
    conn.send(&part);
    let degraded = callbacks.wait_for("DegradedStream").await;
    assert_eq!(degraded.field("BufferPercent").as_deref(), Some("30"));
    let dropped = ts
        .metric("callstream_audio_stream_frames_dropped_total{direction=\"to_call\"}")
        .await;
    // Three more seconds: past 60 and 90 %, and about 1.7 s beyond the bound dropped.
    for _ in 0..3 {
        conn.send(&play);
    }
    let mut levels = Vec::new();
    for _ in 0..100 {
        levels = callbacks
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.field("Event").as_deref() == Some("DegradedStream"))
            .filter_map(|c| c.field("BufferPercent"))
            .collect();
        if levels.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each level once (deliveries may arrive in any order).
    levels.sort();
    assert_eq!(levels, ["30", "60", "90"]);
    let view = ts.stream_view(&id, &stream_id).await;
    let queued = view["playout_queued_ms"].as_u64().unwrap();
    assert!((1800..=2000).contains(&queued), "{view}");
    let now_dropped = ts
        .metric("callstream_audio_stream_frames_dropped_total{direction=\"to_call\"}")
        .await;
    assert!(now_dropped - dropped >= 70.0, "{dropped} -> {now_dropped}");
    // The call still hears it, in real time.
    runtime.next_played().await;
}

// === listening on the call socket ===

/// The next binary message on a call socket (text frames and pings skipped); `None` when nothing
/// binary came within `wait`.
async fn next_audio(ws: &mut crate::support::Ws, wait: Duration) -> Option<AudioFrame> {
    tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return AudioFrame::decode(&b).unwrap(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    panic!("the socket closed while audio was expected")
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
}

/// `?audio=` on the call socket: the call's frames of the chosen tracks as binary messages, in
/// the runtime socket's format, byte for byte, beside the envelopes; a stream token may listen;
/// a socket that did not ask gets none; a bad value is refused before the upgrade; and a
/// listener that reads nothing costs the others nothing.
#[tokio::test]
async fn a_viewer_that_asks_hears_the_calls_audio_on_the_call_socket() {
    let ts = TestServer::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let call_id = CallId::parse(&id).unwrap();
    let runtime = Runtime::open(&ts).await;
    let (_, token) = ts
        .post("/v1/stream-tokens", &ts.acme.api, &json!({"call_id": id}))
        .await;
    let st = token["token"].as_str().unwrap().to_owned();
    let mut caller =
        crate::support::call_socket(&ts, &id, &format!("token={st}&audio=inbound")).await;
    let mut both =
        crate::support::call_socket(&ts, &id, &format!("token={}&audio=both", ts.acme.api)).await;
    let mut deaf = crate::support::call_socket(&ts, &id, &format!("token={}", ts.acme.api)).await;
    // A listener that never reads: its queue fills, its frames are dropped, nobody waits.
    let _stuck =
        crate::support::call_socket(&ts, &id, &format!("token={}&audio=both", ts.acme.api)).await;

    let inbound = mulaw_frame(&call_id, Track::Inbound, &tone(440.0, 160));
    let outbound = mulaw_frame(&call_id, Track::Outbound, &[0; 160]);
    // Faster than real time, slowly enough for the listeners' queues (200 ms) to keep up.
    for _ in 0..100 {
        runtime.send_frame(&inbound);
        runtime.send_frame(&outbound);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let heard = next_audio(&mut caller, Duration::from_secs(10))
        .await
        .expect("the caller's track arrives");
    assert_eq!(
        heard.encode(),
        inbound.encode(),
        "the runtime's frame, byte for byte"
    );
    let mut tracks = std::collections::HashSet::new();
    while tracks.len() < 2 {
        let frame = next_audio(&mut both, Duration::from_secs(10))
            .await
            .expect("both tracks arrive");
        tracks.insert(frame.track);
    }
    for _ in 0..20 {
        let frame = next_audio(&mut caller, Duration::from_secs(2))
            .await
            .expect("more of the caller's track");
        assert_eq!(frame.track, Track::Inbound, "only the track asked for");
    }
    assert!(
        next_audio(&mut deaf, Duration::from_millis(500))
            .await
            .is_none(),
        "no audio without ?audio="
    );
    // The envelopes still come on a listening socket.
    ts.ingest(
        &id,
        json!([{"event_type": "call.dtmf", "payload": {"digits": "7"}}]),
    )
    .await;
    let envelope = loop {
        match caller.next().await {
            Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(envelope["event_type"], "call.dtmf");

    let refused = ts
        .http
        .get(ts.url(&format!("/v1/calls/{id}/stream?audio=stereo")))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["message"], "audio: expected inbound, outbound or both");
}
