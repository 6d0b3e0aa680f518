//! Fan-out through the in-process bus: one publish to 1, 100 and 10,000 subscribers, each with
//! its own bounded queue (drained between publishes, as live consumers would), and history
//! lookups for a resuming subscriber.
//!
//! `cargo bench -p callstream-bus --bench fanout`

// Bench setup panics on a broken fixture, like a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use callstream_bus::{
    Bus, Event, InProcessBus, InProcessConfig, Resume, SubscribeOptions, Subscription, Topic,
};
use callstream_core::event::RawPayload;
use callstream_core::{CallId, Envelope, Payload, Subject, WorkspaceId, time};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prometheus_client::metrics::counter::Counter;

/// An event as ingest makes one: the decoded payload and its JSON as it arrived.
fn event(ws: &WorkspaceId, call: &CallId, seq: u64) -> std::sync::Arc<Event> {
    let text = r#"{"role": "user", "text": "What time do you open tomorrow?", "is_final": false, "turn_id": "trn_1"}"#;
    let payload = Payload::parse_json("call.transcription", text).unwrap();
    let raw = serde_json::value::RawValue::from_string(text.to_owned()).unwrap();
    Event::new(
        Envelope::new(
            ws.clone(),
            Subject::Call(call.clone()),
            seq,
            time::now(),
            payload,
        )
        .unwrap()
        .with_payload_json(Some(RawPayload::new(raw))),
    )
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        queue_capacity: 64,
        dropped: Counter::default(),
    }
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 100, 10_000] {
        let bus = InProcessBus::new(InProcessConfig::default());
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let mut subs: Vec<Subscription> = (0..subscribers)
            .map(|_| {
                rt.block_on(bus.subscribe(&topic, Resume::Live, options()))
                    .unwrap()
            })
            .collect();
        let mut seq = 0;
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    seq += 1;
                    let report = rt.block_on(bus.publish(event(&ws, &call, seq))).unwrap();
                    black_box(report);
                    // Drain so every queue has room again, as a live consumer would.
                    for sub in &mut subs {
                        black_box(rt.block_on(sub.next()));
                    }
                });
            },
        );
    }
    group.finish();
}

fn history(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bus = InProcessBus::new(InProcessConfig {
        history_capacity: 128,
        ..InProcessConfig::default()
    });
    let (ws, call) = (WorkspaceId::new(), CallId::new());
    let topic = Topic::call(&ws, &call);
    for seq in 1..=1000 {
        rt.block_on(bus.publish(event(&ws, &call, seq))).unwrap();
    }
    let mut group = c.benchmark_group("history");
    for (name, after) in [
        ("resume_last_8", 992u64),
        ("resume_all_128", 872),
        ("gap", 10),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    rt.block_on(bus.subscribe(&topic, Resume::After(after), options()))
                        .unwrap(),
                )
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fanout, history);
criterion_main!(benches);
