//! Webhooks: a real HTTP receiver on 127.0.0.1 gets each event, signed, byte for byte the frame
//! the call socket sends; failures are retried on the schedule; 410 disables the endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestServer, transcription};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver answering with `statuses` in turn (the last one repeats).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

async fn receiver(statuses: Vec<u16>) -> Receiver {
    let got = Arc::new(Mutex::new(Vec::<Received>::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let statuses = statuses.clone();
            async move {
                let mut got = seen.lock().unwrap();
                got.push(Received { headers, body });
                let status = statuses
                    .get(got.len() - 1)
                    .or(statuses.last())
                    .copied()
                    .unwrap_or(200);
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, got }
}

impl Receiver {
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..500 {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "the receiver got {} requests, not {n}",
            self.got.lock().unwrap().len()
        );
    }
}

async fn fast_server() -> TestServer {
    TestServer::start_with(|c| {
        c.webhook_poll_ms = 20;
        c.webhook_retry_secs = vec![1, 1];
        c.webhook_deadline_secs = 60;
    })
    .await
}

async fn endpoint(ts: &TestServer, body: Value) -> Value {
    let (status, created) = ts.post("/v1/webhook-endpoints", &ts.acme.api, &body).await;
    assert_eq!(status, 201, "{created}");
    created
}

#[tokio::test]
async fn a_webhook_is_the_socket_frame_byte_for_byte_and_signed() {
    let ts = fast_server().await;
    let hook = receiver(vec![200]).await;
    let created = endpoint(&ts, json!({"url": hook.url})).await;
    let secret: callstream_webhooks::Secret = created["secret"].as_str().unwrap().parse().unwrap();
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(
        ts.ws_url(&format!("/v1/calls/{id}/stream?token={}", ts.acme.api)),
    )
    .await
    .unwrap();
    ts.ingest(
        id,
        transcription("user", "What time do you open?", true, "trn_1"),
    )
    .await;

    let frame = loop {
        use futures::StreamExt;
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) = ws.next().await {
            break t;
        }
    };
    // call.started (seq 1, queued when the call was created) and the transcription (seq 2).
    let got = hook.wait_for(2).await;
    let webhook = got
        .iter()
        .find(|r| r.body.as_ref() == frame.as_bytes())
        .expect("a webhook whose body is the frame, byte for byte");
    let envelope: Value = serde_json::from_slice(&webhook.body).unwrap();
    assert_eq!(envelope["event_type"], "call.transcription");
    assert_eq!(
        webhook.headers["webhook-id"],
        envelope["event_id"].as_str().unwrap()
    );
    assert_eq!(webhook.headers["content-type"], "application/json");
    let pairs: Vec<(String, String)> = webhook
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    callstream_webhooks::verify(
        &[secret],
        pairs,
        &webhook.body,
        callstream_core::time::now(),
        callstream_webhooks::DEFAULT_TOLERANCE,
    )
    .expect("the Standard Webhooks signature verifies with the endpoint's secret");
    assert_eq!(
        ts.metric("callstream_webhook_attempts_total{outcome=\"delivered\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn failures_are_retried_and_410_disables_the_endpoint() {
    let ts = fast_server().await;
    let flaky = receiver(vec![500, 503, 200]).await;
    endpoint(&ts, json!({"url": flaky.url, "event_types": ["call.dtmf"]})).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    ts.ingest(id, json!([transcription("user", "not wanted", true, "trn_1"), {"event_type": "call.dtmf", "payload": {"digits": "1"}}])).await;
    let got = flaky.wait_for(3).await;
    assert_eq!(
        got.len(),
        3,
        "only call.dtmf is wanted; it took three attempts"
    );
    assert!(
        got.iter()
            .all(|r| r.body == got[0].body
                && r.headers["webhook-id"] == got[0].headers["webhook-id"])
    );
    assert_eq!(
        ts.metric("callstream_webhook_attempts_total{outcome=\"retry\"}")
            .await,
        2.0
    );

    let gone = receiver(vec![410]).await;
    let doomed = endpoint(&ts, json!({"url": gone.url})).await;
    ts.ingest(
        id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "2"}}),
    )
    .await;
    gone.wait_for(1).await;
    for _ in 0..100 {
        let (_, list) = ts.get("/v1/webhook-endpoints", &ts.acme.api).await;
        let me = list["webhook_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == doomed["id"])
            .cloned()
            .unwrap();
        if me["disabled_at"].is_string() {
            assert!(me.get("secret").is_none(), "listings never show the secret");
            ts.ingest(
                id,
                json!({"event_type": "call.dtmf", "payload": {"digits": "3"}}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                gone.got.lock().unwrap().len(),
                1,
                "a disabled endpoint gets nothing more"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the endpoint was never disabled");
}

#[tokio::test]
async fn endpoints_are_per_workspace_and_checked() {
    let ts = fast_server().await;
    for (body, expect) in [
        (
            json!({"url": "ftp://x"}),
            "body.url: expected an http or https URL",
        ),
        (json!({"url": "not a url"}), "body.url:"),
        (
            json!({"url": "https://example.com/h", "event_types": ["call.nope"]}),
            "body.event_types: unknown event type",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": []}),
            "body.event_types:",
        ),
    ] {
        let (status, err) = ts.post("/v1/webhook-endpoints", &ts.acme.api, &body).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            err["message"].as_str().unwrap().starts_with(expect),
            "{err}"
        );
    }
    let (status, _) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.acme.runtime,
            &json!({"url": "https://example.com/h"}),
        )
        .await;
    assert_eq!(status, 403);
    let created = endpoint(&ts, json!({"url": "https://example.com/h"})).await;
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let (_, theirs) = ts.get("/v1/webhook-endpoints", &ts.other.api).await;
    assert_eq!(theirs["webhook_endpoints"], json!([]));
    let path = format!("/v1/webhook-endpoints/{}", created["id"].as_str().unwrap());
    let r = ts
        .http
        .delete(ts.url(&path))
        .bearer_auth(&ts.other.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = ts
        .http
        .delete(ts.url(&path))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}
