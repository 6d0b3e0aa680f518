//! The client snippets of docs/clients/ run against a live gateway, so they cannot rot: the
//! transcript stream from Node and Python, the call socket with a command from Node and Python,
//! and an audio stream service in Python. Node runs with `ws` from `tests/browser`; Python needs
//! `websockets` (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use callstream_core::CallId;
use callstream_core::audio::Track;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::audio_streams::{Runtime, mulaw_frame, tone};
use crate::support::{
    TestServer, completed, missing_node, obedient_runtime, services_required, transcription,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the snippets cannot run here, if they cannot.
fn missing() -> Option<String> {
    if let Some(why) = missing_node(&["ws"]) {
        return Some(why);
    }
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .output();
    if !python.is_ok_and(|o| o.status.success()) {
        return Some("python3 with websockets is not installed (pip install websockets)".into());
    }
    None
}

fn skip(test: &str) -> bool {
    if crate::CLUSTER {
        return true; // the snippets talk to the surfaces, not the backends: once is enough
    }
    if let Some(why) = missing() {
        assert!(
            !services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but {test} cannot run: {why}"
        );
        eprintln!("SKIP {test}: {why}");
        return true;
    }
    false
}

/// A snippet, started: Node with the snippet's text as its program, from `tests/browser` so
/// that `ws` resolves (a module given with `--eval` resolves from the working directory), or
/// Python.
fn spawn(snippet: &str, args: &[&str]) -> tokio::process::Child {
    let path = root().join("docs/clients").join(snippet);
    let mut command = if snippet.ends_with(".mjs") {
        let code = std::fs::read_to_string(&path).unwrap();
        let mut c = tokio::process::Command::new("node");
        // With --eval, process.argv has no script path: a placeholder keeps argv.slice(2).
        c.args(["--input-type=module", "--eval", &code, "snippet"])
            .current_dir(root().join("tests/browser"));
        c
    } else {
        let mut c = tokio::process::Command::new("python3");
        c.arg(&path);
        c
    };
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Every JSON line the snippet printed, once it has exited (within `within`), and its status.
async fn finish(child: tokio::process::Child, within: Duration) -> (bool, Vec<Value>, String) {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("the snippet finished in time")
        .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (
        output.status.success(),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_transcript_snippets_follow_a_live_call_to_its_end() {
    if skip("the transcript snippets") {
        return;
    }
    let ts = TestServer::start().await;
    for snippet in ["transcript.mjs", "transcript.py"] {
        let id = ts.create_call("webrtc").await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let child = spawn(snippet, &[&ts.base, &ts.acme.api, &id]);
        // Talk until the snippet has surely connected (a few pairs), then end the call: the
        // snippet stops by itself when the stream closes.
        for i in 0..15 {
            let turn = format!("trn_{i}");
            ts.ingest(
                &id,
                json!([
                    transcription("user", "What time", false, &turn),
                    transcription("user", "What time do you open?", true, &turn),
                ]),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ts.ingest(&id, json!([completed()])).await;
        let (ok, turns, stderr) = finish(child, Duration::from_secs(30)).await;
        assert!(ok, "{snippet}: {stderr}");
        let partial = turns
            .iter()
            .find(|t| t["is_final"] == false)
            .unwrap_or_else(|| panic!("{snippet} printed a partial: {turns:?}"));
        assert!(
            turns
                .iter()
                .any(|t| t["is_final"] == true && t["turn_id"] == partial["turn_id"]),
            "{snippet}: the partial's final follows: {turns:?}"
        );
        assert!(
            turns
                .iter()
                .all(|t| t["role"] == "user" && t["ts"].is_string())
        );
    }
}

#[tokio::test]
async fn the_call_socket_snippets_send_dtmf_and_see_its_ack_and_event() {
    if skip("the call socket snippets") {
        return;
    }
    let ts = TestServer::start().await;
    let _runtime = obedient_runtime(&ts).await;
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (snippet, digits) in [("call-socket.mjs", "12#"), ("call_socket.py", "9")] {
        let child = spawn(snippet, &[&ts.base, &ts.acme.api, &id, digits]);
        let (ok, lines, stderr) = finish(child, Duration::from_secs(30)).await;
        assert!(ok, "{snippet}: {stderr} {lines:?}");
        assert!(
            lines.contains(&json!({"ack": "c1"})),
            "{snippet}: {lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l["event_type"] == "call.dtmf" && l["seq"].is_u64()),
            "{snippet}: {lines:?}"
        );
    }
    // The call's record shows both.
    let (_, call) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert!(call["last_seq"].as_u64().unwrap() >= 3, "{call}");
}

#[tokio::test]
async fn the_python_audio_service_gets_the_call_and_plays_into_it() {
    if skip("the Python audio service") {
        return;
    }
    let ts = TestServer::start().await;
    let mut service = spawn("audio_service.py", &["0"]);
    let mut lines = BufReader::new(service.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
            .await
            .expect("the service said something within 15 s")
            .unwrap()
            .expect("the service is running");
        serde_json::from_str(&line).unwrap()
    };
    let port = next().await["listening"].as_u64().expect("its port");
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = CallId::parse(&id).unwrap();
    let runtime = Runtime::open(&ts).await;
    ts.start_stream(
        &id,
        json!({"service_url": format!("ws://127.0.0.1:{port}/"), "bidirectional": true}),
    )
    .await;
    // The caller talks, in real time, while the service answers.
    let talk = tokio::spawn(async move {
        for _ in 0..250 {
            runtime.send_frame(&mulaw_frame(&call, Track::Inbound, &tone(300.0, 160)));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runtime
    });
    let mut seen = Vec::new();
    let done = |seen: &[Value]| {
        seen.iter().any(|l| l.get("playedStream").is_some())
            && seen
                .iter()
                .any(|l| l["media"]["inbound"].as_u64() >= Some(50))
    };
    while !done(&seen) {
        seen.push(next().await);
        assert!(seen.len() < 50, "{seen:?}");
    }
    let _ = talk.await;
    let start = seen.iter().find_map(|l| l.get("start")).expect("start");
    assert_eq!(start["callId"], id);
    assert!(
        seen.iter()
            .any(|l| l["media"]["inbound"].as_u64() >= Some(50)),
        "media counted: {seen:?}"
    );
    let played = seen.iter().find_map(|l| l.get("playedStream")).unwrap();
    assert_eq!(played["name"], "greeting");
    let _ = service.start_kill();
}
