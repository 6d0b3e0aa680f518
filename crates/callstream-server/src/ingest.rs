//! Ingest: events from the call runtime become stored, sequenced, published envelopes.
//! Every ingest path (REST today, the runtime WebSocket and NATS later) goes through here.

use callstream_bus::Event;
use callstream_core::CallId;
use callstream_core::WorkspaceId;
use callstream_store::{Appended, NewEvent};

use crate::error::ApiError;
use crate::state::AppState;

/// Appends `events` to the call (the store assigns seqs) and publishes them in order.
///
/// # Errors
/// 404 for an unknown call, 409 once it has ended, 400 for a batch the store refuses.
pub async fn append_call_events(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    events: Vec<NewEvent>,
) -> Result<Appended, ApiError> {
    let lock = state.ingest_lock(call);
    let result = {
        let _ordered = lock.lock().await;
        append_and_publish(state, workspace, call, events).await
    };
    drop(lock);
    state.release_ingest_lock(call);
    result
}

async fn append_and_publish(
    state: &AppState,
    workspace: &WorkspaceId,
    call: &CallId,
    events: Vec<NewEvent>,
) -> Result<Appended, ApiError> {
    let appended = state
        .store()
        .append_call_events(workspace, call, events)
        .await
        .map_err(|e| ApiError::from_store(e, "call"))?;
    for envelope in &appended.envelopes {
        state.metrics().ingested(envelope.event_type());
        if let Err(err) = state.bus().publish(Event::new(envelope.clone())).await {
            // The events are stored (transcripts, status); only live delivery is affected, and
            // resubmitting would mint duplicate seqs, so the ingest still succeeds.
            tracing::error!(error = %err, call_id = %call, seq = envelope.seq, "publish failed");
        }
    }
    Ok(appended)
}
