//! Seed 004: the messages of an audio stream's WebSocket, where the gateway is the client and the
//! customer's service the server (Plivo's Audio Stream protocol, as Vobiz speaks it too).
//!
//! Gateway → service: `start`, `media` (one per 20 ms per track), `dtmf`, `playedStream`,
//! `clearedAudio`. Every message carries `sequenceNumber`, counted per stream from 1.
//!
//! Service → gateway: `playAudio`, `checkpoint`, `clearAudio`, `sendDTMF`. Numbers are taken as
//! numbers or as strings (Plivo's pages show both), `streamId` is optional (but, when given, must
//! be this stream's), and anything else is refused with a message saying why, for the gateway to
//! count and log: a bad message never ends a stream.
//!
//! Payloads are base64 here and bytes everywhere else: this module is the only place that knows
//! the JSON and the base64. Messages are returned as `String`s: they go out as WebSocket text,
//! and a `String` is known to be UTF-8 (a byte buffer would be checked again, 450 bytes per
//! `media` message).

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use callstream_audio::{FormatError, MediaFormat, RateValue};
use callstream_core::audio::Track;
use serde::Deserialize;
use serde_json::Value;

/// Decodes base64 with or without padding: services built on different libraries send both.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// `mediaFormat.encoding` for a format: the media type without its parameters.
pub fn encoding_name(format: MediaFormat) -> &'static str {
    format.encoding().media_type()
}

/// The first message: who is streaming what.
pub struct Start<'a> {
    pub call_id: &'a str,
    pub stream_id: &'a str,
    /// The workspace's `auth_id`.
    pub account_id: &'a str,
    pub tracks: &'a [Track],
    pub format: MediaFormat,
    /// `k1=v1;k2=v2`, as the stream was created with (empty when none).
    pub extra_headers: &'a str,
}

/// `{"event":"start","sequenceNumber":1,"start":{…},"extra_headers":"…"}`.
pub fn start_message(sequence: u64, s: &Start<'_>) -> String {
    let tracks: Vec<&str> = s.tracks.iter().map(|t| t.as_str()).collect();
    let message = serde_json::json!({
        "event": "start",
        "sequenceNumber": sequence,
        "start": {
            "callId": s.call_id,
            "streamId": s.stream_id,
            "accountId": s.account_id,
            "tracks": tracks,
            "mediaFormat": {
                "encoding": encoding_name(s.format),
                "sampleRate": s.format.sample_rate().hz(),
            },
        },
        "extra_headers": s.extra_headers,
    });
    message.to_string()
}

/// What every `media` message of one stream shares, prepared once: the stream id and the
/// `extra_headers` field already in JSON.
pub struct MediaWriter {
    stream_id: String,
    /// `,"extra_headers":"…"` or empty.
    extra_headers: String,
}

impl MediaWriter {
    pub fn new(stream_id: &str, extra_headers: &str) -> Self {
        let extra_headers = if extra_headers.is_empty() {
            String::new()
        } else {
            format!(
                ",\"extra_headers\":{}",
                serde_json::to_string(extra_headers).unwrap_or_else(|_| "\"\"".to_owned())
            )
        };
        Self {
            stream_id: stream_id.to_owned(),
            extra_headers,
        }
    }

    /// `{"event":"media","sequenceNumber":…,"streamId":…,"media":{"track","timestamp","chunk","payload"}}`.
    ///
    /// Written by hand into one buffer sized up front: one of these goes out every 20 ms per
    /// track of every stream, and the only parts that need escaping (the stream id, a UUID, and
    /// the extra headers, escaped once in [`MediaWriter::new`]) never change.
    pub fn media(
        &self,
        sequence: u64,
        track: Track,
        timestamp_ms: u64,
        chunk: u64,
        payload: &[u8],
    ) -> String {
        let encoded_len = base64::encoded_len(payload.len(), true).unwrap_or(0);
        let mut out = String::with_capacity(
            120 + self.stream_id.len() + self.extra_headers.len() + encoded_len,
        );
        let mut numbers = itoa::Buffer::new();
        out.push_str("{\"event\":\"media\",\"sequenceNumber\":");
        out.push_str(numbers.format(sequence));
        out.push_str(",\"streamId\":\"");
        // Stream ids are UUIDs: nothing in them needs escaping.
        out.push_str(&self.stream_id);
        out.push_str("\",\"media\":{\"track\":\"");
        out.push_str(track.as_str());
        out.push_str("\",\"timestamp\":\"");
        out.push_str(numbers.format(timestamp_ms));
        out.push_str("\",\"chunk\":");
        out.push_str(numbers.format(chunk));
        out.push_str(",\"payload\":\"");
        STANDARD.encode_string(payload, &mut out);
        out.push_str("\"}");
        out.push_str(&self.extra_headers);
        out.push('}');
        out
    }
}

/// `{"event":"dtmf","sequenceNumber":…,"streamId":…,"dtmf":{"digit":"5"}}`: one per key.
pub fn dtmf_message(sequence: u64, stream_id: &str, digit: char) -> String {
    let message = serde_json::json!({
        "event": "dtmf",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "dtmf": { "digit": digit.to_string() },
    });
    message.to_string()
}

/// `{"event":"playedStream","sequenceNumber":…,"streamId":…,"name":…}`.
pub fn played_stream_message(sequence: u64, stream_id: &str, name: &str) -> String {
    let message = serde_json::json!({
        "event": "playedStream",
        "sequenceNumber": sequence,
        "streamId": stream_id,
        "name": name,
    });
    message.to_string()
}

/// `{"event":"clearedAudio","sequenceNumber":…,"streamId":…}`.
pub fn cleared_audio_message(sequence: u64, stream_id: &str) -> String {
    let message = serde_json::json!({
        "event": "clearedAudio",
        "sequenceNumber": sequence,
        "streamId": stream_id,
    });
    message.to_string()
}

/// The longest checkpoint name kept; a longer one is refused (it comes back in `playedStream`
/// and in a status callback).
pub const MAX_CHECKPOINT_NAME: usize = 256;

/// A message from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceMessage {
    /// Audio to play into the call, decoded from base64 (in `format`, little-endian for L16).
    PlayAudio {
        format: MediaFormat,
        payload: Vec<u8>,
    },
    /// Answer with `playedStream` once everything queued before it has been played.
    Checkpoint { name: String },
    /// Drop everything queued.
    ClearAudio,
    /// Play these keys into the call.
    SendDtmf { digits: String },
}

/// Why a service message was refused (for a metric and a debug log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(message: impl Into<String>) -> Refusal {
    Refusal(message.into())
}

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    event: Option<Value>,
    #[serde(default, rename = "streamId")]
    stream_id: Option<Value>,
}

#[derive(Deserialize)]
struct PlayAudio<'a> {
    #[serde(borrow)]
    media: PlayMedia<'a>,
}

#[derive(Deserialize)]
struct PlayMedia<'a> {
    #[serde(rename = "contentType", borrow)]
    content_type: std::borrow::Cow<'a, str>,
    #[serde(rename = "sampleRate", default)]
    sample_rate: Option<Value>,
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
}

/// Parses one text message from the service of stream `stream_id`.
///
/// # Errors
/// A [`Refusal`] naming the field: not JSON, an unknown `event`, a `streamId` of another stream,
/// a missing or malformed field, a format the gateway does not speak.
pub fn parse_service_message(text: &str, stream_id: &str) -> Result<ServiceMessage, Refusal> {
    let head: Head =
        serde_json::from_str(text).map_err(|e| refuse(format!("not valid JSON: {e}")))?;
    if let Some(given) = head.stream_id {
        match given.as_str() {
            Some(id) if id == stream_id => {}
            Some(_) => return Err(refuse("streamId: names another stream")),
            None => return Err(refuse("streamId: expected a string")),
        }
    }
    let event = match head.event {
        Some(Value::String(event)) => event,
        Some(_) => return Err(refuse("event: expected a string")),
        None => return Err(refuse("event: missing field")),
    };
    match event.as_str() {
        "playAudio" => {
            let m: PlayAudio<'_> =
                serde_json::from_str(text).map_err(|e| refuse(format!("playAudio: {e}")))?;
            let rate = match &m.media.sample_rate {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(RateValue::Number(n.as_u64().ok_or_else(|| {
                    refuse("media.sampleRate: expected a whole number of hertz")
                })?)),
                Some(Value::String(s)) => Some(RateValue::Text(s)),
                Some(_) => return Err(refuse("media.sampleRate: expected a number")),
            };
            let format = MediaFormat::from_parts(&m.media.content_type, rate)
                .map_err(|e: FormatError| refuse(format!("media.contentType: {e}")))?;
            let payload = LENIENT
                .decode(m.media.payload.as_bytes())
                .map_err(|e| refuse(format!("media.payload: not base64: {e}")))?;
            if payload.is_empty() {
                return Err(refuse("media.payload: empty"));
            }
            if !payload
                .len()
                .is_multiple_of(format.encoding().bytes_per_sample())
            {
                return Err(refuse(format!(
                    "media.payload: {} bytes is not a whole number of {} samples",
                    payload.len(),
                    format.encoding()
                )));
            }
            Ok(ServiceMessage::PlayAudio { format, payload })
        }
        "checkpoint" => {
            let v: Value = serde_json::from_str(text).map_err(|e| refuse(e.to_string()))?;
            let name = match v.get("name") {
                Some(Value::String(name)) => name.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(_) => return Err(refuse("name: expected a string")),
                None => return Err(refuse("name: missing field")),
            };
            if name.is_empty() || name.len() > MAX_CHECKPOINT_NAME {
                return Err(refuse(format!(
                    "name: must be 1 to {MAX_CHECKPOINT_NAME} bytes"
                )));
            }
            Ok(ServiceMessage::Checkpoint { name })
        }
        "clearAudio" => Ok(ServiceMessage::ClearAudio),
        "sendDTMF" => {
            let v: Value = serde_json::from_str(text).map_err(|e| refuse(e.to_string()))?;
            // Plivo's own transport sends `"dtmf":"123"`; accept `{"digit(s)":…}` too.
            let digits = match v.get("dtmf") {
                Some(Value::String(d)) => d.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Object(o)) => match o.get("digits").or_else(|| o.get("digit")) {
                    Some(Value::String(d)) => d.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err(refuse("dtmf.digits: expected a string")),
                },
                Some(_) => return Err(refuse("dtmf: expected a string of keys")),
                None => return Err(refuse("dtmf: missing field")),
            };
            callstream_core::command::check_dtmf(&digits)
                .map_err(|e| refuse(format!("dtmf: {e}")))?;
            Ok(ServiceMessage::SendDtmf { digits })
        }
        other => Err(refuse(format!(
            "event: unknown event {:?}; expected playAudio, checkpoint, clearAudio or sendDTMF",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "20170ada-f610-433b-8758-c02a2aab3662";

    #[test]
    fn gateway_messages_are_pinned() {
        let start = start_message(
            1,
            &Start {
                call_id: "call_1",
                stream_id: SID,
                account_id: "MA123",
                tracks: &[Track::Inbound, Track::Outbound],
                format: MediaFormat::L16_16K,
                extra_headers: "a=1;b=2",
            },
        );
        assert_eq!(
            start.as_str(),
            r#"{"event":"start","sequenceNumber":1,"start":{"callId":"call_1","streamId":"20170ada-f610-433b-8758-c02a2aab3662","accountId":"MA123","tracks":["inbound","outbound"],"mediaFormat":{"encoding":"audio/x-l16","sampleRate":16000}},"extra_headers":"a=1;b=2"}"#
        );
        let writer = MediaWriter::new(SID, "");
        let media = writer.media(
            42,
            Track::Inbound,
            1_705_312_200_000,
            41,
            &[0xff, 0x7f, 0x00],
        );
        assert_eq!(
            media.as_str(),
            r#"{"event":"media","sequenceNumber":42,"streamId":"20170ada-f610-433b-8758-c02a2aab3662","media":{"track":"inbound","timestamp":"1705312200000","chunk":41,"payload":"/38A"}}"#
        );
        let with_headers = MediaWriter::new(SID, "k=\"v\"").media(2, Track::Outbound, 5, 1, &[1]);
        let v: Value = serde_json::from_str(&with_headers).unwrap();
        assert_eq!(v["extra_headers"], "k=\"v\"");
        assert_eq!(v["media"]["track"], "outbound");
        assert_eq!(
            dtmf_message(3, SID, '5'),
            r#"{"event":"dtmf","sequenceNumber":3,"streamId":"20170ada-f610-433b-8758-c02a2aab3662","dtmf":{"digit":"5"}}"#
        );
        assert_eq!(
            played_stream_message(4, SID, "cp1"),
            r#"{"event":"playedStream","sequenceNumber":4,"streamId":"20170ada-f610-433b-8758-c02a2aab3662","name":"cp1"}"#
        );
        assert_eq!(
            cleared_audio_message(5, SID),
            r#"{"event":"clearedAudio","sequenceNumber":5,"streamId":"20170ada-f610-433b-8758-c02a2aab3662"}"#
        );
    }

    #[test]
    fn service_messages() {
        let ok = |text: &str| parse_service_message(text, SID).unwrap();
        assert_eq!(
            ok(
                r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":8000,"payload":"AAABAA=="}}"#
            ),
            ServiceMessage::PlayAudio {
                format: MediaFormat::L16_8K,
                payload: vec![0, 0, 1, 0]
            }
        );
        // A rate as a string, in the content type, and base64 without padding.
        for text in [
            r#"{"event":"playAudio","streamId":"20170ada-f610-433b-8758-c02a2aab3662","media":{"contentType":"audio/x-l16","sampleRate":"16000","payload":"AAABAA"}}"#,
            r#"{"event":"playAudio","media":{"contentType":"audio/x-l16;rate=16000","payload":"AAABAA=="}}"#,
        ] {
            assert_eq!(
                ok(text),
                ServiceMessage::PlayAudio {
                    format: MediaFormat::L16_16K,
                    payload: vec![0, 0, 1, 0]
                }
            );
        }
        assert_eq!(
            ok(
                r#"{"event":"playAudio","media":{"contentType":"audio/x-mulaw","sampleRate":8000,"payload":"/w=="}}"#
            ),
            ServiceMessage::PlayAudio {
                format: MediaFormat::MULAW_8K,
                payload: vec![0xff]
            }
        );
        assert_eq!(
            ok(
                r#"{"event":"checkpoint","streamId":"20170ada-f610-433b-8758-c02a2aab3662","name":"greeting"}"#
            ),
            ServiceMessage::Checkpoint {
                name: "greeting".into()
            }
        );
        assert_eq!(ok(r#"{"event":"clearAudio"}"#), ServiceMessage::ClearAudio);
        assert_eq!(
            ok(r#"{"event":"sendDTMF","dtmf":"12#"}"#),
            ServiceMessage::SendDtmf {
                digits: "12#".into()
            }
        );
        assert_eq!(
            ok(r#"{"event":"sendDTMF","dtmf":{"digits":"9"}}"#),
            ServiceMessage::SendDtmf { digits: "9".into() }
        );
    }

    #[test]
    fn bad_service_messages_say_why() {
        for (text, expect) in [
            ("not json", "not valid JSON"),
            ("[1]", "event: expected a string"),
            (r#"{"media":{}}"#, "event: missing field"),
            (r#"{"event":7}"#, "event: expected a string"),
            (r#"{"event":"stop"}"#, "unknown event \"stop\""),
            (
                r#"{"event":"clearAudio","streamId":"other"}"#,
                "names another stream",
            ),
            (
                r#"{"event":"clearAudio","streamId":5}"#,
                "streamId: expected a string",
            ),
            (r#"{"event":"playAudio"}"#, "missing field `media`"),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/ogg","payload":"AA=="}}"#,
                "unknown audio encoding",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","payload":"AAAA"}}"#,
                "no sample rate",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":44100,"payload":"AAAA"}}"#,
                "44100 Hz is not supported",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":-1,"payload":"AAAA"}}"#,
                "media.sampleRate",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-mulaw","payload":"!!"}}"#,
                "not base64",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-l16","sampleRate":8000,"payload":"AAAA"}}"#,
                "not a whole number",
            ),
            (
                r#"{"event":"playAudio","media":{"contentType":"audio/x-mulaw","payload":""}}"#,
                "empty",
            ),
            (r#"{"event":"checkpoint"}"#, "name: missing field"),
            (r#"{"event":"checkpoint","name":""}"#, "name: must be 1 to"),
            (
                r#"{"event":"checkpoint","name":[1]}"#,
                "name: expected a string",
            ),
            (r#"{"event":"sendDTMF"}"#, "dtmf: missing field"),
            (
                r#"{"event":"sendDTMF","dtmf":"12x"}"#,
                "dtmf: digits must be",
            ),
            (r#"{"event":"sendDTMF","dtmf":true}"#, "dtmf: expected"),
        ] {
            let err = parse_service_message(text, SID).unwrap_err();
            assert!(err.0.contains(expect), "{text}: {err}");
        }
        let long = format!(
            r#"{{"event":"checkpoint","name":"{}"}}"#,
            "x".repeat(MAX_CHECKPOINT_NAME + 1)
        );
        assert!(parse_service_message(&long, SID).is_err());
    }
}
