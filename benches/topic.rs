//! Topic routing: matching routing keys against a trie of many binding patterns.
//!
//! Run: `cargo bench --bench topic` (results in target/criterion/).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use warren::broker::exchange::topic::TopicTrie;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("topic");
    for bindings in [100u32, 10_000] {
        let mut t = TopicTrie::default();
        for i in 0..bindings {
            let pattern = match i % 4 {
                0 => format!("stock.{i}.nyse"),
                1 => format!("stock.*.{i}"),
                2 => format!("weather.{i}.#"),
                _ => format!("#.{i}"),
            };
            t.insert(pattern.as_bytes(), i);
        }
        let keys: Vec<String> = (0..1000)
            .map(|i| match i % 3 {
                0 => format!("stock.{}.nyse", i * 4 % bindings),
                1 => format!("weather.{}.eu.rain", (i * 4 + 2) % bindings),
                _ => format!("no.match.here.{i}"),
            })
            .collect();
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(format!("route_1000_keys_{bindings}_bindings"), |b| {
            let mut out = Vec::new();
            b.iter(|| {
                let mut n = 0;
                for k in &keys {
                    out.clear();
                    t.matches(k.as_bytes(), &mut out);
                    n += out.len();
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
