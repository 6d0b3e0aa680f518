//! What each SQLite durability costs ingest: appends per second of events that must be durable
//! (final transcript turns, one per append, each a transaction of its own), with `TASKS`
//! concurrent appenders on calls of their own, for 5 s, in a fresh file under `$TMPDIR`.
//!
//! `cargo run --release -p callstream-store --example sqlite_append_rate -- full 8`
//! (`full` or `normal`; the gateway's `sqlite_synchronous`)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callstream_core::TurnId;
use callstream_store::conformance::{new_call, turn};
use callstream_store::{Durability, NoPublish, SqliteStore, Store};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let durability = match args.next().as_deref() {
        Some("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let tasks: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open_with(&dir.path().join("rate.db"), durability)
            .await
            .expect("opening"),
    );
    let ws = store.ensure_workspace("bench").await.expect("workspace");
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(5);
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, done, ws) = (store.clone(), done.clone(), ws.id.clone());
        handles.push(tokio::spawn(async move {
            let call = new_call(&ws);
            store.create_call(&call).await.expect("call");
            while Instant::now() < until {
                let events = vec![turn(&TurnId::new(), "a final turn", true)];
                if store
                    .append_call_events(&ws, &call.id, events, &NoPublish)
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    println!(
        "{durability:?}, {tasks} appenders: {} durable events/s",
        done.load(Ordering::Relaxed) / 5
    );
}
