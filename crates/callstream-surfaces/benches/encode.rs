//! Encoding one event for each surface: what every publish pays once per surface (never per
//! subscriber: the bytes are shared).
//!
//! `cargo bench -p callstream-surfaces --bench encode`

// Bench setup panics on a broken fixture, like a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use callstream_bus::Event;
use callstream_core::{CallId, ConversationId, Envelope, Payload, Subject, WorkspaceId, time};
use callstream_surfaces::native;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn call_event() -> Envelope {
    let payload = Payload::parse(
        "call.transcription",
        json!({"role": "user", "text": "What time do you open tomorrow?", "is_final": true, "turn_id": "trn_1",
               "confidence": 0.93, "segment_start": 3.2, "segment_end": 4.9}),
    )
    .unwrap();
    Envelope::new(
        WorkspaceId::new(),
        Subject::Call(CallId::new()),
        17,
        time::now(),
        payload,
    )
    .unwrap()
}

fn conversation_event() -> Envelope {
    let payload = Payload::parse(
        "message.received",
        json!({"message_id": "m1", "direction": "inbound", "status": "received", "text": "Is my order shipped?"}),
    )
    .unwrap();
    Envelope::new(
        WorkspaceId::new(),
        Subject::Conversation(ConversationId::new()),
        3,
        time::now(),
        payload,
    )
    .unwrap()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let call = call_event();
    let conversation = conversation_event();
    // A fresh Event each time: the cache inside must not answer for the encoder.
    group.bench_function("envelope_json (call socket, webhooks)", |b| {
        b.iter(|| black_box(native::envelope_json(&Event::new(call.clone()))))
    });
    group.bench_function("transcript_sse", |b| {
        b.iter(|| black_box(native::transcript_sse(&Event::new(call.clone()))))
    });
    group.bench_function("conversation_sse", |b| {
        b.iter(|| black_box(native::conversation_sse(&Event::new(conversation.clone()))))
    });
    group.bench_function("clone only (baseline)", |b| {
        b.iter(|| black_box(Event::new(call.clone())))
    });
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
