//! Calls nobody would end: the gateway ends a call whose runtime left (`runtime_lost`) and one
//! that went quiet (`stale`), and everything watching it sees a normal end.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    TestServer, WsEvent, call_socket, transcription, ws_connect, ws_json, ws_next, ws_send,
};

/// The call's status, as `GET /v1/calls/{id}` says.
async fn status(ts: &TestServer, id: &str) -> String {
    let (code, call) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(code, 200, "{call}");
    call["status"].as_str().unwrap().to_owned()
}

/// The call's status once it is `want`, or what it still is after 5 s. (On a cluster an event
/// reaches streams as its transaction commits, so the record may say so a moment later.)
async fn status_becomes(ts: &TestServer, id: &str, want: &str) -> String {
    for _ in 0..100 {
        let now = status(ts, id).await;
        if now == want {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status(ts, id).await
}

#[tokio::test]
async fn a_call_whose_runtime_left_ends_as_runtime_lost_unless_a_runtime_claims_it() {
    let ts = TestServer::start_with(|c| c.runtime_lost_grace_secs = 2).await;
    let orphan = ts.create_call("sip").await;
    let kept = ts.create_call("sip").await;
    let (orphan, kept) = (
        orphan["id"].as_str().unwrap().to_owned(),
        kept["id"].as_str().unwrap().to_owned(),
    );
    let mut viewer = call_socket(&ts, &orphan, &format!("token={}", ts.acme.api)).await;

    // A runtime serves both calls over its socket, then its connection drops.
    let mut runtime = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    for (call, turn) in [(&orphan, "trn_1"), (&kept, "trn_2")] {
        ws_send(
            &mut runtime,
            &json!({"type": "events", "call_id": call, "events": [transcription("user", "hello", true, turn)]}),
        )
        .await;
        assert_eq!(ws_json(&mut runtime).await["type"], "accepted");
    }
    assert_eq!(ws_json(&mut viewer).await["seq"], 2);
    drop(runtime);

    // It comes back at once and sends for one of them: that call is claimed again.
    let mut back = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    ws_send(
        &mut back,
        &json!({"type": "events", "call_id": kept, "events": [transcription("user", "still here", true, "trn_3")]}),
    )
    .await;
    assert_eq!(ws_json(&mut back).await["type"], "accepted");

    // The other ends after the grace, as any call.failed does, for every viewer.
    let failed = ws_json(&mut viewer).await;
    assert_eq!(
        (
            failed["event_type"].as_str(),
            failed["payload"].clone(),
            failed["seq"].as_u64()
        ),
        (
            Some("call.failed"),
            json!({"reason": "runtime_lost"}),
            Some(3)
        ),
        "{failed}"
    );
    assert_eq!(ws_next(&mut viewer).await, WsEvent::Close(1000));
    assert_eq!(status_becomes(&ts, &orphan, "failed").await, "failed");
    // What it held is let go: nothing more is accepted for it.
    let (code, refused) = ts
        .post(
            &format!("/v1/calls/{orphan}/events"),
            &ts.acme.runtime,
            &transcription("user", "late", true, "trn_9"),
        )
        .await;
    assert_eq!(
        (code, refused["error_code"].as_str()),
        (409, Some("call_ended"))
    );
    assert_eq!(
        ts.metric("callstream_calls_ended_by_gateway_total{reason=\"runtime_lost\"} ")
            .await,
        1.0
    );
    // The claimed call lives on well past the grace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status(&ts, &kept).await, "in_progress");
}

#[tokio::test]
async fn a_call_with_no_event_for_the_stale_time_ends_as_stale() {
    let ts = TestServer::start_with(|c| c.call_stale_secs = 2).await;
    let quiet = ts.create_call("sip").await;
    let busy = ts.create_call("sip").await;
    let (quiet, busy) = (
        quiet["id"].as_str().unwrap().to_owned(),
        busy["id"].as_str().unwrap().to_owned(),
    );
    let mut viewer = call_socket(&ts, &quiet, &format!("token={}", ts.acme.api)).await;
    ts.ingest(&quiet, transcription("user", "hello", true, "trn_1"))
        .await;
    assert_eq!(ws_json(&mut viewer).await["seq"], 2);
    // The busy call has an event every half second, for longer than the stale time.
    for n in 0..8 {
        ts.ingest(
            &busy,
            transcription("user", "talking", true, &format!("trn_{n}")),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failed = ws_json(&mut viewer).await;
    assert_eq!(
        (failed["event_type"].as_str(), failed["payload"].clone()),
        (Some("call.failed"), json!({"reason": "stale"})),
        "{failed}"
    );
    assert_eq!(ws_next(&mut viewer).await, WsEvent::Close(1000));
    assert_eq!(status_becomes(&ts, &quiet, "failed").await, "failed");
    assert_eq!(status(&ts, &busy).await, "in_progress");
    assert_eq!(
        ts.metric("callstream_calls_ended_by_gateway_total{reason=\"stale\"} ")
            .await,
        1.0
    );
}
