//! Prometheus metrics. Handles to individual series are taken once (per stream, per event type)
//! and then only touched atomically, so the fan-out path never takes a lock for metrics.

use callstream_bus::BusStats;
use callstream_core::EventType;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The surfaces that hold streams open.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Surface {
    /// Seed 000 `GET /v1/calls/{id}/transcript/stream`.
    native_transcript_sse,
    /// Seed 000 `GET /v1/calls/{id}/stream`.
    native_call_ws,
    /// Seed 000 `GET /v1/conversations/{id}/stream`.
    native_conversation_sse,
    /// Seed 002 `GET /v1/speech-events/stream`.
    speech_sse,
    /// Seed 003 `GET /live-transcript/{call_sid}`.
    live_transcript_ws,
    /// Seed 001 `GET /ws/v1/liveCalls`.
    live_calls_ws,
    /// `GET /v1/runtime`, the call runtimes' own socket.
    runtime_ws,
    /// Seed 004 audio streams: their subscriptions to the call's events (for `dtmf` and the
    /// call's end).
    audio_stream_ws,
}

impl Surface {
    pub const ALL: &'static [Self] = &[
        Self::native_transcript_sse,
        Self::native_call_ws,
        Self::native_conversation_sse,
        Self::speech_sse,
        Self::live_transcript_ws,
        Self::live_calls_ws,
        Self::runtime_ws,
        Self::audio_stream_ws,
    ];
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SurfaceLabels {
    pub surface: Surface,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

/// Buckets of `ingest_append_seconds`: half a millisecond to five seconds (a cluster's append
/// is a few milliseconds; a stall of PostgreSQL or NATS shows in the upper ones).
const APPEND_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackLabels {
    pub track: &'static str,
}

/// Which way an audio stream's frames go: `to_service` (media messages to the customer's
/// service), `to_call` (audio the service sent, played into the call).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// Seed 004's audio streams, and call audio from runtimes.
pub struct AudioMetrics {
    /// Streams connecting or connected now.
    pub active_streams: Gauge,
    /// Media frames sent, by direction.
    pub sent: Family<DirectionLabels, Counter>,
    /// Media frames dropped (a full queue, no runtime to play to), by direction.
    pub dropped: Family<DirectionLabels, Counter>,
    /// Audio waiting to be played into calls, in milliseconds, summed over streams.
    pub playout_queued_ms: Gauge,
    /// Attempts to connect to a service that failed.
    pub connect_failures: Counter,
    /// Streams connected again after a gateway restart.
    pub reconnects: Counter,
    /// Streams this node took over from a node that stopped or died (cluster).
    pub adopted: Counter,
    /// Messages from services that were ignored as malformed.
    pub service_messages_refused: Counter,
    /// Streams that ended, by how (`stopped`, `dropped`).
    pub ended: Family<OutcomeLabels, Counter>,
    /// Frames a listener's bus queue could not take (a stream still connecting, or too slow).
    pub listener_dropped: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub open_streams: Family<SurfaceLabels, Gauge>,
    pub frames_sent: Family<SurfaceLabels, Counter>,
    pub frames_dropped: Family<SurfaceLabels, Counter>,
    ingest_events: Vec<Counter>,
    /// How long appends took, from the store's transaction to the events on the bus: one call's
    /// batch (`call`), or a runtime socket's group commit on a cluster (`group`).
    ingest_append: [Histogram; 2],
    commands: Family<OutcomeLabels, Counter>,
    webhooks: Family<OutcomeLabels, Counter>,
    webhooks_exhausted: Counter,
    webhook_endpoints_disabled: Family<ReasonLabels, Counter>,
    /// Client messages refused by the per-connection rate limit, by surface.
    pub rate_limited: Family<SurfaceLabels, Counter>,
    bus_topics: Gauge,
    bus_subscribers: Gauge,
    audio_listeners: Gauge,
    history_bytes: Gauge,
    runtime_tasks: Gauge,
    /// Connections held now, and those refused by the connection limits.
    pub connections_open: Gauge,
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Calls the gateway ended because nobody else would (`runtime_lost`, `stale`).
    calls_ended: Family<ReasonLabels, Counter>,
    /// Brought up to the bus's own count at each scrape, as the NATS counters are.
    history_trimmed: std::sync::Mutex<Counter>,
    /// The NATS bus's counters, brought up to its own at each scrape (under the lock, so two
    /// scrapes at once cannot both add the same difference).
    nats: std::sync::Mutex<[Counter; 9]>,
    /// Audio frames runtimes sent: inbound, outbound (taken from the family once: a frame
    /// arrives every 20 ms per track of every call).
    audio_received: [Counter; 2],
    /// Audio frames from runtimes refused (malformed, or for a call that is not theirs).
    pub audio_frames_refused: Counter,
    pub audio: AudioMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("callstream");
        let open_streams = Family::<SurfaceLabels, Gauge>::default();
        let frames_sent = Family::<SurfaceLabels, Counter>::default();
        let frames_dropped = Family::<SurfaceLabels, Counter>::default();
        let ingest_family = Family::<EventLabels, Counter>::default();
        let bus_topics = Gauge::default();
        let bus_subscribers = Gauge::default();
        registry.register(
            "open_streams",
            "Streams currently open, by surface",
            open_streams.clone(),
        );
        registry.register(
            "frames_sent",
            "Frames written to streams, by surface",
            frames_sent.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames dropped because a stream's queue was full, by surface",
            frames_dropped.clone(),
        );
        registry.register(
            "ingest_events",
            "Events accepted through ingest, by event type",
            ingest_family.clone(),
        );
        registry.register(
            "bus_topics",
            "Calls and conversations the bus holds history for",
            bus_topics.clone(),
        );
        registry.register(
            "bus_subscribers",
            "Subscriptions open on the bus",
            bus_subscribers.clone(),
        );
        let history_bytes = Gauge::default();
        registry.register(
            "history_bytes",
            "Bytes of event history held for resume (events weighed by their canonical JSON)",
            history_bytes.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_tasks_alive",
            "Tasks alive in the process's async runtime (one that climbs under a steady load \
             is a leak)",
            runtime_tasks.clone(),
        );
        let history_trimmed = Counter::default();
        registry.register(
            "history_trimmed_events",
            "Events given up from a history before their time, to keep within its byte bounds",
            history_trimmed.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "TCP connections the process holds now",
            connections_open.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed as soon as accepted: the process (total) or their source address \
             (per_source) held as many as allowed",
            connections_refused.clone(),
        );
        for reason in ["total", "per_source"] {
            let _ = connections_refused.get_or_create(&ReasonLabels { reason });
        }
        let calls_ended = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "calls_ended_by_gateway",
            "Live calls the gateway ended as call.failed: their runtime left (runtime_lost) or \
             no event came for call_stale_secs (stale)",
            calls_ended.clone(),
        );
        for reason in ["runtime_lost", "stale"] {
            let _ = calls_ended.get_or_create(&ReasonLabels { reason });
        }
        let nats: [Counter; 9] = Default::default();
        for (counter, (name, help)) in nats.iter().zip([
            ("nats_reconnects", "Times the NATS connection came back after it was lost"),
            ("nats_disconnects", "Times the NATS connection was lost"),
            ("nats_replays", "Resumes served from JetStream (beyond this node's memory, or after a NATS reconnect)"),
            ("nats_replayed_events", "Events read back from JetStream for resumes"),
            ("nats_malformed", "Messages on the event subjects that were not envelopes (ignored)"),
            ("nats_audio_dropped", "Audio frames dropped because the queue to NATS was full"),
            ("nats_live_messages", "Event messages handed to this node's streams by the live path (core NATS, before JetStream stored them)"),
            ("nats_own_messages", "Event messages this node published itself, handed over (by either path) as the events they were made of, not decoded"),
            ("nats_stored_messages", "Event messages handed to this node's streams by the stored path (the JetStream reader): those the live path could not hand over in order"),
        ]) {
            registry.register(name, help, counter.clone());
        }
        let ingest_append_family =
            Family::<PathLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(APPEND_BUCKETS.iter().copied())
            });
        registry.register(
            "ingest_append_seconds",
            "Time an append took, from the store's transaction to the events on the bus and \
             committed, refusals included: one call's batch (call) or a runtime socket's group \
             commit on a cluster (group)",
            ingest_append_family.clone(),
        );
        // One statement each: the family's guard lives to the end of its statement, and a second
        // `get_or_create` within it would wait for the first's lock forever.
        let call = ingest_append_family
            .get_or_create(&PathLabels { path: "call" })
            .clone();
        let group = ingest_append_family
            .get_or_create(&PathLabels { path: "group" })
            .clone();
        let ingest_append = [call, group];
        let commands = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands sent to call runtimes, by outcome",
            commands.clone(),
        );
        let rate_limited = Family::<SurfaceLabels, Counter>::default();
        registry.register(
            "client_messages_rate_limited",
            "Client messages refused by the per-connection rate limit, by surface",
            rate_limited.clone(),
        );
        let audio_listeners = Gauge::default();
        registry.register(
            "bus_audio_listeners",
            "Listeners to calls' audio on the bus",
            audio_listeners.clone(),
        );
        let audio_received = Family::<TrackLabels, Counter>::default();
        registry.register(
            "audio_frames_received",
            "Audio frames call runtimes sent, by track",
            audio_received.clone(),
        );
        let audio_received = ["inbound", "outbound"]
            .map(|track| audio_received.get_or_create(&TrackLabels { track }).clone());
        let audio_frames_refused = Counter::default();
        registry.register(
            "audio_frames_refused",
            "Audio frames from call runtimes refused (malformed, or for a call not theirs)",
            audio_frames_refused.clone(),
        );
        let audio = AudioMetrics {
            active_streams: Gauge::default(),
            sent: Family::default(),
            dropped: Family::default(),
            playout_queued_ms: Gauge::default(),
            connect_failures: Counter::default(),
            reconnects: Counter::default(),
            adopted: Counter::default(),
            service_messages_refused: Counter::default(),
            ended: Family::default(),
            listener_dropped: Counter::default(),
        };
        registry.register(
            "audio_listener_frames_dropped",
            "Audio frames a listener's bus queue could not take (a stream still connecting, or too slow)",
            audio.listener_dropped.clone(),
        );
        registry.register(
            "audio_streams_active",
            "Audio streams connecting or connected",
            audio.active_streams.clone(),
        );
        registry.register(
            "audio_stream_frames_sent",
            "Audio stream media frames sent, by direction (to_service, to_call)",
            audio.sent.clone(),
        );
        registry.register(
            "audio_stream_frames_dropped",
            "Audio stream media frames dropped, by direction (to_service, to_call)",
            audio.dropped.clone(),
        );
        registry.register(
            "audio_playout_queued_ms",
            "Audio waiting to be played into calls, milliseconds summed over streams",
            audio.playout_queued_ms.clone(),
        );
        registry.register(
            "audio_stream_connect_failures",
            "Failed attempts to connect to an audio stream's service",
            audio.connect_failures.clone(),
        );
        registry.register(
            "audio_stream_reconnects",
            "Audio streams connected again after a gateway restart",
            audio.reconnects.clone(),
        );
        registry.register(
            "audio_streams_adopted",
            "Audio streams this node took over from a node that stopped or died",
            audio.adopted.clone(),
        );
        registry.register(
            "audio_stream_service_messages_refused",
            "Messages from audio stream services ignored as malformed",
            audio.service_messages_refused.clone(),
        );
        registry.register(
            "audio_streams_ended",
            "Audio streams that ended, by outcome (stopped, dropped)",
            audio.ended.clone(),
        );
        for direction in ["to_service", "to_call"] {
            let _ = audio.sent.get_or_create(&DirectionLabels { direction });
            let _ = audio.dropped.get_or_create(&DirectionLabels { direction });
        }
        for outcome in ["stopped", "dropped"] {
            let _ = audio.ended.get_or_create(&OutcomeLabels { outcome });
        }
        let webhooks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by outcome",
            webhooks.clone(),
        );
        for outcome in ["delivered", "retry", "abandoned", "endpoint_disabled"] {
            let _ = webhooks.get_or_create(&OutcomeLabels { outcome });
        }
        let webhooks_exhausted = Counter::default();
        registry.register(
            "webhook_messages_exhausted",
            "Webhook messages given up after their whole retry schedule (24 hours by default)",
            webhooks_exhausted.clone(),
        );
        let webhook_endpoints_disabled = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "webhook_endpoints_disabled",
            "Webhook endpoints the gateway disabled, by reason (gone: a 410 answer; failing: failing for webhook_disable_after_failing_secs)",
            webhook_endpoints_disabled.clone(),
        );
        for reason in ["gone", "failing"] {
            let _ = webhook_endpoints_disabled.get_or_create(&ReasonLabels { reason });
        }
        for outcome in ["done", "refused", "no_runtime", "busy", "timeout"] {
            let _ = commands.get_or_create(&OutcomeLabels { outcome });
        }
        // Every surface's series exist from the start, at zero, so dashboards and alerts see them
        // before the first stream opens.
        for &surface in Surface::ALL {
            let labels = SurfaceLabels { surface };
            let _ = open_streams.get_or_create(&labels);
            let _ = frames_sent.get_or_create(&labels);
            let _ = frames_dropped.get_or_create(&labels);
            let _ = rate_limited.get_or_create(&labels);
        }
        // One series per event type, created up front so ingest increments without a map lookup;
        // every custom type (`custom.…`) counts as `custom` (their names are the runtimes', and
        // unbounded).
        let ingest_events = EventType::ALL
            .iter()
            .chain([EventType::Custom].iter())
            .map(|t| {
                ingest_family
                    .get_or_create(&EventLabels {
                        event_type: t.as_str().to_owned(),
                    })
                    .clone()
            })
            .collect();
        Self {
            registry,
            open_streams,
            frames_sent,
            frames_dropped,
            ingest_events,
            ingest_append,
            commands,
            webhooks,
            webhooks_exhausted,
            webhook_endpoints_disabled,
            rate_limited,
            bus_topics,
            bus_subscribers,
            audio_listeners,
            history_bytes,
            runtime_tasks,
            connections_open,
            connections_refused,
            calls_ended,
            history_trimmed: std::sync::Mutex::new(history_trimmed),
            nats: std::sync::Mutex::new(nats),
            audio_received,
            audio_frames_refused,
            audio,
        }
    }

    pub fn audio_frame_received(&self, track: callstream_core::audio::Track) {
        let i = match track {
            callstream_core::audio::Track::Inbound => 0,
            callstream_core::audio::Track::Outbound => 1,
        };
        self.audio_received[i].inc();
    }

    pub fn call_ended_by_gateway(&self, reason: &'static str) {
        self.calls_ended
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn webhook_exhausted(&self) {
        self.webhooks_exhausted.inc();
    }

    pub fn webhook_endpoint_disabled(&self, reason: &'static str) {
        self.webhook_endpoints_disabled
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn command(&self, outcome: &'static str) {
        self.commands
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One call's append (`group: false`) or a group commit (`group: true`) took `took`.
    pub fn appended(&self, group: bool, took: std::time::Duration) {
        self.ingest_append[usize::from(group)].observe(took.as_secs_f64());
    }

    pub fn ingested(&self, event_type: EventType) {
        let i = EventType::ALL
            .iter()
            .position(|t| *t == event_type)
            .unwrap_or(EventType::ALL.len());
        if let Some(c) = self.ingest_events.get(i) {
            c.inc();
        }
    }

    /// The Prometheus text exposition, with the bus gauges read at scrape time.
    pub fn render(&self, bus: BusStats) -> String {
        self.bus_topics
            .set(i64::try_from(bus.topics).unwrap_or(i64::MAX));
        self.bus_subscribers
            .set(i64::try_from(bus.subscribers).unwrap_or(i64::MAX));
        self.audio_listeners
            .set(i64::try_from(bus.audio_listeners).unwrap_or(i64::MAX));
        self.history_bytes
            .set(i64::try_from(bus.history_bytes).unwrap_or(i64::MAX));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks
                .set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        if let Ok(trimmed) = self.history_trimmed.lock() {
            trimmed.inc_by(bus.history_trimmed.saturating_sub(trimmed.get()));
        }
        if let Some(n) = bus.nats
            && let Ok(counters) = self.nats.lock()
        {
            let now = [
                n.reconnects,
                n.disconnects,
                n.replays,
                n.replayed_events,
                n.malformed,
                n.audio_dropped,
                n.live_messages,
                n.own_messages,
                n.stored_messages,
            ];
            for (counter, now) in counters.iter().zip(now) {
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        sort_series(&out)
    }
}

/// Each family's series in one order, by their labels, whatever order the registry's maps hold
/// them in (a hash map's, different per family and per process): one scrape lines up with the
/// next, and a person finds `surface="native_call_ws"` at the same place in every family. The
/// sort is stable and ignores `le`, so a histogram's buckets keep their order.
fn sort_series(text: &str) -> String {
    fn key(line: &str) -> String {
        let labels = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => &line[open + 1..close],
            _ => "",
        };
        labels
            .split(',')
            .filter(|pair| !pair.starts_with("le="))
            .collect::<Vec<_>>()
            .join(",")
    }
    fn flush(block: &mut Vec<&str>, out: &mut String) {
        block.sort_by_cached_key(|line| key(line));
        for line in block.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut block = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut block, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            block.push(line);
        }
    }
    flush(&mut block, &mut out);
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks one open stream for as long as it lives.
pub struct OpenStream(Gauge);

impl OpenStream {
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod sort_tests {
    use super::*;

    #[test]
    fn series_come_sorted_by_labels_and_buckets_keep_their_order() {
        let metrics = Metrics::new();
        // Twenty reasons, made in reverse order: a hash map lists them in its own order.
        for i in (0..20).rev() {
            let reason: &'static str = Box::leak(format!("r{i:02}").into_boxed_str());
            metrics
                .connections_refused
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        let text = metrics.render(BusStats::default());
        let reasons: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("callstream_connections_refused_total{"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        let mut sorted = reasons.clone();
        sorted.sort_unstable();
        assert!(reasons.len() >= 20, "{reasons:?}");
        assert_eq!(reasons, sorted);

        let histogram = "# TYPE h histogram\nh_bucket{b=\"2\",le=\"0.1\"} 1\nh_bucket{b=\"2\",le=\"+Inf\"} 1\nh_bucket{b=\"1\",le=\"0.1\"} 0\nh_bucket{b=\"1\",le=\"+Inf\"} 2\n# EOF\n";
        assert_eq!(
            sort_series(histogram),
            "# TYPE h histogram\nh_bucket{b=\"1\",le=\"0.1\"} 0\nh_bucket{b=\"1\",le=\"+Inf\"} 2\nh_bucket{b=\"2\",le=\"0.1\"} 1\nh_bucket{b=\"2\",le=\"+Inf\"} 1\n# EOF\n"
        );
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;
    use std::time::Duration;

    /// An append that waited (a held row, a slow bus) lands in the upper buckets of its own
    /// path, where an operator looks for stalls; a quick one in the lowest.
    #[test]
    fn an_append_that_waited_shows_in_the_upper_buckets_of_its_path() {
        let metrics = Metrics::new();
        metrics.appended(true, Duration::from_micros(300));
        metrics.appended(true, Duration::from_millis(600));
        metrics.appended(false, Duration::from_millis(3));
        let text = metrics.render(BusStats::default());
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
                .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
        };
        let h = "callstream_ingest_append_seconds";
        for (series, expected) in [
            (format!("{h}_count{{path=\"group\"}}"), 2.0),
            (format!("{h}_bucket{{le=\"0.0005\",path=\"group\"}}"), 1.0),
            (format!("{h}_bucket{{le=\"0.5\",path=\"group\"}}"), 1.0),
            (format!("{h}_bucket{{le=\"1.0\",path=\"group\"}}"), 2.0),
            (format!("{h}_count{{path=\"call\"}}"), 1.0),
            (format!("{h}_bucket{{le=\"0.002\",path=\"call\"}}"), 0.0),
            (format!("{h}_bucket{{le=\"0.005\",path=\"call\"}}"), 1.0),
        ] {
            assert_eq!(value(&series), expected, "{series}");
        }
    }
}
