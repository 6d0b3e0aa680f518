//! Several gateway nodes on one NATS server and one PostgreSQL database (the cluster suite
//! only): what a client connected to one node sees of what happens at another.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    SseReader, TestServer, Ws, WsEvent, call_socket, clustered, completed, obedient_runtime,
    transcript_stream, transcription, ws_connect, ws_json, ws_next, ws_send,
};

#[tokio::test]
async fn an_event_ingested_at_one_node_reaches_every_surface_at_the_others_in_order() {
    let a = TestServer::start().await;
    if !clustered(&a, "an_event_ingested_at_one_node") {
        return;
    }
    let (b, c) = (a.another_node().await, a.another_node().await);
    let sid = "CA00000000000000000000000000000001";
    let (status, call) = a
        .post(
            "/v1/calls",
            &a.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip", "external_id": sid}),
        )
        .await;
    assert_eq!(status, 201, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();

    let mut sse_at_b = transcript_stream(&b, &id, &b.acme.api, None).await;
    let mut ws_at_c = call_socket(&c, &id, &format!("token={}", c.acme.api)).await;
    let mut live_at_b = ws_connect(
        &b.ws_url(&format!("/live-transcript/{sid}?token={}", b.acme.api)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        ws_json(&mut live_at_b).await["type"],
        "connection_established"
    );

    let texts = ["one", "two", "three", "four", "five"];
    for (n, text) in texts.iter().enumerate() {
        a.ingest(&id, transcription("user", text, true, &format!("trn_{n}")))
            .await;
    }
    // Seq 1 is the call's `call.started`.
    for (n, text) in texts.iter().enumerate() {
        let seq = n as u64 + 2;
        let frame = sse_at_b.next_data().await.unwrap();
        assert_eq!(frame.id, Some(seq.to_string()));
        assert_eq!(frame.json()["text"], *text);
        let event = ws_json(&mut ws_at_c).await;
        assert_eq!(
            (event["seq"].as_u64(), event["payload"]["text"].as_str()),
            (Some(seq), Some(*text))
        );
        assert_eq!(ws_json(&mut live_at_b).await["content"], *text);
    }

    // A conversation too: created at A, watched at B, ingested at C.
    let (status, conv) = a
        .post(
            "/v1/conversations",
            &a.acme.runtime,
            &json!({"channel": "sms", "participants": ["+14155550123"]}),
        )
        .await;
    assert_eq!(status, 201, "{conv}");
    let conv_id = conv["id"].as_str().unwrap().to_owned();
    let mut conv_at_b = SseReader::open(
        b.http
            .get(b.url(&format!("/v1/conversations/{conv_id}/stream")))
            .bearer_auth(&b.acme.api),
    )
    .await;
    let (status, body) = c
        .post(
            &format!("/v1/conversations/{conv_id}/events"),
            &c.acme.runtime,
            &json!({"event_type": "message.received", "payload": {"message_id": "m1", "direction": "inbound", "status": "received", "text": "hello"}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let message = conv_at_b.next_data().await.unwrap();
    assert_eq!(message.json()["payload"]["text"], "hello", "{:?}", message);
}

#[tokio::test]
async fn one_call_ingested_through_two_nodes_at_once_is_one_gap_free_sequence() {
    let a = TestServer::start().await;
    if !clustered(&a, "one_call_ingested_through_two_nodes") {
        return;
    }
    let (b, c) = (a.another_node().await, a.another_node().await);
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut watcher = call_socket(&c, &id, &format!("token={}", c.acme.api)).await;
    let ingest = |ts: &TestServer, node: &'static str| {
        let (http, url, key) = (
            ts.http.clone(),
            ts.url(&format!("/v1/calls/{id}/events")),
            ts.acme.runtime.clone(),
        );
        async move {
            for n in 0..40 {
                let batch = json!([
                    transcription(
                        "user",
                        &format!("{node}-{n}-a"),
                        false,
                        &format!("trn_{node}{n}")
                    ),
                    transcription(
                        "user",
                        &format!("{node}-{n}-b"),
                        true,
                        &format!("trn_{node}{n}")
                    ),
                ]);
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
            }
        }
    };
    tokio::join!(ingest(&a, "a"), ingest(&b, "b"));
    let mut seqs = Vec::new();
    let mut texts = HashSet::new();
    for _ in 0..160 {
        let event = ws_json(&mut watcher).await;
        seqs.push(event["seq"].as_u64().unwrap());
        assert!(
            texts.insert(event["payload"]["text"].as_str().unwrap().to_owned()),
            "delivered twice: {event}"
        );
    }
    // After the call's `call.started` (seq 1): one contiguous order.
    assert_eq!(
        seqs,
        (2..=161).collect::<Vec<u64>>(),
        "one contiguous order"
    );
    // Each batch stayed together: a node's "-a" is always right before its "-b".
    let mut resumed = call_socket(&a, &id, &format!("token={}&since=1", a.acme.api)).await;
    let mut previous: Option<Value> = None;
    for _ in 0..160 {
        let event = ws_json(&mut resumed).await;
        let text = event["payload"]["text"].as_str().unwrap().to_owned();
        if let Some(stem) = text.strip_suffix("-b") {
            let before = previous.as_ref().unwrap()["payload"]["text"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(before, format!("{stem}-a"));
        }
        previous = Some(event);
    }
    // The store agrees: its transcript has all 80 finals.
    let (status, transcript) = c
        .get(&format!("/v1/calls/{id}/transcript"), &c.acme.api)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        transcript["turns"].as_array().unwrap().len(),
        80,
        "{transcript}"
    );
}

#[tokio::test]
async fn a_client_that_loses_its_node_resumes_at_another_and_misses_nothing() {
    let a = TestServer::start().await;
    if !clustered(&a, "a_client_that_loses_its_node") {
        return;
    }
    let b = a.another_node().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut at_a = transcript_stream(&a, &id, &a.acme.api, None).await;
    let mut ws_at_a = call_socket(&a, &id, &format!("token={}", a.acme.api)).await;
    for n in 1..=3 {
        b.ingest(
            &id,
            transcription("user", &format!("t{n}"), true, &format!("trn_{n}")),
        )
        .await;
    }
    let mut last_id = 0u64;
    for _ in 1..=3 {
        last_id = at_a.next_data().await.unwrap().id.unwrap().parse().unwrap();
    }
    let last_seq = loop {
        let event = ws_json(&mut ws_at_a).await;
        if event["payload"]["text"] == "t3" {
            break event["seq"].as_u64().unwrap();
        }
    };
    // Node A goes away; the call goes on at B.
    a.server().shutdown();
    for n in 4..=9 {
        b.ingest(
            &id,
            transcription("agent", &format!("t{n}"), true, &format!("trn_{n}")),
        )
        .await;
    }
    let mut resumed = transcript_stream(&b, &id, &b.acme.api, Some(last_id)).await;
    for n in 4..=9 {
        let frame = resumed.next_data().await.unwrap();
        assert_eq!(frame.json()["text"], format!("t{n}"));
    }
    let mut ws = call_socket(&b, &id, &format!("token={}&since={last_seq}", b.acme.api)).await;
    for n in 4..=9u64 {
        let event = ws_json(&mut ws).await;
        assert_eq!(event["seq"], last_seq + n - 3);
        assert_eq!(event["payload"]["text"], format!("t{n}"));
    }
    b.ingest(&id, completed()).await;
    assert_eq!(ws_json(&mut ws).await["event_type"], "call.completed");
    assert_eq!(ws_next(&mut ws).await, WsEvent::Close(1000));
}

#[tokio::test]
async fn a_command_at_one_node_reaches_the_runtime_at_another_and_the_answer_comes_back() {
    let a = TestServer::start().await;
    if !clustered(&a, "a_command_at_one_node") {
        return;
    }
    let b = a.another_node().await;
    // The runtime is connected to A, and has ingested for the call there (claimed it).
    let _runtime = obedient_runtime(&a).await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.ingest(&id, transcription("user", "hi", true, "trn_1"))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, body) = b
        .post(
            &format!("/v1/calls/{id}/commands"),
            &b.acme.api,
            &json!({"command": "send_dtmf", "digits": "7"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Over the call socket at B: the ack, and the event the runtime ingested (at A).
    let mut ws = call_socket(&b, &id, &format!("token={}", b.acme.api)).await;
    ws_send(
        &mut ws,
        &json!({"type": "send_dtmf", "id": "k1", "digits": "5"}),
    )
    .await;
    let mut frames = [ws_json(&mut ws).await, ws_json(&mut ws).await];
    frames.sort_by_key(|f| f["type"].is_null());
    assert_eq!(frames[0], json!({"type": "ack", "id": "k1"}));
    assert_eq!(frames[1]["payload"]["digits"], "5");
}

#[tokio::test]
async fn seed_003s_ten_connections_per_call_hold_across_the_cluster() {
    let a = TestServer::start().await;
    if !clustered(&a, "seed_003s_ten_connections") {
        return;
    }
    let (b, c) = (a.another_node().await, a.another_node().await);
    let sid = "CA00000000000000000000000000000002";
    let (status, _) = a
        .post(
            "/v1/calls",
            &a.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip", "external_id": sid}),
        )
        .await;
    assert_eq!(status, 201);
    let open = |ts: &TestServer| {
        let url = ts.ws_url(&format!("/live-transcript/{sid}?token={}", ts.acme.api));
        async move {
            let mut ws = ws_connect(&url, None).await.unwrap();
            let first = ws_next(&mut ws).await;
            (ws, first)
        }
    };
    let mut held = Vec::new();
    for n in 0..10 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (ws, first) = open(node).await;
        let WsEvent::Json(hello) = first else {
            panic!("connection {n} was refused: {first:?}");
        };
        assert_eq!(hello["type"], "connection_established");
        held.push(ws);
    }
    // The eleventh, at a third node, is refused.
    let (_, refused) = open(&c).await;
    assert_eq!(refused, WsEvent::Close(1008));
    // One closes (at A); a place is free again, at C.
    let mut first = held.remove(0);
    futures::SinkExt::close(&mut first).await.unwrap();
    drop(first);
    let mut accepted = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let (ws, WsEvent::Json(_)) = open(&c).await {
            accepted = Some(ws);
            break;
        }
    }
    assert!(accepted.is_some(), "the freed place was never given back");
}

#[tokio::test]
async fn a_session_cookie_and_a_stream_token_minted_at_one_node_work_at_another() {
    let a = TestServer::start().await;
    if !clustered(&a, "a_session_cookie_and_a_stream_token") {
        return;
    }
    let b = a.another_node().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, token) = a
        .post("/v1/stream-tokens", &a.acme.api, &json!({"call_id": id}))
        .await;
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_owned();
    let mut ws = call_socket(&b, &id, &format!("token={token}")).await;
    a.ingest(&id, transcription("user", "hi", true, "trn_1"))
        .await;
    assert_eq!(ws_json(&mut ws).await["payload"]["text"], "hi");

    let (status, cookie, _) = a.sign_in(&a.acme.api).await;
    assert_eq!(status, 201);
    let cookie = cookie.unwrap();
    let mut s = SseReader::open(
        b.http
            .get(b.url(&format!("/v1/speech-events/stream?callId={id}")))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.next_data().await.unwrap().json()["event_type"],
        "sse_init"
    );
}

#[tokio::test]
async fn an_audio_stream_runs_at_one_node_only_and_a_delete_at_another_stops_it_at_once() {
    use crate::audio_streams::Service;
    let a = TestServer::start().await;
    if !clustered(&a, "an_audio_stream_runs_at_one_node_only") {
        return;
    }
    let b = a.another_node().await;
    let mut service = Service::start().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stream_id = a
        .start_stream(&id, json!({"service_url": service.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    // A third node starts now, and its first look at the active streams finds this one held.
    let _c = a.another_node().await;
    assert!(
        !service.connected_within(Duration::from_secs(1)).await,
        "another node ran the stream too"
    );
    // Deleted at B: A, which runs it, hears of it at once (not at its next sweep, 10 s away).
    let path = format!("{}{stream_id}/", b.streams_path(&b.auth_id().await, &id));
    let (status, body) = b.stream_api(reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    assert_eq!(
        closed.ok().flatten(),
        Some(1000),
        "A did not stop the stream"
    );
    let view = a.stream_view(&id, &stream_id).await;
    assert_eq!(
        (view["status"].as_str(), view["end_reason"].as_str()),
        (Some("stopped"), Some("deleted"))
    );
}

#[tokio::test]
async fn a_dead_nodes_audio_stream_is_taken_over_by_another_when_its_lease_runs_out() {
    use crate::audio_streams::{Runtime, Service};
    let b = TestServer::start_with(|c| c.cluster_lease_secs = 3).await;
    if !clustered(&b, "a_dead_nodes_audio_stream_is_taken_over") {
        return;
    }
    let (a, mut process) = b.process_node().await;
    let mut service = Service::start().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime_at_a = Runtime::open(&a).await;
    let stream_id = a
        .start_stream(&id, json!({"service_url": service.url}))
        .await;
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    let _voice = runtime_at_a.speak(&id, vec![0; 8000 * 30]);
    conn.next_event("media").await;
    // B looks every second; A renews its lease in time, so B leaves the stream alone.
    assert!(
        !service.connected_within(Duration::from_millis(2500)).await,
        "B ran the stream too while A was alive"
    );

    process.start_kill().unwrap();
    process.wait().await.unwrap();
    // The call goes on through B: its audio wakes the stream B takes over once A's lease ends.
    let runtime_at_b = Runtime::open(&b).await;
    let _voice = runtime_at_b.speak(&id, vec![0; 8000 * 30]);
    let mut again = service.next_conn().await;
    let (_, start) = again.next_event("start").await;
    assert_eq!(start["start"]["streamId"], json!(stream_id));
    again.next_event("media").await;
    assert_eq!(
        b.metric("callstream_audio_streams_adopted_total").await,
        1.0
    );
    assert_eq!(
        b.stream_view(&id, &stream_id).await["status"],
        "in-progress"
    );
}

/// Every wake of the webhook workers is a NATS message to every node and an outbox claim at
/// each: a node sends one only when an append queued a webhook, whichever way the events came
/// (an HTTP batch, or the runtime socket's group commit).
#[tokio::test]
async fn the_webhook_workers_are_woken_only_by_appends_that_queued_a_webhook() {
    use futures::StreamExt;
    let ts = TestServer::start().await;
    if !clustered(&ts, "the_webhook_workers_are_woken_only_by_appends") {
        return;
    }
    let nats = ts.server().state().nats().unwrap().clone();
    let mut wakes = nats
        .subscribe(callstream_server::state::OUTBOX_WAKE_SUBJECT)
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let id = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut runtime = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let dtmf = |digits: &str| json!([{"event_type": "call.dtmf", "payload": {"digits": digits}}]);

    // No endpoint: events by HTTP and on the runtime socket wake nobody.
    ts.ingest(&id, dtmf("1")).await;
    ws_send(
        &mut runtime,
        &json!({"type": "events", "call_id": id, "events": dtmf("2")}),
    )
    .await;
    assert_eq!(ws_json(&mut runtime).await["type"], "accepted");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), wakes.next())
            .await
            .is_err(),
        "an append that queued no webhook wakes no worker"
    );

    // With an endpoint that wants DTMF, each way wakes the workers.
    let (status, created) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.acme.api,
            &json!({"url": "http://127.0.0.1:9/hook", "event_types": ["call.dtmf"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // Whatever creating it said is let through first (wakes are at most one per 20 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    while tokio::time::timeout(Duration::from_millis(50), wakes.next())
        .await
        .is_ok()
    {}
    ts.ingest(&id, dtmf("3")).await;
    tokio::time::timeout(Duration::from_secs(5), wakes.next())
        .await
        .expect("an HTTP batch that queued a webhook wakes the workers")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws_send(
        &mut runtime,
        &json!({"type": "events", "call_id": id, "events": dtmf("4")}),
    )
    .await;
    assert_eq!(ws_json(&mut runtime).await["type"], "accepted");
    tokio::time::timeout(Duration::from_secs(5), wakes.next())
        .await
        .expect("a group commit that queued a webhook wakes the workers")
        .unwrap();
}

/// A second node, a call created at the first, and a socket on that call at the second.
async fn a_call_watched_at_another_node(a: &TestServer) -> (TestServer, String, Ws) {
    let b = a.another_node().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let at_b = call_socket(&b, &id, &format!("token={}", b.acme.api)).await;
    (b, id, at_b)
}

/// The next event on a call socket is the `call.dtmf` of these digits, under this seq.
async fn next_dtmf_is(ws: &mut Ws, seq: u64, digits: &str) {
    let event = ws_json(ws).await;
    assert_eq!(
        (event["seq"].as_u64(), event["payload"]["digits"].as_str()),
        (Some(seq), Some(digits)),
        "{event}"
    );
}

/// A batch that went out on the bus although its transaction failed holds its seqs, and the
/// store does not know them until the failed node's burn lands: the next batch, ingested at any
/// node meanwhile, must not reuse them (its events would be skipped by every stream as already
/// seen). It is numbered after them instead, and every stream gets both: at a node that saw the
/// lost batch go through its bus (it numbers after what its bus holds), and at one started since
/// (JetStream refuses the reused first seq, and the node numbers again after the subject's
/// last), by HTTP and on the runtime socket.
#[tokio::test]
async fn a_batch_is_numbered_after_seqs_another_batch_took_on_the_bus_without_the_store() {
    let a = TestServer::start().await;
    if !clustered(&a, "a_batch_is_numbered_after_seqs_another_batch_took") {
        return;
    }
    let (b, id, mut at_b) = a_call_watched_at_another_node(&a).await;

    // Seq 2 went out from a node whose transaction then failed: the store still says 1.
    let lost =
        crate::support::publish_before_commit(&a, &id, "call.dtmf", json!({"digits": "9"})).await;
    assert_eq!(lost, 2);
    next_dtmf_is(&mut at_b, 2, "9").await;

    // By HTTP, at a node started since, which never saw seq 2: numbered 3, and delivered.
    let c = a.another_node().await;
    let body = c
        .ingest(
            &id,
            json!([{"event_type": "call.dtmf", "payload": {"digits": "1"}}]),
        )
        .await;
    assert_eq!(body["seqs"], json!([3]), "{body}");
    next_dtmf_is(&mut at_b, 3, "1").await;

    // Once more, and this time the batch comes on a runtime socket (a group commit) at the node
    // that saw it.
    let lost =
        crate::support::publish_before_commit(&a, &id, "call.dtmf", json!({"digits": "8"})).await;
    assert_eq!(lost, 4);
    let mut runtime = ws_connect(&b.ws_url("/v1/runtime"), Some(&b.acme.runtime))
        .await
        .unwrap();
    ws_send(
        &mut runtime,
        &json!({"type": "events", "call_id": id, "events": [{"event_type": "call.dtmf", "payload": {"digits": "2"}}]}),
    )
    .await;
    let accepted = ws_json(&mut runtime).await;
    assert_eq!(
        (accepted["type"].as_str(), &accepted["seqs"]),
        (Some("accepted"), &json!([5])),
        "{accepted}"
    );
    for (seq, digits) in [(4, "8"), (5, "2")] {
        next_dtmf_is(&mut at_b, seq, digits).await;
    }
}

/// The same hazard past JetStream's duplicate window (120 s): the lost batch went out long
/// before, under a message id no later batch repeats. Every node saw it go through its bus, and
/// numbers after it (a runtime socket's group commit takes the same floor): the next batch at
/// another node never reuses its seqs.
#[tokio::test]
async fn a_batch_is_numbered_after_what_the_bus_holds_even_past_the_duplicate_window() {
    let a = TestServer::start().await;
    if !clustered(&a, "a_batch_is_numbered_after_what_the_bus_holds") {
        return;
    }
    let (b, id, mut at_b) = a_call_watched_at_another_node(&a).await;
    let workspace = callstream_server::auth::authenticate(a.server().state().store(), &a.acme.api)
        .await
        .unwrap()
        .workspace_id;
    let call = callstream_core::CallId::parse(&id).unwrap();
    let subject = callstream_bus::Topic::call(&workspace, &call);

    // Seqs 2 to 4 went out, stored by JetStream, under an id of long ago; the store says 1.
    let lost: Vec<callstream_core::Envelope> = (2..=4)
        .map(|seq| {
            callstream_core::Envelope::new(
                workspace.clone(),
                callstream_core::Subject::Call(call.clone()),
                seq,
                callstream_core::time::now(),
                callstream_core::Payload::parse("call.dtmf", json!({"digits": "9"})).unwrap(),
            )
            .unwrap()
        })
        .collect();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "published-long-ago");
    headers.insert("Cs-Seq", "2");
    headers.insert("Cs-Last-Seq", "4");
    let nats = a.server().state().nats().unwrap().clone();
    nats.publish_with_headers(
        subject.as_str().to_owned(),
        headers,
        serde_json::to_vec(&lost).unwrap().into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    for seq in 2..=4 {
        assert_eq!(ws_json(&mut at_b).await["seq"].as_u64(), Some(seq));
    }

    // At the other node, by HTTP: numbered 5.
    let body = b
        .ingest(
            &id,
            json!([{"event_type": "call.dtmf", "payload": {"digits": "1"}}]),
        )
        .await;
    assert_eq!(body["seqs"], json!([5]), "{body}");
    next_dtmf_is(&mut at_b, 5, "1").await;
}

/// A cluster's runtime socket keeps several group commits in flight: while one call's append
/// waits (its row held by another transaction), the next messages are read, and another call's
/// events go out to its streams at once. A second message for the waiting call waits behind
/// the first, numbered after it, and every answer comes back in the order the messages were sent.
#[tokio::test]
async fn a_runtime_socket_appends_for_other_calls_while_one_calls_append_waits() {
    let Some((a, held, mut runtime, mut locker)) =
        a_runtime_and_a_held_call("a_runtime_socket_appends_for_other_calls").await
    else {
        return;
    };
    let (b, free, mut at_b) = a_call_watched_at_another_node(&a).await;
    let dtmf = |call: &str, r: &str, digits: &str| {
        json!({"type": "events", "ref": r, "call_id": call,
            "events": [{"event_type": "call.dtmf", "payload": {"digits": digits}}]})
    };

    ws_send(&mut runtime, &dtmf(&held, "h1", "1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws_send(&mut runtime, &dtmf(&held, "h2", "2")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws_send(&mut runtime, &dtmf(&free, "f1", "3")).await;

    // The free call's event is out while the held call still waits.
    next_dtmf_is(&mut at_b, 2, "3").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ws_next(&mut runtime))
            .await
            .is_err(),
        "no answer overtakes the first message's"
    );

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let answer = ws_json(&mut runtime).await;
        assert_eq!(answer["type"], "accepted", "{answer}");
        answers.push((
            answer["ref"].as_str().unwrap().to_owned(),
            answer["seqs"].clone(),
        ));
    }
    assert_eq!(
        answers,
        [
            ("h1".to_owned(), json!([2])),
            ("h2".to_owned(), json!([3])),
            ("f1".to_owned(), json!([2])),
        ]
    );
    // The group that waited for the held row shows in the upper buckets, where an operator
    // looks for stalls.
    let groups = a
        .metric("callstream_ingest_append_seconds_count{path=\"group\"}")
        .await;
    let quick = a
        .metric("callstream_ingest_append_seconds_bucket{le=\"0.5\",path=\"group\"}")
        .await;
    assert!(
        groups >= 2.0 && quick < groups,
        "{quick} of {groups} groups under 0.5 s"
    );
    drop(b);
}

/// A node shutting down answers the runtime's messages whose appends are in flight before it
/// closes the socket (and its shutdown waits for them): none is left half done, and the runtime
/// knows which went in.
#[tokio::test]
async fn a_node_shutting_down_answers_the_appends_in_flight_before_it_closes() {
    let Some((a, held, mut runtime, mut locker)) =
        a_runtime_and_a_held_call("a_node_shutting_down_answers_the_appends_in_flight").await
    else {
        return;
    };
    ws_send(
        &mut runtime,
        &json!({"type": "events", "ref": "h1", "call_id": held,
            "events": [{"event_type": "call.dtmf", "payload": {"digits": "1"}}]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.server().shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();

    let answer = ws_json(&mut runtime).await;
    assert_eq!(
        (
            answer["type"].as_str(),
            answer["ref"].as_str(),
            &answer["seqs"]
        ),
        (Some("accepted"), Some("h1"), &json!([2])),
        "{answer}"
    );
    match ws_next(&mut runtime).await {
        WsEvent::Close(code) => assert_eq!(code, 1001),
        WsEvent::Json(other) => panic!("expected the going-away close, got {other}"),
    }
}

/// On a cluster only (`None`, after one line saying so, otherwise): node A, a call there, a
/// runtime connected to A, and a transaction of its own holding the call's row, as another node's
/// group commit would (roll it back to let go).
async fn a_runtime_and_a_held_call(
    test: &str,
) -> Option<(TestServer, String, Ws, sqlx::PgConnection)> {
    let a = TestServer::start().await;
    if !clustered(&a, test) {
        return None;
    }
    let cluster = a.cluster.clone().unwrap();
    let held = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let runtime = ws_connect(&a.ws_url("/v1/runtime"), Some(&a.acme.runtime))
        .await
        .unwrap();
    let locker = hold_call_row(&cluster, &held).await;
    Some((a, held, runtime, locker))
}

async fn hold_call_row(cluster: &crate::support::Cluster, call: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut locker = sqlx::PgConnection::connect(&cluster.db.admin_db_url())
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
        .bind(call)
        .execute(&mut locker)
        .await
        .unwrap();
    locker
}
