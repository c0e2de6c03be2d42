//! Super streams: a partitioned stream, made as RabbitMQ's `rabbitmq-streams add_super_stream`
//! makes one (checked against RabbitMQ 3.10): a durable exchange `NAME` with the argument
//! `x-super-stream: true`, and one durable stream per partition, `NAME-KEY`, bound from it with
//! the binding key `KEY` and the binding argument `x-stream-partition-order` (the partition's
//! index, 0…N-1). With a partition count N the keys are `0`…`N-1`; with binding keys, the
//! given keys in their order. The stream arguments (retention, segment size) go to every
//! partition.
//!
//! Routing: with `Routing::Key` the exchange is `direct`, as RabbitMQ's: a publisher names a
//! partition by its binding key. With `Routing::Hash` it is Warren's `x-super-stream` type
//! (`exchange::super_stream`): any routing key (a customer id) lands on one partition by its
//! hash, the partition RabbitMQ's stream clients pick for it.
//!
//! Every partition stream knows its index (`Stream::partition`), set when a binding with
//! `x-stream-partition-order` from a super stream's exchange reaches it — at bind time and
//! when bindings are recovered at start. Consumer groups build on it: the single active
//! consumer of a partition is member `index mod members` (`stream::reader::is_active`), so a
//! group's members, each consuming every partition under one `x-stream-consumer-name`, split
//! the partitions between them.
//!
//! `add_super_stream` is all-or-nothing: it checks everything first, and if creating a part
//! fails, removes what it had created. `delete_super_stream` removes the exchange and the
//! partitions bound from it (as RabbitMQ does), but only from an exchange that is a super
//! stream's.

use super::{ExchangeDeclare, QueueDeclare, VHost};
use crate::broker::args::{validate_new_queue, validate_queue_args};
use crate::broker::exchange::super_stream::{self as ss, is_super_stream, partition_order};
use crate::broker::exchange::{Dest, Exchange};
use crate::broker::queue::{cancel_consumers, Queue};
use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::Arc;
use tracing::warn;

/// Most partitions a super stream may have.
pub const MAX_PARTITIONS: u32 = 1000;

/// How a super stream's partitions are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSpec {
    /// N partitions, keys `0`…`N-1`.
    Count(u32),
    /// One partition per key, in this order.
    Keys(Vec<String>),
}

/// How publishers reach a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// By binding key (a `direct` exchange, as RabbitMQ's).
    Key,
    /// By the hash of any routing key (Warren's `x-super-stream` exchange type).
    Hash,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Key => "key",
            Routing::Hash => "hash",
        }
    }

    pub fn parse(s: &str) -> Option<Routing> {
        match s {
            "key" => Some(Routing::Key),
            "hash" => Some(Routing::Hash),
            _ => None,
        }
    }
}

/// One partition of a super stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The stream's name.
    pub queue: String,
    pub binding_key: String,
    /// `x-stream-partition-order`.
    pub order: u32,
}

/// A super stream as management shows it.
#[derive(Debug, Clone)]
pub struct SuperStreamInfo {
    pub name: String,
    pub routing: Routing,
    /// Partitions in partition order.
    pub partitions: Vec<PartitionInfo>,
    /// The first partition's arguments (those given at creation, plus `x-queue-type`).
    pub arguments: FieldTable,
}

/// Super stream creations and deletions run one at a time (their checks and creations are not
/// one atomic step otherwise).
static CHANGES: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn bad(text: impl Into<String>) -> AmqpError {
    AmqpError::precondition(text)
}

/// The binding keys of a new super stream, checked.
pub fn binding_keys(name: &str, spec: &PartitionSpec) -> AmqpResult<Vec<String>> {
    let keys: Vec<String> = match spec {
        PartitionSpec::Count(0) => {
            return Err(bad(format!(
                "super stream '{name}' needs at least one partition"
            )))
        }
        PartitionSpec::Count(n) if *n > MAX_PARTITIONS => {
            return Err(bad(format!(
                "super stream '{name}' cannot have {n} partitions (at most {MAX_PARTITIONS})"
            )))
        }
        PartitionSpec::Count(n) => (0..*n).map(|i| i.to_string()).collect(),
        PartitionSpec::Keys(k) => k.clone(),
    };
    if keys.is_empty() {
        return Err(bad(format!(
            "super stream '{name}' needs at least one binding key"
        )));
    }
    if keys.len() > MAX_PARTITIONS as usize {
        return Err(bad(format!(
            "super stream '{name}' cannot have {} partitions (at most {MAX_PARTITIONS})",
            keys.len()
        )));
    }
    for (i, k) in keys.iter().enumerate() {
        if k.is_empty() {
            return Err(bad(format!(
                "super stream '{name}': binding keys must not be empty"
            )));
        }
        if keys[..i].contains(k) {
            return Err(bad(format!(
                "super stream '{name}': duplicate binding key '{k}'"
            )));
        }
    }
    Ok(keys)
}

/// The name of the partition with binding key `key`.
pub fn partition_name(name: &str, key: &str) -> String {
    format!("{name}-{key}")
}

impl VHost {
    /// Create a super stream: its partitions, its exchange, their bindings; all or nothing.
    pub fn add_super_stream(
        &self,
        name: &str,
        partitions: &PartitionSpec,
        routing: Routing,
        arguments: &FieldTable,
    ) -> AmqpResult<SuperStreamInfo> {
        if name.is_empty() {
            return Err(bad("a super stream needs a name"));
        }
        if name.starts_with("amq.") {
            return Err(bad(format!(
                "super stream name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let keys = binding_keys(name, partitions)?;
        let names: Vec<String> = keys.iter().map(|k| partition_name(name, k)).collect();
        if let Some(long) = names.iter().find(|n| n.len() > 255) {
            return Err(bad(format!(
                "partition name '{long}' is longer than 255 bytes"
            )));
        }
        let mut args = arguments.clone();
        match args.inner().get("x-queue-type") {
            None => {}
            Some(v) if crate::broker::args::str_bytes(v) == Some(b"stream") => {}
            Some(_) => {
                return Err(bad(format!(
                    "the partitions of super stream '{name}' are streams: x-queue-type must be \
                     'stream'"
                )))
            }
        }
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("stream".into()),
        );
        // The arguments as queue.declare checks them (the texts name the first partition).
        validate_queue_args(&names[0], &self.name, &args)?;
        validate_new_queue(&names[0], &self.name, true, false, false, &args)?;

        let _one_at_a_time = CHANGES.lock();
        if let Some(e) = self.exchanges.get(name) {
            return Err(bad(if is_super_stream(&e) {
                format!(
                    "super stream '{name}' in vhost '{}' already exists",
                    self.name
                )
            } else {
                format!(
                    "exchange '{name}' in vhost '{}' already exists: it cannot become a super \
                     stream",
                    self.name
                )
            }));
        }
        if let Some(taken) = names.iter().find(|n| self.queues.contains_key(n.as_str())) {
            return Err(bad(format!(
                "queue '{taken}' in vhost '{}' already exists: it cannot become a partition of \
                 super stream '{name}'",
                self.name
            )));
        }

        let mut created_queues: Vec<&str> = Vec::new();
        let mut created_exchange = false;
        let made = (|| -> AmqpResult<()> {
            let declare = QueueDeclare {
                durable: true,
                arguments: args.clone(),
                ..Default::default()
            };
            for q in &names {
                let (_, created) = self.declare_queue(q, &declare, 0)?;
                if !created {
                    return Err(bad(format!(
                        "queue '{q}' in vhost '{}' was declared meanwhile",
                        self.name
                    )));
                }
                created_queues.push(q);
            }
            let mut mark = FieldTable::default();
            mark.insert(ss::MARK.into(), AMQPValue::Boolean(true));
            let kind = match routing {
                Routing::Key => "direct",
                Routing::Hash => ss::TYPE,
            };
            self.declare_exchange(
                name,
                &ExchangeDeclare {
                    kind: kind.into(),
                    durable: true,
                    arguments: mark,
                    ..Default::default()
                },
            )?;
            created_exchange = true;
            for (i, (q, key)) in names.iter().zip(&keys).enumerate() {
                let mut order = FieldTable::default();
                order.insert(
                    ss::PARTITION_ORDER.into(),
                    AMQPValue::LongInt(i as i32), // RabbitMQ's type: a signed 32-bit `long`
                );
                self.bind_queue(q, name, key, &order, 0)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            warn!(vhost = %self.name, super_stream = %name,
                "cannot create the super stream, removing what was created: {}", e.text);
            if created_exchange {
                if let Err(e) = self.delete_exchange(name, false) {
                    warn!("{}", e.text);
                }
            }
            for q in created_queues {
                match self.delete_queue(q, false, false, 0) {
                    Ok((_, consumers)) => cancel_consumers(consumers),
                    Err(e) => warn!("{}", e.text),
                }
            }
            return Err(e);
        }
        self.super_stream(name)
            .ok_or_else(|| bad(format!("super stream '{name}' went away while being made")))
    }

    /// Delete a super stream: its exchange, and the partition streams bound from it (their
    /// consumers are cancelled). A name that is not a super stream's exchange is not found.
    pub fn delete_super_stream(&self, name: &str) -> AmqpResult<SuperStreamInfo> {
        let _one_at_a_time = CHANGES.lock();
        let info = self.super_stream(name).ok_or_else(|| {
            AmqpError::not_found(format!("no super stream '{name}' in vhost '{}'", self.name))
        })?;
        // The exchange first (store first): if it cannot go, nothing went.
        self.delete_exchange(name, false)?;
        let mut failed = None;
        for p in &info.partitions {
            match self.delete_queue(&p.queue, false, false, 0) {
                Ok((_, consumers)) => cancel_consumers(consumers),
                Err(e) => {
                    warn!(vhost = %self.name, queue = %p.queue, "cannot delete a partition: {}", e.text);
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(info),
        }
    }

    /// The super stream `name`, if its exchange is a super stream's.
    pub fn super_stream(&self, name: &str) -> Option<SuperStreamInfo> {
        let e = self.exchanges.get(name).map(|e| e.clone())?;
        is_super_stream(&e).then(|| self.super_stream_info(&e))
    }

    /// Every super stream of the vhost, by name.
    pub fn super_streams(&self) -> Vec<SuperStreamInfo> {
        let mut all: Vec<SuperStreamInfo> = self
            .exchange_list()
            .iter()
            .filter(|e| is_super_stream(e))
            .map(|e| self.super_stream_info(e))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn super_stream_info(&self, e: &Exchange) -> SuperStreamInfo {
        let mut partitions: Vec<(PartitionInfo, Arc<Queue>)> = e
            .bindings()
            .into_iter()
            .filter_map(|b| match (&b.dest, partition_order(&b.arguments)) {
                (Dest::Queue(q), Some(order)) => Some((
                    PartitionInfo {
                        queue: q.name.clone(),
                        binding_key: b.routing_key.clone(),
                        order,
                    },
                    q.clone(),
                )),
                _ => None,
            })
            .collect();
        partitions.sort_by(|a, b| (a.0.order, &a.0.queue).cmp(&(b.0.order, &b.0.queue)));
        let routing = match e.plugin {
            Some(crate::broker::exchange::plugins::Plugin::SuperStream(_)) => Routing::Hash,
            _ => Routing::Key,
        };
        SuperStreamInfo {
            name: e.name.clone(),
            routing,
            arguments: partitions
                .first()
                .map(|(_, q)| q.arguments.clone())
                .unwrap_or_default(),
            partitions: partitions.into_iter().map(|(p, _)| p).collect(),
        }
    }

    /// A binding from `source` reached queue `q`: if it is a super stream's binding with a
    /// partition order and `q` a stream, the stream learns its partition index.
    pub(super) fn note_partition(source: &Exchange, q: &Queue, args: &FieldTable) {
        if let (Some(stream), Some(order)) = (q.stream(), partition_order(args)) {
            if is_super_stream(source) {
                stream
                    .partition
                    .store(order, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_new_super_stream() {
        assert_eq!(
            binding_keys("s", &PartitionSpec::Count(3)).unwrap(),
            ["0", "1", "2"]
        );
        assert!(binding_keys("s", &PartitionSpec::Count(0)).is_err());
        assert!(binding_keys("s", &PartitionSpec::Count(MAX_PARTITIONS + 1)).is_err());
        let keys = |k: &[&str]| PartitionSpec::Keys(k.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            binding_keys("s", &keys(&["eu", "us"])).unwrap(),
            ["eu", "us"]
        );
        assert!(binding_keys("s", &keys(&[]))
            .unwrap_err()
            .text
            .contains("at least one"));
        assert!(binding_keys("s", &keys(&["eu", "eu"]))
            .unwrap_err()
            .text
            .contains("duplicate binding key 'eu'"));
        assert!(binding_keys("s", &keys(&["eu", ""])).is_err());
    }
}
