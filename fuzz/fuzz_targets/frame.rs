#![no_main]
//! Body: `warren::fuzzing::frame` (also run on stable by tests/it/fuzz_corpus.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzzing::frame(data));
