#![no_main]
//! Body: `warren::fuzzing::connection` (also run on stable by tests/it/fuzz_corpus.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzzing::connection(data));
