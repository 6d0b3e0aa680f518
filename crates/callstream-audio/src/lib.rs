//! Audio sample handling for the callstream gateway: G.711 mu-law and A-law, 16-bit linear PCM
//! (L16), the media formats a telephony audio stream announces (`audio/x-l16;rate=16000`,
//! `audio/x-mulaw;rate=8000`), 8 kHz <-> 16 kHz resampling, cutting a byte stream into 20 ms
//! frames, and converting frames between formats.
//!
//! Everything here is a pure function or a small struct that owns plain state; nothing blocks,
//! nothing is async and nothing allocates per frame once its buffers have grown to size. The
//! crate deliberately does not know about sockets, WebSocket messages, base64, JSON or any
//! provider's event names: the protocol layer decodes `media.payload` to bytes and hands this
//! crate a content type string and a sample rate, and gets bytes back. Keeping it that way lets
//! the hot path be tested and benchmarked without a network.
//!
//! Map:
//! - [`g711`]: per-sample and slice encode/decode for mu-law and A-law.
//! - [`l16`]: 16-bit PCM to and from bytes in an explicit [`l16::ByteOrder`].
//! - [`format`](mod@format): [`Encoding`], [`SampleRate`], [`MediaFormat`] and content-type parsing.
//! - [`resample`]: streaming half-band [`Upsampler`] and [`Downsampler`] (factor 2).
//! - [`framer`]: [`Framer`], arbitrary chunks in, whole 20 ms frames out, bounded.
//! - [`transcode`]: [`Transcoder`], one frame from any supported format to any other.

pub mod format;
pub mod framer;
#[doc(hidden)]
pub mod fuzzing;
pub mod g711;
pub mod l16;
pub mod resample;
pub mod transcode;

pub use format::{Encoding, FRAME_DURATION, FormatError, MediaFormat, RateValue, SampleRate};
pub use framer::{Framer, FramerError};
pub use resample::{Downsampler, Upsampler};
pub use transcode::Transcoder;

/// Why a slice conversion could not run.
///
/// Both cases are caller mistakes or malformed input, never transient: retrying the same call
/// fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The caller's output buffer cannot hold the converted samples. Nothing was written.
    #[error("output buffer too short: {needed} elements needed, {available} available")]
    OutputTooShort {
        /// Elements (bytes or samples, whatever the output holds) the conversion needs.
        needed: usize,
        /// Length of the buffer that was passed.
        available: usize,
    },
    /// An L16 payload had an odd number of bytes, so its last sample is cut in half.
    #[error("L16 payload of {len} bytes is not a whole number of 16-bit samples")]
    OddByteCount {
        /// Length of the payload in bytes.
        len: usize,
    },
}

/// Returns the first `needed` elements of `out`, or [`CodecError::OutputTooShort`].
///
/// Every slice helper checks up front so that a short buffer leaves it untouched rather than
/// half-written.
fn output_prefix<T>(out: &mut [T], needed: usize) -> Result<&mut [T], CodecError> {
    let available = out.len();
    out.get_mut(..needed)
        .ok_or(CodecError::OutputTooShort { needed, available })
}
