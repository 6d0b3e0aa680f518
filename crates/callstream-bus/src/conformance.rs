//! The contract every bus and command-router backend keeps, as checks any backend's tests run
//! against an instance of it: the in-process backends here, the NATS backends in theirs. Each
//! check takes fresh ids, so several may share one backend.
//!
//! Delivery over a network is not instant, so the checks wait for what they expect (bounded by
//! [`WAIT`]) and never assume that a publish has been delivered when it returns; they check that
//! what must not arrive does not, within a short [`QUIET`] look.
//!
//! Public only for the backends' tests (`#[doc(hidden)]`); a check panics on a broken promise.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callstream_core::audio::{AudioFrame, Codec, Track};
use callstream_core::{CallId, Command, Envelope, Payload, Subject, WorkspaceId, time};
use prometheus_client::metrics::counter::Counter;

use crate::commands::{CommandError, CommandOutcome, CommandRequest, CommandRouter, Downlink};
use crate::{Bus, End, Event, Resume, SubscribeOptions, Subscription, Topic};

/// The longest a check waits for something that must arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a check watches for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// An event of `call` numbered `seq`: a DTMF, or the call's end.
pub fn event(ws: &WorkspaceId, call: &CallId, seq: u64, terminal: bool) -> Arc<Event> {
    let payload = if terminal {
        Payload::parse("call.completed", serde_json::json!({"reason": "hangup"}))
    } else {
        Payload::parse("call.dtmf", serde_json::json!({"digits": "1"}))
    };
    Event::new(
        Envelope::new(
            ws.clone(),
            Subject::Call(call.clone()),
            seq,
            time::now(),
            payload.unwrap(),
        )
        .unwrap(),
    )
}

pub fn options(capacity: usize) -> SubscribeOptions {
    SubscribeOptions {
        queue_capacity: capacity,
        dropped: Counter::default(),
    }
}

async fn next(sub: &mut Subscription) -> Option<Arc<Event>> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("nothing arrived within the wait")
}

async fn nothing_more(sub: &mut Subscription) {
    if let Ok(Some(e)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("unexpected event seq {}", e.seq());
    }
}

async fn seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(sub).await.expect("the subscription ended early").seq());
    }
    out
}

/// Subscribers get a topic's events in seq order; a seq not above the last one is ignored
/// (a republish after a retry is harmless); another topic, or the same call id in another
/// workspace, gets nothing.
pub async fn events_arrive_in_order_on_their_topic_only(bus: &dyn Bus) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut a = bus
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    let mut b = bus
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    let mut foreign = bus
        .subscribe(
            &Topic::call(&WorkspaceId::new(), &call),
            Resume::Live,
            options(64),
        )
        .await
        .unwrap();
    let mut other = bus
        .subscribe(&Topic::call(&ws, &CallId::new()), Resume::Live, options(64))
        .await
        .unwrap();
    for seq in 1..=5 {
        bus.publish(event(&ws, &call, seq, false)).await.unwrap();
    }
    // A republish of seq 3 and an old seq are ignored.
    bus.publish(event(&ws, &call, 3, false)).await.unwrap();
    bus.publish(event(&ws, &call, 6, false)).await.unwrap();
    assert_eq!(seqs(&mut a, 6).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs(&mut b, 6).await, [1, 2, 3, 4, 5, 6]);
    nothing_more(&mut a).await;
    nothing_more(&mut foreign).await;
    nothing_more(&mut other).await;
}

/// A resume point serves what the history holds after it, then live events; one older than the
/// history reports the gap.
pub async fn resume_serves_history_then_live(bus: &dyn Bus) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    // A live subscriber first, so every event has been delivered before resuming (a networked
    // backend stores asynchronously).
    let mut watcher = bus
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    for seq in 1..=5 {
        bus.publish(event(&ws, &call, seq, false)).await.unwrap();
    }
    assert_eq!(seqs(&mut watcher, 5).await, [1, 2, 3, 4, 5]);
    let mut resumed = bus
        .subscribe(&topic, Resume::After(3), options(64))
        .await
        .unwrap();
    assert_eq!(resumed.gap(), None);
    bus.publish(event(&ws, &call, 6, false)).await.unwrap();
    assert_eq!(seqs(&mut resumed, 3).await, [4, 5, 6]);
    nothing_more(&mut resumed).await;
    // From before the first event: everything, no gap.
    let mut all = bus
        .subscribe(&topic, Resume::After(0), options(64))
        .await
        .unwrap();
    assert_eq!(all.gap(), None);
    assert_eq!(seqs(&mut all, 6).await, [1, 2, 3, 4, 5, 6]);
}

/// A terminal event ends every subscription after what it holds, as `Finished`; a subscriber
/// who comes later gets the history it asked for, then the same end.
pub async fn a_terminal_event_ends_the_topic(bus: &dyn Bus) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut sub = bus
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    bus.publish(event(&ws, &call, 1, false)).await.unwrap();
    bus.publish(event(&ws, &call, 2, true)).await.unwrap();
    assert_eq!(seqs(&mut sub, 2).await, [1, 2]);
    assert!(next(&mut sub).await.is_none(), "the topic must end");
    assert_eq!(sub.end(), End::Finished);
    let mut late = bus
        .subscribe(&topic, Resume::After(0), options(64))
        .await
        .unwrap();
    assert_eq!(seqs(&mut late, 2).await, [1, 2]);
    assert!(next(&mut late).await.is_none());
    assert_eq!(late.end(), End::Finished);
}

/// A subscriber whose queue is full loses the newest events, counted, while every other
/// subscriber gets them all and the publisher never waits.
pub async fn a_full_queue_drops_for_its_subscriber_only(bus: &dyn Bus) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    let mut slow = bus
        .subscribe(&topic, Resume::Live, options(2))
        .await
        .unwrap();
    let mut fast = bus
        .subscribe(&topic, Resume::Live, options(64))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        for seq in 1..=10 {
            bus.publish(event(&ws, &call, seq, false)).await.unwrap();
        }
    })
    .await
    .expect("publishing waited for a full subscriber");
    assert_eq!(seqs(&mut fast, 10).await, (1..=10).collect::<Vec<_>>());
    // The slow one took the first two, and lost the rest.
    for _ in 0..50 {
        if slow.dropped().get() == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(slow.dropped().get(), 8);
    assert_eq!(seqs(&mut slow, 2).await, [1, 2]);
    nothing_more(&mut slow).await;
}

fn frame(call: &CallId, n: u8) -> Arc<AudioFrame> {
    Arc::new(AudioFrame {
        call: call.clone(),
        track: Track::Inbound,
        codec: Codec::Mulaw,
        sample_rate: 8000,
        timestamp_ms: u64::from(n),
        payload: Bytes::from(vec![n; 160]),
    })
}

/// Audio reaches the listeners of its call (and workspace) only, in order; nothing is kept for
/// later listeners.
pub async fn audio_reaches_its_calls_listeners_only(bus: &dyn Bus) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let mut listener = bus.subscribe_audio(&ws, &call, options(64)).await.unwrap();
    let mut foreign = bus
        .subscribe_audio(&WorkspaceId::new(), &call, options(64))
        .await
        .unwrap();
    for n in 0..5u8 {
        bus.publish_audio(&ws, frame(&call, n)).await.unwrap();
    }
    for n in 0..5u64 {
        let got = tokio::time::timeout(WAIT, listener.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.timestamp_ms, n);
        assert_eq!(got.payload.len(), 160);
    }
    assert!(
        tokio::time::timeout(QUIET, foreign.next()).await.is_err(),
        "another workspace heard the audio"
    );
    let mut late = bus.subscribe_audio(&ws, &call, options(64)).await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, late.next()).await.is_err(),
        "audio was kept for a later listener"
    );
}

fn request(ws: &WorkspaceId, call: &CallId, id: &str) -> CommandRequest {
    CommandRequest {
        command_id: id.into(),
        workspace: ws.clone(),
        call: call.clone(),
        command: Command::SendDtmf { digits: "1".into() },
    }
}

/// A command reaches the workspace's runtime and its answer comes back; with no runtime it
/// fails at once; another workspace's runtime never gets it, and may not answer it.
pub async fn commands_reach_the_runtime_and_answers_come_back(router: Arc<dyn CommandRouter>) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let started = std::time::Instant::now();
    assert_eq!(
        router.send(request(&ws, &call, "c0"), WAIT).await,
        Err(CommandError::NoRuntime)
    );
    assert!(started.elapsed() < WAIT, "no runtime must fail at once");
    let mut link = router.connect(&ws).await.unwrap();
    let mut stranger = router.connect(&WorkspaceId::new()).await.unwrap();
    let runtime = {
        let router = router.clone();
        tokio::spawn(async move {
            let Some(Downlink::Command(got)) = link.next().await else {
                panic!("no command");
            };
            assert_eq!(got.command, Command::SendDtmf { digits: "1".into() });
            assert!(
                router
                    .complete(&link, &got.command_id, CommandOutcome::Done)
                    .await
            );
            link
        })
    };
    assert_eq!(
        router.send(request(&ws, &call, "c1"), WAIT).await,
        Ok(CommandOutcome::Done)
    );
    let link = runtime.await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, stranger.next()).await.is_err(),
        "another workspace's runtime got the command"
    );
    // A refusal comes back as such.
    let mut link = link;
    let runtime = {
        let router = router.clone();
        tokio::spawn(async move {
            let Some(Downlink::Command(got)) = link.next().await else {
                panic!("no command");
            };
            // The stranger may not answer it.
            assert!(
                !router
                    .complete(&stranger, &got.command_id, CommandOutcome::Done)
                    .await
            );
            let refused = CommandOutcome::Refused {
                error_code: "busy_line".into(),
                message: "the caller is on hold".into(),
            };
            assert!(router.complete(&link, &got.command_id, refused).await);
            link
        })
    };
    assert_eq!(
        router.send(request(&ws, &call, "c2"), WAIT).await,
        Ok(CommandOutcome::Refused {
            error_code: "busy_line".into(),
            message: "the caller is on hold".into()
        })
    );
    drop(runtime.await.unwrap());
}

/// A runtime that goes away fails the commands it holds at once, and one that never answers
/// fails after the caller's timeout; nothing is left pending (a late answer is refused).
pub async fn silent_or_vanished_runtimes_fail_commands(router: Arc<dyn CommandRouter>) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let silent = router.connect(&ws).await.unwrap();
    let timeout = Duration::from_millis(300);
    assert_eq!(
        router.send(request(&ws, &call, "t1"), timeout).await,
        Err(CommandError::Timeout(timeout))
    );
    assert!(
        !router.complete(&silent, "t1", CommandOutcome::Done).await,
        "nobody waits for a timed-out command"
    );
    drop(silent);
    let mut link = router.connect(&ws).await.unwrap();
    let waiter = {
        let (router, ws, call) = (router.clone(), ws.clone(), call.clone());
        tokio::spawn(async move {
            router
                .send(request(&ws, &call, "t2"), Duration::from_secs(60))
                .await
        })
    };
    let Some(Downlink::Command(_)) = tokio::time::timeout(WAIT, link.next()).await.unwrap() else {
        panic!("no command");
    };
    drop(link);
    let outcome = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("the waiter was not failed at once")
        .unwrap();
    assert!(
        matches!(
            outcome,
            Err(CommandError::Disconnected | CommandError::NoRuntime)
        ),
        "{outcome:?}"
    );
}

/// A call's commands, and audio to play into it, go to the runtime that claimed it.
pub async fn a_calls_commands_and_audio_go_to_the_runtime_that_claimed_it(
    router: Arc<dyn CommandRouter>,
) {
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let mut first = router.connect(&ws).await.unwrap();
    let mut second = router.connect(&ws).await.unwrap();
    router.claim(&first, &call);
    // Claims may travel in the background: give them a moment, then check.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiter = {
        let (router, ws, call) = (router.clone(), ws.clone(), call.clone());
        tokio::spawn(async move { router.send(request(&ws, &call, "k1"), WAIT).await })
    };
    let Some(Downlink::Command(got)) = tokio::time::timeout(WAIT, first.next()).await.unwrap()
    else {
        panic!("the claiming runtime got no command");
    };
    assert!(
        router
            .complete(&first, &got.command_id, CommandOutcome::Done)
            .await
    );
    assert_eq!(waiter.await.unwrap(), Ok(CommandOutcome::Done));
    let played =
        callstream_core::audio::encode(&call, Track::Outbound, Codec::Mulaw, 8000, 7, &[0xff; 160]);
    router.play_audio(&ws, &call, played.clone()).unwrap();
    let got = tokio::time::timeout(WAIT, first.next()).await.unwrap();
    assert_eq!(got, Some(Downlink::Audio(played)));
    assert!(
        tokio::time::timeout(QUIET, second.next()).await.is_err(),
        "the other runtime got the call's traffic"
    );
}

/// A call whose runtime disconnected is lost once the grace has passed, until a runtime claims
/// it again (or it is forgotten); calls of runtimes still connected never are.
pub async fn a_runtime_that_leaves_loses_its_calls_until_they_are_claimed(
    router: Arc<dyn CommandRouter>,
) {
    // The router may be shared with other checks: only this workspace's calls count.
    fn lost_of(
        router: &dyn CommandRouter,
        ws: &WorkspaceId,
        d: Duration,
    ) -> Vec<(WorkspaceId, CallId)> {
        router
            .lost(d)
            .into_iter()
            .filter(|(w, _)| w == ws)
            .collect()
    }
    let ws = WorkspaceId::new();
    let (kept, orphaned, reclaimed) = (CallId::new(), CallId::new(), CallId::new());
    let staying = router.connect(&ws).await.unwrap();
    let leaving = router.connect(&ws).await.unwrap();
    router.claim(&staying, &kept);
    router.claim(&leaving, &orphaned);
    router.claim(&leaving, &reclaimed);
    assert!(lost_of(&*router, &ws, Duration::ZERO).is_empty());
    drop(leaving);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut lost = lost_of(&*router, &ws, Duration::ZERO);
    lost.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    let mut want = vec![
        (ws.clone(), orphaned.clone()),
        (ws.clone(), reclaimed.clone()),
    ];
    want.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    assert_eq!(lost, want);
    assert!(
        lost_of(&*router, &ws, Duration::from_secs(3600)).is_empty(),
        "not lost before the grace has passed"
    );
    // The runtime came back (a new link) and sent something for one of them.
    let back = router.connect(&ws).await.unwrap();
    router.claim(&back, &reclaimed);
    assert_eq!(
        lost_of(&*router, &ws, Duration::ZERO),
        vec![(ws.clone(), orphaned.clone())]
    );
    router.forget(&orphaned).await;
    assert!(lost_of(&*router, &ws, Duration::ZERO).is_empty());
}
