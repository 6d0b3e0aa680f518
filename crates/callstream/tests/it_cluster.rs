//! The integration suite again, on the cluster backends: every test's server runs on a NATS
//! server and a PostgreSQL database of its own (started and dropped by the test), through the
//! same surfaces, so both backend pairs keep one contract. Where the machine has neither
//! service, each test says so in one line and runs on the embedded backends instead, unless
//! `CALLSTREAM_REQUIRE_SERVICES=1` (CI), which fails it.
//!
//! Left out: the command line, the browser and the Node service (they exercise the binary and
//! the web page, not the backends), which run once, in `it`.

#![allow(clippy::unwrap_used)]
// Helpers that only the modules left out here use.
#![allow(dead_code, unused_imports)]

pub const CLUSTER: bool = true;

#[path = "it/audio_streams.rs"]
mod audio_streams;
#[path = "it/auth.rs"]
mod auth;
#[path = "it/cluster.rs"]
mod cluster;
#[path = "it/conversations.rs"]
mod conversations;
#[path = "it/dashboard.rs"]
mod dashboard;
#[path = "it/ending.rs"]
mod ending;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/http.rs"]
mod http;
#[path = "it/ingest.rs"]
mod ingest;
#[path = "it/keys.rs"]
mod keys;
#[path = "it/lifecycle.rs"]
mod lifecycle;
#[path = "it/limits.rs"]
mod limits;
#[path = "it/live_calls.rs"]
mod live_calls;
#[path = "it/live_transcript.rs"]
mod live_transcript;
#[path = "it/openapi.rs"]
mod openapi;
#[path = "it/simulator.rs"]
mod simulator;
#[path = "it/sockets.rs"]
mod sockets;
#[path = "it/speech.rs"]
mod speech;
#[path = "it/support.rs"]
mod support;
#[path = "it/transcript.rs"]
mod transcript;
#[path = "it/webhooks.rs"]
mod webhooks;
