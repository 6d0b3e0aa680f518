//! How many batches per second one node publishes to JetStream, with `TASKS` publishers on
//! their own topics (each waits for its acknowledgement before the next, as ingest does).
//!
//! `cargo run --release -p callstream-bus --example publish_rate -- nats://127.0.0.1:4222 32`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callstream_bus::conformance::event;
use callstream_bus::{Bus, NatsBus, NatsConfig};
use callstream_core::{CallId, WorkspaceId};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let tasks: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(32);
    let bus = Arc::new(
        NatsBus::connect(NatsConfig {
            url,
            ..NatsConfig::default()
        })
        .await
        .expect("connecting"),
    );
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (bus, done) = (bus.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let (ws, call) = (WorkspaceId::new(), CallId::new());
            let mut seq = 0;
            while Instant::now() < until {
                seq += 1;
                if bus.publish(event(&ws, &call, seq, false)).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    println!(
        "{tasks} publishers: {} batches/s",
        done.load(Ordering::Relaxed) / 5
    );
}
