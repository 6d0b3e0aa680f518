//! Faults of a cluster, against real servers the tests stop and start (the cluster suite only):
//! NATS restarted under load, the database unreachable, a node killed with `kill -9`.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    TestServer, Ws, call_socket, clustered, obedient_runtime, transcript_stream, transcription,
    ws_connect, ws_json,
};

/// Ingests `event` at `ts` the way a runtime does: again after a refusal (bounded), until it is
/// accepted. Returns how many refusals it took, with their error codes.
async fn ingest_until_accepted(
    ts: &TestServer,
    id: &str,
    event: &serde_json::Value,
) -> Vec<String> {
    ingest_at(
        &ts.http,
        &ts.url(&format!("/v1/calls/{id}/events")),
        &ts.acme.runtime,
        event,
    )
    .await
}

async fn ingest_at(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    event: &serde_json::Value,
) -> Vec<String> {
    let mut refusals = Vec::new();
    for _ in 0..300 {
        let r = http
            .post(url)
            .bearer_auth(key)
            .json(event)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match r {
            Ok(r) if r.status().as_u16() == 202 => return refusals,
            Ok(r) => {
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                assert_eq!(status, 503, "only 503 may refuse during an outage: {body}");
                refusals.push(body["error_code"].as_str().unwrap_or_default().to_owned());
            }
            Err(e) => refusals.push(format!("transport: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{event} was never accepted: {refusals:?}");
}

#[tokio::test]
async fn nats_restarted_under_load_loses_nothing_accepted_and_streams_stay_open() {
    let a = TestServer::start().await;
    if !clustered(&a, "nats_restarted_under_load") {
        return;
    }
    let b = a.another_node().await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse_at_b = transcript_stream(&b, &id, &b.acme.api, None).await;
    let mut ws_at_b = call_socket(&b, &id, &format!("token={}", b.acme.api)).await;

    let cluster = a.cluster.clone().unwrap();
    let runtime = {
        let url = a.url(&format!("/v1/calls/{id}/events"));
        let (http, key) = (a.http.clone(), a.acme.runtime.clone());
        tokio::spawn(async move {
            let mut refused = std::collections::HashMap::new();
            for n in 1..=60 {
                let event = transcription("user", &format!("t{n}"), true, &format!("trn_{n}"));
                let refusals = ingest_at(&http, &url, &key, &event).await;
                if !refusals.is_empty() {
                    refused.insert(format!("t{n}"), refusals);
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            refused
        })
    };
    // Let some through, then take NATS away for three seconds (longer than a publish waits for
    // its acknowledgement), and bring it back.
    let mut texts: Vec<(u64, String)> = Vec::new();
    let mut next = async |texts: &mut Vec<(u64, String)>| {
        let frame = sse_at_b
            .next_data()
            .await
            .expect("the stream stayed open across the outage");
        let seq = frame.id.as_deref().unwrap().parse().unwrap();
        texts.push((seq, frame.json()["text"].as_str().unwrap().to_owned()));
    };
    while texts.len() < 15 {
        next(&mut texts).await;
    }
    cluster.nats.lock().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nats.lock().unwrap().restart();
    while texts.last().is_none_or(|(_, t)| t != "t60") {
        next(&mut texts).await;
    }
    let refused = runtime.await.unwrap();
    for node in [&a, &b] {
        assert!(node.metric("callstream_nats_disconnects_total").await >= 1.0);
        assert!(node.metric("callstream_nats_reconnects_total").await >= 1.0);
    }
    assert!(
        refused.values().flatten().any(|r| r == "bus_unavailable"),
        "the outage was never felt: {refused:?}"
    );
    // Every accepted event arrived, in order, on the same connection, under rising seqs. An
    // attempt that was refused may still have reached subscribers (a publish that timed out
    // can land later); then that text shows twice, under two seqs, and never otherwise.
    let mut firsts = Vec::new();
    for (seq, text) in &texts {
        if firsts.contains(text) {
            assert!(
                refused.contains_key(text),
                "{text} twice though never refused: {texts:?}"
            );
        } else {
            firsts.push(text.clone());
        }
        let _ = seq;
    }
    assert_eq!(
        firsts,
        (1..=60).map(|n| format!("t{n}")).collect::<Vec<_>>()
    );
    assert!(
        texts.windows(2).all(|w| w[1].0 > w[0].0),
        "seqs rise: {texts:?}"
    );
    // The socket saw the same rising seqs.
    for (seq, _) in &texts {
        assert_eq!(ws_json(&mut ws_at_b).await["seq"].as_u64(), Some(*seq));
    }
}

#[tokio::test]
async fn the_database_unreachable_fails_readiness_and_ingest_clearly_and_streams_wait() {
    let a = TestServer::start().await;
    if !clustered(&a, "the_database_unreachable") {
        return;
    }
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse = transcript_stream(&a, &id, &a.acme.api, None).await;
    a.ingest(&id, transcription("user", "before", true, "trn_1"))
        .await;
    assert_eq!(sse.next_data().await.unwrap().json()["text"], "before");

    let cluster = a.cluster.clone().unwrap();
    let admin = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&callstream_store::testing::admin_url())
            .await
            .unwrap()
    };
    let mut admin = admin;
    let name = cluster.db.name.clone();
    // The database refuses connections, and the gateway's are cut.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();

    let r = a.http.get(a.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "store_unavailable"
    );
    let (status, body) = a
        .post(
            &format!("/v1/calls/{id}/events"),
            &a.acme.runtime,
            &transcription("user", "lost?", true, "trn_2"),
        )
        .await;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (503, Some("store_unavailable")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was recorded"),
        "{body}"
    );

    // Back: the same stream (never closed) gets what is ingested now, and nothing refused
    // was half-recorded.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if a.http
            .get(a.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "never ready again");
    ingest_until_accepted(&a, &id, &transcription("user", "after", true, "trn_3")).await;
    let frame = sse.next_data().await.unwrap();
    assert_eq!(frame.json()["text"], "after");
    assert_eq!(
        frame.id.as_deref(),
        Some("3"),
        "the refused event took no seq"
    );
    let (_, transcript) = a
        .get(&format!("/v1/calls/{id}/transcript"), &a.acme.api)
        .await;
    let texts: Vec<&str> = transcript["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["before", "after"]);
}

#[tokio::test]
async fn a_node_killed_with_sigkill_hands_its_clients_and_runtime_to_the_others() {
    let b = TestServer::start().await;
    if !clustered(&b, "a_node_killed_with_sigkill") {
        return;
    }
    let c = b.another_node().await;
    let (a, mut process) = b.process_node().await;
    // The runtime is connected to A (a process of its own); a client watches at A.
    let runtime_at_a = obedient_runtime(&a).await;
    let id = a.create_call("sip").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut at_a = transcript_stream(&a, &id, &a.acme.api, None).await;
    for n in 1..=3 {
        a.ingest(
            &id,
            transcription("user", &format!("t{n}"), true, &format!("trn_{n}")),
        )
        .await;
    }
    let mut last_id = 0u64;
    for _ in 1..=3 {
        last_id = at_a.next_data().await.unwrap().id.unwrap().parse().unwrap();
    }
    // A command asked at C reaches the runtime at A.
    let (status, body) = c
        .post(
            &format!("/v1/calls/{id}/commands"),
            &c.acme.api,
            &json!({"command": "send_dtmf", "digits": "1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    process.start_kill().unwrap();
    process.wait().await.unwrap();
    runtime_at_a.abort();
    // The call goes on at B; the client resumes there and misses nothing.
    for n in 4..=6 {
        b.ingest(
            &id,
            transcription("agent", &format!("t{n}"), true, &format!("trn_{n}")),
        )
        .await;
    }
    let mut resumed = transcript_stream(&b, &id, &b.acme.api, Some(last_id)).await;
    for n in 4..=6 {
        assert_eq!(
            resumed.next_data().await.unwrap().json()["text"],
            format!("t{n}")
        );
    }
    // The runtime reconnects at B, and commands asked at C follow it there.
    let _runtime_at_b = obedient_runtime(&b).await;
    let mut ws = call_socket(&c, &id, &format!("token={}", c.acme.api)).await;
    let mut ok = false;
    for attempt in 0..20 {
        let (status, _) = c
            .post(
                &format!("/v1/calls/{id}/commands"),
                &c.acme.api,
                &json!({"command": "send_dtmf", "digits": "2"}),
            )
            .await;
        if status == 200 {
            ok = true;
            break;
        }
        // A's subscriptions vanish with its connection; NATS notices within moments.
        assert!(
            attempt < 19,
            "commands never reached the runtime at B (last {status})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ok);
    loop {
        let event = ws_json(&mut ws).await;
        if event["event_type"] == "call.dtmf" && event["payload"]["digits"] == "2" {
            break;
        }
    }
}
