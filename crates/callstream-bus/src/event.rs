use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use callstream_core::Envelope;

/// How many distinct wire encodings one event may carry at once (one per surface format).
pub const FORMAT_SLOTS: usize = 8;

/// What an envelope adds around its payload's JSON, rounded up: the ids, type, seq and
/// timestamp (a call event's envelope around an empty payload is some 190 bytes).
pub const ENVELOPE_BYTES: usize = 256;

/// A surface's slot in an [`Event`]'s encoding cache. Surfaces own the numbering; each format
/// must use its own slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatSlot(usize);

impl FormatSlot {
    /// # Panics
    /// At compile time (in a `const`) when `index >= FORMAT_SLOTS`.
    pub const fn new(index: usize) -> Self {
        assert!(index < FORMAT_SLOTS, "format slot out of range");
        Self(index)
    }
}

/// One published event: the envelope plus its encodings, each computed once and shared by
/// every subscriber that uses it.
#[derive(Debug)]
pub struct Event {
    envelope: Envelope,
    /// The canonical JSON, computed at most once, when first asked for, and kept for the
    /// surfaces that send it.
    json: OnceLock<Bytes>,
    /// See [`Event::weight`]; fixed at creation, so that a history adds and removes the same.
    weight: usize,
    encoded: [OnceLock<Option<Bytes>>; FORMAT_SLOTS],
}

impl Event {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        let json = OnceLock::new();
        // An ingested event's payload is most of its envelope, and its text is at hand: weighing
        // by it saves serialising every event at publish when no surface needs the JSON (the
        // SSE transcript stream). Measured with callgrind (`bench/callgrind-bench.sh`, fanout/1):
        // publishing to one subscriber cost 7,140 instructions, 5,010 of them the envelope's
        // JSON for its weight. Events the gateway makes itself are small and rare: they are
        // weighed by their JSON, kept for the surfaces.
        let weight = match &envelope.payload_json {
            Some(raw) => raw.get().len() + ENVELOPE_BYTES,
            None => json.get_or_init(|| Bytes::from(envelope.to_json())).len(),
        };
        Arc::new(Self {
            envelope,
            json,
            weight,
            encoded: Default::default(),
        })
    }

    /// The canonical JSON envelope (`Envelope::to_json`), as the native WebSocket, webhooks and
    /// NATS carry it.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(self.envelope.to_json()))
            .clone()
    }

    /// What this event counts for in a history's byte bound: the size of its canonical JSON, or
    /// for an ingested event its payload's text plus [`ENVELOPE_BYTES`], which is as much or a
    /// little more. (Held in memory, an event costs about twice that, its decoded form and its
    /// JSON, plus each surface encoding it was sent in.)
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }

    /// This event in one surface's encoding, computed by `encode` on first use and shared after.
    /// `None` when the surface has no frame for this event type.
    pub fn encoded(
        &self,
        slot: FormatSlot,
        encode: impl FnOnce(&Envelope) -> Option<Bytes>,
    ) -> Option<Bytes> {
        self.encoded[slot.0]
            .get_or_init(|| encode(&self.envelope))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use callstream_core::event::RawPayload;
    use callstream_core::{CallId, ConversationId, Payload, Subject, WorkspaceId, time};

    use super::*;

    /// An ingested event is weighed without serialising it, never less than its JSON.
    #[test]
    fn an_ingested_event_weighs_at_least_its_json_without_serialising_it() {
        let text = r#"{"role": "user", "text": "hi there", "is_final": true, "turn_id": "trn_1", "words": [1, 2]}"#;
        for subject in [
            Subject::Call(CallId::new()),
            Subject::Conversation(ConversationId::new()),
        ] {
            let envelope = Envelope::new(
                WorkspaceId::new(),
                subject,
                u64::MAX,
                time::now(),
                Payload::parse_json("custom.x", text).expect("payload"),
            )
            .expect("envelope")
            .with_payload_json(Some(RawPayload::new(
                serde_json::value::RawValue::from_string(text.to_owned()).expect("raw"),
            )));
            let event = Event::new(envelope);
            let weight = event.weight();
            assert!(event.json.get().is_none(), "not serialised to be weighed");
            let json = event.json().len();
            assert!(
                (json..json + ENVELOPE_BYTES).contains(&weight),
                "{weight} for {json}"
            );
        }
    }
}
