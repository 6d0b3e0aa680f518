//! Transcoding speed: one second of audio, converted 20 ms frame by 20 ms frame as a stream
//! converts it, for every path seed 004 uses. Criterion's throughput is in samples of input per
//! second; divided by the input's sample rate it is how many times faster than real time one
//! core converts (docs/audio-streams.md, docs/benchmarks.md).
//!
//! `cargo bench -p callstream-audio --bench transcode`

use std::hint::black_box;

use callstream_audio::{MediaFormat, Transcoder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// One second of a speech-band signal in `format`.
fn second(format: MediaFormat) -> Vec<u8> {
    let rate = format.sample_rate().hz() as usize;
    let samples: Vec<i16> = (0..rate)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (6000.0 * (2.0 * std::f64::consts::PI * 310.0 * t).sin()
                + 2000.0 * (2.0 * std::f64::consts::PI * 1870.0 * t).sin()) as i16
        })
        .collect();
    let mut out = vec![0u8; samples.len() * format.encoding().bytes_per_sample()];
    let n = format
        .encoding()
        .encode_into(&samples, &mut out)
        .unwrap_or_default();
    out.truncate(n);
    out
}

fn transcode(c: &mut Criterion) {
    let paths = [
        (
            "mulaw8k_to_l16_8k",
            MediaFormat::MULAW_8K,
            MediaFormat::L16_8K,
        ),
        (
            "mulaw8k_to_l16_16k",
            MediaFormat::MULAW_8K,
            MediaFormat::L16_16K,
        ),
        (
            "l16_8k_to_mulaw8k",
            MediaFormat::L16_8K,
            MediaFormat::MULAW_8K,
        ),
        (
            "l16_16k_to_mulaw8k",
            MediaFormat::L16_16K,
            MediaFormat::MULAW_8K,
        ),
        (
            "l16_8k_to_l16_16k",
            MediaFormat::L16_8K,
            MediaFormat::L16_16K,
        ),
        (
            "l16_16k_to_l16_8k",
            MediaFormat::L16_16K,
            MediaFormat::L16_8K,
        ),
        (
            "alaw8k_to_mulaw8k",
            MediaFormat::ALAW_8K,
            MediaFormat::MULAW_8K,
        ),
        (
            "mulaw8k_to_mulaw8k",
            MediaFormat::MULAW_8K,
            MediaFormat::MULAW_8K,
        ),
    ];
    let mut group = c.benchmark_group("transcode_one_second");
    for (name, from, to) in paths {
        let input = second(from);
        let frame = from.bytes_per_frame();
        group.throughput(Throughput::Elements(u64::from(from.sample_rate().hz())));
        let mut transcoder = Transcoder::new(from, to);
        let mut out = Vec::with_capacity(to.bytes_per_frame());
        group.bench_function(name, |b| {
            b.iter(|| {
                for chunk in input.chunks(frame) {
                    out.clear();
                    let _ = transcoder.transcode(black_box(chunk), &mut out);
                    black_box(&out);
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, transcode);
criterion_main!(benches);
