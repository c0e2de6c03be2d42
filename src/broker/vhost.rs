//! A virtual host: the registries of exchanges and queues, and every operation on them that a
//! client can ask for (declare, delete, bind, purge, route). Errors carry RabbitMQ's reply codes
//! and texts.

use crate::broker::args::{as_int, type_name, validate_new_queue, validate_queue_args};
use crate::broker::exchange::{Dest, Exchange, ExchangeKind};
use crate::broker::memory::MemoryMonitor;
use crate::broker::message::Message;
use crate::broker::queue::{cancel_consumers, Consumer, Queue};
use crate::error::{code, AmqpError, AmqpResult};
use crate::store::{
    BindingDef, Definitions, DestKind, ExchangeDef, QueueDef, Recovered, Store, StoreError, Stored,
};
use amq_protocol::types::{AMQPValue, FieldTable};
use dashmap::DashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{error, warn};

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    exchanges: DashMap<String, Arc<Exchange>>,
    /// The default exchange (also in `exchanges` under ""), at hand for counting its publishes.
    default_exchange: Arc<Exchange>,
    queues: DashMap<String, Arc<Queue>>,
    store: Option<Arc<Store>>,
    /// Itself, for its queues (dead-lettering republishes through the vhost).
    me: std::sync::Weak<VHost>,
    /// Queues that have held messages with a TTL: the expiry sweeper visits only these.
    ttl_queues: parking_lot::Mutex<Vec<std::sync::Weak<Queue>>>,
    /// Channels consuming from amq.rabbitmq.reply-to, by token.
    pub replies: crate::broker::reply_to::ReplyRegistry,
    /// Channels whose unacked deliveries may exceed the consumer timeout.
    pub ack_watch: crate::broker::ack_watch::AckWatch,
    /// Messages held by `x-delayed-message` exchanges.
    pub delayed: Arc<crate::broker::delayed::DelayedStore>,
    /// The message-log id of this vhost's stored delayed messages (assigned on first use).
    delayed_id: std::sync::OnceLock<u32>,
    /// The broker's memory account, for messages read back from the message log.
    pub memory: std::sync::OnceLock<Arc<MemoryMonitor>>,
}

fn store_failed(e: StoreError) -> AmqpError {
    error!("{e}");
    AmqpError::connection(code::INTERNAL_ERROR, format!("{e}"))
}

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

/// A name for a queue declared with an empty name, as RabbitMQ makes them (`amq.gen-…`).
pub fn server_queue_name() -> String {
    random_name("amq.gen-")
}

fn random_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let tail: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// A random token (for direct reply-to addresses).
pub fn random_token() -> String {
    random_name("")
}

/// A name for a server-generated consumer tag.
pub fn generate_consumer_tag() -> String {
    random_name("amq.ctag-")
}

impl VHost {
    pub fn new(name: &str, store: Option<Arc<Store>>, me: std::sync::Weak<VHost>) -> Self {
        let v = VHost {
            name: name.to_owned(),
            exchanges: DashMap::new(),
            default_exchange: Arc::new(Exchange::new(
                String::new(),
                ExchangeKind::Direct,
                true,
                false,
                false,
                FieldTable::default(),
            )),
            queues: DashMap::new(),
            store,
            me,
            ttl_queues: parking_lot::Mutex::new(Vec::new()),
            replies: Default::default(),
            ack_watch: Default::default(),
            delayed: Default::default(),
            delayed_id: std::sync::OnceLock::new(),
            memory: std::sync::OnceLock::new(),
        };
        v.exchanges
            .insert(String::new(), v.default_exchange.clone());
        for (n, kind) in [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
            ("amq.rabbitmq.trace", ExchangeKind::Topic),
        ] {
            v.exchanges.insert(
                n.to_owned(),
                Arc::new(Exchange::new(
                    n.to_owned(),
                    kind,
                    true,
                    false,
                    n == "amq.rabbitmq.trace",
                    FieldTable::default(),
                )),
            );
        }
        v
    }

    /// Run a store write, if this vhost has a store.
    fn persist(&self, f: impl FnOnce(&Store) -> Result<(), StoreError>) -> AmqpResult<()> {
        match &self.store {
            Some(st) => f(st).map_err(store_failed),
            None => Ok(()),
        }
    }

    /// A new durable, non-exclusive queue keeps its persistent messages in the log.
    fn with_log(&self, q: Queue, id: Option<u32>) -> Queue {
        let Some(st) = &self.store else {
            return q;
        };
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
        let log = st.messages().clone();
        let budget = log.options().queue_ram_budget;
        let memory = self
            .memory
            .get()
            .cloned()
            .unwrap_or_else(|| Arc::new(MemoryMonitor::new(u64::MAX)));
        q.stored_in(id, log, budget, memory)
    }

    /// The stored form of a binding, if it is durable (both ends durable).
    fn binding_def(
        &self,
        source: &Exchange,
        dest: &Dest,
        key: &str,
        args: &FieldTable,
    ) -> Option<BindingDef> {
        let (durable, kind) = match dest {
            Dest::Queue(q) => (q.durable && q.exclusive_owner.is_none(), DestKind::Queue),
            Dest::Exchange(x) => (x.durable, DestKind::Exchange),
        };
        (source.durable && durable && !source.name.is_empty()).then(|| BindingDef {
            vhost: self.name.clone(),
            source: source.name.clone(),
            destination: dest.name().to_owned(),
            destination_kind: kind,
            routing_key: key.to_owned(),
            arguments: args.clone(),
        })
    }

    /// Forget a stored binding that went away as a side effect (no client waits on it).
    fn forget_binding(&self, source: &Exchange, dest: &Dest, key: &str, args: &FieldTable) {
        if let Some(d) = self.binding_def(source, dest, key, args) {
            if let Err(e) = self.persist(|st| st.delete_binding(&d)) {
                warn!("{}", e.text);
            }
        }
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be \
             originally declared on another connection or the exclusive property value does not \
             match that of the original declaration.",
            self.name
        ))
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| self.no_exchange(name))
    }

    /// Look up a queue for use by connection `conn` (exclusive queues only by their owner).
    pub fn queue(&self, name: &str, conn: u64) -> AmqpResult<Arc<Queue>> {
        let q = self
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| self.no_queue(name))?;
        match q.exclusive_owner {
            Some(owner) if owner != conn => Err(self.locked(name)),
            _ => Ok(q),
        }
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
        let (kind, plugin) = match crate::broker::exchange::plugins::parse(&d.kind, &d.arguments)? {
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
        self.remove_exchange(&e);
        Ok(())
    }

    fn remove_exchange(&self, e: &Arc<Exchange>) {
        if self
            .exchanges
            .remove_if(&e.name, |_, v| Arc::ptr_eq(v, e))
            .is_some()
        {
            self.forget_plugin_state(e);
        }
        if e.durable {
            if let Err(err) = self.persist(|st| st.delete_exchange(&self.name, &e.name)) {
                warn!("{}", err.text);
            }
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

    fn maybe_auto_delete_exchange(&self, e: &Arc<Exchange>) {
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
        validate_queue_args(&name, &self.name, &d.arguments)?;
        if !self.queues.contains_key(&name) {
            validate_new_queue(
                &name,
                &self.name,
                d.durable,
                d.exclusive,
                d.auto_delete,
                &d.arguments,
            )?;
        }
        let owner = d.exclusive.then_some(conn);
        let mut created = false;
        let q = self
            .queues
            .entry(name.clone())
            .or_insert_with(|| {
                created = true;
                let q = Queue::new(
                    name.clone(),
                    self.me.clone(),
                    self.name.clone(),
                    d.durable,
                    d.auto_delete,
                    owner,
                    d.arguments.clone(),
                );
                Arc::new(self.with_log(q, None))
            })
            .clone();
        if created {
            self.watch_expiry(&q);
            if q.durable && q.exclusive_owner.is_none() {
                let def = QueueDef {
                    vhost: self.name.clone(),
                    name: name.clone(),
                    id: q.store_id,
                    auto_delete: q.auto_delete,
                    arguments: q.arguments.clone(),
                };
                if let Err(e) = self.persist(|st| st.put_queue(&def)) {
                    self.queues.remove(&name);
                    q.mark_deleted(); // anyone who saw it in between sees it gone
                    return Err(e);
                }
            }
            return Ok((q, true));
        }
        if q.exclusive_owner.is_some() && q.exclusive_owner != owner {
            return Err(self.locked(&name));
        }
        q.touch();
        if q.exclusive_owner.is_none() && d.exclusive {
            return Err(self.locked(&name));
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
        // A missing x-queue-type means the default type, so it matches an explicit "classic".
        let classic = AMQPValue::LongString("classic".into());
        let with_default = |t: &'_ FieldTable, arg: &str| match (t.inner().get(arg), arg) {
            (None, "x-queue-type") => Some(classic.clone()),
            (v, _) => v.cloned(),
        };
        for arg in EQUIVALENT_QUEUE_ARGS {
            let got = with_default(&d.arguments, arg);
            let cur = with_default(&q.arguments, arg);
            let (got, cur) = (got.as_ref(), cur.as_ref());
            if !same_value(got, cur) {
                return Err(AmqpError::precondition(format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received {} but \
                     current is {}",
                    self.name,
                    described(got),
                    described(cur)
                )));
            }
        }
        Ok((q, false))
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
        Ok(self.remove_queue(&q))
    }

    /// Remove a queue from the registry and all its bindings. Returns its ready count and the
    /// consumers to tell (basic.cancel) — after the caller's own reply, as RabbitMQ orders them.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> (u32, Vec<Arc<Consumer>>) {
        self.queues.remove_if(&q.name, |_, v| Arc::ptr_eq(v, q));
        if q.durable && q.exclusive_owner.is_none() {
            if let Err(e) = self.persist(|st| st.delete_queue(&self.name, &q.name)) {
                warn!("{}", e.text);
            }
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

    fn check_bindable(&self, exchange: &str) -> AmqpResult<Arc<Exchange>> {
        if exchange.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange(exchange)
    }

    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> AmqpResult<()> {
        let q = self.queue(queue, conn)?;
        let e = self.check_bindable(exchange)?;
        let dest = Dest::Queue(q.clone());
        if e.bind(dest.clone(), key, args)? {
            if let Some(d) = self.binding_def(&e, &dest, key, args) {
                if let Err(err) = self.persist(|st| st.put_binding(&d)) {
                    e.unbind(&dest, key, args);
                    return Err(err);
                }
            }
            q.bound_from
                .lock()
                .push((e.clone(), key.to_owned(), args.clone()));
        }
        Ok(())
    }

    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
        conn: u64,
    ) -> AmqpResult<()> {
        // Unbinding what does not exist is fine, as in RabbitMQ.
        let (Ok(q), Ok(e)) = (self.queue(queue, conn), self.check_bindable(exchange)) else {
            return if exchange.is_empty() {
                self.check_bindable(exchange).map(|_| ())
            } else {
                Ok(())
            };
        };
        let dest = Dest::Queue(q.clone());
        if e.unbind(&dest, key, args) {
            if let Some(d) = self.binding_def(&e, &dest, key, args) {
                self.persist(|st| st.delete_binding(&d))?;
            }
            q.bound_from
                .lock()
                .retain(|(x, k, a)| !(Arc::ptr_eq(x, &e) && k == key && a == args));
            self.maybe_auto_delete_exchange(&e);
        }
        Ok(())
    }

    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        let d = Dest::Exchange(self.check_bindable(destination)?);
        let s = self.check_bindable(source)?;
        if s.bind(d.clone(), key, args)? {
            if let Some(def) = self.binding_def(&s, &d, key, args) {
                if let Err(err) = self.persist(|st| st.put_binding(&def)) {
                    s.unbind(&d, key, args);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        let (Ok(d), Ok(s)) = (
            self.check_bindable(destination),
            self.check_bindable(source),
        ) else {
            return Ok(()); // unbinding what does not exist is fine, as in RabbitMQ
        };
        let d = Dest::Exchange(d);
        if s.unbind(&d, key, args) {
            if let Some(def) = self.binding_def(&s, &d, key, args) {
                self.persist(|st| st.delete_binding(&def))?;
            }
            self.maybe_auto_delete_exchange(&s);
        }
        Ok(())
    }

    /// Put a queue on the expiry sweeper's round (message TTLs, x-expires).
    pub fn sweep_me(&self, q: &Arc<Queue>) {
        self.ttl_queues.lock().push(Arc::downgrade(q));
    }

    fn watch_expiry(&self, q: &Arc<Queue>) {
        if q.expires_after.is_some() {
            self.sweep_me(q);
        }
    }

    /// Expire due messages in every queue that can have some (called every few milliseconds).
    pub fn sweep_expired(&self, now: u64) {
        self.ack_watch.tick(now);
        let queues: Vec<Arc<Queue>> = {
            let mut l = self.ttl_queues.lock();
            l.retain(|w| w.upgrade().is_some_and(|q| !q.is_deleted()));
            l.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for q in queues {
            q.retry_stalled();
            q.sweep_expired(now);
            if q.unused_for_too_long(now) {
                tracing::info!(queue = %q.name, vhost = %self.name, "deleting queue unused for its x-expires period");
                cancel_consumers(self.remove_queue(&q).1);
            }
        }
    }

    /// Recreate stored definitions (at start, before clients connect). Entries that no longer
    /// make sense (a binding to a missing queue) are skipped with a warning, not fatal.
    pub fn recover(
        &self,
        defs: &Definitions,
        messages: &mut Recovered,
        memory: &Arc<MemoryMonitor>,
    ) {
        let _ = self.memory.set(memory.clone());
        for d in defs.exchanges.iter().filter(|d| d.vhost == self.name) {
            let (kind, mut plugin) = match crate::broker::exchange::plugins::parse(
                &d.kind,
                &d.arguments,
            ) {
                Ok(Some((k, p))) => (k, Some(p)),
                Ok(None) => match ExchangeKind::parse(&d.kind) {
                    Some(k) => (k, None),
                    None => {
                        warn!(exchange = %d.name, kind = %d.kind, "skipping stored exchange of unknown type");
                        continue;
                    }
                },
                Err(e) => {
                    warn!(exchange = %d.name, "skipping stored exchange: {}", e.text);
                    continue;
                }
            };
            let delayed = matches!(
                plugin,
                Some(crate::broker::exchange::plugins::Plugin::Delayed)
            );
            let mut created = false;
            self.exchanges.entry(d.name.clone()).or_insert_with(|| {
                created = true;
                let mut x = Exchange::new(
                    d.name.clone(),
                    kind,
                    true,
                    d.auto_delete,
                    d.internal,
                    d.arguments.clone(),
                );
                x.plugin = plugin.take();
                Arc::new(x)
            });
            if created && delayed {
                self.delayed.exchanges.fetch_add(1, Ordering::Relaxed);
            }
        }
        for d in defs.queues.iter().filter(|d| d.vhost == self.name) {
            let q = self
                .queues
                .entry(d.name.clone())
                .or_insert_with(|| {
                    let q = Queue::new(
                        d.name.clone(),
                        self.me.clone(),
                        self.name.clone(),
                        true,
                        d.auto_delete,
                        None,
                        d.arguments.clone(),
                    );
                    Arc::new(self.with_log(q, Some(d.id)))
                })
                .clone();
            if d.id != q.store_id && q.store_id != 0 {
                // Stored before queues had log ids: record the one just given.
                let mut def = d.clone();
                def.id = q.store_id;
                if let Err(e) = self.persist(|st| st.put_queue(&def)) {
                    warn!(queue = %d.name, "cannot record the queue's log id: {}", e.text);
                }
            }
            self.watch_expiry(&q);
            if q.log().is_some() {
                if let Some(msgs) = messages.queues.remove(&q.store_id) {
                    q.restore(msgs);
                }
            }
        }
        self.recover_delayed(messages);
        for d in defs.bindings.iter().filter(|d| d.vhost == self.name) {
            let Some(source) = self.exchanges.get(&d.source).map(|e| e.clone()) else {
                warn!(source = %d.source, "skipping stored binding from a missing exchange");
                continue;
            };
            let dest = match d.destination_kind {
                DestKind::Queue => self
                    .queues
                    .get(&d.destination)
                    .map(|q| Dest::Queue(q.clone())),
                DestKind::Exchange => self
                    .exchanges
                    .get(&d.destination)
                    .map(|e| Dest::Exchange(e.clone())),
            };
            let Some(dest) = dest else {
                warn!(destination = %d.destination, "skipping stored binding to a missing destination");
                continue;
            };
            match source.bind(dest.clone(), &d.routing_key, &d.arguments) {
                Ok(true) => {
                    if let Dest::Queue(q) = &dest {
                        q.bound_from.lock().push((
                            source.clone(),
                            d.routing_key.clone(),
                            d.arguments.clone(),
                        ));
                    }
                }
                Ok(false) => {}
                Err(e) => warn!("skipping stored binding: {}", e.text),
            }
        }
    }

    /// Route a message published to `exchange`: fills `out` with the distinct destination queues.
    /// `scratch` is a reusable buffer so routing allocates nothing in the steady state.
    pub fn route(
        &self,
        exchange: &str,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Dest>,
    ) -> AmqpResult<()> {
        self.route_at(exchange, msg, out, scratch).map(drop)
    }

    /// Count a publish that a channel routed through the default exchange from its own cache.
    pub fn count_default_publish(&self, queues: usize) {
        self.default_exchange.stats.published(queues);
    }

    /// `route`, returning the exchange routed through (None: the default exchange).
    fn route_at(
        &self,
        exchange: &str,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Dest>,
    ) -> AmqpResult<Option<Arc<Exchange>>> {
        out.clear();
        if exchange.is_empty() {
            // The default exchange: every queue is bound by its own name.
            let key = std::str::from_utf8(&msg.routing_key).unwrap_or("");
            if let Some(q) = self.queues.get(key) {
                out.push(q.clone());
            }
            return Ok(None);
        }
        let e = self.exchange(exchange)?;
        if e.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        let mut visited: Vec<*const Exchange> = Vec::new();
        self.route_from(&e, msg, out, scratch, &mut visited);
        if out.len() > 1 {
            out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        Ok(Some(e))
    }

    /// `route`, plus the keys of sender-selected distribution (CC/BCC headers) at the exchange
    /// the message was published to.
    pub fn route_with_cc(
        &self,
        exchange: &str,
        msg: &Message,
        cc: &[bytes::Bytes],
        out: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Dest>,
    ) -> AmqpResult<()> {
        let x = self.route_at(exchange, msg, out, scratch)?;
        let stats = &x.as_ref().unwrap_or(&self.default_exchange).stats;
        if cc.is_empty() {
            stats.published(out.len());
            return Ok(());
        }
        let mut more = Vec::new();
        for key in cc {
            // A probe with the other key (and no body) routes exactly as the message would.
            let probe = Message::new(
                msg.exchange.clone(),
                key.clone(),
                msg.properties.clone(),
                bytes::Bytes::new(),
                msg.memory().clone(),
            );
            self.route(exchange, &probe, &mut more, scratch)?;
            out.append(&mut more);
        }
        out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        stats.published(out.len());
        Ok(())
    }

    fn route_from(
        &self,
        e: &Arc<Exchange>,
        msg: &Message,
        out: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Dest>,
        visited: &mut Vec<*const Exchange>,
    ) {
        if visited.contains(&Arc::as_ptr(e)) {
            return;
        }
        visited.push(Arc::as_ptr(e));
        let start = out.len();
        let base = scratch.len();
        e.route(msg, scratch);
        let mut k = base;
        while k < scratch.len() {
            match scratch[k].clone() {
                Dest::Queue(q) => out.push(q),
                Dest::Exchange(x) => self.route_from(&x, msg, out, scratch, visited),
            }
            k += 1;
        }
        scratch.truncate(base);
        if out.len() == start {
            if let Some(ae) = &e.alternate {
                if let Some(ae) = self.exchanges.get(ae.as_str()).map(|a| a.clone()) {
                    self.route_from(&ae, msg, out, scratch, visited);
                }
            }
        }
    }

    /// Every queue, for management listings (no particular order).
    pub fn queue_list(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.clone()).collect()
    }

    /// Every exchange, including the default one (named "").
    pub fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.clone()).collect()
    }

    /// A queue by name, whoever owns it (management sees exclusive queues too).
    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// The vhost is being deleted: remove its queues (telling their consumers) and exchanges,
    /// from memory and from the store.
    pub fn delete_everything(&self) {
        for q in self.queue_list() {
            cancel_consumers(self.remove_queue(&q).1);
        }
        for e in self.exchange_list() {
            if !e.name.is_empty() {
                self.remove_exchange(&e);
            }
        }
    }
}

/// Delayed delivery (`x-delayed-message` exchanges).
impl VHost {
    /// An exchange went away: forget what its plugin type held (delayed messages).
    fn forget_plugin_state(&self, e: &Arc<Exchange>) {
        if matches!(
            e.plugin,
            Some(crate::broker::exchange::plugins::Plugin::Delayed)
        ) {
            self.delayed.exchanges.fetch_sub(1, Ordering::Relaxed);
            self.delayed.forget_exchange(e);
        }
    }

    /// A publish to a delayed exchange with a positive `x-delay`: hold the message and return
    /// the message-log position its confirm waits for (0: none; the publish is complete, never
    /// returned). None: not delayed, route it now. Costs one atomic load while no delayed
    /// exchange exists.
    pub fn delay_publish(
        &self,
        exchange: &str,
        msg: &Message,
        cc: &[bytes::Bytes],
    ) -> AmqpResult<Option<u64>> {
        use crate::broker::delayed::{delay_of, DelayedMessage, MAX_DELAY_MS};
        if exchange.is_empty() || self.delayed.exchanges.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let Some(e) = self.exchanges.get(exchange).map(|e| e.clone()) else {
            return Ok(None); // routing reports the missing exchange
        };
        if !matches!(
            e.plugin,
            Some(crate::broker::exchange::plugins::Plugin::Delayed)
        ) || e.internal
        {
            return Ok(None);
        }
        let Some(delay) = delay_of(msg).filter(|&d| d > 0) else {
            return Ok(None);
        };
        let due = crate::broker::queue::now_ms().saturating_add((delay as u64).min(MAX_DELAY_MS));
        let mut held = DelayedMessage::new(&e, msg, delay, cc);
        let mut ticket = 0;
        if e.durable && msg.persistent() {
            if let Some((log, id)) = self.delayed_log() {
                let (stored, t) = crate::broker::queue::append_message(&log, &[id], msg);
                held.stored = Some((stored, id));
                ticket = t;
            }
        }
        self.hold(due, held);
        Ok(Some(ticket))
    }

    /// The message log and the id this vhost's held delayed messages are stored under.
    fn delayed_log(&self) -> Option<(Arc<crate::store::MessageLog>, u32)> {
        let st = self.store.as_ref()?;
        let id = match self.delayed_id.get() {
            Some(id) => *id,
            None => match st.named_id(&format!("delayed:{}", self.name)) {
                Ok(id) => *self.delayed_id.get_or_init(|| id),
                Err(e) => {
                    warn!(vhost = %self.name, "delayed messages kept in memory only: {e}");
                    return None;
                }
            },
        };
        Some((st.messages().clone(), id))
    }

    /// Hold a delayed message until `due`, starting the timer thread with the first one.
    fn hold(&self, due: u64, held: crate::broker::delayed::DelayedMessage) {
        let start = self.delayed.schedule(due, held);
        if start {
            let (store, me) = (self.delayed.clone(), self.me.clone());
            let spawned = std::thread::Builder::new()
                .name("warren-delayed".into())
                .spawn(move || delayed_timer(store, me));
            if let Err(err) = spawned {
                error!("cannot start the delayed-message timer thread: {err}");
            }
        }
    }

    /// Schedule again the delayed messages stored for durable delayed exchanges (at start), due
    /// at their publish time plus their `x-delay`: time spent down counts.
    fn recover_delayed(&self, messages: &mut Recovered) {
        use crate::broker::delayed::{delay_of, DelayedMessage, MAX_DELAY_MS};
        let Some((log, id)) = self.delayed_log() else {
            return;
        };
        let Some(found) = messages.queues.remove(&id) else {
            return;
        };
        let Some(memory) = self.memory.get().cloned() else {
            return;
        };
        let (now_wall, now) = (crate::store::log::wall_ms(), crate::broker::queue::now_ms());
        let mut k = 0;
        while k < found.len() {
            let seg = found[k].segment;
            let end = (k..found.len())
                .find(|&j| found[j].segment != seg)
                .unwrap_or(found.len());
            let offsets: Vec<u32> = found[k..end].iter().map(|m| m.offset).collect();
            for (m, r) in found[k..end].iter().zip(log.read(seg, &offsets)) {
                let claim = Stored {
                    log: log.clone(),
                    segment: m.segment,
                    offset: m.offset,
                };
                let rec = match r {
                    Ok(rec) => rec,
                    Err(e) => {
                        error!("{e}: delayed message dropped");
                        log.release(id, m.segment, m.offset);
                        continue;
                    }
                };
                let ex = std::str::from_utf8(&rec.exchange).unwrap_or("");
                let exchange = self.exchanges.get(ex).map(|e| e.clone()).filter(|e| {
                    matches!(
                        e.plugin,
                        Some(crate::broker::exchange::plugins::Plugin::Delayed)
                    )
                });
                let (Some(e), Some(msg)) = (exchange, crate::broker::paging::revive(rec, &memory))
                else {
                    // Its exchange is gone: so is the message, as if it had been deleted.
                    log.release(id, m.segment, m.offset);
                    continue;
                };
                let delay = delay_of(&msg).unwrap_or(0).max(0);
                let due_wall = m
                    .published_at
                    .saturating_add((delay as u64).min(MAX_DELAY_MS));
                let mut held = DelayedMessage::new(&e, &msg, delay, &[]);
                held.stored = Some((claim, id));
                self.hold(now.saturating_add(due_wall.saturating_sub(now_wall)), held);
            }
            k = end;
        }
    }

    /// Route the delayed messages that are due, by their exchange's delayed type.
    pub fn release_delayed(&self, now: u64) {
        let (mut out, mut more, mut scratch) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let due = self
                .delayed
                .take_due(now.max(crate::broker::queue::now_ms()), 1024);
            if due.is_empty() {
                return;
            }
            for d in due {
                // Dropped if its exchange was deleted (and perhaps declared anew) meanwhile.
                let Some(e) = d.exchange.upgrade() else {
                    continue;
                };
                if !self
                    .exchanges
                    .get(&e.name)
                    .is_some_and(|x| Arc::ptr_eq(&x, &e))
                {
                    continue;
                }
                let Some(msg) = d.release(&e.name) else {
                    continue; // properties were checked on publish: cannot happen
                };
                out.clear();
                let mut visited = Vec::new();
                self.route_from(&e, &msg, &mut out, &mut scratch, &mut visited);
                for key in d.cc.iter() {
                    let probe = Message::new(
                        msg.exchange.clone(),
                        key.clone(),
                        msg.properties.clone(),
                        bytes::Bytes::new(),
                        msg.memory().clone(),
                    );
                    visited.clear();
                    self.route_from(&e, &probe, &mut more, &mut scratch, &mut visited);
                    out.append(&mut more);
                }
                out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
                out.dedup_by(|a, b| Arc::ptr_eq(a, b));
                let msg = Arc::new(msg);
                // Persistent messages released to durable queues are stored as any publish.
                let (_, stored) = crate::broker::queue::store_message(&msg, &out);
                for q in out.drain(..) {
                    q.enqueue(msg.clone(), stored);
                }
            }
        }
    }
}

/// The one timer of a vhost's delayed messages: sleeps until the first is due (or until one due
/// sooner arrives), releases what is due, repeats; ends with the vhost.
fn delayed_timer(store: Arc<crate::broker::delayed::DelayedStore>, vhost: std::sync::Weak<VHost>) {
    loop {
        if let Some(now) = store.wait_due(std::time::Duration::from_secs(1)) {
            let Some(v) = vhost.upgrade() else {
                return;
            };
            v.release_delayed(now);
        } else if vhost.strong_count() == 0 {
            return;
        }
    }
}
