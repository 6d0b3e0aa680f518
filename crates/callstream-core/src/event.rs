//! The canonical event envelope and its typed payloads.
//!
//! Everything on the bus, on the native WebSocket and in webhooks is this envelope, serialised
//! as JSON with its fields in a fixed order:
//!
//! ```json
//! { "event_id": "evt_…", "event_type": "call.transcription", "workspace_id": "ws_…",
//!   "call_id": "call_…", "seq": 17, "timestamp": "2026-05-15T14:32:01.123Z", "payload": {…} }
//! ```
//!
//! Conversation events carry `conversation_id` instead of `call_id`. `seq` increases by one per
//! call or conversation; it is assigned by a single authority (the store), never here.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::id::{CallId, ConversationId, EventId, TurnId, WorkspaceId};
use crate::json::StrictValue;
use crate::model::{ConversationMode, Direction, Phone, Transport};
use crate::time;

/// Why an event from outside was refused. The message names the offending field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("event_type: unknown event type {0:?}")]
    UnknownType(String),
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    #[error("event_type: {event_type} belongs to a {expected}, not to this {actual}")]
    WrongSubject {
        event_type: &'static str,
        expected: &'static str,
        actual: &'static str,
    },
}

impl EventError {
    fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// What an event is about: one call or one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Call(CallId),
    Conversation(ConversationId),
}

impl Subject {
    pub const fn kind(&self) -> SubjectKind {
        match self {
            Self::Call(_) => SubjectKind::Call,
            Self::Conversation(_) => SubjectKind::Conversation,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Call(id) => id.as_str(),
            Self::Conversation(id) => id.as_str(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    Call,
    Conversation,
}

impl SubjectKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Conversation => "conversation",
        }
    }
}

// === payloads ===

/// Who spoke a transcript turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Agent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallStarted {
    pub phone: Phone,
    pub direction: Direction,
    pub transport: Transport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreeningEnded {
    /// Human-readable description of how screening ended.
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    pub role: Role,
    pub text: String,
    pub is_final: bool,
    pub turn_id: TurnId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    /// Seconds from the call's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_start: Option<f64>,
    /// Seconds from the call's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_end: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtsCompleted {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    /// Time from the TTS request to its first audio, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnLatency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stt_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tts_ms: Option<u64>,
    /// End of the user's speech to the first agent audio.
    pub total_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mos: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BargeIn {
    /// The agent turn the caller talked over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_turn_id: Option<TurnId>,
    /// Seconds from the call's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleSilence {
    pub duration_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityDegraded {
    /// Which measure crossed its threshold: `mos`, `jitter_ms`, `packet_loss_pct`, `rtt_ms`.
    pub metric: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dtmf {
    pub digits: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transferred {
    /// Where the call went: a user id, a phone number or a SIP URI.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub reason: String,
}

/// What every event type of a runtime's own starts with: `custom.` then 1 to 64 characters of
/// dot-separated words, each starting with a-z or 0-9 and going on with a-z, 0-9, `_` and `-`
/// (`custom.sentiment_scored`, `custom.crm.lead-updated`).
pub const CUSTOM_PREFIX: &str = "custom.";

/// Whether `name` is a well-formed custom event type.
pub fn is_custom_name(name: &str) -> bool {
    name.strip_prefix(CUSTOM_PREFIX).is_some_and(|rest| {
        (1..=64).contains(&rest.len())
            && rest.split('.').all(|word| {
                word.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && word.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')
                    })
            })
    })
}

/// The payload of an event type of the runtime's own (`custom.…`): any JSON object, carried as
/// it arrived and never looked into. Such events belong to calls and conversations alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Custom {
    name: String,
    fields: Map<String, Value>,
}

impl Custom {
    /// Its event type, `custom.…`.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn new(name: &str, value: Value) -> Result<Self, EventError> {
        match value {
            Value::Object(fields) => Ok(Self {
                name: name.to_owned(),
                fields,
            }),
            _ => Err(EventError::field("payload", "expected an object")),
        }
    }
}

impl Serialize for Custom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fields.serialize(s)
    }
}

/// A `message.*` payload: `{message_id, direction, text, status, …}`. The required fields are
/// checked; the object itself is kept exactly as ingested (field order included), because the
/// conversation stream nests it verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    raw: Map<String, Value>,
}

impl Message {
    pub fn message_id(&self) -> &str {
        self.raw
            .get("message_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.raw
    }

    fn from_value(value: Value) -> Result<Self, EventError> {
        let Value::Object(raw) = value else {
            return Err(EventError::field("payload", "expected an object"));
        };
        for field in ["message_id", "direction", "status"] {
            match raw.get(field) {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(_) => {
                    return Err(EventError::field(
                        format!("payload.{field}"),
                        "expected a non-empty string",
                    ));
                }
                None => {
                    return Err(EventError::field(
                        format!("payload.{field}"),
                        "missing field",
                    ));
                }
            }
        }
        if let Some(d) = raw.get("direction").and_then(Value::as_str)
            && Direction::parse(d).is_none()
        {
            return Err(EventError::field(
                "payload.direction",
                "expected `inbound` or `outbound`",
            ));
        }
        match raw.get("text") {
            None | Some(Value::String(_) | Value::Null) => {}
            Some(_) => return Err(EventError::field("payload.text", "expected a string")),
        }
        Ok(Self { raw })
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeChanged {
    pub from_mode: ConversationMode,
    pub to_mode: ConversationMode,
    pub actor_user_id: String,
}

// === the event table ===

macro_rules! events {
    ($($variant:ident($ty:ty) = $name:literal, $kind:ident;)*) => {
        /// Every event type callstream knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType {
            $($variant,)*
            /// An event type of the runtime's own (`custom.…`, [`CUSTOM_PREFIX`]).
            Custom,
        }

        impl EventType {
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The type's name; `custom` for every custom type (whose full name is its
            /// payload's, [`Payload::type_name`]).
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name,)* Self::Custom => "custom" }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($name => Some(Self::$variant),)*
                    _ if is_custom_name(text) => Some(Self::Custom),
                    _ => None,
                }
            }

            /// Whether this type belongs to a call or to a conversation (a custom type: to a
            /// call here, but it fits both, [`EventType::fits`]).
            pub const fn subject_kind(self) -> SubjectKind {
                match self { $(Self::$variant => SubjectKind::$kind,)* Self::Custom => SubjectKind::Call }
            }

            /// Whether events of this type may belong to a subject of `kind`.
            pub fn fits(self, kind: SubjectKind) -> bool {
                self == Self::Custom || self.subject_kind() == kind
            }
        }

        /// A typed event payload; its variant is its event type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload { $($variant($ty),)* Custom(Custom) }

        impl Payload {
            pub const fn event_type(&self) -> EventType {
                match self { $(Self::$variant(_) => EventType::$variant,)* Self::Custom(_) => EventType::Custom }
            }

            /// The event type's full name, as the wire carries it (`custom.…` for a custom one).
            pub fn type_name(&self) -> &str {
                match self {
                    Self::Custom(c) => c.name(),
                    other => other.event_type().as_str(),
                }
            }

            /// Parses and checks a payload from outside for the named event type.
            ///
            /// # Errors
            /// [`EventError`] naming the unknown type or the first wrong field (`payload.text`).
            pub fn parse(event_type: &str, payload: Value) -> Result<Self, EventError> {
                Self::parse_from(event_type, Source::Value(payload))
            }

            /// [`Payload::parse`] straight from the payload's JSON text, as ingest receives
            /// it: no `serde_json::Value` is built on the way.
            ///
            /// # Errors
            /// As [`Payload::parse`]; also for text that is not one JSON value.
            pub fn parse_json(event_type: &str, json: &str) -> Result<Self, EventError> {
                Self::parse_from(event_type, Source::Json(json))
            }

            /// Decodes the payload of a known event type straight from `d` and checks it as
            /// [`Payload::parse`] does. A refusal is `d`'s own error, without the field's path:
            /// for one-pass decoders whose refusals are decoded again, the careful way, to name
            /// the field ([`crate::incoming`]).
            ///
            /// # Errors
            /// `d`'s error for a payload of the wrong shape or one that fails its checks.
            pub fn deserialize_as<'de, D: serde::Deserializer<'de>>(
                name: &str,
                ty: EventType,
                d: D,
            ) -> Result<Self, D::Error> {
                let parsed = match ty {
                    $(EventType::$variant => Self::$variant(<$ty as Decode>::decode_from(d)?),)*
                    EventType::Custom => Self::Custom(
                        Custom::new(name, StrictValue::deserialize(d)?.0).map_err(serde::de::Error::custom)?,
                    ),
                };
                parsed.validate().map_err(serde::de::Error::custom)?;
                Ok(parsed)
            }

            fn parse_from(event_type: &str, payload: Source<'_>) -> Result<Self, EventError> {
                let ty = EventType::parse(event_type)
                    .ok_or_else(|| EventError::UnknownType(event_type.to_owned()))?;
                let parsed = match ty {
                    $(EventType::$variant => Self::$variant(payload.decode()?),)*
                    EventType::Custom => Self::Custom(Custom::new(event_type, payload.value()?)?),
                };
                parsed.validate()?;
                Ok(parsed)
            }
        }

        impl Serialize for Payload {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $(Self::$variant(p) => p.serialize(s),)* Self::Custom(c) => c.serialize(s) }
            }
        }
    };
}

events! {
    CallStarted(CallStarted) = "call.started", Call;
    ScreeningEnded(ScreeningEnded) = "call.screening_ended", Call;
    Transcription(Transcription) = "call.transcription", Call;
    TtsCompleted(TtsCompleted) = "call.tts_completed", Call;
    TurnLatency(TurnLatency) = "call.turn_latency", Call;
    Metrics(CallMetrics) = "call.metrics", Call;
    BargeIn(BargeIn) = "call.barge_in", Call;
    IdleSilence(IdleSilence) = "call.idle_silence", Call;
    QualityDegraded(QualityDegraded) = "call.quality_degraded", Call;
    Dtmf(Dtmf) = "call.dtmf", Call;
    Transferred(Transferred) = "call.transferred", Call;
    Completed(Completed) = "call.completed", Call;
    Failed(Failed) = "call.failed", Call;
    MessageReceived(Message) = "message.received", Conversation;
    MessageDelivered(Message) = "message.delivered", Conversation;
    MessageRead(Message) = "message.read", Conversation;
    ModeChanged(ModeChanged) = "conversation.mode_changed", Conversation;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payload from outside: already a `Value`, or still JSON text.
enum Source<'a> {
    Value(Value),
    Json(&'a str),
}

impl Source<'_> {
    fn value(self) -> Result<Value, EventError> {
        match self {
            Self::Value(value) => Ok(value),
            Self::Json(json) => serde_json::from_str::<StrictValue>(json)
                .map(|v| v.0)
                .map_err(|e| EventError::field("payload", crate::json::message(&e, "payload"))),
        }
    }

    fn decode<T: Decode>(self) -> Result<T, EventError> {
        match self {
            Self::Value(value) => T::from_value(value),
            Self::Json(json) => T::from_json(json),
        }
    }
}

/// Payload types decode through serde (naming the failing field), except `Message`, which
/// keeps its raw object.
trait Decode: Sized {
    fn from_value(value: Value) -> Result<Self, EventError>;
    fn from_json(json: &str) -> Result<Self, EventError>;
    fn decode_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

fn refused(path: String, error: &serde_json::Error) -> EventError {
    let message = crate::json::message(error, &path);
    let path = if path == "." {
        "payload".to_owned()
    } else {
        format!("payload.{path}")
    };
    EventError::field(path, message)
}

impl<T: DeserializeOwned> Decode for T {
    fn from_value(value: Value) -> Result<Self, EventError> {
        serde_path_to_error::deserialize(value)
            .map_err(|e| refused(e.path().to_string(), e.inner()))
    }

    fn from_json(json: &str) -> Result<Self, EventError> {
        crate::json::from_str(json).map_err(|e| refused(e.path, &e.error))
    }

    fn decode_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <T as Deserialize>::deserialize(d)
    }
}

// `Message` does not implement `Deserialize`, so the blanket impl above never covers it and
// this one keeps its raw object instead.
impl Decode for Message {
    fn from_value(value: Value) -> Result<Self, EventError> {
        Message::from_value(value)
    }

    fn from_json(json: &str) -> Result<Self, EventError> {
        let StrictValue(value) = serde_json::from_str(json)
            .map_err(|e| EventError::field("payload", crate::json::message(&e, "payload")))?;
        Message::from_value(value)
    }

    fn decode_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Message::from_value(StrictValue::deserialize(d)?.0).map_err(serde::de::Error::custom)
    }
}

fn in_range(path: &str, value: Option<f64>, lo: f64, hi: f64) -> Result<(), EventError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(EventError::field(
            path,
            format!("must be between {lo} and {hi}, got {v}"),
        )),
        _ => Ok(()),
    }
}

impl Payload {
    /// Checks that serde's types cannot express.
    fn validate(&self) -> Result<(), EventError> {
        match self {
            Self::Transcription(t) => {
                in_range("payload.confidence", t.confidence, 0.0, 1.0)?;
                in_range("payload.segment_start", t.segment_start, 0.0, f64::MAX)?;
                in_range(
                    "payload.segment_end",
                    t.segment_end,
                    t.segment_start.unwrap_or(0.0),
                    f64::MAX,
                )?;
                Ok(())
            }
            Self::Dtmf(d) => crate::command::check_dtmf(&d.digits)
                .map_err(|e| EventError::field("payload.digits", e.to_string())),
            Self::Metrics(m) => {
                in_range("payload.mos", m.mos, 1.0, 5.0)?;
                in_range("payload.jitter_ms", m.jitter_ms, 0.0, f64::MAX)?;
                in_range("payload.packet_loss_pct", m.packet_loss_pct, 0.0, 100.0)?;
                in_range("payload.rtt_ms", m.rtt_ms, 0.0, f64::MAX)
            }
            Self::Completed(c) => in_range("payload.duration_s", c.duration_s, 0.0, f64::MAX),
            Self::BargeIn(b) => in_range("payload.offset", b.offset, 0.0, f64::MAX),
            Self::QualityDegraded(q) => match q.metric.as_str() {
                "mos" => in_range("payload.value", Some(q.value), 1.0, 5.0),
                "packet_loss_pct" => in_range("payload.value", Some(q.value), 0.0, 100.0),
                "jitter_ms" | "rtt_ms" => in_range("payload.value", Some(q.value), 0.0, f64::MAX),
                // A measure of the runtime's own: any value.
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// `call.completed` and `call.failed` end a call: nothing may follow them.
    pub const fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed(_) | Self::Failed(_))
    }

    /// Why a terminal event ended its call: `call.failed`'s reason, `call.completed`'s when it
    /// gave one; `None` for any other event.
    pub fn end_reason(&self) -> Option<&str> {
        match self {
            Self::Completed(c) => c.reason.as_deref(),
            Self::Failed(f) => Some(&f.reason),
            _ => None,
        }
    }
}

// === envelope ===

/// A payload's JSON exactly as it arrived: fields callstream does not know, how each number was
/// written (a 30-digit integer stays one) and the order of the fields. Kept beside the decoded
/// payload, so that every surface that carries the payload as it is (the envelope, webhooks,
/// the conversation stream, the message history) carries it verbatim; the decoded form serves
/// everything else. Shared, not copied, by the envelope's clones.
#[derive(Debug, Clone)]
pub struct RawPayload(std::sync::Arc<Box<RawValue>>);

impl RawPayload {
    pub fn new(raw: Box<RawValue>) -> Self {
        Self(std::sync::Arc::new(raw))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawPayload {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RawPayload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// One event, as it travels everywhere.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub event_id: EventId,
    pub workspace_id: WorkspaceId,
    pub subject: Subject,
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    pub payload: Payload,
    /// The payload as it arrived, when it came from outside (ingest, or another node); `None`
    /// for events the gateway makes itself, whose JSON is their decoded form's.
    pub payload_json: Option<RawPayload>,
}

/// An envelope's payload as the wire carries it ([`Envelope::wire_payload`]).
pub struct WirePayload<'a>(&'a Envelope);

impl Serialize for WirePayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.payload_json {
            Some(raw) => raw.serialize(s),
            None => self.0.payload.serialize(s),
        }
    }
}

/// Envelopes are equal when their decoded contents are: the same event whether its payload was
/// kept as it arrived or not.
impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.workspace_id == other.workspace_id
            && self.subject == other.subject
            && self.seq == other.seq
            && self.timestamp == other.timestamp
            && self.payload == other.payload
    }
}

impl Envelope {
    /// Builds an envelope, checking that the payload's type belongs to the subject's kind.
    ///
    /// # Errors
    /// [`EventError::WrongSubject`] for, say, a `message.read` sent to a call.
    pub fn new(
        workspace_id: WorkspaceId,
        subject: Subject,
        seq: u64,
        timestamp: DateTime<Utc>,
        payload: Payload,
    ) -> Result<Self, EventError> {
        Self::with_id(
            EventId::new(),
            workspace_id,
            subject,
            seq,
            timestamp,
            payload,
        )
    }

    /// [`Envelope::new`] for an event whose id was minted before it was numbered (ingest mints
    /// it on arrival).
    ///
    /// # Errors
    /// As [`Envelope::new`].
    pub fn with_id(
        event_id: EventId,
        workspace_id: WorkspaceId,
        subject: Subject,
        seq: u64,
        timestamp: DateTime<Utc>,
        payload: Payload,
    ) -> Result<Self, EventError> {
        let ty = payload.event_type();
        if !ty.fits(subject.kind()) {
            return Err(EventError::WrongSubject {
                event_type: ty.as_str(),
                expected: ty.subject_kind().as_str(),
                actual: subject.kind().as_str(),
            });
        }
        Ok(Self {
            event_id,
            workspace_id,
            subject,
            seq,
            timestamp,
            payload,
            payload_json: None,
        })
    }

    /// The payload's JSON as it arrived, carried instead of its decoded form's (see
    /// [`RawPayload`]).
    #[must_use]
    pub fn with_payload_json(mut self, raw: Option<RawPayload>) -> Self {
        self.payload_json = raw;
        self
    }

    pub const fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// The payload as every surface that carries it whole writes it: as it arrived when it
    /// came from outside, else its decoded form.
    pub fn wire_payload(&self) -> WirePayload<'_> {
        WirePayload(self)
    }

    /// The canonical JSON, as the native WebSocket and webhooks carry it.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("event_id", &self.event_id)?;
        map.serialize_entry("event_type", self.payload.type_name())?;
        map.serialize_entry("workspace_id", &self.workspace_id)?;
        match &self.subject {
            Subject::Call(id) => map.serialize_entry("call_id", id)?,
            Subject::Conversation(id) => map.serialize_entry("conversation_id", id)?,
        }
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("timestamp", &time::format(&self.timestamp))?;
        map.serialize_entry("payload", &self.wire_payload())?;
        map.end()
    }
}

/// The envelope's wire shape, for reading envelopes back (from NATS, or in tests).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    event_id: EventId,
    event_type: String,
    workspace_id: WorkspaceId,
    call_id: Option<CallId>,
    conversation_id: Option<ConversationId>,
    seq: u64,
    #[serde(with = "time::millis")]
    timestamp: DateTime<Utc>,
    payload: Box<RawValue>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = WireEnvelope::deserialize(d)?;
        let subject = match (w.call_id, w.conversation_id) {
            (Some(c), None) => Subject::Call(c),
            (None, Some(c)) => Subject::Conversation(c),
            _ => {
                return Err(D::Error::custom(
                    "exactly one of call_id and conversation_id",
                ));
            }
        };
        let payload =
            Payload::parse_json(&w.event_type, w.payload.get()).map_err(D::Error::custom)?;
        let env = Envelope::with_id(
            w.event_id,
            w.workspace_id,
            subject,
            w.seq,
            w.timestamp,
            payload,
        )
        .map_err(D::Error::custom)?;
        Ok(env.with_payload_json(Some(RawPayload::new(w.payload))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(event_type: &str, payload: Value) -> String {
        Payload::parse(event_type, payload).unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "call.nope",
                json!({}),
                "event_type: unknown event type \"call.nope\"",
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": "hi", "is_final": true}),
                "payload: missing field `turn_id`",
            ),
            (
                "call.transcription",
                json!({"role": "bot", "text": "hi", "is_final": true, "turn_id": "trn_1"}),
                "payload.role: unknown variant `bot`",
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": 3, "is_final": true, "turn_id": "trn_1"}),
                "payload.text: invalid type: integer `3`, expected a string",
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": "hi", "is_final": true, "turn_id": "call_1"}),
                "payload.turn_id: expected an id starting with `trn_`",
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": "hi", "is_final": true, "turn_id": "trn_1", "confidence": 1.5}),
                "payload.confidence: must be between 0 and 1, got 1.5",
            ),
            (
                "call.transcription",
                json!({"role": "user", "text": "hi", "is_final": true, "turn_id": "trn_1", "segment_start": 2.0, "segment_end": 1.0}),
                "payload.segment_end: must be between 2 and",
            ),
            (
                "call.metrics",
                json!({"mos": 7.5, "provider": "x"}),
                "payload.mos: must be between 1 and 5, got 7.5",
            ),
            (
                "call.quality_degraded",
                json!({"metric": "packet_loss_pct", "value": 140.0}),
                "payload.value: must be between 0 and 100, got 140",
            ),
            ("call.dtmf", json!({"digits": "12x"}), "payload.digits: "),
            (
                "call.idle_silence",
                json!({"duration_ms": -4}),
                "payload.duration_ms: invalid value: integer `-4`",
            ),
            (
                "call.started",
                json!({"phone": "555", "direction": "inbound", "transport": "sip"}),
                "payload.phone: expected E.164",
            ),
            (
                "message.received",
                json!({"direction": "inbound", "status": "received"}),
                "payload.message_id: missing field",
            ),
            (
                "message.received",
                json!({"message_id": "m1", "direction": "sideways", "status": "x"}),
                "payload.direction: expected `inbound` or `outbound`",
            ),
            ("message.read", json!([1]), "payload: expected an object"),
            (
                "conversation.mode_changed",
                json!({"from_mode": "ai", "to_mode": "robot", "actor_user_id": "u"}),
                "payload.to_mode: unknown variant `robot`",
            ),
        ];
        for (ty, payload, expect) in cases {
            let got = err(ty, payload);
            assert!(
                got.starts_with(expect),
                "{ty}: got {got:?}, expected prefix {expect:?}"
            );
        }
    }

    #[test]
    fn custom_types_carry_their_own_name_and_fit_calls_and_conversations() {
        for good in ["custom.sentiment", "custom.acme.score_v2", "custom.a-b"] {
            assert_eq!(EventType::parse(good), Some(EventType::Custom), "{good}");
            let p = Payload::parse(good, json!({"score": 0.8, "nested": {"x": [1]}})).unwrap();
            assert_eq!(p.type_name(), good);
            assert!(!p.is_terminal());
        }
        for bad in [
            "custom.",
            "custom",
            "custom.UPPER",
            "custom.with space",
            "x.sentiment",
            "custom..x",
            "custom.-x",
            "custom._x",
            "custom.x.",
            "custom.x..y",
        ] {
            assert_eq!(EventType::parse(bad), None, "{bad}");
        }
        // A repeated key, at any depth, is refused on both decoding paths.
        for text in [r#"{"a": 1, "a": 2}"#, r#"{"n": [{"b": 1, "b": 1}]}"#] {
            let refused = Payload::parse_json("custom.sentiment", text).unwrap_err();
            assert!(refused.to_string().contains("appears twice"), "{refused}");
            let mut d = serde_json::Deserializer::from_str(text);
            assert!(
                Payload::deserialize_as("custom.sentiment", EventType::Custom, &mut d).is_err()
            );
        }
        assert!(Payload::parse_json("custom.sentiment", r#"{"a": {"a": 1}}"#).is_ok());
        let long = format!("custom.{}", "a".repeat(65));
        assert_eq!(EventType::parse(&long), None);
        assert_eq!(
            err("custom.sentiment", json!([1, 2])),
            "payload: expected an object"
        );
        assert!(EventType::Custom.fits(SubjectKind::Call));
        assert!(EventType::Custom.fits(SubjectKind::Conversation));
        assert!(!EventType::Dtmf.fits(SubjectKind::Conversation));
        // On the wire its event_type is its full name, for a call and a conversation alike.
        for subject in [
            Subject::Call(CallId::new()),
            Subject::Conversation(ConversationId::new()),
        ] {
            let env = Envelope::new(
                WorkspaceId::new(),
                subject,
                2,
                time::now(),
                Payload::parse("custom.sentiment", json!({"score": 0.8})).unwrap(),
            )
            .unwrap();
            let wire: Value = serde_json::from_slice(&env.to_json()).unwrap();
            assert_eq!(wire["event_type"], "custom.sentiment");
            assert_eq!(wire["payload"], json!({"score": 0.8}));
            let back: Envelope = serde_json::from_slice(&env.to_json()).unwrap();
            assert_eq!(back.payload.type_name(), "custom.sentiment");
        }
    }

    #[test]
    fn every_type_has_a_subject_kind_and_round_trips_its_name() {
        for ty in EventType::ALL {
            assert_eq!(EventType::parse(ty.as_str()), Some(*ty));
            let prefix = ty.as_str().split('.').next().unwrap_or_default();
            let expect = if prefix == "call" {
                SubjectKind::Call
            } else {
                SubjectKind::Conversation
            };
            assert_eq!(ty.subject_kind(), expect, "{ty}");
        }
    }

    #[test]
    fn envelope_json_has_the_contract_shape_and_reads_back() {
        let payload = Payload::parse(
            "call.transcription",
            json!({"role": "user", "text": "What time do you open?", "is_final": true,
                   "turn_id": "trn_x", "confidence": 0.93, "segment_start": 3.2, "segment_end": 4.9}),
        )
        .unwrap();
        let ts = time::parse("2026-05-15T14:32:01.123Z").unwrap();
        let mut env = Envelope::new(
            WorkspaceId::parse("ws_a").unwrap(),
            Subject::Call(CallId::parse("call_b").unwrap()),
            17,
            ts,
            payload,
        )
        .unwrap();
        env.event_id = EventId::parse("evt_c").unwrap();
        let text = String::from_utf8(env.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"event_id":"evt_c","event_type":"call.transcription","workspace_id":"ws_a","call_id":"call_b","seq":17,"timestamp":"2026-05-15T14:32:01.123Z","payload":{"role":"user","text":"What time do you open?","is_final":true,"turn_id":"trn_x","confidence":0.93,"segment_start":3.2,"segment_end":4.9}}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn message_payload_is_kept_verbatim() {
        let raw = json!({"status": "received", "message_id": "m1", "direction": "inbound", "text": "hi", "media": [1, 2]});
        let p = Payload::parse("message.received", raw.clone()).unwrap();
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            serde_json::to_string(&raw).unwrap()
        );
    }

    #[test]
    fn subject_kind_is_enforced() {
        let p = Payload::parse(
            "message.read",
            json!({"message_id": "m", "direction": "outbound", "status": "read"}),
        )
        .unwrap();
        let e = Envelope::new(
            WorkspaceId::new(),
            Subject::Call(CallId::new()),
            1,
            time::now(),
            p,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "event_type: message.read belongs to a conversation, not to this call"
        );
    }
}
