//! The load generator end to end: `callstream-bench run` (coordinator and worker processes,
//! real sockets) against a real callstream server counts exactly what it was sent, over SSE
//! and WebSocket, with stuck clients of the same transport beside the healthy ones, and writes
//! its JSON result.

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
    let metrics = format!("{base}/metrics");
    let frames_sent = |surface: &'static str| {
        let metrics = metrics.clone();
        async move {
            let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
            let name = format!("callstream_frames_sent_total{{surface=\"{surface}\"}}");
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str()))
                .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
        }
    };

    for (transport, surface) in [("sse", "native_transcript_sse"), ("ws", "native_call_ws")] {
        let sent_before = frames_sent(surface).await;
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
                "--stuck",
                "2",
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
                // A second of warm-up first: neither published nor delivered counts it.
                "--warmup",
                "1",
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
        // The stuck clients were streams of this surface too: the server wrote them frames
        // that nobody counted as delivered.
        let r: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(&results)
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();
        let sent = frames_sent(surface).await - sent_before;
        let delivered = r["delivered"].as_f64().unwrap();
        assert!(
            sent > delivered,
            "{transport}: {sent} frames sent, {delivered} delivered to the healthy clients"
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
        // 3 channels × 20/s × 2 s after the warm-up (180 with it), give or take the last
        // tick; 12 subscribers, 4 per channel, spread over 3 worker processes.
        assert!((100..=130).contains(&published), "{r}");
        assert_eq!(r["warmup_seconds"], 1);
        assert_eq!(r["subscribers"], 12);
        assert_eq!(r["stuck"], 2);
        assert!(
            !r["host_steal_per_cpu"].as_array().unwrap().is_empty(),
            "each CPU's steal read from /proc/stat: {r}"
        );
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
        // The timeline covers the 2 measured seconds (give or take the last tick), and its
        // worst second is the histogram's max (which is exact to 3 significant digits).
        let timeline = r["timeline"].as_array().unwrap();
        assert!((2..=3).contains(&timeline.len()), "{r}");
        let worst = timeline
            .iter()
            .map(|s| s["max_micros"].as_f64().unwrap())
            .fold(0.0, f64::max);
        let max = r["max_ms"].as_f64().unwrap() * 1000.0;
        assert!(
            worst > 0.0 && (worst - max).abs() <= max * 0.002,
            "timeline's worst {worst} us against max {max} us"
        );
    }
    server.shutdown();
}
