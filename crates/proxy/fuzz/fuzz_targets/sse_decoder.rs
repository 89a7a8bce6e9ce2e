#![no_main]
include!("../bodies.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| sse_decoder_body(data));
