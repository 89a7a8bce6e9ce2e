#![no_main]
//! The scanner never panics, accounts for every byte, and gives the same result however the
//! input is split. The body is shared with the stable-toolchain run in `tests/properties.rs`.

include!("../scanner_body.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| check_scanner(data));
