//! 8 kHz <-> 16 kHz resampling with a half-band polyphase FIR.
//!
//! For a factor of exactly two a half-band low-pass filter is the natural choice: cut-off at a
//! quarter of the 16 kHz rate (4 kHz, the 8 kHz Nyquist frequency), linear phase, and every
//! second coefficient except the centre one is zero. Split into its two polyphase branches, one
//! branch is a plain delay and the other a short symmetric filter, so each 8 kHz sample costs
//! [`HALF_TAPS`] multiplications in either direction and the state is a few dozen samples.
//!
//! The filter is a Kaiser-windowed sinc with [`TAPS`] = 47 taps (24 non-zero off-centre taps),
//! beta 6, designed at compile time. Its response at 16 kHz: within 0.05 dB from 0 to 3.4 kHz
//! (the whole telephone band), -6 dB at 4 kHz as every half-band filter, below -45 dB from
//! 4.6 kHz and below -65 dB from 5 kHz.
//!
//! # Delay
//!
//! The filter is linear phase, so it delays every frequency by the same [`DELAY_16K`] = 23
//! samples at 16 kHz (1.4375 ms):
//! - [`Upsampler`]: output sample `n` (16 kHz) represents input time `n - 23` in 16 kHz samples;
//!   an impulse at input 0 peaks at output 23.
//! - [`Downsampler`]: output sample `m` (8 kHz) represents input sample `2m - 23` at 16 kHz, that
//!   is 11.5 output samples late.
//! - Up then down: output sample `m` is input sample `m - 23` at 8 kHz (2.875 ms).
//!
//! # Streaming
//!
//! Both resamplers keep their history between calls, so feeding a stream in 20 ms frames (or in
//! pieces of any length) produces exactly the samples that one call over the whole stream would.
//! The history starts as silence; call `reset` when the stream is interrupted (e.g. after the
//! peer clears its audio) so that the tail of old audio does not bleed into the next sentence.

use crate::{CodecError, output_prefix};

/// Non-zero off-centre taps on each side of the centre: the filter length is `4 * HALF_TAPS - 1`.
pub const HALF_TAPS: usize = 12;

/// Length of the half-band filter, counting its zero coefficients.
pub const TAPS: usize = 4 * HALF_TAPS - 1;

/// Group delay of the filter in samples at 16 kHz; see the module documentation.
pub const DELAY_16K: usize = (TAPS - 1) / 2;

/// Off-centre non-zero taps, one per input sample in a polyphase branch.
const SIDE_TAPS: usize = 2 * HALF_TAPS;

/// Kaiser window shape: 6 trades a slightly wider transition band for about 65 dB of stopband.
const KAISER_BETA: f64 = 6.0;

/// The non-zero off-centre coefficients `h[0], h[2], ..., h[TAPS - 1]` of the half-band filter
/// (the centre coefficient is exactly 0.5 and all other odd ones are 0). Symmetric, and scaled to
/// sum to 0.5 so that both polyphase branches have gain exactly 1 at DC.
static SIDE_COEFFICIENTS: [f32; SIDE_TAPS] = design();

/// Windowed-sinc design, evaluated at compile time.
const fn design() -> [f32; SIDE_TAPS] {
    const CENTRE: i64 = DELAY_16K as i64;
    let mut taps = [0.0_f64; SIDE_TAPS];
    let mut sum = 0.0;
    let mut j = 0;
    while j < SIDE_TAPS {
        // Distance from the centre; always odd, so sin(pi * d / 2) is +1 or -1 and the ideal
        // half-band response sin(pi d / 2) / (pi d) needs no trigonometry.
        let distance = 2 * j as i64 - CENTRE;
        let magnitude = if distance < 0 { -distance } else { distance };
        let sign = if (magnitude - 1) / 2 % 2 == 0 {
            1.0
        } else {
            -1.0
        };
        let ideal = sign / (std::f64::consts::PI * magnitude as f64);
        // Kaiser window I0(beta * sqrt(1 - r^2)) / I0(beta), with r = d / centre in -1..=1.
        let r = distance as f64 / CENTRE as f64;
        let window = bessel_i0_of_root(KAISER_BETA * KAISER_BETA * (1.0 - r * r))
            / bessel_i0_of_root(KAISER_BETA * KAISER_BETA);
        taps[j] = ideal * window;
        sum += taps[j];
        j += 1;
    }
    let mut out = [0.0_f32; SIDE_TAPS];
    let mut j = 0;
    while j < SIDE_TAPS {
        out[j] = (taps[j] * 0.5 / sum) as f32;
        j += 1;
    }
    out
}

/// Modified Bessel function I0(x), given `x * x` (so the window needs no square root):
/// the series sum over k of ((x^2 / 4)^k / (k!)^2). Forty terms are far more than enough for
/// x <= 6.
const fn bessel_i0_of_root(x_squared: f64) -> f64 {
    let quarter = x_squared / 4.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut k = 1;
    while k < 40 {
        term = term * quarter / ((k * k) as f64);
        sum += term;
        k += 1;
    }
    sum
}

/// Rounds to the nearest sample value, saturating at the i16 range: a full-scale input can
/// overshoot slightly through the filter (Gibbs ripple), and wrapping around would be a click.
fn to_sample(value: f32) -> i16 {
    // Float-to-integer `as` saturates (and maps NaN to 0), which is the behaviour wanted here.
    value.round() as i16
}

// === impl History ===

/// The last [`SIDE_TAPS`] samples of one polyphase branch.
///
/// Each sample is stored twice, `SIDE_TAPS` apart, so that the most recent `SIDE_TAPS` samples are
/// always one contiguous slice and the filter loop has no wrap-around.
#[derive(Debug, Clone)]
struct History {
    samples: [f32; 2 * SIDE_TAPS],
    /// Where the next sample goes; also the start of the window (the oldest sample).
    next: usize,
}

impl History {
    const fn new() -> Self {
        Self {
            samples: [0.0; 2 * SIDE_TAPS],
            next: 0,
        }
    }

    fn push(&mut self, sample: i16) {
        let sample = f32::from(sample);
        self.samples[self.next] = sample;
        self.samples[self.next + SIDE_TAPS] = sample;
        self.next = (self.next + 1) % SIDE_TAPS;
    }

    /// The last `SIDE_TAPS` samples, oldest first.
    fn window(&self) -> &[f32] {
        &self.samples[self.next..self.next + SIDE_TAPS]
    }

    /// The sample pushed `HALF_TAPS - 1` pushes ago: the centre tap of the upsampling filter.
    fn centre(&self) -> f32 {
        self.window()[HALF_TAPS]
    }

    /// The off-centre branch of the filter applied to the window.
    fn filter(&self) -> f32 {
        // The coefficients are symmetric, so pair the samples that share one and halve the
        // multiplications.
        let (older, newer) = self.window().split_at(HALF_TAPS);
        older
            .iter()
            .zip(newer.iter().rev())
            .zip(&SIDE_COEFFICIENTS[..HALF_TAPS])
            .map(|((a, b), c)| (a + b) * c)
            .sum()
    }
}

// === impl Upsampler ===

/// Streaming 8 kHz -> 16 kHz converter. Each input sample yields two output samples, delayed by
/// [`DELAY_16K`] output samples.
#[derive(Debug, Clone)]
pub struct Upsampler {
    history: History,
}

impl Upsampler {
    /// A resampler whose history is silence.
    pub const fn new() -> Self {
        Self {
            history: History::new(),
        }
    }

    /// Forgets the history, as if the stream started again.
    pub fn reset(&mut self) {
        self.history = History::new();
    }

    /// Output samples produced for `input_len` input samples: always twice as many.
    pub const fn output_len(input_len: usize) -> usize {
        input_len * 2
    }

    /// Upsamples `input` (8 kHz) into the front of `out` (16 kHz) and returns the number of
    /// samples written, `2 * input.len()`.
    ///
    /// # Errors
    ///
    /// [`CodecError::OutputTooShort`] if `out` is shorter than that; neither `out` nor the
    /// resampler's state changes.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> Result<usize, CodecError> {
        let needed = Self::output_len(input.len());
        let out = output_prefix(out, needed)?;
        for (&sample, pair) in input.iter().zip(out.chunks_exact_mut(2)) {
            self.history.push(sample);
            // Zero-stuffing halves the level, so the filtered branch is doubled; the other
            // branch meets only the centre tap, 0.5 * 2, and is a pure delay.
            pair[0] = to_sample(2.0 * self.history.filter());
            pair[1] = to_sample(self.history.centre());
        }
        Ok(needed)
    }
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Downsampler ===

/// Streaming 16 kHz -> 8 kHz converter. Every second input sample yields one output sample,
/// delayed by [`DELAY_16K`] input samples; everything above 4 kHz is filtered out first so that
/// it does not fold back into the voice band.
#[derive(Debug, Clone)]
pub struct Downsampler {
    /// Even-numbered input samples, the branch that meets the off-centre taps.
    even: History,
    /// The last [`HALF_TAPS`] odd-numbered input samples, the branch that meets only the centre
    /// tap, as a ring; `odd_next` is the oldest entry and the next one to be overwritten.
    odd: [f32; HALF_TAPS],
    odd_next: usize,
    /// Whether the next input sample is even-numbered (and so produces an output sample). Kept
    /// across calls so that input pieces of odd length are handled like any others.
    next_is_even: bool,
}

impl Downsampler {
    /// A resampler whose history is silence.
    pub const fn new() -> Self {
        Self {
            even: History::new(),
            odd: [0.0; HALF_TAPS],
            odd_next: 0,
            next_is_even: true,
        }
    }

    /// Forgets the history, as if the stream started again.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Output samples the next [`Downsampler::process`] call produces for `input_len` input
    /// samples: half of them, rounded up or down depending on whether an odd sample is pending.
    pub const fn output_len(&self, input_len: usize) -> usize {
        if self.next_is_even {
            input_len.div_ceil(2)
        } else {
            input_len / 2
        }
    }

    /// Downsamples `input` (16 kHz) into the front of `out` (8 kHz) and returns the number of
    /// samples written, [`Downsampler::output_len`] of the input length (160 for a 20 ms frame).
    ///
    /// # Errors
    ///
    /// [`CodecError::OutputTooShort`] if `out` is shorter than that; neither `out` nor the
    /// resampler's state changes.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> Result<usize, CodecError> {
        let needed = self.output_len(input.len());
        let mut slots = output_prefix(out, needed)?.iter_mut();
        for &sample in input {
            if self.next_is_even {
                self.even.push(sample);
                // The centre tap meets the odd sample HALF_TAPS odd samples back: the oldest one
                // in the ring.
                let centre = 0.5 * self.odd[self.odd_next];
                if let Some(slot) = slots.next() {
                    *slot = to_sample(self.even.filter() + centre);
                }
            } else {
                self.odd[self.odd_next] = f32::from(sample);
                self.odd_next = (self.odd_next + 1) % HALF_TAPS;
            }
            self.next_is_even = !self.next_is_even;
        }
        Ok(needed)
    }
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: f64, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * hz * n as f64 / rate;
                (amplitude * phase.sin()).round() as i16
            })
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (energy / samples.len() as f64).sqrt()
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Amplitude of the `hz` component of `samples` (Goertzel, i.e. one DFT bin).
    fn amplitude_at(samples: &[i16], hz: f64, rate: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / rate;
        let (mut re, mut im) = (0.0, 0.0);
        for (n, &s) in samples.iter().enumerate() {
            re += f64::from(s) * (w * n as f64).cos();
            im -= f64::from(s) * (w * n as f64).sin();
        }
        2.0 * (re * re + im * im).sqrt() / samples.len() as f64
    }

    /// A deterministic noise-like signal (a small LCG), so that chunking tests exercise every
    /// coefficient with unrelated values.
    fn noise(len: usize) -> Vec<i16> {
        let mut state = 0x2545_F491_u32;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 16) as u16 as i16
            })
            .collect()
    }

    fn upsample(up: &mut Upsampler, input: &[i16]) -> Vec<i16> {
        let mut out = vec![0; Upsampler::output_len(input.len())];
        let written = up.process(input, &mut out).expect("sized output");
        assert_eq!(written, out.len());
        out
    }

    fn downsample(down: &mut Downsampler, input: &[i16]) -> Vec<i16> {
        let mut out = vec![0; down.output_len(input.len())];
        let written = down.process(input, &mut out).expect("sized output");
        assert_eq!(written, out.len());
        out
    }

    #[test]
    fn coefficients_are_the_designed_half_band() {
        // Reference values from an independent f64 evaluation of the same design.
        let expected_first_half = [
            -0.000_205_858,
            0.000_712_469,
            -0.001_664_487,
            0.003_262_334,
            -0.005_758_369,
            0.009_484_942,
            -0.014_926_125,
            0.022_903_054,
            -0.035_098_618,
            0.055_863_797,
            -0.101_265_984,
            0.316_692_844,
        ];
        for (j, &expected) in expected_first_half.iter().enumerate() {
            assert!(
                (f64::from(SIDE_COEFFICIENTS[j]) - expected).abs() < 1e-7,
                "tap {j}"
            );
            assert_eq!(
                SIDE_COEFFICIENTS[j],
                SIDE_COEFFICIENTS[SIDE_TAPS - 1 - j],
                "symmetry {j}"
            );
        }
        let sum: f64 = SIDE_COEFFICIENTS.iter().map(|&c| f64::from(c)).sum();
        assert!((sum - 0.5).abs() < 1e-6, "sum {sum}");
        assert_eq!(DELAY_16K, 23);
    }

    #[test]
    fn frames_give_the_same_output_as_one_call() {
        let signal_8k = noise(160 * 25);
        let whole = upsample(&mut Upsampler::new(), &signal_8k);
        let mut up = Upsampler::new();
        let framed: Vec<i16> = signal_8k
            .chunks(160)
            .flat_map(|frame| upsample(&mut up, frame))
            .collect();
        assert_eq!(framed, whole);

        let signal_16k = noise(320 * 25);
        let whole = downsample(&mut Downsampler::new(), &signal_16k);
        let mut down = Downsampler::new();
        let framed: Vec<i16> = signal_16k
            .chunks(320)
            .flat_map(|frame| downsample(&mut down, frame))
            .collect();
        assert_eq!(framed, whole);
    }

    #[test]
    fn odd_sized_pieces_give_the_same_output_as_one_call() {
        let signal = noise(4000);
        let pieces = [1, 7, 160, 3, 320, 2, 0, 1, 999];
        for (name, is_up) in [("up", true), ("down", false)] {
            let (mut up, mut down) = (Upsampler::new(), Downsampler::new());
            let whole = if is_up {
                upsample(&mut Upsampler::new(), &signal)
            } else {
                downsample(&mut Downsampler::new(), &signal)
            };
            let mut pieced = Vec::new();
            let mut rest = signal.as_slice();
            for &len in pieces.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (piece, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                pieced.extend(if is_up {
                    upsample(&mut up, piece)
                } else {
                    downsample(&mut down, piece)
                });
            }
            assert_eq!(pieced, whole, "{name}");
        }
    }

    #[test]
    fn voice_band_tones_keep_their_amplitude_up_then_down() {
        for hz in [300.0, 1000.0, 2000.0, 3000.0, 3400.0] {
            let input = tone(hz, 8000.0, 10_000.0, 8000);
            let mut up = Upsampler::new();
            let mut down = Downsampler::new();
            let wide = upsample(&mut up, &input);
            let back = downsample(&mut down, &wide);
            // Skip the start-up transient (the filter filling with signal).
            let settled = 2 * SIDE_TAPS;
            let gain_wide = db(rms(&wide[2 * settled..]) / rms(&input[settled..]));
            let gain_back = db(rms(&back[settled..]) / rms(&input[settled..]));
            assert!(gain_wide.abs() < 0.5, "{hz} Hz up: {gain_wide:.3} dB");
            assert!(gain_back.abs() < 0.5, "{hz} Hz up+down: {gain_back:.3} dB");
        }
    }

    #[test]
    fn up_then_down_is_the_input_delayed() {
        let input = tone(1000.0, 8000.0, 10_000.0, 1600);
        let back = downsample(
            &mut Downsampler::new(),
            &upsample(&mut Upsampler::new(), &input),
        );
        // Past the start-up transient, output m is input m - DELAY_16K.
        let settled = 2 * SIDE_TAPS;
        let worst = back[DELAY_16K + settled..]
            .iter()
            .zip(&input[settled..])
            .map(|(&b, &a)| (i32::from(b) - i32::from(a)).abs())
            .max()
            .unwrap_or_default();
        // 0.1 % of the amplitude: passband ripple plus rounding.
        assert!(worst <= 10, "worst error {worst}");
    }

    #[test]
    fn upsampling_delays_an_impulse_by_the_documented_amount() {
        let mut impulse = vec![0_i16; 40];
        impulse[0] = 10_000;
        let out = upsample(&mut Upsampler::new(), &impulse);
        let peak = (0..out.len()).max_by_key(|&n| out[n]).unwrap_or_default();
        assert_eq!(peak, DELAY_16K);
        assert_eq!(out[DELAY_16K], 10_000);
    }

    #[test]
    fn downsampling_rejects_tones_above_4_khz() {
        for hz in [4700.0, 5000.0, 6000.0, 7000.0, 7900.0] {
            let input = tone(hz, 16_000.0, 10_000.0, 16_000);
            let out = downsample(&mut Downsampler::new(), &input);
            let attenuation = db(rms(&out[SIDE_TAPS..]) / rms(&input));
            assert!(attenuation < -40.0, "{hz} Hz: {attenuation:.1} dB");
        }
    }

    #[test]
    fn upsampling_suppresses_the_image() {
        // A 3 kHz tone zero-stuffed to 16 kHz has an image at 8 - 3 = 5 kHz.
        let input = tone(3000.0, 8000.0, 10_000.0, 8000);
        let out = upsample(&mut Upsampler::new(), &input);
        let settled = &out[4 * SIDE_TAPS..];
        let wanted = amplitude_at(settled, 3000.0, 16_000.0);
        let image = amplitude_at(settled, 5000.0, 16_000.0);
        assert!((db(wanted / 10_000.0)).abs() < 0.1, "3 kHz at {wanted}");
        assert!(
            db(image / wanted) < -40.0,
            "image at {:.1} dB",
            db(image / wanted)
        );
    }

    #[test]
    fn dc_passes_exactly_and_full_scale_saturates() {
        for level in [1000_i16, -1000, i16::MAX, i16::MIN] {
            let input = vec![level; 200];
            let wide = upsample(&mut Upsampler::new(), &input);
            assert!(wide[2 * TAPS..].iter().all(|&s| s == level), "up {level}");
            let narrow = downsample(&mut Downsampler::new(), &input);
            assert!(narrow[TAPS..].iter().all(|&s| s == level), "down {level}");
        }
        // A full-scale step overshoots; the output must clip, never wrap to the other sign.
        let mut step = vec![i16::MIN; 100];
        step.extend(vec![i16::MAX; 100]);
        let wide = upsample(&mut Upsampler::new(), &step);
        assert!(wide[2 * 100 + DELAY_16K + 1..].iter().all(|&s| s > 0));
        assert!(
            wide[2 * TAPS..2 * 100 + DELAY_16K - 1]
                .iter()
                .all(|&s| s < 0)
        );
    }

    #[test]
    fn reset_forgets_history() {
        let signal = noise(320);
        let mut up = Upsampler::new();
        let first = upsample(&mut up, &signal);
        up.reset();
        assert_eq!(upsample(&mut up, &signal), first);
        let mut down = Downsampler::new();
        let first = downsample(&mut down, &signal[..3]);
        down.reset();
        assert_eq!(downsample(&mut down, &signal[..3]), first);
    }

    #[test]
    fn short_output_is_refused_without_touching_state() {
        let mut up = Upsampler::new();
        let mut out = [0_i16; 3];
        assert_eq!(
            up.process(&[1, 2], &mut out),
            Err(CodecError::OutputTooShort {
                needed: 4,
                available: 3
            })
        );
        let mut down = Downsampler::new();
        assert_eq!(
            down.process(&[5_000; 4], &mut out[..1]),
            Err(CodecError::OutputTooShort {
                needed: 2,
                available: 1
            })
        );
        // The refused call left no trace: the next output is as from a fresh resampler.
        assert_eq!(down.output_len(3), 2);
        let fresh = downsample(&mut Downsampler::new(), &[7_000; 3]);
        assert_eq!(downsample(&mut down, &[7_000; 3]), fresh);
    }
}
