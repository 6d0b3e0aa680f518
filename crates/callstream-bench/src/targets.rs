//! The servers under test: how to open channels on each, how to subscribe, how to publish.
//! Every target gets the same workload from the same generator.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::subscriber::{Kind, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Callstream,
    Nchan,
    Pushpin,
    /// The ceiling: a minimal writer of pre-encoded SSE frames (`callstream-bench raw-server`).
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Sse,
    Ws,
}

/// Where a target listens.
#[derive(Debug, Clone, clap::Args)]
pub struct Endpoints {
    /// Subscriber base URL (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base: String,
    /// Publisher address: callstream's base URL, Nchan's, Pushpin's publish URL, or the raw
    /// server's publish host:port.
    #[arg(long)]
    pub publish: Option<String>,
    /// callstream API key (subscribers).
    #[arg(long, env = "CALLSTREAM_API_KEY")]
    pub api_key: Option<String>,
    /// callstream runtime key (publisher).
    #[arg(long, env = "CALLSTREAM_RUNTIME_KEY")]
    pub runtime_key: Option<String>,
    /// Which of callstream's runtime-socket messages are answered (`/v1/runtime?acks=`):
    /// `all` (an `accepted` per message, the default) or `errors` (refusals only).
    #[arg(long, value_enum, default_value_t = RuntimeAcks::All)]
    pub runtime_acks: RuntimeAcks,
    /// callstream: up to this many of one call's events that are due together go in one
    /// runtime message (a runtime that batches; pair it with a coarser `--publish-tick-ms`).
    /// Above 1, each call's events keep to one publisher lane.
    #[arg(long, default_value_t = 1)]
    pub events_per_message: usize,
}

/// callstream's `?acks=` on the runtime socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeAcks {
    All,
    Errors,
}

fn host(base: &str) -> &str {
    base.split_once("://")
        .map_or(base, |(_, r)| r)
        .trim_end_matches('/')
}

/// Opens `channels` channels on the target and returns their ids.
pub async fn open_channels(
    kind: TargetKind,
    ep: &Endpoints,
    channels: usize,
) -> Result<Vec<String>> {
    match kind {
        TargetKind::Callstream => {
            let key = ep
                .runtime_key
                .clone()
                .context("--runtime-key is needed for callstream")?;
            let http = reqwest::Client::new();
            let url = format!("{}/v1/calls", ep.base.trim_end_matches('/'));
            let ids = futures::stream::iter(0..channels)
                .map(|i| {
                    let (http, url, key) = (http.clone(), url.clone(), key.clone());
                    async move {
                        let body = json!({"phone": format!("+1415{:07}", i % 10_000_000), "direction": "inbound", "transport": "sip"});
                        let r: Value = http.post(&url).bearer_auth(&key).json(&body).send().await?.error_for_status()?.json().await?;
                        r["id"].as_str().map(str::to_owned).context("no call id")
                    }
                })
                .buffered(32)
                .collect::<Vec<Result<String>>>()
                .await;
            ids.into_iter().collect()
        }
        _ => Ok((0..channels).map(|i| format!("ch{i}")).collect()),
    }
}

/// Ends callstream calls opened by [`open_channels`] with `call.completed`; other targets' channels
/// need no end.
pub async fn close_channels(kind: TargetKind, ep: &Endpoints, channels: &[String]) -> Result<()> {
    if kind != TargetKind::Callstream {
        return Ok(());
    }
    let key = ep
        .runtime_key
        .clone()
        .context("--runtime-key is needed for callstream")?;
    let http = reqwest::Client::new();
    let base = ep.base.trim_end_matches('/').to_owned();
    let ended = futures::stream::iter(channels)
        .map(|id| {
            let (http, key) = (http.clone(), key.clone());
            let url = format!("{base}/v1/calls/{id}/events");
            async move {
                let body = json!({"event_type": "call.completed", "payload": {"reason": "bench run over"}});
                http.post(&url).bearer_auth(&key).json(&body).send().await?.error_for_status()?;
                anyhow::Ok(())
            }
        })
        .buffered(32)
        .collect::<Vec<Result<()>>>()
        .await;
    ended.into_iter().collect()
}

/// One subscription to `channel`.
pub fn subscription(
    kind: TargetKind,
    transport: Transport,
    ep: &Endpoints,
    channel: &str,
    stuck: bool,
) -> Result<Subscription> {
    let base = ep.base.trim_end_matches('/');
    let ws_base = format!("ws://{}", host(base));
    let (url, headers) = match (kind, transport) {
        (TargetKind::Callstream, Transport::Sse) => {
            let key = ep
                .api_key
                .clone()
                .context("--api-key is needed for callstream")?;
            (
                format!("{base}/v1/calls/{channel}/transcript/stream"),
                vec![("authorization".to_owned(), format!("Bearer {key}"))],
            )
        }
        (TargetKind::Callstream, Transport::Ws) => {
            let key = ep
                .api_key
                .clone()
                .context("--api-key is needed for callstream")?;
            (
                format!("{ws_base}/v1/calls/{channel}/stream?token={key}"),
                vec![],
            )
        }
        (TargetKind::Nchan, Transport::Sse) => (format!("{base}/sub?id={channel}"), vec![]),
        (TargetKind::Nchan, Transport::Ws) => (format!("{ws_base}/sub?id={channel}"), vec![]),
        (TargetKind::Pushpin, Transport::Sse) => (format!("{base}/stream/{channel}"), vec![]),
        (TargetKind::Pushpin, Transport::Ws) => (format!("{ws_base}/ws?channel={channel}"), vec![]),
        (TargetKind::Raw, Transport::Sse) => (format!("{base}/{channel}"), vec![]),
        (TargetKind::Raw, Transport::Ws) => bail!("the raw baseline speaks SSE only"),
    };
    let kind = if stuck && transport == Transport::Ws {
        Kind::StuckWs
    } else if stuck {
        Kind::Stuck
    } else if transport == Transport::Ws {
        Kind::Ws
    } else {
        Kind::Sse
    };
    Ok(Subscription { url, headers, kind })
}

/// Sends events. `publish` gets a batch of (channel, marker) pairs due now.
pub struct Publisher {
    lanes: Vec<mpsc::Sender<Vec<(String, String)>>>,
    /// Each channel's events on one lane (its hash), so that they can be batched.
    by_channel: bool,
    pub errors: Arc<std::sync::atomic::AtomicU64>,
}

impl Publisher {
    pub async fn publish(&self, batch: Vec<(String, String)>) {
        if self.lanes.len() == 1 {
            let _ = self.lanes[0].send(batch).await;
            return;
        }
        let mut split: Vec<Vec<(String, String)>> = vec![Vec::new(); self.lanes.len()];
        for (i, item) in batch.into_iter().enumerate() {
            let lane = if self.by_channel {
                use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                BuildHasherDefault::<DefaultHasher>::default().hash_one(&item.0) as usize
            } else {
                i
            };
            split[lane % self.lanes.len()].push(item);
        }
        for (lane, items) in self.lanes.iter().zip(split) {
            if !items.is_empty() {
                let _ = lane.send(items).await;
            }
        }
    }
}

/// Connects the publisher for a target, with `lanes` parallel connections.
pub async fn publisher(kind: TargetKind, ep: &Endpoints, lanes: usize) -> Result<Publisher> {
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..lanes.max(1) {
        let (tx, rx) = mpsc::channel::<Vec<(String, String)>>(64);
        senders.push(tx);
        let errors = errors.clone();
        match kind {
            TargetKind::Callstream => {
                let key = ep
                    .runtime_key
                    .clone()
                    .context("--runtime-key is needed for callstream")?;
                let acks = match ep.runtime_acks {
                    RuntimeAcks::All => "all",
                    RuntimeAcks::Errors => "errors",
                };
                let url = format!(
                    "ws://{}/v1/runtime?acks={acks}",
                    host(ep.publish.as_deref().unwrap_or(&ep.base))
                );
                let mut request = url.as_str().into_client_request()?;
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {key}").parse()?);
                // Nagle off, as on every other connection the generator opens: with it on
                // (`connect_async`'s default) a lane's next message could wait for the server's
                // delayed ACK, and every frame of that event came 40 ms late.
                let (ws, _) =
                    tokio_tungstenite::connect_async_with_config(request, None, true).await?;
                tokio::spawn(callstream_lane(
                    ws,
                    rx,
                    errors,
                    ep.events_per_message.max(1),
                ));
            }
            TargetKind::Nchan => {
                let publish = ep.publish.clone().unwrap_or_else(|| ep.base.clone());
                tokio::spawn(http_lane(rx, errors, move |http, channel, marker| {
                    http.post(format!(
                        "{}/pub?id={channel}",
                        publish.trim_end_matches('/')
                    ))
                    .header("content-type", "application/json")
                    .body(json!({"text": marker}).to_string())
                }));
            }
            TargetKind::Pushpin => {
                let publish = ep
                    .publish
                    .clone()
                    .unwrap_or_else(|| "http://127.0.0.1:5561".into());
                tokio::spawn(pushpin_lane(publish, rx, errors));
            }
            TargetKind::Raw => {
                let addr = ep
                    .publish
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:8091".into());
                let stream = tokio::net::TcpStream::connect(host(&addr)).await?;
                stream.set_nodelay(true)?;
                tokio::spawn(raw_lane(stream, rx, errors));
            }
        }
    }
    Ok(Publisher {
        lanes: senders,
        by_channel: kind == TargetKind::Callstream && ep.events_per_message > 1,
        errors,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn callstream_lane(
    ws: Ws,
    mut rx: mpsc::Receiver<Vec<(String, String)>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    per_message: usize,
) {
    let (mut sink, mut stream) = ws.split();
    // Answers (accepted/error) are read so the socket never backs up; errors are counted.
    let errors2 = errors.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(t) = message
                && t.as_str().contains("\"type\":\"error\"")
            {
                errors2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    while let Some(batch) = rx.recv().await {
        if per_message == 1 {
            for (call, marker) in batch {
                // Written out rather than built as a serde_json::Value: the generator shares the
                // machine with the server, and the Value and its re-serialisation per event were
                // CPU taken from the server under test. Both strings need no escaping (an id, and
                // the marker `~ts:<digits>~`).
                let frame = format!(
                    r#"{{"type":"events","call_id":"{call}","events":{}}}"#,
                    transcription(&marker)
                );
                if sink.feed(Message::Text(frame.into())).await.is_err() {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            }
        } else {
            // Each call's due events, in order, up to `per_message` per message.
            let mut calls: Vec<(String, Vec<String>)> = Vec::new();
            for (call, marker) in batch {
                match calls.iter_mut().find(|(c, _)| *c == call) {
                    Some((_, markers)) => markers.push(marker),
                    None => calls.push((call, vec![marker])),
                }
            }
            for (call, markers) in calls {
                for chunk in markers.chunks(per_message) {
                    let events: Vec<String> = chunk.iter().map(|m| transcription(m)).collect();
                    let frame = format!(
                        r#"{{"type":"events","call_id":"{call}","events":[{}]}}"#,
                        events.join(",")
                    );
                    if sink.feed(Message::Text(frame.into())).await.is_err() {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        let _ = sink.flush().await;
    }
}

/// One partial transcript turn carrying `marker`, as the runtime protocol's event JSON.
fn transcription(marker: &str) -> String {
    format!(
        r#"{{"event_type":"call.transcription","payload":{{"role":"user","text":"{marker}","is_final":false,"turn_id":"trn_bench"}}}}"#
    )
}

async fn http_lane(
    mut rx: mpsc::Receiver<Vec<(String, String)>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
    request: impl Fn(&reqwest::Client, &str, &str) -> reqwest::RequestBuilder,
) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    while let Some(batch) = rx.recv().await {
        let results = futures::stream::iter(batch)
            .map(|(channel, marker)| request(&http, &channel, &marker).send())
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        for r in results {
            if !r.is_ok_and(|r| r.status().is_success()) {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

async fn pushpin_lane(
    publish: String,
    mut rx: mpsc::Receiver<Vec<(String, String)>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
) {
    let http = reqwest::Client::new();
    let url = format!("{}/publish/", publish.trim_end_matches('/'));
    while let Some(batch) = rx.recv().await {
        // Pushpin takes many items per publish request.
        let items: Vec<Value> = batch
            .iter()
            .map(|(channel, marker)| {
                let body = json!({"text": marker}).to_string();
                json!({"channel": channel, "formats": {
                    "http-stream": {"content": format!("data: {body}\n\n")},
                    "ws-message": {"content": body}}})
            })
            .collect();
        let ok = http
            .post(&url)
            .json(&json!({"items": items}))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            errors.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

async fn raw_lane(
    mut stream: tokio::net::TcpStream,
    mut rx: mpsc::Receiver<Vec<(String, String)>>,
    errors: Arc<std::sync::atomic::AtomicU64>,
) {
    while let Some(batch) = rx.recv().await {
        let mut lines = String::new();
        for (channel, marker) in batch {
            lines.push_str(&format!("{channel} {marker}\n"));
        }
        if stream.write_all(lines.as_bytes()).await.is_err() {
            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
    }
}
