//! Call audio: the canonical audio frame (one piece of one call's audio on one track) and its
//! binary form, and the domain words of audio streams (tracks, a stream's status).
//!
//! The binary form is to audio what the envelope's JSON is to events: the runtime socket
//! carries it in binary WebSocket messages (both ways), and the bus carries the same frames. It
//! is never JSON: base64 inside JSON costs a third more bytes and a copy per hop, and audio is
//! the bulk of what a call sends.
//!
//! # Binary form (version 1)
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, `1` |
//! | 1 | 1 | track: `0` inbound (from the caller), `1` outbound (played to the caller) |
//! | 2 | 1 | codec: `0` G.711 mu-law, `1` G.711 A-law, `2` L16 (signed 16-bit, little-endian) |
//! | 3 | 1 | length `N` of the call id, 1 to 64 |
//! | 4 | 4 | sample rate in Hz: 8000, or 16000 (L16 only) |
//! | 8 | 8 | timestamp: when the first sample was captured (inbound) or played (outbound), Unix epoch milliseconds |
//! | 16 | N | the call id, ASCII (`call_…`) |
//! | 16 + N | rest | the samples: at least one, a whole number, at most [`MAX_PAYLOAD_BYTES`] |
//!
//! This module decodes and encodes that form and checks it; it does not convert audio (that is
//! `callstream-audio`) or know where frames travel.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::id::CallId;

/// The version byte this module writes and the only one it reads.
pub const VERSION: u8 = 1;
/// Bytes before the call id.
pub const FIXED_HEADER: usize = 16;
/// The most audio one frame may carry: one second of the widest format (L16 at 16 kHz). A
/// runtime sends 20 ms frames (160 to 640 bytes); the bound keeps one message from holding
/// memory that no stream could play in time.
pub const MAX_PAYLOAD_BYTES: usize = 32_000;
/// The longest call id a frame may name (ids are at most 64 characters).
const MAX_CALL_ID: usize = 64;

/// Which way a track's audio travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Track {
    /// What the platform receives from the caller.
    Inbound,
    /// What the platform plays to the caller.
    Outbound,
}

impl Track {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }

    const fn byte(self) -> u8 {
        match self {
            Self::Inbound => 0,
            Self::Outbound => 1,
        }
    }
}

impl fmt::Display for Track {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a frame's samples are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law (PCMU), one byte per sample, 8 kHz.
    Mulaw,
    /// G.711 A-law (PCMA), one byte per sample, 8 kHz.
    Alaw,
    /// Signed 16-bit linear PCM, little-endian, 8 or 16 kHz.
    L16,
}

impl Codec {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Mulaw => "mulaw",
            Self::Alaw => "alaw",
            Self::L16 => "l16",
        }
    }

    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Self::Mulaw | Self::Alaw => 1,
            Self::L16 => 2,
        }
    }

    const fn byte(self) -> u8 {
        match self {
            Self::Mulaw => 0,
            Self::Alaw => 1,
            Self::L16 => 2,
        }
    }
}

/// One piece of one call's audio on one track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioFrame {
    pub call: CallId,
    pub track: Track,
    pub codec: Codec,
    /// 8000 or 16000.
    pub sample_rate: u32,
    /// Capture (inbound) or play (outbound) time of the first sample, Unix epoch milliseconds.
    pub timestamp_ms: u64,
    /// Whole samples in `codec`.
    pub payload: Bytes,
}

/// Why a binary frame was refused. The message names the field, for the runtime's `error`
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("audio frame: {0} bytes is shorter than the 16-byte header")]
    Short(usize),
    #[error("audio frame: version {0} is not supported (expected 1)")]
    Version(u8),
    #[error("audio frame: track {0} is not 0 (inbound) or 1 (outbound)")]
    Track(u8),
    #[error("audio frame: codec {0} is not 0 (mu-law), 1 (A-law) or 2 (L16)")]
    Codec(u8),
    #[error(
        "audio frame: sample rate {rate} Hz is not supported for {codec} (8000; 16000 for l16 only)"
    )]
    Rate { codec: &'static str, rate: u32 },
    #[error("audio frame: call id length {0} is not 1 to 64")]
    CallIdLength(usize),
    #[error("audio frame: the call id is not a call id (`call_…`)")]
    CallId,
    #[error(
        "audio frame: a payload of {len} bytes is not 1 to {MAX_PAYLOAD_BYTES} bytes of whole {codec} samples"
    )]
    Payload { codec: &'static str, len: usize },
}

impl AudioFrame {
    /// Checks the parts of a frame that the binary form constrains.
    ///
    /// # Errors
    /// The first field that is out of bounds.
    pub fn check(&self) -> Result<(), FrameError> {
        check_rate(self.codec, self.sample_rate)?;
        check_payload(self.codec, self.payload.len())
    }

    /// The frame's binary form.
    pub fn encode(&self) -> Bytes {
        encode(
            &self.call,
            self.track,
            self.codec,
            self.sample_rate,
            self.timestamp_ms,
            &self.payload,
        )
    }

    /// Reads a frame from its binary form. The payload shares `bytes` (no copy).
    ///
    /// # Errors
    /// [`FrameError`] naming the first field that is wrong.
    pub fn decode(bytes: &Bytes) -> Result<Self, FrameError> {
        let header = bytes
            .get(..FIXED_HEADER)
            .ok_or(FrameError::Short(bytes.len()))?;
        if header[0] != VERSION {
            return Err(FrameError::Version(header[0]));
        }
        let track = match header[1] {
            0 => Track::Inbound,
            1 => Track::Outbound,
            other => return Err(FrameError::Track(other)),
        };
        let codec = match header[2] {
            0 => Codec::Mulaw,
            1 => Codec::Alaw,
            2 => Codec::L16,
            other => return Err(FrameError::Codec(other)),
        };
        let id_len = usize::from(header[3]);
        if !(1..=MAX_CALL_ID).contains(&id_len) {
            return Err(FrameError::CallIdLength(id_len));
        }
        let sample_rate = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        check_rate(codec, sample_rate)?;
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&header[8..16]);
        let timestamp_ms = u64::from_le_bytes(stamp);
        let id = bytes
            .get(FIXED_HEADER..FIXED_HEADER + id_len)
            .ok_or(FrameError::Short(bytes.len()))?;
        let id = std::str::from_utf8(id).map_err(|_| FrameError::CallId)?;
        let call = CallId::parse(id).map_err(|_| FrameError::CallId)?;
        let payload = bytes.slice(FIXED_HEADER + id_len..);
        check_payload(codec, payload.len())?;
        Ok(Self {
            call,
            track,
            codec,
            sample_rate,
            timestamp_ms,
            payload,
        })
    }

    /// How long the frame's audio lasts, in milliseconds (rounded down).
    pub fn duration_ms(&self) -> u64 {
        let samples = (self.payload.len() / self.codec.bytes_per_sample()) as u64;
        samples * 1000 / u64::from(self.sample_rate.max(1))
    }
}

/// A frame's binary form from its parts, without building an [`AudioFrame`] (the payload is
/// copied once, into the frame).
pub fn encode(
    call: &CallId,
    track: Track,
    codec: Codec,
    sample_rate: u32,
    timestamp_ms: u64,
    payload: &[u8],
) -> Bytes {
    let id = call.as_str().as_bytes();
    let mut out = BytesMut::with_capacity(FIXED_HEADER + id.len() + payload.len());
    out.put_u8(VERSION);
    out.put_u8(track.byte());
    out.put_u8(codec.byte());
    // Call ids are at most 64 characters (`Id::parse`), so the length fits a byte.
    out.put_u8(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.put_u32_le(sample_rate);
    out.put_u64_le(timestamp_ms);
    out.put_slice(id);
    out.put_slice(payload);
    out.freeze()
}

fn check_rate(codec: Codec, rate: u32) -> Result<(), FrameError> {
    let ok = match codec {
        Codec::Mulaw | Codec::Alaw => rate == 8000,
        Codec::L16 => rate == 8000 || rate == 16000,
    };
    if ok {
        Ok(())
    } else {
        Err(FrameError::Rate {
            codec: codec.as_str(),
            rate,
        })
    }
}

fn check_payload(codec: Codec, len: usize) -> Result<(), FrameError> {
    if len == 0 || len > MAX_PAYLOAD_BYTES || !len.is_multiple_of(codec.bytes_per_sample()) {
        return Err(FrameError::Payload {
            codec: codec.as_str(),
            len,
        });
    }
    Ok(())
}

/// Which tracks an audio stream sends to its service (seed 004's `audio_track`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioTrack {
    Inbound,
    Outbound,
    Both,
}

impl AudioTrack {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Both => "both",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "inbound" => Some(Self::Inbound),
            "outbound" => Some(Self::Outbound),
            "both" => Some(Self::Both),
            _ => None,
        }
    }

    /// Whether this choice includes `track`.
    pub const fn includes(self, track: Track) -> bool {
        matches!(
            (self, track),
            (Self::Both, _) | (Self::Inbound, Track::Inbound) | (Self::Outbound, Track::Outbound)
        )
    }

    /// The tracks, in the order `start.tracks` lists them.
    pub const fn tracks(self) -> &'static [Track] {
        match self {
            Self::Inbound => &[Track::Inbound],
            Self::Outbound => &[Track::Outbound],
            Self::Both => &[Track::Inbound, Track::Outbound],
        }
    }
}

/// Where an audio stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamStatus {
    /// Created; the gateway is connecting to the service (or, after a gateway restart, waits for
    /// the call's audio to flow again before it reconnects).
    Connecting,
    /// Connected: audio flows.
    InProgress,
    /// Ended normally: the call ended, `stream_timeout` passed, or it was deleted.
    Stopped,
    /// Ended by a fault: the service could not be reached, closed the socket, or stopped
    /// reading.
    Dropped,
}

impl StreamStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::InProgress => "in-progress",
            Self::Stopped => "stopped",
            Self::Dropped => "dropped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "connecting" => Some(Self::Connecting),
            "in-progress" => Some(Self::InProgress),
            "stopped" => Some(Self::Stopped),
            "dropped" => Some(Self::Dropped),
            _ => None,
        }
    }

    /// Whether the stream still runs (or will run again once the call's audio flows).
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Connecting | Self::InProgress)
    }
}

impl fmt::Display for StreamStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Mints a stream id: a random (version 4) UUID, as Plivo and Vobiz name streams.
pub fn new_stream_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `text` has the form of a stream id (a UUID in lower-case hex), so that anything else
/// is "not found" before any lookup.
pub fn is_stream_id(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> AudioFrame {
        AudioFrame {
            call: CallId::parse("call_0123456789abcdef01234567").unwrap(),
            track: Track::Outbound,
            codec: Codec::L16,
            sample_rate: 16000,
            timestamp_ms: 1_705_312_200_123,
            payload: Bytes::from(vec![1u8, 2, 3, 4]),
        }
    }

    #[test]
    fn the_binary_form_is_pinned_and_round_trips() {
        let f = frame();
        let bytes = f.encode();
        let mut expect = vec![1u8, 1, 2, 29];
        expect.extend_from_slice(&16000u32.to_le_bytes());
        expect.extend_from_slice(&1_705_312_200_123u64.to_le_bytes());
        expect.extend_from_slice(b"call_0123456789abcdef01234567");
        expect.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(bytes.as_ref(), expect.as_slice());
        assert_eq!(AudioFrame::decode(&bytes), Ok(f.clone()));
        assert_eq!(f.duration_ms(), 0);
        let second = AudioFrame {
            payload: Bytes::from(vec![0u8; 640]),
            ..f
        };
        assert_eq!(second.duration_ms(), 20);
    }

    #[test]
    fn malformed_frames_name_what_is_wrong() {
        let good = frame().encode().to_vec();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            Bytes::from(b)
        };
        let cases: Vec<(Bytes, FrameError)> = vec![
            (Bytes::from_static(&[1, 0, 0]), FrameError::Short(3)),
            (with(0, 2), FrameError::Version(2)),
            (with(1, 7), FrameError::Track(7)),
            (with(2, 9), FrameError::Codec(9)),
            (with(3, 0), FrameError::CallIdLength(0)),
            (with(3, 65), FrameError::CallIdLength(65)),
            (with(3, 40), FrameError::Short(good.len())),
            (
                with(2, 0),
                FrameError::Rate {
                    codec: "mulaw",
                    rate: 16000,
                },
            ),
            (with(16, b'x'), FrameError::CallId),
            (
                with(5, 0x1f),
                FrameError::Rate {
                    codec: "l16",
                    rate: 16000 - 0x3e00 + 0x1f00,
                },
            ),
        ];
        for (bytes, expect) in cases {
            assert_eq!(AudioFrame::decode(&bytes), Err(expect));
        }
        // An odd L16 payload, and none at all.
        let mut odd = good.clone();
        odd.push(9);
        assert!(matches!(
            AudioFrame::decode(&Bytes::from(odd)),
            Err(FrameError::Payload { len: 5, .. })
        ));
        let empty = Bytes::from(good[..good.len() - 4].to_vec());
        assert!(matches!(
            AudioFrame::decode(&empty),
            Err(FrameError::Payload { len: 0, .. })
        ));
        let big = AudioFrame {
            payload: Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES + 2]),
            ..frame()
        };
        assert!(AudioFrame::decode(&big.encode()).is_err());
        assert!(big.check().is_err());
        assert!(frame().check().is_ok());
    }

    #[test]
    fn stream_ids_are_uuids() {
        let id = new_stream_id();
        assert!(is_stream_id(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert_ne!(new_stream_id(), id);
        for bad in [
            "",
            "x",
            "20170ADA-f610-433b-8758-c02a2aab3662",
            "20170ada-f610-433b-8758-c02a2aab366",
            "20170ada_f610_433b_8758_c02a2aab3662",
        ] {
            assert!(!is_stream_id(bad), "{bad}");
        }
        assert!(is_stream_id("20170ada-f610-433b-8758-c02a2aab3662"));
    }

    #[test]
    fn tracks_and_statuses() {
        assert!(AudioTrack::Both.includes(Track::Outbound));
        assert!(!AudioTrack::Inbound.includes(Track::Outbound));
        assert_eq!(
            AudioTrack::Both.tracks(),
            &[Track::Inbound, Track::Outbound]
        );
        for s in [
            StreamStatus::Connecting,
            StreamStatus::InProgress,
            StreamStatus::Stopped,
            StreamStatus::Dropped,
        ] {
            assert_eq!(StreamStatus::parse(s.as_str()), Some(s));
        }
        assert!(!StreamStatus::Dropped.is_active());
        assert_eq!(AudioTrack::parse("both"), Some(AudioTrack::Both));
        assert_eq!(AudioTrack::parse("all"), None);
    }
}
