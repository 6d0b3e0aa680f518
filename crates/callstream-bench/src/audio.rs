//! `audio`: many concurrent bidirectional audio streams (seed 004), measured from both ends.
//!
//! The generator plays every part around the gateway, over real sockets on 127.0.0.1:
//! - the call runtime: `--runtime-lanes` sockets on `/v1/runtime`, each sending the inbound audio
//!   of its calls (20 ms mu-law frames at absolute deadlines) and receiving what the gateway
//!   plays into them;
//! - the customers' services: one WebSocket listener, one connection per stream, recording when
//!   each `media` message arrives, and now and then sending a second of `playAudio` with a
//!   `checkpoint`, or three seconds followed half a second later by `clearAudio`.
//!
//! What it reports:
//! - cadence error: for each stream, how far each `media` message arrived from the 20 ms grid
//!   that fits its stream best (the grid through the earliest frame, so errors are lateness);
//! - `clearAudio` → `clearedAudio` at the service, and frames played into the call after
//!   `clearedAudio` arrived (one may be on its way; more would be stale audio heard);
//! - `playedStream` lateness: its arrival at the service minus the real end of the audio, the
//!   moment the runtime's last frame of it had played (received + 20 ms);
//! - the gateway's CPU and memory per stream (`--pids`), and the generator's own CPU.
//!
//! `--target raw` measures a minimal pacer instead (`audio-raw-pacer`, started here): the same
//! services receive pre-encoded `media` messages sent at absolute 20 ms deadlines by a process
//! that does nothing else, the baseline for cadence and for what sending costs.
//!
//! The audio frame format is the runtime socket's (docs/native-api.md), written here from the
//! documentation: the generator is a client like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::procstat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioTarget {
    Callstream,
    Raw,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AudioArgs {
    #[arg(long, value_enum, default_value = "callstream")]
    pub target: AudioTarget,
    /// The gateway's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub gateway: String,
    /// A runtime key (`rk_live_…`) of the workspace.
    #[arg(long, default_value = "")]
    pub runtime_key: String,
    /// An API key (`pk_live_…`) of the same workspace.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Concurrent streams (one call each).
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of streaming before measuring.
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Runtime sockets the calls are spread over.
    #[arg(long, default_value_t = 8)]
    pub runtime_lanes: usize,
    /// The streams' `content_type`.
    #[arg(long, default_value = "audio/x-l16;rate=8000")]
    pub content_type: String,
    /// Seconds between a stream's play-back cycles (a second of audio and a checkpoint, or a
    /// clear); each stream starts at its own offset.
    #[arg(long, default_value_t = 5.0)]
    pub play_every: f64,
    /// Every this-many-th cycle is a clear cycle instead.
    #[arg(long, default_value_t = 4)]
    pub clear_every: u64,
    /// For `--target raw`: the CPUs the pacer runs on (`taskset -c`), as the gateway would.
    #[arg(long)]
    pub pacer_cpus: Option<String>,
    /// Process ids of the gateway (or, for `--target raw`, found automatically).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    #[arg(long)]
    pub label: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one stream's service saw.
#[derive(Default)]
struct ServiceLog {
    media: Vec<Instant>,
    started: bool,
    /// Cycle number → when `playAudio` + `checkpoint` went out, when `playedStream` came.
    played_sent: HashMap<u64, Instant>,
    played_at: HashMap<u64, Instant>,
    /// Cycle number → when `clearAudio` went out, when `clearedAudio` came.
    clear_sent: HashMap<u64, Instant>,
    cleared_at: HashMap<u64, Instant>,
    other: u64,
}

/// Frames the runtime received to play: (stream index, tag byte, when).
type Played = Vec<(usize, u8, Instant)>;

/// The mu-law code that tags cycle `n`'s audio (never a silence code).
fn tag(n: u64) -> u8 {
    0x20 + u8::try_from(n % 64).unwrap_or(0)
}

/// G.711 mu-law decoding (ITU-T G.711), for building audio that encodes back to a given code.
fn mulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let v = if u & 0x80 != 0 { -magnitude } else { magnitude };
    i16::try_from(v).unwrap_or(0)
}

/// `seconds` of L16 at 8 kHz whose every sample is mu-law code `code` when encoded.
fn tagged_audio(code: u8, seconds: f64) -> String {
    let v = mulaw_to_linear(code);
    let n = (8000.0 * seconds) as usize;
    let mut bytes = Vec::with_capacity(n * 2);
    for _ in 0..n {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A runtime audio frame (docs/native-api.md): version 1, track, codec, id length, rate,
/// timestamp, id, samples.
fn frame_bytes(call: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + call.len() + payload.len());
    b.extend_from_slice(&[1, 0, 0, u8::try_from(call.len()).unwrap_or(0)]);
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(call.as_bytes());
    b.extend_from_slice(payload);
    b
}

/// The call id and first sample of a frame the gateway sent to play.
fn parse_frame(b: &[u8]) -> Option<(&str, u8)> {
    let len = usize::from(*b.get(3)?);
    let id = std::str::from_utf8(b.get(16..16 + len)?).ok()?;
    Some((id, *b.get(16 + len)?))
}

#[derive(Debug, Serialize)]
pub struct AudioOutcome {
    pub label: String,
    pub target: AudioTarget,
    pub streams: usize,
    pub connected: usize,
    pub content_type: String,
    pub seconds: f64,
    pub media_frames: u64,
    /// Media frames expected in the window (50 per second per stream).
    pub media_expected: u64,
    pub cadence_p50_ms: f64,
    pub cadence_p99_ms: f64,
    pub cadence_p999_ms: f64,
    pub cadence_max_ms: f64,
    /// How far each interval between two `media` messages of a stream is from 20 ms (the
    /// classic inter-arrival jitter: a one-time shift of the grid counts once, not for every
    /// frame after it).
    pub interval_p99_ms: f64,
    pub interval_max_ms: f64,
    pub clears: u64,
    pub clear_p50_ms: f64,
    pub clear_p99_ms: f64,
    pub clear_max_ms: f64,
    /// Frames played into a call after its `clearedAudio` arrived, beyond the one in flight.
    pub played_after_clear: u64,
    pub checkpoints: u64,
    /// `playedStream` that never came within the run.
    pub checkpoints_unanswered: u64,
    pub played_late_p50_ms: f64,
    pub played_late_p99_ms: f64,
    pub played_late_max_ms: f64,
    /// `playedStream` that came before the audio's real end (should be none).
    pub played_early: u64,
    /// Per second of the window: the worst cadence error (ms) and the media frames more than
    /// 10 ms off their grid. A host pause shows as one bad second; an overloaded server as many.
    pub timeline: Vec<(f64, u64)>,
    pub cpu_cores: f64,
    pub cpu_per_stream_pct: f64,
    pub pss_per_stream_bytes: f64,
    pub generator_cpu_cores: f64,
    pub host_steal_per_cpu: Vec<f64>,
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

pub async fn run(args: AudioArgs) -> Result<AudioOutcome> {
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{:?}", args.target).to_lowercase());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let logs: Arc<Vec<Mutex<ServiceLog>>> = Arc::new(
        (0..args.streams)
            .map(|_| Mutex::new(ServiceLog::default()))
            .collect(),
    );
    let played: Arc<Mutex<Played>> = Arc::new(Mutex::new(Vec::new()));
    let playing = args.target == AudioTarget::Callstream;
    tokio::spawn(services(
        listener,
        logs.clone(),
        playing,
        args.play_every,
        args.clear_every,
    ));

    let mut pids = args.pids.clone();
    let mut pacer = None;
    let mut runtime_lanes = Vec::new();
    let before;
    match args.target {
        AudioTarget::Callstream => {
            let http = reqwest::Client::new();
            eprintln!("[{label}] creating {} calls", args.streams);
            let calls = create_calls(&http, &args).await?;
            let index: HashMap<String, usize> = calls
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), i))
                .collect();
            let index = Arc::new(index);
            for lane in 0..args.runtime_lanes.max(1) {
                let mine: Vec<String> = calls
                    .iter()
                    .skip(lane)
                    .step_by(args.runtime_lanes.max(1))
                    .cloned()
                    .collect();
                runtime_lanes.push(tokio::spawn(runtime_lane(
                    args.gateway.clone(),
                    args.runtime_key.clone(),
                    mine,
                    index.clone(),
                    played.clone(),
                )));
            }
            // The runtime's audio flows; then memory before the streams.
            tokio::time::sleep(Duration::from_secs(2)).await;
            before = procstat::sample(&pids);
            eprintln!("[{label}] starting {} streams", args.streams);
            start_streams(&http, &args, &calls, port).await?;
        }
        AudioTarget::Raw => {
            let exe = std::env::current_exe()?;
            let mut command = match &args.pacer_cpus {
                Some(cpus) => {
                    let mut c = tokio::process::Command::new("taskset");
                    c.arg("-c").arg(cpus).arg(exe);
                    c
                }
                None => tokio::process::Command::new(exe),
            };
            let child = command
                .arg("audio-raw-pacer")
                .arg("--url")
                .arg(format!("ws://127.0.0.1:{port}/s/"))
                .arg("--streams")
                .arg(args.streams.to_string())
                .kill_on_drop(true)
                .spawn()?;
            if let Some(pid) = child.id() {
                pids = vec![pid];
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            before = procstat::sample(&pids);
            pacer = Some(child);
        }
    }
    // Everyone connected?
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let connected = logs.iter().filter(|l| lock(l).started).count();
        if connected == args.streams || Instant::now() > deadline {
            eprintln!("[{label}] {connected} of {} streams started", args.streams);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let generator = [std::process::id()];
    let (server_start, gen_start, host_start) = (
        procstat::cpu(&pids),
        procstat::cpu(&generator),
        procstat::HostSample::now(),
    );
    let from = Instant::now();
    eprintln!("[{label}] measuring for {} s", args.duration);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let to = Instant::now();
    let (server_end, gen_end, host_end) = (
        procstat::cpu(&pids),
        procstat::cpu(&generator),
        procstat::HostSample::now(),
    );
    // Let answers to cycles begun in the window arrive. Memory is read now, after the window:
    // reading `smaps_rollup` takes the process's memory-map lock, and an allocation that needs
    // it meanwhile waits (a visible pause in every stream, when it was read at the window's
    // start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_sample = procstat::sample(&pids);
    for lane in &runtime_lanes {
        lane.abort();
    }
    drop(pacer);

    // Cadence.
    let mut cadence = histogram()?;
    let mut intervals = histogram()?;
    let seconds_total = usize::try_from(args.duration).unwrap_or(0) + 1;
    let mut timeline = vec![(0.0f64, 0u64); seconds_total];
    let mut media_frames = 0u64;
    let mut connected = 0usize;
    for log in logs.iter() {
        let log = lock(log);
        connected += usize::from(log.started);
        let window: Vec<Instant> = log
            .media
            .iter()
            .copied()
            .filter(|t| *t >= from && *t < to)
            .collect();
        let Some(first) = window.first().copied() else {
            continue;
        };
        media_frames += window.len() as u64;
        for pair in window.windows(2) {
            let gap = pair[1].duration_since(pair[0]).as_secs_f64();
            intervals.record(((gap - 0.020).abs() * 1e6).max(1.0) as u64)?;
        }
        let grid = Duration::from_millis(20);
        // The grid through the earliest frame: offset = min over k of (arrival_k - 20k).
        let offsets: Vec<f64> = window
            .iter()
            .enumerate()
            .map(|(k, t)| t.duration_since(first).as_secs_f64() - grid.as_secs_f64() * k as f64)
            .collect();
        let min = offsets.iter().copied().fold(f64::MAX, f64::min);
        if std::env::var("AUDIO_DEBUG").is_ok() {
            let late = offsets.iter().filter(|o| **o - min > 0.010).count();
            if late > window.len() / 20 {
                let at = offsets.iter().position(|o| *o == min).unwrap_or(0);
                let show = |r: std::ops::Range<usize>| {
                    r.filter_map(|k| offsets.get(k))
                        .map(|o| format!("{:.0}", (o - min) * 1000.0))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                eprintln!(
                    "late stream: {late}/{} late; min at frame {at}; around it: {}; first: {}",
                    window.len(),
                    show(at.saturating_sub(5)..at + 5),
                    show(0..10)
                );
            }
        }
        for (t, o) in window.iter().zip(offsets) {
            let error = o - min;
            cadence.record((error * 1e6).max(1.0) as u64)?;
            let second = (t.duration_since(from).as_secs() as usize).min(seconds_total - 1);
            let slot = &mut timeline[second];
            slot.0 = slot.0.max(error * 1000.0);
            if error > 0.010 {
                slot.1 += 1;
            }
        }
    }

    // Clears and checkpoints, against what the runtime received.
    let played = std::mem::take(&mut *lock(&played));
    let mut by_stream: HashMap<usize, Vec<(u8, Instant)>> = HashMap::new();
    for (i, code, at) in played {
        by_stream.entry(i).or_default().push((code, at));
    }
    let (mut clear, mut late) = (histogram()?, histogram()?);
    let (mut clears, mut after_clear, mut checkpoints, mut unanswered, mut early) = (0, 0, 0, 0, 0);
    for (i, log) in logs.iter().enumerate() {
        let log = lock(log);
        let frames = by_stream.get(&i).map(Vec::as_slice).unwrap_or(&[]);
        for (n, sent) in &log.clear_sent {
            if *sent < from || *sent >= to {
                continue;
            }
            let Some(cleared) = log.cleared_at.get(n) else {
                continue;
            };
            clears += 1;
            clear.record(micros(cleared.duration_since(*sent)))?;
            let stale = frames
                .iter()
                .filter(|(code, at)| *code == tag(*n) && at > cleared)
                .count() as u64;
            after_clear += stale.saturating_sub(1);
        }
        for (n, sent) in &log.played_sent {
            if *sent < from || *sent >= to {
                continue;
            }
            checkpoints += 1;
            let Some(answered) = log.played_at.get(n) else {
                unanswered += 1;
                continue;
            };
            // The last frame of this cycle's audio that the runtime received.
            let Some(last) = frames
                .iter()
                .filter(|(code, at)| *code == tag(*n) && at > sent)
                .map(|(_, at)| *at)
                .max()
            else {
                continue;
            };
            let end = last + Duration::from_millis(20);
            if *answered >= end {
                late.record(micros(answered.duration_since(end)))?;
            } else {
                early += 1;
                late.record(1)?;
            }
        }
    }

    let seconds = to.duration_since(from).as_secs_f64();
    let cpu = procstat::cpu_cores(&server_start, &server_end);
    let outcome = AudioOutcome {
        label,
        target: args.target,
        streams: args.streams,
        connected,
        content_type: args.content_type.clone(),
        seconds,
        media_frames,
        media_expected: (seconds * 50.0) as u64 * connected as u64,
        cadence_p50_ms: ms(&cadence, 0.5),
        cadence_p99_ms: ms(&cadence, 0.99),
        cadence_p999_ms: ms(&cadence, 0.999),
        cadence_max_ms: ms(&cadence, 1.0),
        interval_p99_ms: ms(&intervals, 0.99),
        interval_max_ms: ms(&intervals, 1.0),
        clears,
        clear_p50_ms: ms(&clear, 0.5),
        clear_p99_ms: ms(&clear, 0.99),
        clear_max_ms: ms(&clear, 1.0),
        played_after_clear: after_clear,
        checkpoints,
        checkpoints_unanswered: unanswered,
        played_late_p50_ms: ms(&late, 0.5),
        played_late_p99_ms: ms(&late, 0.99),
        played_late_max_ms: ms(&late, 1.0),
        played_early: early,
        timeline,
        cpu_cores: cpu,
        cpu_per_stream_pct: cpu * 100.0 / args.streams.max(1) as f64,
        pss_per_stream_bytes: (connected_sample.pss_kib.saturating_sub(before.pss_kib) as f64
            * 1024.0)
            / args.streams.max(1) as f64,
        generator_cpu_cores: procstat::cpu_cores(&gen_start, &gen_end),
        host_steal_per_cpu: procstat::steal_shares(&host_start, &host_end),
    };
    print(&outcome);
    if let Some(path) = &args.json {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(&outcome)?)?;
    }
    Ok(outcome)
}

fn print(o: &AudioOutcome) {
    eprintln!(
        "[{}] {} of {} streams, {:.0} s: media {} of {} expected\n\
         \x20 cadence error p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; interval error p99 {:.2} ms, max {:.2} ms\n\
         \x20 clear→cleared ({}) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; frames played after: {}\n\
         \x20 playedStream late ({}, {} unanswered, {} early) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
         \x20 CPU {:.2} cores ({:.3} % of a core per stream), {:.0} B per stream; generator {:.2} cores; steal {:?}\n\
         \x20 worst second by second (ms, frames late > 10 ms): {}",
        o.label,
        o.connected,
        o.streams,
        o.seconds,
        o.media_frames,
        o.media_expected,
        o.cadence_p50_ms,
        o.cadence_p99_ms,
        o.cadence_p999_ms,
        o.cadence_max_ms,
        o.interval_p99_ms,
        o.interval_max_ms,
        o.clears,
        o.clear_p50_ms,
        o.clear_p99_ms,
        o.clear_max_ms,
        o.played_after_clear,
        o.checkpoints,
        o.checkpoints_unanswered,
        o.played_early,
        o.played_late_p50_ms,
        o.played_late_p99_ms,
        o.played_late_max_ms,
        o.cpu_cores,
        o.cpu_per_stream_pct,
        o.pss_per_stream_bytes,
        o.generator_cpu_cores,
        o.host_steal_per_cpu,
        o.timeline
            .iter()
            .map(|(ms, late)| format!("{ms:.0}/{late}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn create_calls(http: &reqwest::Client, args: &AudioArgs) -> Result<Vec<String>> {
    let mut calls = Vec::with_capacity(args.streams);
    for chunk in (0..args.streams).collect::<Vec<_>>().chunks(32) {
        let requests = chunk.iter().map(|i| {
            http.post(format!("{}/v1/calls", args.gateway))
                .bearer_auth(&args.runtime_key)
                .json(&json!({"phone": format!("+1415{:07}", i), "direction": "inbound", "transport": "sip"}))
                .send()
        });
        for r in futures::future::join_all(requests).await {
            let r = r?;
            let status = r.status();
            let body: Value = r.json().await?;
            if !status.is_success() {
                bail!("creating a call: {status} {body}");
            }
            calls.push(body["id"].as_str().context("call id")?.to_owned());
        }
    }
    Ok(calls)
}

async fn start_streams(
    http: &reqwest::Client,
    args: &AudioArgs,
    calls: &[String],
    port: u16,
) -> Result<()> {
    let workspace: Value = http
        .get(format!("{}/v1/workspace", args.gateway))
        .bearer_auth(&args.api_key)
        .send()
        .await?
        .json()
        .await?;
    let auth_id = workspace["auth_id"].as_str().context("auth_id")?.to_owned();
    let indexed: Vec<(usize, &String)> = calls.iter().enumerate().collect();
    for chunk in indexed.chunks(32) {
        let requests = chunk.iter().map(|(i, call)| {
            http.post(format!(
                "{}/api/v1/Account/{auth_id}/Call/{call}/Stream/",
                args.gateway
            ))
            .header("X-Auth-ID", &auth_id)
            .header("X-Auth-Token", &args.api_key)
            .json(&json!({
                "service_url": format!("ws://127.0.0.1:{port}/s/{i}"),
                "bidirectional": true,
                "content_type": args.content_type,
            }))
            .send()
        });
        for r in futures::future::join_all(requests).await {
            let r = r?;
            if !r.status().is_success() {
                let status = r.status();
                bail!(
                    "starting a stream: {status} {}",
                    r.text().await.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// One runtime socket: sends its calls' inbound audio every 20 ms (absolute deadlines) and
/// records what the gateway plays into them.
async fn runtime_lane(
    gateway: String,
    key: String,
    calls: Vec<String>,
    index: Arc<HashMap<String, usize>>,
    played: Arc<Mutex<Played>>,
) -> Result<()> {
    let url = format!(
        "{}/v1/runtime?acks=errors",
        gateway.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let tcp = ws.get_ref();
    if let tokio_tungstenite::MaybeTlsStream::Plain(s) = tcp {
        let _ = s.set_nodelay(true);
    }
    let (mut sink, mut stream) = ws.split();
    // A quiet tone, one frame per call, prepared once.
    let payload: Vec<u8> = (0..160)
        .map(|i| if i % 2 == 0 { 0xf0 } else { 0x70 })
        .collect();
    let frames: Vec<Bytes> = calls
        .iter()
        .map(|c| Bytes::from(frame_bytes(c, &payload)))
        .collect();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Binary(b) = m
                && let Some((call, code)) = parse_frame(&b)
                && let Some(i) = index.get(call)
            {
                lock(&played).push((*i, code, Instant::now()));
            }
        }
    });
    let start = Instant::now();
    for k in 0u32.. {
        tokio::time::sleep_until(start + Duration::from_millis(20) * k).await;
        for f in &frames {
            sink.feed(Message::Binary(f.clone())).await?;
        }
        sink.flush().await?;
    }
    Ok(())
}

/// The services: one WebSocket connection per stream, `/s/{index}`.
async fn services(
    listener: TcpListener,
    logs: Arc<Vec<Mutex<ServiceLog>>>,
    playing: bool,
    play_every: f64,
    clear_every: u64,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut path = String::new();
            // The callback's signature is tungstenite's; its error type is not ours to shrink.
            #[allow(clippy::result_large_err)]
            let ws = tokio_tungstenite::accept_hdr_async(
                tcp,
                |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                    path = req.uri().path().to_owned();
                    Ok(resp)
                },
            )
            .await;
            let Ok(ws) = ws else { return };
            let Some(i) = path
                .strip_prefix("/s/")
                .and_then(|i| i.parse::<usize>().ok())
            else {
                return;
            };
            if i >= logs.len() {
                return;
            }
            let _ = service(ws, &logs[i], i, playing, play_every, clear_every).await;
        });
    }
}

async fn service(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    log: &Mutex<ServiceLog>,
    i: usize,
    playing: bool,
    play_every: f64,
    clear_every: u64,
) -> Result<()> {
    let (mut sink, mut stream) = ws.split();
    // Streams spread their cycles over the period, so that they do not all play at once.
    let offset = Duration::from_secs_f64(play_every * ((i * 7919) % 1000) as f64 / 1000.0);
    let period = Duration::from_secs_f64(play_every);
    let first = Instant::now() + Duration::from_secs(2) + offset;
    let mut cycle = 0u64;
    let mut clear_due: Option<(u64, Instant)> = None;
    loop {
        let next_cycle = first + period * u32::try_from(cycle).unwrap_or(u32::MAX);
        let wake = match clear_due {
            Some((_, at)) => at.min(next_cycle),
            None => next_cycle,
        };
        tokio::select! {
            m = stream.next() => {
                let Some(Ok(m)) = m else { return Ok(()) };
                let at = Instant::now();
                let Message::Text(text) = m else { continue };
                let text = text.as_str();
                if text.starts_with(r#"{"event":"media""#) {
                    lock(log).media.push(at);
                    continue;
                }
                let v: Value = serde_json::from_str(text)?;
                let mut log = lock(log);
                match v["event"].as_str() {
                    Some("start") => log.started = true,
                    Some("playedStream") => {
                        if let Some(n) = v["name"].as_str().and_then(|n| n.strip_prefix('c')).and_then(|n| n.parse().ok()) {
                            log.played_at.insert(n, at);
                        }
                    }
                    Some("clearedAudio") => {
                        // Answers the newest clear.
                        if let Some(n) = log.clear_sent.keys().max().copied() {
                            log.cleared_at.entry(n).or_insert(at);
                        }
                    }
                    _ => log.other += 1,
                }
            }
            () = tokio::time::sleep_until(wake), if playing => {
                if let Some((n, at)) = clear_due
                    && Instant::now() >= at
                {
                    clear_due = None;
                    sink.send(Message::Text(json!({"event": "clearAudio"}).to_string().into())).await?;
                    lock(log).clear_sent.insert(n, Instant::now());
                    continue;
                }
                let n = cycle;
                cycle += 1;
                if n % clear_every.max(1) == clear_every.max(1) - 1 {
                    // Three seconds, cleared after half a second.
                    let play = json!({"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": tagged_audio(tag(n), 3.0)}});
                    sink.send(Message::Text(play.to_string().into())).await?;
                    clear_due = Some((n, Instant::now() + Duration::from_millis(500)));
                } else {
                    let play = json!({"event": "playAudio", "media": {"contentType": "audio/x-l16", "sampleRate": 8000, "payload": tagged_audio(tag(n), 1.0)}});
                    sink.feed(Message::Text(play.to_string().into())).await?;
                    sink.feed(Message::Text(json!({"event": "checkpoint", "name": format!("c{n}")}).to_string().into())).await?;
                    sink.flush().await?;
                    lock(log).played_sent.insert(n, Instant::now());
                }
            }
        }
    }
}

/// `audio-raw-pacer`: the baseline. Connects `streams` sockets to `url{i}` and sends each a
/// pre-encoded `media` message every 20 ms at absolute deadlines; nothing else.
pub async fn raw_pacer(url: &str, streams: usize) -> Result<()> {
    let media = {
        let payload = base64::engine::general_purpose::STANDARD.encode([0u8; 320]);
        Bytes::from(format!(
            r#"{{"event":"media","sequenceNumber":1,"streamId":"00000000-0000-4000-8000-000000000000","media":{{"track":"inbound","timestamp":"0","chunk":0,"payload":"{payload}"}}}}"#
        ))
    };
    let start_msg = Bytes::from(r#"{"event":"start","sequenceNumber":0,"start":{}}"#);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let (url, media, start_msg) = (format!("{url}{i}"), media.clone(), start_msg.clone());
        tasks.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url).await?;
            if let tokio_tungstenite::MaybeTlsStream::Plain(s) = ws.get_ref() {
                let _ = s.set_nodelay(true);
            }
            let (mut sink, mut stream) = ws.split();
            tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
            let text = |b: &Bytes| {
                Message::Text(
                    tokio_tungstenite::tungstenite::Utf8Bytes::try_from(b.clone())
                        .unwrap_or_default(),
                )
            };
            sink.send(text(&start_msg)).await?;
            let origin = Instant::now();
            for k in 1u32.. {
                tokio::time::sleep_until(origin + Duration::from_millis(20) * k).await;
                sink.send(text(&media)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("raw pacer: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_audio_encodes_back_to_its_tag() {
        // Every code's decoded value is on mu-law's grid, so a G.711 encoder (the gateway's,
        // converting played L16 to the call's mu-law) gives the same code back: the tag
        // survives. (0x7f is "-0", which encodes as 0xff.)
        for code in (0u8..=255).filter(|c| *c != 0x7f) {
            assert_eq!(
                callstream_audio::g711::encode_mulaw(mulaw_to_linear(code)),
                code
            );
        }
        assert_eq!(mulaw_to_linear(0xff), 0);
        assert_eq!(mulaw_to_linear(0x80), 32124);
        assert_eq!(mulaw_to_linear(0x00), -32124);
        assert_ne!(tag(3), tag(4));
        assert_eq!(tag(64), tag(0));
    }

    #[test]
    fn frames_round_trip_through_the_documented_layout() {
        let b = frame_bytes("call_abc", &[7, 8]);
        assert_eq!(&b[..4], &[1, 0, 0, 8]);
        assert_eq!(&b[4..8], &8000u32.to_le_bytes());
        assert_eq!(parse_frame(&b), Some(("call_abc", 7)));
        assert_eq!(parse_frame(&b[..10]), None);
    }
}
