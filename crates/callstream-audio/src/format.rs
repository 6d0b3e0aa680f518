//! Media formats: which encoding at which sample rate, and the content-type strings that name
//! them on the wire.
//!
//! The stream API names a format in two shapes: one string with a parameter
//! (`audio/x-l16;rate=16000`, in the stream-create request) or a media type plus a separate
//! `sampleRate` field (`start.mediaFormat` and `playAudio.media`). Plivo sends that field as a
//! JSON number and Twilio as a string, so [`RateValue`] takes either. The supported set is the one
//! the stream API documents, L16 at 8 or 16 kHz and mu-law at 8 kHz, plus A-law at 8 kHz for
//! trunks that use it; anything else is refused with a [`FormatError`] that says which part was
//! wrong.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{CodecError, g711, l16};

/// Length of one frame: the packetisation interval of telephony audio and of every provider's
/// stream.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// Frames per second at [`FRAME_DURATION`].
const FRAMES_PER_SECOND: usize = 50;

/// Longest piece of caller input an error message repeats, so that a hostile content type
/// cannot make log lines arbitrarily large.
const MAX_ECHOED_CHARS: usize = 64;

/// Why a media format was refused. All variants are client errors: the peer named a format this
/// gateway does not speak, and resending the same request will fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The media type before any `;` is not one of the supported encodings.
    #[error(
        "unknown audio encoding {media_type:?}: expected audio/x-l16, audio/x-mulaw or audio/x-alaw"
    )]
    UnknownEncoding {
        /// The media type as given (trimmed, shortened if long).
        media_type: String,
    },
    /// A sample rate was not a non-negative integer.
    #[error("sample rate {value:?} is not a whole number of hertz")]
    MalformedRate {
        /// The rate as given (trimmed, shortened if long).
        value: String,
    },
    /// The rate is a number but this encoding is not supported at it.
    #[error(
        "sample rate {hz} Hz is not supported for {encoding}: \
         audio/x-l16 takes 8000 or 16000, audio/x-mulaw and audio/x-alaw take 8000"
    )]
    UnsupportedRate {
        /// The encoding the rate was given for.
        encoding: Encoding,
        /// The rate that was asked for.
        hz: u64,
    },
    /// L16 was named without any rate. G.711 implies 8000 Hz, but L16 exists at both supported
    /// rates and guessing wrong would play audio at half or double speed.
    #[error("no sample rate given for {encoding}")]
    MissingRate {
        /// The encoding that needs a rate.
        encoding: Encoding,
    },
    /// The content type's `rate` parameter and the separate sample rate field disagree.
    #[error("content type says rate={in_content_type} but the sample rate field says {separate}")]
    ConflictingRates {
        /// The `rate` parameter of the content type.
        in_content_type: u64,
        /// The separately given sample rate.
        separate: u64,
    },
    /// A `;`-separated parameter is not `name=value`, or `rate` appears twice.
    #[error("malformed content-type parameter {parameter:?}")]
    MalformedParameter {
        /// The parameter as given (trimmed, shortened if long).
        parameter: String,
    },
    /// The `channels` parameter asked for anything but mono.
    #[error("only mono audio is supported, got channels={value:?}")]
    UnsupportedChannels {
        /// The `channels` value as given (trimmed, shortened if long).
        value: String,
    },
}

/// Copies at most [`MAX_ECHOED_CHARS`] characters of caller input into an error.
fn echo(input: &str) -> String {
    match input.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

// === impl Encoding ===

/// How samples are represented in the payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// G.711 mu-law, one byte per sample (`audio/x-mulaw`).
    Mulaw,
    /// G.711 A-law, one byte per sample (`audio/x-alaw`).
    Alaw,
    /// 16-bit linear PCM in [`l16::STREAM_BYTE_ORDER`], two bytes per sample (`audio/x-l16`).
    L16,
}

impl Encoding {
    /// The media type this crate writes for the encoding, as the stream API spells it.
    pub const fn media_type(self) -> &'static str {
        match self {
            Self::Mulaw => "audio/x-mulaw",
            Self::Alaw => "audio/x-alaw",
            Self::L16 => "audio/x-l16",
        }
    }

    /// Parses a bare media type, ignoring ASCII case and surrounding spaces.
    ///
    /// Besides the `audio/x-*` names it accepts the unprefixed IANA names (`audio/l16`,
    /// `audio/pcmu`, `audio/pcma`) and `audio/mulaw`/`audio/alaw`, which SDKs emit.
    ///
    /// # Errors
    ///
    /// [`FormatError::UnknownEncoding`] for anything else, including a string with parameters.
    pub fn from_media_type(media_type: &str) -> Result<Self, FormatError> {
        const NAMES: &[(&str, Encoding)] = &[
            ("audio/x-l16", Encoding::L16),
            ("audio/l16", Encoding::L16),
            ("audio/x-mulaw", Encoding::Mulaw),
            ("audio/mulaw", Encoding::Mulaw),
            ("audio/pcmu", Encoding::Mulaw),
            ("audio/x-alaw", Encoding::Alaw),
            ("audio/alaw", Encoding::Alaw),
            ("audio/pcma", Encoding::Alaw),
        ];
        let media_type = media_type.trim();
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(media_type))
            .map(|&(_, encoding)| encoding)
            .ok_or_else(|| FormatError::UnknownEncoding {
                media_type: echo(media_type),
            })
    }

    /// Bytes each sample takes in the payload.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::Mulaw | Self::Alaw => 1,
            Self::L16 => l16::BYTES_PER_SAMPLE,
        }
    }

    /// A byte that, repeated, encodes silence (for padding a short last frame).
    pub const fn silence_byte(self) -> u8 {
        match self {
            Self::Mulaw => 0xFF,
            Self::Alaw => 0xD5,
            Self::L16 => 0x00,
        }
    }

    /// Decodes a payload in this encoding into the front of `out` and returns the number of
    /// samples written. L16 is read in [`l16::STREAM_BYTE_ORDER`].
    ///
    /// # Errors
    ///
    /// [`CodecError::OddByteCount`] for an L16 payload of odd length,
    /// [`CodecError::OutputTooShort`] if `out` cannot hold the samples.
    pub fn decode_into(self, bytes: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        match self {
            Self::Mulaw => g711::decode_mulaw_into(bytes, out),
            Self::Alaw => g711::decode_alaw_into(bytes, out),
            Self::L16 => l16::decode_into(bytes, l16::STREAM_BYTE_ORDER, out),
        }
    }

    /// Encodes `samples` in this encoding into the front of `out` and returns the number of
    /// bytes written. L16 is written in [`l16::STREAM_BYTE_ORDER`].
    ///
    /// # Errors
    ///
    /// [`CodecError::OutputTooShort`] if `out` cannot hold the encoded bytes.
    pub fn encode_into(self, samples: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            Self::Mulaw => g711::encode_mulaw_into(samples, out),
            Self::Alaw => g711::encode_alaw_into(samples, out),
            Self::L16 => l16::encode_into(samples, l16::STREAM_BYTE_ORDER, out),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.media_type())
    }
}

impl FromStr for Encoding {
    type Err = FormatError;

    fn from_str(media_type: &str) -> Result<Self, Self::Err> {
        Self::from_media_type(media_type)
    }
}

// === impl SampleRate ===

/// The sample rates the gateway handles: narrowband telephony and wideband.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleRate {
    /// 8000 Hz.
    Hz8000,
    /// 16000 Hz.
    Hz16000,
}

impl SampleRate {
    /// The rate in hertz.
    pub const fn hz(self) -> u32 {
        match self {
            Self::Hz8000 => 8000,
            Self::Hz16000 => 16000,
        }
    }

    /// The supported rate with this many hertz, if there is one.
    pub const fn from_hz(hz: u64) -> Option<Self> {
        match hz {
            8000 => Some(Self::Hz8000),
            16000 => Some(Self::Hz16000),
            _ => None,
        }
    }

    /// Samples in one [`FRAME_DURATION`] frame: 160 or 320.
    pub const fn samples_per_frame(self) -> usize {
        self.hz() as usize / FRAMES_PER_SECOND
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

// === impl RateValue ===

/// A sample rate as it arrived in a JSON field: Plivo sends a number (`"sampleRate": 8000`),
/// Twilio a string (`"sampleRate": "8000"`). The protocol layer wraps whichever it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateValue<'a> {
    /// A JSON number that is a non-negative integer.
    Number(u64),
    /// A JSON string that should hold a decimal integer; surrounding spaces are ignored.
    Text(&'a str),
}

impl RateValue<'_> {
    /// The rate in hertz, whether or not it is supported.
    ///
    /// # Errors
    ///
    /// [`FormatError::MalformedRate`] if the text is not a decimal integer.
    pub fn hz(self) -> Result<u64, FormatError> {
        match self {
            Self::Number(hz) => Ok(hz),
            Self::Text(text) => parse_hz(text),
        }
    }
}

impl From<u64> for RateValue<'_> {
    fn from(hz: u64) -> Self {
        Self::Number(hz)
    }
}

impl<'a> From<&'a str> for RateValue<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(text)
    }
}

fn parse_hz(text: &str) -> Result<u64, FormatError> {
    let text = text.trim();
    text.parse()
        .map_err(|_| FormatError::MalformedRate { value: echo(text) })
}

// === impl MediaFormat ===

/// An encoding at a sample rate, always one of the supported combinations.
///
/// The fields are private so that a `MediaFormat` in hand is known to be valid: build one with
/// the constants, [`MediaFormat::new`], [`MediaFormat::parse`] or [`MediaFormat::from_parts`].
/// It displays as its canonical content type, e.g. `audio/x-l16;rate=16000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaFormat {
    encoding: Encoding,
    sample_rate: SampleRate,
}

impl MediaFormat {
    /// `audio/x-mulaw;rate=8000`: what Twilio streams and the usual phone-line format.
    pub const MULAW_8K: Self = Self {
        encoding: Encoding::Mulaw,
        sample_rate: SampleRate::Hz8000,
    };
    /// `audio/x-alaw;rate=8000`.
    pub const ALAW_8K: Self = Self {
        encoding: Encoding::Alaw,
        sample_rate: SampleRate::Hz8000,
    };
    /// `audio/x-l16;rate=8000`: the stream API's default.
    pub const L16_8K: Self = Self {
        encoding: Encoding::L16,
        sample_rate: SampleRate::Hz8000,
    };
    /// `audio/x-l16;rate=16000`: wideband, what speech services prefer.
    pub const L16_16K: Self = Self {
        encoding: Encoding::L16,
        sample_rate: SampleRate::Hz16000,
    };

    /// Pairs an encoding with a rate.
    ///
    /// # Errors
    ///
    /// [`FormatError::UnsupportedRate`] for G.711 at 16 kHz, which no telephony peer sends.
    pub fn new(encoding: Encoding, sample_rate: SampleRate) -> Result<Self, FormatError> {
        match (encoding, sample_rate) {
            (Encoding::L16, _) | (Encoding::Mulaw | Encoding::Alaw, SampleRate::Hz8000) => {
                Ok(Self {
                    encoding,
                    sample_rate,
                })
            }
            (Encoding::Mulaw | Encoding::Alaw, SampleRate::Hz16000) => {
                Err(FormatError::UnsupportedRate {
                    encoding,
                    hz: u64::from(sample_rate.hz()),
                })
            }
        }
    }

    /// Parses a content type such as `audio/x-l16;rate=16000` or `Audio/X-MULAW; rate=8000`.
    ///
    /// Same rules as [`MediaFormat::from_parts`] without a separate rate.
    ///
    /// # Errors
    ///
    /// See [`MediaFormat::from_parts`].
    pub fn parse(content_type: &str) -> Result<Self, FormatError> {
        Self::from_parts(content_type, None)
    }

    /// Builds a format from a content type and an optional separate sample rate field, as in
    /// `{"contentType": "audio/x-l16", "sampleRate": 16000}`.
    ///
    /// Matching ignores ASCII case and spaces around `;` and `=`. Parameters are `rate` (hertz),
    /// `channels` (must be 1) and anything else, which is ignored as RFC 2045 allows. The rate
    /// may come from `rate=`, from `sample_rate`, or both if they agree; with neither, G.711
    /// means 8000 Hz and L16 is an error.
    ///
    /// # Errors
    ///
    /// - [`FormatError::UnknownEncoding`]: the media type is not a supported encoding.
    /// - [`FormatError::MalformedParameter`]: a parameter without `=`, or `rate` twice.
    /// - [`FormatError::MalformedRate`]: a rate that is not a whole number.
    /// - [`FormatError::ConflictingRates`]: `rate=` and `sample_rate` differ.
    /// - [`FormatError::MissingRate`]: L16 with no rate at all.
    /// - [`FormatError::UnsupportedRate`]: a rate other than 8000/16000, or G.711 at 16000.
    /// - [`FormatError::UnsupportedChannels`]: `channels` other than 1.
    pub fn from_parts(
        content_type: &str,
        sample_rate: Option<RateValue<'_>>,
    ) -> Result<Self, FormatError> {
        let mut parts = content_type.split(';');
        let encoding = Encoding::from_media_type(parts.next().unwrap_or_default())?;

        let mut in_content_type = None;
        for parameter in parts.map(str::trim) {
            // A trailing `;` is common in hand-written content types and harmless.
            if parameter.is_empty() {
                continue;
            }
            let malformed = || FormatError::MalformedParameter {
                parameter: echo(parameter),
            };
            let (name, value) = parameter.split_once('=').ok_or_else(malformed)?;
            let (name, value) = (name.trim(), unquote(value.trim()));
            if name.eq_ignore_ascii_case("rate") {
                if in_content_type.is_some() {
                    return Err(malformed());
                }
                in_content_type = Some(parse_hz(value)?);
            } else if name.eq_ignore_ascii_case("channels") && value != "1" {
                return Err(FormatError::UnsupportedChannels { value: echo(value) });
            }
        }

        let separate = sample_rate.map(RateValue::hz).transpose()?;
        let hz = match (in_content_type, separate) {
            (Some(in_content_type), Some(separate)) if in_content_type != separate => {
                return Err(FormatError::ConflictingRates {
                    in_content_type,
                    separate,
                });
            }
            (Some(hz), _) | (None, Some(hz)) => hz,
            (None, None) => match encoding {
                Encoding::Mulaw | Encoding::Alaw => u64::from(SampleRate::Hz8000.hz()),
                Encoding::L16 => return Err(FormatError::MissingRate { encoding }),
            },
        };
        let sample_rate =
            SampleRate::from_hz(hz).ok_or(FormatError::UnsupportedRate { encoding, hz })?;
        Self::new(encoding, sample_rate)
    }

    /// The encoding.
    pub const fn encoding(self) -> Encoding {
        self.encoding
    }

    /// The sample rate.
    pub const fn sample_rate(self) -> SampleRate {
        self.sample_rate
    }

    /// Samples in one 20 ms frame: 160 at 8 kHz, 320 at 16 kHz.
    pub const fn samples_per_frame(self) -> usize {
        self.sample_rate.samples_per_frame()
    }

    /// Bytes in one 20 ms frame: 160 for G.711, 320 for L16 at 8 kHz, 640 for L16 at 16 kHz.
    pub const fn bytes_per_frame(self) -> usize {
        self.samples_per_frame() * self.encoding.bytes_per_sample()
    }

    /// Bytes holding `duration` of audio, rounded down to whole samples.
    pub fn bytes_for(self, duration: Duration) -> usize {
        let samples = duration.as_nanos() * u128::from(self.sample_rate.hz()) / 1_000_000_000;
        let bytes = samples.saturating_mul(self.encoding.bytes_per_sample() as u128);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Playing time of `byte_len` bytes; a trailing partial sample counts for nothing.
    ///
    /// The gateway paces outbound audio by this, so that audio is never sent faster than real
    /// time.
    pub fn duration_of(self, byte_len: usize) -> Duration {
        let samples = (byte_len / self.encoding.bytes_per_sample()) as u64;
        let hz = u64::from(self.sample_rate.hz());
        // Split into whole seconds and the rest so that no intermediate product can overflow.
        Duration::from_secs(samples / hz) + Duration::from_nanos(samples % hz * 1_000_000_000 / hz)
    }
}

/// Strips one pair of double quotes, which RFC 2045 allows around parameter values.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value)
}

impl fmt::Display for MediaFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};rate={}", self.encoding, self.sample_rate.hz())
    }
}

impl FromStr for MediaFormat {
    type Err = FormatError;

    fn from_str(content_type: &str) -> Result<Self, Self::Err> {
        Self::parse(content_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(media_type: &str) -> FormatError {
        FormatError::UnknownEncoding {
            media_type: media_type.to_owned(),
        }
    }

    fn unsupported(encoding: Encoding, hz: u64) -> FormatError {
        FormatError::UnsupportedRate { encoding, hz }
    }

    #[test]
    fn parse_content_types() {
        let cases: &[(&str, Result<MediaFormat, FormatError>)] = &[
            ("audio/x-l16;rate=8000", Ok(MediaFormat::L16_8K)),
            ("audio/x-l16;rate=16000", Ok(MediaFormat::L16_16K)),
            ("audio/x-mulaw;rate=8000", Ok(MediaFormat::MULAW_8K)),
            ("audio/x-alaw;rate=8000", Ok(MediaFormat::ALAW_8K)),
            ("Audio/X-L16; Rate=16000", Ok(MediaFormat::L16_16K)),
            ("  audio/x-l16 ; rate = 16000 ", Ok(MediaFormat::L16_16K)),
            ("audio/x-l16;rate=\"16000\"", Ok(MediaFormat::L16_16K)),
            ("audio/x-l16;rate=8000;", Ok(MediaFormat::L16_8K)),
            ("audio/x-l16;channels=1;rate=8000", Ok(MediaFormat::L16_8K)),
            ("audio/x-l16;rate=8000;foo=bar", Ok(MediaFormat::L16_8K)),
            ("audio/l16;rate=16000", Ok(MediaFormat::L16_16K)),
            ("audio/PCMU", Ok(MediaFormat::MULAW_8K)),
            ("audio/x-mulaw", Ok(MediaFormat::MULAW_8K)),
            ("audio/pcma", Ok(MediaFormat::ALAW_8K)),
            (
                "audio/x-l16",
                Err(FormatError::MissingRate {
                    encoding: Encoding::L16,
                }),
            ),
            (
                "audio/x-l16;rate=44100",
                Err(unsupported(Encoding::L16, 44100)),
            ),
            ("audio/x-l16;rate=0", Err(unsupported(Encoding::L16, 0))),
            (
                "audio/x-mulaw;rate=16000",
                Err(unsupported(Encoding::Mulaw, 16000)),
            ),
            (
                "audio/x-alaw;rate=16000",
                Err(unsupported(Encoding::Alaw, 16000)),
            ),
            (
                "audio/x-l16;rate=16k",
                Err(FormatError::MalformedRate {
                    value: "16k".to_owned(),
                }),
            ),
            (
                "audio/x-l16;rate=-8000",
                Err(FormatError::MalformedRate {
                    value: "-8000".to_owned(),
                }),
            ),
            (
                "audio/x-l16;rate",
                Err(FormatError::MalformedParameter {
                    parameter: "rate".to_owned(),
                }),
            ),
            (
                "audio/x-l16;rate=8000;rate=8000",
                Err(FormatError::MalformedParameter {
                    parameter: "rate=8000".to_owned(),
                }),
            ),
            (
                "audio/x-l16;rate=8000;channels=2",
                Err(FormatError::UnsupportedChannels {
                    value: "2".to_owned(),
                }),
            ),
            ("audio/opus;rate=48000", Err(unknown("audio/opus"))),
            (
                "audio/x-l16 rate=8000",
                Err(unknown("audio/x-l16 rate=8000")),
            ),
            ("", Err(unknown(""))),
        ];
        for (content_type, expected) in cases {
            assert_eq!(
                &MediaFormat::parse(content_type),
                expected,
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn parse_with_separate_rate() {
        let cases: &[(
            &str,
            Option<RateValue<'_>>,
            Result<MediaFormat, FormatError>,
        )] = &[
            // Plivo: a number.
            (
                "audio/x-l16",
                Some(RateValue::Number(16000)),
                Ok(MediaFormat::L16_16K),
            ),
            // Twilio: a string.
            (
                "audio/x-mulaw",
                Some(RateValue::Text("8000")),
                Ok(MediaFormat::MULAW_8K),
            ),
            (
                "audio/x-l16",
                Some(RateValue::Text(" 8000 ")),
                Ok(MediaFormat::L16_8K),
            ),
            (
                "audio/x-l16;rate=16000",
                Some(RateValue::Number(16000)),
                Ok(MediaFormat::L16_16K),
            ),
            (
                "audio/x-l16;rate=16000",
                Some(RateValue::Number(8000)),
                Err(FormatError::ConflictingRates {
                    in_content_type: 16000,
                    separate: 8000,
                }),
            ),
            (
                "audio/x-mulaw",
                Some(RateValue::Number(16000)),
                Err(unsupported(Encoding::Mulaw, 16000)),
            ),
            (
                "audio/x-l16",
                Some(RateValue::Text("8000.0")),
                Err(FormatError::MalformedRate {
                    value: "8000.0".to_owned(),
                }),
            ),
            (
                "audio/x-l16",
                Some(RateValue::Number(22050)),
                Err(unsupported(Encoding::L16, 22050)),
            ),
            (
                "audio/wav",
                Some(RateValue::Number(8000)),
                Err(unknown("audio/wav")),
            ),
        ];
        for (content_type, rate, expected) in cases {
            assert_eq!(
                &MediaFormat::from_parts(content_type, *rate),
                expected,
                "{content_type:?} with {rate:?}"
            );
        }
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        let cases = [
            (MediaFormat::MULAW_8K, "audio/x-mulaw;rate=8000"),
            (MediaFormat::ALAW_8K, "audio/x-alaw;rate=8000"),
            (MediaFormat::L16_8K, "audio/x-l16;rate=8000"),
            (MediaFormat::L16_16K, "audio/x-l16;rate=16000"),
        ];
        for (format, text) in cases {
            assert_eq!(format.to_string(), text);
            assert_eq!(text.parse::<MediaFormat>(), Ok(format));
        }
    }

    #[test]
    fn frame_sizes() {
        let cases = [
            (MediaFormat::MULAW_8K, 160, 160),
            (MediaFormat::ALAW_8K, 160, 160),
            (MediaFormat::L16_8K, 160, 320),
            (MediaFormat::L16_16K, 320, 640),
        ];
        for (format, samples, bytes) in cases {
            assert_eq!(format.samples_per_frame(), samples, "{format}");
            assert_eq!(format.bytes_per_frame(), bytes, "{format}");
            assert_eq!(format.bytes_for(FRAME_DURATION), bytes, "{format}");
            assert_eq!(format.duration_of(bytes), FRAME_DURATION, "{format}");
        }
    }

    #[test]
    fn durations() {
        let format = MediaFormat::L16_16K;
        assert_eq!(format.duration_of(0), Duration::ZERO);
        assert_eq!(format.duration_of(1), Duration::ZERO);
        assert_eq!(
            format.duration_of(2),
            Duration::from_micros(62) + Duration::from_nanos(500)
        );
        assert_eq!(format.duration_of(32_000), Duration::from_secs(1));
        assert_eq!(format.bytes_for(Duration::from_secs(1)), 32_000);
        assert_eq!(
            MediaFormat::MULAW_8K.bytes_for(Duration::from_micros(125)),
            1
        );
        assert_eq!(
            MediaFormat::MULAW_8K.bytes_for(Duration::from_micros(124)),
            0
        );
        assert!(MediaFormat::MULAW_8K.duration_of(usize::MAX) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn new_refuses_wideband_g711() {
        assert_eq!(
            MediaFormat::new(Encoding::Mulaw, SampleRate::Hz16000),
            Err(unsupported(Encoding::Mulaw, 16000))
        );
        assert_eq!(
            MediaFormat::new(Encoding::L16, SampleRate::Hz16000),
            Ok(MediaFormat::L16_16K)
        );
    }

    #[test]
    fn errors_do_not_echo_long_input() {
        let long = format!("audio/{}", "x".repeat(10_000));
        let message = MediaFormat::parse(&long)
            .expect_err("unknown encoding")
            .to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn error_messages_name_the_wrong_part() {
        let cases = [
            ("audio/opus", "unknown audio encoding \"audio/opus\""),
            (
                "audio/x-mulaw;rate=16000",
                "16000 Hz is not supported for audio/x-mulaw",
            ),
            (
                "audio/x-l16;rate=abc",
                "sample rate \"abc\" is not a whole number",
            ),
            ("audio/x-l16", "no sample rate given for audio/x-l16"),
        ];
        for (content_type, fragment) in cases {
            let message = MediaFormat::parse(content_type)
                .expect_err(content_type)
                .to_string();
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn encoding_helpers_use_stream_byte_order() {
        let mut bytes = [0_u8; 2];
        assert_eq!(Encoding::L16.encode_into(&[0x0102], &mut bytes), Ok(2));
        assert_eq!(bytes, [0x02, 0x01]);
        let mut samples = [0_i16; 2];
        assert_eq!(
            Encoding::Mulaw.decode_into(&[0x00, 0x80], &mut samples),
            Ok(2)
        );
        assert_eq!(samples, [-32124, 32124]);
        for encoding in [Encoding::Mulaw, Encoding::Alaw, Encoding::L16] {
            let silence = [encoding.silence_byte(); 2];
            let mut decoded = [1_i16; 2];
            encoding
                .decode_into(&silence[..encoding.bytes_per_sample()], &mut decoded)
                .expect("one sample");
            assert!(
                decoded[0].abs() <= 8,
                "{encoding} silence decodes to {}",
                decoded[0]
            );
        }
    }
}
