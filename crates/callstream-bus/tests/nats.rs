//! The NATS bus against a real `nats-server` of each test's own (see `callstream_bus::testing`):
//! the bus contract, several nodes on one server, resume from JetStream past a node's memory,
//! and a server restart under a live subscription.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use callstream_bus::conformance::{self, WAIT, event, options};
use callstream_bus::testing::NatsTestServer;
use callstream_bus::{
    Bus, CommandError, CommandOutcome, CommandRequest, CommandRouter, Downlink, Event,
    InProcessConfig, NatsBus, NatsCommands, NatsConfig, Resume, RuntimeLink, Topic,
};
use callstream_core::{CallId, Command, WorkspaceId};

async fn node(server: &NatsTestServer, history: usize) -> NatsBus {
    NatsBus::connect(NatsConfig {
        url: server.url.clone(),
        local: InProcessConfig {
            history_capacity: history,
            ..InProcessConfig::default()
        },
        ..NatsConfig::default()
    })
    .await
    .unwrap()
}

async fn seqs(sub: &mut callstream_bus::Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("nothing arrived within the wait")
            .expect("the subscription ended");
        out.push(e.seq());
    }
    out
}

#[tokio::test]
async fn the_bus_contract_holds_on_nats() {
    let Some(server) = NatsTestServer::start("the_bus_contract_holds_on_nats") else {
        return;
    };
    let bus = node(&server, 128).await;
    conformance::events_arrive_in_order_on_their_topic_only(&bus).await;
    conformance::resume_serves_history_then_live(&bus).await;
    conformance::a_terminal_event_ends_the_topic(&bus).await;
    conformance::a_full_queue_drops_for_its_subscriber_only(&bus).await;
    conformance::audio_reaches_its_calls_listeners_only(&bus).await;
}

#[tokio::test]
async fn events_and_audio_published_at_one_node_reach_the_others_in_order() {
    let Some(server) = NatsTestServer::start("events_published_at_one_node") else {
        return;
    };
    let (a, b, c) = (
        node(&server, 128).await,
        node(&server, 128).await,
        node(&server, 128).await,
    );
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut at_b = b
        .subscribe(&topic, Resume::Live, options(512))
        .await
        .unwrap();
    let mut at_c = c
        .subscribe(&topic, Resume::Live, options(512))
        .await
        .unwrap();
    // Batches of three from A, single events from B: one sequence, as one authority numbers it.
    let mut seq = 0;
    for round in 0..50 {
        if round % 2 == 0 {
            let batch: Vec<Arc<Event>> =
                (1..=3).map(|k| event(&ws, &call, seq + k, false)).collect();
            a.publish_batch(&batch).await.unwrap();
            seq += 3;
        } else {
            seq += 1;
            b.publish(event(&ws, &call, seq, false)).await.unwrap();
        }
    }
    let expected: Vec<u64> = (1..=seq).collect();
    assert_eq!(seqs(&mut at_b, seq as usize).await, expected);
    assert_eq!(seqs(&mut at_c, seq as usize).await, expected);

    // Audio: a listener at C hears what A publishes; nothing is kept.
    let mut listener = c.subscribe_audio(&ws, &call, options(64)).await.unwrap();
    let frame = Arc::new(callstream_core::audio::AudioFrame {
        call: call.clone(),
        track: callstream_core::audio::Track::Inbound,
        codec: callstream_core::audio::Codec::Mulaw,
        sample_rate: 8000,
        timestamp_ms: 42,
        payload: bytes::Bytes::from(vec![7u8; 160]),
    });
    // Core NATS keeps nothing: a frame published before the listener's interest reached the
    // server is gone, as audio should be. So publish until one is heard (bounded by WAIT).
    let heard = tokio::time::timeout(WAIT, async {
        loop {
            a.publish_audio(&ws, frame.clone()).await.unwrap();
            if let Ok(heard) =
                tokio::time::timeout(std::time::Duration::from_millis(100), listener.next()).await
            {
                return heard;
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(*heard, *frame);
}

/// A node's own batches reach its own streams as the events it published, undecoded, whenever
/// the live path sees them before the acknowledgement (almost always: the server routes a
/// message to subscribers before it stores it); the other nodes decode them. Either way every
/// stream gets every event once, in order, with the same content.
#[tokio::test]
async fn a_node_hands_its_own_batches_over_undecoded() {
    let Some(server) = NatsTestServer::start("own_batches_undecoded") else {
        return;
    };
    let (a, b) = (node(&server, 128).await, node(&server, 128).await);
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut at_a = a
        .subscribe(&topic, Resume::Live, options(512))
        .await
        .unwrap();
    let mut at_b = b
        .subscribe(&topic, Resume::Live, options(512))
        .await
        .unwrap();
    let mut sent = Vec::new();
    for k in 0..50u64 {
        let batch: Vec<Arc<Event>> = (1..=2)
            .map(|j| event(&ws, &call, 2 * k + j, false))
            .collect();
        a.publish_batch(&batch).await.unwrap();
        sent.extend(batch);
    }
    let mut undecoded = 0;
    for published in &sent {
        let got = tokio::time::timeout(WAIT, at_a.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.envelope().to_json(), published.envelope().to_json());
        undecoded += usize::from(Arc::ptr_eq(&got, published));
        let there = tokio::time::timeout(WAIT, at_b.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(there.envelope().to_json(), published.envelope().to_json());
        assert!(!Arc::ptr_eq(&there, published), "another node decodes");
    }
    let own = a.stats().nats.unwrap().own_messages;
    assert_eq!(
        undecoded as u64,
        2 * own,
        "what the counter says reached the stream"
    );
    assert!(
        own > 0,
        "none of 50 batches came back before its acknowledgement"
    );
    assert_eq!(b.stats().nats.unwrap().own_messages, 0);
}

/// A batch that went out although its store transaction failed holds its seqs on the bus: a
/// second batch from another node starting at one of them is refused with the subject's last
/// seq (the store then burns past it and numbers again), while a node publishing the very same
/// batch again (a retry) is told it is in.
#[tokio::test]
async fn a_second_batch_on_seqs_the_bus_holds_is_refused_and_a_retry_is_not() {
    let Some(server) = NatsTestServer::start("a_second_batch_on_seqs_the_bus_holds") else {
        return;
    };
    let (a, b) = (node(&server, 128).await, node(&server, 128).await);
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut at_b = b
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    let lost: Vec<Arc<Event>> = (1..=3).map(|s| event(&ws, &call, s, false)).collect();
    a.publish_batch(&lost).await.unwrap();
    assert_eq!(seqs(&mut at_b, 3).await, vec![1, 2, 3]);

    // Another node numbers the call from the store, which never recorded 1..3.
    let reused: Vec<Arc<Event>> = (1..=2).map(|s| event(&ws, &call, s, false)).collect();
    match b.publish_batch(&reused).await {
        Err(callstream_bus::BusError::SeqsTaken { last }) => assert_eq!(last, 3),
        other => panic!("a batch on taken seqs must be refused, got {other:?}"),
    }
    // The same batch again, from a node that does not remember publishing it: it is in.
    let c = node(&server, 128).await;
    c.publish_batch(&lost).await.unwrap();
    // Numbered after the taken seqs, a batch goes through; nothing of the refused one arrived.
    b.publish_batch(&[event(&ws, &call, 4, false)])
        .await
        .unwrap();
    assert_eq!(seqs(&mut at_b, 1).await, vec![4]);
}

#[tokio::test]
async fn a_resume_reaches_past_a_nodes_memory_into_jetstream() {
    let Some(server) = NatsTestServer::start("a_resume_reaches_past_a_nodes_memory") else {
        return;
    };
    // Node A remembers only 4 events per topic.
    let a = node(&server, 4).await;
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut watcher = a
        .subscribe(&topic, Resume::Live, options(512))
        .await
        .unwrap();
    // 60 events in messages of 1 to 5 events.
    let mut seq = 0u64;
    let mut size = 1u64;
    while seq < 60 {
        let batch: Vec<Arc<Event>> = (1..=size.min(60 - seq))
            .map(|k| event(&ws, &call, seq + k, false))
            .collect();
        seq += batch.len() as u64;
        a.publish_batch(&batch).await.unwrap();
        size = size % 5 + 1;
    }
    assert_eq!(seqs(&mut watcher, 60).await, (1..=60).collect::<Vec<_>>());
    // Other topics' messages interleave in the stream.
    let other = CallId::new();
    for s in 1..=30 {
        a.publish(event(&ws, &other, s, false)).await.unwrap();
    }

    for after in [0, 1, 10, 12, 13, 37, 55, 59] {
        let mut resumed = a
            .subscribe(&topic, Resume::After(after), options(512))
            .await
            .unwrap();
        assert_eq!(resumed.gap(), None, "after {after}");
        let want: Vec<u64> = (after + 1..=60).collect();
        assert_eq!(seqs(&mut resumed, want.len()).await, want, "after {after}");
    }
    // A node that started after all of it was published resumes as well, then goes on live.
    let late = node(&server, 4).await;
    let mut resumed = late
        .subscribe(&topic, Resume::After(20), options(512))
        .await
        .unwrap();
    assert_eq!(seqs(&mut resumed, 40).await, (21..=60).collect::<Vec<_>>());
    a.publish(event(&ws, &call, 61, true)).await.unwrap();
    assert_eq!(seqs(&mut resumed, 1).await, [61]);
    assert!(
        tokio::time::timeout(WAIT, resumed.next())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(resumed.end(), callstream_bus::End::Finished);
    // After the end, a resume at a node that never saw the topic ends too.
    let later = node(&server, 4).await;
    let mut again = later
        .subscribe(&topic, Resume::After(58), options(512))
        .await
        .unwrap();
    assert_eq!(seqs(&mut again, 3).await, [59, 60, 61]);
    assert!(
        tokio::time::timeout(WAIT, again.next())
            .await
            .unwrap()
            .is_none()
    );
}

/// A runtime that speaks NATS publishes envelopes straight onto a call's subject, as
/// `docs/operations.md` describes: it is the seq authority for that call, and JetStream's
/// expected-last-subject-sequence refuses a second publisher that raced it. Nodes deliver its
/// events live and resume them from JetStream like their own; a message on the subject that is
/// no envelope is counted and harms nothing.
#[tokio::test]
async fn a_runtime_that_speaks_nats_publishes_straight_onto_the_subjects() {
    let Some(server) = NatsTestServer::start("a_runtime_that_speaks_nats") else {
        return;
    };
    let a = node(&server, 2).await;
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut live = a
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();

    let runtime = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(runtime);
    let mut last_subject_seq = 0u64;
    for s in 1..=5 {
        let e = event(&ws, &call, s, false);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", e.envelope().event_id.as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            last_subject_seq.to_string().as_str(),
        );
        let ack = js
            .publish_with_headers(
                topic.as_str().to_owned(),
                headers,
                e.envelope().to_json().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        last_subject_seq = ack.sequence;
        if s == 3 {
            // Not an envelope: stored (the stream cannot tell), ignored by every node.
            let ack = js
                .publish(topic.as_str().to_owned(), "not an envelope".into())
                .await
                .unwrap()
                .await
                .unwrap();
            last_subject_seq = ack.sequence;
        }
    }
    // A second publisher that read the subject before the last message is refused whole.
    let mut stale = async_nats::HeaderMap::new();
    stale.insert("Nats-Expected-Last-Subject-Sequence", "1");
    let raced = js
        .publish_with_headers(
            topic.as_str().to_owned(),
            stale,
            event(&ws, &call, 6, false).envelope().to_json().into(),
        )
        .await
        .unwrap()
        .await;
    assert!(raced.is_err(), "a publisher that raced was stored");

    assert_eq!(seqs(&mut live, 5).await, [1, 2, 3, 4, 5]);
    assert!(
        a.stats_counters()
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    // Past the node's memory (2 events), a resume reads them back from JetStream.
    let mut resumed = a
        .subscribe(&topic, Resume::After(1), options(64))
        .await
        .unwrap();
    assert_eq!(resumed.gap(), None);
    assert_eq!(seqs(&mut resumed, 4).await, [2, 3, 4, 5]);
    // The node's own publishes go on from there.
    a.publish(event(&ws, &call, 6, false)).await.unwrap();
    assert_eq!(seqs(&mut live, 1).await, [6]);
}

#[tokio::test]
async fn a_restarted_server_leaves_no_gap_for_a_live_subscriber() {
    let Some(mut server) = NatsTestServer::start("a_restarted_server_leaves_no_gap") else {
        return;
    };
    let (a, b) = (node(&server, 128).await, node(&server, 128).await);
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut live = b
        .subscribe(&topic, Resume::Live, options(1024))
        .await
        .unwrap();
    for s in 1..=20 {
        a.publish(event(&ws, &call, s, false)).await.unwrap();
    }
    assert_eq!(seqs(&mut live, 20).await, (1..=20).collect::<Vec<_>>());

    server.kill();
    // While it is down, publishing fails (the caller keeps the events) and the bus says so.
    assert!(a.publish(event(&ws, &call, 21, false)).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.check().await.is_err());
    server.restart();
    // Publish again until the connection is back (bounded), then the rest.
    let mut s = 21;
    for _ in 0..200 {
        if a.publish(event(&ws, &call, s, false)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for next in 22..=40 {
        s = next;
        a.publish(event(&ws, &call, s, false)).await.unwrap();
    }
    assert_eq!(s, 40);
    // The live subscription never ended, and missed nothing.
    assert_eq!(seqs(&mut live, 20).await, (21..=40).collect::<Vec<_>>());
    assert!(b.check().await.is_ok());
}

async fn router(server: &NatsTestServer, node: &str) -> Arc<dyn CommandRouter> {
    let client = callstream_bus::nats::connect(&server.url, node, Arc::default())
        .await
        .unwrap();
    Arc::new(NatsCommands::start(client, node.to_owned()).await.unwrap())
}

fn request(ws: &WorkspaceId, call: &CallId, id: &str) -> CommandRequest {
    CommandRequest {
        command_id: id.into(),
        workspace: ws.clone(),
        call: call.clone(),
        command: Command::SendDtmf { digits: "5".into() },
    }
}

/// Plays the runtime: answers the next command on `link` with `Done`.
fn answer_next(
    router: Arc<dyn CommandRouter>,
    mut link: RuntimeLink,
) -> tokio::task::JoinHandle<RuntimeLink> {
    tokio::spawn(async move {
        let Some(Downlink::Command(got)) = tokio::time::timeout(WAIT, link.next()).await.unwrap()
        else {
            panic!("no command reached the runtime");
        };
        assert!(
            router
                .complete(&link, &got.command_id, CommandOutcome::Done)
                .await
        );
        link
    })
}

#[tokio::test]
async fn the_command_router_contract_holds_on_nats() {
    let Some(server) = NatsTestServer::start("the_command_router_contract_holds_on_nats") else {
        return;
    };
    let router = router(&server, "node-a").await;
    conformance::commands_reach_the_runtime_and_answers_come_back(router.clone()).await;
    conformance::silent_or_vanished_runtimes_fail_commands(router.clone()).await;
    conformance::a_calls_commands_and_audio_go_to_the_runtime_that_claimed_it(router.clone()).await;
    conformance::a_runtime_that_leaves_loses_its_calls_until_they_are_claimed(router).await;
}

#[tokio::test]
async fn a_command_asked_at_one_node_reaches_the_runtime_at_another_and_follows_it() {
    let Some(server) = NatsTestServer::start("a_command_asked_at_one_node") else {
        return;
    };
    let (a, b, c) = (
        router(&server, "node-a").await,
        router(&server, "node-b").await,
        router(&server, "node-c").await,
    );
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    // No runtime anywhere: refused at once, not after the timeout.
    let started = std::time::Instant::now();
    assert_eq!(
        c.send(request(&ws, &call, "n0"), Duration::from_secs(30))
            .await,
        Err(CommandError::NoRuntime)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A runtime at A that has not claimed the call yet: reached through the workspace's queue.
    let link = a.connect(&ws).await.unwrap();
    let runtime = answer_next(a.clone(), link);
    assert_eq!(
        b.send(request(&ws, &call, "n1"), WAIT).await,
        Ok(CommandOutcome::Done)
    );
    let link_a = runtime.await.unwrap();

    // It claims the call: the call's subject leads to it, and so does audio to play.
    a.claim(&link_a, &call);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runtime = answer_next(a.clone(), link_a);
    assert_eq!(
        c.send(request(&ws, &call, "n2"), WAIT).await,
        Ok(CommandOutcome::Done)
    );
    let mut link_a = runtime.await.unwrap();
    let frame = callstream_core::audio::encode(
        &call,
        callstream_core::audio::Track::Outbound,
        callstream_core::audio::Codec::Mulaw,
        8000,
        1,
        &[0xff; 160],
    );
    c.play_audio(&ws, &call, frame.clone()).unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, link_a.next()).await.unwrap(),
        Some(Downlink::Audio(frame))
    );

    // The runtime reconnects at B and claims the call there: commands follow it, and A lets go.
    let link_b = b.connect(&ws).await.unwrap();
    b.claim(&link_b, &call);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runtime = answer_next(b.clone(), link_b);
    assert_eq!(
        c.send(request(&ws, &call, "n3"), WAIT).await,
        Ok(CommandOutcome::Done)
    );
    let _link_b = runtime.await.unwrap();
    assert!(
        tokio::time::timeout(conformance::QUIET, link_a.next())
            .await
            .is_err(),
        "the old runtime got the command too"
    );

    // Another workspace's runtime is never reached.
    assert_eq!(
        c.send(request(&WorkspaceId::new(), &call, "n4"), WAIT)
            .await,
        Err(CommandError::NoRuntime)
    );
}
