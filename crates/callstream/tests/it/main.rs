//! callstream's integration tests: a real server on 127.0.0.1, a real SQLite file, real HTTP
//! clients (reqwest), the real `callstream` binary, and a real browser (Chromium).

// Helpers here unwrap freely: in a test, a panic is how a broken expectation is reported.
#![allow(clippy::unwrap_used)]

/// This suite runs on the embedded backends (SQLite, the in-process bus); `it_cluster` runs the
/// same tests on NATS and PostgreSQL.
pub const CLUSTER: bool = false;

mod audio_node;
mod audio_streams;
mod auth;
mod browser;
mod cli;
mod clients;
mod conversations;
mod dashboard;
mod ending;
mod http;
mod ingest;
mod keys;
mod lifecycle;
mod limits;
mod live_calls;
mod live_transcript;
mod openapi;
mod simulator;
mod sockets;
mod speech;
mod support;
mod transcript;
mod webhooks;
