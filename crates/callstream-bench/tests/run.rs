//! The load generator end to end: `callstream-bench run` (coordinator and worker processes,
//! real sockets) against a real callstream server counts exactly what it was sent, over SSE
//! and WebSocket, and writes its JSON result.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use callstream_core::KeyKind;
use callstream_server::{Config, auth};

#[tokio::test(flavor = "multi_thread")]
async fn the_generator_counts_every_frame_it_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    let server = callstream_server::start(config).await.unwrap();
    let store = server.state().store();
    let ws = store.ensure_workspace("bench").await.unwrap();
    let api = auth::mint(&ws.id, KeyKind::Api);
    let runtime = auth::mint(&ws.id, KeyKind::Runtime);
    store.insert_key(&api.record).await.unwrap();
    store.insert_key(&runtime.record).await.unwrap();
    let base = format!("http://{}", server.addr());
    let results = dir.path().join("results.jsonl");

    for transport in ["sse", "ws"] {
        let out = Command::new(env!("CARGO_BIN_EXE_callstream-bench"))
            .args([
                "run",
                "--scenario",
                "custom",
                "--transport",
                transport,
                "--channels",
                "3",
                "--per-channel",
                "4",
            ])
            .args([
                "--rate",
                "20",
                "--duration",
                "2",
                "--per-worker",
                "5",
                "--publish-lanes",
                "2",
            ])
            .args([
                "--base",
                &base,
                "--api-key",
                &api.secret,
                "--runtime-key",
                &runtime.secret,
            ])
            .args([
                "--pids",
                &std::process::id().to_string(),
                "--json",
                results.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for r in &lines {
        let published = r["published"].as_u64().unwrap();
        // 3 channels × 20/s × 2 s, give or take the last tick; 12 subscribers, 4 per channel,
        // spread over 3 worker processes.
        assert!((100..=130).contains(&published), "{r}");
        assert_eq!(r["subscribers"], 12);
        assert_eq!(r["expected"].as_u64().unwrap(), published * 4, "{r}");
        assert_eq!(
            r["delivered"], r["expected"],
            "every frame counted once: {r}"
        );
        assert_eq!(r["lost"], 0);
        let p50 = r["p50_ms"].as_f64().unwrap();
        assert!(
            p50 > 0.0 && p50 < 1000.0,
            "latency measured from the embedded timestamps: {r}"
        );
        assert!(
            r["server_connected"]["pss_kib"].as_u64().unwrap() > 0,
            "memory sampled from /proc"
        );
    }
    server.shutdown();
}
