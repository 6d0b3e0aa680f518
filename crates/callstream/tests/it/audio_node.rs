//! Seed 004 checked as a new user would: the `service_url` is a WebSocket server written in Node
//! with `ws` from the protocol alone (`tests/browser/audio-service.mjs`; none of callstream's
//! code), which decodes what it receives itself. It gets `start` and `media` every 20 ms whose
//! decoded audio is what the runtime sent; a second of `playAudio` and a `checkpoint` give
//! `playedStream` only after that second was played; `clearAudio` during a long `playAudio` gives
//! `clearedAudio` at once and nothing more is played.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use callstream_audio::g711;
use callstream_core::CallId;
use callstream_core::audio::Track;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::audio_streams::{Runtime, mulaw_frame, tone};
use crate::support::{TestServer, missing_node, node_tools_dir, services_required};

fn node_dir() -> PathBuf {
    node_tools_dir()
}

fn missing() -> Option<String> {
    missing_node(&["ws"])
}

struct NodeService {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: mpsc::UnboundedReceiver<(Instant, Value)>,
    url: String,
}

impl NodeService {
    async fn start() -> Self {
        let mut child = tokio::process::Command::new("node")
            .arg(node_dir().join("audio-service.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send((
                    Instant::now(),
                    serde_json::from_str::<Value>(&line).unwrap(),
                ));
            }
        });
        let (_, listening) = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .expect("the Node service did not start")
            .unwrap();
        assert_eq!(listening["type"], "listening");
        let url = format!("ws://127.0.0.1:{}/media", listening["port"]);
        Self {
            child,
            stdin,
            lines,
            url,
        }
    }

    async fn command(&mut self, command: Value) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next message the service received whose event is not `media` (if `skip_media`).
    async fn next(&mut self, skip_media: bool) -> (Instant, Value) {
        loop {
            let (at, line) = tokio::time::timeout(Duration::from_secs(10), self.lines.recv())
                .await
                .expect("nothing from the Node service within 10 s")
                .unwrap();
            assert_ne!(line["type"], "closed", "the stream closed: {line}");
            if skip_media && line["event"] == "media" {
                continue;
            }
            return (at, line);
        }
    }
}

impl Drop for NodeService {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn an_independent_node_service_gets_the_calls_audio_plays_back_and_clears() {
    if let Some(why) = missing() {
        assert!(
            !services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but the Node audio service cannot run: {why}"
        );
        eprintln!("SKIP Node audio service test: {why}");
        return;
    }
    let ts = TestServer::start().await;
    let mut service = NodeService::start().await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = CallId::parse(&id).unwrap();
    let mut runtime = Runtime::open(&ts).await;
    // The caller is on the line before the stream starts (and the call's format is mu-law).
    runtime.send_frame(&mulaw_frame(&call, Track::Inbound, &[0; 160]));
    let stream_id = ts
        .start_stream(
            &id,
            json!({"service_url": service.url, "bidirectional": true}),
        )
        .await;

    let (_, start) = service.next(true).await;
    assert_eq!(start["event"], "start", "{start}");
    let s = &start["message"]["start"];
    assert_eq!(
        (s["callId"].as_str(), s["streamId"].as_str()),
        (Some(id.as_str()), Some(stream_id.as_str()))
    );
    assert_eq!(s["tracks"], json!(["inbound"]));
    assert_eq!(
        s["mediaFormat"],
        json!({"encoding": "audio/x-l16", "sampleRate": 8000})
    );

    // One second of the caller, in real time: the service decodes exactly what was sent.
    let voice = tone(350.0, 8000);
    runtime.speak(&id, voice.clone());
    let mut heard = Vec::new();
    let mut arrivals = Vec::new();
    while heard.len() < voice.len() {
        let (at, line) = service.next(false).await;
        if line["event"] != "media" {
            continue;
        }
        let samples: Vec<i16> = line["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i16)
            .collect();
        assert_eq!(samples.len(), 160, "20 ms per media message");
        // The one silent frame sent before the stream may come first.
        if heard.is_empty() && samples.iter().all(|s| s.abs() < 10) {
            continue;
        }
        arrivals.push(at);
        heard.extend(samples);
    }
    let sent: Vec<i16> = voice
        .iter()
        .map(|s| g711::decode_mulaw(g711::encode_mulaw(*s)))
        .collect();
    assert_eq!(heard, sent);
    let spread = arrivals.last().unwrap().duration_since(arrivals[0]);
    assert!(
        spread >= Duration::from_millis(900),
        "50 frames of 20 ms arrived within {spread:?}"
    );

    // A second of playAudio, then a checkpoint: playedStream only after that second was played.
    service
        .command(json!({"type": "play", "hz": 300, "ms": 1000, "rate": 8000}))
        .await;
    service
        .command(json!({"type": "send", "message": {"event": "checkpoint", "streamId": stream_id, "name": "one-second"}}))
        .await;
    let mut played = Vec::new();
    let mut last_played = None;
    while played.len() < 8000 {
        let (at, frame) = runtime.next_played().await;
        last_played = Some(at);
        played.extend(frame.payload.iter().map(|b| g711::decode_mulaw(*b)));
    }
    let expected: Vec<i16> = (0..8000)
        .map(|i| {
            (8000.0 * (2.0 * std::f64::consts::PI * 300.0 * f64::from(i) / 8000.0).sin()).round()
                as i16
        })
        .collect();
    for (i, (p, e)) in played.iter().zip(&expected).enumerate() {
        // Within mu-law's quantisation step at that level.
        assert!(
            (i32::from(*p) - i32::from(*e)).abs() <= i32::from(e.unsigned_abs() / 16 + 8),
            "sample {i}: {p} vs {e}"
        );
    }
    let (played_at, line) = service.next(true).await;
    assert_eq!(line["event"], "playedStream", "{line}");
    assert_eq!(line["message"]["name"], "one-second");
    assert!(
        played_at > last_played.unwrap(),
        "playedStream before the audio had played"
    );

    // Five seconds, a checkpoint at their end, and a clearAudio shortly after they start.
    service
        .command(json!({"type": "play", "hz": 200, "ms": 5000, "rate": 8000}))
        .await;
    service
        .command(json!({"type": "send", "message": {"event": "checkpoint", "name": "never"}}))
        .await;
    for _ in 0..10 {
        runtime.next_played().await;
    }
    let asked = Instant::now();
    service
        .command(json!({"type": "send", "message": {"event": "clearAudio", "streamId": stream_id}}))
        .await;
    let (cleared_at, line) = service.next(true).await;
    assert_eq!(line["event"], "clearedAudio", "{line}");
    assert!(cleared_at.duration_since(asked) < Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = 0;
    while let Ok((at, _)) = runtime.played.try_recv() {
        if at > cleared_at {
            after += 1;
        }
    }
    assert!(after <= 1, "{after} frames played after clearedAudio");
    // The cleared checkpoint is never answered.
    while let Ok((_, line)) = service.lines.try_recv() {
        assert_ne!(line["event"], "playedStream", "{line}");
    }

    // Bad REST input, as the new user would try it.
    let path = ts.streams_path(&ts.auth_id().await, &id);
    let (status, answer) = ts
        .stream_api(
            reqwest::Method::POST,
            &path,
            Some(&json!({"service_url": "https://not-a-socket.example/"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("service_url:"),
        "{answer}"
    );
    let r = ts
        .http
        .post(ts.url(&path))
        .header("X-Auth-ID", "MA0000")
        .header("X-Auth-Token", "pk_live_wrong")
        .json(&json!({"service_url": service.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
