//! `callstream-bench report results.jsonl`: one markdown table per scenario and transport, each
//! row with its ratio to the best peer (Nchan or Pushpin) on delivered frames/s and p99.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::Value;

const PEERS: &[&str] = &["nchan", "pushpin"];

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

pub fn print(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut groups: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)?;
        let key = (
            v["scenario"].as_str().unwrap_or("?").to_owned(),
            v["transport"].as_str().unwrap_or("?").to_owned(),
        );
        groups.entry(key).or_default().push(v);
    }
    for ((scenario, transport), rows) in groups {
        let peers: Vec<&Value> = rows
            .iter()
            .filter(|r| PEERS.contains(&r["label"].as_str().unwrap_or("")))
            .collect();
        let best_fps = peers
            .iter()
            .map(|r| num(r, "frames_per_sec"))
            .fold(0.0, f64::max);
        let best_p99 = peers
            .iter()
            .map(|r| num(r, "p99_ms"))
            .filter(|p| *p > 0.0)
            .fold(f64::INFINITY, f64::min);
        let best_mem = peers
            .iter()
            .map(|r| num(r, "pss_per_stream_bytes"))
            .filter(|p| *p > 0.0)
            .fold(f64::INFINITY, f64::min);
        println!("\n### {scenario} ({transport})\n");
        println!(
            "| server | subscribers | delivered frames/s | vs best peer | lost | p50 ms | p99 ms | p99 vs best peer | p99.9 ms | max ms | PSS per stream | vs best peer | server CPU (cores) | generator CPU | host steal per CPU |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let ratio = |x: f64, best: f64| {
                if best.is_finite() && best > 0.0 {
                    format!("{:.2}x", x / best)
                } else {
                    "–".into()
                }
            };
            println!(
                "| {} | {}{} | {:.0} | {} | {} of {} | {:.2} | {:.2} | {} | {:.2} | {:.1} | {:.0} B | {} | {:.2} | {:.2} | {} |",
                r["label"].as_str().unwrap_or("?"),
                r["subscribers"],
                if num(r, "stuck") > 0.0 {
                    format!(" + {} stuck", r["stuck"])
                } else {
                    String::new()
                },
                num(r, "frames_per_sec"),
                ratio(num(r, "frames_per_sec"), best_fps),
                r["lost"],
                r["expected"],
                num(r, "p50_ms"),
                num(r, "p99_ms"),
                ratio(num(r, "p99_ms"), best_p99),
                num(r, "p999_ms"),
                num(r, "max_ms"),
                num(r, "pss_per_stream_bytes"),
                ratio(num(r, "pss_per_stream_bytes"), best_mem),
                num(r, "cpu_cores"),
                num(r, "generator_cpu_cores"),
                crate::run::steal_text(
                    &r["host_steal_per_cpu"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<_>>())
                        .unwrap_or_default()
                ),
            );
        }
    }
    Ok(())
}
