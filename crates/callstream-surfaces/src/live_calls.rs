//! Seed 001: the live-call control socket `/ws/v1/liveCalls`. Every message has `type`.
//!
//! Server → client: `event:start` (`phone`, `timestamp`), `event:end` (screening ended, `msg`),
//! `event:callEnd` (`timestamp`), `transcript` (`msg`, `role` `assistant|other|user`, optional
//! `offset`), `ack` (`ackId`), `error` (`description`).
//! Client → server: `client:joinCall` and `client:endCall`, each with `id`.

use bytes::Bytes;
use callstream_bus::Event;
use callstream_core::event::Role;
use callstream_core::{Payload, time};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::slots;

fn msg(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub fn start(phone: &str, at: &DateTime<Utc>) -> Bytes {
    msg(&json!({"type": "event:start", "phone": phone, "timestamp": time::format(at)}))
}

pub fn screening_end(description: &str) -> Bytes {
    msg(&json!({"type": "event:end", "msg": description}))
}

pub fn call_end(at: &DateTime<Utc>) -> Bytes {
    msg(&json!({"type": "event:callEnd", "timestamp": time::format(at)}))
}

pub fn ack(id: &str) -> Bytes {
    msg(&json!({"type": "ack", "ackId": id}))
}

pub fn error(description: &str) -> Bytes {
    msg(&json!({"type": "error", "description": description}))
}

/// The message for an event, shared by all subscribers; `None` for events this socket does not
/// carry. Transcript updates are the final turns (a partial would repeat itself in `msg`).
pub fn frame(event: &Event) -> Option<Bytes> {
    event.encoded(slots::LIVE_CALLS, |env| match &env.payload {
        Payload::ScreeningEnded(s) => Some(screening_end(&s.msg)),
        Payload::Transcription(t) if t.is_final => {
            let role = match t.role {
                Role::User => "user",
                Role::Agent => "assistant",
            };
            let mut m = json!({"type": "transcript", "msg": t.text, "role": role});
            if let Some(offset) = t.segment_start {
                m["offset"] = json!(offset);
            }
            Some(msg(&m))
        }
        Payload::Completed(_) | Payload::Failed(_) => Some(call_end(&env.timestamp)),
        _ => None,
    })
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    JoinCall { id: String },
    EndCall { id: String },
}

/// Parses a client message.
///
/// # Errors
/// The `description` for an `error` message.
pub fn parse(text: &str) -> Result<Request, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let id = match value.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        Some(_) => return Err("id: expected a string of 1 to 128 characters".into()),
        None => return Err("id: missing field".into()),
    };
    match value.get("type").and_then(Value::as_str) {
        Some("client:joinCall") => Ok(Request::JoinCall { id }),
        Some("client:endCall") => Ok(Request::EndCall { id }),
        Some(other) => Err(format!(
            "type: unknown message type {other:?}; expected client:joinCall or client:endCall"
        )),
        None => Err("type: missing field".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(
            parse(r#"{"type":"client:joinCall","id":"1"}"#),
            Ok(Request::JoinCall { id: "1".into() })
        );
        assert_eq!(
            parse(r#"{"type":"client:endCall","id":"x"}"#),
            Ok(Request::EndCall { id: "x".into() })
        );
        for (text, expect) in [
            ("nope", "not valid JSON"),
            (r#"{"type":"client:endCall"}"#, "id: missing field"),
            (
                r#"{"type":"client:endCall","id":3}"#,
                "id: expected a string",
            ),
            (
                r#"{"type":"client:dance","id":"1"}"#,
                "unknown message type",
            ),
            (r#"{"id":"1"}"#, "type: missing field"),
        ] {
            assert!(parse(text).unwrap_err().contains(expect), "{text}");
        }
    }

    #[test]
    fn server_messages() {
        let at = time::parse("2026-05-15T14:32:01.123Z").unwrap();
        assert_eq!(
            start("+14155550123", &at),
            Bytes::from(
                r#"{"type":"event:start","phone":"+14155550123","timestamp":"2026-05-15T14:32:01.123Z"}"#
            )
        );
        assert_eq!(ack("7"), Bytes::from(r#"{"type":"ack","ackId":"7"}"#));
        assert_eq!(
            error("no"),
            Bytes::from(r#"{"type":"error","description":"no"}"#)
        );
    }
}
