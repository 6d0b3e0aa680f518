//! What every handler shares.

use std::sync::Arc;

use callstream_bus::{Bus, BusError, CommandRouter, Resume, SubscribeOptions, Subscription, Topic};
use callstream_core::{CallId, WorkspaceId};
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
    /// Keys streams were opened with: revoking one closes them.
    revocations: crate::revocations::Revocations,
    /// One-time dashboard sign-in links (`callstream demo`).
    sign_in_links: crate::routes::session::SignInLinks,
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
            revocations: crate::revocations::Revocations::default(),
            sign_in_links: crate::routes::session::SignInLinks::default(),
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

    /// The store, for a task that outlives the request (a seq block reserved ahead).
    pub fn store_handle(&self) -> &Arc<dyn Store> {
        &self.0.store
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
    /// the place is given back when the returned guard drops. Embedded, this node counts them;
    /// in a cluster the store does, for every node at once, under leases this node renews
    /// while the socket lives (a node that dies gives its places back within
    /// `cluster_lease_secs`).
    ///
    /// # Errors
    /// When the store cannot be asked (a cluster's database is down).
    pub async fn take_transcript_place(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        max: usize,
    ) -> Result<Option<TranscriptPlace>, callstream_store::StoreError> {
        if !self.0.config.clustered() {
            let mut count = self
                .0
                .transcript_sockets
                .entry(call.as_str().to_owned())
                .or_insert(0);
            if *count >= max {
                return Ok(None);
            }
            *count += 1;
            return Ok(Some(TranscriptPlace {
                state: self.clone(),
                held: Held::Here(call.as_str().to_owned()),
            }));
        }
        let Some(lease) = self
            .take_lease(workspace, call, "live_transcript", max, None)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(TranscriptPlace {
            state: self.clone(),
            held: Held::Leased(lease),
        }))
    }

    /// In a cluster, takes one of `max` places of `kind` on `call` in the store for a new
    /// holder, or `None` when all are taken. This node renews the lease every third of
    /// `cluster_lease_secs` until the returned [`Lease`] drops, which gives the place back.
    /// Should a renewal find the place gone (this node could not renew in time and another
    /// took it), `lost` is cancelled.
    ///
    /// # Errors
    /// When the store cannot be asked.
    pub async fn take_lease(
        &self,
        workspace: &WorkspaceId,
        call: &CallId,
        kind: &str,
        max: usize,
        lost: Option<CancellationToken>,
    ) -> Result<Option<Lease>, callstream_store::StoreError> {
        let holder = crate::auth::random_secret("place_");
        let period = self.0.config.cluster_lease();
        let lease = chrono::Duration::from_std(period).unwrap_or_default();
        let now = callstream_core::time::now();
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        if !self
            .store()
            .take_place(workspace, call, kind, max, &holder, now + lease, now)
            .await?
        {
            return Ok(None);
        }
        let renew = {
            let (state, workspace, holder) = (self.clone(), workspace.clone(), holder.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(period / 3).await;
                    let until = callstream_core::time::now() + lease;
                    match state.store().renew_place(&workspace, &holder, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("a lease ran out before it was renewed");
                            if let Some(lost) = &lost {
                                lost.cancel();
                            }
                            return;
                        }
                        Err(err) => tracing::warn!(error = %err, "could not renew a lease"),
                    }
                }
            })
        };
        Ok(Some(Lease {
            state: self.clone(),
            workspace: workspace.clone(),
            holder,
            renew,
        }))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    pub fn sign_in_links(&self) -> &crate::routes::session::SignInLinks {
        &self.0.sign_in_links
    }

    pub fn revocations(&self) -> &crate::revocations::Revocations {
        &self.0.revocations
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
    held: Held,
}

enum Held {
    /// Counted by this node (embedded), by call id.
    Here(String),
    /// A lease in the cluster's store.
    Leased(#[allow(dead_code, reason = "held for its Drop")] Lease),
}

impl Drop for TranscriptPlace {
    fn drop(&mut self) {
        if let Held::Here(call) = &self.held {
            let sockets = &self.state.0.transcript_sockets;
            if let Some(mut count) = sockets.get_mut(call) {
                *count = count.saturating_sub(1);
            }
            sockets.remove_if(call, |_, count| *count == 0);
        }
    }
}

/// A place held in the cluster's store ([`AppState::take_lease`]), renewed by a task of this
/// node; dropping it gives the place back.
pub struct Lease {
    state: AppState,
    workspace: WorkspaceId,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (state, workspace, holder) = (
            self.state.clone(),
            self.workspace.clone(),
            std::mem::take(&mut self.holder),
        );
        tokio::spawn(async move {
            if let Err(err) = state.store().release_place(&workspace, &holder).await {
                tracing::warn!(error = %err, "could not give a lease back; it will lapse");
            }
        });
    }
}
