//! A real browser: seed 000's EventSource snippet on a customer's own page (another origin)
//! receives live frames with `?token=`, and the same key in the URL of another path is refused.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, missing_node, node_tools_dir, services_required, transcription};

fn browser_dir() -> PathBuf {
    node_tools_dir()
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    missing_node(&["playwright-core"])
}

#[tokio::test]
async fn browser_eventsource_on_a_customer_page_receives_frames() {
    if let Some(why) = missing() {
        assert!(
            !services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but the browser test cannot run: {why}"
        );
        eprintln!("SKIP browser test: {why}");
        return;
    }
    let ts = TestServer::start().await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap().to_owned();

    // Keep the call talking while the browser starts and connects.
    let feeder = {
        let (http, url, key) = (
            ts.http.clone(),
            ts.url(&format!("/v1/calls/{id}/events")),
            ts.acme.runtime.clone(),
        );
        tokio::spawn(async move {
            for i in 0..300 {
                let turn = format!("trn_{i}");
                let body = json!([
                    transcription("user", "What time", false, &turn),
                    transcription("user", "What time do you open?", true, &turn),
                ]);
                let _ = http.post(&url).bearer_auth(&key).json(&body).send().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(browser_dir().join("eventsource.mjs"))
            .args([&ts.base, &ts.acme.api, &id])
            .output(),
    )
    .await
    .expect("the browser test finished within 90 s")
    .expect("node runs");
    feeder.abort();
    assert!(
        output.status.success(),
        "browser script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    let frames = seen["frames"].as_array().unwrap();
    let partial = frames
        .iter()
        .find(|f| f["is_final"] == false)
        .expect("a partial frame");
    assert!(
        frames
            .iter()
            .any(|f| f["is_final"] == true && f["turn_id"] == partial["turn_id"])
    );
    for f in frames {
        assert!(
            f["id"].as_str().unwrap().parse::<u64>().is_ok(),
            "lastEventId is the seq: {f}"
        );
        assert!(f["role"] == "user" || f["role"] == "agent");
        assert!(f["ts"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(
        seen["otherPathStatus"], 401,
        "?token= on another path is refused"
    );
    assert_ne!(
        seen["origin"].as_str().unwrap(),
        ts.base,
        "the page is on its own origin"
    );
}

/// The dashboard in Chromium against the real `callstream demo` (the simulator playing calls and
/// conversations): sign in with the printed one-time link, watch the long call mid-way and live,
/// listen to it (audio frames decoded in the page), DTMF and end it, take a conversation over and hand it back, a webhook endpoint's log; axe-core
/// finds nothing serious at desktop and phone widths; no console error; the API key is in no
/// request URL. Screenshots are kept in `target/browser-artefacts/`.
#[tokio::test]
async fn dashboard_in_chromium_against_the_demo() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    if let Some(why) = missing() {
        assert!(
            !services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but the browser test cannot run: {why}"
        );
        eprintln!("SKIP browser test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut demo = tokio::process::Command::new(env!("CARGO_BIN_EXE_callstream"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let (mut base, mut sign_in, mut api, mut call) = (None, None, None, None);
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
    {
        let line = line.trim();
        if let Some((url, secret)) = line.split_once("/#sign-in=") {
            base = Some(url.to_owned());
            sign_in = Some(secret.to_owned());
        } else if line.starts_with("API key") {
            api = line.split_whitespace().last().map(str::to_owned);
        } else if let Some((_, rest)) = line.split_once("/v1/calls/")
            && let Some((id, _)) = rest.split_once("/transcript/stream")
        {
            call = Some(id.to_owned());
        } else if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let (Some(base), Some(sign_in), Some(api), Some(call)) = (base, sign_in, api, call) else {
        panic!("the demo printed its link, key and long call");
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // An endpoint whose deliveries fail (nothing listens on its port), for the delivery log.
    let http = reqwest::Client::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let created = http
        .post(format!("{base}/v1/webhook-endpoints"))
        .bearer_auth(&api)
        .json(
            &json!({"url": dead, "event_types": ["call.started", "call.dtmf", "call.completed"],
                      "description": "CRM sync"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    // The long call has said something before the browser opens it (the "mid-way" case).
    for _ in 0..60 {
        let t: Value = http
            .get(format!("{base}/v1/calls/{call}/transcript"))
            .bearer_auth(&api)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if t["turns"].as_array().is_some_and(|t| t.len() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let artefacts =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-artefacts");
    let output = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .args([&base, &sign_in, &api, &call])
            .arg(&artefacts)
            .output(),
    )
    .await
    .expect("the dashboard test finished within 240 s")
    .expect("node runs");
    let _ = demo.kill().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dashboard test failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(seen["consoleErrors"], json!([]), "no console errors");
    assert_eq!(
        seen["keyInUrl"],
        json!([]),
        "the API key is in no request URL"
    );
    assert!(
        seen["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .all(|u| u.starts_with(&base) || u.starts_with(&base.replacen("http", "ws", 1))),
        "nothing is loaded from elsewhere: {}",
        seen["requests"]
    );
    assert!(
        seen["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .any(|u| u.contains("/stream?token=st_")),
        "the call stream opens with a stream token"
    );
    assert_eq!(
        seen["steps"].as_array().unwrap().len(),
        11,
        "{}",
        seen["steps"]
    );
}

/// docs/asyncapi.yaml is valid AsyncAPI 3.0 by the AsyncAPI Initiative's parser, and describes
/// exactly the gateway's streams (plus the audio service the gateway connects to).
#[tokio::test]
async fn the_asyncapi_description_is_valid_and_names_every_stream() {
    if let Some(why) = missing_node_tools() {
        assert!(
            !services_required(),
            "CALLSTREAM_REQUIRE_SERVICES=1 but the AsyncAPI check cannot run: {why}"
        );
        eprintln!("SKIP AsyncAPI check: {why}");
        return;
    }
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/asyncapi.yaml");
    let output = tokio::process::Command::new("node")
        .arg(browser_dir().join("validate-asyncapi.mjs"))
        .arg(&spec)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "docs/asyncapi.yaml is not valid: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(seen["version"], "3.0.0");
    // Parameter names differ ({id}, {callId}); the paths must not.
    let shape = |p: &str| {
        let mut out = String::new();
        let mut inside = false;
        for c in p.chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str("{}");
                }
                '}' => inside = false,
                _ if !inside => out.push(c),
                _ => {}
            }
        }
        out
    };
    let mut described: Vec<String> = seen["channels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| *a != "{serviceUrl}")
        .map(shape)
        .collect();
    let mut routed: Vec<String> = callstream_server::STREAM_PATHS
        .iter()
        .map(|p| shape(p))
        .collect();
    described.sort();
    routed.sort();
    assert_eq!(
        described, routed,
        "every stream route is described, and nothing else"
    );
}

/// Why the Node checks cannot run here, if they cannot.
fn missing_node_tools() -> Option<String> {
    missing_node(&["@asyncapi/parser"])
}
