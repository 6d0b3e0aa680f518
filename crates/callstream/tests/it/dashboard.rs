//! What the dashboard stands on, over real HTTP: the page and its assets with a strict policy,
//! the session cookie on the REST routes (and refused for changes from another origin), the
//! one-time sign-in link, and the call history's paging and phone search.

use callstream_core::KeyKind;
use callstream_server::auth;
use serde_json::{Value, json};

use crate::support::{TestServer, completed};

async fn sign_in(ts: &TestServer, secret: &str) -> (u16, Option<String>) {
    let (status, cookie, _) = ts.sign_in(secret).await;
    (status, cookie)
}

async fn with_cookie(
    ts: &TestServer,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
) -> (u16, Value) {
    let r = ts
        .http
        .request(method, ts.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let ts = TestServer::start().await;
    let page = ts.http.get(ts.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    for (path, kind) in [
        ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard.css", "text/css; charset=utf-8"),
    ] {
        assert!(html.contains(path), "the page loads {path}");
        let r = ts.http.get(ts.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], kind);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("https://") || path.ends_with(".css"),
            "{path} loads nothing from elsewhere"
        );
    }
    // The page it replaced sends its visitors on, fragment and all (browsers keep it).
    let old = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(ts.url("/demo"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 308);
    assert_eq!(old.headers()["location"], "/");
}

#[tokio::test]
async fn the_session_cookie_signs_in_rest_and_refuses_changes_from_other_origins() {
    let ts = TestServer::start().await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();

    // Signed out: GET /v1/session says so with a 200, and the cookie-less API is 401.
    let anonymous = ts.http.get(ts.url("/v1/session")).send().await.unwrap();
    assert_eq!(anonymous.status(), 200);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["signed_in"], json!(false));

    let (status, cookie) = sign_in(&ts, &ts.acme.api).await;
    assert_eq!(status, 201);
    let cookie = cookie.unwrap();
    let (status, body) = with_cookie(&ts, reqwest::Method::GET, "/v1/session", &cookie).await;
    assert_eq!((status, body["signed_in"].clone()), (200, json!(true)));
    let (status, list) = with_cookie(&ts, reqwest::Method::GET, "/v1/calls", &cookie).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["calls"][0]["id"], id);

    // A change from the page's own origin is carried out; from another origin, refused.
    let host = ts.base.trim_start_matches("http://").to_owned();
    let mint = |origin: Option<&str>, site: Option<&str>| {
        let mut r = ts
            .http
            .post(ts.url("/v1/stream-tokens"))
            .header("cookie", &cookie)
            .json(&json!({"call_id": id}));
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        if let Some(site) = site {
            r = r.header("sec-fetch-site", site);
        }
        r.send()
    };
    let own = format!("http://{host}");
    let ok = mint(Some(&own), Some("same-origin")).await.unwrap();
    assert_eq!(ok.status(), 201);
    let token: Value = ok.json().await.unwrap();
    assert!(token["token"].as_str().unwrap().starts_with("st_"));
    for (origin, site) in [
        (Some("http://evil.example"), Some("cross-site")),
        (Some("http://127.0.0.1:1"), Some("same-site")),
        (Some("http://evil.example"), None),
        (None, Some("cross-site")),
    ] {
        let refused = mint(origin, site).await.unwrap();
        assert_eq!(refused.status(), 403, "{origin:?} {site:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error_code"], "forbidden");
    }
    // The key in the header still works from anywhere (it is not ambient, as a cookie is).
    let keyed = ts
        .http
        .post(ts.url("/v1/stream-tokens"))
        .bearer_auth(&ts.acme.api)
        .header("origin", "http://evil.example")
        .json(&json!({"call_id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 201);

    // The conversation stream takes the cookie, as an EventSource sends it.
    let (_, conv) = ts
        .post(
            "/v1/conversations",
            &ts.acme.runtime,
            &json!({"channel": "sms", "participants": ["+14155550123"]}),
        )
        .await;
    let stream = ts
        .http
        .get(ts.url(&format!(
            "/v1/conversations/{}/stream",
            conv["id"].as_str().unwrap()
        )))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);

    // Another workspace's call is as unknown to the cookie as to the key.
    let (_, other) = ts
        .post(
            "/v1/calls",
            &ts.other.runtime,
            &json!({"phone": "+14155550199", "direction": "inbound", "transport": "sip"}),
        )
        .await;
    let (status, _) = with_cookie(
        &ts,
        reqwest::Method::GET,
        &format!("/v1/calls/{}", other["id"].as_str().unwrap()),
        &cookie,
    )
    .await;
    assert_eq!(status, 404);

    // Seed 004's audio stream API takes the cookie too (the dashboard's panel), for the
    // session's own account only, and changes only from the page's origin.
    let (_, workspace) = ts.get("/v1/workspace", &ts.acme.api).await;
    let auth_id = workspace["auth_id"].as_str().unwrap();
    let streams = format!("/api/v1/Account/{auth_id}/Call/{id}/Stream/");
    let (status, list) = with_cookie(&ts, reqwest::Method::GET, &streams, &cookie).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["meta"]["total_count"], 0);
    let (status, _) = with_cookie(
        &ts,
        reqwest::Method::GET,
        &format!("/api/v1/Account/MA0000000000000000000/Call/{id}/Stream/"),
        &cookie,
    )
    .await;
    assert_eq!(status, 404, "another account");
    let stop = ts
        .http
        .delete(ts.url(&streams))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status(), 403);

    // Signed out, the cookie opens nothing.
    let (status, _) = with_cookie(&ts, reqwest::Method::DELETE, "/v1/session", &cookie).await;
    assert_eq!(status, 204);
    let (status, body) = with_cookie(&ts, reqwest::Method::GET, "/v1/session", &cookie).await;
    assert_eq!((status, body["signed_in"].clone()), (200, json!(false)));
    let (status, body) = with_cookie(&ts, reqwest::Method::GET, "/v1/calls", &cookie).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn a_sign_in_link_signs_in_once() {
    let ts = TestServer::start().await;
    let state = ts.server.as_ref().unwrap().state();
    let ws = state.store().ensure_workspace("acme").await.unwrap();
    let key = auth::mint(&ws.id, KeyKind::Api);
    state.store().insert_key(&key.record).await.unwrap();
    let link = state.sign_in_links().mint(&ws.id, key.record.id.clone());
    assert!(link.starts_with("sl_"));

    let (status, cookie) = sign_in(&ts, &link).await;
    assert_eq!(status, 201);
    let (status, list) =
        with_cookie(&ts, reqwest::Method::GET, "/v1/calls", &cookie.unwrap()).await;
    assert_eq!(status, 200, "{list}");

    // Twice is refused, and so is a link nobody minted; neither is an API key anywhere else.
    for secret in [link.as_str(), "sl_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, cookie) = sign_in(&ts, secret).await;
        assert_eq!((status, cookie), (401, None), "{secret}");
    }
    let (status, _) = ts.get("/v1/calls", &link).await;
    assert_eq!(status, 401);

    // A link whose key was revoked before its use signs in to nothing.
    let late = state.sign_in_links().mint(&ws.id, key.record.id.clone());
    assert!(
        state
            .store()
            .revoke_key(&ws.id, &key.record.id, callstream_core::time::now())
            .await
            .unwrap()
    );
    let (_, cookie) = sign_in(&ts, &late).await;
    if let Some(cookie) = cookie {
        let (status, _) = with_cookie(&ts, reqwest::Method::GET, "/v1/calls", &cookie).await;
        assert_eq!(status, 401, "the revoked key's session is refused");
    }
}

#[tokio::test]
async fn the_call_history_pages_by_cursor_and_searches_by_phone() {
    let ts = TestServer::start().await;
    let mut ended: Vec<String> = Vec::new();
    for phone in ["+14155550101", "+442071838750", "+14155550103"] {
        let (status, call) = ts
            .post(
                "/v1/calls",
                &ts.acme.runtime,
                &json!({"phone": phone, "direction": "outbound", "transport": "sip"}),
            )
            .await;
        assert_eq!(status, 201);
        let id = call["id"].as_str().unwrap().to_owned();
        ts.ingest(&id, json!([completed()])).await;
        ended.push(id);
    }
    let live = ts.create_call("sip").await;

    // Ended calls only, newest first, one page at a time.
    let mut seen = Vec::new();
    let mut path = "/v1/calls?status=ended&limit=2".to_owned();
    loop {
        let (status, page) = ts.get(&path, &ts.acme.api).await;
        assert_eq!(status, 200, "{page}");
        for c in page["calls"].as_array().unwrap() {
            assert_ne!(c["status"], "in_progress");
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/calls?status=ended&limit=2&before={cursor}"),
            None => break,
        }
        assert!(seen.len() <= 3, "{seen:?}");
    }
    // The pages, joined, are the one full listing, newest first.
    let (_, all) = ts
        .get("/v1/calls?status=ended&limit=10", &ts.acme.api)
        .await;
    let all: Vec<String> = all["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, all);
    let (mut a, mut b) = (seen.clone(), ended.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "every ended call, once");
    assert!(!seen.contains(&live["id"].as_str().unwrap().to_owned()));

    let (_, found) = ts
        .get("/v1/calls?status=ended&phone=2071", &ts.acme.api)
        .await;
    assert_eq!(found["calls"].as_array().unwrap().len(), 1);
    assert_eq!(found["calls"][0]["phone"], "+442071838750");
    assert_eq!(found["next_cursor"], Value::Null);

    for bad in [
        "phone=abc",
        "phone=%25",
        "phone=12345678901234567",
        "before=nope",
        "status=over",
    ] {
        let (status, body) = ts.get(&format!("/v1/calls?{bad}"), &ts.acme.api).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error_code"], "invalid_request");
    }
}
