//! The fuzz targets' bodies (`warren::fuzzing`, run long by `cargo fuzz`: see fuzz/README.md),
//! run here on stable over the checked-in seed corpus (fuzz/corpus/<target>/, which also holds
//! every input a fuzzer found a bug with) and over pseudo-random inputs from a fixed seed. Each
//! function panics when an invariant breaks, so a regression in the wire handling fails here
//! without a fuzzer.

use std::path::Path;

/// xorshift64: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = (self.next() % (max as u64 + 1)) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Run `f` over every file of fuzz/corpus/`target`/; returns how many there were.
fn corpus(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    for path in files {
        let data = std::fs::read(&path).expect("corpus file");
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    n
}

/// The corpus, then `rounds` random inputs of up to `max` bytes, some of them seed files with a
/// few bytes changed (so the random inputs get past the first checks).
fn run(target: &str, f: fn(&[u8]), rounds: usize, max: usize, seed: u64) {
    let n = corpus(target, f);
    assert!(n >= 10, "{target}: only {n} seed files");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("file"))
        .collect();
    seeds.sort();
    let mut rng = Rng(seed);
    for round in 0..rounds {
        let data = if round % 2 == 0 {
            rng.bytes(max)
        } else {
            let mut d = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
            for _ in 0..1 + rng.next() % 4 {
                if d.is_empty() {
                    break;
                }
                let at = (rng.next() % d.len() as u64) as usize;
                d[at] = rng.next() as u8;
            }
            d
        };
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(
            r.is_ok(),
            "{target}: random input {round} fails: {data:02x?}"
        );
    }
}

#[test]
fn frame() {
    run("frame", warren::fuzzing::frame, 20_000, 256, 0x5EED_0001);
}

#[test]
fn content_header() {
    run(
        "content_header",
        warren::fuzzing::content_header,
        20_000,
        128,
        0x5EED_0002,
    );
}

#[test]
fn field_table() {
    run(
        "field_table",
        warren::fuzzing::field_table,
        20_000,
        128,
        0x5EED_0003,
    );
}

#[test]
fn connection() {
    run(
        "connection",
        warren::fuzzing::connection,
        150,
        512,
        0x5EED_0004,
    );
}
