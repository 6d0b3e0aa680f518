//! The simulator drives realistic calls through the real ingest API.

use callstream_simulator::{RunOptions, Runtime};
use tokio_util::sync::CancellationToken;

use crate::support::{TestServer, transcript_stream};

#[tokio::test]
async fn simulated_calls_flow_through_ingest_to_the_transcript_stream() {
    let ts = TestServer::start().await;
    let runtime = Runtime::new(&ts.base, &ts.acme.runtime).unwrap();
    let stop = CancellationToken::new();

    // Watch one call live while it plays at 50x speed.
    let plan = callstream_simulator::script(11);
    let call = runtime.create_call(&plan).await.unwrap();
    let mut s = transcript_stream(&ts, &call.id, &ts.acme.api, None).await;
    for step in &plan.steps {
        runtime.send(&call.id, &step.events).await.unwrap();
    }
    let mut partial_then_final = false;
    let mut last_partial_turn = None;
    while let Some(frame) = s.next_data().await {
        let turn = frame.json();
        if turn["is_final"] == false {
            last_partial_turn = Some(turn["turn_id"].clone());
        } else if last_partial_turn.as_ref() == Some(&turn["turn_id"]) {
            partial_then_final = true;
        }
    }
    assert!(
        partial_then_final,
        "a partial and then its final, sharing turn_id"
    );

    // And a batch of whole calls, played as fast as possible.
    let options = RunOptions {
        calls: Some(6),
        rate: 100.0,
        speed: f64::INFINITY,
        seed: 5,
        conversations: true,
    };
    let report = callstream_simulator::run(&runtime, &options, &stop).await;
    assert_eq!((report.completed, report.failed), (6, 0));
    let (_, list) = ts.get("/v1/calls?limit=10", &ts.acme.api).await;
    let calls = list["calls"].as_array().unwrap();
    assert_eq!(
        calls.len(),
        5,
        "the watched call and four of the six; the other two are conversations"
    );
    for c in calls {
        assert_ne!(c["status"], "in_progress", "{c}");
        let (_, t) = ts
            .get(
                &format!("/v1/calls/{}/transcript", c["id"].as_str().unwrap()),
                &ts.acme.api,
            )
            .await;
        assert!(t["turns"].as_array().unwrap().len() >= 6);
    }
    let (_, list) = ts.get("/v1/conversations", &ts.acme.api).await;
    let conversations = list["conversations"].as_array().unwrap();
    assert_eq!(conversations.len(), 2);
    for c in conversations {
        let (_, full) = ts
            .get(
                &format!("/v1/conversations/{}", c["id"].as_str().unwrap()),
                &ts.acme.api,
            )
            .await;
        let messages = full["messages"].as_array().unwrap();
        assert!(messages.len() >= 4, "{full}");
        assert!(
            messages
                .iter()
                .any(|m| m["direction"] == "outbound" && m["status"] == "read"),
            "{full}"
        );
    }
}

/// The simulator serves commands over the runtime socket: DTMF becomes `call.dtmf`, a join
/// becomes `call.transferred`, and an end becomes `call.completed` and stops the script.
#[tokio::test]
async fn the_simulator_obeys_commands() {
    use crate::support::{WsEvent, ws_connect, ws_json, ws_next, ws_send};
    use serde_json::json;

    let ts = TestServer::start().await;
    let runtime = Runtime::new(&ts.base, &ts.acme.runtime).unwrap();
    let stop = CancellationToken::new();
    runtime.serve_commands(stop.clone()).await.unwrap();
    let plan = callstream_simulator::script::long_script(3, 50);
    let call = runtime.create_call(&plan).await.unwrap();
    let player = {
        let (runtime, call, stop) = (runtime.clone(), call.clone(), stop.clone());
        tokio::spawn(async move { runtime.play_created(&call, &plan, 1.0, &stop).await })
    };
    let mut ws = ws_connect(
        &ts.ws_url(&format!(
            "/v1/calls/{}/stream?token={}",
            call.id, ts.acme.api
        )),
        None,
    )
    .await
    .unwrap();
    let wait_for = async |ws: &mut crate::support::Ws, id: &str, event_type: &str| {
        let (mut acked, mut seen) = (false, false);
        while !(acked && seen) {
            let frame = ws_json(ws).await;
            acked |= frame == json!({"type": "ack", "id": id});
            seen |= frame["event_type"] == event_type
                && (event_type != "call.dtmf" || frame["payload"]["digits"] == "7");
            assert_ne!(frame["type"], "error", "{frame}");
        }
    };
    ws_send(
        &mut ws,
        &json!({"type": "send_dtmf", "id": "d", "digits": "7"}),
    )
    .await;
    wait_for(&mut ws, "d", "call.dtmf").await;
    ws_send(
        &mut ws,
        &json!({"type": "join_call", "id": "j", "user_id": "usr_9"}),
    )
    .await;
    wait_for(&mut ws, "j", "call.transferred").await;
    ws_send(&mut ws, &json!({"type": "end_call", "id": "e"})).await;
    wait_for(&mut ws, "e", "call.completed").await;
    loop {
        if let WsEvent::Close(code) = ws_next(&mut ws).await {
            assert_eq!(code, 1000);
            break;
        }
    }
    player.await.unwrap().unwrap();
    let (_, got) = ts
        .get(&format!("/v1/calls/{}", call.id), &ts.acme.api)
        .await;
    assert_eq!(got["status"], "completed");
}

/// Root mean square of mu-law bytes, decoded.
fn level(mulaw: &[u8]) -> f64 {
    let sum: f64 = mulaw
        .iter()
        .map(|b| f64::from(callstream_audio::g711::decode_mulaw(*b)).powi(2))
        .sum();
    (sum / mulaw.len().max(1) as f64).sqrt()
}

#[tokio::test]
async fn simulated_calls_speak_in_real_time_while_their_turns_are_spoken() {
    use crate::audio_streams::Service;
    use base64::Engine;
    let ts = TestServer::start().await;
    let mut service = Service::start().await;
    let runtime = Runtime::new(&ts.base, &ts.acme.runtime)
        .unwrap()
        .with_audio(callstream_simulator::audio::Source::Synth);
    let stop = CancellationToken::new();
    runtime.serve_commands(stop.clone()).await.unwrap();
    let plan = callstream_simulator::script(5);
    let spans = callstream_simulator::audio::spans(&plan, 1.0);
    let call = runtime.create_call(&plan).await.unwrap();
    ts.start_stream(
        &call.id,
        serde_json::json!({"service_url": service.url, "content_type": "audio/x-mulaw;rate=8000"}),
    )
    .await;
    let playing = {
        let (runtime, stop, call) = (runtime.clone(), stop.clone(), call.clone());
        tokio::spawn(async move { runtime.play_created(&call, &plan, 1.0, &stop).await })
    };
    let mut conn = service.next_conn().await;
    conn.next_event("start").await;
    // Up to the end of the caller's first turn, and a little more.
    let until = spans
        .iter()
        .find(|s| s.speaker == callstream_simulator::audio::Speaker::User)
        .unwrap()
        .end
        + std::time::Duration::from_millis(200);
    let frames = (until.as_millis() / 20) as usize;
    let mut levels = Vec::new();
    while levels.len() < frames {
        let (_, m) = conn.next_event("media").await;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload.len(), 160);
        levels.push(level(&payload));
    }
    stop.cancel();
    let _ = playing.await;
    let loud = levels.iter().filter(|l| **l > 500.0).count();
    let quiet = levels.iter().filter(|l| **l < 30.0).count();
    // The caller spoke (in syllables) during its turn, and the line was quiet before it.
    assert!(
        loud >= 10,
        "{loud} loud frames of {}: {levels:?}",
        levels.len()
    );
    assert!(
        quiet >= 10,
        "{quiet} quiet frames of {}: {levels:?}",
        levels.len()
    );
}

#[tokio::test]
async fn the_simulator_plays_the_audio_it_is_sent_and_reports_it_as_the_outbound_track() {
    use crate::audio_streams::Service;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ts = TestServer::start().await;
    let mut speaker = Service::start().await;
    let mut listener = Service::start().await;
    let runtime = Runtime::new(&ts.base, &ts.acme.runtime)
        .unwrap()
        .with_audio(callstream_simulator::audio::Source::Synth);
    let stop = CancellationToken::new();
    runtime.serve_commands(stop.clone()).await.unwrap();
    // A call in which nobody speaks for ten seconds: what the caller hears is only what is
    // played into the call.
    let plan = callstream_simulator::CallPlan {
        phone: "+14155550199".into(),
        direction: "inbound",
        transport: "sip",
        external_id: None,
        steps: vec![callstream_simulator::Step {
            delay: std::time::Duration::from_secs(10),
            events: vec![callstream_simulator::script::event(
                "call.completed",
                serde_json::json!({"reason": "hangup"}),
            )],
        }],
    };
    let call = runtime.create_call(&plan).await.unwrap();
    let playing = {
        let (runtime, stop, call, plan) =
            (runtime.clone(), stop.clone(), call.clone(), plan.clone());
        tokio::spawn(async move { runtime.play_created(&call, &plan, 1.0, &stop).await })
    };
    ts.start_stream(
        &call.id,
        serde_json::json!({"service_url": speaker.url, "bidirectional": true}),
    )
    .await;
    ts.start_stream(
        &call.id,
        serde_json::json!({"service_url": listener.url, "audio_track": "outbound", "content_type": "audio/x-mulaw;rate=8000"}),
    )
    .await;
    let speaker = {
        let mut conn = speaker.next_conn().await;
        conn.next_event("start").await;
        conn
    };
    let mut heard = listener.next_conn().await;
    heard.next_event("start").await;
    // Half a second of a loud tone.
    let tone: Vec<u8> = crate::audio_streams::tone(500.0, 4000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    speaker.send(&serde_json::json!({"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": b64.encode(&tone)}}));
    let mut loud = 0;
    for _ in 0..150 {
        let (_, m) = heard.next_event("media").await;
        assert_eq!(m["media"]["track"], "outbound");
        let payload = b64.decode(m["media"]["payload"].as_str().unwrap()).unwrap();
        if level(&payload) > 3000.0 {
            loud += 1;
        }
    }
    stop.cancel();
    let _ = playing.await;
    // The tone's 25 frames came back as what the caller heard (give or take the edges).
    assert!((22..=26).contains(&loud), "{loud} loud frames");
}
