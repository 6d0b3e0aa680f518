//! What every handler shares.

use std::sync::Arc;

use callstream_bus::{Bus, BusError, CommandRouter, Resume, SubscribeOptions, Subscription, Topic};
use callstream_store::Store;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Metrics, SurfaceLabels};

/// The subject on which nodes wake each other's webhook workers.
pub const OUTBOX_WAKE_SUBJECT: &str = "cs.outbox.wake";

/// Cheap to clone: one `Arc` around everything.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    commands: Arc<dyn CommandRouter>,
    metrics: Metrics,
    /// Open live transcript sockets per call (seed 003's per-call limit).
    transcript_sockets: DashMap<String, usize>,
    /// Each live call's sequencer and record snapshot.
    live: crate::live::LiveCalls,
    /// The audio streams (seed 004) this node runs.
    audio_streams: crate::audio::AudioStreams,
    /// Cancelled when the server begins to shut down: streams watch it and close.
    shutdown: CancellationToken,
    /// Wakes this node's webhook worker when the outbox got rows.
    outbox: tokio::sync::Notify,
    /// The NATS connection of a cluster: the outbox wake-up reaches every node.
    nats: Option<async_nats::Client>,
    /// When this node last told the cluster about new outbox rows (ms since the epoch): at most
    /// one wake-up per 20 ms leaves it.
    last_wake_ms: std::sync::atomic::AtomicI64,
}

impl AppState {
    pub fn new(config: Config, backends: crate::Backends, shutdown: CancellationToken) -> Self {
        Self(Arc::new(Inner {
            config,
            store: backends.store,
            bus: backends.bus,
            commands: backends.commands,
            metrics: Metrics::new(),
            live: crate::live::LiveCalls::default(),
            audio_streams: crate::audio::AudioStreams::default(),
            transcript_sockets: DashMap::new(),
            shutdown,
            outbox: tokio::sync::Notify::new(),
            nats: backends.nats,
            last_wake_ms: std::sync::atomic::AtomicI64::new(0),
        }))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn store(&self) -> &dyn Store {
        self.0.store.as_ref()
    }

    pub fn bus(&self) -> &dyn Bus {
        self.0.bus.as_ref()
    }

    /// Subscribes a stream of `surface` to `topic`, with the configured queue and the surface's
    /// dropped-frames counter.
    ///
    /// # Errors
    /// When the bus cannot subscribe.
    pub async fn subscribe(
        &self,
        topic: &Topic,
        resume: Resume,
        surface: &SurfaceLabels,
    ) -> Result<Subscription, BusError> {
        let options = SubscribeOptions {
            queue_capacity: self.0.config.stream_queue_capacity,
            dropped: self.0.metrics.frames_dropped.get_or_create(surface).clone(),
        };
        self.0.bus.subscribe(topic, resume, options).await
    }

    pub fn commands(&self) -> &dyn CommandRouter {
        self.0.commands.as_ref()
    }

    pub fn live(&self) -> &crate::live::LiveCalls {
        &self.0.live
    }

    pub fn audio_streams(&self) -> &crate::audio::AudioStreams {
        &self.0.audio_streams
    }

    /// Takes one of a call's `max` live transcript socket places, or `None` when all are taken;
    /// the place is given back when the returned guard drops.
    pub fn take_transcript_place(&self, call: &str, max: usize) -> Option<TranscriptPlace> {
        let mut count = self
            .0
            .transcript_sockets
            .entry(call.to_owned())
            .or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(TranscriptPlace {
            state: self.clone(),
            call: call.to_owned(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// The NATS connection when this node is part of a cluster.
    pub fn nats(&self) -> Option<&async_nats::Client> {
        self.0.nats.as_ref()
    }

    /// Resolves when the outbox may have new rows (or at once if it was said meanwhile).
    pub async fn outbox_wake(&self) {
        self.0.outbox.notified().await;
    }

    /// Wakes the webhook worker of this node, now, without telling other nodes.
    pub fn wake_outbox_here(&self) {
        self.0.outbox.notify_one();
    }

    /// Says that the outbox got rows: this node's worker wakes at once, and in a cluster every
    /// node's does (through NATS, at most one message per 20 ms from each node; polling
    /// remains the fallback).
    pub fn outbox_written(&self) {
        self.wake_outbox_here();
        let Some(nats) = &self.0.nats else {
            return;
        };
        let now = callstream_core::time::now().timestamp_millis();
        let last = self
            .0
            .last_wake_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - last < 20
            || self
                .0
                .last_wake_ms
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let nats = nats.clone();
        tokio::spawn(async move {
            let _ = nats.publish(OUTBOX_WAKE_SUBJECT, bytes::Bytes::new()).await;
        });
    }
}

/// One open live transcript socket's place in its call's limit.
pub struct TranscriptPlace {
    state: AppState,
    call: String,
}

impl Drop for TranscriptPlace {
    fn drop(&mut self) {
        let sockets = &self.state.0.transcript_sockets;
        if let Some(mut count) = sockets.get_mut(&self.call) {
            *count = count.saturating_sub(1);
        }
        sockets.remove_if(&self.call, |_, count| *count == 0);
    }
}
