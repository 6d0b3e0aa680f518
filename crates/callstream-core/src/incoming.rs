//! Events as a call runtime sends them (`{"event_type", "payload", "timestamp"?}`, one object
//! or an array), decoded in one pass: each payload straight into its type.
//!
//! This is ingest's fast path. It names no field when it refuses: every refusal is decoded
//! again on the careful path (the event as text, then its payload with [`crate::json`]), whose
//! errors name the field. Whatever this pass accepts, the careful path accepts the same, with
//! the same result: both decode each payload with the same types and the same checks.
//!
//! The careful path alone read each event's text three times (the message, the event, the
//! payload): 10,793 instructions for a runtime message with one partial transcript, against
//! 7,419 in one pass, and 170,914 against 86,463 for ten final transcripts
//! (`bench/callgrind-bench.sh`, docs/benchmarks.md).

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::event::{EventType, Payload, RawPayload};

/// One event, its payload decoded and checked and also kept as it arrived (to be carried
/// verbatim); the timestamp is still text, for ingest to parse (and refuse by name).
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub payload: Payload,
    pub payload_json: RawPayload,
    pub timestamp: Option<String>,
}

/// One event object or an array of them, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IncomingBatch {
    pub events: Vec<IncomingEvent>,
    /// Whether they came as an array (a refusal then names `events[i].`), even of one.
    pub array: bool,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    EventType,
    Payload,
    Timestamp,
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = IncomingEvent;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IncomingEvent, A::Error> {
        let mut ty: Option<EventType> = None;
        let mut type_name: Option<String> = None;
        // The payload is taken as text (kept verbatim) and decoded once its type is known.
        let mut payload: Option<Box<RawValue>> = None;
        let mut timestamp: Option<Option<String>> = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::EventType => {
                    if ty.is_some() {
                        return Err(de::Error::duplicate_field("event_type"));
                    }
                    // Borrowed: a type name with escapes in it is refused here and named by
                    // the careful path.
                    let name: &str = map.next_value()?;
                    let parsed = EventType::parse(name)
                        .ok_or_else(|| de::Error::unknown_variant(name, &["a known event type"]))?;
                    if parsed == EventType::Custom {
                        type_name = Some(name.to_owned());
                    }
                    ty = Some(parsed);
                }
                Field::Payload => {
                    if payload.is_some() {
                        return Err(de::Error::duplicate_field("payload"));
                    }
                    payload = Some(map.next_value()?);
                }
                Field::Timestamp => {
                    if timestamp.is_some() {
                        return Err(de::Error::duplicate_field("timestamp"));
                    }
                    timestamp = Some(map.next_value()?);
                }
            }
        }
        let ty = ty.ok_or_else(|| de::Error::missing_field("event_type"))?;
        let text = payload.ok_or_else(|| de::Error::missing_field("payload"))?;
        let mut d = serde_json::Deserializer::from_str(text.get());
        let payload = Payload::deserialize_as(type_name.as_deref().unwrap_or_default(), ty, &mut d)
            .map_err(de::Error::custom)?;
        Ok(IncomingEvent {
            payload,
            payload_json: RawPayload::new(text),
            timestamp: timestamp.flatten(),
        })
    }
}

impl<'de> Deserialize<'de> for IncomingEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EventVisitor)
    }
}

impl<'de> Deserialize<'de> for IncomingBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BatchVisitor;

        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = IncomingBatch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object or an array of events")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IncomingBatch, A::Error> {
                Ok(IncomingBatch {
                    events: vec![EventVisitor.visit_map(map)?],
                    array: false,
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IncomingBatch, A::Error> {
                let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(64));
                while let Some(event) = seq.next_element()? {
                    events.push(event);
                }
                Ok(IncomingBatch {
                    events,
                    array: true,
                })
            }
        }

        d.deserialize_any(BatchVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Role;

    fn decode(text: &str) -> Result<IncomingBatch, serde_json::Error> {
        serde_json::from_str(text)
    }

    #[test]
    fn one_pass_decodes_what_the_careful_path_decodes() {
        let payload = r#"{"role":"user","text":"hi \"there\"\n","is_final":true,"turn_id":"trn_1","confidence":0.5}"#;
        let careful = Payload::parse_json("call.transcription", payload).unwrap();
        for text in [
            format!(r#"{{"event_type":"call.transcription","payload":{payload}}}"#),
            // The payload before its type, and the timestamp anywhere.
            format!(
                r#"[{{"payload":{payload},"timestamp":"2026-05-15T14:32:01Z","event_type":"call.transcription"}}]"#
            ),
        ] {
            let batch = decode(&text).unwrap();
            assert_eq!(batch.events.len(), 1, "{text}");
            assert_eq!(batch.events[0].payload, careful, "{text}");
            assert_eq!(batch.array, text.starts_with('['), "{text}");
        }
        let Payload::Transcription(t) = careful else {
            panic!("not a transcription");
        };
        assert_eq!((t.role, t.text.as_str()), (Role::User, "hi \"there\"\n"));

        let two = decode(
            r#"[{"event_type":"call.dtmf","payload":{"digits":"5"}},{"event_type":"message.received","payload":{"message_id":"m1","direction":"inbound","status":"received","text":"yo"},"timestamp":null}]"#,
        )
        .unwrap();
        assert_eq!(
            two.events
                .iter()
                .map(|e| e.payload.event_type())
                .collect::<Vec<_>>(),
            [EventType::Dtmf, EventType::MessageReceived]
        );
        let none = decode("[]").unwrap();
        assert!(none.array && none.events.is_empty());
    }

    #[test]
    fn one_pass_refuses_what_the_careful_path_refuses() {
        for text in [
            r#"{"event_type":"call.nope","payload":{}}"#,
            r#"{"event_type":"call.transcription"}"#,
            r#"{"payload":{"digits":"5"}}"#,
            r#"{"event_type":"call.dtmf","payload":{"digits":"5"},"extra":1}"#,
            r#"{"event_type":"call.dtmf","event_type":"call.dtmf","payload":{"digits":"5"}}"#,
            r#"{"event_type":"call.dtmf","payload":{"digits":"5"},"payload":{"digits":"5"}}"#,
            r#"{"payload":{"digits":"5"},"payload":{"digits":"5"},"event_type":"call.dtmf"}"#,
            // A check serde's types cannot express (confidence within 0..=1).
            r#"{"event_type":"call.transcription","payload":{"role":"user","text":"a","is_final":true,"turn_id":"trn_1","confidence":2}}"#,
            r#"{"payload":{"role":"user","text":"a","is_final":true,"turn_id":"trn_1","confidence":2},"event_type":"call.transcription"}"#,
            r#"{"event_type":"call.dtmf","payload":{"digits":"5"},"timestamp":5}"#,
            r#"[{"event_type":"call.dtmf","payload":{"digits":"5"}},7]"#,
            // A message without its required fields (checked by `Message`, not serde).
            r#"{"event_type":"message.received","payload":{"text":"yo"}}"#,
            r#""events""#,
            r#"{"event_type":"call.dtmf","payload":{"digits":"5"}} x"#,
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
    }
}
