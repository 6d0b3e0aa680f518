//! Seed 004's audio streams: the gateway connects to a customer's WebSocket service and streams
//! a live call's audio to it; with `bidirectional`, it plays what the service sends back into
//! the call. `docs/audio-streams.md` has the protocol and every choice made where the seed is
//! silent.
//!
//! - [`AudioStreams`]: the streams this node runs, started by the REST handler or, for streams
//!   still active in the store, when the gateway starts again.
//! - `session`: one stream's life (connect, the 20 ms beat, play-out, the end).
//! - [`pacer`]: absolute-deadline ticks. [`playout`]: the play-out queue with its checkpoints.
//! - [`callbacks`]: status callbacks through the durable outbox.

pub mod callbacks;
pub mod pacer;
pub mod playout;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use callstream_audio::MediaFormat;
use callstream_core::audio::StreamStatus;
use callstream_core::time;
use callstream_store::AudioStreamRecord;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::state::{AppState, Lease};
use session::{End, Session};

/// A running stream, as the rest of the server sees it.
struct Running {
    deleted: CancellationToken,
    queued_ms: Arc<AtomicU64>,
    /// When it started here (the adoption sweep leaves younger streams alone).
    since: std::time::Instant,
    /// In a cluster, this node's claim to run it (given back when the stream stops here).
    _lease: Option<Lease>,
}

/// The subject on which a node that ended a stream tells the node running it to stop.
pub const STOP_SUBJECT: &str = "cs.audio_streams.stop";

/// The audio streams this node runs.
#[derive(Default)]
pub struct AudioStreams {
    running: DashMap<String, Running>,
}

impl AudioStreams {
    /// Starts a stream the API just created. In a cluster this node first takes the stream's
    /// lease, the claim that makes it the one node that runs the stream.
    ///
    /// # Errors
    /// When the cluster's store cannot be asked; the stream then runs nowhere until a node
    /// adopts it ([`adopt`]).
    pub async fn start_new(
        &self,
        state: &AppState,
        rec: AudioStreamRecord,
        account_id: String,
    ) -> Result<(), callstream_store::StoreError> {
        let deleted = state.shutdown().child_token();
        let lease = if state.config().clustered() {
            match take_lease(state, &rec, &deleted).await? {
                Some(lease) => Some(lease),
                // A new stream's lease is free, unless a node adopted it already.
                None => return Ok(()),
            }
        } else {
            None
        };
        self.start(state, rec, account_id, false, deleted, lease);
        Ok(())
    }

    /// Runs a stream here (`resume`: after a restart or a takeover, reconnect once the call's
    /// audio flows again). `deleted` stops it; `lease` is this node's claim, in a cluster.
    fn start(
        &self,
        state: &AppState,
        rec: AudioStreamRecord,
        account_id: String,
        resume: bool,
        deleted: CancellationToken,
        lease: Option<Lease>,
    ) {
        let Ok(format) = MediaFormat::parse(&rec.content_type) else {
            // The content type was checked when the stream was created; a stored one that does
            // not parse is a corrupt row.
            tracing::error!(stream_id = %rec.stream_id, "audio stream with an unreadable content type");
            return;
        };
        let queued_ms = Arc::new(AtomicU64::new(0));
        self.running.insert(
            rec.stream_id.clone(),
            Running {
                deleted: deleted.clone(),
                queued_ms: queued_ms.clone(),
                since: std::time::Instant::now(),
                _lease: lease,
            },
        );
        let session = Session {
            state: state.clone(),
            rec,
            account_id,
            format,
            deleted,
            queued_ms,
            resume,
        };
        tokio::spawn(run(session));
    }

    /// Stops a running stream (its bookkeeping is the caller's). `false` if it does not run here.
    pub fn stop(&self, stream_id: &str) -> bool {
        match self.running.get(stream_id) {
            Some(running) => {
                running.deleted.cancel();
                true
            }
            None => false,
        }
    }

    /// Milliseconds of audio waiting to be played into the call, if the stream runs here.
    pub fn queued_ms(&self, stream_id: &str) -> Option<u64> {
        self.running
            .get(stream_id)
            .map(|r| r.queued_ms.load(Ordering::Relaxed))
    }

    /// How many streams run here.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Resumes every stream the store still has active (at start-up of a single node): those
    /// whose call is still in progress reconnect once its audio flows; the others end now.
    pub async fn resume_all(&self, state: &AppState) {
        let streams = match state.store().active_audio_streams().await {
            Ok(streams) => streams,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the active audio streams");
                return;
            }
        };
        for rec in streams {
            self.resume(state, rec, state.shutdown().child_token(), None)
                .await;
        }
    }

    /// Runs a stream that was active before (`resume`), or ends it if its call has ended.
    async fn resume(
        &self,
        state: &AppState,
        rec: AudioStreamRecord,
        deleted: CancellationToken,
        lease: Option<Lease>,
    ) {
        let call = state.store().call(&rec.workspace_id, &rec.call_id).await;
        let workspace = state.store().workspace(&rec.workspace_id).await;
        match (call, workspace) {
            (Ok(Some(call)), Ok(Some(ws))) if call.status.is_active() => {
                self.start(state, rec, ws.auth_id, true, deleted, lease);
            }
            (Ok(_), Ok(_)) => {
                finish(state, &rec, StreamStatus::Stopped, "the call ended").await;
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, stream_id = %rec.stream_id, "could not resume an audio stream");
            }
        }
    }

    /// One look at the cluster's active streams: takes over every one that no node holds (its
    /// node stopped or died), and stops those running here that ended elsewhere (a `DELETE`
    /// at another node whose message this node missed).
    async fn adopt_once(&self, state: &AppState) {
        let looked = std::time::Instant::now();
        let streams = match state.store().active_audio_streams().await {
            Ok(streams) => streams,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the active audio streams");
                return;
            }
        };
        let active: std::collections::HashSet<&str> =
            streams.iter().map(|s| s.stream_id.as_str()).collect();
        for running in &self.running {
            if running.since < looked && !active.contains(running.key().as_str()) {
                running.deleted.cancel();
            }
        }
        for rec in streams {
            if self.running.contains_key(&rec.stream_id) {
                continue;
            }
            let deleted = state.shutdown().child_token();
            match take_lease(state, &rec, &deleted).await {
                Ok(Some(lease)) => {
                    tracing::info!(stream_id = %rec.stream_id, call_id = %rec.call_id, "taking over an audio stream");
                    state.metrics().audio.adopted.inc();
                    self.resume(state, rec, deleted, Some(lease)).await;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "could not claim an audio stream");
                    return;
                }
            }
        }
    }
}

/// The claim on running `rec` (one place of its own kind on its call); `lost` is cancelled if
/// this node ever fails to renew it in time.
async fn take_lease(
    state: &AppState,
    rec: &AudioStreamRecord,
    lost: &CancellationToken,
) -> Result<Option<Lease>, callstream_store::StoreError> {
    let kind = format!("audio_stream:{}", rec.stream_id);
    state
        .take_lease(
            &rec.workspace_id,
            &rec.call_id,
            &kind,
            1,
            Some(lost.clone()),
        )
        .await
}

/// Runs until shutdown on a cluster node: every third of `cluster_lease_secs` (and at once),
/// takes over the streams no node runs.
pub async fn adopt(state: AppState) {
    let mut every = tokio::time::interval(state.config().cluster_lease() / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            _ = every.tick() => state.audio_streams().adopt_once(&state).await,
        }
    }
}

/// Runs until shutdown on a cluster node: stops the streams that another node ended (told on
/// [`STOP_SUBJECT`]); [`adopt`]'s sweep is the fallback.
pub async fn listen_for_stops(state: AppState) {
    let Some(nats) = state.nats().cloned() else {
        return;
    };
    loop {
        match nats.subscribe(STOP_SUBJECT).await {
            Ok(mut stops) => loop {
                tokio::select! {
                    () = state.shutdown().cancelled() => return,
                    stop = futures::StreamExt::next(&mut stops) => match stop {
                        Some(message) => {
                            if let Ok(id) = std::str::from_utf8(&message.payload) {
                                state.audio_streams().stop(id);
                            }
                        }
                        None => break,
                    },
                }
            },
            Err(err) => tracing::warn!(error = %err, "stream stops unheard; sweeping instead"),
        }
        tokio::select! {
            () = state.shutdown().cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Stops a stream wherever it runs: here, or (in a cluster) at the node that runs it.
pub fn stop_anywhere(state: &AppState, stream_id: &str) {
    if state.audio_streams().stop(stream_id) {
        return;
    }
    if let Some(nats) = state.nats().cloned() {
        let id = bytes::Bytes::from(stream_id.to_owned());
        tokio::spawn(async move {
            if let Err(err) = nats.publish(STOP_SUBJECT, id).await {
                tracing::warn!(error = %err, "could not tell the cluster a stream stopped; its node sweeps");
            }
        });
    }
}

/// Ends a stream in the store and reports it, once: whoever ends it first (the stream itself, a
/// `DELETE`) reports; later attempts do nothing. `true` if this call ended it.
pub async fn finish(
    state: &AppState,
    rec: &AudioStreamRecord,
    status: StreamStatus,
    reason: &str,
) -> bool {
    let ended = match state
        .store()
        .set_audio_stream_status(
            &rec.workspace_id,
            &rec.stream_id,
            status,
            time::now(),
            Some(reason),
        )
        .await
    {
        Ok(ended) => ended,
        Err(err) => {
            tracing::warn!(error = %err, stream_id = %rec.stream_id, "could not record a stream's end");
            false
        }
    };
    if ended {
        let (event, outcome) = match status {
            StreamStatus::Dropped => ("DroppedStream", "dropped"),
            _ => ("StopStream", "stopped"),
        };
        state
            .metrics()
            .audio
            .ended
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
        let fields = if status == StreamStatus::Dropped {
            vec![("Error", reason.to_owned())]
        } else {
            vec![("Reason", reason.to_owned())]
        };
        callbacks::send(state, rec, event, fields);
        tracing::info!(stream_id = %rec.stream_id, call_id = %rec.call_id, %status, reason, "audio stream ended");
    }
    ended
}

async fn run(session: Session) {
    let state = session.state.clone();
    let active = state.metrics().audio.active_streams.clone();
    active.inc();
    let end = session.serve().await;
    match end {
        End::Stopped(reason) => {
            finish(&state, &session.rec, StreamStatus::Stopped, &reason).await;
        }
        End::Dropped(reason) => {
            finish(&state, &session.rec, StreamStatus::Dropped, &reason).await;
        }
        End::Deleted | End::ShuttingDown => {}
    }
    state.audio_streams().running.remove(&session.rec.stream_id);
    active.dec();
}
