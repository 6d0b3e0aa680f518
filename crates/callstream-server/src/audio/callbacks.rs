//! Status callbacks of audio streams (`status_callback_url`): `StartStream`, `StopStream`,
//! `DroppedStream`, `DegradedStream` and `PlayedStream`, as form fields the way Plivo sends them
//! (`Event`, `StreamID`, `CallUUID`, `ServiceURL`, `Timestamp`, and per event `Name`, `Error`,
//! `Reason`, `BufferPercent`).
//!
//! They are queued in the store's callback outbox, so they survive a restart and are retried on
//! the webhook schedule (24 hours), signed with the workspace's Standard Webhooks signing secret.
//! Queuing runs in a task of its own: a stream's 20 ms beat never waits for the database.

use callstream_core::time;
use callstream_store::{AudioStreamRecord, CallbackMessage};
use callstream_webhooks::Secret;

use crate::state::AppState;

/// The form fields of one callback, in order.
pub fn fields(rec: &AudioStreamRecord, event: &str, extra: &[(&str, String)], at: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Event", event)
        .append_pair("StreamID", &rec.stream_id)
        .append_pair("CallUUID", rec.call_id.as_str())
        .append_pair("ServiceURL", &rec.service_url)
        .append_pair("Timestamp", at);
    for (name, value) in extra {
        form.append_pair(name, value);
    }
    form.finish()
}

/// Queues `event` for the stream's status callback URL, if it has one.
pub fn send(
    state: &AppState,
    rec: &AudioStreamRecord,
    event: &'static str,
    extra: Vec<(&'static str, String)>,
) {
    let Some(url) = rec.status_callback_url.clone() else {
        return;
    };
    let now = time::now();
    let message = CallbackMessage {
        id: format!(
            "msg_{}",
            callstream_core::EventId::new()
                .as_str()
                .trim_start_matches("evt_")
        ),
        workspace_id: rec.workspace_id.clone(),
        url,
        method: rec.status_callback_method,
        body: fields(rec, event, &extra, &time::format(&now)),
        kind: event.to_owned(),
        created_at: now,
    };
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(err) = ensure_signing_secret(&state, &message.workspace_id).await {
            tracing::warn!(error = %err.message, "no signing secret for a status callback");
        }
        match state.store().queue_callback(&message).await {
            Ok(()) => state.outbox_written(),
            Err(err) => {
                tracing::warn!(error = %err, kind = %message.kind, "could not queue a status callback");
            }
        }
    });
}

/// The workspace's signing secret, minted on first use.
///
/// # Errors
/// When the store fails.
pub async fn ensure_signing_secret(
    state: &AppState,
    workspace: &callstream_core::WorkspaceId,
) -> Result<String, crate::ApiError> {
    let candidate = Secret::generate()
        .map_err(|_| crate::ApiError::internal())?
        .expose_whsec();
    Ok(state.store().signing_secret(workspace, &candidate).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_core::audio::{AudioTrack, StreamStatus};
    use callstream_core::{CallId, WorkspaceId};
    use callstream_store::CallbackMethod;

    #[test]
    fn fields_are_form_encoded_in_plivos_names() {
        let rec = AudioStreamRecord {
            stream_id: "20170ada-f610-433b-8758-c02a2aab3662".into(),
            workspace_id: WorkspaceId::new(),
            call_id: CallId::parse("call_1").unwrap(),
            service_url: "wss://example.com/a?x=1".into(),
            audio_track: AudioTrack::Inbound,
            bidirectional: false,
            content_type: "audio/x-mulaw;rate=8000".into(),
            l16_big_endian: false,
            stream_timeout_secs: 60,
            status_callback_url: None,
            status_callback_method: CallbackMethod::Post,
            extra_headers: String::new(),
            status: StreamStatus::InProgress,
            created_at: time::now(),
            start_time: None,
            end_time: None,
            end_reason: None,
        };
        assert_eq!(
            fields(
                &rec,
                "PlayedStream",
                &[("Name", "a b&c".into())],
                "2026-12-02T10:00:00.000Z"
            ),
            "Event=PlayedStream&StreamID=20170ada-f610-433b-8758-c02a2aab3662&CallUUID=call_1\
             &ServiceURL=wss%3A%2F%2Fexample.com%2Fa%3Fx%3D1&Timestamp=2026-12-02T10%3A00%3A00.000Z&Name=a+b%26c"
        );
    }
}
