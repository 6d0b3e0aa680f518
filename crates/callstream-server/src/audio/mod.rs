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

use crate::state::AppState;
use session::{End, Session};

/// A running stream, as the rest of the server sees it.
struct Running {
    deleted: CancellationToken,
    queued_ms: Arc<AtomicU64>,
}

/// The audio streams this node runs.
#[derive(Default)]
pub struct AudioStreams {
    running: DashMap<String, Running>,
}

impl AudioStreams {
    /// Starts running a stream (`resume`: after a gateway restart, reconnect once the call's
    /// audio flows again).
    pub fn start(
        &self,
        state: &AppState,
        rec: AudioStreamRecord,
        account_id: String,
        resume: bool,
    ) {
        let Ok(format) = MediaFormat::parse(&rec.content_type) else {
            // The content type was checked when the stream was created; a stored one that does
            // not parse is a corrupt row.
            tracing::error!(stream_id = %rec.stream_id, "audio stream with an unreadable content type");
            return;
        };
        // A child of the server's shutdown token: a stream waits on one token for both.
        let deleted = state.shutdown().child_token();
        let queued_ms = Arc::new(AtomicU64::new(0));
        self.running.insert(
            rec.stream_id.clone(),
            Running {
                deleted: deleted.clone(),
                queued_ms: queued_ms.clone(),
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

    /// Resumes every stream the store still has active (at start-up): those whose call is still
    /// in progress reconnect once its audio flows; the others end now.
    pub async fn resume_all(&self, state: &AppState) {
        let streams = match state.store().active_audio_streams().await {
            Ok(streams) => streams,
            Err(err) => {
                tracing::warn!(error = %err, "could not read the active audio streams");
                return;
            }
        };
        for rec in streams {
            let call = state.store().call(&rec.workspace_id, &rec.call_id).await;
            let workspace = state.store().workspace(&rec.workspace_id).await;
            match (call, workspace) {
                (Ok(Some(call)), Ok(Some(ws))) if call.status.is_active() => {
                    self.start(state, rec, ws.auth_id, true);
                }
                (Ok(_), Ok(_)) => {
                    finish(state, &rec, StreamStatus::Stopped, "the call ended").await;
                }
                (Err(err), _) | (_, Err(err)) => {
                    tracing::warn!(error = %err, stream_id = %rec.stream_id, "could not resume an audio stream");
                }
            }
        }
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
