//! How many call-event appends per second PostgreSQL takes from one node, with `TASKS`
//! concurrent appenders on calls of their own and `EVENTS` events per append (publishing
//! nothing: the bus is measured by callstream-bus's `publish_rate`).
//!
//! `cargo run --release -p callstream-store --example append_rate -- 32 1`
//! (a fresh database on the server at `CALLSTREAM_TEST_POSTGRES`, dropped at the end)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callstream_core::TurnId;
use callstream_store::conformance::{new_call, turn};
use callstream_store::testing::PgTestDb;
use callstream_store::{NoPublish, Store};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(32);
    let per: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    let db = PgTestDb::create("append_rate").await.expect("PostgreSQL");
    let store: Arc<dyn Store> = Arc::new(
        callstream_store::PgStore::connect(&db.app_url(), 16)
            .await
            .expect("connecting"),
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
            let t = TurnId::new();
            while Instant::now() < until {
                let events = (0..per).map(|_| turn(&t, "partial", false)).collect();
                if store
                    .append_call_events(&ws, &call.id, events, &NoPublish)
                    .await
                    .is_ok()
                {
                    done.fetch_add(per as u64, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    println!(
        "{tasks} appenders, {per} events each: {} events/s",
        done.load(Ordering::Relaxed) / 5
    );
    drop(store);
    drop(db);
}
