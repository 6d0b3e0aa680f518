//! Conversations: REST, message history, operator handoff, and seed 000's conversation stream.

use serde_json::{Value, json};

use crate::support::{SseReader, TestServer};

async fn create(ts: &TestServer, channel: &str) -> String {
    let (status, c) = ts
        .post(
            "/v1/conversations",
            &ts.acme.runtime,
            &json!({"channel": channel, "participants": ["+14155550123"]}),
        )
        .await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["mode"], "ai");
    c["id"].as_str().unwrap().to_owned()
}

fn message(ty: &str, id: &str, status: &str, text: Option<&str>) -> Value {
    let mut payload = json!({"message_id": id, "direction": "inbound", "status": status, "channel_meta": {"wa_id": "x"}});
    if let Some(t) = text {
        payload["text"] = json!(t);
    }
    json!({"event_type": ty, "payload": payload})
}

async fn stream(ts: &TestServer, id: &str, last_event_id: Option<u64>) -> SseReader {
    let mut req = ts
        .http
        .get(ts.url(&format!("/v1/conversations/{id}/stream")))
        .bearer_auth(&ts.acme.api);
    if let Some(n) = last_event_id {
        req = req.header("Last-Event-ID", n.to_string());
    }
    SseReader::open(req).await
}

#[tokio::test]
async fn messages_and_handoff_stream_with_payloads_verbatim() {
    let ts = TestServer::start().await;
    let id = create(&ts, "whatsapp").await;
    let mut s = stream(&ts, &id, None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");

    let (status, body) = ts
        .post(
            &format!("/v1/conversations/{id}/events"),
            &ts.acme.runtime,
            &json!([
                message(
                    "message.received",
                    "m1",
                    "received",
                    Some("Is my order shipped?")
                ),
                message("message.delivered", "m1", "delivered", None),
            ]),
        )
        .await;
    assert_eq!((status, &body["seqs"]), (202, &json!([1, 2])));
    let first = s.next_data().await.unwrap();
    assert_eq!(first.id.as_deref(), Some("1"));
    let frame = first.json();
    assert_eq!(frame["event_type"], "message.received");
    assert_eq!(frame["conversation_id"], id.as_str());
    assert!(frame["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        frame["payload"],
        json!({"message_id": "m1", "direction": "inbound", "status": "received", "channel_meta": {"wa_id": "x"}, "text": "Is my order shipped?"})
    );
    assert_eq!(
        frame.as_object().unwrap().len(),
        4,
        "exactly the seed's four fields: {frame}"
    );
    assert_eq!(
        s.next_data().await.unwrap().json()["event_type"],
        "message.delivered"
    );

    // Operator handoff.
    let (status, after) = ts
        .post(
            &format!("/v1/conversations/{id}/mode"),
            &ts.acme.api,
            &json!({"mode": "human", "actor_user_id": "usr_ops"}),
        )
        .await;
    assert_eq!((status, after["mode"].as_str()), (200, Some("human")));
    let handoff = s.next_data().await.unwrap().json();
    assert_eq!(handoff["event_type"], "conversation.mode_changed");
    assert_eq!(
        handoff["payload"],
        json!({"from_mode": "ai", "to_mode": "human", "actor_user_id": "usr_ops"})
    );
    let (status, err) = ts
        .post(
            &format!("/v1/conversations/{id}/mode"),
            &ts.acme.api,
            &json!({"mode": "human", "actor_user_id": "usr_ops"}),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (409, Some("mode_conflict"))
    );
    // A runtime reporting a stale handoff is refused the same way.
    let stale = json!({"event_type": "conversation.mode_changed", "payload": {"from_mode": "ai", "to_mode": "human", "actor_user_id": "bot"}});
    let (status, err) = ts
        .post(
            &format!("/v1/conversations/{id}/events"),
            &ts.acme.runtime,
            &stale,
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (409, Some("mode_conflict"))
    );

    // History: one message with its latest status.
    let (_, got) = ts
        .get(&format!("/v1/conversations/{id}"), &ts.acme.api)
        .await;
    assert_eq!(got["mode"], "human");
    assert_eq!(got["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            got["messages"][0]["text"].as_str(),
            got["messages"][0]["status"].as_str()
        ),
        (Some("Is my order shipped?"), Some("delivered"))
    );

    // Resume from seq 1.
    let mut again = stream(&ts, &id, Some(1)).await;
    assert_eq!(again.next_data().await.unwrap().id.as_deref(), Some("2"));
    assert_eq!(again.next_data().await.unwrap().id.as_deref(), Some("3"));
}

#[tokio::test]
async fn the_stream_refuses_query_tokens_and_other_workspaces() {
    let ts = TestServer::start().await;
    let id = create(&ts, "sms").await;
    let r = ts
        .http
        .get(ts.url(&format!(
            "/v1/conversations/{id}/stream?token={}",
            ts.acme.api
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let foreign = SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/conversations/{id}/stream")))
            .bearer_auth(&ts.other.api),
    )
    .await;
    assert_eq!(foreign.status, 404);
    let (status, _) = ts
        .get(&format!("/v1/conversations/{id}"), &ts.other.api)
        .await;
    assert_eq!(status, 404);
    let (status, _) = ts
        .post(
            &format!("/v1/conversations/{id}/events"),
            &ts.other.runtime,
            &message("message.read", "m", "read", None),
        )
        .await;
    assert_eq!(status, 404);
    let (_, list) = ts.get("/v1/conversations", &ts.other.api).await;
    assert_eq!(list["conversations"], json!([]));
    let (_, mine) = ts
        .get("/v1/conversations?channel=sms&mode=ai", &ts.acme.api)
        .await;
    assert_eq!(mine["conversations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_conversation_input_is_refused_by_field() {
    let ts = TestServer::start().await;
    let id = create(&ts, "sms").await;
    for (body, expect) in [
        (
            json!({"channel": "fax", "participants": ["+1"]}),
            "body.channel: unknown variant `fax`",
        ),
        (
            json!({"channel": "sms", "participants": []}),
            "body.participants: 1 to",
        ),
        (
            json!({"channel": "sms"}),
            "body: missing field `participants`",
        ),
    ] {
        let (status, err) = ts.post("/v1/conversations", &ts.acme.runtime, &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            err["message"].as_str().unwrap().starts_with(expect),
            "{err}"
        );
    }
    for (body, expect) in [
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}),
            "event_type: call.dtmf does not belong to a conversation",
        ),
        (
            json!({"event_type": "message.read", "payload": {"message_id": "m"}}),
            "payload.direction: missing field",
        ),
        (
            json!([message("message.read", "m", "read", None), {"event_type": "message.sent", "payload": {}}]),
            "events[1].event_type: unknown event type",
        ),
    ] {
        let (status, err) = ts
            .post(
                &format!("/v1/conversations/{id}/events"),
                &ts.acme.runtime,
                &body,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            err["message"].as_str().unwrap().starts_with(expect),
            "{err}"
        );
    }
    let (status, err) = ts
        .post(
            &format!("/v1/conversations/{id}/mode"),
            &ts.acme.api,
            &json!({"mode": "robot", "actor_user_id": "u"}),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, _) = ts
        .post(
            &format!("/v1/conversations/{id}/mode"),
            &ts.acme.runtime,
            &json!({"mode": "human", "actor_user_id": "u"}),
        )
        .await;
    assert_eq!(status, 403, "handoff is an API-key action");
    // Conversation events to a call are refused too.
    let call = ts.create_call("sip").await;
    let (status, err) = ts
        .post(
            &format!("/v1/calls/{}/events", call["id"].as_str().unwrap()),
            &ts.acme.runtime,
            &message("message.read", "m", "read", None),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("does not belong to a call"),
        "{err}"
    );
}
