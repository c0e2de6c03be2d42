#![no_main]
//! Body: `warren::fuzzing::content_header` (also run on stable by tests/it/fuzz_corpus.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| warren::fuzzing::content_header(data));
