//! L16: signed 16-bit linear PCM, one channel, as bytes.
//!
//! The byte order is always an explicit argument because the two places L16 appears disagree:
//! Plivo/Vobiz `audio/x-l16` stream payloads carry little-endian samples (the native order of the
//! x86 and ARM machines on both ends, and what speech-to-text and text-to-speech services take and
//! return), while RFC 3551 section 4.5.11 defines L16 in RTP as network byte order, big-endian.
//! Getting it wrong does not fail, it produces loud noise, so no function here guesses.
//! [`STREAM_BYTE_ORDER`] names the one the stream API uses, and every [`MediaFormat`] with
//! [`Encoding::L16`] means that order.
//!
//! [`MediaFormat`]: crate::MediaFormat
//! [`Encoding::L16`]: crate::Encoding::L16

use crate::{CodecError, output_prefix};

/// Order of the two bytes of each L16 sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Low byte first. What Plivo/Vobiz `audio/x-l16` stream payloads use; see
    /// [`STREAM_BYTE_ORDER`].
    LittleEndian,
    /// High byte first (network order). What RFC 3551 L16 over RTP uses.
    BigEndian,
}

/// Byte order of `audio/x-l16` payloads on the Plivo/Vobiz audio stream, in both directions
/// (`media` events from the provider and `playAudio` events to it).
pub const STREAM_BYTE_ORDER: ByteOrder = ByteOrder::LittleEndian;

/// Bytes per L16 sample.
pub const BYTES_PER_SAMPLE: usize = 2;

/// Decodes L16 `bytes` into the front of `out` and returns how many samples were written
/// (`bytes.len() / 2`).
///
/// # Errors
///
/// - [`CodecError::OddByteCount`] if `bytes` does not hold a whole number of samples.
/// - [`CodecError::OutputTooShort`] if `out` cannot hold them.
///
/// On error `out` is left untouched.
pub fn decode_into(bytes: &[u8], order: ByteOrder, out: &mut [i16]) -> Result<usize, CodecError> {
    if !bytes.len().is_multiple_of(BYTES_PER_SAMPLE) {
        return Err(CodecError::OddByteCount { len: bytes.len() });
    }
    let count = bytes.len() / BYTES_PER_SAMPLE;
    let out = output_prefix(out, count)?;
    let pairs = bytes.chunks_exact(BYTES_PER_SAMPLE);
    for (sample, pair) in out.iter_mut().zip(pairs) {
        let pair = [pair[0], pair[1]];
        *sample = match order {
            ByteOrder::LittleEndian => i16::from_le_bytes(pair),
            ByteOrder::BigEndian => i16::from_be_bytes(pair),
        };
    }
    Ok(count)
}

/// Encodes `samples` as L16 into the front of `out` and returns how many bytes were written
/// (`samples.len() * 2`).
///
/// # Errors
///
/// [`CodecError::OutputTooShort`] if `out` is shorter than `samples.len() * 2` bytes; `out` is
/// left untouched.
pub fn encode_into(samples: &[i16], order: ByteOrder, out: &mut [u8]) -> Result<usize, CodecError> {
    let len = samples.len() * BYTES_PER_SAMPLE;
    let out = output_prefix(out, len)?;
    for (pair, &sample) in out.chunks_exact_mut(BYTES_PER_SAMPLE).zip(samples) {
        let bytes = match order {
            ByteOrder::LittleEndian => sample.to_le_bytes(),
            ByteOrder::BigEndian => sample.to_be_bytes(),
        };
        pair.copy_from_slice(&bytes);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: [i16; 5] = [0, 1, -2, 0x1234, i16::MIN];

    #[test]
    fn byte_order_is_pinned() {
        let cases: &[(ByteOrder, [u8; 10])] = &[
            (
                ByteOrder::LittleEndian,
                [0x00, 0x00, 0x01, 0x00, 0xFE, 0xFF, 0x34, 0x12, 0x00, 0x80],
            ),
            (
                ByteOrder::BigEndian,
                [0x00, 0x00, 0x00, 0x01, 0xFF, 0xFE, 0x12, 0x34, 0x80, 0x00],
            ),
        ];
        for &(order, bytes) in cases {
            let mut encoded = [0_u8; 10];
            assert_eq!(encode_into(&SAMPLES, order, &mut encoded), Ok(10));
            assert_eq!(encoded, bytes, "{order:?} encode");
            let mut decoded = [0_i16; 5];
            assert_eq!(decode_into(&bytes, order, &mut decoded), Ok(5));
            assert_eq!(decoded, SAMPLES, "{order:?} decode");
        }
    }

    #[test]
    fn stream_uses_little_endian() {
        assert_eq!(STREAM_BYTE_ORDER, ByteOrder::LittleEndian);
    }

    #[test]
    fn odd_payload_is_rejected() {
        let mut out = [9_i16; 4];
        assert_eq!(
            decode_into(&[1, 2, 3], ByteOrder::LittleEndian, &mut out),
            Err(CodecError::OddByteCount { len: 3 })
        );
        assert_eq!(out, [9; 4]);
    }

    #[test]
    fn short_output_is_rejected_without_writing() {
        let mut samples = [9_i16; 1];
        assert_eq!(
            decode_into(&[1, 2, 3, 4], ByteOrder::BigEndian, &mut samples),
            Err(CodecError::OutputTooShort {
                needed: 2,
                available: 1
            })
        );
        assert_eq!(samples, [9]);
        let mut bytes = [9_u8; 3];
        assert_eq!(
            encode_into(&[1, 2], ByteOrder::LittleEndian, &mut bytes),
            Err(CodecError::OutputTooShort {
                needed: 4,
                available: 3
            })
        );
        assert_eq!(bytes, [9; 3]);
    }

    #[test]
    fn empty_input_is_fine() {
        assert_eq!(decode_into(&[], ByteOrder::LittleEndian, &mut []), Ok(0));
        assert_eq!(encode_into(&[], ByteOrder::BigEndian, &mut []), Ok(0));
    }
}
