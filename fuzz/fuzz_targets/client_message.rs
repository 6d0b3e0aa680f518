#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callstream_server::fuzzing::client_message(data));
