#![no_main]
//! Fuzz target: see `checks::config` (docs/fuzzing.md).

#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
