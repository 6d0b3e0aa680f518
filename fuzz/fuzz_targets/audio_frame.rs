#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callstream_server::fuzzing::audio_frame(data));
