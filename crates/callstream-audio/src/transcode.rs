//! Converting audio between any two supported [`MediaFormat`]s.
//!
//! A conversion is decode to 16-bit samples, resample if the rates differ, encode. The
//! [`Transcoder`] owns the resampler state and two scratch buffers, and the caller owns the
//! transcoder: one per direction of one stream, so that consecutive frames join up without a
//! click and nothing allocates once the buffers have grown to a frame.

use crate::resample::{Downsampler, Upsampler};
use crate::{CodecError, MediaFormat, SampleRate};

/// What happens to the sample rate on the way through.
#[derive(Debug, Clone)]
enum RateChange {
    Keep,
    Up(Upsampler),
    Down(Downsampler),
}

/// Converts a stream of frames from one format to another, e.g. `audio/x-mulaw;rate=8000` from a
/// phone line to `audio/x-l16;rate=16000` for a speech service.
///
/// ```
/// use callstream_audio::{MediaFormat, Transcoder};
///
/// let mut to_wideband = Transcoder::new(MediaFormat::MULAW_8K, MediaFormat::L16_16K);
/// let mut out = Vec::new();
/// let written = to_wideband.transcode(&[0xFF; 160], &mut out)?;
/// assert_eq!((written, out.len()), (640, 640));
/// # Ok::<(), callstream_audio::CodecError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Transcoder {
    input: MediaFormat,
    output: MediaFormat,
    rate: RateChange,
    /// Input decoded to samples at the input rate.
    decoded: Vec<i16>,
    /// Samples at the output rate, when the rates differ.
    resampled: Vec<i16>,
}

impl Transcoder {
    /// A transcoder from `input` to `output` with silent resampler history.
    pub fn new(input: MediaFormat, output: MediaFormat) -> Self {
        let rate = match (input.sample_rate(), output.sample_rate()) {
            (SampleRate::Hz8000, SampleRate::Hz16000) => RateChange::Up(Upsampler::new()),
            (SampleRate::Hz16000, SampleRate::Hz8000) => RateChange::Down(Downsampler::new()),
            (SampleRate::Hz8000, SampleRate::Hz8000)
            | (SampleRate::Hz16000, SampleRate::Hz16000) => RateChange::Keep,
        };
        Self {
            input,
            output,
            rate,
            decoded: Vec::new(),
            resampled: Vec::new(),
        }
    }

    /// The format [`Transcoder::transcode`] expects.
    pub fn input_format(&self) -> MediaFormat {
        self.input
    }

    /// The format [`Transcoder::transcode`] produces.
    pub fn output_format(&self) -> MediaFormat {
        self.output
    }

    /// Forgets the resampler history, as if the stream started again (e.g. after the peer
    /// cleared its queued audio), so that the tail of old audio does not leak into new audio.
    pub fn reset(&mut self) {
        match &mut self.rate {
            RateChange::Keep => {}
            RateChange::Up(up) => up.reset(),
            RateChange::Down(down) => down.reset(),
        }
    }

    /// Converts `input` and appends the result to `out`, returning the number of bytes
    /// appended.
    ///
    /// A whole 20 ms input frame gives a whole 20 ms output frame. When downsampling, a piece
    /// with an odd number of samples is carried over correctly to the next call, but the
    /// output of one call can then be a sample shorter or longer than half. Identical formats
    /// are copied through unchanged. Mu-law to A-law (and back) goes through linear samples,
    /// which can differ from the G.711 direct conversion table by one step on a few codes.
    ///
    /// # Errors
    ///
    /// [`CodecError::OddByteCount`] if the input is L16 and not a whole number of samples;
    /// nothing is appended and the resampler state is unchanged.
    pub fn transcode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        let input_encoding = self.input.encoding();
        if !input
            .len()
            .is_multiple_of(input_encoding.bytes_per_sample())
        {
            return Err(CodecError::OddByteCount { len: input.len() });
        }
        if self.input == self.output {
            out.extend_from_slice(input);
            return Ok(input.len());
        }

        self.decoded
            .resize(input.len() / input_encoding.bytes_per_sample(), 0);
        input_encoding.decode_into(input, &mut self.decoded)?;

        let samples: &[i16] = match &mut self.rate {
            RateChange::Keep => &self.decoded,
            RateChange::Up(up) => {
                self.resampled
                    .resize(Upsampler::output_len(self.decoded.len()), 0);
                up.process(&self.decoded, &mut self.resampled)?;
                &self.resampled
            }
            RateChange::Down(down) => {
                self.resampled
                    .resize(down.output_len(self.decoded.len()), 0);
                down.process(&self.decoded, &mut self.resampled)?;
                &self.resampled
            }
        };

        let output_encoding = self.output.encoding();
        let start = out.len();
        out.resize(
            start + samples.len() * output_encoding.bytes_per_sample(),
            0,
        );
        match output_encoding.encode_into(samples, &mut out[start..]) {
            Ok(written) => Ok(written),
            Err(error) => {
                // Unreachable as the buffer was sized above, but never leave filler behind.
                out.truncate(start);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, FRAME_DURATION};

    const FORMATS: [MediaFormat; 4] = [
        MediaFormat::MULAW_8K,
        MediaFormat::ALAW_8K,
        MediaFormat::L16_8K,
        MediaFormat::L16_16K,
    ];

    const AMPLITUDE: f64 = 10_000.0;

    /// One second of a 1 kHz tone, encoded in `format`.
    fn tone_in(format: MediaFormat) -> Vec<u8> {
        let rate = f64::from(format.sample_rate().hz());
        let samples: Vec<i16> = (0..format.sample_rate().hz())
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * 1000.0 * f64::from(n) / rate;
                (AMPLITUDE * phase.sin()).round() as i16
            })
            .collect();
        let mut bytes = vec![0; samples.len() * format.encoding().bytes_per_sample()];
        format
            .encoding()
            .encode_into(&samples, &mut bytes)
            .expect("sized output");
        bytes
    }

    fn decode(format: MediaFormat, bytes: &[u8]) -> Vec<i16> {
        let mut samples = vec![0; bytes.len() / format.encoding().bytes_per_sample()];
        format
            .encoding()
            .decode_into(bytes, &mut samples)
            .expect("whole samples");
        samples
    }

    #[test]
    fn every_pair_of_formats_keeps_frames_and_the_tone() {
        for input in FORMATS {
            for output in FORMATS {
                let stream = tone_in(input);
                let mut transcoder = Transcoder::new(input, output);
                let mut out = Vec::new();
                for frame in stream.chunks(input.bytes_per_frame()) {
                    let before = out.len();
                    let written = transcoder.transcode(frame, &mut out).expect("valid frame");
                    assert_eq!(written, output.bytes_per_frame(), "{input} -> {output}");
                    assert_eq!(out.len() - before, written, "{input} -> {output}");
                }
                assert_eq!(
                    output.duration_of(out.len()),
                    input.duration_of(stream.len()),
                    "{input} -> {output}"
                );

                // Skip the first frame (resampler start-up), then compare levels.
                let samples = decode(output, &out);
                let settled = &samples[output.samples_per_frame()..];
                let energy: f64 = settled.iter().map(|&s| f64::from(s).powi(2)).sum();
                let rms = (energy / settled.len() as f64).sqrt();
                let gain_db = 20.0 * (rms / (AMPLITUDE / 2_f64.sqrt())).log10();
                assert!(gain_db.abs() < 0.5, "{input} -> {output}: {gain_db:.3} dB");
            }
        }
    }

    #[test]
    fn same_format_is_copied_through() {
        for format in FORMATS {
            let stream = tone_in(format);
            let mut out = vec![1, 2, 3];
            let written = Transcoder::new(format, format)
                .transcode(&stream, &mut out)
                .expect("valid input");
            assert_eq!(written, stream.len());
            assert_eq!(out[..3], [1, 2, 3], "appends");
            assert_eq!(out[3..], stream[..], "{format}");
        }
    }

    #[test]
    fn frames_give_the_same_output_as_one_call() {
        for (input, output) in [
            (MediaFormat::MULAW_8K, MediaFormat::L16_16K),
            (MediaFormat::L16_16K, MediaFormat::MULAW_8K),
            (MediaFormat::L16_16K, MediaFormat::L16_8K),
        ] {
            let stream = tone_in(input);
            let mut whole = Vec::new();
            Transcoder::new(input, output)
                .transcode(&stream, &mut whole)
                .expect("valid input");
            let mut framed = Vec::new();
            let mut transcoder = Transcoder::new(input, output);
            for frame in stream.chunks(input.bytes_for(FRAME_DURATION)) {
                transcoder
                    .transcode(frame, &mut framed)
                    .expect("valid frame");
            }
            assert_eq!(framed, whole, "{input} -> {output}");
        }
    }

    #[test]
    fn known_bytes_mulaw_to_l16() {
        // Mu-law codes to little-endian L16 at the same rate: pinned values.
        let mut transcoder = Transcoder::new(MediaFormat::MULAW_8K, MediaFormat::L16_8K);
        let mut out = Vec::new();
        transcoder
            .transcode(&[0xFF, 0x7F, 0x00, 0x80], &mut out)
            .expect("valid input");
        // 0, 0, -32124 (0x8284), 32124 (0x7D7C)
        assert_eq!(out, [0x00, 0x00, 0x00, 0x00, 0x84, 0x82, 0x7C, 0x7D]);
    }

    #[test]
    fn odd_l16_input_is_refused_without_side_effects() {
        let mut transcoder = Transcoder::new(MediaFormat::L16_16K, MediaFormat::MULAW_8K);
        let mut out = vec![9];
        assert_eq!(
            transcoder.transcode(&[0; 641], &mut out),
            Err(CodecError::OddByteCount { len: 641 })
        );
        assert_eq!(out, [9]);
        // Same-format copies check too: an odd L16 payload is malformed either way.
        let mut same = Transcoder::new(MediaFormat::L16_8K, MediaFormat::L16_8K);
        assert_eq!(
            same.transcode(&[0; 3], &mut out),
            Err(CodecError::OddByteCount { len: 3 })
        );
    }

    #[test]
    fn reset_forgets_history() {
        let stream = tone_in(MediaFormat::MULAW_8K);
        let frame = &stream[..160];
        let mut transcoder = Transcoder::new(MediaFormat::MULAW_8K, MediaFormat::L16_16K);
        let mut first = Vec::new();
        transcoder
            .transcode(frame, &mut first)
            .expect("valid frame");
        transcoder.reset();
        let mut again = Vec::new();
        transcoder
            .transcode(frame, &mut again)
            .expect("valid frame");
        assert_eq!(again, first);
        assert_eq!(transcoder.input_format().encoding(), Encoding::Mulaw);
        assert_eq!(transcoder.output_format(), MediaFormat::L16_16K);
    }
}
