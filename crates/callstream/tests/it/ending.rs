//! Calls nobody would end: the gateway ends a call whose runtime left (`runtime_lost`) and one
//! that went quiet (`stale`), and everything watching it sees a normal end.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    TestServer, WsEvent, call_socket, transcript_stream, transcription, ws_connect, ws_json,
    ws_next, ws_send,
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

/// A call that failed before anyone watched, and one that completed: a client that connects
/// afterwards learns how each ended and why, on every surface, as a viewer of the end did.
/// (Before, the failed call's transcript stream answered `204` like a normal end, and its event
/// socket closed without a word of the failure.)
#[tokio::test]
async fn an_ended_call_answers_the_same_on_every_path_with_its_reason() {
    let ts = TestServer::start().await;
    let sid = "CA00000000000000000000000000000fa1";
    let (code, failed) = ts
        .post(
            "/v1/calls",
            &ts.acme.runtime,
            &json!({"phone": "+14155550123", "direction": "inbound", "transport": "sip", "external_id": sid}),
        )
        .await;
    assert_eq!(code, 201, "{failed}");
    let failed = failed["id"].as_str().unwrap().to_owned();
    let accepted = ts
        .ingest(
            &failed,
            json!([{"event_type": "call.failed", "payload": {"reason": "carrier_rejected"}}]),
        )
        .await;
    let (end_seq, end_id) = (
        accepted["seqs"][0].as_u64().unwrap(),
        accepted["event_ids"][0].clone(),
    );
    assert_eq!(status_becomes(&ts, &failed, "failed").await, "failed");

    // REST says why.
    let (_, call) = ts.get(&format!("/v1/calls/{failed}"), &ts.acme.api).await;
    assert_eq!(call["end_reason"], "carrier_rejected", "{call}");

    // The transcript stream: no finals to replay, and still the failure, never a 204.
    let mut sse = transcript_stream(&ts, &failed, &ts.acme.api, None).await;
    assert_eq!(sse.status, 200);
    let err = sse.next_data().await.unwrap();
    assert_eq!(err.event.as_deref(), Some("error"));
    assert_eq!(
        err.json(),
        json!({"error_code": "call_failed", "message": "the call failed: carrier_rejected"})
    );
    assert_eq!(sse.next().await, None);

    // The call socket: the very envelope live viewers got, then 1000.
    let mut ws = call_socket(&ts, &failed, &format!("token={}", ts.acme.api)).await;
    let end = ws_json(&mut ws).await;
    assert_eq!(
        (
            &end["event_type"],
            &end["payload"]["reason"],
            &end["event_id"],
            end["seq"].as_u64()
        ),
        (
            &json!("call.failed"),
            &json!("carrier_rejected"),
            &end_id,
            Some(end_seq)
        ),
        "{end}"
    );
    assert!(matches!(ws_next(&mut ws).await, WsEvent::Close(1000)));
    // Resuming at or past the end gets only the close.
    let mut resumed = call_socket(
        &ts,
        &failed,
        &format!("token={}&since={end_seq}", ts.acme.api),
    )
    .await;
    assert!(matches!(ws_next(&mut resumed).await, WsEvent::Close(1000)));

    // Seed 003's socket: the status with its reason, then 1000.
    let mut lt = ws_connect(
        &ts.ws_url(&format!("/live-transcript/{sid}?token={}", ts.acme.api)),
        None,
    )
    .await
    .unwrap();
    assert_eq!(ws_json(&mut lt).await["type"], "connection_established");
    assert_eq!(
        ws_json(&mut lt).await,
        json!({"type": "call_status", "call_sid": sid, "status": "failed", "reason": "carrier_rejected"})
    );
    assert!(matches!(ws_next(&mut lt).await, WsEvent::Close(1000)));

    // A completed call with nothing to replay: 204 on the transcript stream (EventSource stops),
    // its `call.completed` on the call socket, and its reason over REST when it gave one.
    let completed = ts.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ts.ingest(
        &completed,
        json!([{"event_type": "call.completed", "payload": {"reason": "hangup"}}]),
    )
    .await;
    assert_eq!(
        status_becomes(&ts, &completed, "completed").await,
        "completed"
    );
    let (_, call) = ts
        .get(&format!("/v1/calls/{completed}"), &ts.acme.api)
        .await;
    assert_eq!(call["end_reason"], "hangup", "{call}");
    assert_eq!(
        transcript_stream(&ts, &completed, &ts.acme.api, None)
            .await
            .status,
        204
    );
    let mut ws = call_socket(&ts, &completed, &format!("token={}", ts.acme.api)).await;
    assert_eq!(ws_json(&mut ws).await["event_type"], "call.completed");
    assert!(matches!(ws_next(&mut ws).await, WsEvent::Close(1000)));
}
