//! A real browser: seed 000's EventSource snippet on a customer's own page (another origin)
//! receives live frames with `?token=`, and the same key in the URL of another path is refused.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, services_required, transcription};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// Why the browser test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("node is not installed".into());
    }
    None
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
