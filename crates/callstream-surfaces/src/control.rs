//! Client messages of the native call event WebSocket (`/v1/calls/{id}/stream`) and the
//! gateway's answers. Seed 000 says the socket is bidirectional (e.g. "injecting DTMF
//! mid-call") but names no messages; these are callstream's, documented in
//! `docs/native-api.md`:
//!
//! ```json
//! {"type": "send_dtmf", "id": "c1", "digits": "12#"}
//! {"type": "end_call",  "id": "c2"}
//! {"type": "join_call", "id": "c3", "user_id": "usr_42"}
//! ```
//!
//! Every message is answered by `{"type": "ack", "id": …}` or
//! `{"type": "error", "id": …, "error_code": …, "message": …}`. Server frames that are not
//! answers are canonical envelopes (they have `event_type`, never `type`).

use bytes::Bytes;
use callstream_core::Command;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest client message id accepted.
pub const MAX_ID_LEN: usize = 128;

/// A refused client message: the error frame to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub id: Option<String>,
    pub error_code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(id: Option<String>, error_code: &'static str, message: impl Into<String>) -> Self {
        Self {
            id,
            error_code,
            message: message.into(),
        }
    }

    pub fn to_frame(&self) -> Bytes {
        error_frame(self.id.as_deref(), self.error_code, &self.message)
    }
}

// One struct per message type, decoded after `type` is read, so that errors name the field
// (serde loses field paths inside internally tagged enums).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendDtmf {
    #[serde(rename = "type")]
    _type: String,
    id: String,
    digits: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndCall {
    #[serde(rename = "type")]
    _type: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinCall {
    #[serde(rename = "type")]
    _type: String,
    id: String,
    user_id: String,
}

fn decode<T: serde::de::DeserializeOwned>(value: Value, id: &Option<String>) -> Result<T, Refusal> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        Refusal::new(id.clone(), "invalid_message", message)
    })
}

/// One parsed client message: a command with the client's id for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCommand {
    pub id: String,
    pub command: Command,
}

/// Parses one text frame from a client.
///
/// # Errors
/// A [`Refusal`] (`invalid_message` or `invalid_command`) naming what is wrong, with the
/// message's `id` whenever one could be read.
pub fn parse(text: &str) -> Result<ClientCommand, Refusal> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new(None, "invalid_message", format!("not valid JSON: {e}")))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    match &id {
        None if value.get("id").is_some() => {
            return Err(Refusal::new(
                None,
                "invalid_message",
                "id: expected a string",
            ));
        }
        None => return Err(Refusal::new(None, "invalid_message", "id: missing field")),
        Some(i) if i.is_empty() || i.len() > MAX_ID_LEN => {
            return Err(Refusal::new(
                None,
                "invalid_message",
                format!("id: must be 1 to {MAX_ID_LEN} characters"),
            ));
        }
        Some(_) => {}
    }
    let (id, command) = match value.get("type").and_then(Value::as_str) {
        Some("send_dtmf") => decode::<SendDtmf>(value, &id)
            .map(|m| (m.id, Command::SendDtmf { digits: m.digits }))?,
        Some("end_call") => decode::<EndCall>(value, &id).map(|m| (m.id, Command::EndCall))?,
        Some("join_call") => decode::<JoinCall>(value, &id)
            .map(|m| (m.id, Command::JoinCall { user_id: m.user_id }))?,
        Some(other) => {
            return Err(Refusal::new(
                id,
                "invalid_message",
                format!(
                    "type: unknown message type {other:?}; expected send_dtmf, end_call or join_call"
                ),
            ));
        }
        None => return Err(Refusal::new(id, "invalid_message", "type: missing field")),
    };
    command
        .validate()
        .map_err(|e| Refusal::new(Some(id.clone()), "invalid_command", e.to_string()))?;
    Ok(ClientCommand { id, command })
}

#[derive(Serialize)]
struct Ack<'a> {
    r#type: &'static str,
    id: &'a str,
}

#[derive(Serialize)]
struct Error<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    error_code: &'a str,
    message: &'a str,
}

/// The `id` of a client message, read without checking the rest: for answering a message that
/// is refused before it is parsed (rate limited).
pub fn peek_id(text: &str) -> Option<String> {
    // Read as `parse` reads it (a `Value`, where a repeated key's last value wins), so that a
    // message gets the same id back whichever way it is refused. Found by the fuzz target
    // `client_message`: a struct refuses a repeated `id` outright.
    let value = serde_json::from_str::<Value>(text).ok()?;
    value
        .get("id")?
        .as_str()
        .filter(|i| !i.is_empty() && i.len() <= MAX_ID_LEN)
        .map(str::to_owned)
}

/// `{"type":"ack","id":…}`
pub fn ack_frame(id: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&Ack { r#type: "ack", id }).unwrap_or_default())
}

/// `{"type":"error","id":…,"error_code":…,"message":…}` (`id` left out when unknown).
pub fn error_frame(id: Option<&str>, error_code: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&Error {
            r#type: "error",
            id,
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
    fn parses_each_command() {
        let cases = [
            (
                r#"{"type":"send_dtmf","id":"c1","digits":"12#"}"#,
                Command::SendDtmf {
                    digits: "12#".into(),
                },
            ),
            (r#"{"type":"end_call","id":"c1"}"#, Command::EndCall),
            (
                r#"{"id":"c1","type":"join_call","user_id":"usr_1"}"#,
                Command::JoinCall {
                    user_id: "usr_1".into(),
                },
            ),
        ];
        for (text, command) in cases {
            assert_eq!(
                parse(text),
                Ok(ClientCommand {
                    id: "c1".into(),
                    command
                }),
                "{text}"
            );
        }
    }

    #[test]
    fn refusals_say_what_is_wrong_and_keep_the_id() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            ("{not json", None, "invalid_message", "not valid JSON"),
            ("[1,2]", None, "invalid_message", "id: missing field"),
            (
                r#"{"type":"end_call"}"#,
                None,
                "invalid_message",
                "id: missing field",
            ),
            (
                r#"{"type":"end_call","id":7}"#,
                None,
                "invalid_message",
                "id: expected a string",
            ),
            (
                r#"{"type":"end_call","id":""}"#,
                None,
                "invalid_message",
                "id: must be 1 to",
            ),
            (
                r#"{"type":"explode","id":"c9"}"#,
                Some("c9"),
                "invalid_message",
                "type: unknown message type \"explode\"",
            ),
            (
                r#"{"id":"c9"}"#,
                Some("c9"),
                "invalid_message",
                "type: missing field",
            ),
            (
                r#"{"type":"send_dtmf","id":"c9"}"#,
                Some("c9"),
                "invalid_message",
                "missing field `digits`",
            ),
            (
                r#"{"type":"send_dtmf","id":"c9","digits":5}"#,
                Some("c9"),
                "invalid_message",
                "digits: invalid type",
            ),
            (
                r#"{"type":"send_dtmf","id":"c9","digits":"1x"}"#,
                Some("c9"),
                "invalid_command",
                "digits must be",
            ),
            (
                r#"{"type":"end_call","id":"c9","now":true}"#,
                Some("c9"),
                "invalid_message",
                "unknown field `now`",
            ),
        ];
        for (text, id, code, message) in cases {
            let r = parse(text).unwrap_err();
            assert_eq!((r.id.as_deref(), r.error_code), (*id, *code), "{text}");
            assert!(r.message.contains(message), "{text}: {:?}", r.message);
        }
    }

    #[test]
    fn peeks_ids() {
        assert_eq!(
            peek_id(r#"{"type":"x","id":"m1","junk":[1]}"#),
            Some("m1".into())
        );
        assert_eq!(peek_id(r#"{"id":5}"#), None);
        assert_eq!(peek_id("nope"), None);
        assert_eq!(peek_id(&format!(r#"{{"id":"{}"}}"#, "x".repeat(200))), None);
    }

    #[test]
    fn frames() {
        assert_eq!(ack_frame("c1"), Bytes::from(r#"{"type":"ack","id":"c1"}"#));
        assert_eq!(
            error_frame(None, "invalid_message", "bad"),
            Bytes::from(r#"{"type":"error","error_code":"invalid_message","message":"bad"}"#)
        );
    }
}
