//! Parsing what a call runtime sends: one runtime-socket message, from its text to checked,
//! typed events ready to be sequenced. Every ingested event pays this once, before fan-out.
//!
//! `cargo bench -p callstream-server --bench ingest`

// Bench setup panics on a broken fixture, like a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use callstream_core::Transport;
use callstream_server::ingest::{self, Target};
use callstream_surfaces::runtime::{self, RuntimeMessage};
use criterion::{Criterion, criterion_group, criterion_main};

/// The message `callstream-bench` publishes for every event: one partial transcript.
const ONE: &str = r#"{"type":"events","call_id":"call_01JBENCHBENCHBENCHBENCH0000","events":{"event_type":"call.transcription","payload":{"role":"user","text":"cs-bench 17 1763726400123456 What time do you open tomorrow?","is_final":false,"turn_id":"trn_bench"}}}"#;

fn batch_of(n: usize) -> String {
    let event = r#"{"event_type":"call.transcription","payload":{"role":"agent","text":"We open at nine in the morning, and close at six.","is_final":true,"turn_id":"trn_2","confidence":0.93,"segment_start":3.2,"segment_end":4.9},"timestamp":"2026-05-15T14:32:01.123Z"}"#;
    let events = vec![event; n].join(",");
    format!(
        r#"{{"type":"events","ref":"r1","call_id":"call_01JBENCHBENCHBENCHBENCH0000","events":[{events}]}}"#
    )
}

fn parse(text: &str) -> usize {
    let Ok(RuntimeMessage::Events(m)) = runtime::parse(text) else {
        panic!("fixture is not an events message");
    };
    ingest::events_of(m.events, Target::Call(Transport::Webrtc), 100)
        .unwrap()
        .len()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest_parse");
    g.bench_function("one_partial", |b| b.iter(|| parse(black_box(ONE))));
    let ten = batch_of(10);
    g.bench_function("batch_of_10_finals", |b| b.iter(|| parse(black_box(&ten))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
