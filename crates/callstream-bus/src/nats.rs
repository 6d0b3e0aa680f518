//! The NATS backend: several gateway nodes share one bus.
//!
//! - **Events** are stored in one JetStream stream over `cs.*.call.*` and `cs.*.conv.*` (24 h by
//!   default) and published with an acknowledgement, so a publish that returns was stored. A
//!   batch of one topic's events is one message (a JSON array, or a single envelope object), so
//!   it is stored or refused whole. Headers: `Nats-Msg-Id` (`{subject}:{first seq}`: a retried
//!   publish is de-duplicated, and a second batch starting at a seq the subject already has is
//!   refused with [`BusError::SeqsTaken`]), `Cs-Seq` and `Cs-Last-Seq` (the batch's first and
//!   last seq), and `Cs-Origin` (which node's which batch: the node that published it hands
//!   its own events over undecoded; optional, and meaningless to any other node).
//! - **One shared reader per node**: an ordered JetStream consumer over the whole stream feeds
//!   an [`InProcessBus`] that does this node's fan-out, per-subscriber queues and recent history,
//!   exactly as on one node. The ordered consumer notices any gap in the stream's sequence (a
//!   NATS reconnect, a restarted server) and recreates itself after the last message it handed
//!   over, so the node catches up on everything it missed, in order: a reconnect is a gap that
//!   backfills itself. Nothing here ever blocks on a subscriber.
//! - **Resume** from memory when the node's history reaches back far enough, else from
//!   JetStream by subject with batched direct gets (server 2.11 or later), without a consumer
//!   per client: a binary search over the stream for the first message after the resume point,
//!   then batches of 256.
//! - **Audio** travels on core NATS only (`cs.{workspace}.audio.{call}.{in|out}`, the binary
//!   frame of `core::audio`), subscribed per call while this node has listeners to it. It is
//!   never stored. Publishing never waits: frames go through a bounded queue to a sending task
//!   and are dropped (and counted) when it is full.
//!
//! Delivery order across nodes rests on the publishers: the seq authority (the store's row lock
//! on the call) is held until the publish is acknowledged, so the stream holds each topic's
//! batches in seq order, and every node's reader sees them in that order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, stream::Stream as JsStream};
use async_nats::{Client, HeaderMap};
use async_trait::async_trait;
use bytes::Bytes;
use callstream_core::audio::{AudioFrame, Track};
use callstream_core::{CallId, Envelope, WorkspaceId};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::audio::{AudioSubscription, AudioTopics};
use crate::{
    Bus, BusError, BusStats, Event, Gap, InProcessBus, InProcessConfig, PublishReport, Resume,
    SubscribeOptions, Subscription, Topic,
};

/// The subjects the event stream stores.
pub const EVENT_SUBJECTS: [&str; 2] = ["cs.*.call.*", "cs.*.conv.*"];
/// The header with a message's first seq.
pub const SEQ_HEADER: &str = "Cs-Seq";
/// The header with a message's last seq.
pub const LAST_SEQ_HEADER: &str = "Cs-Last-Seq";
/// The header that names the node and batch a message came from (`{node}.{batch}`), so that the
/// node that published it hands its own events over without decoding them ([`OwnBatches`]).
pub const ORIGIN_HEADER: &str = "Cs-Origin";
/// Messages asked for per batched direct get.
const REPLAY_BATCH: usize = 256;
/// Audio frames waiting to be sent before new ones are dropped.
const AUDIO_QUEUE: usize = 8192;

/// How to reach NATS and size the stream.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `nats://host:port` (several, comma-separated, for a cluster).
    pub url: String,
    /// The JetStream stream that keeps events.
    pub stream: String,
    /// How long events stay resumable.
    pub max_age: Duration,
    /// Stream replicas (1 on a single server; 3 on a cluster of three).
    pub replicas: usize,
    /// How long a publish may wait for JetStream's acknowledgement.
    pub publish_timeout: Duration,
    /// This node's local fan-out and recent history.
    pub local: InProcessConfig,
    /// The connection's name, as NATS monitoring shows it.
    pub name: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "CALLSTREAM_EVENTS".into(),
            max_age: Duration::from_secs(24 * 3600),
            replicas: 1,
            publish_timeout: Duration::from_secs(2),
            local: InProcessConfig::default(),
            name: "callstream".into(),
        }
    }
}

/// Counters a NATS backend keeps, for metrics.
#[derive(Debug, Default)]
pub struct NatsStats {
    /// Times the connection came back after it was lost.
    pub reconnects: AtomicU64,
    /// Times the connection was lost.
    pub disconnects: AtomicU64,
    /// Resumes served from JetStream (the node's memory did not reach back far enough).
    pub replays: AtomicU64,
    /// Events read back from JetStream for resumes.
    pub replayed_events: AtomicU64,
    /// Messages on the event subjects that were not envelopes (ignored).
    pub malformed: AtomicU64,
    /// Audio frames dropped because the sending queue was full.
    pub audio_dropped: AtomicU64,
    /// Event messages handed over by the live path.
    pub live_messages: AtomicU64,
    /// Event messages this node published itself, handed over (by either path) as the events
    /// they were made of, undecoded ([`OwnBatches`]).
    pub own_messages: AtomicU64,
    /// Event messages handed over by the stored path.
    pub stored_messages: AtomicU64,
    /// Woken when the connection comes back: the reader then starts again after the last
    /// message it handed over, at once, instead of waiting to miss two heartbeats.
    reconnected: tokio::sync::Notify,
}

/// The batches this node is publishing, until JetStream acknowledges them: when one comes back
/// on the live path, its events are handed to this node's streams as they were published (the
/// same `Arc<Event>`s, their JSON already made) instead of being decoded from the payload. A node
/// that ingests a call at 20,000 events/s spent an eighth of its time decoding its own events
/// back (docs/benchmarks.md, "Where the CPU goes").
struct OwnBatches {
    /// This node's part of [`ORIGIN_HEADER`]: random, so that no other node's messages match.
    node: String,
    next: AtomicU64,
    pending: crate::FastMap<u64, Vec<Arc<Event>>>,
}

impl OwnBatches {
    fn new() -> Self {
        let mut bytes = [0u8; 8];
        callstream_core::id::random_bytes(&mut bytes);
        Self {
            node: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            next: AtomicU64::new(0),
            pending: crate::FastMap::default(),
        }
    }

    /// Keeps `events` while the returned guard lives (the publish, however it ends).
    fn start(&self, events: Vec<Arc<Event>>) -> Publishing<'_> {
        let batch = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(batch, events);
        Publishing { own: self, batch }
    }

    /// The events of a message this node published and has not seen acknowledged yet.
    fn take(&self, headers: Option<&HeaderMap>) -> Option<Vec<Arc<Event>>> {
        let origin = headers?.get(ORIGIN_HEADER)?.as_str();
        let (node, batch) = origin.split_once('.')?;
        if node != self.node {
            return None;
        }
        self.pending
            .remove(&batch.parse().ok()?)
            .map(|(_, events)| events)
    }
}

/// One batch of [`OwnBatches`] on its way; forgotten when dropped.
struct Publishing<'a> {
    own: &'a OwnBatches,
    batch: u64,
}

impl Publishing<'_> {
    fn origin(&self) -> String {
        format!("{}.{}", self.own.node, self.batch)
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.own.pending.remove(&self.batch);
    }
}

/// Connects to NATS with the options every callstream connection uses: reconnect forever, and
/// report connection changes to `stats`.
///
/// # Errors
/// When the server cannot be reached.
pub async fn connect(url: &str, name: &str, stats: Arc<NatsStats>) -> Result<Client, BusError> {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let stats = stats.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        stats.reconnected.notify_one();
                        tracing::info!("NATS connection restored");
                    }
                    async_nats::Event::Disconnected => {
                        stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS subscription fell behind");
                    }
                    other => tracing::debug!(event = %other, "NATS"),
                }
            }
        });
    options
        .connect(url)
        .await
        .map_err(|e| BusError::Unavailable(format!("cannot connect to NATS at {url}: {e}")))
}

/// Parses `major.minor` of a server version (`2.12.8`).
fn version(text: &str) -> (u32, u32) {
    let mut parts = text.trim_start_matches('v').split('.');
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// The bus on NATS. See the module documentation.
pub struct NatsBus {
    client: Client,
    js: jetstream::Context,
    stream: String,
    /// The stream's handle, for reading its state.
    handle: JsStream,
    local: Arc<InProcessBus>,
    audio: Arc<AudioTopics>,
    /// Calls whose audio this node subscribes to on NATS, with the forwarding task.
    audio_subs: tokio::sync::Mutex<HashMap<Topic, tokio::task::JoinHandle<()>>>,
    audio_out: mpsc::Sender<(String, Bytes)>,
    /// The last seq this node published per topic: a republish of an older seq is skipped.
    published: crate::FastMap<Topic, u64>,
    own: Arc<OwnBatches>,
    stats: Arc<NatsStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(subs) = self.audio_subs.try_lock() {
            for task in subs.values() {
                task.abort();
            }
        }
    }
}

impl NatsBus {
    /// Connects, creates (or updates) the event stream, and starts this node's reader.
    ///
    /// # Errors
    /// When NATS cannot be reached, is older than 2.11 (batched direct get), has no JetStream,
    /// or refuses the stream's configuration.
    pub async fn connect(config: NatsConfig) -> Result<Self, BusError> {
        let stats = Arc::new(NatsStats::default());
        let client = connect(&config.url, &config.name, stats.clone()).await?;
        let server = client.server_info();
        if version(&server.version) < (2, 11) {
            return Err(BusError::Unavailable(format!(
                "NATS server {} is too old: callstream needs 2.11 or later (batched direct get)",
                server.version
            )));
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.publish_timeout);
        js.create_or_update_stream(jetstream::stream::Config {
            name: config.stream.clone(),
            subjects: EVENT_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            max_age: config.max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            BusError::Unavailable(format!(
                "creating the JetStream stream {}: {e}",
                config.stream
            ))
        })?;
        let handle = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| BusError::Unavailable(format!("opening stream {}: {e}", config.stream)))?;
        let local = Arc::new(InProcessBus::new(config.local.clone()));
        let (audio_out, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        // The reader starts before `connect` returns, so nothing published from now on is missed.
        let own = Arc::new(OwnBatches::new());
        let reader =
            start_reader(handle.clone(), local.clone(), own.clone(), stats.clone()).await?;
        let live = start_live(&client, local.clone(), own.clone(), stats.clone()).await?;
        let sender = tokio::spawn(send_audio(client.clone(), audio_rx));
        Ok(Self {
            client,
            js,
            stream: config.stream,
            handle,
            local,
            audio: Arc::new(AudioTopics::default()),
            audio_subs: tokio::sync::Mutex::new(HashMap::new()),
            audio_out,
            published: crate::FastMap::default(),
            own,
            stats,
            tasks: vec![reader, live, sender],
        })
    }

    pub fn stats_counters(&self) -> &Arc<NatsStats> {
        &self.stats
    }

    /// The NATS connection, for others on this node that speak NATS (the command router).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether this node's memory serves a resume after `after` on its own.
    fn covers(&self, topic: &Topic, after: u64) -> bool {
        match self.local.bounds(topic) {
            Some((Some(first), last)) => first <= after.saturating_add(1) || after >= last,
            _ => false,
        }
    }

    /// The first message of `subject` at stream sequence `from` or later that carries events:
    /// its stream sequence, and the first and last seq it carries. Messages that are not
    /// envelopes (something else wrote to the subject) are passed over: a seq of 0 would send
    /// the resume's binary search past the events it looks for.
    async fn probe(&self, subject: &str, from: u64) -> Result<Option<(u64, u64, u64)>, BusError> {
        let mut from = from;
        loop {
            let got = self.direct_batch(subject, from, 8).await?;
            if let Some(m) = got.iter().find(|m| m.first > 0) {
                return Ok(Some((m.stream_seq, m.first, m.last)));
            }
            match got.last() {
                Some(m) if got.len() == 8 => from = m.stream_seq + 1,
                _ => return Ok(None),
            }
        }
    }

    /// After JetStream took a batch as a duplicate of the message at stream sequence
    /// `original`: `Ok` when that message is this very batch (a retry), otherwise
    /// [`BusError::SeqsTaken`] with the highest seq the subject holds. Two batches can start at
    /// the same seq only when the first went out and its store transaction failed before the
    /// burn of its seqs landed (`docs/operations.md`, failure modes).
    async fn taken(
        &self,
        subject: &str,
        original: u64,
        head: &Event,
        tail: &Event,
    ) -> Result<(), BusError> {
        let mut from = original;
        let mut last = 0;
        let mut first_message = None;
        loop {
            let got = self.direct_batch(subject, from, 16).await?;
            for m in &got {
                last = last.max(m.last);
                if first_message.is_none() {
                    first_message = Some((m.stream_seq, m.first, m.last, m.payload.clone()));
                }
            }
            match got.last() {
                Some(m) if got.len() == 16 => from = m.stream_seq + 1,
                _ => break,
            }
        }
        if let Some((stream_seq, first, stored_last, payload)) = first_message
            && stream_seq == original
            && first == head.seq()
            && stored_last == tail.seq()
            && decode_events(&payload).is_ok_and(|events| {
                events.first().map(|e| &e.event_id) == Some(&head.envelope().event_id)
            })
        {
            return Ok(());
        }
        Err(BusError::SeqsTaken {
            last: last.max(tail.seq()),
        })
    }

    /// Up to `batch` messages of `subject` from stream sequence `from` on.
    async fn direct_batch(
        &self,
        subject: &str,
        from: u64,
        batch: usize,
    ) -> Result<Vec<Stored>, BusError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            BusError::Unavailable(format!("reading the event history from JetStream: {e}"))
        };
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(&e))?;
        let request =
            serde_json::json!({"seq": from.max(1), "next_by_subj": subject, "batch": batch});
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.stream),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let mut out = Vec::new();
        loop {
            let message = match tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(unavailable(&"the connection closed")),
                Err(_) => return Err(unavailable(&"no answer within 5 s")),
            };
            match message.status.map(|s| s.as_u16()) {
                None | Some(200) => {}
                // End of batch, or nothing (more) for this subject.
                Some(204 | 404) => break,
                Some(other) => {
                    return Err(unavailable(&format!(
                        "status {other} {}",
                        message.description.unwrap_or_default()
                    )));
                }
            }
            let headers = message.headers.as_ref();
            let number = |name: &str| {
                headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
            };
            let Some(stream_seq) = number("Nats-Sequence") else {
                return Err(unavailable(&"a direct get answer without Nats-Sequence"));
            };
            let (first, last) = match (number(SEQ_HEADER), number(LAST_SEQ_HEADER)) {
                (Some(first), Some(last)) => (first, last),
                // Published by someone else (a runtime that speaks NATS): read the seqs.
                _ => match decode_events(&message.payload) {
                    Ok(events) if !events.is_empty() => (
                        events.first().map_or(0, |e| e.seq),
                        events.last().map_or(0, |e| e.seq),
                    ),
                    _ => (0, 0),
                },
            };
            out.push(Stored {
                stream_seq,
                first,
                last,
                payload: message.payload,
            });
            if out.len() >= batch {
                // The server still sends its end-of-batch marker; it is not waited for.
                break;
            }
        }
        let _ = replies.unsubscribe().await;
        Ok(out)
    }

    /// Every stored event of `subject` with a seq above `after`, in order, and the gap when the
    /// stream no longer reaches back to `after + 1`.
    async fn replay(
        &self,
        subject: &str,
        after: u64,
    ) -> Result<(Vec<Arc<Event>>, Option<Gap>), BusError> {
        let Some((first_stream, first_seq, first_last)) = self.probe(subject, 1).await? else {
            return Ok((Vec::new(), None));
        };
        let gap = (first_seq > after.saturating_add(1)).then_some(Gap {
            requested_after: after,
            first_available: first_seq,
        });
        // Where to start reading: the subject's first message that holds a seq above `after`.
        let mut start = first_stream;
        if first_last <= after {
            let info =
                self.handle.get_info().await.map_err(|e| {
                    BusError::Unavailable(format!("reading the stream's state: {e}"))
                })?;
            // Invariant: the message at or after `lo` ends at or before `after`; the first one at
            // or after `hi` (if any) ends after it.
            let (mut lo, mut hi) = (first_stream, info.state.last_sequence.saturating_add(1));
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                match self.probe(subject, mid).await? {
                    Some((found, _, last)) if last <= after => lo = found.max(mid),
                    _ => hi = mid,
                }
            }
            start = hi;
        }
        let mut events = Vec::new();
        let mut next = start;
        loop {
            let batch = self.direct_batch(subject, next, REPLAY_BATCH).await?;
            let full = batch.len() == REPLAY_BATCH;
            for stored in &batch {
                next = stored.stream_seq + 1;
                match decode_events(&stored.payload) {
                    Ok(decoded) => events.extend(
                        decoded
                            .into_iter()
                            .filter(|e| e.seq > after)
                            .map(Event::new),
                    ),
                    Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if !full {
                break;
            }
        }
        // One authority publishes each topic in order; should anything else have written to the
        // subject, keep the first of each seq in order.
        let mut last = after;
        events.retain(|e| {
            let keep = e.seq() > last;
            if keep {
                last = e.seq();
            }
            keep
        });
        self.stats.replays.fetch_add(1, Ordering::Relaxed);
        self.stats
            .replayed_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok((events, gap))
    }

    /// Subscribes this node to a call's audio on NATS, once, while it has listeners.
    async fn ensure_audio(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subs = self.audio_subs.lock().await;
        if subs.get(topic).is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let mut sub = self
            .client
            .subscribe(format!("{topic}.*"))
            .await
            .map_err(|e| BusError::Unavailable(format!("subscribing to audio: {e}")))?;
        // The server has the subscription before the first frame is published.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Unavailable(format!("subscribing to audio: {e}")))?;
        let (audio, key) = (self.audio.clone(), topic.clone());
        let task = tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                match AudioFrame::decode(&message.payload) {
                    Ok(frame) => {
                        audio.publish(&key, Arc::new(frame));
                    }
                    Err(e) => tracing::debug!(error = %e, "a malformed audio frame on NATS"),
                }
            }
        });
        subs.insert(topic.clone(), task);
        Ok(())
    }
}

/// One stored message, as a direct get returns it.
struct Stored {
    stream_seq: u64,
    first: u64,
    last: u64,
    payload: Bytes,
}

/// The envelopes of one message: a JSON array of them, or one envelope object.
///
/// # Errors
/// When the payload is neither.
pub fn decode_events(payload: &[u8]) -> Result<Vec<Envelope>, serde_json::Error> {
    let start = payload.iter().find(|b| !b.is_ascii_whitespace());
    if start == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|e| vec![e])
    }
}

/// Encodes one topic's events as one message.
fn encode_events(events: &[Arc<Event>]) -> Bytes {
    if let [one] = events {
        return one.json();
    }
    let envelopes: Vec<&Envelope> = events.iter().map(|e| e.envelope()).collect();
    Bytes::from(serde_json::to_vec(&envelopes).unwrap_or_default())
}

/// Starts this node's reader: an ordered consumer over the stream from now on, feeding `local`.
async fn start_reader(
    stream: JsStream,
    local: Arc<InProcessBus>,
    own: Arc<OwnBatches>,
    stats: Arc<NatsStats>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    // From the end of the stream as it is now: everything after it reaches this node.
    let mut last_stream_seq = stream
        .get_info()
        .await
        .map_err(|e| BusError::Unavailable(format!("reading the stream's state: {e}")))?
        .state
        .last_sequence;
    let consumer = move |policy: DeliverPolicy| {
        let stream = stream.clone();
        async move {
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| BusError::Unavailable(format!("creating the event reader: {e}")))?;
            consumer
                .messages()
                .await
                .map_err(|e| BusError::Unavailable(format!("starting the event reader: {e}")))
        }
    };
    let after = |seq: u64| DeliverPolicy::ByStartSequence {
        start_sequence: seq + 1,
    };
    let mut messages = consumer(after(last_stream_seq)).await?;
    Ok(tokio::spawn(async move {
        loop {
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    () = stats.reconnected.notified() => break,
                };
                let Some(message) = message else { break };
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "event reader");
                        continue;
                    }
                };
                if let Ok(info) = message.info() {
                    last_stream_seq = info.stream_sequence;
                }
                let subject = message.subject.as_str();
                if already_delivered(&local, subject, message.headers.as_ref()) {
                    continue;
                }
                stats.stored_messages.fetch_add(1, Ordering::Relaxed);
                deliver(
                    &local,
                    &own,
                    &stats,
                    subject,
                    message.headers.as_ref(),
                    &message.payload,
                )
                .await;
            }
            // Reconnected, or the ordered consumer gave up: start again after the last message
            // handed over.
            let policy = after(last_stream_seq);
            loop {
                match consumer(policy).await {
                    Ok(again) => {
                        messages = again;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event reader: retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }))
}

/// A message's seq header, if it has one.
fn seq_header(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// Starts this node's live path: a core NATS subscription to the event subjects, which sees
/// every publish as the server routes it, before JetStream has stored it and acknowledged it.
/// A message is handed over from here only when it continues exactly what this node holds for
/// its topic (its `Cs-Seq` is the next seq); anything else (a message dropped on the way, one
/// that ran ahead, one without the headers, a topic this node has not seen) waits for the
/// stored path, the ordered reader, which hands over everything in order and skips what the
/// live path already delivered. Measured across two nodes (docs/benchmarks.md, "Several
/// nodes"): the stored path alone put JetStream's store and acknowledgement (p50 1.4 ms, p99
/// 4 ms) and the consumer's delivery (p99 2.9 ms) in every frame's way.
async fn start_live(
    client: &Client,
    local: Arc<InProcessBus>,
    own: Arc<OwnBatches>,
    stats: Arc<NatsStats>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let mut subscribers = Vec::new();
    for subject in EVENT_SUBJECTS {
        subscribers.push(
            client
                .subscribe(subject)
                .await
                .map_err(|e| BusError::Unavailable(format!("subscribing to {subject}: {e}")))?,
        );
    }
    let mut messages = futures::stream::select_all(subscribers);
    Ok(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            let handed = deliver_live(
                &local,
                &own,
                message.subject.as_str(),
                message.headers.as_ref(),
                &message.payload,
            )
            .await;
            match handed {
                Handed::Own => {
                    stats.live_messages.fetch_add(1, Ordering::Relaxed);
                    stats.own_messages.fetch_add(1, Ordering::Relaxed);
                }
                Handed::Decoded => {
                    stats.live_messages.fetch_add(1, Ordering::Relaxed);
                }
                Handed::No => {}
            }
        }
    }))
}

/// What the live path did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handed {
    /// Handed over: this node's own, undecoded.
    Own,
    /// Handed over, decoded from its payload.
    Decoded,
    /// Left to the stored path.
    No,
}

/// Hands a message seen live to this node's subscribers if it continues its topic exactly;
/// says whether it did, and how. A message this node published itself hands over the events it was
/// made from, undecoded. Nothing is counted as malformed here: the stored path sees the same
/// message and counts it.
async fn deliver_live(
    local: &InProcessBus,
    own: &OwnBatches,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Handed {
    let Some(first) = seq_header(headers, SEQ_HEADER) else {
        return Handed::No;
    };
    if local.last_seq(subject).unwrap_or(0).checked_add(1) != Some(first) {
        return Handed::No;
    }
    let (events, handed) = match own.take(headers) {
        Some(events) => (events, Handed::Own),
        None => {
            let Ok(envelopes) = decode_events(payload) else {
                return Handed::No;
            };
            (
                envelopes.into_iter().map(Event::new).collect(),
                Handed::Decoded,
            )
        }
    };
    if events.first().map(|e| e.seq()) != Some(first)
        || events
            .iter()
            .any(|e| Topic::of(e.envelope()).as_str() != subject)
    {
        return Handed::No;
    }
    for event in events {
        let _ = local.publish(event).await;
    }
    handed
}

/// Whether a stored message holds nothing this node has not already handed over (the live path
/// delivered it): then it is not decoded again.
fn already_delivered(local: &InProcessBus, subject: &str, headers: Option<&HeaderMap>) -> bool {
    seq_header(headers, LAST_SEQ_HEADER)
        .zip(local.last_seq(subject))
        .is_some_and(|(last, held)| last <= held)
}

/// Hands one stored message's events to this node's subscribers (this node's own as they were
/// published, if the stored path sees one before the live path and the acknowledgement).
async fn deliver(
    local: &InProcessBus,
    own: &OwnBatches,
    stats: &NatsStats,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) {
    if let Some(events) = own.take(headers) {
        stats.own_messages.fetch_add(1, Ordering::Relaxed);
        for event in events {
            let _ = local.publish(event).await;
        }
        return;
    }
    let Ok(envelopes) = decode_events(payload) else {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            subject,
            "a message on the event subjects that is not an envelope"
        );
        return;
    };
    for envelope in envelopes {
        // An envelope must travel on its own subject (its workspace and call or conversation).
        if Topic::of(&envelope).as_str() != subject {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(subject, "an envelope on another topic's subject");
            continue;
        }
        let _ = local.publish(Event::new(envelope)).await;
    }
}

async fn send_audio(client: Client, mut frames: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, payload)) = frames.recv().await {
        if let Err(e) = client.publish(subject, payload).await {
            tracing::debug!(error = %e, "audio frame not published");
        }
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, event: Arc<Event>) -> Result<PublishReport, BusError> {
        self.publish_batch(&[event]).await
    }

    async fn publish_batch(&self, events: &[Arc<Event>]) -> Result<PublishReport, BusError> {
        let Some(first) = events.first() else {
            return Ok(PublishReport::default());
        };
        // Refused at once while the connection is down: a publish buffered for the reconnect
        // could land after the caller gave up on it.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(BusError::Unavailable("NATS is not connected".into()));
        }
        let topic = Topic::of(first.envelope());
        // What this node already published is not published again (a retry after a timeout).
        let done = self.published.get(&topic).map_or(0, |s| *s);
        let fresh: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| e.seq() > done && Topic::of(e.envelope()) == topic)
            .cloned()
            .collect();
        let (Some(head), Some(tail)) = (fresh.first(), fresh.last()) else {
            return Ok(PublishReport::default());
        };
        let mut headers = HeaderMap::new();
        // One id per subject and first seq: JetStream then refuses, inside its duplicate
        // window, a second batch that starts at a seq already published on the subject (see
        // `taken`), as well as a retry of this one.
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", topic.as_str(), head.seq()).as_str(),
        );
        headers.insert(SEQ_HEADER, head.seq().to_string().as_str());
        headers.insert(LAST_SEQ_HEADER, tail.seq().to_string().as_str());
        let unavailable =
            |e: &dyn std::fmt::Display| BusError::Unavailable(format!("publishing to NATS: {e}"));
        let payload = encode_events(&fresh);
        // Kept only until the acknowledgement: the live path sees the message before that (the
        // server routes it to subscribers as it stores it), or else decodes it like any other.
        let publishing = self.own.start(fresh.clone());
        headers.insert(ORIGIN_HEADER, publishing.origin().as_str());
        let ack = self
            .js
            .publish_with_headers(topic.as_str().to_owned(), headers, payload)
            .await
            .map_err(|e| unavailable(&e))?;
        let ack = ack.await.map_err(|e| unavailable(&e))?;
        drop(publishing);
        if ack.duplicate {
            self.taken(topic.as_str(), ack.sequence, head, tail).await?;
        }
        if tail.envelope().payload.is_terminal() {
            self.published.remove(&topic);
        } else {
            self.published.insert(topic, tail.seq());
        }
        Ok(PublishReport::default())
    }

    async fn check(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Unavailable(format!("NATS is {state:?}"))),
        }
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        resume: Resume,
        options: SubscribeOptions,
    ) -> Result<Subscription, BusError> {
        let after = match resume {
            Resume::After(after) if !self.covers(topic, after) => after,
            _ => return self.local.subscribe(topic, resume, options).await,
        };
        let (stored, gap) = self.replay(topic.as_str(), after).await?;
        // Newer than this node has seen: its reader delivers them too, later, and they are then
        // ignored as already published.
        for event in &stored {
            let _ = self.local.publish(event.clone()).await;
        }
        let mut subscription = self.local.subscribe(topic, resume, options).await?;
        let first_held = subscription.first_backlog_seq();
        let earlier: Vec<Arc<Event>> = stored
            .into_iter()
            .filter(|e| first_held.is_none_or(|first| e.seq() < first))
            .collect();
        let gap = if earlier.is_empty() && first_held.is_none() {
            subscription.gap().or(gap)
        } else {
            gap
        };
        subscription.prepend(earlier, gap);
        Ok(subscription)
    }

    async fn publish_audio(
        &self,
        workspace: &WorkspaceId,
        frame: Arc<AudioFrame>,
    ) -> Result<PublishReport, BusError> {
        let track = match frame.track {
            Track::Inbound => "in",
            Track::Outbound => "out",
        };
        let subject = format!("{}.{track}", Topic::audio(workspace, &frame.call));
        match self.audio_out.try_send((subject, frame.encode())) {
            Ok(()) => Ok(PublishReport {
                queued: 1,
                dropped: 0,
            }),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.audio_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(PublishReport {
                    queued: 0,
                    dropped: 1,
                })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(BusError::Unavailable("the audio sender stopped".into()))
            }
        }
    }

    async fn subscribe_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        options: SubscribeOptions,
    ) -> Result<AudioSubscription, BusError> {
        let topic = Topic::audio(workspace, call);
        let subscription = self.audio.subscribe(&topic, options);
        self.ensure_audio(&topic).await?;
        Ok(subscription)
    }

    fn seen_up_to(&self, topic: &Topic) -> u64 {
        self.local.last_seq(topic.as_str()).unwrap_or(0)
    }

    async fn maintain(&self) {
        self.local.maintain().await;
        self.audio.sweep();
        let mut subs = self.audio_subs.lock().await;
        subs.retain(|topic, task| {
            let keep = self.audio.listeners_of(topic) > 0 && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        drop(subs);
        // Topics nobody published for a while need no republish guard.
        let local = &self.local;
        self.published
            .retain(|topic, _| local.bounds(topic).is_some());
    }

    fn stats(&self) -> BusStats {
        let mut stats = self.local.stats();
        stats.audio_listeners = self.audio.listeners();
        let n = &self.stats;
        stats.nats = Some(crate::NatsCounters {
            reconnects: n.reconnects.load(Ordering::Relaxed),
            disconnects: n.disconnects.load(Ordering::Relaxed),
            replays: n.replays.load(Ordering::Relaxed),
            replayed_events: n.replayed_events.load(Ordering::Relaxed),
            malformed: n.malformed.load(Ordering::Relaxed),
            audio_dropped: n.audio_dropped.load(Ordering::Relaxed),
            live_messages: n.live_messages.load(Ordering::Relaxed),
            own_messages: n.own_messages.load(Ordering::Relaxed),
            stored_messages: n.stored_messages.load(Ordering::Relaxed),
        });
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(version("2.12.8"), (2, 12));
        assert_eq!(version("v2.9.10"), (2, 9));
        assert!(version("2.9.10") < (2, 11));
        assert!(version("2.11.0") >= (2, 11));
        assert_eq!(version("nonsense"), (0, 0));
    }

    #[test]
    fn one_event_is_an_object_and_several_an_array_and_both_decode() {
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let one = crate::conformance::event(&ws, &call, 1, false);
        let two = crate::conformance::event(&ws, &call, 2, false);
        let single = encode_events(std::slice::from_ref(&one));
        assert_eq!(single.first(), Some(&b'{'));
        assert_eq!(decode_events(&single).unwrap()[0].seq, 1);
        let both = encode_events(&[one, two]);
        assert_eq!(both.first(), Some(&b'['));
        let decoded = decode_events(&both).unwrap();
        assert_eq!(decoded.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(decode_events(b"not json").is_err());
        assert!(decode_events(b"{\"event_id\": 1}").is_err());
    }

    fn headers(first: Option<u64>, last: Option<u64>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(first) = first {
            headers.insert(SEQ_HEADER, first.to_string().as_str());
        }
        if let Some(last) = last {
            headers.insert(LAST_SEQ_HEADER, last.to_string().as_str());
        }
        headers
    }

    /// The live path may only ever continue a topic: a message that ran ahead (one before it
    /// was lost on the way) or that cannot be checked is left to the stored path, which
    /// delivers everything in order. Were it handed over, the one before it would be dropped
    /// as older than what the node holds, and that node's streams would never see it.
    #[tokio::test]
    async fn a_live_message_is_handed_over_only_when_it_continues_its_topic() {
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let subject = topic.as_str();
        let local = InProcessBus::new(InProcessConfig::default());
        let own = OwnBatches::new();
        let mut sub = local
            .subscribe(
                &topic,
                Resume::Live,
                SubscribeOptions {
                    queue_capacity: 64,
                    dropped: prometheus_client::metrics::counter::Counter::default(),
                },
            )
            .await
            .unwrap();
        let batch = |seqs: &[u64]| {
            let events: Vec<Arc<Event>> = seqs
                .iter()
                .map(|s| crate::conformance::event(&ws, &call, *s, false))
                .collect();
            encode_events(&events)
        };

        // The first message of a topic this node has not seen: seq 1 continues nothing.
        let one_two = batch(&[1, 2]);
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(1), Some(2))),
                &one_two
            )
            .await,
            Handed::Decoded
        );
        assert_eq!(sub.next().await.unwrap().seq(), 1);
        assert_eq!(sub.next().await.unwrap().seq(), 2);

        // Ahead of what the node holds (3 was lost on the way): not handed over.
        let four = batch(&[4]);
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(4), Some(4))),
                &four
            )
            .await,
            Handed::No
        );
        // Without the headers, with headers that lie, on another topic's subject: not either.
        let three = batch(&[3]);
        assert_eq!(
            deliver_live(&local, &own, subject, None, &three).await,
            Handed::No
        );
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(3), Some(3))),
                &four
            )
            .await,
            Handed::No
        );
        let elsewhere = Topic::call(&ws, &CallId::new());
        assert_eq!(
            deliver_live(
                &local,
                &own,
                elsewhere.as_str(),
                Some(&headers(Some(1), Some(1))),
                &three
            )
            .await,
            Handed::No
        );
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(3), None)),
                b"not json"
            )
            .await,
            Handed::No
        );
        assert!(
            sub.try_next().is_none(),
            "nothing out of order reached the stream"
        );

        // The stored path delivers 3 and 4 in order; the live path then continues after them.
        let stats = NatsStats::default();
        deliver(&local, &own, &stats, subject, None, &three).await;
        deliver(&local, &own, &stats, subject, None, &four).await;
        assert_eq!(sub.next().await.unwrap().seq(), 3);
        assert_eq!(sub.next().await.unwrap().seq(), 4);
        let five = batch(&[5]);
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(5), Some(5))),
                &five
            )
            .await,
            Handed::Decoded
        );
        assert_eq!(sub.next().await.unwrap().seq(), 5);
    }

    /// What the live path delivered is skipped by the stored path on its headers, without
    /// decoding it again; anything it cannot tell that of is delivered (and dropped there if
    /// old).
    #[tokio::test]
    async fn a_stored_message_the_live_path_delivered_is_not_decoded_again() {
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let subject = topic.as_str();
        let local = InProcessBus::new(InProcessConfig::default());
        let own = OwnBatches::new();
        assert!(!already_delivered(
            &local,
            subject,
            Some(&headers(Some(1), Some(1)))
        ));
        let events = [
            crate::conformance::event(&ws, &call, 1, false),
            crate::conformance::event(&ws, &call, 2, false),
        ];
        let payload = encode_events(&events);
        assert_eq!(
            deliver_live(
                &local,
                &own,
                subject,
                Some(&headers(Some(1), Some(2))),
                &payload
            )
            .await,
            Handed::Decoded
        );
        assert!(already_delivered(
            &local,
            subject,
            Some(&headers(Some(1), Some(2)))
        ));
        assert!(already_delivered(
            &local,
            subject,
            Some(&headers(Some(2), Some(2)))
        ));
        assert!(!already_delivered(
            &local,
            subject,
            Some(&headers(Some(3), Some(3)))
        ));
        assert!(!already_delivered(&local, subject, None));
        assert!(!already_delivered(
            &local,
            subject,
            Some(&headers(Some(1), None))
        ));
    }

    /// A message this node is publishing comes back on the live path as the events it was made
    /// of, not decoded from its payload; any other node's message (or one of this node's whose
    /// acknowledgement came first) is decoded as before.
    #[tokio::test]
    async fn a_nodes_own_message_hands_over_its_events_undecoded() {
        let (ws, call) = (WorkspaceId::new(), CallId::new());
        let topic = Topic::call(&ws, &call);
        let subject = topic.as_str();
        let local = InProcessBus::new(InProcessConfig::default());
        let mut sub = local
            .subscribe(&topic, Resume::Live, crate::conformance::options(64))
            .await
            .unwrap();
        let own = OwnBatches::new();
        let events = vec![
            crate::conformance::event(&ws, &call, 1, false),
            crate::conformance::event(&ws, &call, 2, false),
        ];
        let publishing = own.start(events.clone());
        let mut mine = headers(Some(1), Some(2));
        mine.insert(ORIGIN_HEADER, publishing.origin().as_str());
        // The payload is not even read: the node has the events at hand.
        assert_eq!(
            deliver_live(&local, &own, subject, Some(&mine), b"not decoded").await,
            Handed::Own
        );
        for sent in &events {
            let got = sub.next().await.unwrap();
            assert!(Arc::ptr_eq(&got, sent), "the published Arc itself");
        }
        assert!(own.pending.is_empty(), "handed over once, then forgotten");
        drop(publishing);

        // Another node's origin, or this node's once acknowledged: decoded from the payload.
        let three = crate::conformance::event(&ws, &call, 3, false);
        let mut theirs = headers(Some(3), Some(3));
        theirs.insert(ORIGIN_HEADER, "0123456789abcdef.0");
        let payload = encode_events(std::slice::from_ref(&three));
        assert_eq!(
            deliver_live(&local, &own, subject, Some(&theirs), &payload).await,
            Handed::Decoded
        );
        let got = sub.next().await.unwrap();
        assert_eq!(got.seq(), 3);
        assert!(!Arc::ptr_eq(&got, &three));
        let four = crate::conformance::event(&ws, &call, 4, false);
        let gone = own.start(vec![four.clone()]);
        let mut late = headers(Some(4), Some(4));
        late.insert(ORIGIN_HEADER, gone.origin().as_str());
        drop(gone);
        assert!(
            own.pending.is_empty(),
            "a publish that ended forgets its batch"
        );
        assert_eq!(
            deliver_live(&local, &own, subject, Some(&late), b"not json").await,
            Handed::No
        );
        let payload = encode_events(std::slice::from_ref(&four));
        assert_eq!(
            deliver_live(&local, &own, subject, Some(&late), &payload).await,
            Handed::Decoded
        );
        assert_eq!(sub.next().await.unwrap().seq(), 4);
    }
}
