//! The bus: publish/subscribe of canonical event envelopes, per call and per conversation, and
//! of calls' audio frames.
//!
//! One trait, [`Bus`], with the in-process backend ([`InProcessBus`]) as the embedded default;
//! a NATS backend implements the same trait. Callers never learn which one they hold.
//!
//! Three promises hold for every backend:
//! - **Shared frames.** An event travels as an [`Arc<Event>`]; each surface encodes it at most
//!   once into a [`bytes::Bytes`] that every subscriber of that surface shares.
//! - **Isolation.** Each subscription has its own bounded queue. When it is full the newest frame
//!   is dropped for that subscriber and counted; the publisher is never blocked, so one consumer
//!   that stops reading cannot slow any other.
//! - **Resume.** A subscriber may ask for everything after a `seq` it already has; the backlog is
//!   served from a bounded per-topic history ring, with a [`Gap`] reported when the ring no longer
//!   reaches back that far.
//!
//! Audio ([`Bus::publish_audio`]) shares the isolation promise but not resume: frames are live
//! only, never kept, and never JSON (an [`AudioFrame`] in the in-process backend, its binary form
//! on a wire).
//!
//! The bus knows envelopes, audio frames and topics. It does not know surfaces, wire formats
//! other than the envelope's and the audio frame's, the store, or who may read what:
//! authorisation happens before anyone subscribes.

mod audio;
pub mod commands;
#[doc(hidden)]
pub mod conformance;
mod event;
mod in_process;
pub mod nats;
pub mod nats_commands;
mod subscription;
#[doc(hidden)]
pub mod testing;
mod topic;

use std::sync::Arc;

use async_trait::async_trait;
use callstream_core::audio::AudioFrame;
use callstream_core::{CallId, WorkspaceId};
use prometheus_client::metrics::counter::Counter;

pub use audio::AudioSubscription;

pub use commands::{
    CommandError, CommandOutcome, CommandRequest, CommandRouter, Downlink, InProcessCommands,
    RuntimeLink,
};
pub use event::{Event, FORMAT_SLOTS, FormatSlot};
pub use in_process::{InProcessBus, InProcessConfig};
pub use nats::{NatsBus, NatsConfig};
pub use nats_commands::NatsCommands;
pub use topic::Topic;

/// A concurrent map for the maps ingest reads on every event (topics, live calls, who serves a
/// call), hashed with foldhash instead of the standard SipHash: under callgrind SipHash was
/// about 1,000 of ingest's ~25,000 instructions per event. The keys are topics this server
/// built and ids of a fixed form (a call id from a runtime is checked for its form, not known
/// to exist), and foldhash seeds each map at random, so keys chosen to collide cannot be
/// prepared in advance.
pub type FastMap<K, V> = dashmap::DashMap<K, V, foldhash::fast::RandomState>;

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The backend cannot be reached (a NATS server down, say). Retryable.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The batch's first seq was already published on its subject by another batch: one that
    /// went out although the store never recorded it (its transaction failed, and the burn of
    /// its seqs had not landed yet). The subject holds seqs up to `last`; nothing of this batch
    /// was stored.
    #[error("seqs up to {last} of this subject were already published by another batch")]
    SeqsTaken { last: u64 },
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Only events published from now on.
    Live,
    /// Everything with a `seq` greater than this one that the history still holds, then live.
    After(u64),
}

/// A subscriber's resume point is older than the history ring reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The seq the subscriber asked to resume after.
    pub requested_after: u64,
    /// The oldest seq the history still holds (the backlog starts there).
    pub first_available: u64,
}

/// Per-subscription options.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Frames that may wait for this subscriber before newer ones are dropped.
    pub queue_capacity: usize,
    /// Counts the frames dropped for this subscriber (shared with the surface's metric).
    pub dropped: Counter,
}

/// What a publish did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Subscribers whose queue took the event.
    pub queued: usize,
    /// Subscribers whose queue was full.
    pub dropped: usize,
}

/// Gauges a backend reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    pub topics: usize,
    pub subscribers: usize,
    /// Open audio subscriptions (listeners to calls' audio).
    pub audio_listeners: usize,
    /// A NATS bus's counters since the node started (none on the in-process bus).
    pub nats: Option<NatsCounters>,
    /// Bytes of event history this node holds for resume (events weighed by their JSON).
    pub history_bytes: u64,
    /// Events given up from a history before their time, to keep within its byte bounds.
    pub history_trimmed: u64,
}

/// What a NATS bus counted since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsCounters {
    /// Times the connection came back after it was lost.
    pub reconnects: u64,
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Resumes served from JetStream (the node's memory did not reach back far enough).
    pub replays: u64,
    /// Events read back from JetStream for resumes.
    pub replayed_events: u64,
    /// Messages on the event subjects that were not envelopes (ignored).
    pub malformed: u64,
    /// Audio frames dropped because the queue to NATS was full.
    pub audio_dropped: u64,
    /// Event messages handed to this node's streams by the live path (core NATS, before
    /// JetStream stored them).
    pub live_messages: u64,
    /// Event messages this node published itself, handed over (by either path) as the events
    /// they were made of (not decoded).
    pub own_messages: u64,
    /// Event messages handed over by the stored path (the JetStream reader): those the live
    /// path could not hand over in order.
    pub stored_messages: u64,
}

/// Publish/subscribe of event envelopes.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one event to its topic. Events of one topic must be published in `seq` order;
    /// an event whose `seq` is not above the last one published there is ignored (so a
    /// republish after a retry is harmless). A terminal event (`call.completed`/`call.failed`)
    /// ends the topic: subscriptions drain what they hold, then end.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the backend cannot take it.
    async fn publish(&self, event: Arc<Event>) -> Result<PublishReport, BusError>;

    /// Publishes events of one topic, in seq order, as one step: a backend on a network sends
    /// them together (one message, stored or refused as a whole). Nothing is published when
    /// it fails.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the backend cannot take them.
    async fn publish_batch(&self, events: &[Arc<Event>]) -> Result<PublishReport, BusError> {
        let mut report = PublishReport::default();
        for event in events {
            let one = self.publish(event.clone()).await?;
            report.queued += one.queued;
            report.dropped += one.dropped;
        }
        Ok(report)
    }

    /// Whether the backend is reachable now (for readiness checks).
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when it is not.
    async fn check(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Subscribes to one topic.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the backend cannot take it.
    async fn subscribe(
        &self,
        topic: &Topic,
        resume: Resume,
        options: SubscribeOptions,
    ) -> Result<Subscription, BusError>;

    /// Offers one audio frame of `workspace`'s call to everyone listening to that call. Nothing
    /// is kept: audio has no history. Never waits for a listener.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the backend cannot take it.
    async fn publish_audio(
        &self,
        workspace: &WorkspaceId,
        frame: Arc<AudioFrame>,
    ) -> Result<PublishReport, BusError>;

    /// Listens to a call's audio (both tracks) from now on.
    ///
    /// # Errors
    /// [`BusError::Unavailable`] when the backend cannot take it.
    async fn subscribe_audio(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        options: SubscribeOptions,
    ) -> Result<AudioSubscription, BusError>;

    /// Housekeeping the server runs every few seconds (expiring idle history, say).
    async fn maintain(&self) {}

    /// The highest seq of `topic` this node has seen go through the bus (0 when it knows none).
    /// A networked bus sees every node's batches, including one that went out although its
    /// store transaction failed: numbering after this never reuses its seqs.
    fn seen_up_to(&self, _topic: &Topic) -> u64 {
        0
    }

    fn stats(&self) -> BusStats;
}

pub use subscription::{End, EndSignal, Subscription};
