//! The simulator's call audio: what a real runtime streams for each call, in real time.
//!
//! Each call sends two tracks over the runtime socket, 20 ms mu-law frames at absolute
//! deadlines: `inbound` is the caller, speaking while the script's user turns are spoken, and
//! `outbound` is what the caller hears: the agent's voice while its turns play, and whatever the
//! gateway sends to be played into the call (a bidirectional audio stream's `playAudio`), which
//! the simulator plays, and so reports, as it arrives.
//!
//! The voices are synthesised ([`Voice`]): a glottal pulse train at a speaking pitch through two
//! formant resonators whose vowels change four times a second, in syllables with gaps. Not
//! words, but audio with speech's rhythm, spectrum and loudness, which is what a pipeline of
//! codecs, resamplers and pacers needs to be exercised with. A WAV file can stand in for the
//! caller instead ([`Source::wav`]).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callstream_audio::g711;
use callstream_core::CallId;
use callstream_core::audio::{AudioFrame, Codec, Track};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::script::CallPlan;

/// Samples per second of the simulated calls (telephony's).
pub const RATE: u32 = 8000;
/// Samples in one 20 ms frame.
pub const FRAME: usize = 160;
/// Frames of played audio a call buffers before it drops the oldest (a second).
const PLAYBACK_BUFFER: usize = 50;

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The caller: the `inbound` track.
    User,
    /// The voice agent: the `outbound` track.
    Agent,
}

/// When someone speaks, from the call's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub speaker: Speaker,
    pub start: Duration,
    pub end: Duration,
}

/// The voiced spans of a plan played at `speed`: a user turn from a moment before its first
/// partial transcript to its final one, an agent turn from its transcript to its
/// `call.tts_completed`.
pub fn spans(plan: &CallPlan, speed: f64) -> Vec<Span> {
    let mut at = Duration::ZERO;
    let mut spans = Vec::new();
    let mut user_from: Option<Duration> = None;
    let mut agent_from: Option<(String, Duration)> = None;
    for step in &plan.steps {
        at += crate::scaled(step.delay, speed);
        for event in &step.events {
            let payload = &event["payload"];
            match (event["event_type"].as_str(), payload["role"].as_str()) {
                (Some("call.transcription"), Some("user")) => {
                    if payload["is_final"] == false {
                        // Speech started a little before the first words were recognised.
                        user_from.get_or_insert(
                            at.saturating_sub(crate::scaled(Duration::from_millis(400), speed)),
                        );
                    } else {
                        let start = user_from.take().unwrap_or(
                            at.saturating_sub(crate::scaled(Duration::from_secs(1), speed)),
                        );
                        spans.push(Span {
                            speaker: Speaker::User,
                            start,
                            end: at,
                        });
                    }
                }
                (Some("call.transcription"), Some("agent")) => {
                    let turn = payload["turn_id"].as_str().unwrap_or_default().to_owned();
                    agent_from = Some((turn, at));
                }
                (Some("call.tts_completed"), _) => {
                    if let Some((turn, start)) = agent_from.take()
                        && payload["turn_id"].as_str() == Some(turn.as_str())
                    {
                        spans.push(Span {
                            speaker: Speaker::Agent,
                            start,
                            end: at,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    spans
}

fn speaking(spans: &[Span], speaker: Speaker, t: Duration) -> bool {
    spans
        .iter()
        .any(|s| s.speaker == speaker && s.start <= t && t < s.end)
}

// === impl Voice ===

/// A two-pole resonator: one formant.
#[derive(Debug, Clone, Default)]
struct Resonator {
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn run(&mut self, x: f64, hz: f64, bandwidth: f64) -> f64 {
        let r = (-std::f64::consts::PI * bandwidth / f64::from(RATE)).exp();
        let a1 = 2.0 * r * (2.0 * std::f64::consts::PI * hz / f64::from(RATE)).cos();
        let a2 = -r * r;
        let y = (1.0 - r) * x + a1 * self.y1 + a2 * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// (F1, F2) of a few vowels, in hertz.
const VOWELS: [(f64, f64); 6] = [
    (730.0, 1090.0),
    (270.0, 2290.0),
    (530.0, 1840.0),
    (570.0, 840.0),
    (300.0, 870.0),
    (660.0, 1720.0),
];
/// Syllables per second.
const SYLLABLE_RATE: f64 = 4.2;

/// A synthesised speaking voice: 8 kHz samples, silence (a faint noise floor) unless told to
/// speak.
#[derive(Debug, Clone)]
pub struct Voice {
    pitch: f64,
    phase: f64,
    /// Samples since the voice began, for the syllable rhythm.
    t: u64,
    f1: Resonator,
    f2: Resonator,
    vowel: usize,
    rng: StdRng,
}

impl Voice {
    /// A voice at `pitch` hertz (about 110 for a low voice, 210 for a high one).
    pub fn new(pitch: f64, seed: u64) -> Self {
        Self {
            pitch,
            phase: 0.0,
            t: 0,
            f1: Resonator::default(),
            f2: Resonator::default(),
            vowel: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The next `out.len()` samples, speaking or not.
    pub fn fill(&mut self, speak: bool, out: &mut [i16]) {
        let syllable_len = f64::from(RATE) / SYLLABLE_RATE;
        for sample in out.iter_mut() {
            let in_syllable = (self.t as f64 % syllable_len) / syllable_len;
            if in_syllable < 1.0 / syllable_len {
                self.vowel = self.rng.random_range(0..VOWELS.len());
            }
            self.t += 1;
            let noise = self.rng.random_range(-1.0..1.0);
            if !speak {
                // A faint line noise, as a real call has: never digital zero.
                *sample = (noise * 6.0) as i16;
                continue;
            }
            // Syllables: a smooth swell over 80 % of the syllable, a short gap after it.
            let envelope = if in_syllable < 0.8 {
                (std::f64::consts::PI * in_syllable / 0.8).sin().powi(2)
            } else {
                0.0
            };
            // Pitch drifts a little, as intonation does.
            let t = self.t as f64 / f64::from(RATE);
            let pitch = self.pitch * (1.0 + 0.06 * (2.0 * std::f64::consts::PI * 0.7 * t).sin());
            self.phase += pitch / f64::from(RATE);
            let glottal = if self.phase >= 1.0 {
                self.phase -= 1.0;
                1.0
            } else {
                0.0
            };
            let source = glottal * 3000.0 + noise * 40.0;
            let (f1, f2) = VOWELS[self.vowel];
            let voiced = self.f1.run(source, f1, 90.0) * 1.6 + self.f2.run(source, f2, 120.0);
            *sample = (voiced * envelope * 30.0).clamp(-20_000.0, 20_000.0) as i16;
        }
    }
}

// === impl Source ===

/// Where the caller's voice comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Synthesised ([`Voice`]).
    Synth,
    /// A recording at 8 kHz, looped, played while the caller speaks.
    Recording(Arc<Vec<i16>>),
}

impl Source {
    /// Reads a WAV file: mono, 16-bit, at 8 or 16 kHz (16 kHz is resampled to 8).
    ///
    /// # Errors
    /// When the file cannot be read or has another format; the message says which.
    pub fn wav(path: &Path) -> Result<Self, String> {
        let mut reader =
            hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = reader.spec();
        if spec.channels != 1
            || spec.bits_per_sample != 16
            || spec.sample_format != hound::SampleFormat::Int
            || !matches!(spec.sample_rate, 8000 | 16000)
        {
            return Err(format!(
                "{}: expected mono 16-bit PCM at 8000 or 16000 Hz, found {} channel(s), {}-bit, {} Hz",
                path.display(),
                spec.channels,
                spec.bits_per_sample,
                spec.sample_rate
            ));
        }
        let samples: Vec<i16> = reader
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if samples.is_empty() {
            return Err(format!("{}: no audio", path.display()));
        }
        let samples = if spec.sample_rate == 16000 {
            let mut down = callstream_audio::Downsampler::new();
            let mut out = vec![0i16; down.output_len(samples.len())];
            let n = down
                .process(&samples, &mut out)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            out.truncate(n);
            out
        } else {
            samples
        };
        Ok(Self::Recording(Arc::new(samples)))
    }
}

// === the per-call audio task ===

/// Audio frames from the gateway to play into a call.
pub type Playback = mpsc::Receiver<Bytes>;

/// How a call's audio reaches the gateway.
pub trait Uplink: Send + Sync + 'static {
    /// Sends one frame; `false` when it could not be sent (the socket is down).
    fn send(&self, frame: AudioFrame) -> bool;
}

/// Plays a call's two tracks until `stop`, in real time from `start`.
pub async fn play_call(
    call: CallId,
    spans: Vec<Span>,
    source: Source,
    seed: u64,
    uplink: Arc<dyn Uplink>,
    mut playback: Playback,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut caller = Voice::new(rng.random_range(105.0..220.0), seed);
    let mut agent = Voice::new(rng.random_range(150.0..230.0), seed ^ 0x5eed);
    let mut recording_at = 0usize;
    let mut queued: VecDeque<Bytes> = VecDeque::new();
    let mut inbound = [0i16; FRAME];
    let mut outbound = [0i16; FRAME];
    let start = Instant::now();
    // Capture times on the same 20 ms grid as the frames (the wall clock read at each wake-up
    // would jitter with the wake-up).
    let start_ms = u64::try_from(callstream_core::time::now().timestamp_millis()).unwrap_or(0);
    for k in 0u32.. {
        let due = start + Duration::from_millis(20) * k;
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(due) => {}
        }
        // Audio the gateway sent to be played, taken as it arrived.
        while let Ok(frame) = playback.try_recv() {
            if queued.len() == PLAYBACK_BUFFER {
                queued.pop_front();
            }
            queued.push_back(frame);
        }
        let t = Duration::from_millis(20) * k;
        let user_speaks = speaking(&spans, Speaker::User, t);
        match &source {
            Source::Synth => caller.fill(user_speaks, &mut inbound),
            Source::Recording(samples) => {
                if user_speaks {
                    for s in &mut inbound {
                        *s = samples[recording_at % samples.len()];
                        recording_at += 1;
                    }
                } else {
                    caller.fill(false, &mut inbound);
                }
            }
        }
        agent.fill(speaking(&spans, Speaker::Agent, t), &mut outbound);
        let now_ms = start_ms + 20 * u64::from(k);
        let inbound_frame = AudioFrame {
            call: call.clone(),
            track: Track::Inbound,
            codec: Codec::Mulaw,
            sample_rate: RATE,
            timestamp_ms: now_ms,
            payload: encode(&inbound),
        };
        // What the caller hears: the agent's voice, and the played audio over it.
        let heard = match queued.pop_front() {
            Some(played) if played.len() == FRAME => {
                let mixed: Vec<i16> = played
                    .iter()
                    .zip(outbound.iter())
                    .map(|(p, a)| g711::decode_mulaw(*p).saturating_add(*a))
                    .collect();
                encode(&mixed)
            }
            _ => encode(&outbound),
        };
        let outbound_frame = AudioFrame {
            track: Track::Outbound,
            payload: heard,
            ..inbound_frame.clone()
        };
        if !uplink.send(inbound_frame) || !uplink.send(outbound_frame) {
            // The socket is down; the call goes on, and so does the clock.
            continue;
        }
    }
}

fn encode(samples: &[i16]) -> Bytes {
    Bytes::from(
        samples
            .iter()
            .map(|s| g711::encode_mulaw(*s))
            .collect::<Vec<u8>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn a_voice_is_loud_with_speech_rhythm_when_it_speaks_and_faint_otherwise() {
        let mut voice = Voice::new(140.0, 7);
        let mut quiet = vec![0i16; 8000];
        voice.fill(false, &mut quiet);
        let mut speech = vec![0i16; 8000];
        voice.fill(true, &mut speech);
        let (quiet, loud) = (rms(&quiet), rms(&speech));
        assert!(quiet > 0.0 && quiet < 10.0, "noise floor {quiet}");
        assert!(loud > 800.0 && loud < 12_000.0, "speech level {loud}");
        // Syllables: the loudness of 20 ms frames rises and falls, with near-silent gaps.
        let frames: Vec<f64> = speech.chunks(160).map(rms).collect();
        let gaps = frames.iter().filter(|r| **r < loud / 10.0).count();
        let peaks = frames.iter().filter(|r| **r > loud).count();
        assert!(
            gaps >= 4 && peaks >= 8,
            "{gaps} gaps, {peaks} peaks in {frames:?}"
        );
    }

    #[test]
    fn spans_follow_the_scripts_turns() {
        let plan = crate::script::script(3);
        let spans = spans(&plan, 1.0);
        let users = spans.iter().filter(|s| s.speaker == Speaker::User).count();
        let agents = spans.iter().filter(|s| s.speaker == Speaker::Agent).count();
        assert!(users >= 3 && agents >= 3, "{spans:?}");
        for s in &spans {
            assert!(s.start < s.end, "{s:?}");
        }
        // Nobody speaks before the screening ends (0.4 s in) and spans come in order.
        assert!(spans[0].start >= Duration::from_millis(300));
        assert!(spans.windows(2).all(|w| w[0].start <= w[1].start));
        // At ten times the speed, the same spans, ten times shorter.
        let fast = super::spans(&plan, 10.0);
        assert_eq!(fast.len(), spans.len());
        let ratio = spans[1].end.as_secs_f64() / fast[1].end.as_secs_f64();
        assert!((ratio - 10.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn wav_files_are_read_at_8_or_16_khz_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, rate: u32, channels: u16| {
            let path = dir.path().join(name);
            let spec = hound::WavSpec {
                channels,
                sample_rate: rate,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut w = hound::WavWriter::create(&path, spec).unwrap();
            for i in 0..1600 {
                w.write_sample((i % 100) as i16 * 100).unwrap();
            }
            w.finalize().unwrap();
            path
        };
        let Source::Recording(narrow) = Source::wav(&write("a.wav", 8000, 1)).unwrap() else {
            panic!("not a recording");
        };
        assert_eq!(narrow.len(), 1600);
        let Source::Recording(wide) = Source::wav(&write("b.wav", 16000, 1)).unwrap() else {
            panic!("not a recording");
        };
        assert_eq!(wide.len(), 800, "16 kHz is resampled to 8");
        let err = Source::wav(&write("c.wav", 44100, 1)).unwrap_err();
        assert!(err.contains("44100 Hz"), "{err}");
        let err = Source::wav(&write("d.wav", 8000, 2)).unwrap_err();
        assert!(err.contains("2 channel(s)"), "{err}");
        assert!(Source::wav(&dir.path().join("missing.wav")).is_err());
    }
}
