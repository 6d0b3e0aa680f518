#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| callstream_server::fuzzing::ingest_body(data));
