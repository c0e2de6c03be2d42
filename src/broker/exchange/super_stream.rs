//! Super streams' exchanges: what makes an exchange the front of a partitioned stream, and
//! Warren's `x-super-stream` exchange type, which routes by hash.
//!
//! A super stream (RabbitMQ's convention, see `broker::vhost::super_stream`) is an exchange
//! carrying the argument `x-super-stream: true`, bound to its partition streams with the
//! binding argument `x-stream-partition-order` (0, 1, …). RabbitMQ's exchange is a plain
//! `direct` one: a publisher picks a partition by its binding key. RabbitMQ's stream clients
//! can instead hash any routing key onto the partitions themselves; an AMQP 0-9-1 publisher
//! cannot, so Warren offers the same hashing in the broker as an exchange type of its own,
//! `x-super-stream`: every message goes to exactly one of the exchange's partitions,
//! `murmur3_32(routing key, seed 104729) mod N` of the partitions ordered by
//! `x-stream-partition-order`, which is the partition RabbitMQ's Java and Go stream clients
//! pick for the same key. Bindings keep their keys (listing, and routing by key after a switch
//! of type) but do not select.

use super::{Binding, Dest, Exchange};
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::RwLock;

/// Warren's hashing exchange type.
pub const TYPE: &str = "x-super-stream";
/// The exchange argument that marks a super stream (RabbitMQ's).
pub const MARK: &str = "x-super-stream";
/// The binding argument with a partition's index (RabbitMQ's).
pub const PARTITION_ORDER: &str = "x-stream-partition-order";
/// The seed RabbitMQ's stream clients hash routing keys with.
pub const SEED: u32 = 104_729;

/// 32-bit murmur3 (x86) of a routing key, with RabbitMQ's stream clients' seed.
pub fn hash(key: &[u8]) -> u32 {
    murmur3::murmur3_32(&mut std::io::Cursor::new(key), SEED).unwrap_or(0)
}

/// The index of the partition that a routing key hashes to, of `n` (> 0).
pub fn partition_of(key: &[u8], n: usize) -> usize {
    (hash(key) as u64 % n as u64) as usize
}

/// A binding's partition index, if it has one (a non-negative integer).
pub fn partition_order(args: &FieldTable) -> Option<u32> {
    let n = crate::broker::args::as_int(args.inner().get(PARTITION_ORDER)?)?;
    u32::try_from(n).ok()
}

/// Whether an exchange is a super stream's: of Warren's hashing type, or marked as RabbitMQ
/// marks them.
pub fn is_super_stream(e: &Exchange) -> bool {
    matches!(e.plugin, Some(super::plugins::Plugin::SuperStream(_)))
        || matches!(
            e.arguments.inner().get(MARK),
            Some(AMQPValue::Boolean(true))
        )
}

/// The partitions of a hashing exchange, in partition order: rebuilt from its bindings when
/// they change, read on every publish.
#[derive(Debug, Default)]
pub struct Partitions(RwLock<Vec<Dest>>);

impl Partitions {
    /// Recompute from the exchange's bindings: destinations with a partition order, sorted by
    /// it (ties: in binding order), each once.
    pub fn rebuild(&self, bindings: &[Binding]) {
        let mut ordered: Vec<(u32, usize, &Dest)> = bindings
            .iter()
            .enumerate()
            .filter_map(|(i, b)| partition_order(&b.arguments).map(|o| (o, i, &b.dest)))
            .collect();
        ordered.sort_by_key(|&(o, i, _)| (o, i));
        let mut dests: Vec<Dest> = Vec::with_capacity(ordered.len());
        for (_, _, d) in ordered {
            if !dests.contains(d) {
                dests.push(d.clone());
            }
        }
        *self.0.write() = dests;
    }

    /// The one partition `key` hashes to, if there is any.
    pub fn route(&self, key: &[u8], out: &mut Vec<Dest>) {
        let p = self.0.read();
        if !p.is_empty() {
            out.push(p[partition_of(key, p.len())].clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values RabbitMQ's Java stream client's own tests expect of its murmur3 with the
    /// default seed (unsigned): the same key must pick the same partition here as there.
    #[test]
    fn hash_matches_rabbitmq_stream_clients() {
        for (key, want) in [
            ("hello", 1_321_743_225u32),
            ("brave", 3_825_276_426),
            ("new", 2_970_740_106),
            ("world", 2_453_398_188),
        ] {
            assert_eq!(hash(key.as_bytes()), want, "{key}");
        }
        // Every tail length and non-ASCII UTF-8, against the reference implementation (Python's
        // mmh3, `mmh3.hash(key, 104729, signed=False)`).
        for (key, want) in [
            ("", 3_329_588_566u32),
            ("k", 2_772_677_877),
            ("ab", 398_604_456),
            ("abcd", 3_421_720_556),
            ("customer-42", 80_594_573),
            ("Zürich-€", 2_590_535_889),
        ] {
            assert_eq!(hash(key.as_bytes()), want, "{key}");
        }
        assert_eq!(partition_of(b"hello", 3), (1_321_743_225u64 % 3) as usize);
    }

    #[test]
    fn partition_order_wants_a_non_negative_integer() {
        let mut t = FieldTable::default();
        assert_eq!(partition_order(&t), None);
        t.insert(PARTITION_ORDER.into(), AMQPValue::LongInt(2));
        assert_eq!(partition_order(&t), Some(2));
        t.insert(PARTITION_ORDER.into(), AMQPValue::LongInt(-1));
        assert_eq!(partition_order(&t), None);
        t.insert(PARTITION_ORDER.into(), AMQPValue::LongString("1".into()));
        assert_eq!(partition_order(&t), None);
    }
}
