//! callstream's wire contracts, one module per surface: each maps canonical envelopes to its
//! frames (and, for sockets, its client messages to commands).
//!
//! Everything here is a pure function of its input: no sockets, no store, no clock except the
//! timestamps inside the envelope. Encoded frames are cached in the bus [`callstream_bus::Event`]
//! under the surface's own [`FormatSlot`], so each event is encoded once per surface however many
//! subscribers it has. The server's handlers do the I/O and call these.

pub mod audio_stream;
pub mod control;
pub mod live_calls;
pub mod live_transcript;
pub mod native;
pub mod runtime;
pub mod speech;
pub mod sse;

use callstream_bus::FormatSlot;

/// Every surface format's cache slot, in one place so no two formats share one.
pub mod slots {
    use super::FormatSlot;

    /// Seed 000, call transcript SSE frames.
    pub const NATIVE_TRANSCRIPT_SSE: FormatSlot = FormatSlot::new(0);
    // Slot 1 was the canonical envelope JSON, which `Event::json` now keeps itself.
    /// Seed 000, conversation SSE frames.
    pub const NATIVE_CONVERSATION_SSE: FormatSlot = FormatSlot::new(2);
    /// Seed 002, STT/TTS event SSE frames.
    pub const SPEECH_SSE: FormatSlot = FormatSlot::new(3);
    /// Seed 003, live transcript socket messages.
    pub const LIVE_TRANSCRIPT: FormatSlot = FormatSlot::new(4);
    /// Seed 001, live-call control socket messages.
    pub const LIVE_CALLS: FormatSlot = FormatSlot::new(5);
}
