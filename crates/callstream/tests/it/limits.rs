//! Limits that protect everyone from one client: the size of an event, and what a large event
//! that was accepted may do to the viewers of its call (nothing).

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{
    TestServer, Ws, WsEvent, call_socket, transcript_stream, transcription, ws_connect, ws_json,
    ws_next, ws_send,
};

const SID: &str = "CAfeedfacefeedfacefeedfacefeedface";

/// A call with `SID` as its external id (for seed 003's socket).
async fn call_with_sid(ts: &TestServer) -> Value {
    let (status, call) = ts
        .post(
            "/v1/calls",
            &ts.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip", "external_id": SID}),
        )
        .await;
    assert_eq!(status, 201, "{call}");
    call
}

/// The call's viewers on the three WebSocket surfaces: seed 000's call socket, seed 001's live
/// call socket and seed 003's live transcript socket.
async fn viewers(ts: &TestServer, call: &Value) -> Vec<(&'static str, Ws)> {
    let id = call["id"].as_str().unwrap();
    let native = call_socket(ts, id, &format!("token={}", ts.acme.api)).await;
    let mut request = ts
        .ws_url(&format!(
            "/ws/v1/liveCalls?conversationToken={}",
            call["live_conversation_token"].as_str().unwrap()
        ))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", ts.acme.api).parse().unwrap(),
    );
    let (live_calls, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let transcript = ws_connect(
        &ts.ws_url(&format!("/live-transcript/{SID}?token={}", ts.acme.api)),
        None,
    )
    .await
    .unwrap();
    vec![
        ("call socket", native),
        ("live call socket", live_calls),
        ("live transcript socket", transcript),
    ]
}

/// Reads frames until one whose JSON text contains `needle`; panics on a close.
async fn until_frame_with(name: &str, ws: &mut Ws, needle: &str) -> Value {
    loop {
        match ws_next(ws).await {
            WsEvent::Json(v) if v.to_string().contains(needle) => return v,
            WsEvent::Json(_) => {}
            WsEvent::Close(code) => panic!("the {name} closed with {code} before {needle:.20}"),
        }
    }
}

#[tokio::test]
async fn a_large_event_that_was_accepted_reaches_every_viewer_and_closes_none() {
    // Raised from the default so that one turn is larger than any socket's write buffer was.
    let ts = TestServer::start_with(|c| c.max_event_bytes = 512 * 1024).await;
    let call = call_with_sid(&ts).await;
    let id = call["id"].as_str().unwrap();
    let mut viewers = viewers(&ts, &call).await;

    let long: String = (0..300_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    ts.ingest(id, json!([transcription("user", &long, true, "trn_long")]))
        .await;
    ts.ingest(
        id,
        json!([transcription("user", "and after it", true, "trn_after")]),
    )
    .await;
    for (name, ws) in &mut viewers {
        let big = until_frame_with(name, ws, &long[..64]).await;
        assert!(
            big.to_string().contains(&long),
            "the {name} carried the whole turn"
        );
        until_frame_with(name, ws, "and after it").await;
    }
    // Each socket is still open and answers.
    let native = &mut viewers[0].1;
    ws_send(native, &json!({"id": "c1", "type": "nonsense"})).await;
    assert_eq!(ws_json(native).await["id"], "c1");
}

#[tokio::test]
async fn an_event_over_the_limit_is_refused_413_and_nothing_else_is_harmed() {
    let ts = TestServer::start().await;
    let call = call_with_sid(&ts).await;
    let id = call["id"].as_str().unwrap();
    let mut viewer = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;

    // 400,000 characters: as the report that found the defect sent (then accepted with 202).
    let long = "x".repeat(400_000);
    for body in [
        json!(transcription("user", &long, true, "trn_1")),
        json!([
            transcription("user", "fits", true, "trn_0"),
            transcription("user", &long, true, "trn_1"),
        ]),
    ] {
        let (status, err) = ts
            .post(&format!("/v1/calls/{id}/events"), &ts.acme.runtime, &body)
            .await;
        assert_eq!(status, 413, "{err}");
        assert_eq!(err["error_code"], "event_too_large");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("65536") && message.contains("max_event_bytes"),
            "the refusal names the limit: {message}"
        );
    }
    // The batch was refused whole: the next event is seq 2, right after call.started.
    let accepted = ts
        .ingest(id, json!([transcription("user", "small", true, "trn_2")]))
        .await;
    assert_eq!(accepted["seqs"], json!([2]));
    let frame = ws_json(&mut viewer).await;
    assert_eq!(
        (frame["seq"].as_u64(), frame["payload"]["text"].as_str()),
        (Some(2), Some("small"))
    );

    // Conversations are bounded the same way.
    let (status, conversation) = ts
        .post(
            "/v1/conversations",
            &ts.acme.runtime,
            &json!({"channel": "sms", "participants": ["+14155550123"]}),
        )
        .await;
    assert_eq!(status, 201, "{conversation}");
    let (status, err) = ts
        .post(
            &format!(
                "/v1/conversations/{}/events",
                conversation["id"].as_str().unwrap()
            ),
            &ts.acme.runtime,
            &json!({"event_type": "message.received", "payload": {"message_id": "m1", "direction": "inbound", "status": "received", "text": long}}),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (413, Some("event_too_large"))
    );
}

#[tokio::test]
async fn the_runtime_socket_refuses_an_event_over_the_limit_and_stays_open() {
    // Messages may be larger than one event here, so the event limit is what refuses it.
    let ts = TestServer::start_with(|c| c.ws_max_message_bytes = 1024 * 1024).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut runtime = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let long = "y".repeat(100_000);
    ws_send(
        &mut runtime,
        &json!({"type": "events", "ref": "big", "call_id": id, "events": [transcription("user", &long, true, "trn_1")]}),
    )
    .await;
    let refused = ws_json(&mut runtime).await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["ref"].as_str(),
            refused["error_code"].as_str()
        ),
        (Some("error"), Some("big"), Some("event_too_large")),
        "{refused}"
    );
    assert!(refused["message"].as_str().unwrap().contains("65536"));
    ws_send(
        &mut runtime,
        &json!({"type": "events", "ref": "small", "call_id": id, "events": [transcription("user", "ok", true, "trn_2")]}),
    )
    .await;
    let accepted = ws_json(&mut runtime).await;
    assert_eq!(
        (accepted["ref"].as_str(), accepted["seqs"].clone()),
        (Some("small"), json!([2])),
        "{accepted}"
    );
}

#[tokio::test]
async fn history_is_bounded_in_bytes_and_a_resume_past_it_is_told_of_the_gap() {
    let ts = TestServer::start_with(|c| c.history_max_bytes_per_call = 20_000).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let text = "z".repeat(5_000);
    for n in 0..20 {
        ts.ingest(
            id,
            json!([transcription("user", &text, true, &format!("trn_{n}"))]),
        )
        .await;
    }
    // Twenty turns of 5,000 bytes: the node holds no more than the bound of them.
    let held = ts.metric("callstream_history_bytes ").await;
    assert!(held > 10_000.0 && held <= 20_000.0, "held {held}");
    assert!(ts.metric("callstream_history_trimmed_events_total ").await >= 16.0);

    let mut ws = call_socket(&ts, id, &format!("token={}&since=1", ts.acme.api)).await;
    let first = ws_json(&mut ws).await;
    if ts.cluster.is_some() {
        // On NATS, JetStream holds what this node's memory gave up: nothing is missed.
        assert_eq!(first["seq"], 2, "{first}");
        for seq in 3..=21 {
            assert_eq!(ws_json(&mut ws).await["seq"], seq);
        }
        return;
    }
    assert_eq!(first["error_code"], "resume_gap", "{first}");
    let next = ws_json(&mut ws).await;
    assert!(next["seq"].as_u64().unwrap() > 17, "{next}");
}

/// Opens `n` connections from `source` to the server, each sending the start of a request head
/// and never the rest (as a slow-loris client does). Connections the server refused may already
/// be reset: they are kept all the same, as the attacker would keep them.
async fn half_sent(
    ts: &TestServer,
    source: std::net::IpAddr,
    n: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let server = ts.server().addr();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
        let Ok(mut stream) = socket.connect(server).await else {
            continue;
        };
        let _ = stream
            .write_all(b"GET /v1/calls HTTP/1.1\r\nHost: x\r\n")
            .await;
        held.push(stream);
    }
    held
}

/// The descriptors this process holds (the server runs in it, beside the test's clients).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// A metric, or `None` while the server refuses this client too (it is at its total).
async fn try_metric(ts: &TestServer, name_and_labels: &str) -> Option<f64> {
    let text = ts
        .http
        .get(ts.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Waits (at most 15 s) until the metric satisfies `want`.
async fn eventually(ts: &TestServer, name_and_labels: &str, want: impl Fn(f64) -> bool) -> bool {
    for _ in 0..300 {
        if try_metric(ts, name_and_labels).await.is_some_and(&want) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn thousands_of_half_sent_connections_stop_no_stream_and_exhaust_no_descriptors() {
    if crate::CLUSTER {
        eprintln!(
            "SKIP connection limits in the cluster suite: the listener is the same on every backend"
        );
        return;
    }
    let ts = TestServer::start_with(|c| {
        c.max_connections = 1_500;
        c.max_connections_per_source = 400;
        c.header_read_timeout_secs = 5;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut healthy = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    // The runtime's socket, open before the flood, keeps sending through it.
    let mut runtime = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let before = open_descriptors();

    // One source: 3,000 half-sent requests. The server keeps its 400 and closes the rest at once.
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let wave = half_sent(&ts, attacker, 3_000).await;
    assert!(
        eventually(
            &ts,
            "callstream_connections_refused_total{reason=\"per_source\"} ",
            |n| n >= 2_600.0
        )
        .await,
        "the connections past the source's 400 were refused"
    );
    assert!(
        try_metric(&ts, "callstream_connections_open ")
            .await
            .unwrap()
            <= 410.0
    );
    // The healthy stream flows, and a new viewer from another address gets in.
    ts.ingest(
        id,
        json!([transcription("user", "during the flood", true, "trn_1")]),
    )
    .await;
    assert_eq!(
        ws_json(&mut healthy).await["payload"]["text"],
        "during the flood"
    );
    let mut newcomer = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    // Those it kept are closed once the head timeout passes.
    assert!(
        eventually(&ts, "callstream_connections_open ", |n| n < 10.0).await,
        "half-sent requests are closed after the head timeout"
    );
    drop(wave);

    // Many sources, each under its own limit, together past the total: the process holds no
    // more than its 1,500, and the streams it holds go on meanwhile.
    let mut waves = Vec::new();
    for host in 3..=12u8 {
        waves.push(half_sent(&ts, std::net::IpAddr::from([127, 0, 0, host]), 300).await);
    }
    // Client sockets (3,000) and the server's share of them (at most 1,500): nothing else grew.
    let during = open_descriptors();
    assert!(
        during < before + 3_000 + 1_500 + 50,
        "descriptors went from {before} to {during}"
    );
    ws_send(
        &mut runtime,
        &json!({"type": "events", "call_id": id, "events": [transcription("user", "still here", true, "trn_2")]}),
    )
    .await;
    assert_eq!(ws_json(&mut runtime).await["type"], "accepted");
    for ws in [&mut healthy, &mut newcomer] {
        assert_eq!(ws_json(ws).await["payload"]["text"], "still here");
    }
    assert!(
        eventually(
            &ts,
            "callstream_connections_refused_total{reason=\"total\"} ",
            |n| n >= 1_000.0
        )
        .await,
        "the connections past the total were refused"
    );
    drop(waves);
    assert!(eventually(&ts, "callstream_connections_open ", |n| n < 10.0).await);
}

/// Streams and sockets end with their clients: every async task a burst of them started is
/// gone once they close (a task left behind per stream would grow the process for ever under
/// the churn of real viewers). `callstream_runtime_tasks_alive` is what shows it.
#[tokio::test]
async fn the_tasks_of_closed_streams_and_sockets_are_gone() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let before = ts.metric("callstream_runtime_tasks_alive ").await;
    assert!(before > 0.0, "the gauge counts the runtime's tasks");
    let mut streams = Vec::new();
    let mut sockets = Vec::new();
    for _ in 0..40 {
        streams.push(transcript_stream(&ts, id, &ts.acme.api, None).await);
        sockets.push(call_socket(&ts, id, &format!("token={}", ts.acme.api)).await);
    }
    let during = ts.metric("callstream_runtime_tasks_alive ").await;
    assert!(
        during >= before + 80.0,
        "each stream and socket runs at least one task: {before} then {during}"
    );
    drop(streams);
    drop(sockets);
    // The client's own idle keep-alive connections may hold a task or two.
    assert!(
        eventually(&ts, "callstream_runtime_tasks_alive ", |n| n
            <= before + 3.0)
        .await,
        "tasks left after the clients closed: {} (were {before})",
        ts.metric("callstream_runtime_tasks_alive ").await
    );
}
