//! The wire hot path: cutting a publish (method + header + body) off a read buffer, and encoding
//! a delivery (deliver + header + body) into an outbox.
//!
//! Run: `cargo bench --bench codec` (results in target/criterion/).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use warren::amqp::codec::{self, Frame};

/// basic.publish to exchange "" with routing key "bench", a content header with simple
/// properties (content-type, delivery-mode), and a body, as a client would send them.
fn publish_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    // method frame
    let mut m = vec![0, 60, 0, 40, 0, 0, 0, 5];
    m.extend_from_slice(b"bench");
    m.push(0);
    v.push(1);
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&(m.len() as u32).to_be_bytes());
    v.extend_from_slice(&m);
    v.push(0xCE);
    // header frame: class 60, weight 0, size, flags (content-type | delivery-mode)
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(&((1u16 << 15) | (1 << 12)).to_be_bytes());
    h.push(10);
    h.extend_from_slice(b"text/plain");
    h.push(2);
    v.push(2);
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&(h.len() as u32).to_be_bytes());
    v.extend_from_slice(&h);
    v.push(0xCE);
    // body frame
    v.push(3);
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v.push(0xCE);
    v
}

fn decode(c: &mut Criterion) {
    let one = publish_bytes(&[7u8; 16]);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("publish_16B_x1000", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch[..]);
            let mut n = 0;
            while let Some(f) = codec::decode(&mut buf, 131072).unwrap() {
                if let Frame::Body { payload, .. } = f {
                    n += payload.len();
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let props = Bytes::from_static(&[
        0x90, 0, 10, b't', b'e', b'x', b't', b'/', b'p', b'l', b'a', b'i', b'n', 2,
    ]);
    let mut g = c.benchmark_group("encode");
    for size in [16usize, 1024] {
        let body = Bytes::from(vec![7u8; size]);
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("deliver_{size}B_x1000"), |b| {
            let mut out = BytesMut::with_capacity(2 << 20);
            b.iter(|| {
                out.clear();
                for tag in 0..1000u64 {
                    codec::encode_deliver(&mut out, 1, "amq.ctag-bench", tag, false, b"", b"bench");
                    codec::encode_content(&mut out, 1, &props, &body, 131072);
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
