//! callstream's integration tests: a real server on 127.0.0.1, a real SQLite file, real HTTP
//! clients (reqwest), the real `callstream` binary, and a real browser (Chromium).

mod auth;
mod browser;
mod cli;
mod ingest;
mod lifecycle;
mod simulator;
mod support;
mod transcript;
