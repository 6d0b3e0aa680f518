//! Seed 000, the native v1 API: frames of the call transcript SSE stream
//! (`/v1/calls/{id}/transcript/stream`) and the canonical envelope JSON.

use bytes::Bytes;
use callstream_bus::Event;
use callstream_core::event::{Role, Transcription};
use callstream_core::{Envelope, Payload, TurnId, time};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{slots, sse};

/// One transcript SSE frame's data, exactly the seed's fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranscriptFrame<'a> {
    /// `user` or `agent`.
    pub role: Role,
    pub text: &'a str,
    /// `false` for partial turns; the final for the same `turn_id` follows with `true`.
    pub is_final: bool,
    pub turn_id: &'a TurnId,
    #[serde(with = "time::millis")]
    pub ts: DateTime<Utc>,
}

impl<'a> TranscriptFrame<'a> {
    pub fn from_transcription(t: &'a Transcription, ts: DateTime<Utc>) -> Self {
        Self {
            role: t.role,
            text: &t.text,
            is_final: t.is_final,
            turn_id: &t.turn_id,
            ts,
        }
    }

    /// The SSE frame, with the event's `seq` as its `id:` so `Last-Event-ID` can resume.
    pub fn to_sse(&self, seq: u64) -> Bytes {
        sse::json_frame(Some(seq), None, self)
    }
}

/// The transcript SSE frame for an event, shared by all subscribers; `None` for event types the
/// transcript stream does not carry.
pub fn transcript_sse(event: &Event) -> Option<Bytes> {
    event.encoded(slots::NATIVE_TRANSCRIPT_SSE, |env: &Envelope| {
        match &env.payload {
            Payload::Transcription(t) => {
                Some(TranscriptFrame::from_transcription(t, env.timestamp).to_sse(env.seq))
            }
            _ => None,
        }
    })
}

/// The canonical envelope JSON for an event (native WebSocket frames and webhook bodies).
pub fn envelope_json(event: &Event) -> Bytes {
    event.json()
}

/// One conversation SSE frame's data, exactly the seed's fields: the payload nested verbatim.
#[derive(Serialize)]
struct ConversationFrame<'a> {
    event_type: &'a str,
    conversation_id: &'a str,
    timestamp: String,
    payload: callstream_core::event::WirePayload<'a>,
}

/// The conversation SSE frame for an event (`id:` is its seq), shared by all subscribers;
/// `None` for events that are not a conversation's.
pub fn conversation_sse(event: &Event) -> Option<Bytes> {
    event.encoded(slots::NATIVE_CONVERSATION_SSE, |env: &Envelope| {
        let callstream_core::Subject::Conversation(id) = &env.subject else {
            return None;
        };
        let frame = ConversationFrame {
            event_type: env.payload.type_name(),
            conversation_id: id.as_str(),
            timestamp: time::format(&env.timestamp),
            payload: env.wire_payload(),
        };
        Some(sse::json_frame_verbatim(Some(env.seq), None, &frame))
    })
}

/// The body of every error the native API returns, in HTTP responses and `event: error` frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    pub error_code: &'a str,
    pub message: &'a str,
}

/// A non-terminal notice: an SSE frame of event type `event` with `{error_code, message}` data.
pub fn sse_event(error_code: &str, message: &str) -> Bytes {
    sse::json_frame(
        None,
        Some("error"),
        &ErrorBody {
            error_code,
            message,
        },
    )
}

/// A terminal `event: error` SSE frame.
pub fn error_sse(error_code: &str, message: &str) -> Bytes {
    sse_event(error_code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_core::{CallId, Subject, WorkspaceId};
    use serde_json::json;

    fn event(ty: &str, payload: serde_json::Value) -> std::sync::Arc<Event> {
        let env = Envelope::new(
            WorkspaceId::parse("ws_1").unwrap(),
            Subject::Call(CallId::parse("call_1").unwrap()),
            5,
            time::parse("2026-05-15T14:32:01.123Z").unwrap(),
            Payload::parse(ty, payload).unwrap(),
        )
        .unwrap();
        Event::new(env)
    }

    #[test]
    fn transcript_frames_carry_exactly_the_seed_fields() {
        let e = event(
            "call.transcription",
            json!({"role": "agent", "text": "We open at nine.", "is_final": false, "turn_id": "trn_xyz", "confidence": 0.9}),
        );
        assert_eq!(
            transcript_sse(&e).unwrap(),
            Bytes::from(
                "id: 5\ndata: {\"role\":\"agent\",\"text\":\"We open at nine.\",\"is_final\":false,\"turn_id\":\"trn_xyz\",\"ts\":\"2026-05-15T14:32:01.123Z\"}\n\n"
            )
        );
    }

    #[test]
    fn other_events_have_no_transcript_frame() {
        for (ty, payload) in [
            ("call.dtmf", json!({"digits": "5"})),
            ("call.completed", json!({})),
            ("call.tts_completed", json!({"text": "hi"})),
        ] {
            assert_eq!(transcript_sse(&event(ty, payload)), None, "{ty}");
        }
    }

    #[test]
    fn conversation_frames_nest_the_payload_verbatim() {
        let env = Envelope::new(
            WorkspaceId::parse("ws_1").unwrap(),
            Subject::Conversation(callstream_core::ConversationId::parse("conv_abc").unwrap()),
            9,
            time::parse("2026-05-15T14:32:01.123Z").unwrap(),
            Payload::parse("message.received", json!({"status": "received", "message_id": "m1", "direction": "inbound", "text": "hi", "x": [1]})).unwrap(),
        )
        .unwrap();
        assert_eq!(
            conversation_sse(&Event::new(env)).unwrap(),
            Bytes::from(
                "id: 9\ndata: {\"event_type\":\"message.received\",\"conversation_id\":\"conv_abc\",\"timestamp\":\"2026-05-15T14:32:01.123Z\",\"payload\":{\"status\":\"received\",\"message_id\":\"m1\",\"direction\":\"inbound\",\"text\":\"hi\",\"x\":[1]}}\n\n"
            )
        );
        assert_eq!(
            conversation_sse(&event("call.dtmf", json!({"digits": "1"}))),
            None
        );
    }

    #[test]
    fn error_frame() {
        assert_eq!(
            error_sse("call_not_found", "no such call"),
            Bytes::from(
                "event: error\ndata: {\"error_code\":\"call_not_found\",\"message\":\"no such call\"}\n\n"
            )
        );
    }

    /// A payload kept as it arrived may hold line breaks between its tokens (pretty-printed
    /// JSON): on the conversation stream they must not end the event, and every client must
    /// read back the same JSON.
    #[test]
    fn line_breaks_in_a_verbatim_payload_stay_inside_one_event() {
        let raw =
            "{\"message_id\":\"m1\",\n\n  \"direction\":\"inbound\",\r\n\"status\":\"received\"}";
        let env = Envelope::new(
            WorkspaceId::parse("ws_1").unwrap(),
            Subject::Conversation(callstream_core::ConversationId::parse("conv_1").unwrap()),
            2,
            time::parse("2026-05-15T14:32:01.123Z").unwrap(),
            Payload::parse_json("message.received", raw).unwrap(),
        )
        .unwrap()
        .with_payload_json(Some(callstream_core::event::RawPayload::new(
            serde_json::value::RawValue::from_string(raw.to_owned()).unwrap(),
        )));
        let frame = conversation_sse(&Event::new(env)).unwrap();
        let text = std::str::from_utf8(&frame).unwrap();
        // One event: the only blank line is its end.
        assert!(text.ends_with("\n\n"));
        assert!(!text[..text.len() - 2].contains("\n\n"), "{text:?}");
        assert!(!text.contains('\r'), "{text:?}");
        // As an SSE client reads it: its data lines joined with \n.
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let joined = data.join("\n");
        let parsed: serde_json::Value = serde_json::from_str(&joined).unwrap();
        assert_eq!(
            parsed["payload"],
            json!({"message_id": "m1", "direction": "inbound", "status": "received"})
        );
        assert_eq!(parsed["event_type"], "message.received");
        assert!(text.starts_with("id: 2\ndata: "));
    }

    /// The canonical envelope, pinned: the bytes every call socket frame and webhook carries.
    #[test]
    fn envelope_json_is_the_canonical_envelope() {
        let envelope = |payload_json: Option<&str>| {
            let env = Envelope::with_id(
                callstream_core::EventId::parse("evt_1").unwrap(),
                WorkspaceId::parse("ws_1").unwrap(),
                Subject::Call(CallId::parse("call_1").unwrap()),
                5,
                time::parse("2026-05-15T14:32:01.123Z").unwrap(),
                Payload::parse("call.dtmf", json!({"digits": "5"})).unwrap(),
            )
            .unwrap()
            .with_payload_json(payload_json.map(|raw| {
                callstream_core::event::RawPayload::new(
                    serde_json::value::RawValue::from_string(raw.to_owned()).unwrap(),
                )
            }));
            Event::new(env)
        };
        assert_eq!(
            envelope_json(&envelope(None)),
            Bytes::from_static(
                br#"{"event_id":"evt_1","event_type":"call.dtmf","workspace_id":"ws_1","call_id":"call_1","seq":5,"timestamp":"2026-05-15T14:32:01.123Z","payload":{"digits":"5"}}"#
            )
        );
        // A payload from outside goes out as it came, unknown fields and spacing included.
        assert_eq!(
            envelope_json(&envelope(Some(r#"{ "digits": "5", "tone_ms": 80 }"#))),
            Bytes::from_static(
                br#"{"event_id":"evt_1","event_type":"call.dtmf","workspace_id":"ws_1","call_id":"call_1","seq":5,"timestamp":"2026-05-15T14:32:01.123Z","payload":{ "digits": "5", "tone_ms": 80 }}"#
            )
        );
    }
}
