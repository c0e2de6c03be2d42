//! Exchange types that RabbitMQ gets from plugins, built in here:
//! - `x-delayed-message` (rabbitmq-delayed-message-exchange): routes as its `x-delayed-type`
//!   (direct, fanout, topic or headers), but a message with a positive `x-delay` header (ms) is
//!   held until it is due (see `exchange::delayed`);
//! - `x-message-deduplication` (rabbitmq-message-deduplication): routes as fanout, but drops a
//!   message whose `x-deduplication-header` value it has seen within `x-cache-ttl` ms, keeping
//!   at most `x-cache-size` values.
//! - `x-super-stream` (Warren's own): routes as direct for listing, but sends each message to
//!   one partition of a super stream by the hash of its routing key (`exchange::super_stream`).
//!
//! Declaration errors use the plugins' 406 texts.

use crate::broker::args::{as_int, as_str};
use crate::broker::clock::Clock;
use crate::broker::exchange::ExchangeKind;
use crate::error::{code, AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

pub const DELAYED: &str = "x-delayed-message";
pub const DEDUPLICATION: &str = "x-message-deduplication";

/// What a plugin exchange type adds to routing.
#[derive(Debug)]
pub enum Plugin {
    Delayed,
    /// The cache of values seen, and the clock their TTLs run on.
    Deduplication(Mutex<DedupCache>, Arc<Clock>),
    /// The partitions a super stream's routing keys hash onto.
    SuperStream(super::super_stream::Partitions),
}

impl Plugin {
    pub fn type_name(&self) -> &'static str {
        match self {
            Plugin::Delayed => DELAYED,
            Plugin::Deduplication(..) => DEDUPLICATION,
            Plugin::SuperStream(_) => super::super_stream::TYPE,
        }
    }
}

/// An integer argument the dedup plugin accepts: any integer type, or a string of digits.
fn plugin_int(v: &AMQPValue) -> Option<i64> {
    as_int(v).or_else(|| as_str(v).and_then(|s| s.trim().parse().ok()))
}

/// The routing kind and plugin of a declared type, or None when `kind` is not a plugin type.
pub fn parse(
    kind: &str,
    args: &FieldTable,
    clock: &Arc<Clock>,
) -> AmqpResult<Option<(ExchangeKind, Plugin)>> {
    match kind {
        DELAYED => {
            let inner =
                match args.inner().get("x-delayed-type").and_then(as_str) {
                    Some(t) if t == DELAYED => return Err(AmqpError::precondition(
                        "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
                    )),
                    Some(t) => ExchangeKind::parse(&t).ok_or_else(|| {
                        AmqpError::connection(
                            code::COMMAND_INVALID,
                            format!("unknown exchange type '{t}'"),
                        )
                    })?,
                    None => {
                        return Err(AmqpError::precondition(
                            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
                        ))
                    }
                };
            Ok(Some((inner, Plugin::Delayed)))
        }
        DEDUPLICATION => {
            let t = args.inner();
            let size = match t.get("x-cache-size").and_then(plugin_int) {
                Some(n) if n > 0 => n as u64,
                _ => return Err(AmqpError::precondition(
                    "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
                )),
            };
            let ttl = match t.get("x-cache-ttl") {
                None => None,
                Some(v) => match plugin_int(v) {
                    Some(n) if n > 0 => Some(n as u64),
                    _ => {
                        return Err(AmqpError::precondition(
                            "Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
                        ))
                    }
                },
            };
            match t.get("x-cache-persistence").and_then(as_str).as_deref() {
                None if !t.contains_key("x-cache-persistence") => {}
                Some("memory") | Some("disk") => {}
                _ => {
                    return Err(AmqpError::precondition(
                        "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
                    ))
                }
            }
            Ok(Some((
                ExchangeKind::Fanout,
                Plugin::Deduplication(Mutex::new(DedupCache::new(size, ttl)), clock.clone()),
            )))
        }
        super::super_stream::TYPE => Ok(Some((
            ExchangeKind::Direct,
            Plugin::SuperStream(Default::default()),
        ))),
        _ => Ok(None),
    }
}

/// Exchange-level deduplication of one message: true when its `x-deduplication-header` value was
/// seen within the TTL (the message's own `x-cache-ttl` header, else the exchange's). Messages
/// without the header are never duplicates.
pub fn is_duplicate(
    cache: &Mutex<DedupCache>,
    clock: &Clock,
    msg: &crate::broker::message::Message,
) -> bool {
    let Some(key) = crate::broker::queue::lifecycle::dedup_key(msg) else {
        return false;
    };
    let ttl = crate::broker::queue::lifecycle::header(msg, "x-cache-ttl")
        .as_ref()
        .and_then(plugin_int)
        .filter(|&n| n > 0)
        .map(|n| n as u64);
    cache.lock().check_and_insert(&key, ttl, clock.now_ms())
}

/// Most values a dedup cache keeps, whatever `x-cache-size` asks (bounded memory).
pub const MAX_CACHE_SIZE: u64 = 10_000_000;

/// The seen values of a deduplication exchange: at most `size` of them, each until its TTL runs
/// out (none: until evicted). When full, the oldest insertion goes first.
#[derive(Debug)]
pub struct DedupCache {
    size: usize,
    ttl: Option<u64>,
    /// value → (expiry on the `now_ms` clock or u64::MAX, its key in `order`)
    seen: HashMap<Arc<[u8]>, u64>,
    /// Insertion order for eviction; may hold stale keys (re-inserted after expiring), which
    /// are skipped, and is compacted when it grows past twice the map.
    order: VecDeque<Arc<[u8]>>,
}

impl DedupCache {
    pub fn new(size: u64, ttl: Option<u64>) -> Self {
        DedupCache {
            size: size.min(MAX_CACHE_SIZE) as usize,
            ttl,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `key` is a duplicate now; if not, it is remembered (for `ttl`, or the cache's
    /// TTL when None).
    pub fn check_and_insert(&mut self, key: &[u8], ttl: Option<u64>, now: u64) -> bool {
        if let Some(&exp) = self.seen.get(key) {
            if exp > now {
                return true;
            }
            self.seen.remove(key);
        }
        while self.seen.len() >= self.size {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((k, _)) = self.seen.get_key_value(&old) {
                if Arc::ptr_eq(k, &old) {
                    self.seen.remove(&old);
                }
            }
        }
        let exp = ttl.or(self.ttl).map_or(u64::MAX, |t| now.saturating_add(t));
        let k: Arc<[u8]> = Arc::from(key);
        self.seen.insert(k.clone(), exp);
        self.order.push_back(k);
        if self.order.len() > 2 * self.seen.len() + 64 {
            let seen = &self.seen;
            self.order.retain(|k| {
                seen.get_key_value(k)
                    .is_some_and(|(have, _)| Arc::ptr_eq(have, k))
            });
        }
        false
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_cache_bounds_and_ttl() {
        let mut c = DedupCache::new(2, None);
        assert!(!c.check_and_insert(b"a", None, 0));
        assert!(c.check_and_insert(b"a", None, 1));
        assert!(!c.check_and_insert(b"b", None, 1));
        assert!(!c.check_and_insert(b"c", None, 1)); // evicts "a"
        assert_eq!(c.len(), 2);
        assert!(!c.check_and_insert(b"a", None, 2));
        let mut t = DedupCache::new(10, Some(100));
        assert!(!t.check_and_insert(b"x", None, 0));
        assert!(t.check_and_insert(b"x", None, 99));
        assert!(!t.check_and_insert(b"x", None, 100));
        assert!(!t.check_and_insert(b"y", Some(5), 100));
        assert!(!t.check_and_insert(b"y", None, 105));
        for i in 0..1000u32 {
            t.check_and_insert(&i.to_be_bytes(), Some(1), i as u64);
        }
        assert!(t.len() <= 10 && t.order.len() <= 2 * 10 + 64);
    }

    #[test]
    fn declaration_errors() {
        let mut a = FieldTable::default();
        assert_eq!(
            parse(DELAYED, &a, &Default::default()).unwrap_err().text,
            "Invalid argument, 'x-delayed-type' must be an existing exchange type"
        );
        a.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("nope".into()),
        );
        assert_eq!(
            parse(DELAYED, &a, &Default::default()).unwrap_err().code,
            code::COMMAND_INVALID
        );
        a.insert(
            "x-delayed-type".into(),
            AMQPValue::LongString("topic".into()),
        );
        assert!(matches!(
            parse(DELAYED, &a, &Default::default()).unwrap(),
            Some((ExchangeKind::Topic, Plugin::Delayed))
        ));
        let mut d = FieldTable::default();
        assert!(parse(DEDUPLICATION, &d, &Default::default()).is_err());
        d.insert("x-cache-size".into(), AMQPValue::LongString("10".into()));
        assert!(parse(DEDUPLICATION, &d, &Default::default())
            .unwrap()
            .is_some());
        d.insert("x-cache-ttl".into(), AMQPValue::LongInt(0));
        assert!(parse(DEDUPLICATION, &d, &Default::default()).is_err());
        assert!(parse("direct", &d, &Default::default()).unwrap().is_none());
    }
}
