//! Workspace isolation and where `?token=` is allowed.

use serde_json::json;

use crate::support::{TestServer, transcript_stream};

#[tokio::test]
async fn another_workspaces_call_is_404_exactly_like_a_missing_one() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    for path in [
        format!("/v1/calls/{id}"),
        format!("/v1/calls/{id}/transcript"),
    ] {
        let (status, foreign) = ts.get(&path, &ts.other.api).await;
        let (missing_status, missing) = ts
            .get(
                &path.replace(id, "call_000000000000000000000000"),
                &ts.other.api,
            )
            .await;
        let (bad_status, bad) = ts.get(&path.replace(id, "not-an-id"), &ts.other.api).await;
        assert_eq!(
            (status, missing_status, bad_status),
            (404, 404, 404),
            "{path}"
        );
        assert_eq!(foreign, missing, "{path}");
        assert_eq!(foreign, bad, "{path}");
        assert_eq!(
            foreign,
            json!({"error_code": "not_found", "message": "call not found"})
        );
    }
    let stream = transcript_stream(&ts, id, &ts.other.api, None).await;
    assert_eq!(stream.status, 404);
    let (status, _) = ts
        .post(
            &format!("/v1/calls/{id}/events"),
            &ts.other.runtime,
            &json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, list) = ts.get("/v1/calls", &ts.other.api).await;
    assert_eq!(list["calls"], json!([]));
    // The owner still sees it, untouched.
    let (status, mine) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!((status, mine["last_seq"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn query_tokens_only_on_the_browser_stream() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let key = &ts.acme.api;
    for path in [
        "/v1/calls".to_owned(),
        format!("/v1/calls/{id}"),
        format!("/v1/calls/{id}/transcript"),
        "/metrics".to_owned(),
        "/healthz".to_owned(),
    ] {
        let r = ts
            .http
            .get(ts.url(&format!("{path}?token={key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{path}: {body}"
        );
        // Even with a valid header, a key in the URL is refused there.
        let r = ts
            .http
            .get(ts.url(&format!("{path}?token={key}")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} with header");
    }
    let r = ts
        .http
        .post(ts.url(&format!("/v1/calls/{id}/events?token={}", ts.acme.runtime)))
        .json(&json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let ok = crate::support::SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/calls/{id}/transcript/stream?token={key}"))),
    )
    .await;
    assert_eq!(ok.status, 200);
    let wrong = crate::support::SseReader::open(ts.http.get(ts.url(&format!(
        "/v1/calls/{id}/transcript/stream?token=pk_live_nope"
    ))))
    .await;
    assert_eq!(wrong.status, 401);
    let runtime = crate::support::SseReader::open(ts.http.get(ts.url(&format!(
        "/v1/calls/{id}/transcript/stream?token={}",
        ts.acme.runtime
    ))))
    .await;
    assert_eq!(
        runtime.status, 401,
        "before a stream starts, every auth failure is 401"
    );
}

#[tokio::test]
async fn no_key_token_secret_or_session_reaches_the_logs() {
    use futures::SinkExt;
    let ts = TestServer::start_with(|c| {
        c.webhook_poll_ms = 20;
    })
    .await;
    let call = ts
        .post(
            "/v1/calls",
            &ts.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip", "external_id": "CA0123456789abcdef0123456789abcdef"}),
        )
        .await
        .1;
    let id = call["id"].as_str().unwrap().to_owned();
    let lct = call["live_conversation_token"].as_str().unwrap().to_owned();

    // A webhook endpoint (its whsec_ secret signs a delivery below).
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    tokio::spawn(
        axum::serve(
            hook,
            axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" })),
        )
        .into_future(),
    );
    let (_, endpoint) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.acme.api,
            &json!({"url": hook_url}),
        )
        .await;
    let whsec = endpoint["secret"].as_str().unwrap().to_owned();

    // A stream token and a session.
    let (_, token) = ts
        .post("/v1/stream-tokens", &ts.acme.api, &json!({"call_id": id}))
        .await;
    let st = token["token"].as_str().unwrap().to_owned();
    let session = ts
        .http
        .post(ts.url("/v1/session"))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    let cookie = session
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let ss = cookie.split_once('=').unwrap().1.to_owned();

    // Over HTTP: keys in headers, in allowed and refused query strings, valid and invalid.
    let _ = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    let _ = ts
        .http
        .get(ts.url(&format!("/v1/calls?token={}", ts.acme.api)))
        .send()
        .await
        .unwrap();
    for query in [format!("token={}", ts.acme.api), format!("token={st}")] {
        let s = crate::support::SseReader::open(
            ts.http
                .get(ts.url(&format!("/v1/calls/{id}/transcript/stream?{query}"))),
        )
        .await;
        drop(s);
    }
    let speech = crate::support::SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/speech-events/stream?call_id={id}")))
            .header("cookie", &cookie),
    )
    .await;
    drop(speech);
    let _ = ts
        .get("/v1/calls", "pk_live_not_a_real_key_1234567890")
        .await;
    let _ = ts.get("/v1/calls", "st_not_a_real_token_1234567890").await;

    // Over WebSockets: the call socket with a key and a token, seed 001 with the live
    // conversation token, seed 003 with the key as a subprotocol, the runtime socket.
    for query in [format!("token={}", ts.acme.api), format!("token={st}")] {
        let ws = crate::support::call_socket(&ts, &id, &query).await;
        drop(ws);
    }
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = ts
            .ws_url(&format!("/ws/v1/liveCalls?conversationToken={lct}"))
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", ts.acme.api).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        drop(ws);
        let mut request = ts
            .ws_url("/live-transcript/CA0123456789abcdef0123456789abcdef")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("callstream.live-transcript, {}", ts.acme.api)
                .parse()
                .unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        drop(ws);
    }
    let mut runtime = crate::support::ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    runtime
        .send(crate::support::WsMessage::Text(
            json!({"type": "events", "call_id": id, "events": [{"event_type": "call.dtmf", "payload": {"digits": "1"}}]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let _ = crate::support::ws_json(&mut runtime).await;
    // A delivery signed with the endpoint's secret.
    assert!(
        crate::support::wait_for_metric(
            &ts,
            "callstream_webhook_attempts_total{outcome=\"delivered\"}",
            |n| n >= 1.0
        )
        .await
    );
    // The session ends (a cookie on the way out).
    let _ = ts
        .http
        .delete(ts.url("/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await;

    let all = String::from_utf8_lossy(&crate::support::logs().lock().unwrap()).into_owned();
    // This process is also the test's WebSocket client, whose handshakes tungstenite writes out
    // at TRACE, keys and all (this test opened no audio stream, the gateway's only WebSocket
    // client): those lines are the test's own, not the gateway's.
    let logs: String = all
        .lines()
        .filter(|l| !l.contains("tungstenite::handshake::client"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        logs.contains(&format!("/v1/calls/{id}")),
        "the request log lines are captured"
    );
    assert!(
        logs.contains("tungstenite"),
        "records of the log crate are captured (tungstenite logs through it)"
    );
    for (what, secret) in [
        ("an API key", ts.acme.api.as_str()),
        ("a runtime key", ts.acme.runtime.as_str()),
        ("another workspace's key", ts.other.api.as_str()),
        ("an invalid key", "pk_live_not_a_real_key_1234567890"),
        ("a stream token", st.as_str()),
        ("an invalid stream token", "st_not_a_real_token_1234567890"),
        ("a session", ss.as_str()),
        ("a webhook secret", whsec.as_str()),
        ("a live conversation token", lct.as_str()),
    ] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(secret))
            .take(3)
            .collect();
        assert!(leaks.is_empty(), "{what} appeared in the logs: {leaks:#?}");
    }
    // No secret of any test in this process, whichever: a prefix followed by what a secret is
    // made of (a migration's comment may name `whsec_…`).
    for prefix in ["pk_live_", "rk_live_", "whsec_"] {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| {
                l.match_indices(prefix).any(|(at, _)| {
                    l[at + prefix.len()..]
                        .chars()
                        .take(8)
                        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
                        .count()
                        == 8
                })
            })
            .take(3)
            .collect();
        assert!(
            leaks.is_empty(),
            "a {prefix} secret appeared in the logs: {leaks:#?}"
        );
    }
}

#[tokio::test]
async fn the_conversation_stream_never_takes_a_query_token() {
    let ts = TestServer::start().await;
    let r = ts
        .http
        .get(ts.url(&format!(
            "/v1/conversations/conv_abc/stream?token={}",
            ts.acme.api
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
}

#[tokio::test]
async fn a_query_token_for_another_workspaces_call_is_404() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let s = crate::support::SseReader::open(ts.http.get(ts.url(&format!(
        "/v1/calls/{id}/transcript/stream?token={}",
        ts.other.api
    ))))
    .await;
    assert_eq!(s.status, 404);
}

#[tokio::test]
async fn odd_requests_get_json_errors() {
    let ts = TestServer::start().await;
    // Bad percent-encoding in the id, and a wrong method: still the API's JSON shape.
    let r = ts
        .http
        .get(ts.url("/v1/calls/%FF%FE"))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "not_found");
    let r = ts
        .http
        .delete(ts.url("/v1/calls"))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], "method_not_allowed");
    // The auth scheme is case-insensitive.
    let r = ts
        .http
        .get(ts.url("/v1/calls"))
        .header("authorization", format!("BEARER {}", ts.acme.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A stream token, a session or a sign-in link's secret where only a key works is refused with
/// what it is and where it works, not as an "invalid API key".
#[tokio::test]
async fn other_secrets_where_a_key_is_needed_say_what_they_are_for() {
    let ts = TestServer::start().await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();
    let (_, token) = ts
        .post("/v1/stream-tokens", &ts.acme.api, &json!({"call_id": id}))
        .await;
    let st = token["token"].as_str().unwrap();
    for (secret, says) in [
        (st, "a stream token (st_…) opens only the browser streams"),
        (
            "ss_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "a session (ss_…) works only as the browser's session cookie",
        ),
        (
            "sl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "a sign-in link's secret (sl_…) signs a browser in once",
        ),
    ] {
        let (status, body) = ts.get(&format!("/v1/calls/{id}"), secret).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(says),
            "{body}"
        );
    }
    // Where it works, it works.
    let ok = ts
        .http
        .get(ts.url(&format!("/v1/calls/{id}/transcript/stream")))
        .bearer_auth(st)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
