//! Declaring and deleting exchanges and queues, with RabbitMQ's equivalence checks and texts.

use super::{server_queue_name, VHost};
use crate::broker::args::{as_int, is_stream, type_name, validate_new_queue, validate_queue_args};
use crate::broker::exchange::{Dest, Exchange, ExchangeKind};
use crate::broker::memory::MemoryMonitor;
use crate::broker::queue::{Consumer, Queue};
use crate::error::{code, AmqpError, AmqpResult};
use crate::store::{ExchangeDef, QueueDef};
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::warn;

/// Queue arguments whose values must match on redeclare (as RabbitMQ checks them).
const EQUIVALENT_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-type",
    "x-single-active-consumer",
    "x-delivery-limit",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
];

/// What a quorum queue's redeclare compares, in RabbitMQ's order (its quorum queue type's
/// list: the first difference is the one reported).
const QUORUM_EQUIVALENT_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// The parameters of queue.declare, minus the name.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// The parameters of exchange.declare, minus the name.
#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    pub kind: String,
    pub passive: bool,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// RabbitMQ's description of an argument value in equivalence errors:
/// `the value '1000' of type 'signedint'`, or `none`.
fn described(v: Option<&AMQPValue>) -> String {
    let Some(v) = v else {
        return "none".into();
    };
    let kind = type_name(v);
    format!("the value '{}' of type '{kind}'", value_text(Some(v)))
}

fn value_text(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".into(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        Some(AMQPValue::Boolean(b)) => b.to_string(),
        Some(AMQPValue::ShortShortInt(n)) => n.to_string(),
        Some(AMQPValue::ShortShortUInt(n)) => n.to_string(),
        Some(AMQPValue::ShortInt(n)) => n.to_string(),
        Some(AMQPValue::ShortUInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::LongUInt(n)) => n.to_string(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

fn same_value(a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    match (a, b) {
        // Integers compare by value, whatever width the client chose to encode them in.
        (Some(x), Some(y)) => match (as_int(x), as_int(y)) {
            (Some(p), Some(q)) => p == q,
            _ => value_text(a) == value_text(b),
        },
        (None, None) => true,
        _ => false,
    }
}

impl VHost {
    /// The memory account messages read back from disk are counted in (an unlimited one when
    /// the vhost has none, as in benches).
    fn memory_account(&self) -> &'static MemoryMonitor {
        self.memory
            .get()
            .cloned()
            .unwrap_or_else(|| MemoryMonitor::unlimited())
    }

    /// A new durable, non-exclusive queue keeps its persistent messages in the log; every queue
    /// pages out the others (transient messages) to the spill log beyond its RAM budget.
    pub(super) fn with_log(&self, q: Queue, id: Option<u32>) -> Queue {
        let Some(st) = &self.store else {
            return q;
        };
        if self.quorum.contains_key(&q.name) {
            // A quorum queue in a cluster: its messages are in its group's log and memory.
            return q;
        }
        let memory = self.memory_account();
        let budget = st.messages().options().queue_ram_budget;
        let q = q.spilling_to(st.spill().clone(), budget, memory);
        if !q.durable || q.exclusive_owner.is_some() {
            return q;
        }
        let id = match id {
            Some(id) if id != 0 => id,
            _ => match st.next_queue_id() {
                Ok(id) => id,
                Err(e) => {
                    warn!(queue = %q.name, "no message-log id for durable queue: {e}");
                    return q;
                }
            },
        };
        q.stored_in(id, st.messages().clone(), budget, memory)
    }

    /// A stream queue: its log opened (created) under the store's `streams/<id>`, with a new id
    /// unless recovering one. Streams need the store: without one they are refused.
    pub(super) fn stream_queue(&self, q: Queue, id: Option<u32>) -> Result<Queue, String> {
        let Some(st) = &self.store else {
            return Err("stream queues need a data directory".into());
        };
        let id = match id {
            Some(id) if id != 0 => id,
            _ => st.next_queue_id().map_err(|e| e.to_string())?,
        };
        let memory = self.memory_account();
        let options = crate::broker::stream::args::stream_options(&q.arguments);
        let dir = st.stream_dir(id);
        let log = crate::store::stream::StreamLog::open(&dir, options, st.messages().clone())
            .map_err(|e| e.to_string())?;
        let offsets = Some(dir.join(crate::broker::stream::OFFSETS_FILE));
        let mut q = q.with_stream(crate::broker::stream::Stream::new(log, memory, offsets));
        q.store_id = id;
        Ok(q)
    }

    pub fn declare_exchange(&self, name: &str, d: &ExchangeDeclare) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if d.passive {
            self.exchange(name)?;
            return Ok(());
        }
        // An existing amq.* exchange may be redeclared with its own properties; a new one not.
        if name.starts_with("amq.") && !self.exchanges.contains_key(name) {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let (kind, plugin) =
            match crate::broker::exchange::plugins::parse(&d.kind, &d.arguments, &self.clock)? {
                Some((k, p)) => (k, Some(p)),
                None => match ExchangeKind::parse(&d.kind) {
                    Some(k) => (k, None),
                    None => {
                        return Err(AmqpError::connection(
                            code::COMMAND_INVALID,
                            format!("unknown exchange type '{}'", d.kind),
                        ))
                    }
                },
            };
        let type_name = plugin.as_ref().map_or(kind.as_str(), |p| p.type_name());
        if let Some(e) = self.exchanges.get(name) {
            let ineq = |arg: &str, got: &str, cur: &str| {
                AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received \
                     '{got}' but current is '{cur}'",
                    self.name
                ))
            };
            if e.type_name() != type_name || e.kind != kind {
                return Err(ineq("type", type_name, e.type_name()));
            }
            if e.durable != d.durable {
                return Err(ineq(
                    "durable",
                    &d.durable.to_string(),
                    &e.durable.to_string(),
                ));
            }
            if e.auto_delete != d.auto_delete {
                return Err(ineq(
                    "auto_delete",
                    &d.auto_delete.to_string(),
                    &e.auto_delete.to_string(),
                ));
            }
            if e.internal != d.internal {
                return Err(ineq(
                    "internal",
                    &d.internal.to_string(),
                    &e.internal.to_string(),
                ));
            }
            let got = d.arguments.inner().get("alternate-exchange");
            let cur = e.arguments.inner().get("alternate-exchange");
            if !same_value(got, cur) {
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg 'alternate-exchange' for exchange '{name}' in vhost '{}': \
                     received {} but current is {}",
                    self.name,
                    described(got),
                    described(cur)
                )));
            }
            return Ok(());
        }
        let mut created = false;
        let mut plugin = plugin;
        self.exchanges.entry(name.to_owned()).or_insert_with(|| {
            created = true;
            let mut x = Exchange::new(
                name.to_owned(),
                kind,
                d.durable,
                d.auto_delete,
                d.internal,
                d.arguments.clone(),
            );
            x.plugin = plugin.take();
            Arc::new(x)
        });
        if created && type_name == crate::broker::exchange::plugins::DELAYED {
            self.delayed.exchanges.fetch_add(1, Ordering::Relaxed);
        }
        if created && d.durable {
            let def = ExchangeDef {
                vhost: self.name.clone(),
                name: name.to_owned(),
                kind: type_name.to_owned(),
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments.clone(),
            };
            if let Err(e) = self.persist(|st| st.put_exchange(&def)) {
                if let Some((_, x)) = self.exchanges.remove(name) {
                    self.forget_plugin_state(&x);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let Some(e) = self.exchanges.get(name).map(|e| e.clone()) else {
            return Ok(()); // deleting a missing exchange is fine, as in RabbitMQ
        };
        if if_unused && e.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        // The store first: a deletion that cannot be persisted changes nothing.
        if e.durable {
            self.persist(|st| st.delete_exchange(&self.name, &e.name))?;
        }
        self.drop_exchange(&e);
        Ok(())
    }

    /// Remove an exchange as a side effect (auto-delete, vhost deletion): no client waits on it,
    /// so a store failure is logged (recovery skips bindings to what is gone).
    pub(super) fn remove_exchange(&self, e: &Arc<Exchange>) {
        if e.durable {
            if let Err(err) = self.persist(|st| st.delete_exchange(&self.name, &e.name)) {
                warn!("{}", err.text);
            }
        }
        self.drop_exchange(e);
    }

    /// Take an exchange out of the registry with its bindings (both directions).
    fn drop_exchange(&self, e: &Arc<Exchange>) {
        if self
            .exchanges
            .remove_if(&e.name, |_, v| Arc::ptr_eq(v, e))
            .is_some()
        {
            self.forget_plugin_state(e);
        }
        // Bindings where it is the source go with it; those where it is the destination too.
        for b in e.bindings() {
            e.unbind(&b.dest, &b.routing_key, &b.arguments);
            self.forget_binding(e, &b.dest, &b.routing_key, &b.arguments);
            if let Dest::Queue(q) = &b.dest {
                q.bound_from.lock().retain(|(x, _, _)| !Arc::ptr_eq(x, e));
            }
        }
        let as_dest = Dest::Exchange(e.clone());
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|x| x.clone()).collect();
        for s in sources {
            let gone = s.unbind_all(&as_dest);
            for b in &gone {
                self.forget_binding(&s, &b.dest, &b.routing_key, &b.arguments);
            }
            if !gone.is_empty() {
                self.maybe_auto_delete_exchange(&s);
            }
        }
    }

    pub(super) fn maybe_auto_delete_exchange(&self, e: &Arc<Exchange>) {
        if e.auto_delete && !e.has_bindings() {
            self.remove_exchange(e);
        }
    }

    /// Declare (or check) a queue for connection `conn`. Returns the queue and whether it is new.
    pub fn declare_queue(
        &self,
        name: &str,
        d: &QueueDeclare,
        conn: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        if d.passive {
            return Ok((self.queue(name, conn)?, false));
        }
        if name.is_empty() {
            return self.declare_named_queue(server_queue_name(), d, conn);
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        self.declare_named_queue(name.to_owned(), d, conn)
    }

    /// `declare_queue` once the name is settled: a client's (checked) or a server-generated one
    /// (`server_queue_name`, which callers generate first to check permissions on it).
    pub fn declare_named_queue(
        &self,
        name: String,
        d: &QueueDeclare,
        conn: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        let r = self.declare_new_or_existing(name, d, conn);
        if r.is_ok() {
            crate::observe::Churn::count(&self.churn.queues_declared);
        }
        r
    }

    fn declare_new_or_existing(
        &self,
        name: String,
        d: &QueueDeclare,
        conn: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        let owner = d.exclusive.then_some(conn);
        // As RabbitMQ: an existing queue is compared with the declaration first, so a value
        // that differs is reported as inequivalent (not as invalid, as for a new queue).
        let existing = self.queues.get(&name).map(|q| q.clone());
        if let Some(q) = &existing {
            self.check_equivalent(&name, q, d, owner)?;
        }
        validate_queue_args(&name, &self.name, &d.arguments)?;
        if existing.is_none() {
            validate_new_queue(
                &name,
                &self.name,
                d.durable,
                d.exclusive,
                d.auto_delete,
                &d.arguments,
            )?;
        }
        let new_queue = || {
            Queue::new(
                name.clone(),
                self.me.clone(),
                self.clock.clone(),
                self.name.clone(),
                d.durable,
                d.auto_delete,
                owner,
                d.arguments.clone(),
            )
        };
        // A new stream opens its files first: that can fail, which the registry's entry
        // cannot.
        let mut stream = None;
        if is_stream(&d.arguments)
            && !self.queues.contains_key(&name)
            && self.remote_home(&name).is_none()
        {
            stream = Some(self.stream_queue(new_queue(), None).map_err(|e| {
                warn!(queue = %name, vhost = %self.name, "cannot create the stream: {e}");
                AmqpError::connection(
                    code::INTERNAL_ERROR,
                    format!("cannot create stream '{name}': {e}"),
                )
            })?);
        }
        // In a cluster, a queue declared on another node is a record here: no log, no stream.
        let remote = self.remote_home(&name);
        if remote.is_some() {
            stream = None;
        }
        let mut created = false;
        let q = self
            .queues
            .entry(name.clone())
            .or_insert_with(|| {
                created = true;
                if let Some(home) = remote.clone() {
                    let mut q = new_queue();
                    q.remote = Some(home);
                    return Arc::new(q);
                }
                match stream.take() {
                    Some(q) => Arc::new(q),
                    None => Arc::new(self.with_log(new_queue(), None)),
                }
            })
            .clone();
        if let Some(lost) = stream {
            // Another declare of the same name won the race: its stream is the one.
            if let Some(s) = lost.stream() {
                s.log.delete();
            }
        }
        if created {
            // A record expires with its queue, on its node.
            if q.remote.is_none() {
                self.watch_expiry(&q);
            }
            if q.durable && q.exclusive_owner.is_none() {
                let def = QueueDef {
                    vhost: self.name.clone(),
                    name: name.clone(),
                    id: q.store_id,
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                    node: q.remote.clone(),
                    quorum: self.quorum_of(&name),
                };
                if let Err(e) = self.persist(|st| st.put_queue(&def)) {
                    self.queues.remove(&name);
                    q.mark_deleted(); // anyone who saw it in between sees it gone
                    return Err(e);
                }
            }
            crate::observe::Churn::count(&self.churn.queues_created);
            return Ok((q, true));
        }
        if existing.is_none() {
            // Another declare created it meanwhile: compare with that one.
            self.check_equivalent(&name, &q, d, owner)?;
        }
        Ok((q, false))
    }

    /// queue.declare of an existing queue: RabbitMQ's checks, in its order (exclusive access,
    /// durable, auto-delete, then the arguments the queue's type compares, in that type's
    /// order), with its texts.
    fn check_equivalent(
        &self,
        name: &str,
        q: &Arc<Queue>,
        d: &QueueDeclare,
        owner: Option<u64>,
    ) -> AmqpResult<()> {
        if q.exclusive_owner.is_some() && q.exclusive_owner != owner {
            return Err(self.locked(name));
        }
        q.touch();
        if q.exclusive_owner.is_none() && d.exclusive {
            return Err(self.locked(name));
        }
        let ineq = |arg: &str, got: String, cur: String| {
            AmqpError::precondition(format!(
                "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received '{got}' but \
                 current is '{cur}'",
                self.name
            ))
        };
        if q.durable != d.durable {
            return Err(ineq(
                "durable",
                d.durable.to_string(),
                q.durable.to_string(),
            ));
        }
        if q.auto_delete != d.auto_delete {
            return Err(ineq(
                "auto_delete",
                d.auto_delete.to_string(),
                q.auto_delete.to_string(),
            ));
        }
        // A missing x-queue-type means the default type, so it matches an explicit "classic";
        // the texts show what each side has (RabbitMQ compares the tables as declared: a
        // queue declared without the argument has none).
        let classic = AMQPValue::LongString("classic".into());
        let compared = |t: &FieldTable, arg: &str| match (t.inner().get(arg), arg) {
            (None, "x-queue-type") => Some(classic.clone()),
            (v, _) => v.cloned(),
        };
        // A stream redeclared without a type (a classic queue) is told so first, as RabbitMQ
        // does; otherwise the arguments in their order (a stream's own ones too).
        let first = (q.is_stream() && !d.arguments.inner().contains_key("x-queue-type"))
            .then_some(&"x-queue-type");
        let (args, extra): (&[&str], &[&str]) = if q.life.quorum {
            (QUORUM_EQUIVALENT_ARGS, &[])
        } else if q.is_stream() {
            (
                EQUIVALENT_QUEUE_ARGS,
                &["x-initial-cluster-size", "x-queue-leader-locator"],
            )
        } else {
            (EQUIVALENT_QUEUE_ARGS, &[])
        };
        for arg in first.into_iter().chain(args).chain(extra) {
            if same_value(
                compared(&d.arguments, arg).as_ref(),
                compared(&q.arguments, arg).as_ref(),
            ) {
                continue;
            }
            let (got, cur) = (d.arguments.inner().get(*arg), q.arguments.inner().get(*arg));
            // RabbitMQ's texts: the bare values when both sides have one, each with its
            // type when one side has none.
            let (got, cur) = match (got, cur) {
                (Some(g), Some(c)) => (
                    format!("'{}'", value_text(Some(g))),
                    format!("'{}'", value_text(Some(c))),
                ),
                _ => (described(got), described(cur)),
            };
            return Err(AmqpError::precondition(format!(
                "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received {got} but \
                 current is {cur}",
                self.name,
            )));
        }
        Ok(())
    }

    /// Delete a queue; returns the number of ready messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> AmqpResult<(u32, Vec<Arc<Consumer>>)> {
        let q = match self.queue(name, conn) {
            Ok(q) => q,
            Err(e) if e.code == code::NOT_FOUND => return Ok((0, Vec::new())),
            Err(e) => return Err(e),
        };
        let c = q.counts();
        // As RabbitMQ: if-unused and if-empty do not apply to a stream.
        let (if_unused, if_empty) = if q.is_stream() {
            (false, false)
        } else {
            (if_unused, if_empty)
        };
        if if_unused && c.consumers > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && c.ready > 0 {
            return Err(AmqpError::precondition(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        // The store first: a deletion that cannot be persisted changes nothing.
        if q.durable && q.exclusive_owner.is_none() {
            self.persist(|st| st.delete_queue(&self.name, &q.name))?;
        }
        Ok(self.drop_queue(&q))
    }

    /// Remove a queue as a side effect (exclusive owner gone, auto-delete, `x-expires`, vhost
    /// deletion): no client waits on it, so a store failure is logged. Returns its ready count
    /// and the consumers to tell (basic.cancel) — after the caller's own reply, as RabbitMQ
    /// orders them.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> (u32, Vec<Arc<Consumer>>) {
        // In a cluster, a queue others know of goes the way of every definition change: the
        // deletion is proposed, and applied on every node (here too) once committed.
        if let (Some(c), None) = (self.cluster.get(), q.exclusive_owner) {
            let c = c.clone();
            let op = crate::cluster::meta::MetaOp::DeleteQueue {
                vhost: self.name.clone(),
                name: q.name.clone(),
                if_unused: false,
                if_empty: false,
            };
            tokio::spawn(async move {
                if let Err(e) = c.propose(op).await {
                    warn!("cannot delete a queue in the cluster: {e}");
                }
            });
            return (0, Vec::new());
        }
        self.remove_queue_here(q)
    }

    /// `remove_queue` on this node only (its vhost is going away).
    pub(super) fn remove_queue_here(&self, q: &Arc<Queue>) -> (u32, Vec<Arc<Consumer>>) {
        if q.durable && q.exclusive_owner.is_none() {
            if let Err(e) = self.persist(|st| st.delete_queue(&self.name, &q.name)) {
                warn!("{}", e.text);
            }
        }
        self.drop_queue(q)
    }

    /// Take a queue out of the registry with its bindings, and mark it deleted.
    fn drop_queue(&self, q: &Arc<Queue>) -> (u32, Vec<Arc<Consumer>>) {
        if self
            .queues
            .remove_if(&q.name, |_, v| Arc::ptr_eq(v, q))
            .is_some()
        {
            crate::observe::Churn::count(&self.churn.queues_deleted);
            self.homes.remove(&q.name);
            self.followers.remove(&q.name);
            self.quorum.remove(&q.name);
        }
        if let Some(r) = q.replica() {
            // Its group goes with it: what its deletion drops is not settled one by one.
            r.deactivate();
        }
        let (n, consumers) = q.mark_deleted();
        let bound: Vec<_> = std::mem::take(&mut *q.bound_from.lock());
        let dest = Dest::Queue(q.clone());
        for (e, key, args) in bound {
            if e.unbind(&dest, &key, &args) {
                self.forget_binding(&e, &dest, &key, &args);
                self.maybe_auto_delete_exchange(&e);
            }
        }
        (n, consumers)
    }
}
