//! G.711 companding: mu-law (North America, Japan; what Twilio and Plivo stream) and A-law (the
//! rest of the world's trunks).
//!
//! Decoding goes through 256-entry tables built at compile time from the expansion formulas in
//! the ITU-T G.191 Software Tool Library (`g711.c`), so a decode is one load. Encoding uses the
//! same library's compression arithmetic, which treats negative input in one's complement: that is
//! why `-1` encodes to mu-law's negative zero (0x7F) rather than to the first negative step, and it
//! is the behaviour other ITU-conformant codecs have, so audio we encode decodes the same there.
//!
//! Codes are the transmitted octets, with mu-law's bit inversion and A-law's even-bit inversion
//! (XOR 0x55) already applied: mu-law silence is 0xFF, A-law silence is 0xD5.

use crate::{CodecError, output_prefix};

/// Decoded value of every mu-law code, indexed by the code.
static MULAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0_i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = mulaw_expand(code as u8);
        code += 1;
    }
    table
};

/// Decoded value of every A-law code, indexed by the code.
static ALAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0_i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = alaw_expand(code as u8);
        code += 1;
    }
    table
};

/// G.191 `ulaw_expand` for one code; only used to build [`MULAW_TO_LINEAR`].
const fn mulaw_expand(code: u8) -> i16 {
    let inverted = !code;
    let exponent = ((inverted >> 4) & 0x07) as i32;
    let mantissa = (inverted & 0x0F) as i32;
    let step = 4 << (exponent + 1);
    // 4 * 33 removes the bias the encoder adds so that segment boundaries fall on powers of two.
    let magnitude = (0x80 << exponent) + step * mantissa + step / 2 - 4 * 33;
    if code < 0x80 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// G.191 `alaw_expand` for one code; only used to build [`ALAW_TO_LINEAR`].
const fn alaw_expand(code: u8) -> i16 {
    let bits = ((code ^ 0x55) & 0x7F) as i32;
    let exponent = bits >> 4;
    let mut mantissa = bits & 0x0F;
    if exponent > 0 {
        // Segments above the first carry an implicit leading one.
        mantissa += 16;
    }
    // + 8 puts the reconstruction in the middle of the quantisation interval.
    mantissa = (mantissa << 4) + 8;
    if exponent > 1 {
        mantissa <<= exponent - 1;
    }
    if code > 0x7F {
        mantissa as i16
    } else {
        -mantissa as i16
    }
}

/// Number of significant bits in `value` (0 for 0).
fn bit_length(value: i32) -> i32 {
    // `leading_zeros` of an i32 is at most 32, which always fits.
    32 - value.leading_zeros() as i32
}

/// Magnitude in one's complement, as G.191 computes it: `-1` has magnitude 0.
fn ones_complement_magnitude(sample: i16) -> i32 {
    let x = i32::from(sample);
    if x < 0 { !x } else { x }
}

// === mu-law ===

/// Encodes one 16-bit linear sample as a mu-law code (G.191 `ulaw_compress`).
///
/// Only the top 14 bits of the sample take part, as in G.711; magnitudes above 32635 clip to the
/// largest code.
pub fn encode_mulaw(sample: i16) -> u8 {
    // Bias by 33 (in 14-bit units) so that every segment starts at a power of two.
    let biased = ((ones_complement_magnitude(sample) >> 2) + 33).min(0x1FFF);
    let segment = bit_length(biased >> 6) + 1; // 1..=8
    let mantissa = (biased >> segment) & 0x0F;
    // The code stores segment and mantissa inverted, so that a line of idle zero bits is loud
    // rather than silent (a relic of T1 ones-density rules that the format keeps).
    let mut code = ((8 - segment) << 4) | (0x0F - mantissa);
    if sample >= 0 {
        code |= 0x80;
    }
    (code & 0xFF) as u8
}

/// Decodes one mu-law code to a 16-bit linear sample.
///
/// Results lie in `-32124..=32124`; both 0x7F and 0xFF decode to 0.
pub fn decode_mulaw(code: u8) -> i16 {
    MULAW_TO_LINEAR[usize::from(code)]
}

/// Encodes `samples` as mu-law into the front of `out` and returns how many codes were written
/// (always `samples.len()`).
///
/// # Errors
///
/// [`CodecError::OutputTooShort`] if `out` is shorter than `samples`; `out` is left untouched.
pub fn encode_mulaw_into(samples: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
    let out = output_prefix(out, samples.len())?;
    for (code, &sample) in out.iter_mut().zip(samples) {
        *code = encode_mulaw(sample);
    }
    Ok(samples.len())
}

/// Decodes mu-law `codes` into the front of `out` and returns how many samples were written
/// (always `codes.len()`).
///
/// # Errors
///
/// [`CodecError::OutputTooShort`] if `out` is shorter than `codes`; `out` is left untouched.
pub fn decode_mulaw_into(codes: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
    let out = output_prefix(out, codes.len())?;
    for (sample, &code) in out.iter_mut().zip(codes) {
        *sample = decode_mulaw(code);
    }
    Ok(codes.len())
}

// === A-law ===

/// Encodes one 16-bit linear sample as an A-law code (G.191 `alaw_compress`).
///
/// Only the top 13 bits of the sample take part, as in G.711.
pub fn encode_alaw(sample: i16) -> u8 {
    let magnitude = ones_complement_magnitude(sample) >> 4; // 0..=2047
    let mut code = if magnitude > 15 {
        // Segment 1 holds 16..=31, each later segment doubles the range; the leading one of the
        // magnitude is implicit in the segment number and dropped.
        let segment = bit_length(magnitude) - 4; // 1..=7
        let mantissa = (magnitude >> (segment - 1)) - 16;
        (segment << 4) + mantissa
    } else {
        magnitude
    };
    if sample >= 0 {
        code |= 0x80;
    }
    // Even-bit inversion, as transmitted on the line.
    ((code ^ 0x55) & 0xFF) as u8
}

/// Decodes one A-law code to a 16-bit linear sample.
///
/// Results lie in `-32256..=32256` and are never 0: 0xD5 decodes to 8 and 0x55 to -8.
pub fn decode_alaw(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// Encodes `samples` as A-law into the front of `out` and returns how many codes were written
/// (always `samples.len()`).
///
/// # Errors
///
/// [`CodecError::OutputTooShort`] if `out` is shorter than `samples`; `out` is left untouched.
pub fn encode_alaw_into(samples: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
    let out = output_prefix(out, samples.len())?;
    for (code, &sample) in out.iter_mut().zip(samples) {
        *code = encode_alaw(sample);
    }
    Ok(samples.len())
}

/// Decodes A-law `codes` into the front of `out` and returns how many samples were written
/// (always `codes.len()`).
///
/// # Errors
///
/// [`CodecError::OutputTooShort`] if `out` is shorter than `codes`; `out` is left untouched.
pub fn decode_alaw_into(codes: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
    let out = output_prefix(out, codes.len())?;
    for (sample, &code) in out.iter_mut().zip(codes) {
        *sample = decode_alaw(code);
    }
    Ok(codes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written out from the ITU-T G.711 decoding tables (as reproduced by the G.191 reference
    // implementation), not computed, so that a mistake in the const fns cannot hide.
    const ITU_MULAW_DECODE: [i16; 256] = [
        -32124, -31100, -30076, -29052, -28028, -27004, -25980, -24956, -23932, -22908, -21884,
        -20860, -19836, -18812, -17788, -16764, -15996, -15484, -14972, -14460, -13948, -13436,
        -12924, -12412, -11900, -11388, -10876, -10364, -9852, -9340, -8828, -8316, -7932, -7676,
        -7420, -7164, -6908, -6652, -6396, -6140, -5884, -5628, -5372, -5116, -4860, -4604, -4348,
        -4092, -3900, -3772, -3644, -3516, -3388, -3260, -3132, -3004, -2876, -2748, -2620, -2492,
        -2364, -2236, -2108, -1980, -1884, -1820, -1756, -1692, -1628, -1564, -1500, -1436, -1372,
        -1308, -1244, -1180, -1116, -1052, -988, -924, -876, -844, -812, -780, -748, -716, -684,
        -652, -620, -588, -556, -524, -492, -460, -428, -396, -372, -356, -340, -324, -308, -292,
        -276, -260, -244, -228, -212, -196, -180, -164, -148, -132, -120, -112, -104, -96, -88,
        -80, -72, -64, -56, -48, -40, -32, -24, -16, -8, 0, 32124, 31100, 30076, 29052, 28028,
        27004, 25980, 24956, 23932, 22908, 21884, 20860, 19836, 18812, 17788, 16764, 15996, 15484,
        14972, 14460, 13948, 13436, 12924, 12412, 11900, 11388, 10876, 10364, 9852, 9340, 8828,
        8316, 7932, 7676, 7420, 7164, 6908, 6652, 6396, 6140, 5884, 5628, 5372, 5116, 4860, 4604,
        4348, 4092, 3900, 3772, 3644, 3516, 3388, 3260, 3132, 3004, 2876, 2748, 2620, 2492, 2364,
        2236, 2108, 1980, 1884, 1820, 1756, 1692, 1628, 1564, 1500, 1436, 1372, 1308, 1244, 1180,
        1116, 1052, 988, 924, 876, 844, 812, 780, 748, 716, 684, 652, 620, 588, 556, 524, 492, 460,
        428, 396, 372, 356, 340, 324, 308, 292, 276, 260, 244, 228, 212, 196, 180, 164, 148, 132,
        120, 112, 104, 96, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16, 8, 0,
    ];
    const ITU_ALAW_DECODE: [i16; 256] = [
        -5504, -5248, -6016, -5760, -4480, -4224, -4992, -4736, -7552, -7296, -8064, -7808, -6528,
        -6272, -7040, -6784, -2752, -2624, -3008, -2880, -2240, -2112, -2496, -2368, -3776, -3648,
        -4032, -3904, -3264, -3136, -3520, -3392, -22016, -20992, -24064, -23040, -17920, -16896,
        -19968, -18944, -30208, -29184, -32256, -31232, -26112, -25088, -28160, -27136, -11008,
        -10496, -12032, -11520, -8960, -8448, -9984, -9472, -15104, -14592, -16128, -15616, -13056,
        -12544, -14080, -13568, -344, -328, -376, -360, -280, -264, -312, -296, -472, -456, -504,
        -488, -408, -392, -440, -424, -88, -72, -120, -104, -24, -8, -56, -40, -216, -200, -248,
        -232, -152, -136, -184, -168, -1376, -1312, -1504, -1440, -1120, -1056, -1248, -1184,
        -1888, -1824, -2016, -1952, -1632, -1568, -1760, -1696, -688, -656, -752, -720, -560, -528,
        -624, -592, -944, -912, -1008, -976, -816, -784, -880, -848, 5504, 5248, 6016, 5760, 4480,
        4224, 4992, 4736, 7552, 7296, 8064, 7808, 6528, 6272, 7040, 6784, 2752, 2624, 3008, 2880,
        2240, 2112, 2496, 2368, 3776, 3648, 4032, 3904, 3264, 3136, 3520, 3392, 22016, 20992,
        24064, 23040, 17920, 16896, 19968, 18944, 30208, 29184, 32256, 31232, 26112, 25088, 28160,
        27136, 11008, 10496, 12032, 11520, 8960, 8448, 9984, 9472, 15104, 14592, 16128, 15616,
        13056, 12544, 14080, 13568, 344, 328, 376, 360, 280, 264, 312, 296, 472, 456, 504, 488,
        408, 392, 440, 424, 88, 72, 120, 104, 24, 8, 56, 40, 216, 200, 248, 232, 152, 136, 184,
        168, 1376, 1312, 1504, 1440, 1120, 1056, 1248, 1184, 1888, 1824, 2016, 1952, 1632, 1568,
        1760, 1696, 688, 656, 752, 720, 560, 528, 624, 592, 944, 912, 1008, 976, 816, 784, 880,
        848,
    ];

    #[test]
    fn decode_tables_match_itu() {
        for code in 0..=255_u8 {
            let index = usize::from(code);
            assert_eq!(
                decode_mulaw(code),
                ITU_MULAW_DECODE[index],
                "mu-law {code:#04x}"
            );
            assert_eq!(
                decode_alaw(code),
                ITU_ALAW_DECODE[index],
                "A-law {code:#04x}"
            );
        }
    }

    #[test]
    fn decode_known_codes() {
        type Decode = fn(u8) -> i16;
        let cases: &[(&str, Decode, u8, i16)] = &[
            ("mu-law positive zero", decode_mulaw, 0xFF, 0),
            ("mu-law negative zero", decode_mulaw, 0x7F, 0),
            ("mu-law most negative", decode_mulaw, 0x00, -32124),
            ("mu-law most positive", decode_mulaw, 0x80, 32124),
            ("A-law smallest positive", decode_alaw, 0xD5, 8),
            ("A-law smallest negative", decode_alaw, 0x55, -8),
            // G.711 A-law: the sign bit (after even-bit inversion) is 1 for positive values, so
            // 0xAA (0xFF on the line before inversion) is the positive extreme.
            ("A-law most positive", decode_alaw, 0xAA, 32256),
            ("A-law most negative", decode_alaw, 0x2A, -32256),
            ("A-law code 0x80", decode_alaw, 0x80, 5504),
            ("A-law code 0x00", decode_alaw, 0x00, -5504),
        ];
        for &(name, decode, code, expected) in cases {
            assert_eq!(decode(code), expected, "{name}");
        }
    }

    #[test]
    fn encode_known_samples() {
        // (sample, mu-law, A-law), computed with the G.191 `ulaw_compress`/`alaw_compress`.
        // Positive values agree with every common implementation; negative values near segment
        // edges show the one's complement rule (-1..=-4 are mu-law's negative zero).
        let cases: &[(i16, u8, u8)] = &[
            (0, 0xFF, 0xD5),
            (1, 0xFF, 0xD5),
            (-1, 0x7F, 0x55),
            (-4, 0x7F, 0x55),
            (-5, 0x7E, 0x55),
            (8, 0xFE, 0xD5),
            (-8, 0x7E, 0x55),
            (16, 0xFD, 0xD4),
            (-16, 0x7D, 0x55),
            (-17, 0x7D, 0x54),
            (32, 0xFB, 0xD7),
            (-33, 0x7B, 0x57),
            (100, 0xF2, 0xD3),
            (-100, 0x73, 0x53),
            (255, 0xE7, 0xDA),
            (256, 0xE7, 0xC5),
            (-256, 0x67, 0x5A),
            (-257, 0x67, 0x45),
            (1000, 0xCE, 0xFA),
            (-1000, 0x4E, 0x7A),
            (4096, 0xAF, 0x85),
            (-4096, 0x2F, 0x1A),
            (12345, 0x97, 0xBD),
            (-12345, 0x17, 0x3D),
            (16384, 0x8F, 0xA5),
            (-16384, 0x0F, 0x3A),
            (32124, 0x80, 0xAA),
            (-32124, 0x00, 0x2A),
            (32767, 0x80, 0xAA),
            (-32768, 0x00, 0x2A),
        ];
        for &(sample, mulaw, alaw) in cases {
            assert_eq!(encode_mulaw(sample), mulaw, "mu-law of {sample}");
            assert_eq!(encode_alaw(sample), alaw, "A-law of {sample}");
        }
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255_u8 {
            // Mu-law has two zeros; 0 encodes to the positive one.
            let mulaw_expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                encode_mulaw(decode_mulaw(code)),
                mulaw_expected,
                "mu-law {code:#04x}"
            );
            assert_eq!(encode_alaw(decode_alaw(code)), code, "A-law {code:#04x}");
        }
    }

    #[test]
    fn quantisation_is_monotonic_and_bounded() {
        let mut previous = (i16::MIN, i16::MIN);
        for sample in i16::MIN..=i16::MAX {
            let mulaw = decode_mulaw(encode_mulaw(sample));
            let alaw = decode_alaw(encode_alaw(sample));
            assert!(mulaw >= previous.0, "mu-law not monotonic at {sample}");
            assert!(alaw >= previous.1, "A-law not monotonic at {sample}");
            previous = (mulaw, alaw);
            // The widest step is 1024 for mu-law and 1024 for A-law; outside clipping the error
            // stays within one step.
            let x = i32::from(sample);
            if x.abs() < 32000 {
                assert!(
                    (i32::from(mulaw) - x).abs() <= 1024,
                    "mu-law error at {sample}"
                );
                assert!(
                    (i32::from(alaw) - x).abs() <= 1024,
                    "A-law error at {sample}"
                );
            }
        }
    }

    #[test]
    fn slice_helpers_convert_whole_slices() {
        let samples = [0_i16, -1, 1000, -32768, 32767];
        let mut codes = [0_u8; 8];
        assert_eq!(encode_mulaw_into(&samples, &mut codes), Ok(5));
        assert_eq!(codes[..5], [0xFF, 0x7F, 0xCE, 0x00, 0x80]);
        let mut decoded = [0_i16; 5];
        assert_eq!(decode_mulaw_into(&codes[..5], &mut decoded), Ok(5));
        assert_eq!(decoded, [0, 0, 988, -32124, 32124]);

        assert_eq!(encode_alaw_into(&samples, &mut codes), Ok(5));
        assert_eq!(codes[..5], [0xD5, 0x55, 0xFA, 0x2A, 0xAA]);
        assert_eq!(decode_alaw_into(&codes[..5], &mut decoded), Ok(5));
        assert_eq!(decoded, [8, -8, 1008, -32256, 32256]);
    }

    #[test]
    fn slice_helpers_refuse_short_output_without_writing() {
        let mut codes = [0xAB_u8; 2];
        let short = CodecError::OutputTooShort {
            needed: 3,
            available: 2,
        };
        assert_eq!(encode_mulaw_into(&[1, 2, 3], &mut codes), Err(short));
        assert_eq!(encode_alaw_into(&[1, 2, 3], &mut codes), Err(short));
        assert_eq!(codes, [0xAB, 0xAB]);
        let mut samples = [7_i16; 2];
        assert_eq!(decode_mulaw_into(&[1, 2, 3], &mut samples), Err(short));
        assert_eq!(decode_alaw_into(&[1, 2, 3], &mut samples), Err(short));
        assert_eq!(samples, [7, 7]);
    }
}
