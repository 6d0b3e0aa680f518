//! Key lifecycle: an admin key lists, creates and revokes keys over REST; the command line lists
//! and revokes them while the server runs; a revoked or expired key is refused at once, and every
//! stream opened with it, or with a stream token it minted, closes within a second.

use std::time::Duration;

use callstream_core::KeyKind;
use callstream_server::auth;
use serde_json::{Value, json};

use crate::support::{SseReader, TestServer, Ws, WsEvent, call_socket, ws_connect, ws_next};

/// An admin API key of acme's, minted as `callstream keys create --admin` would.
async fn admin_key(ts: &TestServer) -> String {
    let store = ts.server().state().store();
    let ws = store.ensure_workspace("acme").await.unwrap();
    let key = auth::mint_with(&ws.id, KeyKind::Api, true, None);
    store.insert_key(&key.record).await.unwrap();
    key.secret
}

async fn delete(ts: &TestServer, path: &str, key: &str) -> u16 {
    ts.http
        .delete(ts.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits at most `within` for the socket's close code (frames before it are skipped).
async fn closed_within(ws: &mut Ws, within: Duration) -> u16 {
    tokio::time::timeout(within, async {
        loop {
            if let WsEvent::Close(code) = ws_next(ws).await {
                return code;
            }
        }
    })
    .await
    .expect("the socket was not closed in time")
}

/// Every kind of stream a key may open on a call: the call socket with the key, the transcript
/// SSE stream with the key, the call socket with a stream token the key minted, and the runtime
/// socket with a runtime key.
struct Streams {
    socket: Ws,
    sse: SseReader,
    by_token: Ws,
}

async fn open_streams(ts: &TestServer, key: &str, call_id: &str) -> Streams {
    let socket = call_socket(ts, call_id, &format!("token={key}")).await;
    let sse = SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/calls/{call_id}/transcript/stream")))
            .bearer_auth(key),
    )
    .await;
    let (status, token) = ts
        .post("/v1/stream-tokens", key, &json!({"call_id": call_id}))
        .await;
    assert_eq!(status, 201, "{token}");
    let by_token = call_socket(
        ts,
        call_id,
        &format!("token={}", token["token"].as_str().unwrap()),
    )
    .await;
    Streams {
        socket,
        sse,
        by_token,
    }
}

async fn all_closed_for_revocation(streams: &mut Streams) {
    // Within a second of the revocation (with room for a slow machine's scheduling).
    let within = Duration::from_millis(1_500);
    assert_eq!(closed_within(&mut streams.socket, within).await, 1008);
    assert_eq!(closed_within(&mut streams.by_token, within).await, 1008);
    let frame = tokio::time::timeout(within, streams.sse.next_data())
        .await
        .expect("the SSE stream was not told in time")
        .expect("an error frame before the end");
    assert_eq!(frame.event.as_deref(), Some("error"));
    assert_eq!(frame.json()["error_code"], "key_revoked");
    assert!(streams.sse.next().await.is_none(), "the stream ended");
}

#[tokio::test]
async fn an_admin_key_manages_keys_and_a_revoked_key_closes_its_streams_at_once() {
    let ts = TestServer::start().await;
    let admin = admin_key(&ts).await;

    // Only an admin key manages keys.
    let (status, refused) = ts.get("/v1/keys", &ts.acme.api).await;
    assert_eq!(
        (status, refused["error_code"].as_str()),
        (403, Some("forbidden"))
    );
    // A runtime key is told what it takes, not that it should be an API key.
    let (status, refused) = ts.get("/v1/keys", &ts.acme.runtime).await;
    assert_eq!(status, 403);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("admin API key"),
        "{refused}"
    );

    // A new API key and a new runtime key; the secret is shown once, never listed.
    let (status, created) = ts.post("/v1/keys", &admin, &json!({"kind": "api"})).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let (status, runtime_created) = ts
        .post("/v1/keys", &admin, &json!({"kind": "runtime"}))
        .await;
    assert_eq!(status, 201);
    let runtime_key = runtime_created["key"].as_str().unwrap().to_owned();
    let (status, listed) = ts.get("/v1/keys", &admin).await;
    assert_eq!(status, 200);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        5,
        "acme's api, runtime and admin keys, and the two new ones"
    );
    let text = listed.to_string();
    for secret in [&key, &runtime_key, &admin, &ts.acme.api] {
        assert!(!text.contains(secret.as_str()), "a listing shows no secret");
    }
    assert!(keys.iter().all(|k| k["state"] == "active"));
    // Another workspace's keys are not there, and cannot be revoked from here.
    let store = ts.server().state().store();
    let other_ws = store.ensure_workspace("other").await.unwrap();
    let foreign = auth::mint(&other_ws.id, KeyKind::Api);
    store.insert_key(&foreign.record).await.unwrap();
    let foreign_id = foreign.record.id.as_str().to_owned();
    let (_, listed) = ts.get("/v1/keys", &admin).await;
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["key_id"] != foreign_id.as_str())
    );
    assert_eq!(
        delete(&ts, &format!("/v1/keys/{foreign_id}"), &admin).await,
        404
    );
    assert_eq!(
        ts.get("/v1/calls", &foreign.secret).await.0,
        200,
        "still works"
    );

    let call = ts.create_call("sip").await;
    let call_id = call["id"].as_str().unwrap();
    let mut streams = open_streams(&ts, &key, call_id).await;
    let mut runtime = ws_connect(&ts.ws_url("/v1/runtime"), Some(&runtime_key))
        .await
        .unwrap();

    assert_eq!(
        delete(&ts, &format!("/v1/keys/{key_id}"), &admin).await,
        204
    );
    all_closed_for_revocation(&mut streams).await;
    // Refused at once, everywhere it was accepted, saying why.
    let (status, refused) = ts.get(&format!("/v1/calls/{call_id}"), &key).await;
    assert_eq!(status, 401);
    assert_eq!(
        refused["message"], "the API key has been revoked; use another key",
        "{refused}"
    );
    assert_eq!(
        ts.post("/v1/stream-tokens", &key, &json!({"call_id": call_id}))
            .await
            .0,
        401
    );
    let (_, listed) = ts.get("/v1/keys", &admin).await;
    let revoked = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["revoked_at"].is_string());

    // The runtime key too: its socket closes with 1008.
    let runtime_id = runtime_created["key_id"].as_str().unwrap();
    assert_eq!(
        delete(&ts, &format!("/v1/keys/{runtime_id}"), &admin).await,
        204
    );
    assert_eq!(
        closed_within(&mut runtime, Duration::from_millis(1_500)).await,
        1008
    );
    let (status, refused) = ts
        .post(
            "/v1/calls",
            &runtime_key,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        refused["message"], "the runtime key has been revoked; use another key",
        "{refused}"
    );

    // Refusals that say what is expected.
    let (status, refused) = ts.get("/v1/keys?limit=5", &admin).await;
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = ts
        .post(
            "/v1/keys",
            &admin,
            &json!({"kind": "api", "expires_at": "tomorrow"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        refused["message"].as_str().unwrap().contains("RFC 3339"),
        "{refused}"
    );

    // Unknown and malformed ids are 404; the other workspace's keys cannot be reached.
    assert_eq!(
        delete(&ts, "/v1/keys/key_0000000000000000000000", &admin).await,
        404
    );
    assert_eq!(delete(&ts, "/v1/keys/nonsense", &admin).await, 404);
    assert_eq!(
        ts.post(
            "/v1/keys",
            &admin,
            &json!({"kind": "runtime", "admin": true})
        )
        .await
        .0,
        400
    );
    assert_eq!(
        ts.post(
            "/v1/keys",
            &admin,
            &json!({"kind": "api", "expires_at": "2001-01-01T00:00:00Z"})
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn the_command_line_revokes_a_key_while_the_server_runs() {
    let ts = TestServer::start().await;
    let admin = admin_key(&ts).await;
    let (_, created) = ts.post("/v1/keys", &admin, &json!({"kind": "api"})).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let call = ts.create_call("sip").await;
    let mut streams = open_streams(&ts, &key, call["id"].as_str().unwrap()).await;

    let store_args: Vec<String> = match &ts.config.database_url {
        Some(url) => vec!["--database-url".into(), url.clone()],
        None => vec!["--data-dir".into(), ts.dir.path().display().to_string()],
    };
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_callstream"));
        command.arg("keys").args(args).args(&store_args);
        command.env_remove("CALLSTREAM_DATABASE_URL");
        command.output().unwrap()
    };
    let listed = cli(&["list", "--workspace", "acme", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key_id"] == key_id.as_str() && k["state"] == "active")
    );
    let revoked = cli(&["revoke", "--workspace", "acme", &key_id]);
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    // Another process revoked it: this one's watch finds it within its poll.
    all_closed_for_revocation(&mut streams).await;
    assert_eq!(ts.get("/v1/calls", &key).await.0, 401);
    // Revoking it again says so, rather than claiming to revoke it a second time.
    let twice = cli(&["revoke", "--workspace", "acme", &key_id]);
    assert!(twice.status.success());
    let said = String::from_utf8_lossy(&twice.stdout);
    assert!(said.contains("was already revoked at"), "{said}");
    let again = cli(&["revoke", "--workspace", "nobody", &key_id]);
    assert!(!again.status.success());

    // Read by a person: a header, and each key's state under it.
    let plain = cli(&["list", "--workspace", "acme"]);
    assert!(plain.status.success());
    let plain = String::from_utf8_lossy(&plain.stdout).into_owned();
    let header = plain
        .lines()
        .find(|l| l.starts_with("KEY ID"))
        .unwrap_or_else(|| panic!("no header: {plain}"));
    let row = plain
        .lines()
        .find(|l| l.starts_with(key_id.as_str()))
        .unwrap_or_else(|| panic!("no row for {key_id}: {plain}"));
    let state_at = header.find("STATE").unwrap();
    assert_eq!(
        row.get(state_at..state_at + "revoked".len()),
        Some("revoked"),
        "the state lines up under its header:\n{plain}"
    );
    // A key made by hand says what it may do and until when.
    let made = cli(&[
        "create",
        "--workspace",
        "acme",
        "--admin",
        "--expires-at",
        "2031-01-02T03:04:05Z",
    ]);
    assert!(made.status.success());
    let made = String::from_utf8_lossy(&made.stdout);
    assert!(made.contains("admin      yes"), "{made}");
    assert!(made.contains("expires    2031-01-02T03:04:05"), "{made}");
}

#[tokio::test]
async fn an_expired_key_is_refused_and_its_streams_close_at_its_expiry() {
    let ts = TestServer::start().await;
    let admin = admin_key(&ts).await;
    let soon = callstream_core::time::now() + chrono::Duration::seconds(2);
    let (status, created) = ts
        .post(
            "/v1/keys",
            &admin,
            &json!({"kind": "api", "expires_at": callstream_core::time::format(&soon)}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let call = ts.create_call("sip").await;
    let call_id = call["id"].as_str().unwrap();
    let mut socket = call_socket(&ts, call_id, &format!("token={key}")).await;
    // A stream token it mints lives no longer than the key.
    let (_, token) = ts
        .post(
            "/v1/stream-tokens",
            &key,
            &json!({"call_id": call_id, "ttl_secs": 3600}),
        )
        .await;
    let token_end = callstream_core::time::parse(token["expires_at"].as_str().unwrap()).unwrap();
    assert!(token_end <= soon, "{token_end} after {soon}");
    assert_eq!(
        closed_within(&mut socket, Duration::from_secs(5)).await,
        1008
    );
    let (status, refused) = ts.get(&format!("/v1/calls/{call_id}"), &key).await;
    assert_eq!(status, 401);
    assert!(
        refused["message"].as_str().unwrap().contains("expired"),
        "{refused}"
    );
}
