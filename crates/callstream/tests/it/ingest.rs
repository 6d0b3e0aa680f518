//! Call REST and ingest: what a runtime and an API client rely on, and every refusal.

use serde_json::{Value, json};

use crate::support::{TestServer, completed, transcription};

#[tokio::test]
async fn create_ingest_read_back() {
    let ts = TestServer::start().await;
    let (status, call) = ts
        .post(
            "/v1/calls",
            &ts.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "outbound", "transport": "esl", "external_id": "CA0123456789abcdef0123456789abcdef"}),
        )
        .await;
    assert_eq!(status, 201, "{call}");
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("call_"));
    assert_eq!(call["status"], "in_progress");
    assert_eq!(call["transport"], "esl");
    assert_eq!(call["external_id"], "CA0123456789abcdef0123456789abcdef");
    assert_eq!(call["last_seq"], 1, "call.started is seq 1");
    assert!(call["live_conversation_token"].as_str().unwrap().len() >= 32);

    let one = ts
        .ingest(id, transcription("user", "What time", false, "trn_a"))
        .await;
    assert_eq!(one["seqs"], json!([2]));
    let many = ts
        .ingest(
            id,
            json!([
                transcription("user", "What time do you open?", true, "trn_a"),
                {"event_type": "call.turn_latency", "payload": {"total_ms": 640, "llm_ms": 400}},
                transcription("agent", "We open at nine.", true, "trn_b"),
                {"event_type": "call.tts_completed", "payload": {"text": "We open at nine.", "latency_ms": 180}, "timestamp": "2026-05-15T14:32:01.123Z"},
            ]),
        )
        .await;
    assert_eq!(many["seqs"], json!([3, 4, 5, 6]));
    assert_eq!(many["event_ids"].as_array().unwrap().len(), 4);

    let (status, got) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(status, 200);
    assert_eq!(got["last_seq"], 6);
    assert_eq!(
        got["live_conversation_token"],
        call["live_conversation_token"]
    );

    let (_, transcript) = ts
        .get(&format!("/v1/calls/{id}/transcript"), &ts.acme.api)
        .await;
    let turns = transcript["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2, "finals only: {transcript}");
    assert_eq!(turns[0]["text"], "What time do you open?");
    assert_eq!(turns[0]["seq"], 3);
    assert_eq!(turns[1]["role"], "agent");

    ts.ingest(id, completed()).await;
    let (_, ended) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(ended["status"], "completed");
    assert!(ended["ended_at"].is_string());

    let (status, body) = ts
        .post(
            &format!("/v1/calls/{id}/events"),
            &ts.acme.runtime,
            &transcription("user", "hi", true, "trn_c"),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (409, Some("call_ended"))
    );
}

#[tokio::test]
async fn list_filters_by_status_and_since() {
    let ts = TestServer::start().await;
    let live = ts.create_call("sip").await;
    let done = ts.create_call("webrtc").await;
    ts.ingest(
        done["id"].as_str().unwrap(),
        json!({"event_type": "call.failed", "payload": {"reason": "busy"}}),
    )
    .await;

    let ids = |v: &Value| -> Vec<String> {
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = ts.get("/v1/calls", &ts.acme.api).await;
    assert_eq!(ids(&all).len(), 2);
    let (_, active) = ts.get("/v1/calls?status=in_progress", &ts.acme.api).await;
    assert_eq!(ids(&active), [live["id"].as_str().unwrap()]);
    let (_, failed) = ts
        .get("/v1/calls?status=failed&limit=1", &ts.acme.api)
        .await;
    assert_eq!(ids(&failed), [done["id"].as_str().unwrap()]);
    let (_, none) = ts
        .get("/v1/calls?since=2999-01-01T00:00:00Z", &ts.acme.api)
        .await;
    assert!(ids(&none).is_empty());

    for (query, field) in [
        ("status=ringing", "status"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=9999", "limit"),
        ("colour=red", "colour"),
    ] {
        let (status, body) = ts.get(&format!("/v1/calls?{query}"), &ts.acme.api).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{query}: {body}"
        );
    }
}

/// Every malformed ingest is refused with a 400 that names the field, and nothing is stored.
#[tokio::test]
async fn malformed_events_are_refused_by_field() {
    let ts = TestServer::start().await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"event_type": "call.exploded", "payload": {}}),
            "event_type: unknown event type \"call.exploded\"",
        ),
        (json!({"payload": {}}), "body: missing field `event_type`"),
        (
            json!({"event_type": "call.dtmf"}),
            "body: missing field `payload`",
        ),
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "12x"}}),
            "payload.digits: digits must be",
        ),
        (
            json!({"event_type": "call.transcription", "payload": {"role": "user", "text": 5, "is_final": true, "turn_id": "trn_1"}}),
            "payload.text: invalid type",
        ),
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}, "timestamp": "noon"}),
            "timestamp: ",
        ),
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}, "extra": 1}),
            "extra: unknown field `extra`",
        ),
        (
            json!({"event_type": "call.started", "payload": {"phone": "+14155550123", "direction": "inbound", "transport": "sip"}}),
            "event_type: call.started is emitted by callstream",
        ),
        (
            json!({"event_type": "call.barge_in", "payload": {}}),
            "event_type: call.barge_in exists only for phone transports",
        ),
        (
            json!({"event_type": "message.read", "payload": {"message_id": "m", "direction": "inbound", "status": "read"}}),
            "event_type: message.read does not belong to a call",
        ),
        (
            json!([{"event_type": "call.dtmf", "payload": {"digits": "1"}}, {"event_type": "call.dtmf", "payload": {"digits": ""}}]),
            "events[1].payload.digits",
        ),
        (
            json!([completed(), {"event_type": "call.dtmf", "payload": {"digits": "1"}}]),
            "events[0]: call.completed ends the call",
        ),
        // Decoded in one pass, then refused by the checks: named as the careful path names them.
        (
            json!([{"event_type": "call.barge_in", "payload": {}}]),
            "events[0].event_type: call.barge_in exists only for phone transports",
        ),
        (
            json!([{"event_type": "call.dtmf", "payload": {"digits": "1"}, "timestamp": "noon"}]),
            "events[0].timestamp: ",
        ),
        (
            json!({"payload": {}, "event_type": "call.barge_in"}),
            "event_type: call.barge_in exists only for phone transports",
        ),
        (json!([]), "body: send 1 to"),
        (json!("hello"), "body: expected an event object"),
        (json!([5]), "events[0]: invalid type: integer `5`"),
        (
            json!({"event_type": "call.dtmf", "payload": 5}),
            "payload: invalid type: integer `5`",
        ),
        // Fields the gateway knows, with impossible values.
        (
            json!({"event_type": "call.metrics", "payload": {"mos": -5}}),
            "payload.mos: must be between 1 and 5, got -5",
        ),
        (
            json!({"event_type": "call.completed", "payload": {"duration_s": -3}}),
            "payload.duration_s: must be between 0 and",
        ),
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}, "timestamp": "0000-01-01T00:00:00Z"}),
            "timestamp: must not be before 1970",
        ),
        (
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}, "timestamp": "2999-01-01T00:00:00Z"}),
            "timestamp: must not be more than a day ahead",
        ),
        // A known field of the wrong type, beside unknown ones.
        (
            json!({"event_type": "call.transcription", "payload": {"role": "user", "text": 3, "is_final": true, "turn_id": "trn_1", "words": []}}),
            "payload.text: invalid type: integer `3`",
        ),
    ];
    for (body, expect) in cases {
        let (status, err) = ts
            .post(&format!("/v1/calls/{id}/events"), &ts.acme.runtime, &body)
            .await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error_code"], "invalid_event", "{body}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.starts_with(expect),
            "{body}: got {message:?}, expected {expect:?}"
        );
        // No parser positions (they counted within the nested payload), the field named once.
        assert!(!message.contains(" at line "), "{message}");
        if let Some((path, rest)) = message.split_once(": ") {
            let field = path.rsplit('.').next().unwrap();
            assert!(!rest.starts_with(&format!("{field}: ")), "{message}");
        }
    }
    let (_, after) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(after["last_seq"], 1, "refused events must not take seqs");
    assert_eq!(after["status"], "in_progress");

    // Field order is the sender's choice: the payload may come before its event_type.
    let (status, body) = ts
        .post(
            &format!("/v1/calls/{id}/events"),
            &ts.acme.runtime,
            &json!({"payload": {"digits": "7"}, "event_type": "call.dtmf"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["seqs"], json!([2]));
}

#[tokio::test]
async fn malformed_bodies_are_refused_clearly() {
    let ts = TestServer::start().await;
    let url = ts.url("/v1/calls");
    let send = |body: Vec<u8>, content_type: &'static str| {
        ts.http
            .post(&url)
            .bearer_auth(&ts.acme.runtime)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            b"{not json".to_vec(),
            "application/json",
            400,
            "body is not valid JSON",
        ),
        (
            vec![0xff, 0xfe, 0x00, 0x01],
            "application/json",
            400,
            "body is not valid JSON",
        ),
        (
            br#"{"phone": "+1415"}"#.to_vec(),
            "application/json",
            400,
            "body: missing field `direction`",
        ),
        (
            br#"{"phone": "555-0100", "direction": "inbound", "transport": "sip"}"#.to_vec(),
            "application/json",
            400,
            "body.phone: expected E.164",
        ),
        (
            br#"{"phone": "+14155550123", "direction": "sideways", "transport": "sip"}"#.to_vec(),
            "application/json",
            400,
            "body.direction: unknown variant `sideways`",
        ),
        (
            br#"{"phone": "+14155550123", "direction": "inbound", "transport": "pstn"}"#.to_vec(),
            "application/json",
            400,
            "body.transport: unknown variant `pstn`",
        ),
        (
            br#"{"phone": "+14155550123", "direction": "inbound", "transport": "sip"} trailing"#
                .to_vec(),
            "application/json",
            400,
            "body is not valid JSON",
        ),
        (
            br#"{"phone": "+14155550123", "direction": "inbound", "transport": "sip"}"#.to_vec(),
            "text/plain",
            415,
            "send the body as",
        ),
        (
            vec![b' '; 2 * 1024 * 1024],
            "application/json",
            413,
            "the request body is too large",
        ),
    ];
    for (body, content_type, status, expect) in cases {
        let r = send(body, content_type).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{expect}");
        let err: Value = r.json().await.unwrap();
        let message = err["message"].as_str().unwrap();
        assert!(
            message.starts_with(expect),
            "got {err}, expected {expect:?}"
        );
        // A field's refusal names its path once and no parser position; only malformed JSON
        // says where in the body it broke.
        if !expect.starts_with("body is not valid JSON") {
            assert!(!message.contains(" at line "), "{message}");
        }
    }
    // The server still works for everyone after all that.
    ts.create_call("sip").await;
}

#[tokio::test]
async fn keys_are_checked_by_kind() {
    let ts = TestServer::start().await;
    let body = json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"});
    let (status, err) = ts.post("/v1/calls", &ts.acme.api, &body).await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (403, Some("forbidden")),
        "an API key cannot ingest"
    );
    let (status, _) = ts.get("/v1/calls", &ts.acme.runtime).await;
    assert_eq!(status, 403, "a runtime key cannot read");
    for key in ["pk_live_wrong", "sk_live_whatever", "", "pk_live_é"] {
        let (status, err) = ts.get("/v1/calls", key).await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (401, Some("unauthorized")),
            "{key:?}"
        );
    }
    let r = ts
        .http
        .get(ts.url("/v1/calls"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = ts.http.get(ts.url("/v1/calls")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = ts
        .http
        .get(ts.url("/v1/calls"))
        .header("authorization", b"Bearer \xff\xfe".as_slice())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
