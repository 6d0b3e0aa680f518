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
async fn keys_never_reach_the_logs() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    // Keys in headers, in allowed and refused query strings, valid and invalid.
    let _ = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    let _ = ts
        .http
        .get(ts.url(&format!("/v1/calls?token={}", ts.acme.api)))
        .send()
        .await
        .unwrap();
    let s = crate::support::SseReader::open(ts.http.get(ts.url(&format!(
        "/v1/calls/{id}/transcript/stream?token={}",
        ts.acme.api
    ))))
    .await;
    drop(s);
    let _ = ts
        .get("/v1/calls", "pk_live_not_a_real_key_1234567890")
        .await;
    let _ = ts
        .post(
            &format!("/v1/calls/{id}/events"),
            &ts.acme.runtime,
            &json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}),
        )
        .await;

    let logs = String::from_utf8_lossy(&crate::support::logs().lock().unwrap()).into_owned();
    assert!(
        logs.contains(&format!("/v1/calls/{id}")),
        "the request log lines are captured"
    );
    for secret in [
        ts.acme.api.as_str(),
        ts.acme.runtime.as_str(),
        ts.other.api.as_str(),
        "pk_live_not_a_real_key_1234567890",
    ] {
        assert!(!logs.contains(secret), "a key appeared in the logs");
    }
    assert!(!logs.contains("pk_live_"), "no key prefix in logs at all");
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
