//! What every handler shares.

use std::sync::Arc;

use callstream_bus::{Bus, BusError, CommandRouter, Resume, SubscribeOptions, Subscription, Topic};
use callstream_store::Store;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{Metrics, SurfaceLabels};

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
    /// One async lock per conversation with an ingest in flight (calls are ordered by their
    /// sequencer in `live`). The store assigns seqs, but the bus
    /// must also see one call's events in seq order, so "append to the store, then publish" runs
    /// under the call's lock. Calls are independent: there is no lock across calls. Entries go
    /// as soon as no ingest for the call is in flight, so the map holds only calls being ingested
    /// right now.
    ingest_order: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
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
            ingest_order: DashMap::new(),
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

    /// The ingest lock of one call or conversation (by its id).
    pub(crate) fn ingest_lock(&self, subject: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0
            .ingest_order
            .entry(subject.to_owned())
            .or_default()
            .clone()
    }

    /// Drops the call's lock once nobody holds or waits for it. Safe against a racing
    /// `ingest_lock`: both run under the map shard's lock, so a clone taken there is counted.
    pub(crate) fn release_ingest_lock(&self, subject: &str) {
        self.0
            .ingest_order
            .remove_if(subject, |_, lock| Arc::strong_count(lock) == 1);
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
