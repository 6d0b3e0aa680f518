//! Restart, graceful shutdown, health and metrics.

use serde_json::json;

use crate::support::{TestServer, transcript_stream, transcription};

#[tokio::test]
async fn a_restart_keeps_keys_calls_and_transcripts() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    ts.ingest(
        &id,
        json!([
            transcription("user", "Hello", false, "trn_1"),
            transcription("user", "Hello there", true, "trn_1")
        ]),
    )
    .await;

    let ts = ts.restart().await;
    let (status, got) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(status, 200, "the same API key still works");
    assert_eq!(
        (got["status"].as_str(), got["last_seq"].as_u64()),
        (Some("in_progress"), Some(3))
    );
    let (_, transcript) = ts
        .get(&format!("/v1/calls/{id}/transcript"), &ts.acme.api)
        .await;
    assert_eq!(transcript["turns"][0]["text"], "Hello there");
    // Seqs continue where they stopped.
    let more = ts
        .ingest(&id, transcription("agent", "Hi!", true, "trn_2"))
        .await;
    assert_eq!(more["seqs"], json!([4]));
}

/// Seqs come from blocks the store reserves; across blocks they stay contiguous, and a clean
/// shutdown gives back every unused seq, so that the next process goes on from the last one
/// used.
#[tokio::test]
async fn seqs_stay_contiguous_across_blocks_and_a_restart_gives_the_unused_back() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    let mut seqs = Vec::new();
    // 1,600 events: past the first block of 1,024, and some way into the second.
    for batch in 0..16 {
        let events: Vec<_> = (0..100)
            .map(|i| transcription("user", "hm", false, &format!("trn_{batch}_{i}")))
            .collect();
        let accepted = ts.ingest(&id, json!(events)).await;
        seqs.extend(
            accepted["seqs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap()),
        );
    }
    // call.started is seq 1.
    let gaps: Vec<_> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert_eq!(
        (seqs.first(), seqs.last(), gaps),
        (Some(&2), Some(&1601), vec![]),
        "contiguous from 2 to 1601"
    );

    let ts = ts.restart().await;
    let (_, got) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(got["last_seq"], 1601, "nothing reserved is left unused");
    let more = ts
        .ingest(&id, transcription("agent", "Hi!", true, "trn_x"))
        .await;
    assert_eq!(more["seqs"], json!([1602]));
}

#[tokio::test]
async fn shutdown_closes_streams_with_a_going_away_frame() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    ts.ingest(id, transcription("user", "hi", true, "trn_1"))
        .await;
    assert_eq!(s.next_data().await.unwrap().json()["text"], "hi");

    let (status, _) = ts.get("/readyz", "").await;
    assert_eq!(status, 200);
    ts.server().shutdown();
    let bye = s.next_data().await.unwrap();
    assert_eq!(bye.event.as_deref(), Some("error"));
    assert_eq!(bye.json()["error_code"], "going_away");
    assert_eq!(s.next().await, None);
    let mut ts = ts;
    let server = ts.server.take().unwrap();
    server
        .wait()
        .await
        .expect("graceful shutdown completes in time");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let ts = TestServer::start().await;
    let (status, body) = ts.get("/healthz", "").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = ts.get("/readyz", "").await;
    assert_eq!((status, body), (200, json!({"status": "ready"})));

    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    assert_eq!(
        ts.metric("callstream_open_streams{surface=\"native_transcript_sse\"}")
            .await,
        1.0
    );
    ts.ingest(id, transcription("user", "hi", true, "trn_1"))
        .await;
    s.next_data().await.unwrap();
    assert_eq!(
        ts.metric("callstream_frames_sent_total{surface=\"native_transcript_sse\"}")
            .await,
        1.0
    );
    assert_eq!(
        ts.metric("callstream_ingest_events_total{event_type=\"call.transcription\"}")
            .await,
        1.0
    );
    assert_eq!(
        ts.metric("callstream_ingest_events_total{event_type=\"call.started\"}")
            .await,
        1.0
    );
    assert_eq!(ts.metric("callstream_bus_subscribers").await, 1.0);
    // The ingest's append was timed (the call's creation may be timed too).
    assert!(
        ts.metric("callstream_ingest_append_seconds_count{path=\"call\"}")
            .await
            >= 1.0
    );
    drop(s);
    // The gauge falls once the server notices the client left (on its next write).
    for _ in 0..100 {
        ts.ingest(id, transcription("user", "tick", false, "trn_2"))
            .await;
        if ts
            .metric("callstream_open_streams{surface=\"native_transcript_sse\"}")
            .await
            == 0.0
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("open_streams never fell back to 0");
}

#[tokio::test]
async fn unknown_paths_answer_json_404() {
    let ts = TestServer::start().await;
    let (status, body) = ts.get("/v2/nothing", &ts.acme.api).await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (404, Some("not_found"))
    );
}
