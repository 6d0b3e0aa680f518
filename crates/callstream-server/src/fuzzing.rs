//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz), one per kind of network input the
//! server parses. They live here, not in `fuzz/`, so that the ordinary test suite replays the
//! committed corpus (`fuzz/corpus/<target>/`) through exactly the same code on every run.
//!
//! Each function takes arbitrary bytes, must never panic, and checks what a client relies on:
//! a refusal always says what is wrong.

use callstream_core::{Payload, Transport};
use callstream_store::NewEvent;
use callstream_surfaces::{control, live_calls, live_transcript, runtime};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::ingest::{self, Target};
use crate::stream_http::{self, Head};

const TARGETS: [Target; 3] = [
    Target::Call(Transport::Webrtc),
    Target::Call(Transport::Sip),
    Target::Conversation,
];

/// A message on the runtime socket (`GET /v1/runtime`), then its events as ingest parses them.
pub fn runtime_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // tungstenite refuses a text frame that is not UTF-8 before it reaches us
    };
    match runtime::parse(text) {
        Err(message) => assert!(!message.is_empty(), "a refusal names what is wrong"),
        Ok(runtime::RuntimeMessage::Events(m)) => match m.events {
            // Decoded with the message: ingest's answer must be the one its text would get.
            runtime::Batch::Decoded(decoded) => {
                let Ok(Some(text)) = events_text(text) else {
                    panic!("a message decoded in one pass has no events text: {text}");
                };
                for target in TARGETS {
                    agree(
                        ingest::events_of(runtime::Batch::Decoded(decoded.clone()), target, 100),
                        ingest::careful_batch(&text, target, 100),
                        text.get(),
                    );
                }
            }
            runtime::Batch::Text(text) => events(&text),
        },
        Ok(runtime::RuntimeMessage::CommandResult(_)) => {}
    }
}

/// The `events` member of a runtime message, as text.
fn events_text(text: &str) -> Result<Option<Box<RawValue>>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Events {
        events: Option<Box<RawValue>>,
    }
    serde_json::from_str::<Events>(text).map(|e| e.events)
}

/// A binary message on the runtime socket: a call's audio frame. One that decodes encodes back
/// to the very same bytes (nothing is lost or invented), and a refusal names the field.
pub fn audio_frame(data: &[u8]) {
    let bytes = bytes::Bytes::copy_from_slice(data);
    match callstream_core::audio::AudioFrame::decode(&bytes) {
        Ok(frame) => {
            assert_eq!(
                frame.encode(),
                bytes,
                "a decoded frame encodes back to its bytes"
            );
            assert!(frame.check().is_ok());
        }
        Err(e) => assert!(e.to_string().starts_with("audio frame: "), "{e}"),
    }
}

/// A message from an audio stream's service (seed 004). Audio to play is whole samples of a
/// format the gateway speaks; a refusal says what is wrong.
pub fn service_message(data: &[u8]) {
    use callstream_surfaces::audio_stream::{ServiceMessage, parse_service_message};
    let Ok(text) = std::str::from_utf8(data) else {
        return; // tungstenite refuses a text frame that is not UTF-8 before it reaches us
    };
    match parse_service_message(text, "20170ada-f610-433b-8758-c02a2aab3662") {
        Ok(ServiceMessage::PlayAudio { format, payload }) => {
            assert!(!payload.is_empty());
            assert!(
                payload
                    .len()
                    .is_multiple_of(format.encoding().bytes_per_sample())
            );
        }
        Ok(ServiceMessage::Checkpoint { name }) => assert!(!name.is_empty()),
        Ok(ServiceMessage::SendDtmf { digits }) => {
            assert!(callstream_core::command::check_dtmf(&digits).is_ok());
        }
        Ok(ServiceMessage::ClearAudio) => {}
        Err(refusal) => assert!(!refusal.0.is_empty(), "a refusal names what is wrong"),
    }
}

/// A REST ingest body (`POST /v1/calls/{id}/events` and the conversation's).
pub fn ingest_body(data: &[u8]) {
    if let Ok(body) = crate::body::decode::<Box<RawValue>>(data) {
        events(&body);
    }
}

/// Ingest's answer for `batch` on every target, which must be the one-pass decode's and the
/// careful path's alike.
fn events(batch: &RawValue) {
    for target in TARGETS {
        agree(
            ingest::parse_batch(batch, target, 100),
            ingest::careful_batch(batch, target, 100),
            batch.get(),
        );
    }
}

/// The one-pass decode and the careful path give the same payloads, or the same refusal (which
/// names what is wrong).
fn agree(
    fast: Result<Vec<NewEvent>, ApiError>,
    careful: Result<Vec<NewEvent>, ApiError>,
    input: &str,
) {
    match (fast, careful) {
        (Ok(fast), Ok(careful)) => {
            let payloads = |events: &[NewEvent]| -> Vec<Payload> {
                events.iter().map(|e| e.payload.clone()).collect()
            };
            assert_eq!(payloads(&fast), payloads(&careful), "{input}");
            // A given timestamp is parsed by both alike; a missing one is "now" for each, a
            // moment apart.
            for (a, b) in fast.iter().zip(&careful) {
                let apart = (a.timestamp - b.timestamp).num_milliseconds().abs();
                assert!(apart < 1_000, "timestamps {apart} ms apart: {input}");
            }
        }
        (Err(fast), Err(careful)) => {
            assert_eq!(careful.code, "invalid_event");
            assert!(!careful.message.is_empty(), "a refusal names the field");
            assert_eq!(
                (fast.code, fast.message),
                (careful.code, careful.message),
                "{input}"
            );
        }
        (fast, careful) => panic!(
            "one pass accepted: {}, careful path accepted: {}: {input}",
            fast.is_ok(),
            careful.is_ok()
        ),
    }
}

/// A client's message on the call socket (seed 000), the live-call socket (seed 001) and the
/// live transcript socket (seed 003).
pub fn client_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(refusal) = control::parse(text) {
        assert!(!refusal.message.is_empty());
        // The id echoed in a refusal is the one the message carried, if any.
        assert!(refusal.id.is_none() || control::peek_id(text).is_some());
    }
    if let Err(description) = live_calls::parse(text) {
        assert!(!description.is_empty());
    }
    if let Err(message) = live_transcript::parse(text) {
        assert!(!message.is_empty());
    }
}

/// The first bytes of a connection: an SSE stream request answered by `stream_http`, or
/// anything else, which goes to hyper.
pub fn stream_head(data: &[u8]) {
    if let Head::Stream(request) = stream_http::classify(data) {
        assert_eq!(request.method(), axum::http::Method::GET);
        assert!(crate::is_sse_stream(request.uri().path()));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    type Body = fn(&[u8]);

    /// Replays every committed corpus input through its target (what `cargo fuzz run` found
    /// interesting, plus hand-written seeds): a regression test for every crash ever fixed.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let targets: [(&str, Body); 6] = [
            ("runtime_message", super::runtime_message),
            ("ingest_body", super::ingest_body),
            ("client_message", super::client_message),
            ("stream_head", super::stream_head),
            ("audio_frame", super::audio_frame),
            ("service_message", super::service_message),
        ];
        for (name, target) in targets {
            let dir = corpus.join(name);
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "{name}: the corpus is empty");
        }
    }
}
