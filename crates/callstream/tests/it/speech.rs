//! Seed 002: the STT/TTS event stream, with an API key or a logged-in browser's session cookie.

use serde_json::{Value, json};

use crate::support::{SseReader, TestServer, completed, transcription};

/// Signs acme in (`POST /v1/session`) and returns the `set-cookie` header.
async fn sign_in(ts: &TestServer) -> String {
    let r = ts
        .http
        .post(ts.url("/v1/session"))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    r.headers()["set-cookie"].to_str().unwrap().to_owned()
}

fn stream(ts: &TestServer, query: &str) -> reqwest::RequestBuilder {
    ts.http
        .get(ts.url(&format!("/v1/speech-events/stream?{query}")))
}

#[tokio::test]
async fn init_then_speech_events_then_call_end_and_close() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut s =
        SseReader::open(stream(&ts, &format!("callId={id}")).bearer_auth(&ts.acme.api)).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let init = s.next_data().await.unwrap().json();
    assert_eq!(
        (init["event_type"].as_str(), init["call_id"].as_str()),
        (Some("sse_init"), Some(id))
    );
    assert!(
        init["event_id"].as_str().unwrap().starts_with("evt_") && init["timestamp"].is_string()
    );

    ts.ingest(
        id,
        json!([
            transcription("user", "What ti", false, "trn_1"),
            transcription("user", "What time?", true, "trn_1"),
            transcription("agent", "Nine.", true, "trn_2"),
            {"event_type": "call.tts_completed", "payload": {"text": "Nine.", "latency_ms": 210}},
            {"event_type": "call.turn_latency", "payload": {"total_ms": 700}},
            {"event_type": "call.dtmf", "payload": {"digits": "1"}},
            completed(),
        ]),
    )
    .await;
    let mut frames: Vec<Value> = Vec::new();
    while let Some(f) = s.next_data().await {
        frames.push(f.json());
    }
    let types: Vec<&str> = frames
        .iter()
        .map(|f| f["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "user_interim_transcription",
            "user_transcription",
            "tts_completed",
            "turn_latency",
            "call_end",
            "sse_close"
        ]
    );
    assert_eq!(frames[0]["interim_transcription_text"], "What ti");
    assert_eq!(frames[1]["user_transcription_text"], "What time?");
    assert_eq!(
        (
            frames[2]["tts_text"].as_str(),
            frames[2]["tts_latency"].as_u64()
        ),
        (Some("Nine."), Some(210))
    );
    assert_eq!(frames[4]["status"], "completed");
    for f in &frames {
        assert_eq!(f["call_id"], id);
        assert!(f["event_id"].is_string() && f["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn refusals() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let ended = ts.create_call("sip").await;
    let ended_id = ended["id"].as_str().unwrap();
    ts.ingest(ended_id, completed()).await;
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (
            format!("callId={ended_id}"),
            ts.acme.api.as_str(),
            400,
            "invalid_request",
        ),
        ("".to_owned(), ts.acme.api.as_str(), 400, "invalid_request"),
        (
            "callId=call_000000000000000000000000".to_owned(),
            ts.acme.api.as_str(),
            404,
            "not_found",
        ),
        (
            "callId=nonsense".to_owned(),
            ts.acme.api.as_str(),
            404,
            "not_found",
        ),
        (
            format!("callId={id}"),
            ts.other.api.as_str(),
            404,
            "not_found",
        ),
        (
            format!("callId={id}"),
            ts.acme.runtime.as_str(),
            403,
            "forbidden",
        ),
        (format!("callId={id}"), "pk_live_wrong", 401, "unauthorized"),
        (
            format!("callId={id}&token={}", ts.acme.api),
            ts.acme.api.as_str(),
            401,
            "unauthorized",
        ),
    ];
    for (query, key, status, code) in cases {
        let r = stream(&ts, &query).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{query}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error_code"], code, "{query}: {body}");
    }
}

#[tokio::test]
async fn a_session_cookie_opens_the_stream_and_never_stands_in_for_a_runtime_key() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let set_cookie = sign_in(&ts).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("callstream_session=ss_"));

    let mut s =
        SseReader::open(stream(&ts, &format!("callId={id}")).header("cookie", &cookie)).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.next_data().await.unwrap().json()["event_type"],
        "sse_init"
    );
    // The cookie also reads the API, as the dashboard does (docs/dashboard.md), but never
    // stands in for a runtime key.
    let r = ts
        .http
        .get(ts.url("/v1/calls"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = ts
        .http
        .post(ts.url("/v1/calls"))
        .header("cookie", &cookie)
        .json(&json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let forged = stream(&ts, &format!("callId={id}"))
        .header("cookie", "callstream_session=ss_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    // Signing out ends the session.
    let r = ts
        .http
        .delete(ts.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = stream(&ts, &format!("callId={id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status().as_u16(), 401);
    let r = ts
        .http
        .post(ts.url("/v1/session"))
        .bearer_auth(&ts.acme.runtime)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "only API keys sign in");
}

#[tokio::test]
async fn a_stream_opened_with_a_session_ends_when_the_session_expires() {
    // Every surface that takes a short-lived credential closes what it opened at its expiry:
    // here the browser session cookie on seed 002's stream.
    let ts = TestServer::start_with(|c| c.session_ttl_secs = 2).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let set_cookie = sign_in(&ts).await;
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let mut s =
        SseReader::open(stream(&ts, &format!("callId={id}")).header("cookie", &cookie)).await;
    assert_eq!(s.status, 200);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(8), async {
        let mut last = None;
        while let Some(frame) = s.next().await {
            last = Some(frame);
        }
        last
    })
    .await
    .expect("the stream outlived its session");
    let last = ended.expect("the stream ended without a frame");
    assert_eq!(last.event.as_deref(), Some("error"), "{last:?}");
    assert!(last.data.contains("token_expired"), "{last:?}");
}
