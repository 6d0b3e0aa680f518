//! Seed 002: the STT/TTS event stream of one active call. Frames are JSON objects with
//! `event_type`, `event_id`, `timestamp` and `call_id`, plus each type's own fields:
//!
//! | canonical event | `event_type` | fields |
//! |---|---|---|
//! | (connection opened) | `sse_init` | |
//! | `call.started` | `call_start` | `phone`, `direction`, `transport` |
//! | `call.transcription`, user, partial | `user_interim_transcription` | `interim_transcription_text` |
//! | `call.transcription`, user, final | `user_transcription` | `user_transcription_text` |
//! | `call.tts_completed` | `tts_completed` | `tts_text`, `tts_latency` (ms, when known) |
//! | `call.turn_latency` | `turn_latency` | `total_ms`, `stt_ms`, `llm_ms`, `tts_ms` |
//! | `call.metrics` | `metrics` | `mos`, `jitter_ms`, `packet_loss_pct`, `rtt_ms` |
//! | `call.completed` / `call.failed` | `call_end` | `status`, `reason` |
//! | (right before the server closes) | `sse_close` | |
//!
//! The agent's own transcript turns are not on this stream (their text arrives as
//! `tts_completed`), nor are DTMF, barge-in and the other call events: the seed names only these.

use bytes::Bytes;
use callstream_bus::Event;
use callstream_core::{Envelope, EventId, Payload, time};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::{slots, sse};

fn frame(
    event_type: &str,
    event_id: &str,
    timestamp: &DateTime<Utc>,
    call_id: &str,
    fields: Value,
    seq: Option<u64>,
) -> Bytes {
    let mut body = Map::new();
    body.insert("event_type".into(), json!(event_type));
    body.insert("event_id".into(), json!(event_id));
    body.insert("timestamp".into(), json!(time::format(timestamp)));
    body.insert("call_id".into(), json!(call_id));
    if let Value::Object(extra) = fields {
        body.extend(extra.into_iter().filter(|(_, v)| !v.is_null()));
    }
    sse::json_frame(seq, None, &body)
}

/// `sse_init` (at once) or `sse_close` (right before closing): lifecycle frames with a fresh id.
pub fn lifecycle(event_type: &str, call_id: &str) -> Bytes {
    frame(
        event_type,
        EventId::new().as_str(),
        &time::now(),
        call_id,
        Value::Null,
        None,
    )
}

/// This surface's frame for an event, shared by all subscribers; `None` for events it does
/// not carry.
pub fn speech_sse(event: &Event) -> Option<Bytes> {
    event.encoded(slots::SPEECH_SSE, encode)
}

fn encode(env: &Envelope) -> Option<Bytes> {
    let (event_type, fields) = match &env.payload {
        Payload::CallStarted(s) => (
            "call_start",
            json!({"phone": s.phone, "direction": s.direction, "transport": s.transport}),
        ),
        Payload::Transcription(t) if t.role == callstream_core::event::Role::User => {
            if t.is_final {
                (
                    "user_transcription",
                    json!({"user_transcription_text": t.text}),
                )
            } else {
                (
                    "user_interim_transcription",
                    json!({"interim_transcription_text": t.text}),
                )
            }
        }
        Payload::TtsCompleted(t) => (
            "tts_completed",
            json!({"tts_text": t.text, "tts_latency": t.latency_ms}),
        ),
        Payload::TurnLatency(l) => (
            "turn_latency",
            json!({"total_ms": l.total_ms, "stt_ms": l.stt_ms, "llm_ms": l.llm_ms, "tts_ms": l.tts_ms}),
        ),
        Payload::Metrics(m) => (
            "metrics",
            json!({"mos": m.mos, "jitter_ms": m.jitter_ms, "packet_loss_pct": m.packet_loss_pct, "rtt_ms": m.rtt_ms}),
        ),
        Payload::Completed(c) => (
            "call_end",
            json!({"status": "completed", "reason": c.reason}),
        ),
        Payload::Failed(f) => ("call_end", json!({"status": "failed", "reason": f.reason})),
        _ => return None,
    };
    Some(frame(
        event_type,
        env.event_id.as_str(),
        &env.timestamp,
        env.subject.id(),
        fields,
        Some(env.seq),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callstream_core::{CallId, Subject, WorkspaceId};

    fn data(ty: &str, payload: Value) -> Option<Value> {
        let mut env = Envelope::new(
            WorkspaceId::parse("ws_1").unwrap(),
            Subject::Call(CallId::parse("call_1").unwrap()),
            7,
            time::parse("2026-05-15T14:32:01.123Z").unwrap(),
            Payload::parse(ty, payload).unwrap(),
        )
        .unwrap();
        env.event_id = EventId::parse("evt_1").unwrap();
        let bytes = speech_sse(&Event::new(env))?;
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.starts_with("id: 7\ndata: "), "{text}");
        Some(serde_json::from_str(text.trim_start_matches("id: 7\ndata: ").trim()).unwrap())
    }

    #[test]
    fn each_event_type_maps_to_the_seeds_fields() {
        let base = json!({"event_id": "evt_1", "timestamp": "2026-05-15T14:32:01.123Z", "call_id": "call_1"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        let cases = [
            (
                "call.transcription",
                json!({"role": "user", "text": "What ti", "is_final": false, "turn_id": "trn_1"}),
                Some(with(
                    json!({"event_type": "user_interim_transcription", "interim_transcription_text": "What ti"}),
                )),
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": "What time?", "is_final": true, "turn_id": "trn_1"}),
                Some(with(
                    json!({"event_type": "user_transcription", "user_transcription_text": "What time?"}),
                )),
            ),
            (
                "call.transcription",
                json!({"role": "agent", "text": "Nine.", "is_final": true, "turn_id": "trn_2"}),
                None,
            ),
            (
                "call.tts_completed",
                json!({"text": "Nine.", "latency_ms": 180}),
                Some(with(
                    json!({"event_type": "tts_completed", "tts_text": "Nine.", "tts_latency": 180}),
                )),
            ),
            (
                "call.tts_completed",
                json!({"text": "Nine."}),
                Some(with(
                    json!({"event_type": "tts_completed", "tts_text": "Nine."}),
                )),
            ),
            (
                "call.turn_latency",
                json!({"total_ms": 640}),
                Some(with(json!({"event_type": "turn_latency", "total_ms": 640}))),
            ),
            (
                "call.metrics",
                json!({"mos": 4.2}),
                Some(with(json!({"event_type": "metrics", "mos": 4.2}))),
            ),
            (
                "call.completed",
                json!({"reason": "hangup"}),
                Some(with(
                    json!({"event_type": "call_end", "status": "completed", "reason": "hangup"}),
                )),
            ),
            (
                "call.failed",
                json!({"reason": "busy"}),
                Some(with(
                    json!({"event_type": "call_end", "status": "failed", "reason": "busy"}),
                )),
            ),
            ("call.dtmf", json!({"digits": "1"}), None),
        ];
        for (ty, payload, expect) in cases {
            assert_eq!(data(ty, payload.clone()), expect, "{ty} {payload}");
        }
    }

    #[test]
    fn lifecycle_frames() {
        let text = String::from_utf8(lifecycle("sse_init", "call_9").to_vec()).unwrap();
        let v: Value = serde_json::from_str(text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(
            (v["event_type"].as_str(), v["call_id"].as_str()),
            (Some("sse_init"), Some("call_9"))
        );
        assert!(v["event_id"].as_str().unwrap().starts_with("evt_"));
    }
}
