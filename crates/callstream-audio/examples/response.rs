//! Measures the 8 kHz <-> 16 kHz resamplers with pure tones: the passband gain (and so its
//! ripple), the attenuation of what downsampling would fold back (aliases), and of the images
//! upsampling would create. The figures in docs/audio-streams.md come from this.
//!
//! ```sh
//! cargo run --release -p callstream-audio --example response
//! ```

use callstream_audio::{Downsampler, Upsampler};

/// A tone of `hz` at `rate`, half of full scale, one second.
fn tone(hz: f64, rate: f64) -> Vec<i16> {
    (0..rate as usize)
        .map(|i| {
            (16_384.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()).round() as i16
        })
        .collect()
}

/// The amplitude of the `hz` component of `x` (sampled at `rate`), by projection, skipping the
/// filters' start-up.
fn amplitude(x: &[i16], hz: f64, rate: f64) -> f64 {
    let x = &x[200..];
    let (mut s, mut c) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / rate;
        s += f64::from(*v) * phase.sin();
        c += f64::from(*v) * phase.cos();
    }
    2.0 * (s * s + c * c).sqrt() / x.len() as f64
}

fn db(ratio: f64) -> f64 {
    20.0 * ratio.max(1e-12).log10()
}

fn up(x: &[i16]) -> Vec<i16> {
    let mut u = Upsampler::new();
    let mut out = vec![0; Upsampler::output_len(x.len())];
    let n = u.process(x, &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

fn down(x: &[i16]) -> Vec<i16> {
    let mut d = Downsampler::new();
    let mut out = vec![0; d.output_len(x.len())];
    let n = d.process(x, &mut out).unwrap_or(0);
    out.truncate(n);
    out
}

fn main() {
    let reference = 16_384.0;
    // Passband, 8 kHz -> 16 kHz and 16 kHz -> 8 kHz, 100 Hz to 3.4 kHz (the telephone band).
    let (mut up_min, mut up_max, mut down_min, mut down_max) =
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for hz in (100..=3400).step_by(50).map(f64::from) {
        let u = db(amplitude(&up(&tone(hz, 8000.0)), hz, 16_000.0) / reference);
        let d = db(amplitude(&down(&tone(hz, 16_000.0)), hz, 8000.0) / reference);
        up_min = up_min.min(u);
        up_max = up_max.max(u);
        down_min = down_min.min(d);
        down_max = down_max.max(d);
    }
    println!(
        "passband 100-3400 Hz, 8k->16k: gain {up_min:+.3} to {up_max:+.3} dB (ripple {:.3} dB)",
        up_max - up_min
    );
    println!(
        "passband 100-3400 Hz, 16k->8k: gain {down_min:+.3} to {down_max:+.3} dB (ripple {:.3} dB)",
        down_max - down_min
    );
    for hz in [3600.0, 3800.0, 3900.0] {
        let d = db(amplitude(&down(&tone(hz, 16_000.0)), hz, 8000.0) / reference);
        println!("transition, 16k->8k at {hz} Hz: {d:+.2} dB");
    }
    // Stop band of the downsampler: a 16 kHz tone above 4 kHz folds to 8000 - f at 8 kHz.
    println!("aliases folded back by 16k->8k (tone f in, 8000 - f out):");
    for from in [4400, 4600, 5000, 6000, 7000] {
        let hz = f64::from(from);
        let alias = db(amplitude(&down(&tone(hz, 16_000.0)), 8000.0 - hz, 8000.0) / reference);
        println!("  {from} Hz: {alias:+.1} dB");
    }
    // Images of the upsampler: an 8 kHz tone f appears at 8000 - f at 16 kHz.
    println!("images made by 8k->16k (tone f in, 8000 - f out):");
    for from in [3600, 3400, 3000, 2000, 1000] {
        let hz = f64::from(from);
        let image = db(amplitude(&up(&tone(hz, 8000.0)), 8000.0 - hz, 16_000.0) / reference);
        println!("  {from} Hz -> {} Hz: {image:+.1} dB", 8000 - from);
    }
}
