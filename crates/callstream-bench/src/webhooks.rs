//! `webhooks`: webhook delivery measured end to end on this machine (issue 18).
//!
//! A receiver in this process serves `POST /hook/{i}` for `--endpoints` endpoints created on the
//! gateway (each asking for `custom.bench` only), a call is announced, and `--events` events are
//! sent at `--rate`, one per ingest request, each carrying its send time. Measured: the ingest
//! requests' latency (what the outbox adds shows against `--endpoints 0`), every delivery's
//! latency from send to arrival, deliveries per second, and duplicates. With
//! `--through-restarts`, an ingest that fails (the gateway was killed) is retried until accepted,
//! and the run waits until every accepted event has reached every endpoint: `bench/webhooks.sh`
//! kills the gateway with `kill -9` meanwhile and restarts it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};

use crate::marker;

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    #[arg(long)]
    pub api_key: String,
    #[arg(long)]
    pub runtime_key: String,
    /// Endpoints to create (0: none, to measure ingest alone).
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// Events to send, one per request.
    #[arg(long, default_value_t = 2000)]
    pub events: usize,
    /// Events per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds to wait for the last delivery once the last event was accepted.
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
    /// Retry each event until it is accepted (the gateway may be killed and restarted
    /// meanwhile), and wait for every accepted event at every endpoint.
    #[arg(long)]
    pub through_restarts: bool,
    /// Before the measured run: this many endpoints in another workspace (`--silent-api-key`,
    /// `--silent-runtime-key`) on a port that accepts connections and never answers, and
    /// `--silent-events` events sent there, so that their deliveries hang until the gateway's
    /// request timeout while the measured endpoints are served (issue 18's fairness scenario).
    #[arg(long, default_value_t = 0)]
    pub silent_endpoints: usize,
    #[arg(long, default_value_t = 5)]
    pub silent_events: usize,
    #[arg(long)]
    pub silent_api_key: Option<String>,
    #[arg(long)]
    pub silent_runtime_key: Option<String>,
    #[arg(long)]
    pub label: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What the receiver saw.
struct Seen {
    /// `{endpoint}/{webhook-id}` of every delivery.
    distinct: HashSet<String>,
    total: u64,
    latency: hdrhistogram::Histogram<u64>,
    last: Option<Instant>,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub label: String,
    pub endpoints: usize,
    pub events_accepted: usize,
    pub ingest_refused: u64,
    pub deliveries: usize,
    pub expected_deliveries: usize,
    pub duplicates: u64,
    pub seconds: f64,
    pub deliveries_per_sec: f64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    pub ingest_max_ms: f64,
    /// From the last accepted event to the last delivery.
    pub drain_seconds: f64,
}

async fn hook(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(endpoint): Path<usize>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let now = marker::now_nanos();
    let mut sent = None;
    marker::Scanner::default().feed(&body, |t| sent = Some(t));
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.total += 1;
    seen.last = Some(Instant::now());
    if seen.distinct.insert(format!("{endpoint}/{id}"))
        && let Some(sent) = sent
    {
        let _ = seen
            .latency
            .record((now.saturating_sub(sent) / 1000).max(1));
    }
    StatusCode::NO_CONTENT
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Creates `--silent-endpoints` endpoints in the silent workspace on a listener that accepts
/// and never answers, and sends `--silent-events` events there; what it returns holds the
/// listener's connections open until dropped.
async fn silence(
    http: &reqwest::Client,
    base: &str,
    args: &WebhookArgs,
) -> Result<tokio::task::JoinHandle<()>> {
    let (Some(api_key), Some(runtime_key)) = (&args.silent_api_key, &args.silent_runtime_key)
    else {
        bail!("--silent-endpoints needs --silent-api-key and --silent-runtime-key");
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent = listener.local_addr()?;
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for i in 0..args.silent_endpoints {
        http.post(format!("{base}/v1/webhook-endpoints"))
            .bearer_auth(api_key)
            .json(&json!({"url": format!("http://{silent}/silent/{i}"), "event_types": ["custom.bench"]}))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("creating silent endpoint {i}"))?;
    }
    let call: Value = http
        .post(format!("{base}/v1/calls"))
        .bearer_auth(runtime_key)
        .json(&json!({"phone": "+14155550199", "direction": "inbound", "transport": "sip"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let call_id = call["id"].as_str().context("no call id")?;
    for _ in 0..args.silent_events {
        http.post(format!("{base}/v1/calls/{call_id}/events"))
            .bearer_auth(runtime_key)
            .json(&json!({"event_type": "custom.bench", "payload": {}}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(holder)
}

pub async fn run(args: WebhookArgs) -> Result<Outcome> {
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{} endpoints", args.endpoints));
    let seen = Arc::new(Mutex::new(Seen {
        distinct: HashSet::new(),
        total: 0,
        latency: hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)?,
        last: None,
    }));
    let app = axum::Router::new()
        .route("/hook/{endpoint}", axum::routing::post(hook))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let base = args.gateway.trim_end_matches('/').to_owned();
    let _silent = if args.silent_endpoints > 0 {
        Some(silence(&http, &base, &args).await?)
    } else {
        None
    };
    for i in 0..args.endpoints {
        let r = http
            .post(format!("{base}/v1/webhook-endpoints"))
            .bearer_auth(&args.api_key)
            .json(&json!({"url": format!("http://{receiver}/hook/{i}"), "event_types": ["custom.bench"]}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating endpoint {i}: {} {}", r.status(), r.text().await?);
        }
    }
    let call: Value = http
        .post(format!("{base}/v1/calls"))
        .bearer_auth(&args.runtime_key)
        .json(&json!({"phone": "+14155550100", "direction": "inbound", "transport": "sip"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let call_id = call["id"].as_str().context("no call id")?.to_owned();
    let url = format!("{base}/v1/calls/{call_id}/events");

    let mut ingest = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut accepted_ids: Vec<String> = Vec::with_capacity(args.events);
    let mut refused = 0u64;
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    for i in 0..args.events {
        let due = started + every.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        loop {
            let (stamp, _) = marker::stamp();
            let sent = Instant::now();
            let result = http
                .post(&url)
                .bearer_auth(&args.runtime_key)
                .json(&json!({"event_type": "custom.bench", "payload": {"t": stamp}}))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => {
                    let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = ingest.record(micros.max(1));
                    let answer: Value = r.json().await?;
                    let id = answer["event_ids"][0].as_str().context("no event id")?;
                    accepted_ids.push(id.to_owned());
                    break;
                }
                other if args.through_restarts => {
                    refused += 1;
                    let _ = other;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(r) => bail!("ingest refused: {} {}", r.status(), r.text().await?),
                Err(e) => bail!("ingest failed: {e}"),
            }
        }
    }
    let last_accepted = Instant::now();
    let accepted = accepted_ids.len();
    let expected = accepted * args.endpoints;
    let wanted: Vec<String> = (0..args.endpoints)
        .flat_map(|e| accepted_ids.iter().map(move |id| format!("{e}/{id}")))
        .collect();
    let deadline = last_accepted + Duration::from_secs(args.wait);
    let mut missing = wanted.len();
    while missing > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        missing = wanted
            .iter()
            .filter(|k| !seen.distinct.contains(*k))
            .count();
    }
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let last = seen.last.unwrap_or(last_accepted);
    let seconds = last.saturating_duration_since(started).as_secs_f64();
    let outcome = Outcome {
        label,
        endpoints: args.endpoints,
        events_accepted: accepted,
        ingest_refused: refused,
        deliveries: seen.distinct.len(),
        expected_deliveries: expected,
        duplicates: seen.total - seen.distinct.len() as u64,
        seconds,
        deliveries_per_sec: if seconds > 0.0 {
            seen.distinct.len() as f64 / seconds
        } else {
            0.0
        },
        delivery_p50_ms: ms(&seen.latency, 0.5),
        delivery_p99_ms: ms(&seen.latency, 0.99),
        delivery_max_ms: seen.latency.max() as f64 / 1000.0,
        ingest_p50_ms: ms(&ingest, 0.5),
        ingest_p99_ms: ms(&ingest, 0.99),
        ingest_max_ms: ingest.max() as f64 / 1000.0,
        drain_seconds: last.saturating_duration_since(last_accepted).as_secs_f64(),
    };
    println!(
        "| {} | {} events, {} refused | {} of {} deliveries, {} twice | {:.0} deliveries/s | delivery p50 {:.1} ms p99 {:.1} ms max {:.1} ms | ingest p50 {:.2} ms p99 {:.2} ms max {:.1} ms | drained {:.1} s after the last event |",
        outcome.label,
        outcome.events_accepted,
        outcome.ingest_refused,
        outcome.deliveries,
        outcome.expected_deliveries,
        outcome.duplicates,
        outcome.deliveries_per_sec,
        outcome.delivery_p50_ms,
        outcome.delivery_p99_ms,
        outcome.delivery_max_ms,
        outcome.ingest_p50_ms,
        outcome.ingest_p99_ms,
        outcome.ingest_max_ms,
        outcome.drain_seconds,
    );
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(&outcome)?)?;
    }
    if missing > 0 {
        bail!(
            "{missing} of {expected} deliveries of accepted events missing after {} s",
            args.wait
        );
    }
    Ok(outcome)
}
