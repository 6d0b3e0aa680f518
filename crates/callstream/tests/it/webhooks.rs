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
                (
                    StatusCode::from_u16(status).unwrap(),
                    format!("answer {}", got.len()),
                )
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
    // The outcome is recorded after the receiver answered: wait for it, not for the request.
    assert!(
        crate::support::wait_for_metric(
            &ts,
            "callstream_webhook_attempts_total{outcome=\"delivered\"}",
            |n| n == 2.0
        )
        .await,
        "two deliveries recorded"
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

async fn send(
    ts: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = ts.http.request(method, ts.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn verifies(secret: &str, received: &Received) -> bool {
    let secret: callstream_webhooks::Secret = secret.parse().unwrap();
    let pairs: Vec<(String, String)> = received
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    callstream_webhooks::verify(
        &[secret],
        pairs,
        &received.body,
        callstream_core::time::now(),
        callstream_webhooks::DEFAULT_TOLERANCE,
    )
    .is_ok()
}

/// What the Standard Webhooks reference library (npm `standardwebhooks`, run by node) says of
/// each (secret, delivery): `ok` or `refused: …`. `None` (with one line saying why) where node or
/// the library is missing, unless CALLSTREAM_REQUIRE_SERVICES=1.
async fn reference_verdicts(checks: &[(&str, &Received)]) -> Option<Vec<String>> {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    let missing = if !dir.join("node_modules/standardwebhooks").exists() {
        Some("standardwebhooks is not installed (npm ci --prefix tests/browser)")
    } else if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        Some("node is not installed")
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(
            !callstream_core::testing::services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but the reference verifier cannot run: {why}"
        );
        eprintln!("SKIP the reference verifier: {why}");
        return None;
    }
    let mut input = String::new();
    for (secret, received) in checks {
        let headers: serde_json::Map<String, Value> =
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
                .into_iter()
                .map(|h| (h.to_owned(), json!(received.headers[h].to_str().unwrap())))
                .collect();
        input.push_str(
            &json!({
                "secret": secret,
                "headers": headers,
                "body_base64": base64::engine::general_purpose::STANDARD.encode(&received.body),
            })
            .to_string(),
        );
        input.push('\n');
    }
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("verify-webhooks.mjs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success());
    Some(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[tokio::test]
async fn endpoints_are_managed_paused_and_rotated_with_the_old_secret_signing_beside_the_new() {
    let ts = TestServer::start_with(|c| {
        c.webhook_poll_ms = 20;
        c.webhook_retry_secs = vec![1, 1];
        c.webhook_deadline_secs = 60;
        c.max_webhook_endpoints = 2;
    })
    .await;
    // The first request fails: its delivery is then queued for a retry a second later.
    let hook = receiver(vec![500, 200]).await;
    let created = endpoint(
        &ts,
        json!({"url": hook.url, "event_types": ["call.dtmf", "call.dtmf"], "description": "CRM sync"}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/webhook-endpoints/{id}");
    assert_eq!(
        created["event_types"],
        json!(["call.dtmf"]),
        "each type once"
    );
    let first_secret = created["secret"].as_str().unwrap().to_owned();

    // One endpoint, read back without its secret; another workspace sees none of it.
    let (status, got) = ts.get(&path, &ts.acme.api).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (got["description"].as_str(), got.get("secret")),
        (Some("CRM sync"), None)
    );
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        assert_eq!(send(&ts, method, &path, &ts.other.api, None).await.0, 404);
    }
    for action in ["disable", "enable", "rotate-secret"] {
        let (status, _) = send(
            &ts,
            reqwest::Method::POST,
            &format!("{path}/{action}"),
            &ts.other.api,
            None,
        )
        .await;
        assert_eq!(status, 404, "{action}");
    }
    let (status, _) = send(
        &ts,
        reqwest::Method::PATCH,
        &path,
        &ts.other.api,
        Some(json!({"description": "x"})),
    )
    .await;
    assert_eq!(status, 404);

    // Changes: each field alone; `null` event types mean every type again; bad values refused.
    let (status, changed) = send(
        &ts,
        reqwest::Method::PATCH,
        &path,
        &ts.acme.api,
        Some(json!({"description": "CRM sync v2"})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        (changed["description"].as_str(), &changed["event_types"]),
        (Some("CRM sync v2"), &json!(["call.dtmf"]))
    );
    let too_many: Vec<String> = (0..65).map(|i| format!("custom.t{i}")).collect();
    for (body, expect) in [
        (
            json!({"url": "ftp://x"}),
            "body.url: expected an http or https URL",
        ),
        (
            json!({"url": "http://user:pw@example.com/h"}),
            "body.url: must not carry credentials",
        ),
        (json!({"event_types": []}), "body.event_types:"),
        (
            json!({"event_types": too_many}),
            "body.event_types: at most 64 event types",
        ),
        (
            json!({"description": "x".repeat(257)}),
            "body.description: at most 256",
        ),
        (
            json!({"description": "CRM\u{1b}[31m sync"}),
            "body.description: no control characters",
        ),
        (
            json!({"description": "line one\nline two"}),
            "body.description: no control characters",
        ),
        (json!({"secret": "whsec_mine"}), ""),
    ] {
        let (status, err) = send(
            &ts,
            reqwest::Method::PATCH,
            &path,
            &ts.acme.api,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().starts_with(expect),
            "{err}"
        );
    }
    let (status, changed) = send(
        &ts,
        reqwest::Method::PATCH,
        &path,
        &ts.acme.api,
        Some(json!({"event_types": null})),
    )
    .await;
    assert_eq!((status, &changed["event_types"]), (200, &Value::Null));
    let (status, _) = send(
        &ts,
        reqwest::Method::PATCH,
        &path,
        &ts.acme.api,
        Some(json!({"event_types": ["call.dtmf"]})),
    )
    .await;
    assert_eq!(status, 200);

    // Disabled: a delivery waiting for its retry waits on, and events meanwhile are not queued
    // for it; enabled: the waiting one goes.
    let call = ts.create_call("sip").await;
    let call_id = call["id"].as_str().unwrap();
    ts.ingest(
        call_id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}),
    )
    .await;
    hook.wait_for(1).await;
    let (status, disabled) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{path}/disable"),
        &ts.acme.api,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(disabled["disabled_at"].is_string(), "{disabled}");
    assert_eq!(disabled["disabled_reason"], "disabled with the API");
    ts.ingest(
        call_id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "9"}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        hook.got.lock().unwrap().len(),
        1,
        "a disabled endpoint gets nothing"
    );
    let (status, enabled) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{path}/enable"),
        &ts.acme.api,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&enabled["disabled_at"], &enabled["disabled_reason"]),
        (&Value::Null, &Value::Null)
    );
    let got = hook.wait_for(2).await;
    assert_eq!(got[1].body, got[0].body, "the waiting delivery, retried");
    assert!(verifies(&first_secret, &got[1]));

    // Rotated: the new secret signs at once, the old one beside it through the overlap.
    let (status, rotated) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{path}/rotate-secret"),
        &ts.acme.api,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != first_secret);
    let overlap_end =
        callstream_core::time::parse(rotated["previous_secret_expires_at"].as_str().unwrap())
            .unwrap();
    let expected_end = callstream_core::time::now() + chrono::Duration::hours(24);
    assert!(
        (overlap_end - expected_end).num_seconds().abs() < 60,
        "{overlap_end}"
    );
    let (_, listed) = ts.get("/v1/webhook-endpoints", &ts.acme.api).await;
    let text = listed.to_string();
    assert!(
        !text.contains(&new_secret) && !text.contains(&first_secret),
        "no secret listed"
    );
    ts.ingest(
        call_id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "2"}}),
    )
    .await;
    let got = hook.wait_for(3).await;
    assert!(
        !got.iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("\"9\"")),
        "what came while it was disabled was never queued for it"
    );
    let signatures = got[2].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    assert!(verifies(&new_secret, &got[2]), "the new secret verifies");
    assert!(
        verifies(&first_secret, &got[2]),
        "the old secret still verifies"
    );
    // And so says the Standard Webhooks reference library, which refuses a wrong secret.
    let wrong = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    if let Some(verdicts) = reference_verdicts(&[
        (&first_secret, &got[1]),
        (&new_secret, &got[2]),
        (&first_secret, &got[2]),
        (wrong, &got[2]),
    ])
    .await
    {
        assert_eq!(&verdicts[..3], ["ok", "ok", "ok"], "{verdicts:?}");
        assert!(verdicts[3].starts_with("refused"), "{verdicts:?}");
    }

    // The delivery log: each message with its state, newest first; each attempt with its
    // answer's status, latency, error kind and first bytes.
    let messages_path = format!("{path}/messages");
    let mut log = Value::Null;
    for _ in 0..250 {
        log = ts.get(&messages_path, &ts.acme.api).await.1;
        if log["messages"]
            .as_array()
            .is_some_and(|m| m.len() == 2 && m.iter().all(|m| m["state"] == "delivered"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let messages = log["messages"].as_array().unwrap();
    assert!(messages.iter().all(|m| m["state"] == "delivered"), "{log}");
    let oldest = &messages[1];
    assert_eq!(oldest["attempts"], 2, "{oldest}");
    assert_eq!(
        oldest["event_id"],
        got[0].headers["webhook-id"].to_str().unwrap()
    );
    let (status, attempts) = ts
        .get(
            &format!(
                "{messages_path}/{}/attempts",
                oldest["event_id"].as_str().unwrap()
            ),
            &ts.acme.api,
        )
        .await;
    assert_eq!(status, 200, "{attempts}");
    let attempts = attempts["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        (
            &attempts[0]["status_code"],
            &attempts[0]["error_kind"],
            &attempts[0]["response_body"]
        ),
        (&json!(500), &json!("http_status"), &json!("answer 1"))
    );
    assert_eq!(
        (
            &attempts[1]["status_code"],
            &attempts[1]["error_kind"],
            &attempts[1]["response_body"]
        ),
        (&json!(200), &Value::Null, &json!("answer 2"))
    );
    assert!(attempts[0]["latency_ms"].is_u64() && attempts[0]["attempted_at"].is_string());
    // Filtered and paged.
    let (_, failing) = ts
        .get(&format!("{messages_path}?status=failing"), &ts.acme.api)
        .await;
    assert_eq!(failing["messages"], json!([]));
    let (_, page) = ts
        .get(&format!("{messages_path}?limit=1"), &ts.acme.api)
        .await;
    assert_eq!(page["messages"][0]["event_id"], messages[0]["event_id"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = ts
        .get(
            &format!("{messages_path}?limit=1&cursor={cursor}"),
            &ts.acme.api,
        )
        .await;
    assert_eq!(next["messages"][0]["event_id"], oldest["event_id"]);
    for (query, expect) in [
        ("status=lost", "status: expected one of"),
        ("since=yesterday", "since: expected an RFC 3339 time"),
        ("limit=0", "limit: expected 1 to 250"),
        ("cursor=zzz", "cursor:"),
        ("page=2", "page: unknown query parameter"),
    ] {
        let (status, err) = ts
            .get(&format!("{messages_path}?{query}"), &ts.acme.api)
            .await;
        assert_eq!(status, 400, "{query}");
        assert!(
            err["message"].as_str().unwrap().starts_with(expect),
            "{err}"
        );
    }
    assert_eq!(ts.get(&messages_path, &ts.other.api).await.0, 404);
    assert_eq!(
        ts.get(
            &format!("{messages_path}/evt_unknown/attempts"),
            &ts.acme.api
        )
        .await
        .0,
        404
    );

    // Sent again: one message now, then everything queued since a time; each with its own
    // webhook-id, so a receiver de-duplicates.
    let oldest_id = oldest["event_id"].as_str().unwrap();
    let before = hook.got.lock().unwrap().len();
    let (status, requeued) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{messages_path}/{oldest_id}/retry"),
        &ts.acme.api,
        None,
    )
    .await;
    assert_eq!(
        (status, &requeued["requeued"]),
        (202, &json!(1)),
        "{requeued}"
    );
    let again = hook.wait_for(before + 1).await;
    assert_eq!(again[before].headers["webhook-id"], oldest_id);
    assert_eq!(again[before].body, got[0].body, "the same message");
    let since =
        callstream_core::time::format(&(callstream_core::time::now() - chrono::Duration::hours(1)));
    let (status, requeued) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{path}/replay"),
        &ts.acme.api,
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(
        (status, &requeued["requeued"]),
        (202, &json!(2)),
        "{requeued}"
    );
    let again = hook.wait_for(before + 3).await;
    let mut ids: Vec<String> = again[before + 1..]
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = messages
        .iter()
        .map(|m| m["event_id"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(
        send(
            &ts,
            reqwest::Method::POST,
            &format!("{messages_path}/evt_unknown/retry"),
            &ts.acme.api,
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send(
            &ts,
            reqwest::Method::POST,
            &format!("{messages_path}/{oldest_id}/retry"),
            &ts.other.api,
            None
        )
        .await
        .0,
        404
    );
    let (status, err) = send(
        &ts,
        reqwest::Method::POST,
        &format!("{path}/replay"),
        &ts.acme.api,
        Some(json!({"since": "last week"})),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        send(
            &ts,
            reqwest::Method::POST,
            &format!("{path}/replay"),
            &ts.other.api,
            Some(json!({"since": since}))
        )
        .await
        .0,
        404
    );

    // The workspace's endpoint limit.
    endpoint(&ts, json!({"url": hook.url})).await;
    let (status, err) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.acme.api,
            &json!({"url": hook.url}),
        )
        .await;
    assert_eq!(
        (status, err["error_code"].as_str()),
        (409, Some("too_many_endpoints")),
        "{err}"
    );
    assert_eq!(
        send(&ts, reqwest::Method::DELETE, &path, &ts.acme.api, None)
            .await
            .0,
        204
    );
    assert_eq!(ts.get(&path, &ts.acme.api).await.0, 404);
    endpoint(&ts, json!({"url": hook.url})).await;
}

#[tokio::test]
async fn payloads_travel_verbatim_with_the_fields_the_gateway_does_not_know() {
    let ts = fast_server().await;
    let hook = receiver(vec![200]).await;
    endpoint(&ts, json!({"url": hook.url})).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut live = crate::support::call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;

    // A runtime's own fields (word timings, language, a provider's 30-digit id), its spacing
    // and field order: none of it is the gateway's to change.
    let payload = r#"{"turn_id": "trn_1", "role": "user", "text": "hi", "is_final": true, "language": "en-GB", "words": [{"w": "hi", "start": 0.25}], "provider_id": 123456789012345678901234567890}"#;
    let body = format!(r#"{{"event_type": "call.transcription", "payload": {payload}}}"#);
    assert_eq!(
        post_raw(&ts, &format!("/v1/calls/{id}/events"), body).await,
        202
    );
    // The same over the runtime socket (decoded in one pass with its message).
    let mut runtime = crate::support::ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let payload2 = r#"{"digits":"7","duration_ms":120,"provider_id":98765432109876543210}"#;
    let message = format!(
        r#"{{"type":"events","call_id":"{id}","events":[{{"event_type":"call.dtmf","payload":{payload2}}}]}}"#
    );
    {
        use futures::SinkExt;
        runtime
            .send(crate::support::WsMessage::Text(message.into()))
            .await
            .unwrap();
    }
    assert_eq!(
        crate::support::ws_json(&mut runtime).await["type"],
        "accepted"
    );

    for (seq, raw) in [(2, payload), (3, payload2)] {
        let frame = next_text(&mut live).await;
        assert!(frame.contains(&format!("\"seq\":{seq}")), "{frame}");
        assert!(
            frame.contains(&format!("\"payload\":{raw}")),
            "the live frame: {frame}"
        );
    }
    // The history a client resumes from, and the webhooks, carry them the same way.
    let mut resumed =
        crate::support::call_socket(&ts, id, &format!("token={}&since=1", ts.acme.api)).await;
    for raw in [payload, payload2] {
        let frame = next_text(&mut resumed).await;
        assert!(
            frame.contains(&format!("\"payload\":{raw}")),
            "the resumed frame: {frame}"
        );
    }
    let got = hook.wait_for(3).await;
    for raw in [payload, payload2] {
        assert!(
            got.iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains(&format!("\"payload\":{raw}"))),
            "a webhook carries {raw}"
        );
    }

    // A conversation's message: its big number stays a number, digit for digit, in the stream
    // and in the message history.
    let (cid, mut stream) = conversation_with_stream(&ts, "whatsapp").await;
    let cid = cid.as_str();
    let message_payload = r#"{"message_id":"m1","direction":"inbound","status":"received","text":"yo","wa_seq":123456789012345678901234567890}"#;
    assert_eq!(
        post_raw(
            &ts,
            &format!("/v1/conversations/{cid}/events"),
            format!(r#"{{"event_type":"message.received","payload":{message_payload}}}"#)
        )
        .await,
        202
    );
    let frame = stream.next_data().await.unwrap();
    assert!(frame.data.contains(message_payload), "{}", frame.data);
    let history = ts
        .http
        .get(ts.url(&format!("/v1/conversations/{cid}")))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(history.contains(message_payload), "{history}");
}

/// The next text frame of a socket, as sent.
async fn next_text(ws: &mut crate::support::Ws) -> String {
    use futures::StreamExt;
    loop {
        match ws.next().await {
            Some(Ok(crate::support::WsMessage::Text(t))) => return t.to_string(),
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_runtime_sends_event_types_of_its_own_and_they_travel_verbatim() {
    let ts = fast_server().await;
    let hook = receiver(vec![200]).await;
    endpoint(
        &ts,
        json!({"url": hook.url, "event_types": ["custom.sentiment"]}),
    )
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut live = crate::support::call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;

    let payload =
        r#"{"score": 0.82, "model": "acme-v3", "provider_seq": 123456789012345678901234567890}"#;
    assert_eq!(
        post_raw(
            &ts,
            &format!("/v1/calls/{id}/events"),
            format!(r#"[{{"event_type": "custom.sentiment", "payload": {payload}}}]"#)
        )
        .await,
        202
    );
    let frame = next_text(&mut live).await;
    let parsed: Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(parsed["event_type"], "custom.sentiment");
    assert!(frame.contains(&format!("\"payload\":{payload}")), "{frame}");
    // The endpoint that asked for this type gets it, and only it (not call.started).
    let got = hook.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].body).contains(&format!("\"payload\":{payload}")));
    assert_eq!(
        ts.metric("callstream_ingest_events_total{event_type=\"custom\"}")
            .await,
        1.0
    );

    // Names outside the reserved prefix, or not a name at all, and payloads that are not
    // objects, are refused.
    for (event_type, payload) in [
        ("sentiment", json!({})),
        ("custom.", json!({})),
        ("custom.Upper", json!({})),
        ("custom..x", json!({})),
        ("custom.-x", json!({})),
        ("custom.x.", json!({})),
        ("custom.sentiment", json!([1])),
    ] {
        let (status, err) = ts
            .post(
                &format!("/v1/calls/{id}/events"),
                &ts.acme.runtime,
                &json!({"event_type": event_type, "payload": payload}),
            )
            .await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some("invalid_event")),
            "{event_type}"
        );
    }

    // A key twice in one object (at any depth) would reach readers verbatim, and they disagree
    // on which one counts: refused, naming the key; nothing of it reaches the stream.
    for payload in [
        r#"{"score": 1, "score": 2}"#,
        r#"{"detail": {"a": 1, "a": 1}}"#,
    ] {
        let response = ts
            .http
            .post(ts.url(&format!("/v1/calls/{id}/events")))
            .bearer_auth(&ts.acme.runtime)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"event_type": "custom.sentiment", "payload": {payload}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{payload}");
        let err: Value = response.json().await.unwrap();
        assert_eq!(err["error_code"], "invalid_event", "{err}");
        assert!(
            err["message"].as_str().unwrap().contains("appears twice"),
            "{err}"
        );
    }
    let (status, _) = ts
        .post(
            &format!("/v1/calls/{id}/events"),
            &ts.acme.runtime,
            &json!({"event_type": "custom.crm.lead-updated_2", "payload": {"after": "dup check"}}),
        )
        .await;
    assert_eq!(
        status, 202,
        "dotted words with - and _ are a well-formed name"
    );
    let frame = next_text(&mut live).await;
    assert!(frame.contains("custom.crm.lead-updated_2"), "{frame}");

    // A conversation takes them too, on its stream.
    let (cid, mut stream) = conversation_with_stream(&ts, "sms").await;
    let cid = cid.as_str();
    let (status, _) = ts
        .post(
            &format!("/v1/conversations/{cid}/events"),
            &ts.acme.runtime,
            &json!({"event_type": "custom.intent", "payload": {"intent": "refund"}}),
        )
        .await;
    assert_eq!(status, 202);
    let frame = stream.next_data().await.unwrap();
    assert_eq!(frame.json()["event_type"], "custom.intent");
    assert_eq!(frame.json()["payload"], json!({"intent": "refund"}));
    // A message payload, carried verbatim too, refuses a repeated key the same way.
    let response = ts
        .http
        .post(ts.url(&format!("/v1/conversations/{cid}/events")))
        .bearer_auth(&ts.acme.runtime)
        .header("content-type", "application/json")
        .body(r#"{"event_type": "message.received", "payload": {"message_id": "m1", "direction": "inbound", "text": "a", "text": "b", "status": "received"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let err: Value = response.json().await.unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("`text` appears twice"),
        "{err}"
    );
}

/// A new conversation of acme's on `channel`, and its stream, open.
async fn conversation_with_stream(
    ts: &TestServer,
    channel: &str,
) -> (String, crate::support::SseReader) {
    let (status, conversation) = ts
        .post(
            "/v1/conversations",
            &ts.acme.runtime,
            &json!({"channel": channel, "participants": ["+14155550123"]}),
        )
        .await;
    assert_eq!(status, 201, "{conversation}");
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let stream = crate::support::SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/conversations/{cid}/stream")))
            .bearer_auth(&ts.acme.api),
    )
    .await;
    (cid, stream)
}

/// Posts `body` as it is (field order and spacing kept) with the runtime key; the status.
async fn post_raw(ts: &TestServer, path: &str, body: String) -> u16 {
    ts.http
        .post(ts.url(path))
        .bearer_auth(&ts.acme.runtime)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The scenario that once stopped every delivery for two minutes: one workspace points 40
/// endpoints at a port that accepts and never answers and sends events; another workspace's
/// healthy endpoint still gets its event while every one of those requests hangs (none has
/// timed out yet, so none was recorded).
#[tokio::test]
async fn a_dead_endpoint_cannot_starve_another_workspaces_healthy_one() {
    let ts = TestServer::start_with(|c| {
        c.webhook_poll_ms = 20;
        c.webhook_timeout_secs = 60;
        c.max_webhook_endpoints = 50;
    })
    .await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(connection);
        }
    });
    for _ in 0..40 {
        endpoint(&ts, json!({"url": silent_url})).await;
    }
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    for digit in 0..5 {
        ts.ingest(
            id,
            json!({"event_type": "call.dtmf", "payload": {"digits": digit.to_string()}}),
        )
        .await;
    }
    // The dead endpoints' requests are out and hanging: as many as the workspace may have.
    for _ in 0..250 {
        if accepted.load(std::sync::atomic::Ordering::SeqCst) >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        8,
        "webhook_workspace_concurrency (8) requests of the workspace in flight, no more"
    );

    let healthy = receiver(vec![200]).await;
    let (status, _) = ts
        .post(
            "/v1/webhook-endpoints",
            &ts.other.api,
            &json!({"url": healthy.url, "event_types": ["call.dtmf"]}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, other_call) = ts
        .post(
            "/v1/calls",
            &ts.other.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = ts
        .post(
            &format!("/v1/calls/{}/events", other_call["id"].as_str().unwrap()),
            &ts.other.runtime,
            &json!({"event_type": "call.dtmf", "payload": {"digits": "7"}}),
        )
        .await;
    assert_eq!(status, 202);
    let got = healthy.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].body).contains("\"7\""));
    // Delivered while every dead request still hangs: none of them has been recorded.
    assert!(
        crate::support::wait_for_metric(
            &ts,
            "callstream_webhook_attempts_total{outcome=\"delivered\"}",
            |n| n == 1.0
        )
        .await
    );
    assert_eq!(
        ts.metric("callstream_webhook_attempts_total{outcome=\"retry\"}")
            .await,
        0.0
    );
    holder.abort();
}

/// A failed attempt names its failure with one word, the same in the message's `last_error` and
/// the attempt's `error_kind` (the message said `Connect` beside an attempt's `connect`).
#[tokio::test]
async fn a_refused_connection_is_named_alike_in_the_message_and_its_attempt() {
    let ts = fast_server().await;
    // A port that was just free and is closed again: the connection is refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let created = endpoint(&ts, json!({"url": url})).await;
    let messages_path = format!(
        "/v1/webhook-endpoints/{}/messages",
        created["id"].as_str().unwrap()
    );
    let call = ts.create_call("sip").await;
    ts.ingest(
        call["id"].as_str().unwrap(),
        json!({"event_type": "call.dtmf", "payload": {"digits": "4"}}),
    )
    .await;
    let mut message = Value::Null;
    for _ in 0..250 {
        message = ts.get(&messages_path, &ts.acme.api).await.1["messages"][0].clone();
        if message["attempts"].as_u64().is_some_and(|n| n >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(message["state"], "failing", "{message}");
    assert_eq!(message["last_error"], "connect", "{message}");
    assert_eq!(message["last_status_code"], Value::Null, "{message}");
    let (_, attempts) = ts
        .get(
            &format!(
                "{messages_path}/{}/attempts",
                message["event_id"].as_str().unwrap()
            ),
            &ts.acme.api,
        )
        .await;
    assert_eq!(
        attempts["attempts"][0]["error_kind"], "connect",
        "{attempts}"
    );
}

/// A message given up after its whole schedule is counted and told to the workspace's endpoints
/// that ask for `webhook.delivery_exhausted`; an endpoint whose every attempt has failed for
/// `webhook_disable_after_failing_secs` is disabled with that reason.
#[tokio::test]
async fn an_exhausted_message_is_told_to_endpoints_that_ask_and_a_failing_endpoint_is_disabled() {
    let ts = TestServer::start_with(|c| {
        c.webhook_poll_ms = 20;
        c.webhook_retry_secs = vec![1];
        c.webhook_deadline_secs = 2;
        c.webhook_disable_after_failing_secs = 3;
    })
    .await;
    let broken = receiver(vec![500]).await;
    let failing = endpoint(
        &ts,
        json!({"url": broken.url, "event_types": ["call.dtmf"]}),
    )
    .await;
    let failing_id = failing["id"].as_str().unwrap().to_owned();
    let watcher = receiver(vec![200]).await;
    endpoint(
        &ts,
        json!({"url": watcher.url, "event_types": ["webhook.delivery_exhausted"]}),
    )
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let ingested = ts
        .ingest(
            id,
            json!({"event_type": "call.dtmf", "payload": {"digits": "1"}}),
        )
        .await;
    let message_id = ingested["event_ids"][0].as_str().unwrap().to_owned();

    let notice = watcher.wait_for(1).await;
    let notice: Value = serde_json::from_slice(&notice[0].body).unwrap();
    assert_eq!(notice["event_type"], "webhook.delivery_exhausted");
    assert_eq!(
        (
            notice["payload"]["endpoint_id"].as_str(),
            notice["payload"]["message_id"].as_str(),
            notice["payload"]["event_type"].as_str(),
            notice["payload"]["last_status_code"].as_u64(),
        ),
        (
            Some(failing_id.as_str()),
            Some(message_id.as_str()),
            Some("call.dtmf"),
            Some(500)
        ),
        "{notice}"
    );
    assert!(
        crate::support::wait_for_metric(&ts, "callstream_webhook_messages_exhausted_total", |n| n
            == 1.0)
        .await
    );
    let (_, log) = ts
        .get(
            &format!("/v1/webhook-endpoints/{failing_id}/messages"),
            &ts.acme.api,
        )
        .await;
    assert_eq!(log["messages"][0]["state"], "exhausted", "{log}");

    // Failing since the first attempt: the next failure past 3 s disables it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    ts.ingest(
        id,
        json!({"event_type": "call.dtmf", "payload": {"digits": "2"}}),
    )
    .await;
    let mut found = Value::Null;
    for _ in 0..250 {
        found = ts
            .get(&format!("/v1/webhook-endpoints/{failing_id}"), &ts.acme.api)
            .await
            .1;
        if found["disabled_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        found["disabled_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("every attempt failed since"),
        "{found}"
    );
    assert!(found["failing_since"].is_string());
    assert_eq!(
        ts.metric("callstream_webhook_endpoints_disabled_total{reason=\"failing\"}")
            .await,
        1.0
    );
    // Enabled again, it starts afresh.
    let (status, enabled) = send(
        &ts,
        reqwest::Method::POST,
        &format!("/v1/webhook-endpoints/{failing_id}/enable"),
        &ts.acme.api,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(enabled["failing_since"], Value::Null);
}

/// 200 events delivered across a `kill -9` of the gateway (the real binary on its embedded
/// store), with deliveries in flight when it dies: after the restart every one arrives, each
/// signature verified by the Standard Webhooks reference library, and a message is sent twice
/// only if its attempt was in flight at the kill (at most `webhook_endpoint_concurrency`).
#[tokio::test]
async fn every_webhook_is_delivered_across_a_kill_9_of_the_gateway() {
    if crate::CLUSTER {
        return; // the binary on its embedded store: once is enough
    }
    let bin = env!("CARGO_BIN_EXE_callstream");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let key = |extra: &[&str]| -> String {
        let out = std::process::Command::new(bin)
            .args([
                "keys",
                "create",
                "--init",
                "--data-dir",
                &data,
                "--workspace",
                "crash",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        created["key"].as_str().unwrap().to_owned()
    };
    let (api, runtime) = (key(&[]), key(&["--runtime"]));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // A receiver that takes 100 ms per answer, so that deliveries are in flight at the kill.
    let got = Arc::new(Mutex::new(Vec::<Received>::new()));
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.lock().unwrap().push(Received { headers, body });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut gateway = start_gateway(&data, port).await;
    let created: Value = http
        .post(format!("{base}/v1/webhook-endpoints"))
        .bearer_auth(&api)
        .json(&json!({"url": hook_url, "event_types": ["call.dtmf"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let call: Value = http
        .post(format!("{base}/v1/calls"))
        .bearer_auth(&runtime)
        .json(&json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call_id = call["id"].as_str().unwrap();
    let mut expected = std::collections::BTreeSet::new();
    for batch in 0..20 {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"event_type": "call.dtmf", "payload": {"digits": ((batch + i) % 10).to_string()}}))
            .collect();
        let accepted: Value = http
            .post(format!("{base}/v1/calls/{call_id}/events"))
            .bearer_auth(&runtime)
            .json(&events)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for id in accepted["event_ids"].as_array().unwrap() {
            expected.insert(id.as_str().unwrap().to_owned());
        }
    }
    assert_eq!(expected.len(), 200);

    // Killed mid-way, with requests in flight.
    for _ in 0..500 {
        if got.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.kill().await.unwrap(); // SIGKILL
    let at_kill = got.lock().unwrap().len();
    assert!(
        at_kill < 200,
        "the kill came before the end ({at_kill} delivered)"
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // answers of requests that were in flight
    let _gateway = start_gateway(&data, port).await;

    // Everything arrives: the lease (2 s timeout + 15 s) brings back what was in flight.
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..600 {
        ids = got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
            .collect();
        if ids.is_superset(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ids, expected,
        "every accepted event delivered, nothing else"
    );
    let received = got.lock().unwrap().clone();
    let twice = received.len() - ids.len();
    assert!(
        twice <= 4,
        "{twice} sent twice: only those in flight at the kill may be"
    );
    if let Some(verdicts) = reference_verdicts(
        &received
            .iter()
            .map(|r| (secret.as_str(), r))
            .collect::<Vec<_>>(),
    )
    .await
    {
        assert!(verdicts.iter().all(|v| v == "ok"), "{verdicts:?}");
        assert_eq!(verdicts.len(), received.len());
    }
}

/// The real binary serving `data` (its embedded store) on `port`, ready; killed when dropped.
async fn start_gateway(data: &str, port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstream"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("CALLSTREAM_DATA_DIR", data)
        .env("CALLSTREAM_ALLOW_PRIVATE_WEBHOOK_TARGETS", "true")
        .env("CALLSTREAM_WEBHOOK_TIMEOUT_SECS", "2")
        .env("CALLSTREAM_WEBHOOK_POLL_MS", "50")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not become ready within 10 s");
}
