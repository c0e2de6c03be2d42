//! Exchanges: the four kinds behind one routing table, plus what all kinds share (bindings,
//! exchange-to-exchange destinations, the alternate exchange).
//!
//! All work that depends only on bindings is done at bind time: direct keys go into a hash map,
//! topic patterns into a trie, headers arguments are typed into a `HeadersMatch`. Routing a message
//! reads these under a read lock and allocates nothing but the growth of the caller's output Vec.

pub mod delayed;
pub mod headers;
pub mod plugins;
pub mod route;
pub mod super_stream;
pub mod topic;

use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::error::AmqpResult;
use amq_protocol::types::FieldTable;
use headers::HeadersMatch;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use topic::TopicTrie;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding sends messages.
#[derive(Debug, Clone)]
pub enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Dest::Queue(a), Dest::Queue(b)) => Arc::ptr_eq(a, b),
            (Dest::Exchange(a), Dest::Exchange(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Dest {
    pub fn name(&self) -> &str {
        match self {
            Dest::Queue(q) => &q.name,
            Dest::Exchange(e) => &e.name,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub dest: Dest,
    pub routing_key: String,
    pub arguments: FieldTable,
}

impl Binding {
    fn same(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        self.dest == *dest && self.routing_key == key && self.arguments == *args
    }
}

#[derive(Debug)]
enum Routes {
    Direct(HashMap<Box<[u8]>, Vec<Dest>>),
    Fanout(Vec<Dest>),
    Topic(TopicTrie<Dest>),
    Headers(Vec<(HeadersMatch, Dest)>),
}

#[derive(Debug)]
struct Table {
    bindings: Vec<Binding>,
    routes: Routes,
}

#[derive(Debug)]
pub struct Exchange {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub alternate: Option<String>,
    /// A plugin exchange type (`x-delayed-message`, `x-message-deduplication`); `kind` is then
    /// how it routes.
    pub plugin: Option<plugins::Plugin>,
    /// publish_in / publish_out for the management API.
    pub stats: crate::broker::stats::ExchangeStats,
    table: RwLock<Table>,
}

impl Exchange {
    pub fn new(
        name: String,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate = crate::broker::args::str_arg(&arguments, "alternate-exchange");
        let routes = match kind {
            ExchangeKind::Direct => Routes::Direct(HashMap::new()),
            ExchangeKind::Fanout => Routes::Fanout(Vec::new()),
            ExchangeKind::Topic => Routes::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Routes::Headers(Vec::new()),
        };
        Exchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate,
            plugin: None,
            stats: Default::default(),
            table: RwLock::new(Table {
                bindings: Vec::new(),
                routes,
            }),
        }
    }

    /// Add a binding; returns false if an identical one already existed.
    pub fn bind(&self, dest: Dest, key: &str, args: &FieldTable) -> AmqpResult<bool> {
        let compiled = match self.kind {
            ExchangeKind::Headers => Some(HeadersMatch::compile(args)?),
            _ => None,
        };
        let mut t = self.table.write();
        if t.bindings.iter().any(|b| b.same(&dest, key, args)) {
            return Ok(false);
        }
        match &mut t.routes {
            Routes::Direct(m) => {
                let v = m.entry(key.as_bytes().into()).or_default();
                if !v.contains(&dest) {
                    v.push(dest.clone());
                }
            }
            Routes::Fanout(v) => {
                if !v.contains(&dest) {
                    v.push(dest.clone());
                }
            }
            Routes::Topic(trie) => trie.insert(key.as_bytes(), dest.clone()),
            Routes::Headers(v) => v.push((compiled.expect("compiled for headers"), dest.clone())),
        }
        t.bindings.push(Binding {
            dest,
            routing_key: key.to_owned(),
            arguments: args.clone(),
        });
        if let Some(plugins::Plugin::SuperStream(p)) = &self.plugin {
            p.rebuild(&t.bindings);
        }
        Ok(true)
    }

    /// Remove one binding; returns whether it existed.
    pub fn unbind(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        let mut guard = self.table.write();
        let t: &mut Table = &mut guard;
        let Some(pos) = t.bindings.iter().position(|b| b.same(dest, key, args)) else {
            return false;
        };
        t.bindings.remove(pos);
        if let Some(plugins::Plugin::SuperStream(p)) = &self.plugin {
            p.rebuild(&t.bindings);
        }
        // Another binding with the same destination and key (but other arguments) may still
        // route there; only headers bindings can differ by arguments alone.
        let still = t
            .bindings
            .iter()
            .any(|b| b.dest == *dest && b.routing_key == key);
        match &mut t.routes {
            Routes::Direct(m) => {
                if !still {
                    if let Some(v) = m.get_mut(key.as_bytes()) {
                        v.retain(|d| d != dest);
                        if v.is_empty() {
                            m.remove(key.as_bytes());
                        }
                    }
                }
            }
            Routes::Fanout(v) => {
                if !t.bindings.iter().any(|b| b.dest == *dest) {
                    v.retain(|d| d != dest);
                }
            }
            Routes::Topic(trie) => {
                if !still {
                    trie.remove(key.as_bytes(), dest)
                }
            }
            Routes::Headers(v) => {
                // Headers bindings differ by arguments: rebuild from the remaining bindings.
                *v = t
                    .bindings
                    .iter()
                    .filter_map(|b| {
                        HeadersMatch::compile(&b.arguments)
                            .ok()
                            .map(|m| (m, b.dest.clone()))
                    })
                    .collect();
            }
        }
        true
    }

    /// Remove every binding to `dest` (it is being deleted); returns the bindings that went.
    pub fn unbind_all(&self, dest: &Dest) -> Vec<Binding> {
        let gone: Vec<Binding> = self
            .table
            .read()
            .bindings
            .iter()
            .filter(|b| b.dest == *dest)
            .cloned()
            .collect();
        for b in &gone {
            self.unbind(&b.dest, &b.routing_key, &b.arguments);
        }
        gone
    }

    /// Whether this exact binding exists.
    pub fn has_binding(&self, dest: &Dest, key: &str, args: &FieldTable) -> bool {
        self.table
            .read()
            .bindings
            .iter()
            .any(|b| b.same(dest, key, args))
    }

    pub fn has_bindings(&self) -> bool {
        !self.table.read().bindings.is_empty()
    }

    pub fn bindings(&self) -> Vec<Binding> {
        self.table.read().bindings.clone()
    }

    /// The type as declared (a plugin type's name, or the kind).
    pub fn type_name(&self) -> &'static str {
        match &self.plugin {
            Some(p) => p.type_name(),
            None => self.kind.as_str(),
        }
    }

    /// Append the destinations this exchange's own bindings select for `msg` under routing key
    /// `key` (its own, or one of its CC keys); duplicates allowed.
    pub fn route(&self, key: &[u8], msg: &Message, out: &mut Vec<Dest>) {
        if let Some(plugins::Plugin::Deduplication(cache, clock)) = &self.plugin {
            if plugins::is_duplicate(cache, clock, msg) {
                return;
            }
        }
        if let Some(plugins::Plugin::SuperStream(p)) = &self.plugin {
            return p.route(key, out);
        }
        let t = self.table.read();
        match &t.routes {
            Routes::Direct(m) => {
                if let Some(v) = m.get(key) {
                    out.extend(v.iter().cloned());
                }
            }
            Routes::Fanout(v) => out.extend(v.iter().cloned()),
            Routes::Topic(trie) => trie.matches(key, out),
            Routes::Headers(v) => {
                if v.is_empty() {
                    return;
                }
                let headers = msg.properties.headers_raw().and_then(|raw| {
                    amq_protocol::types::parsing::parse_field_table(raw)
                        .ok()
                        .map(|(_, t)| t)
                });
                for (m, d) in v {
                    if m.matches(headers.as_ref()) {
                        out.push(d.clone());
                    }
                }
            }
        }
    }
}
