//! Cutting a byte stream into whole 20 ms frames.
//!
//! Peers send audio in chunks of any size: a text-to-speech service returns a few kilobytes at a
//! time, a `playAudio` payload may hold seconds, a provider's `media` chunk is usually but not
//! always one frame. Downstream everything is paced and mixed frame by frame, so a [`Framer`]
//! takes the chunks, hands back whole frames and keeps the remainder for the next chunk. It
//! counts bytes, not samples, so an L16 chunk that ends halfway through a sample is fine: the
//! half sample waits with the rest of the remainder.
//!
//! The buffer is bounded. A peer that sends audio faster than it is played would otherwise grow
//! it without limit; instead [`Framer::push`] refuses the chunk with [`FramerError::Overflow`]
//! and the caller decides what that means (drop the chunk, report a degraded stream, close).

use crate::MediaFormat;

/// Why a [`Framer`] refused something. Both are client-side conditions and not retryable as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramerError {
    /// Accepting the chunk would have buffered more than the limit. The chunk was not taken;
    /// what was buffered before is intact.
    #[error(
        "audio buffer full: {buffered} bytes waiting, {incoming} more would exceed the limit of {limit}"
    )]
    Overflow {
        /// Bytes waiting in the framer when the chunk arrived.
        buffered: usize,
        /// Length of the refused chunk.
        incoming: usize,
        /// The configured bound.
        limit: usize,
    },
    /// The configured bound cannot hold even one frame, so no frame could ever be produced.
    #[error("buffer limit of {limit} bytes is smaller than one {frame_len}-byte frame")]
    LimitBelowFrame {
        /// The bound that was asked for.
        limit: usize,
        /// Bytes in one frame of the format.
        frame_len: usize,
    },
}

/// Accumulates chunks of one [`MediaFormat`] and yields whole 20 ms frames.
///
/// ```
/// use callstream_audio::{Framer, MediaFormat};
///
/// let mut framer = Framer::new(MediaFormat::MULAW_8K, 8_000)?;
/// framer.push(&[0xFF; 400])?;
/// let mut frames = 0;
/// while let Some(frame) = framer.next_frame() {
///     assert_eq!(frame.len(), 160);
///     frames += 1;
/// }
/// assert_eq!((frames, framer.buffered_len()), (2, 80));
/// # Ok::<(), callstream_audio::FramerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Framer {
    format: MediaFormat,
    frame_len: usize,
    max_buffered: usize,
    /// Bytes received; `buffer[start..]` is what has not been handed out yet. Handed-out bytes
    /// are dropped lazily, on the next push, so that a frame can be lent out as a slice without
    /// copying it.
    buffer: Vec<u8>,
    start: usize,
}

impl Framer {
    /// A framer for `format` that holds at most `max_buffered_bytes` bytes not yet handed out.
    ///
    /// The buffer grows to its working size over the first few chunks and is reused after that.
    ///
    /// # Errors
    ///
    /// [`FramerError::LimitBelowFrame`] if the limit is smaller than one frame.
    pub fn new(format: MediaFormat, max_buffered_bytes: usize) -> Result<Self, FramerError> {
        let frame_len = format.bytes_per_frame();
        if max_buffered_bytes < frame_len {
            return Err(FramerError::LimitBelowFrame {
                limit: max_buffered_bytes,
                frame_len,
            });
        }
        Ok(Self {
            format,
            frame_len,
            max_buffered: max_buffered_bytes,
            buffer: Vec::new(),
            start: 0,
        })
    }

    /// The format the framer cuts.
    pub fn format(&self) -> MediaFormat {
        self.format
    }

    /// Bytes in one frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The configured bound on [`Framer::buffered_len`].
    pub fn max_buffered(&self) -> usize {
        self.max_buffered
    }

    /// Bytes received and not yet handed out as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// Appends a chunk. Call [`Framer::next_frame`] until it returns `None` to drain it.
    ///
    /// # Errors
    ///
    /// [`FramerError::Overflow`] if the chunk would take the buffered bytes above the limit; the
    /// chunk is then not taken at all, so that a frame is never assembled from audio with a hole
    /// in it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), FramerError> {
        let buffered = self.buffered_len();
        if chunk.len() > self.max_buffered - buffered {
            return Err(FramerError::Overflow {
                buffered,
                incoming: chunk.len(),
                limit: self.max_buffered,
            });
        }
        self.compact();
        self.buffer.extend_from_slice(chunk);
        Ok(())
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let end = self.start + self.frame_len;
        if end > self.buffer.len() {
            return None;
        }
        let frame = &self.buffer[self.start..end];
        self.start = end;
        Some(frame)
    }

    /// Like [`Framer::next_frame`], but a final partial frame is padded with silence and handed
    /// out too. For the end of a stream, so that its last few milliseconds are not lost.
    pub fn next_frame_padded(&mut self) -> Option<&[u8]> {
        let buffered = self.buffered_len();
        if buffered > 0 && buffered < self.frame_len {
            self.compact();
            self.buffer
                .resize(self.frame_len, self.format.encoding().silence_byte());
        }
        self.next_frame()
    }

    /// Drops everything buffered (e.g. when the peer asks to clear queued audio) and returns how
    /// many bytes were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.buffered_len();
        self.buffer.clear();
        self.start = 0;
        dropped
    }

    /// Moves the not-yet-handed-out bytes to the front of the buffer. Between pushes that is at
    /// most one partial frame plus whatever the caller did not drain, so the copy is small.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(framer: &mut Framer) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(frame) = framer.next_frame() {
            frames.push(frame.to_vec());
        }
        frames
    }

    /// Bytes 0, 1, 2, ... (wrapping), so that any reordering or loss shows.
    fn ramp(len: usize) -> Vec<u8> {
        (0..len).map(|n| (n % 251) as u8).collect()
    }

    #[test]
    fn chunks_of_any_size_become_whole_frames() {
        // (format, chunk sizes, whole frames expected, remainder expected)
        let cases: &[(MediaFormat, &[usize], usize, usize)] = &[
            (MediaFormat::MULAW_8K, &[160], 1, 0),
            (MediaFormat::MULAW_8K, &[100, 100], 1, 40),
            (MediaFormat::MULAW_8K, &[1; 321], 2, 1),
            (MediaFormat::MULAW_8K, &[0, 0], 0, 0),
            (MediaFormat::L16_8K, &[319, 1, 321], 2, 1),
            (MediaFormat::L16_16K, &[640 * 3 + 7], 3, 7),
            (MediaFormat::L16_16K, &[333, 333, 333, 333], 2, 52),
        ];
        for &(format, chunks, frames_expected, remainder) in cases {
            let total: usize = chunks.iter().sum();
            let stream = ramp(total);
            let mut framer = Framer::new(format, 64 * 1024).expect("valid limit");
            let mut frames = Vec::new();
            let mut offset = 0;
            for &len in chunks {
                framer
                    .push(&stream[offset..offset + len])
                    .expect("under limit");
                offset += len;
                frames.extend(drain(&mut framer));
            }
            assert_eq!(frames.len(), frames_expected, "{format} {chunks:?}");
            assert_eq!(framer.buffered_len(), remainder, "{format} {chunks:?}");
            let joined: Vec<u8> = frames.concat();
            assert_eq!(joined, stream[..joined.len()], "{format} {chunks:?}");
            assert!(
                frames.iter().all(|f| f.len() == format.bytes_per_frame()),
                "{format}"
            );
        }
    }

    #[test]
    fn overflow_refuses_the_whole_chunk() {
        let mut framer = Framer::new(MediaFormat::MULAW_8K, 400).expect("valid limit");
        framer.push(&ramp(300)).expect("under limit");
        assert_eq!(
            framer.push(&[0; 101]),
            Err(FramerError::Overflow {
                buffered: 300,
                incoming: 101,
                limit: 400
            })
        );
        assert_eq!(framer.buffered_len(), 300);
        // Exactly at the limit is allowed.
        framer.push(&[0; 100]).expect("at limit");
        assert_eq!(framer.buffered_len(), 400);
        // Draining frees room again.
        assert_eq!(drain(&mut framer).len(), 2);
        framer.push(&[0; 320]).expect("room after draining");
        assert_eq!(framer.buffered_len(), 400);
    }

    #[test]
    fn a_single_oversized_chunk_overflows() {
        let mut framer = Framer::new(MediaFormat::L16_16K, 640).expect("valid limit");
        assert_eq!(
            framer.push(&[0; 641]),
            Err(FramerError::Overflow {
                buffered: 0,
                incoming: 641,
                limit: 640
            })
        );
    }

    #[test]
    fn limit_must_hold_one_frame() {
        let cases = [
            (MediaFormat::MULAW_8K, 159, false),
            (MediaFormat::MULAW_8K, 160, true),
            (MediaFormat::L16_16K, 639, false),
            (MediaFormat::L16_16K, 640, true),
        ];
        for (format, limit, ok) in cases {
            let result = Framer::new(format, limit);
            assert_eq!(result.is_ok(), ok, "{format} limit {limit}");
            if let Err(error) = result {
                assert_eq!(
                    error,
                    FramerError::LimitBelowFrame {
                        limit,
                        frame_len: format.bytes_per_frame()
                    }
                );
            }
        }
    }

    #[test]
    fn padded_frame_ends_a_stream_with_silence() {
        let cases = [
            (MediaFormat::MULAW_8K, 0xFF),
            (MediaFormat::ALAW_8K, 0xD5),
            (MediaFormat::L16_8K, 0x00),
        ];
        for (format, silence) in cases {
            let frame_len = format.bytes_per_frame();
            let mut framer = Framer::new(format, 4 * frame_len).expect("valid limit");
            framer.push(&[0x11; 10]).expect("under limit");
            assert_eq!(framer.next_frame(), None);
            let frame = framer.next_frame_padded().expect("padded frame").to_vec();
            assert_eq!(frame.len(), frame_len);
            assert_eq!(frame[..10], [0x11; 10]);
            assert!(frame[10..].iter().all(|&b| b == silence), "{format}");
            assert_eq!(framer.next_frame_padded(), None);
            assert_eq!(framer.buffered_len(), 0);
        }
    }

    #[test]
    fn padded_frame_prefers_whole_frames_first() {
        let mut framer = Framer::new(MediaFormat::MULAW_8K, 1000).expect("valid limit");
        framer.push(&ramp(170)).expect("under limit");
        let first = framer.next_frame_padded().expect("whole frame").to_vec();
        assert_eq!(first, ramp(160));
        let last = framer.next_frame_padded().expect("padded frame").to_vec();
        assert_eq!(last[..10], ramp(170)[160..]);
        assert!(last[10..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn clear_drops_the_buffer() {
        let mut framer = Framer::new(MediaFormat::MULAW_8K, 1000).expect("valid limit");
        framer.push(&ramp(500)).expect("under limit");
        assert!(framer.next_frame().is_some());
        assert_eq!(framer.clear(), 340);
        assert_eq!(framer.buffered_len(), 0);
        assert_eq!(framer.next_frame_padded(), None);
        framer.push(&ramp(160)).expect("under limit");
        assert_eq!(framer.next_frame(), Some(ramp(160).as_slice()));
    }
}
