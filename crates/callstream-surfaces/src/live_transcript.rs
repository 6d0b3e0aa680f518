//! Seed 003: the live transcript socket `/live-transcript/{call_sid}`. Server messages:
//!
//! ```json
//! {"type": "connection_established", "call_sid": "CA…", "status": "in-progress"}
//! {"type": "transcript", "content": "…", "speaker": "user", "is_final": true, "confidence": 0.93,
//!  "segment_start": 3.2, "segment_end": 4.9, "created_at": "2026-05-15T14:32:01.123Z"}
//! {"type": "call_status", "call_sid": "CA…", "status": "in-progress" | "completed" | "failed"}
//! {"type": "pong"}
//! {"type": "error", "message": "…"}
//! ```
//! Client messages: `{"type": "ping"}` and `{"type": "get_status"}`. The seed names the message
//! kinds but not their fields; these are callstream's, in `docs/live-transcript.md`.

use bytes::Bytes;
use callstream_bus::Event;
use callstream_core::event::Role;
use callstream_core::{CallStatus, Payload, time};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::slots;

/// A Twilio Call SID: `CA` followed by 32 hexadecimal characters.
pub fn valid_call_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("CA") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The seed's status words.
pub fn status_word(status: CallStatus) -> &'static str {
    match status {
        CallStatus::InProgress => "in-progress",
        CallStatus::Completed => "completed",
        CallStatus::Failed => "failed",
    }
}

fn json<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[derive(Serialize)]
struct Transcript<'a> {
    r#type: &'static str,
    content: &'a str,
    speaker: &'static str,
    is_final: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_start: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_end: Option<f64>,
    created_at: String,
}

/// One transcript segment.
pub fn transcript(
    content: &str,
    role: Role,
    is_final: bool,
    confidence: Option<f64>,
    segment: (Option<f64>, Option<f64>),
    created_at: &DateTime<Utc>,
) -> Bytes {
    json(&Transcript {
        r#type: "transcript",
        content,
        speaker: match role {
            Role::User => "user",
            Role::Agent => "assistant",
        },
        is_final,
        confidence,
        segment_start: segment.0,
        segment_end: segment.1,
        created_at: time::format(created_at),
    })
}

/// The message for an event, shared by all subscribers: transcript segments and the call's end
/// as a status update; `None` for other events.
pub fn frame(event: &Event, call_sid: &str) -> Option<Bytes> {
    // The SID is the same for every subscriber of a call, so caching per event is sound.
    event.encoded(slots::LIVE_TRANSCRIPT, |env| match &env.payload {
        Payload::Transcription(t) => Some(transcript(
            &t.text,
            t.role,
            t.is_final,
            t.confidence,
            (t.segment_start, t.segment_end),
            &env.timestamp,
        )),
        Payload::Completed(c) => Some(status(call_sid, CallStatus::Completed, c.reason.as_deref())),
        Payload::Failed(f) => Some(status(call_sid, CallStatus::Failed, Some(&f.reason))),
        _ => None,
    })
}

/// A `call_status` message. Beyond the seed, an ended call's carries `reason` when its end gave
/// one (`call.failed`'s reason, `call.completed`'s if any), whether the client watched the end or
/// connected after it.
pub fn status(call_sid: &str, status: CallStatus, reason: Option<&str>) -> Bytes {
    let mut message = serde_json::json!({
        "type": "call_status",
        "call_sid": call_sid,
        "status": status_word(status),
    });
    if let Some(reason) = reason {
        message["reason"] = reason.into();
    }
    json(&message)
}

pub fn established(call_sid: &str, status: CallStatus) -> Bytes {
    json(
        &serde_json::json!({"type": "connection_established", "call_sid": call_sid, "status": status_word(status)}),
    )
}

pub fn pong() -> Bytes {
    Bytes::from_static(br#"{"type":"pong"}"#)
}

pub fn error(message: &str) -> Bytes {
    json(&serde_json::json!({"type": "error", "message": message}))
}

/// A client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    GetStatus,
}

/// Parses a client text message.
///
/// # Errors
/// The text of an `error` message saying what is wrong.
pub fn parse(text: &str) -> Result<ClientMessage, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    match value.get("type").and_then(Value::as_str) {
        Some("ping") => Ok(ClientMessage::Ping),
        Some("get_status") => Ok(ClientMessage::GetStatus),
        Some(other) => Err(format!(
            "type: unknown message type {other:?}; expected ping or get_status"
        )),
        None => Err("type: missing field".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sids() {
        for (sid, ok) in [
            ("CA0123456789abcdef0123456789abcdef", true),
            ("CA0123456789ABCDEF0123456789ABCDEF", true),
            ("CA0123456789abcdef0123456789abcde", false),
            ("XX0123456789abcdef0123456789abcdef", false),
            ("CA0123456789abcdef0123456789abcdeg", false),
            ("", false),
        ] {
            assert_eq!(valid_call_sid(sid), ok, "{sid}");
        }
    }

    #[test]
    fn messages() {
        let at = time::parse("2026-05-15T14:32:01.123Z").unwrap();
        assert_eq!(
            transcript(
                "Nine.",
                Role::Agent,
                true,
                Some(0.9),
                (Some(1.0), Some(2.5)),
                &at
            ),
            Bytes::from(
                r#"{"type":"transcript","content":"Nine.","speaker":"assistant","is_final":true,"confidence":0.9,"segment_start":1.0,"segment_end":2.5,"created_at":"2026-05-15T14:32:01.123Z"}"#
            )
        );
        assert_eq!(
            status("CAx", CallStatus::InProgress, None),
            Bytes::from(r#"{"type":"call_status","call_sid":"CAx","status":"in-progress"}"#)
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping));
        assert_eq!(
            parse(r#"{"type":"get_status"}"#),
            Ok(ClientMessage::GetStatus)
        );
        assert!(parse("nope").unwrap_err().starts_with("not valid JSON"));
        assert!(
            parse(r#"{"type":"dance"}"#)
                .unwrap_err()
                .contains("unknown message type")
        );
        assert_eq!(parse(r#"{}"#).unwrap_err(), "type: missing field");
    }
}
