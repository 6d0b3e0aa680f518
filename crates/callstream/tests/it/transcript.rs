//! Seed 000 call transcript SSE: frames, resume, end of call, heartbeats, slow consumers.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{SseReader, TestServer, completed, transcript_stream, transcription};

#[tokio::test]
async fn partials_then_final_share_a_turn_and_the_stream_closes_at_call_end() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    assert_eq!(s.headers["cache-control"], "no-cache");

    ts.ingest(id, transcription("user", "What time", false, "trn_q"))
        .await;
    ts.ingest(
        id,
        json!([
            {"event_type": "call.metrics", "payload": {"mos": 4.1}},
            transcription("user", "What time do you open?", true, "trn_q"),
            transcription("agent", "At nine.", true, "trn_r"),
        ]),
    )
    .await;
    ts.ingest(id, completed()).await;

    let partial = s.next_data().await.unwrap();
    assert_eq!(partial.id.as_deref(), Some("2"));
    let p = partial.json();
    assert_eq!(
        p,
        json!({"role": "user", "text": "What time", "is_final": false, "turn_id": "trn_q", "ts": p["ts"]})
    );
    assert!(p["ts"].as_str().unwrap().ends_with('Z'));
    let fin = s.next_data().await.unwrap();
    assert_eq!(
        fin.id.as_deref(),
        Some("4"),
        "the metrics event (seq 3) has no transcript frame"
    );
    assert_eq!(
        (
            fin.json()["turn_id"].clone(),
            fin.json()["is_final"].clone()
        ),
        (json!("trn_q"), json!(true))
    );
    let agent = s.next_data().await.unwrap();
    assert_eq!(agent.json()["role"], "agent");
    assert_eq!(s.next().await, None, "the stream closes when the call ends");
}

#[tokio::test]
async fn a_new_viewer_gets_the_in_flight_turn_then_live_frames() {
    let ts = TestServer::start().await;
    let call = ts.create_call("esl").await;
    let id = call["id"].as_str().unwrap();
    ts.ingest(
        id,
        json!([
            transcription("user", "Done turn", true, "trn_1"),
            transcription("agent", "Reply", true, "trn_2"),
            transcription("user", "I would", false, "trn_3"),
            transcription("user", "I would like", false, "trn_3"),
        ]),
    )
    .await;
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    let first = s.next_data().await.unwrap();
    assert_eq!(
        first.json()["text"],
        "I would like",
        "only the in-flight turn's latest partial"
    );
    ts.ingest(
        id,
        transcription("user", "I would like a table", true, "trn_3"),
    )
    .await;
    assert_eq!(s.next_data().await.unwrap().json()["is_final"], true);
}

#[tokio::test]
async fn last_event_id_resumes_what_was_missed() {
    let ts = TestServer::start_with(|c| c.history_capacity = 4).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    // seqs 2..=11: ten finals, more than the history of 4 holds.
    let turns: Vec<_> = (0..10)
        .map(|i| transcription("user", &format!("turn {i}"), true, &format!("trn_{i}")))
        .collect();
    ts.ingest(id, json!(turns)).await;

    // Resume inside the history: the ring serves it.
    let mut s = transcript_stream(&ts, id, &ts.acme.api, Some(9)).await;
    assert_eq!(s.next_data().await.unwrap().id.as_deref(), Some("10"));
    assert_eq!(s.next_data().await.unwrap().id.as_deref(), Some("11"));
    drop(s);

    // Resume from before the history: stored finals fill the gap, then the ring, in order.
    let mut s = transcript_stream(&ts, id, &ts.acme.api, Some(3)).await;
    let mut ids = Vec::new();
    for _ in 4..=11 {
        ids.push(s.next_data().await.unwrap().id.unwrap());
    }
    assert_eq!(ids, ["4", "5", "6", "7", "8", "9", "10", "11"]);
    ts.ingest(id, transcription("agent", "live again", true, "trn_z"))
        .await;
    assert_eq!(s.next_data().await.unwrap().json()["text"], "live again");
}

#[tokio::test]
async fn a_finished_call_replays_its_finals_then_answers_204() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    ts.ingest(
        id,
        json!([
            transcription("user", "Hi", false, "trn_1"),
            transcription("user", "Hi there", true, "trn_1"),
            completed()
        ]),
    )
    .await;
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    let only = s.next_data().await.unwrap();
    assert_eq!(
        (only.id.as_deref(), only.json()["text"].as_str()),
        (Some("3"), Some("Hi there"))
    );
    assert_eq!(s.next().await, None);
    // An EventSource reconnects with the last id; 204 tells it to stop.
    let again = transcript_stream(&ts, id, &ts.acme.api, Some(3)).await;
    assert_eq!(again.status, 204);
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_alive_past_the_request_timeout() {
    let ts = TestServer::start_with(|c| {
        c.sse_heartbeat_secs = 1;
        c.request_timeout_secs = 1;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut s = transcript_stream(&ts, id, &ts.acme.api, None).await;
    for _ in 0..3 {
        let beat = s.next().await.unwrap();
        assert_eq!(beat.comment.as_deref(), Some("heartbeat"));
    }
    // Three seconds in, well past the 1 s request timeout, the stream still delivers.
    ts.ingest(id, transcription("user", "still here", true, "trn_1"))
        .await;
    assert_eq!(s.next_data().await.unwrap().json()["text"], "still here");
}

/// A subscriber that never reads fills its queue and loses frames; a reading subscriber on the
/// same call gets every frame, and the drops show in the metrics.
#[tokio::test]
async fn a_consumer_that_never_reads_loses_frames_and_slows_nobody() {
    let ts = TestServer::start_with(|c| c.stream_queue_capacity = 8).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();

    // The stuck client: a raw socket with a tiny receive buffer that sends a request and never
    // reads the response.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(ts.server().addr()).await.unwrap();
    let request = format!(
        "GET /v1/calls/{id}/transcript/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        ts.acme.api
    );
    stuck.write_all(request.as_bytes()).await.unwrap();
    let mut healthy = transcript_stream(&ts, id, &ts.acme.api, None).await;
    // Wait until both streams are subscribed.
    for _ in 0..100 {
        if ts
            .metric("callstream_open_streams{surface=\"native_transcript_sse\"}")
            .await
            >= 2.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Lock-step: each batch is published only after the healthy reader has the previous one, so
    // if the stuck client could block publishing, this loop would hang (and the test time out).
    // Batches of 5 fit the healthy reader's queue of 8, so it never has a reason to drop.
    // 8 MB in all: more than loopback socket buffers can absorb for the stuck client.
    let text = "x".repeat(8000);
    let mut received = 0;
    for batch in 0..200 {
        let events: Vec<_> = (0..5)
            .map(|i| {
                transcription(
                    "user",
                    &format!("{batch}-{i} {text}"),
                    true,
                    &format!("trn_{batch}_{i}"),
                )
            })
            .collect();
        ts.ingest(id, json!(events)).await;
        for _ in 0..5 {
            healthy.next_data().await.unwrap();
            received += 1;
        }
    }
    assert_eq!(received, 1000);
    let dropped = ts
        .metric("callstream_frames_dropped_total{surface=\"native_transcript_sse\"}")
        .await;
    assert!(
        dropped > 0.0,
        "the stuck stream's frames were dropped and counted"
    );
    assert!(dropped < 1000.0, "the healthy stream dropped nothing");

    // The stuck client's connection is still a valid HTTP response when it finally reads.
    let mut head = [0u8; 12];
    stuck.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[tokio::test]
async fn many_viewers_of_one_call_see_the_same_frames() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut viewers = Vec::new();
    for _ in 0..20 {
        viewers.push(transcript_stream(&ts, id, &ts.acme.api, None).await);
    }
    ts.ingest(
        id,
        json!([
            transcription("user", "one", true, "trn_1"),
            transcription("agent", "two", true, "trn_2")
        ]),
    )
    .await;
    for v in &mut viewers {
        assert_eq!(v.next_data().await.unwrap().json()["text"], "one");
        assert_eq!(v.next_data().await.unwrap().json()["text"], "two");
    }
    let _: Vec<SseReader> = viewers;
}
