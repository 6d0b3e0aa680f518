//! The runtime socket (`GET /v1/runtime`): callstream's own protocol between a call runtime and
//! the gateway. Events travel up, commands travel down, and the runtime's results travel back.
//!
//! Runtime → gateway:
//! ```json
//! {"type": "events", "ref": "r1", "call_id": "call_…", "events": [{"event_type": …, "payload": …}]}
//! {"type": "events", "conversation_id": "conv_…", "events": [{"event_type": "message.received", …}]}
//! {"type": "command_result", "command_id": "cmd_…", "ok": true}
//! {"type": "command_result", "command_id": "cmd_…", "ok": false, "error_code": "unknown_call", "message": "…"}
//! ```
//! Gateway → runtime:
//! ```json
//! {"type": "accepted", "ref": "r1", "call_id": "call_…", "seqs": [4, 5]}
//! {"type": "command", "command_id": "cmd_…", "call_id": "call_…", "command": "send_dtmf", "digits": "1"}
//! {"type": "error", "ref": "r1", "error_code": "invalid_event", "message": "events[0].payload.text: …"}
//! ```
//! `ref` is optional and echoed, so a runtime can match answers to its requests.

use bytes::Bytes;
use callstream_core::Command;
use callstream_core::incoming::IncomingBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A message from a runtime.
#[derive(Debug, Clone)]
pub enum RuntimeMessage {
    Events(EventsMessage),
    CommandResult(CommandResult),
}

/// Events for one call or conversation.
#[derive(Debug, Clone)]
pub struct EventsMessage {
    pub reference: Option<String>,
    /// The call the events are for; or else `conversation_id`.
    pub call_id: Option<String>,
    pub conversation_id: Option<String>,
    /// One event object or an array, exactly as `POST /v1/calls/{id}/events` (or the
    /// conversation's) takes them.
    pub events: Batch,
}

/// A message's events: decoded with the message in one pass, or, when that pass refused them,
/// still text, for ingest to decode event by event and name the failing field.
#[derive(Debug, Clone)]
pub enum Batch {
    Decoded(IncomingBatch),
    Text(Box<RawValue>),
}

/// No events: what is left in a message whose events were taken for ingest.
impl Default for Batch {
    fn default() -> Self {
        Self::Decoded(IncomingBatch::default())
    }
}

/// An `events` message on the wire; `E` is how its events are read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<E> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    call_id: Option<String>,
    #[serde(default)]
    conversation_id: Option<String>,
    events: E,
}

impl<E> Wire<E> {
    fn into_message(self, events: impl FnOnce(E) -> Batch) -> EventsMessage {
        EventsMessage {
            reference: self.reference,
            call_id: self.call_id,
            conversation_id: self.conversation_id,
            events: events(self.events),
        }
    }
}

/// The runtime's answer to a command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    #[serde(rename = "type")]
    _type: String,
    pub command_id: String,
    pub ok: bool,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Parses one text frame from a runtime.
///
/// # Errors
/// The message to put in an `error` frame, naming the wrong field.
pub fn parse(text: &str) -> Result<RuntimeMessage, String> {
    // Nearly every message is a well-formed `events` message: one pass decodes it. Reading
    // `type` first (below) scanned the whole text once more, events included: about 3,500
    // instructions per message under callgrind. Anything else takes the careful path, whose
    // errors name the field; a message this pass accepts, that path would accept the same.
    // The events are decoded in the same pass, each payload straight into its type
    // (`callstream_core::incoming`).
    if let Ok(m) = serde_json::from_str::<Wire<IncomingBatch>>(text)
        && m.kind == "events"
        && m.call_id.is_some() != m.conversation_id.is_some()
    {
        return Ok(RuntimeMessage::Events(m.into_message(Batch::Decoded)));
    }
    // `type` first, then the variant's own struct, so that errors name the field (serde loses
    // field paths inside internally tagged enums). Both read the text itself: going through a
    // `serde_json::Value` first built every message twice, a third of ingest's parsing cost.
    let head: Head = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    match head.kind.as_ref().and_then(Value::as_str) {
        Some("events") => {
            let m: Wire<Box<RawValue>> = decode(text)?;
            if m.call_id.is_some() == m.conversation_id.is_some() {
                return Err("name exactly one of call_id and conversation_id".to_owned());
            }
            Ok(RuntimeMessage::Events(m.into_message(Batch::Text)))
        }
        Some("command_result") => decode(text).map(RuntimeMessage::CommandResult),
        Some(other) => Err(format!(
            "type: unknown message type {other:?}; expected events or command_result"
        )),
        None => Err("type: missing field".to_owned()),
    }
}

/// A message's `type` (any JSON value, so that a wrong one is named, not a parse error); every
/// other field is skipped unread.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    callstream_core::json::from_str(text).map_err(|e| {
        if e.path == "." {
            e.message()
        } else {
            format!("{}: {}", e.path, e.message())
        }
    })
}

#[derive(Serialize)]
struct CommandFrame<'a> {
    r#type: &'static str,
    command_id: &'a str,
    call_id: &'a str,
    #[serde(flatten)]
    command: &'a Command,
}

/// A command for the runtime.
pub fn command_frame(command_id: &str, call_id: &str, command: &Command) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&CommandFrame {
            r#type: "command",
            command_id,
            call_id,
            command,
        })
        .unwrap_or_default(),
    )
}

#[derive(Serialize)]
struct Accepted<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<&'a str>,
    seqs: &'a [u64],
}

/// The answer to an accepted `events` message, naming what it was for.
pub fn accepted_frame(m: &EventsMessage, seqs: &[u64]) -> Bytes {
    let frame = Accepted {
        r#type: "accepted",
        reference: m.reference.as_deref(),
        call_id: m.call_id.as_deref(),
        conversation_id: m.conversation_id.as_deref(),
        seqs,
    };
    // Sized for the whole answer up front: grown from empty, the buffer was reallocated four
    // or five times per answer, and one answer goes out per message ingested.
    let ids = [&m.reference, &m.call_id, &m.conversation_id];
    let text: usize = ids.iter().filter_map(|s| s.as_ref()).map(String::len).sum();
    let mut out = Vec::with_capacity(64 + text + 21 * seqs.len());
    match serde_json::to_writer(&mut out, &frame) {
        Ok(()) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

#[derive(Serialize)]
struct Error<'a> {
    r#type: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    error_code: &'a str,
    message: &'a str,
}

/// An error answer to a runtime message.
pub fn error_frame(reference: Option<&str>, error_code: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&Error {
            r#type: "error",
            reference,
            error_code,
            message,
        })
        .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages() {
        let Ok(RuntimeMessage::Events(events)) =
            parse(r#"{"type":"events","ref":"r1","call_id":"call_1","events":[]}"#)
        else {
            panic!("not events");
        };
        assert_eq!(
            (events.reference.as_deref(), events.call_id.as_deref()),
            (Some("r1"), Some("call_1"))
        );
        assert_eq!(
            accepted_frame(&events, &[4]),
            Bytes::from(r#"{"type":"accepted","ref":"r1","call_id":"call_1","seqs":[4]}"#)
        );
        let Ok(RuntimeMessage::Events(events)) =
            parse(r#"{"events":{"event_type":"x"},"conversation_id":"conv_1","type":"events"}"#)
        else {
            panic!("not events");
        };
        assert_eq!(events.conversation_id.as_deref(), Some("conv_1"));
        // Events the one pass refuses stay text, for ingest to name what is wrong.
        let Batch::Text(text) = &events.events else {
            panic!("an unknown event type decoded");
        };
        assert_eq!(text.get(), r#"{"event_type":"x"}"#);
        // Well-formed events are decoded with the message.
        let Ok(RuntimeMessage::Events(events)) = parse(
            r#"{"type":"events","call_id":"call_1","events":{"event_type":"call.dtmf","payload":{"digits":"1"}}}"#,
        ) else {
            panic!("not events");
        };
        let Batch::Decoded(decoded) = &events.events else {
            panic!("well-formed events were not decoded");
        };
        assert_eq!((decoded.events.len(), decoded.array), (1, false));
        let result = parse(
            r#"{"type":"command_result","command_id":"cmd_1","ok":false,"error_code":"unknown_call"}"#,
        );
        assert!(matches!(
            result,
            Ok(RuntimeMessage::CommandResult(CommandResult {
                ok: false,
                ..
            }))
        ));
        for (text, expect) in [
            ("nope", "not valid JSON"),
            (
                r#"{"type":"events","call_id":"c"}"#,
                "missing field `events`",
            ),
            (
                r#"{"type":"events","events":[]}"#,
                "exactly one of call_id and conversation_id",
            ),
            (
                r#"{"type":"events","call_id":"c","conversation_id":"d","events":[]}"#,
                "exactly one of",
            ),
            (
                r#"{"type":"command_result","command_id":"c","ok":"yes"}"#,
                "ok: invalid type",
            ),
            (
                r#"{"type":"hello"}"#,
                "type: unknown message type \"hello\"",
            ),
            (r#"{"call_id":"c","events":[]}"#, "type: missing field"),
            // Refused by the one-pass decode too, so the careful path answers as before.
            (
                r#"{"type":"events","type":"events","call_id":"c","events":[]}"#,
                "duplicate field `type`",
            ),
            (
                r#"{"type":"events","call_id":"c","events":[],"extra":1}"#,
                "unknown field `extra`",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
        }
    }

    #[test]
    fn gateway_frames() {
        assert_eq!(
            command_frame("cmd_1", "call_1", &Command::SendDtmf { digits: "5".into() }),
            Bytes::from(
                r#"{"type":"command","command_id":"cmd_1","call_id":"call_1","command":"send_dtmf","digits":"5"}"#
            )
        );
        assert_eq!(
            error_frame(Some("r"), "invalid_event", "x"),
            Bytes::from(r#"{"type":"error","ref":"r","error_code":"invalid_event","message":"x"}"#)
        );
    }
}
