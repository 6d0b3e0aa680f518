//! A worker process: holds many subscriptions open, measures each delivered event's latency
//! from its embedded send timestamp, and reports over stdout (JSON lines) until told to stop on
//! stdin. Several workers spread the sockets over processes (one process may hold at most
//! 20,000 open files here) and over 127.0.x.y source addresses (so ports never run out).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::marker::{Scanner, now_nanos};

/// How one subscription connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Sse,
    Ws,
    /// Opens an SSE stream and never reads it (the slow-consumer scenario).
    Stuck,
    /// Sends a WebSocket upgrade request and never reads anything, not even the answer.
    StuckWs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub url: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub kind: Kind,
}

/// What the coordinator sends a worker (one JSON line on its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub worker: u8,
    pub subscriptions: Vec<Subscription>,
    /// Connections opened at once while ramping up.
    pub connect_concurrency: usize,
}

/// What a worker reports (JSON lines on its stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    Ready {
        connected: u64,
        failed: u64,
        first_error: Option<String>,
    },
    Progress {
        frames: u64,
    },
    Done {
        frames: u64,
        errors: u64,
        histogram: String,
        /// Per second of sending (from the end of the warm-up): the worst latency and the
        /// frames later than [`LATE_MICROS`]. Tells one long pause from a spread of small ones.
        #[serde(default)]
        timeline: Vec<Second>,
    },
}

const SHARDS: usize = 16;

/// A frame later than this counts as late in the timeline.
pub const LATE_MICROS: u64 = 10_000;
/// Seconds the timeline covers; frames sent later are left out of it (not of the histogram).
const TIMELINE_SECONDS: usize = 3600;

/// One second of the timeline, by the time its frames were sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    pub max_micros: u64,
    pub late: u64,
}

/// The worst latency and the late frames per second of sending, recorded lock-free.
pub struct Timeline {
    max: Vec<AtomicU64>,
    late: Vec<AtomicU64>,
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            max: (0..TIMELINE_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            late: (0..TIMELINE_SECONDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records a frame sent at `sent` (unix nanos), `from` being the start of measuring.
    pub fn record(&self, from: u64, sent: u64, micros: u64) {
        let Ok(second) = usize::try_from(sent.saturating_sub(from) / 1_000_000_000) else {
            return;
        };
        if second >= TIMELINE_SECONDS {
            return;
        }
        self.max[second].fetch_max(micros, Ordering::Relaxed);
        if micros > LATE_MICROS {
            self.late[second].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The seconds up to the last one with any frame.
    pub fn seconds(&self) -> Vec<Second> {
        let mut out: Vec<Second> = self
            .max
            .iter()
            .zip(&self.late)
            .map(|(m, l)| Second {
                max_micros: m.load(Ordering::Relaxed),
                late: l.load(Ordering::Relaxed),
            })
            .collect();
        while out.last().is_some_and(|s| s.max_micros == 0) {
            out.pop();
        }
        out
    }
}

/// Merges workers' timelines: the worst of each second, and every worker's late frames.
pub fn merge_timelines(into: &mut Vec<Second>, other: &[Second]) {
    if into.len() < other.len() {
        into.resize(other.len(), Second::default());
    }
    for (a, b) in into.iter_mut().zip(other) {
        a.max_micros = a.max_micros.max(b.max_micros);
        a.late += b.late;
    }
}

/// Latency histograms (microseconds), sharded so that recording rarely contends.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub fn new() -> Result<Self> {
        let shards = (0..SHARDS)
            .map(|_| Histogram::new_with_bounds(1, 600_000_000, 3).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { shards })
    }

    fn record(&self, shard: usize, micros: u64) {
        if let Ok(mut h) = self.shards[shard % SHARDS].lock() {
            h.saturating_record(micros.max(1));
        }
    }

    pub fn merged(&self) -> Result<Histogram<u64>> {
        let mut total = Histogram::new_with_bounds(1, 600_000_000, 3)?;
        for shard in &self.shards {
            if let Ok(h) = shard.lock() {
                total.add(&*h)?;
            }
        }
        Ok(total)
    }
}

pub fn encode(h: &Histogram<u64>) -> Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub fn decode(text: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

struct Counters {
    timeline: Timeline,
    frames: AtomicU64,
    errors: AtomicU64,
    /// Frames sent before this time (unix nanos) are the warm-up's: neither counted nor timed.
    measure_from: AtomicU64,
}

fn emit(report: &Report) {
    if let Ok(line) = serde_json::to_string(report) {
        println!("{line}");
    }
}

/// Runs a worker: reads its plan from stdin, connects, reports, stops on "stop". A line
/// `measure <unix nanos>` ends the warm-up: frames sent before that time are not counted.
pub async fn run_worker() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let plan: Plan = serde_json::from_str(&stdin.next_line().await?.context("no plan on stdin")?)?;
    let latencies = Arc::new(Latencies::new()?);
    let counters = Arc::new(Counters {
        timeline: Timeline::new(),
        frames: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        measure_from: AtomicU64::new(0),
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(plan.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let total = plan.subscriptions.len();
    for (i, sub) in plan.subscriptions.into_iter().enumerate() {
        let source = Ipv4Addr::new(
            127,
            0,
            1 + plan.worker,
            1 + u8::try_from(i % 200).unwrap_or(0),
        );
        let (latencies, counters, limit, ready) = (
            latencies.clone(),
            counters.clone(),
            limit.clone(),
            ready_tx.clone(),
        );
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let connected = connect(&sub, source).await;
            drop(permit);
            match connected {
                Ok(conn) => {
                    let _ = ready.send(Ok(())).await;
                    drop(ready);
                    if let Err(_e) = conn.read_all(i, &latencies, &counters).await {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}"))).await;
                }
            }
        });
    }
    drop(ready_tx);
    let (mut connected, mut failed, mut first_error) = (0u64, 0u64, None);
    for _ in 0..total {
        match ready_rx.recv().await {
            Some(Ok(())) => connected += 1,
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            None => break,
        }
    }
    emit(&Report::Ready {
        connected,
        failed,
        first_error,
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let line = line.ok().flatten();
                match line.as_deref() {
                    Some("stop") | None => break,
                    Some(other) => {
                        if let Some(from) = other.strip_prefix("measure ").and_then(|n| n.parse().ok()) {
                            counters.measure_from.store(from, Ordering::Relaxed);
                        }
                    }
                }
            }
            _ = tick.tick() => emit(&Report::Progress { frames: counters.frames.load(Ordering::Relaxed) }),
        }
    }
    let histogram = encode(&latencies.merged()?)?;
    emit(&Report::Done {
        frames: counters.frames.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        histogram,
        timeline: counters.timeline.seconds(),
    });
    Ok(())
}

enum Connection {
    Sse(TcpStream, Vec<u8>),
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
    Stuck(TcpStream),
}

/// A stuck client's receive buffer. Left to autotuning, a socket that is never read takes some
/// 100 KB before its window closes; a small one (the kernel doubles it and keeps its own
/// minimum) closes it within a second or two. What the server's own send buffer then takes
/// (some 95 KB at callstream's default) is covered by the slow scenario's warm-up: until both
/// are full the server writes to a stuck client as to any healthy one.
const STUCK_RECV_BUFFER: u32 = 4096;

async fn tcp(host_port: &str, source: Ipv4Addr, kind: Kind) -> Result<TcpStream> {
    let addr: SocketAddr = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .context("no address")?;
    let socket = TcpSocket::new_v4()?;
    if matches!(kind, Kind::Stuck | Kind::StuckWs) {
        // Before connecting: the window scale is agreed in the handshake.
        socket.set_recv_buffer_size(STUCK_RECV_BUFFER)?;
    }
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn split_url(url: &str) -> Result<(&str, &str)> {
    let rest = url.split_once("://").map(|(_, r)| r).context("no scheme")?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// A GET request head written out by hand: `fixed` header lines, then the subscription's own.
fn get_request(sub: &Subscription, host: &str, path: &str, fixed: &str) -> String {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{fixed}");
    for (k, v) in &sub.headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request
}

async fn connect(sub: &Subscription, source: Ipv4Addr) -> Result<Connection> {
    let (host, path) = split_url(&sub.url)?;
    let mut stream = tcp(host, source, sub.kind).await?;
    match sub.kind {
        Kind::Sse | Kind::Stuck => {
            let request = get_request(sub, host, path, "Accept: text/event-stream\r\n");
            stream.write_all(request.as_bytes()).await?;
            if sub.kind == Kind::Stuck {
                return Ok(Connection::Stuck(stream));
            }
            // Read the response head; what follows it is the stream.
            let mut head = Vec::with_capacity(1024);
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("closed before the response head");
                }
                head.extend_from_slice(&buf[..n]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let status = String::from_utf8_lossy(&head[..head.len().min(12)]).into_owned();
                    if !status.contains(" 200") {
                        bail!("{}", String::from_utf8_lossy(&head[..end]));
                    }
                    return Ok(Connection::Sse(stream, head[end + 4..].to_vec()));
                }
                if head.len() > 16 * 1024 {
                    bail!("response head too long");
                }
            }
        }
        Kind::StuckWs => {
            // The handshake written out by hand, since any client library would read the answer.
            // The key is RFC 6455's sample nonce: the server only hashes it.
            let request = get_request(
                sub,
                host,
                path,
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            );
            stream.write_all(request.as_bytes()).await?;
            Ok(Connection::Stuck(stream))
        }
        Kind::Ws => {
            let mut request = sub.url.as_str().into_client_request()?;
            for (k, v) in &sub.headers {
                request.headers_mut().insert(
                    reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                    v.parse()?,
                );
            }
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            Ok(Connection::Ws(Box::new(ws)))
        }
    }
}

impl Connection {
    async fn read_all(
        self,
        index: usize,
        latencies: &Latencies,
        counters: &Counters,
    ) -> Result<()> {
        let mut scanner = Scanner::default();
        let mut on_marker = |ts: u64| {
            let from = counters.measure_from.load(Ordering::Relaxed);
            if ts < from {
                return;
            }
            let micros = now_nanos().saturating_sub(ts) / 1000;
            latencies.record(index, micros);
            if from > 0 {
                counters.timeline.record(from, ts, micros);
            }
            counters.frames.fetch_add(1, Ordering::Relaxed);
        };
        match self {
            Self::Sse(mut stream, first) => {
                scanner.feed(&first, &mut on_marker);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    scanner.feed(&buf[..n], &mut on_marker);
                }
            }
            Self::Ws(mut ws) => {
                while let Some(message) = ws.next().await {
                    if let Message::Text(text) = message? {
                        scanner.feed(text.as_bytes(), &mut on_marker);
                    }
                }
                Ok(())
            }
            Self::Stuck(stream) => {
                // Hold the socket open, reading nothing, until the worker ends.
                std::future::pending::<()>().await;
                drop(stream);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_keeps_each_seconds_worst_and_late_frames_by_send_time() {
        let from = 1_000_000_000_000;
        let t = Timeline::new();
        t.record(from, from + 100, 900);
        t.record(from, from + 999_999_999, 12_000);
        t.record(from, from + 2_500_000_000, 40_000);
        t.record(from, from + 2_600_000_000, 11_000);
        t.record(from, from + 2_700_000_000, 3_000);
        // Beyond the timeline: left out, not a panic.
        t.record(from, u64::MAX, 1);
        let seconds = t.seconds();
        assert_eq!(
            seconds,
            [
                Second {
                    max_micros: 12_000,
                    late: 1
                },
                Second::default(),
                Second {
                    max_micros: 40_000,
                    late: 2
                },
            ]
        );
        let mut merged = vec![Second {
            max_micros: 50_000,
            late: 7,
        }];
        merge_timelines(&mut merged, &seconds);
        assert_eq!(
            merged[0],
            Second {
                max_micros: 50_000,
                late: 8
            }
        );
        assert_eq!(merged[2], seconds[2]);
    }
}
