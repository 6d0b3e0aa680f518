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
