#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callstream_audio::fuzzing::audio(data));
