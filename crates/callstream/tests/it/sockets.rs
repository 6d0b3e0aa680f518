//! Seed 000's call event WebSocket, live call control, the runtime socket, and stream tokens,
//! driven by a real WebSocket client.

use std::time::Duration;

use futures::SinkExt;

use serde_json::{Value, json};

use crate::support::{
    TestServer, WsEvent, WsMessage, call_socket, completed, flood_until_closed, obedient_runtime,
    transcript_stream, transcription, ws_connect, ws_json, ws_next, ws_send,
};

#[tokio::test]
async fn frames_are_canonical_envelopes_and_the_call_end_closes_1000() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    ts.ingest(
        id,
        json!([
            transcription("user", "hi", true, "trn_1"),
            {"event_type": "call.barge_in", "payload": {"interrupted_turn_id": "trn_0"}},
            {"event_type": "call.quality_degraded", "payload": {"metric": "mos", "value": 2.1}},
        ]),
    )
    .await;
    let first = ws_json(&mut ws).await;
    assert_eq!(first["event_type"], "call.transcription");
    assert_eq!(first["call_id"], id);
    assert_eq!(first["seq"], 2);
    assert_eq!(
        first["payload"],
        json!({"role": "user", "text": "hi", "is_final": true, "turn_id": "trn_1"})
    );
    // The frame is exactly the canonical envelope (the same bytes webhooks carry).
    let envelope: callstream_core::Envelope = serde_json::from_value(first.clone()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&envelope.to_json()).unwrap(),
        first
    );
    assert_eq!(ws_json(&mut ws).await["event_type"], "call.barge_in");
    assert_eq!(
        ws_json(&mut ws).await["event_type"],
        "call.quality_degraded"
    );
    ts.ingest(id, completed()).await;
    assert_eq!(ws_json(&mut ws).await["event_type"], "call.completed");
    assert_eq!(ws_next(&mut ws).await, WsEvent::Close(1000));
}

#[tokio::test]
async fn since_resumes_from_the_history() {
    let ts = TestServer::start().await;
    let call = ts.create_call("esl").await;
    let id = call["id"].as_str().unwrap();
    ts.ingest(
        id,
        json!([
            transcription("user", "a", true, "trn_1"),
            transcription("user", "b", true, "trn_2")
        ]),
    )
    .await;
    let mut ws = call_socket(&ts, id, &format!("token={}&since=1", ts.acme.api)).await;
    assert_eq!(ws_json(&mut ws).await["seq"], 2);
    assert_eq!(ws_json(&mut ws).await["seq"], 3);
}

#[tokio::test]
async fn refusals_before_the_upgrade_are_http_json() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let url = |q: &str| ts.ws_url(&format!("/v1/calls/{id}/stream?{q}"));
    assert_eq!(
        ws_connect(&url("token=pk_live_nope"), None).await.err(),
        Some(401)
    );
    assert_eq!(ws_connect(&url(""), None).await.err(), Some(401));
    assert_eq!(
        ws_connect(&url(&format!("token={}", ts.other.api)), None)
            .await
            .err(),
        Some(404)
    );
    assert_eq!(
        ws_connect(&url(&format!("token={}", ts.acme.runtime)), None)
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        ws_connect(&url(&format!("token={}&since=soon", ts.acme.api)), None)
            .await
            .err(),
        Some(400)
    );
    assert!(
        ws_connect(&url(""), Some(&ts.acme.api)).await.is_ok(),
        "the Authorization header works too"
    );
    // A plain GET (no upgrade) is told what this endpoint is.
    let r = ts
        .http
        .get(ts.url(&format!("/v1/calls/{id}/stream")))
        .bearer_auth(&ts.acme.api)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(body["error_code"], "websocket_required");
}

#[tokio::test]
async fn bad_client_frames_get_errors_or_the_seeds_close_codes() {
    let ts = TestServer::start_with(|c| c.ws_max_message_bytes = 1024).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let token = format!("token={}", ts.acme.api);

    // Malformed JSON: an error frame, and the socket stays open.
    let mut ws = call_socket(&ts, id, &token).await;
    ws.send(WsMessage::Text("{nope".into())).await.unwrap();
    let err = ws_json(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["error_code"].as_str()),
        (Some("error"), Some("invalid_message"))
    );
    ws_send(
        &mut ws,
        &json!({"type": "send_dtmf", "id": "d1", "digits": "12x"}),
    )
    .await;
    let err = ws_json(&mut ws).await;
    assert_eq!(
        (err["id"].as_str(), err["error_code"].as_str()),
        (Some("d1"), Some("invalid_command"))
    );
    ts.ingest(id, transcription("user", "still open", true, "trn_1"))
        .await;
    assert_eq!(ws_json(&mut ws).await["event_type"], "call.transcription");

    // Binary where JSON is expected: 1003.
    ws.send(WsMessage::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut ws).await, WsEvent::Close(1003));

    // Oversized: 1009.
    let mut big = call_socket(&ts, id, &token).await;
    big.send(WsMessage::Text("x".repeat(4096).into()))
        .await
        .unwrap();
    assert_eq!(ws_next(&mut big).await, WsEvent::Close(1009));

    // Server shutdown: 1001.
    let mut last = call_socket(&ts, id, &token).await;
    ts.server().shutdown();
    assert_eq!(ws_next(&mut last).await, WsEvent::Close(1001));
}

/// The streaming sockets read in small chunks (`COMMAND_READS`, 512 bytes): a message many
/// times that size is still read whole and answered, and the socket carries on.
#[tokio::test]
async fn a_message_larger_than_the_read_chunk_is_read_whole() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    let pad = "p".repeat(20_000);
    ws_send(
        &mut ws,
        &json!({"type": "send_dtmf", "id": "big1", "digits": "12x", "pad": pad}),
    )
    .await;
    let err = ws_json(&mut ws).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], "big1", "{err}");
    ts.ingest(
        id,
        transcription("user", "after the big one", true, "trn_1"),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await["payload"]["text"],
        "after the big one"
    );
}

#[tokio::test]
async fn dtmf_join_and_end_travel_to_the_runtime_and_back() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let _runtime = obedient_runtime(&ts).await;
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;

    ws_send(
        &mut ws,
        &json!({"type": "send_dtmf", "id": "c1", "digits": "42#"}),
    )
    .await;
    let mut seen = [ws_json(&mut ws).await, ws_json(&mut ws).await];
    seen.sort_by_key(|v| v["type"].is_null());
    assert_eq!(seen[0], json!({"type": "ack", "id": "c1"}));
    assert_eq!(
        (
            seen[1]["event_type"].as_str(),
            seen[1]["payload"]["digits"].as_str()
        ),
        (Some("call.dtmf"), Some("42#"))
    );

    ws_send(
        &mut ws,
        &json!({"type": "join_call", "id": "c2", "user_id": "usr_7"}),
    )
    .await;
    let mut seen = [ws_json(&mut ws).await, ws_json(&mut ws).await];
    seen.sort_by_key(|v| v["type"].is_null());
    assert_eq!(seen[0], json!({"type": "ack", "id": "c2"}));
    assert_eq!(seen[1]["event_type"], "call.transferred");

    ws_send(&mut ws, &json!({"type": "end_call", "id": "c3"})).await;
    let mut frames = Vec::new();
    loop {
        match ws_next(&mut ws).await {
            WsEvent::Json(v) => frames.push(v),
            WsEvent::Close(code) => {
                assert_eq!(code, 1000);
                break;
            }
        }
    }
    assert!(
        frames.iter().any(|f| f["event_type"] == "call.completed"),
        "{frames:?}"
    );

    // The same over REST, on a finished call: refused clearly.
    let (status, body) = ts
        .post(
            &format!("/v1/calls/{id}/commands"),
            &ts.acme.api,
            &json!({"command": "end_call"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (409, Some("call_ended"))
    );
}

#[tokio::test]
async fn commands_without_a_runtime_fail_fast_and_rest_commands_work() {
    let ts = TestServer::start().await;
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();
    let started = std::time::Instant::now();
    let (status, body) = ts
        .post(
            &format!("/v1/calls/{id}/commands"),
            &ts.acme.api,
            &json!({"command": "send_dtmf", "digits": "1"}),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (503, Some("runtime_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it did not wait for a timeout"
    );
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    ws_send(&mut ws, &json!({"type": "end_call", "id": "x"})).await;
    let err = ws_json(&mut ws).await;
    assert_eq!(
        (err["id"].as_str(), err["error_code"].as_str()),
        (Some("x"), Some("runtime_unavailable"))
    );

    let _runtime = obedient_runtime(&ts).await;
    let (status, body) = ts
        .post(
            &format!("/v1/calls/{id}/commands"),
            &ts.acme.api,
            &json!({"command": "send_dtmf", "digits": "9"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"status": "done"})));
    assert_eq!(ws_json(&mut ws).await["payload"]["digits"], "9");
    for (body, code) in [
        (
            json!({"command": "send_dtmf", "digits": "z"}),
            "invalid_command",
        ),
        (json!({"command": "reboot"}), "invalid_request"),
        (json!({"command": "join_call"}), "invalid_request"),
    ] {
        let (status, err) = ts
            .post(&format!("/v1/calls/{id}/commands"), &ts.acme.api, &body)
            .await;
        assert_eq!(
            (status, err["error_code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, _) = ts
        .post(
            &format!("/v1/calls/{id}/commands"),
            &ts.acme.runtime,
            &json!({"command": "end_call"}),
        )
        .await;
    assert_eq!(status, 403, "a runtime key cannot control calls");
    let (status, _) = ts
        .post(
            &format!("/v1/calls/{id}/commands"),
            &ts.other.api,
            &json!({"command": "end_call"}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_flood_is_limited_without_closing_other_sockets() {
    let ts = TestServer::start_with(|c| c.ws_client_messages_per_sec = 20).await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let token = format!("token={}", ts.acme.api);
    let mut flooder = call_socket(&ts, id, &token).await;
    let mut bystander = call_socket(&ts, id, &token).await;
    for i in 0..200 {
        flooder
            .feed(WsMessage::Text(
                format!("{{\"type\":\"nope\",\"id\":\"m{i}\"}}").into(),
            ))
            .await
            .unwrap();
    }
    flooder.flush().await.unwrap();
    // Every message is answered, naming its id: the ones within the limit as the invalid
    // messages they are, the rest as rate limited. (The bucket refills while the flood is read,
    // so the split is "at least 20 carried out", not exact: the exact split, second by second,
    // is `routes::ws::tests`, on tokio's paused clock.)
    let mut invalid = 0;
    let mut limited = 0;
    let mut ids = std::collections::HashSet::new();
    while invalid + limited < 200 {
        let frame = ws_json(&mut flooder).await;
        assert!(
            ids.insert(frame["id"].as_str().unwrap().to_owned()),
            "one answer per message: {frame}"
        );
        match frame["error_code"].as_str() {
            Some("invalid_message") => invalid += 1,
            Some("rate_limited") => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        invalid >= 20 && limited >= 150,
        "{invalid} carried out, {limited} limited"
    );
    let refused = ts
        .metric("callstream_client_messages_rate_limited_total{surface=\"native_call_ws\"}")
        .await;
    assert_eq!(refused, f64::from(limited));
    // Both sockets still get the call's events.
    ts.ingest(id, transcription("user", "after the flood", true, "trn_1"))
        .await;
    assert_eq!(
        ws_json(&mut bystander).await["payload"]["text"],
        "after the flood"
    );
    assert_eq!(
        ws_json(&mut flooder).await["payload"]["text"],
        "after the flood"
    );
}

#[tokio::test]
async fn the_runtime_socket_ingests_and_refuses_clearly() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    assert_eq!(
        ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.api))
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(&ts.ws_url("/v1/runtime"), None).await.err(),
        Some(401)
    );
    let mut rt = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    ws_send(&mut rt, &json!({"type": "events", "ref": "r1", "call_id": id, "events": [transcription("user", "hi", true, "trn_1")]})).await;
    assert_eq!(
        ws_json(&mut rt).await,
        json!({"type": "accepted", "ref": "r1", "call_id": id, "seqs": [2]})
    );
    let cases = [
        (
            json!({"type": "events", "ref": "r2", "call_id": "call_nope", "events": []}),
            "not_found",
        ),
        (
            json!({"type": "events", "ref": "r3", "call_id": id, "events": {"event_type": "call.x", "payload": {}}}),
            "invalid_event",
        ),
        (json!({"type": "hello"}), "invalid_message"),
    ];
    for (message, code) in cases {
        ws_send(&mut rt, &message).await;
        let err = ws_json(&mut rt).await;
        assert_eq!(
            (err["type"].as_str(), err["error_code"].as_str()),
            (Some("error"), Some(code)),
            "{message}"
        );
    }
    // Decoded with the message in one pass, then refused by ingest's checks: each refusal
    // names the event and field as the careful path does.
    let read = json!({"event_type": "message.read", "payload": {"message_id": "m", "direction": "inbound", "status": "read"}});
    let cases = [
        (
            json!({"type": "events", "ref": "r4", "call_id": id, "events": [read]}),
            "events[0].event_type: message.read does not belong to a call",
        ),
        (
            json!({"type": "events", "ref": "r5", "call_id": id, "events": {"event_type": "call.dtmf", "payload": {"digits": "1"}, "timestamp": "noon"}}),
            "timestamp: ",
        ),
        (
            json!({"type": "events", "ref": "r6", "call_id": id, "events": [{"event_type": "call.dtmf", "payload": {"digits": "1"}}, {"payload": {"digits": "1x"}, "event_type": "call.dtmf"}]}),
            "events[1].payload.digits",
        ),
    ];
    for (message, expect) in cases {
        ws_send(&mut rt, &message).await;
        let err = ws_json(&mut rt).await;
        assert_eq!(
            (err["ref"].as_str(), err["error_code"].as_str()),
            (message["ref"].as_str(), Some("invalid_event")),
            "{message}"
        );
        let text = err["message"].as_str().unwrap_or_default();
        assert!(text.starts_with(expect), "{message}: {text}");
    }
    // The payload may come before its type; nothing refused above took a seq.
    ws_send(&mut rt, &json!({"type": "events", "ref": "r7", "call_id": id, "events": {"payload": {"digits": "5"}, "event_type": "call.dtmf"}})).await;
    assert_eq!(
        ws_json(&mut rt).await,
        json!({"type": "accepted", "ref": "r7", "call_id": id, "seqs": [3]})
    );
    // Another workspace's call is not found from this runtime.
    let mut other = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.other.runtime))
        .await
        .unwrap();
    ws_send(
        &mut other,
        &json!({"type": "events", "call_id": id, "events": [completed()]}),
    )
    .await;
    assert_eq!(ws_json(&mut other).await["error_code"], "not_found");
    // Binary messages are audio frames: a malformed one is refused by name, and the socket
    // stays open for the next message.
    rt.send(WsMessage::Binary(vec![0].into())).await.unwrap();
    let refused = ws_json(&mut rt).await;
    assert_eq!(refused["error_code"], "invalid_audio", "{refused}");
    ws_send(
        &mut rt,
        &json!({"type": "events", "ref": "r8", "call_id": id, "events": [{"event_type": "call.dtmf", "payload": {"digits": "1"}}]}),
    )
    .await;
    assert_eq!(ws_json(&mut rt).await["ref"], "r8");
}

#[tokio::test]
async fn a_burst_of_runtime_messages_gets_one_answer_each_in_order() {
    // The gateway writes answers to messages that are already waiting together; each message
    // must still get its own answer, in order, whatever sits between them.
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut rt = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let burst = 150; // more than one gathered write holds
    for i in 0..burst {
        let message = match i {
            40 => WsMessage::Text("{not json".into()),
            41 => WsMessage::Text(
                json!({"type": "events", "ref": "r41", "call_id": "call_nope", "events": []})
                    .to_string()
                    .into(),
            ),
            _ => WsMessage::Text(
                json!({"type": "events", "ref": format!("r{i}"), "call_id": id,
                       "events": transcription("user", &format!("part {i}"), false, "trn_b")})
                .to_string()
                .into(),
            ),
        };
        rt.feed(message).await.unwrap();
    }
    rt.flush().await.unwrap();
    let mut last_seq = 0;
    for i in 0..burst {
        let answer = ws_json(&mut rt).await;
        match i {
            40 => assert_eq!(
                (
                    answer["type"].as_str(),
                    answer["error_code"].as_str(),
                    answer.get("ref")
                ),
                (Some("error"), Some("invalid_message"), None),
                "{answer}"
            ),
            41 => assert_eq!(
                (answer["ref"].as_str(), answer["error_code"].as_str()),
                (Some("r41"), Some("not_found")),
                "{answer}"
            ),
            _ => {
                assert_eq!(answer["type"], "accepted", "{answer}");
                assert_eq!(answer["ref"], format!("r{i}"));
                let seq = answer["seqs"][0].as_u64().unwrap();
                assert_eq!(seq, last_seq.max(1) + 1, "seqs follow the messages' order");
                last_seq = seq;
            }
        }
    }
    // The socket is still in service after the burst.
    ws_send(
        &mut rt,
        &json!({"type": "events", "ref": "after", "call_id": id, "events": [completed()]}),
    )
    .await;
    let answer = ws_json(&mut rt).await;
    assert_eq!(
        (answer["type"].as_str(), answer["ref"].as_str()),
        (Some("accepted"), Some("after"))
    );
}

#[tokio::test]
async fn a_burst_for_many_calls_keeps_each_calls_order_and_refuses_what_follows_an_end() {
    // On a cluster the messages waiting on a runtime socket are appended together, several
    // calls in one transaction; every answer must still be the one the message would get alone.
    let ts = TestServer::start().await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(
            ts.create_call("sip").await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut sse = transcript_stream(&ts, &ids[0], &ts.acme.api, None).await;
    let mut rt = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    // 10 rounds over the 12 calls; call 5 ends in round 3, and is sent more after that.
    let mut sent = Vec::new();
    for round in 0..10 {
        for (c, id) in ids.iter().enumerate() {
            let events = if c == 5 && round == 3 {
                json!([transcription("user", "bye", true, "trn_end"), completed()])
            } else {
                transcription("user", &format!("r{round}"), true, &format!("trn_{round}"))
            };
            let reference = format!("c{c}r{round}");
            rt.feed(WsMessage::Text(
                json!({"type": "events", "ref": reference, "call_id": id, "events": events})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            sent.push((c, round, reference));
        }
    }
    rt.flush().await.unwrap();
    let mut next_seq = vec![2u64; ids.len()]; // call.started holds seq 1
    for (c, round, reference) in &sent {
        let answer = ws_json(&mut rt).await;
        assert_eq!(
            answer["ref"],
            json!(reference),
            "answers in message order: {answer}"
        );
        if *c == 5 && *round > 3 {
            assert_eq!(
                (answer["type"].as_str(), answer["error_code"].as_str()),
                (Some("error"), Some("call_ended")),
                "{answer}"
            );
            continue;
        }
        assert_eq!(answer["type"], "accepted", "{answer}");
        let seqs: Vec<u64> = answer["seqs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        let want: Vec<u64> = (next_seq[*c]..next_seq[*c] + seqs.len() as u64).collect();
        assert_eq!(seqs, want, "call {c}'s seqs follow its messages: {answer}");
        next_seq[*c] += seqs.len() as u64;
    }
    // Call 0's stream saw its ten turns in order; the stored transcripts hold every turn.
    for round in 0..10 {
        let frame = sse.next_data().await.unwrap();
        assert_eq!(frame.json()["text"], format!("r{round}"));
    }
    let (_, ended) = ts
        .get(&format!("/v1/calls/{}/transcript", ids[5]), &ts.acme.api)
        .await;
    let texts: Vec<&str> = ended["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["r0", "r1", "r2", "bye"]);
}

#[tokio::test]
async fn a_runtime_may_ask_for_answers_to_refusals_only() {
    let ts = TestServer::start().await;
    for query in ["acks=every", "acks=", "colour=red"] {
        let url = ts.ws_url(&format!("/v1/runtime?{query}"));
        assert_eq!(
            ws_connect(&url, Some(&ts.acme.runtime)).await.err(),
            Some(400),
            "{query}"
        );
    }
    let call = ts.create_call("webrtc").await;
    let id = call["id"].as_str().unwrap();
    let mut rt = ws_connect(
        &ts.ws_url("/v1/runtime?acks=errors"),
        Some(&ts.acme.runtime),
    )
    .await
    .unwrap();
    let good = |i: usize| {
        json!({"type": "events", "ref": format!("r{i}"), "call_id": id,
               "events": transcription("user", &format!("part {i}"), false, "trn_a")})
    };
    for i in 0..3 {
        ws_send(&mut rt, &good(i)).await;
    }
    ws_send(
        &mut rt,
        &json!({"type": "events", "ref": "bad", "call_id": id, "events": {"event_type": "call.dtmf", "payload": {}}}),
    )
    .await;
    ws_send(&mut rt, &good(3)).await;
    ws_send(
        &mut rt,
        &json!({"type": "events", "ref": "bad2", "call_id": "call_nope", "events": []}),
    )
    .await;
    // The first two frames back are the two refusals: accepted messages are not answered.
    for (reference, code) in [("bad", "invalid_event"), ("bad2", "not_found")] {
        let answer = ws_json(&mut rt).await;
        assert_eq!(
            (
                answer["type"].as_str(),
                answer["ref"].as_str(),
                answer["error_code"].as_str()
            ),
            (Some("error"), Some(reference), Some(code)),
            "{answer}"
        );
    }
    // Every good message was ingested all the same: call.started and four partials.
    let (_, after) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(after["last_seq"], 5, "{after}");
}

#[tokio::test]
async fn stream_tokens_watch_one_call_briefly_and_nothing_else() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let other_call = ts.create_call("sip").await;
    let (status, minted) = ts
        .post("/v1/stream-tokens", &ts.acme.api, &json!({"call_id": id}))
        .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    assert!(token.starts_with("st_"));
    let expires = callstream_core::time::parse(minted["expires_at"].as_str().unwrap()).unwrap();
    let ttl = (expires - callstream_core::time::now()).num_seconds();
    assert!((290..=300).contains(&ttl), "default 5 minutes, got {ttl}");

    // Watches its call over both browser paths, but may not control it.
    let mut ws = call_socket(&ts, id, &format!("token={token}")).await;
    ws_send(&mut ws, &json!({"type": "end_call", "id": "c1"})).await;
    assert_eq!(ws_json(&mut ws).await["error_code"], "forbidden");
    let sse = crate::support::SseReader::open(
        ts.http
            .get(ts.url(&format!("/v1/calls/{id}/transcript/stream?token={token}"))),
    )
    .await;
    assert_eq!(sse.status, 200);
    // Nowhere else, and not for another call.
    let r = ts
        .http
        .get(ts.url("/v1/calls"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let other_id = other_call["id"].as_str().unwrap();
    assert_eq!(
        ws_connect(
            &ts.ws_url(&format!("/v1/calls/{other_id}/stream?token={token}")),
            None
        )
        .await
        .err(),
        Some(404)
    );
    // Refused requests for tokens.
    for (body, status) in [
        (json!({"call_id": id, "ttl_secs": 0}), 400),
        (json!({"call_id": id, "ttl_secs": 999_999}), 400),
        (json!({"call_id": "call_nope"}), 404),
        (json!({"call_id": other_id, "extra": 1}), 400),
    ] {
        assert_eq!(
            ts.post("/v1/stream-tokens", &ts.acme.api, &body).await.0,
            status,
            "{body}"
        );
    }
    assert_eq!(
        ts.post("/v1/stream-tokens", &ts.other.api, &json!({"call_id": id}))
            .await
            .0,
        404
    );

    // A short token: the open socket closes with 1008 when it expires, and it is refused after.
    let (_, short) = ts
        .post(
            "/v1/stream-tokens",
            &ts.acme.api,
            &json!({"call_id": id, "ttl_secs": 1}),
        )
        .await;
    let short = short["token"].as_str().unwrap();
    let mut brief = call_socket(&ts, id, &format!("token={short}")).await;
    assert_eq!(ws_next(&mut brief).await, WsEvent::Close(1008));
    assert_eq!(
        ws_connect(
            &ts.ws_url(&format!("/v1/calls/{id}/stream?token={short}")),
            None
        )
        .await
        .err(),
        Some(401)
    );
}

#[tokio::test]
async fn a_finished_call_closes_1000_after_what_since_asks_for_even_after_a_restart() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    ts.ingest(
        &id,
        json!([transcription("user", "a", true, "trn_1"), completed()]),
    )
    .await;
    let token = format!("token={}", ts.acme.api);

    // Nothing live to watch: how it ended (the terminal event, kept with the call), then 1000.
    let mut fresh = call_socket(&ts, &id, &token).await;
    let end = ws_json(&mut fresh).await;
    assert_eq!(
        (end["seq"].as_u64(), end["event_type"].as_str()),
        (Some(3), Some("call.completed")),
        "{end}"
    );
    assert_eq!(ws_next(&mut fresh).await, WsEvent::Close(1000));
    let mut past = call_socket(&ts, &id, &format!("{token}&since=3")).await;
    assert_eq!(
        ws_next(&mut past).await,
        WsEvent::Close(1000),
        "nothing after seq 3"
    );
    let mut resumed = call_socket(&ts, &id, &format!("{token}&since=1")).await;
    assert_eq!(ws_json(&mut resumed).await["seq"], 2);
    assert_eq!(ws_json(&mut resumed).await["event_type"], "call.completed");
    assert_eq!(ws_next(&mut resumed).await, WsEvent::Close(1000));

    // After a restart, embedded, the history is gone: the gap up to the end is said, then the
    // end itself (kept with the call), then the close. On NATS the history outlives the
    // process: the same events, then the close.
    let ts = ts.restart().await;
    let token = format!("token={}", ts.acme.api);
    let mut late = call_socket(&ts, &id, &format!("{token}&since=1")).await;
    if ts.cluster.is_some() {
        assert_eq!(ws_json(&mut late).await["seq"], 2);
        assert_eq!(ws_json(&mut late).await["event_type"], "call.completed");
    } else {
        let gap = ws_json(&mut late).await;
        assert_eq!(
            (gap["type"].as_str(), gap["error_code"].as_str()),
            (Some("error"), Some("resume_gap")),
            "{gap}"
        );
        assert!(
            gap["message"].as_str().unwrap().contains("up to 2 "),
            "{gap}"
        );
        assert_eq!(ws_json(&mut late).await["event_type"], "call.completed");
    }
    assert_eq!(ws_next(&mut late).await, WsEvent::Close(1000));
}

#[tokio::test]
async fn a_resume_gap_on_a_live_call_is_said_then_live_events_follow() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    ts.ingest(
        &id,
        json!([
            transcription("user", "a", true, "trn_1"),
            transcription("user", "b", true, "trn_2")
        ]),
    )
    .await;
    let ts = ts.restart().await;
    let mut ws = call_socket(&ts, &id, &format!("token={}&since=1", ts.acme.api)).await;
    if ts.cluster.is_some() {
        // On NATS the history outlived the restart, and the store numbers every event (no
        // reserved block was lost with the process): no gap at all.
        assert_eq!(ws_json(&mut ws).await["seq"], 2);
        ts.ingest(&id, transcription("user", "c", true, "trn_3"))
            .await;
        assert_eq!(ws_json(&mut ws).await["seq"], 3);
        return;
    }
    let gap = ws_json(&mut ws).await;
    assert_eq!(gap["error_code"], "resume_gap");
    assert!(
        gap["message"]
            .as_str()
            .unwrap()
            .contains("after seq 1 up to 3"),
        "{gap}"
    );
    ts.ingest(&id, transcription("user", "c", true, "trn_3"))
        .await;
    assert_eq!(ws_json(&mut ws).await["seq"], 4);
}

#[tokio::test]
async fn a_silent_runtime_times_out_and_commands_in_flight_are_limited() {
    let ts = TestServer::start_with(|c| {
        c.command_timeout_secs = 1;
        c.ws_max_commands_in_flight = 2;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let _silent = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    for i in 0..3 {
        ws_send(
            &mut ws,
            &json!({"type": "send_dtmf", "id": format!("c{i}"), "digits": "1"}),
        )
        .await;
    }
    let third = ws_json(&mut ws).await;
    assert_eq!(
        (third["id"].as_str(), third["error_code"].as_str()),
        (Some("c2"), Some("too_many_commands"))
    );
    let mut timed_out = [ws_json(&mut ws).await, ws_json(&mut ws).await];
    timed_out.sort_by_key(|f| f["id"].as_str().unwrap().to_owned());
    for (frame, id) in timed_out.iter().zip(["c0", "c1"]) {
        assert_eq!(
            (frame["id"].as_str(), frame["error_code"].as_str()),
            (Some(id), Some("runtime_timeout")),
            "{frame}"
        );
    }
    assert_eq!(
        ts.metric("callstream_commands_total{outcome=\"timeout\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_runtime_that_leaves_mid_command_or_refuses_is_reported() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;

    // It refuses.
    let mut rt = ws_connect(&ts.ws_url("/v1/runtime"), Some(&ts.acme.runtime))
        .await
        .unwrap();
    ws_send(
        &mut ws,
        &json!({"type": "join_call", "id": "j", "user_id": "usr_1"}),
    )
    .await;
    let command = ws_json(&mut rt).await;
    assert_eq!(
        (
            command["type"].as_str(),
            command["command"].as_str(),
            command["user_id"].as_str()
        ),
        (Some("command"), Some("join_call"), Some("usr_1"))
    );
    ws_send(&mut rt, &json!({"type": "command_result", "command_id": command["command_id"], "ok": false, "error_code": "no_agents", "message": "nobody is free"})).await;
    let refused = ws_json(&mut ws).await;
    assert_eq!(
        (refused["id"].as_str(), refused["error_code"].as_str()),
        (Some("j"), Some("command_refused"))
    );
    assert!(
        refused["message"].as_str().unwrap().contains("no_agents"),
        "{refused}"
    );

    // Answering it again, or a command it was never sent, is refused by name: nobody waits.
    for id in [command["command_id"].as_str().unwrap(), "cmd_never_sent"] {
        ws_send(
            &mut rt,
            &json!({"type": "command_result", "command_id": id, "ok": true}),
        )
        .await;
        let answer = ws_json(&mut rt).await;
        assert_eq!(
            (answer["type"].as_str(), answer["error_code"].as_str()),
            (Some("error"), Some("unknown_command")),
            "{answer}"
        );
        assert!(answer["message"].as_str().unwrap().contains(id), "{answer}");
    }

    // It leaves with a command in hand: the client hears at once, not after the timeout.
    ws_send(&mut ws, &json!({"type": "end_call", "id": "e"})).await;
    let _ = ws_json(&mut rt).await;
    let started = std::time::Instant::now();
    drop(rt);
    let gone = ws_json(&mut ws).await;
    assert_eq!(
        (gone["id"].as_str(), gone["error_code"].as_str()),
        (Some("e"), Some("runtime_unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it did not wait for the 5 s timeout"
    );
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_closed_1008() {
    let ts = TestServer::start_with(|c| {
        c.ws_client_messages_per_sec = 5;
        c.ws_flood_close_secs = 1;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let mut bystander = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    let ws = call_socket(&ts, id, &format!("token={}", ts.acme.api)).await;
    // 100 messages a second, bounded to 5 s; the socket is closed after about 2.
    assert_eq!(
        flood_until_closed(ws, |i| {
            WsMessage::Text(format!("{{\"type\":\"x\",\"id\":\"{i}\"}}").into())
        })
        .await,
        Some(1008)
    );
    ts.ingest(id, transcription("user", "still here", true, "trn_1"))
        .await;
    assert_eq!(
        ws_json(&mut bystander).await["payload"]["text"],
        "still here",
        "others are untouched"
    );
}

#[tokio::test]
async fn stream_tokens_are_refused_where_they_do_not_belong() {
    let ts = TestServer::start().await;
    let call = ts.create_call("sip").await;
    let other = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap();
    let (_, minted) = ts
        .post(
            "/v1/stream-tokens",
            &ts.acme.api,
            &json!({"call_id": id, "ttl_secs": 1}),
        )
        .await;
    let token = minted["token"].as_str().unwrap();
    let sse = |path: String, bearer: bool| {
        let req = ts.http.get(ts.url(&path));
        let req = if bearer { req.bearer_auth(token) } else { req };
        crate::support::SseReader::open(req)
    };
    assert_eq!(
        sse(
            format!(
                "/v1/calls/{}/transcript/stream?token={token}",
                other["id"].as_str().unwrap()
            ),
            false
        )
        .await
        .status,
        404
    );
    let (status, _) = ts
        .post(
            "/v1/conversations",
            &ts.acme.runtime,
            &json!({"channel": "sms", "participants": ["+14155550123"]}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, list) = ts.get("/v1/conversations", &ts.acme.api).await;
    let conv = list["conversations"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sse(format!("/v1/conversations/{conv}/stream"), true)
            .await
            .status,
        401,
        "not a browser path"
    );
    // Its SSE stream ends with token_expired when it runs out.
    let mut s = sse(
        format!("/v1/calls/{id}/transcript/stream?token={token}"),
        false,
    )
    .await;
    assert_eq!(s.status, 200);
    let end = s.next_data().await.unwrap();
    assert_eq!(
        (end.event.as_deref(), end.json()["error_code"].as_str()),
        (Some("error"), Some("token_expired"))
    );
    assert_eq!(s.next().await, None);
}

#[tokio::test]
async fn a_runtime_whose_inbox_is_full_is_busy_not_gone() {
    // A runtime that is connected but reads nothing: once its socket and its inbox are full,
    // commands are refused at once as `runtime_busy` (retryable, with Retry-After), not as
    // `runtime_unavailable`.
    let ts = TestServer::start_with(|c| {
        c.socket_send_buffer_bytes = 4096;
        c.command_timeout_secs = 3;
    })
    .await;
    let call = ts.create_call("sip").await;
    let id = call["id"].as_str().unwrap().to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(ts.base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ts.ws_url("/v1/runtime"),
        )
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", ts.acme.runtime).parse().unwrap(),
    );
    let (mut runtime, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    // It serves the call (it sent an event for it), then never reads again.
    runtime
        .send(WsMessage::Text(
            json!({"type": "events", "call_id": id, "events": transcription("user", "hi", false, "trn_1")})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut asks = Vec::new();
    for i in 0..600 {
        let (http, url, key) = (
            ts.http.clone(),
            ts.url(&format!("/v1/calls/{id}/commands")),
            ts.acme.api.clone(),
        );
        asks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({"command": "send_dtmf", "digits": format!("{}", i % 10)}))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            (
                status,
                body["error_code"].as_str().unwrap_or_default().to_owned(),
                retry,
            )
        }));
    }
    let mut busy = 0;
    for ask in asks {
        let (status, code, retry) = ask.await.unwrap();
        assert_ne!(
            code, "runtime_unavailable",
            "a connected runtime reported as gone"
        );
        if code == "runtime_busy" {
            assert_eq!((status, retry.as_deref()), (503, Some("1")));
            busy += 1;
        } else {
            assert_eq!((status, code.as_str()), (504, "runtime_timeout"));
        }
    }
    assert!(busy > 0, "the inbox never filled");
    // The gateway is unharmed: another call's stream and the REST API still answer.
    let (status, _) = ts.get(&format!("/v1/calls/{id}"), &ts.acme.api).await;
    assert_eq!(status, 200);
    drop(runtime);
}
