//! Seed 001: the live-call control socket `/ws/v1/liveCalls?conversationToken=…`, driven by a
//! real WebSocket client against a real server, with a real runtime socket obeying commands.

use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{
    TestServer, Ws, WsEvent, WsMessage, break_the_calls_table, completed, flood_until_closed,
    obedient_runtime, publish_before_commit, transcription, ws_connect, ws_json, ws_next, ws_send,
};

/// Connects with the given headers; `Err(status)` when the server refuses the upgrade.
async fn connect(ts: &TestServer, query: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let mut request = ts
        .ws_url(&format!("/ws/v1/liveCalls{query}"))
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

async fn open(ts: &TestServer, call: &Value, extra: &[(&str, &str)]) -> Ws {
    let bearer = format!("Bearer {}", ts.acme.api);
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    let token = call["live_conversation_token"].as_str().unwrap();
    connect(ts, &format!("?conversationToken={token}"), &headers)
        .await
        .unwrap()
}

/// Reads messages until the close; returns them and the close code.
async fn until_close(ws: &mut Ws) -> (Vec<Value>, u16) {
    let mut seen = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(v) => seen.push(v),
            WsEvent::Close(code) => return (seen, code),
        }
    }
}

#[tokio::test]
async fn refusals_before_the_upgrade_are_the_seeds_statuses() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let token = call["live_conversation_token"].as_str().unwrap();
    let q = format!("?conversationToken={token}");
    let api = format!("Bearer {}", ts.acme.api);
    let auth = ("authorization", api.as_str());

    // 401: no key, a made-up key, a runtime key, the key in the query instead of the header.
    assert_eq!(connect(&ts, &q, &[]).await.err(), Some(401));
    assert_eq!(
        connect(&ts, &q, &[("authorization", "Bearer pk_live_nope")])
            .await
            .err(),
        Some(401)
    );
    let runtime = format!("Bearer {}", ts.acme.runtime);
    assert_eq!(
        connect(&ts, &q, &[("authorization", runtime.as_str())])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        connect(&ts, &format!("{q}&token={}", ts.acme.api), &[])
            .await
            .err(),
        Some(401)
    );

    // 400: the token missing or malformed, a malformed header parameter.
    assert_eq!(connect(&ts, "", &[auth]).await.err(), Some(400));
    assert_eq!(
        connect(&ts, "?conversationToken=", &[auth]).await.err(),
        Some(400)
    );
    assert_eq!(
        connect(&ts, "?conversationToken=lct_short", &[auth])
            .await
            .err(),
        Some(400)
    );
    assert_eq!(
        connect(&ts, &q, &[auth, ("x-product-version", "v2.1")])
            .await
            .err(),
        Some(400)
    );
    let long_user = "u".repeat(129);
    assert_eq!(
        connect(&ts, &q, &[auth, ("x-user-id", long_user.as_str())])
            .await
            .err(),
        Some(400)
    );

    // 404: a well-formed token nobody holds, acme's token with another workspace's key.
    let unknown = format!("?conversationToken=lct_{}", "ab".repeat(32));
    assert_eq!(connect(&ts, &unknown, &[auth]).await.err(), Some(404));
    let other = format!("Bearer {}", ts.other.api);
    assert_eq!(
        connect(&ts, &q, &[("authorization", other.as_str())])
            .await
            .err(),
        Some(404)
    );

    // The refusals are JSON that says what is wrong.
    let r = ts
        .http
        .get(ts.url("/ws/v1/liveCalls?conversationToken=lct_short"))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("conversationToken"),
        "{body}"
    );

    // With everything right it upgrades, and once the call has ended the token is 404.
    let ok = connect(&ts, &q, &[auth, ("x-product-version", "2.1.3")]).await;
    assert!(ok.is_ok());
    ts.ingest(call["id"].as_str().unwrap(), completed()).await;
    assert_eq!(connect(&ts, &q, &[auth]).await.err(), Some(404));
}

#[tokio::test]
async fn start_screening_transcripts_and_call_end_in_the_seeds_shapes() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut ws = open(&ts, &call, &[]).await;

    let start = ws_json(&mut ws).await;
    assert_eq!(start["type"], "event:start");
    assert_eq!(start["phone"], "+14155550123");
    assert_eq!(start["timestamp"], call["started_at"]);

    ts.ingest(
        id,
        json!([
            {"event_type": "call.screening_ended", "payload": {"msg": "Screening passed"}},
            transcription("user", "Hel", false, "trn_1"),
            {"event_type": "call.transcription", "payload": {"role": "user", "text": "Hello there", "is_final": true, "turn_id": "trn_1", "segment_start": 1.25, "segment_end": 2.0}},
            {"event_type": "call.dtmf", "payload": {"digits": "1"}},
            transcription("agent", "Hi! How can I help?", true, "trn_2"),
        ]),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "event:end", "msg": "Screening passed"})
    );
    // Partials and events this socket does not carry are left out.
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "transcript", "msg": "Hello there", "role": "user", "offset": 1.25})
    );
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "transcript", "msg": "Hi! How can I help?", "role": "assistant"})
    );

    // A client that connects after screening is told at once, and only once.
    let mut late = open(&ts, &call, &[]).await;
    assert_eq!(ws_json(&mut late).await["type"], "event:start");
    assert_eq!(
        ws_json(&mut late).await,
        json!({"type": "event:end", "msg": "Screening passed"})
    );
    ts.ingest(
        id,
        json!({"event_type": "call.screening_ended", "payload": {"msg": "again"}}),
    )
    .await;
    ts.ingest(id, transcription("user", "Thanks", true, "trn_3"))
        .await;
    assert_eq!(ws_json(&mut late).await["msg"], "Thanks");
    assert_eq!(ws_json(&mut ws).await["msg"], "Thanks");

    ts.ingest(id, completed()).await;
    let (rest, code) = until_close(&mut ws).await;
    assert_eq!(code, 1000);
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["type"], "event:callEnd");
    assert!(rest[0]["timestamp"].as_str().unwrap().ends_with('Z'));
}

/// The end of screening on the bus while its transaction is still committing (the store shows
/// the call in screening): a socket opened then is told of it, once.
#[tokio::test]
async fn an_end_of_screening_on_the_bus_before_its_commit_is_told_to_a_socket_opened_meanwhile() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    publish_before_commit(
        &ts,
        id,
        "call.screening_ended",
        json!({"msg": "Screening passed"}),
    )
    .await;
    let mut ws = open(&ts, &call, &[]).await;
    assert_eq!(ws_json(&mut ws).await["type"], "event:start");
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "event:end", "msg": "Screening passed"})
    );
    // Nothing else is owed: the socket answers the next message and says nothing more first.
    ws_send(&mut ws, &json!({"type": "nonsense"})).await;
    assert_eq!(ws_json(&mut ws).await["type"], "error");
}

#[tokio::test]
async fn join_and_end_go_through_the_runtime_and_are_acknowledged() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let _runtime = obedient_runtime(&ts).await;
    let mut ws = open(&ts, &call, &[("x-user-id", "usr_42")]).await;
    assert_eq!(ws_json(&mut ws).await["type"], "event:start");

    ws_send(&mut ws, &json!({"type": "client:joinCall", "id": "j1"})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"type": "ack", "ackId": "j1"})
    );
    // The runtime was asked to transfer the call to the user named by X-User-Id.
    let mut history = ws_connect(
        &ts.ws_url(&format!(
            "/v1/calls/{id}/stream?since=0&token={}",
            ts.acme.api
        )),
        None,
    )
    .await
    .unwrap();
    let transferred = loop {
        let event = ws_json(&mut history).await;
        if event["event_type"] == "call.transferred" {
            break event;
        }
    };
    assert_eq!(transferred["payload"]["user_id"], "usr_42");

    ws_send(&mut ws, &json!({"type": "client:endCall", "id": "e1"})).await;
    let (seen, code) = until_close(&mut ws).await;
    assert_eq!(code, 1000);
    assert!(
        seen.contains(&json!({"type": "ack", "ackId": "e1"})),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|m| m["type"] == "event:callEnd").count(),
        1,
        "{seen:?}"
    );
    // The ack comes before event:callEnd: a client that closes on the call's end (what the
    // seed's lifecycle suggests) still learns that its request was carried out.
    let at = |want: &Value| seen.iter().position(|m| m == want);
    let ack = at(&json!({"type": "ack", "ackId": "e1"}));
    let end = seen.iter().position(|m| m["type"] == "event:callEnd");
    assert!(ack < end, "the ack after event:callEnd: {seen:?}");
    let (_, got) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(got["status"], "completed");
}

#[tokio::test]
async fn bad_messages_get_errors_and_nothing_else_is_harmed() {
    let ts = TestServer::start_with(|c| {
        c.ws_max_message_bytes = 1024;
        c.ws_client_messages_per_sec = 20;
    })
    .await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();
    let mut ws = open(&ts, &call, &[]).await;
    let mut bystander = open(&ts, &call, &[]).await;
    assert_eq!(ws_json(&mut ws).await["type"], "event:start");
    assert_eq!(ws_json(&mut bystander).await["type"], "event:start");

    let error = |v: Value| -> String {
        assert_eq!(v["type"], "error", "{v}");
        v["description"].as_str().unwrap().to_owned()
    };
    ws.send(WsMessage::Text("{nope".into())).await.unwrap();
    assert!(error(ws_json(&mut ws).await).contains("not valid JSON"));
    ws.send(WsMessage::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert!(error(ws_json(&mut ws).await).contains("binary"));
    ws_send(&mut ws, &json!({"type": "client:dance", "id": "1"})).await;
    assert!(error(ws_json(&mut ws).await).contains("client:dance"));
    ws_send(&mut ws, &json!({"type": "client:endCall"})).await;
    assert!(error(ws_json(&mut ws).await).contains("id"));
    // No runtime holds this call: the request fails fast, named by its id.
    ws_send(&mut ws, &json!({"type": "client:endCall", "id": "e9"})).await;
    assert!(error(ws_json(&mut ws).await).starts_with("e9: "));

    // Still open, and still live.
    ts.ingest(id, transcription("user", "still here", true, "trn_1"))
        .await;
    assert_eq!(ws_json(&mut ws).await["msg"], "still here");

    // A flood is answered with rate-limit errors, not served; the bystander sees none of it.
    for n in 0..60 {
        ws.send(WsMessage::Text(
            format!("{{\"type\":\"x\",\"id\":\"{n}\"}}").into(),
        ))
        .await
        .unwrap();
    }
    let mut limited = 0;
    for _ in 0..60 {
        if error(ws_json(&mut ws).await).starts_with("rate limit") {
            limited += 1;
        }
    }
    assert!(limited > 0, "no message of the flood was limited");
    ts.ingest(id, transcription("agent", "after the flood", true, "trn_2"))
        .await;
    assert_eq!(
        ws_json(&mut bystander).await,
        json!({"type": "transcript", "msg": "still here", "role": "user"})
    );
    assert_eq!(ws_json(&mut bystander).await["msg"], "after the flood");

    // The flooder is still served the live transcript.
    assert_eq!(ws_json(&mut ws).await["msg"], "after the flood");

    // Oversized: 1009.
    ws.send(WsMessage::Text("x".repeat(4096).into()))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await, WsEvent::Close(1009));

    // Server shutdown: 1001.
    ts.server().shutdown();
    assert_eq!(ws_next(&mut bystander).await, WsEvent::Close(1001));
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_closed_1008_and_others_stay() {
    let ts = TestServer::start_with(|c| {
        c.ws_client_messages_per_sec = 5;
        c.ws_flood_close_secs = 1;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut bystander = open(&ts, &call, &[]).await;
    assert_eq!(ws_json(&mut bystander).await["type"], "event:start");
    let ws = open(&ts, &call, &[]).await;
    // 100 messages a second, bounded to 5 s; the socket is closed after about 2.
    assert_eq!(
        flood_until_closed(ws, |_| WsMessage::Binary(vec![0; 8].into())).await,
        Some(1008)
    );
    ts.ingest(id, transcription("user", "still here", true, "trn_1"))
        .await;
    assert_eq!(ws_json(&mut bystander).await["msg"], "still here");
    assert!(
        ts.metric("callstream_client_messages_rate_limited_total{surface=\"live_calls_ws\"}")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn the_call_log_gives_the_token_and_the_screening_in_either_case() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    assert_eq!(
        call["screening"],
        Value::Null,
        "every call starts in screening"
    );

    let (status, camel) = ts
        .get(&format!("/v1/calls/{id}?case=camel"), &ts.acme.api)
        .await;
    assert_eq!(status, 200, "{camel}");
    assert_eq!(
        camel["liveConversationToken"],
        call["live_conversation_token"]
    );
    assert_eq!(camel["workspaceId"], call["workspace_id"]);
    assert_eq!(camel["startedAt"], call["started_at"]);
    assert!(camel.get("live_conversation_token").is_none(), "{camel}");

    ts.ingest(
        id,
        json!([
            {"event_type": "call.screening_ended", "payload": {"msg": "Screening passed"}},
            {"event_type": "call.screening_ended", "payload": {"msg": "a second end is ignored"}},
        ]),
    )
    .await;
    let (_, snake) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(snake["screening"]["msg"], "Screening passed");
    assert!(
        snake["screening"]["ended_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let (_, list) = ts
        .get("/v1/calls?case=camel&status=in_progress", &ts.acme.api)
        .await;
    let entry = &list["calls"][0];
    assert_eq!(
        entry["liveConversationToken"],
        call["live_conversation_token"]
    );
    assert_eq!(
        entry["screening"]["endedAt"],
        snake["screening"]["ended_at"]
    );

    for path in [
        format!("/v1/calls/{id}?case=kebab"),
        format!("/v1/calls/{id}?view=camel"),
        "/v1/calls?case=CAMEL".to_owned(),
    ] {
        let (status, body) = ts.get(&path, &ts.acme.api).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
}

#[tokio::test]
async fn a_store_that_fails_is_a_500_that_says_nothing_of_its_insides() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let token = call["live_conversation_token"].as_str().unwrap();
    break_the_calls_table(&ts).await;
    let r = ts
        .http
        .get(ts.url(&format!("/ws/v1/liveCalls?conversationToken={token}")))
        .bearer_auth(&ts.acme.api)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "internal_error", "{body}");
    assert!(
        !body.to_string().contains("calls"),
        "no SQL details leak: {body}"
    );
}
