use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use callstream_core::Envelope;

/// How many distinct wire encodings one event may carry at once (one per surface format).
pub const FORMAT_SLOTS: usize = 8;

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
    /// The canonical JSON: every history weighs events by it, so it is computed at most once,
    /// when first asked for, and kept for the surfaces that send it.
    json: OnceLock<Bytes>,
    encoded: [OnceLock<Option<Bytes>>; FORMAT_SLOTS],
}

impl Event {
    pub fn new(envelope: Envelope) -> Arc<Self> {
        Arc::new(Self {
            envelope,
            json: OnceLock::new(),
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

    /// What this event counts for in a history's byte bound: the size of its canonical JSON.
    /// (Held in memory, an event costs about twice that, its decoded form and its JSON, plus
    /// each surface encoding it was sent in.)
    pub fn weight(&self) -> usize {
        self.json
            .get_or_init(|| Bytes::from(self.envelope.to_json()))
            .len()
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
