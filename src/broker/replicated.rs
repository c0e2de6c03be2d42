//! The model's side of the cluster: definition changes committed by the metadata group are
//! applied here, on every node, through the same vhost methods a single node calls directly.

use super::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use super::Broker;
use crate::cluster::forward::Forwarded;
use crate::cluster::meta::{Applied, Applier, ApplyContext, MetaOp, Refusal};
use crate::error::{AmqpError, AmqpResult};
use std::sync::{Arc, Weak};

/// Applies committed operations to this node's broker.
pub struct Apply {
    pub broker: Weak<Broker>,
    /// Told when the cluster gets its id.
    pub on_formed: Box<dyn Fn(&str) + Send + Sync>,
    /// Forwarded batches taken, by forwarder (in memory: after a restart, a batch sent again
    /// may be taken twice).
    pub seen: Arc<parking_lot::Mutex<crate::cluster::forward::Seen>>,
    /// Users, permissions, vhost metadata and open connections, for access-control operations
    /// (`broker::admin`).
    pub access: Arc<crate::auth::Access>,
    pub connections: Arc<crate::observe::Registry>,
    pub store: Option<Arc<crate::store::Store>>,
}

impl From<AmqpError> for Refusal {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Channel(c) => Refusal {
                connection: false,
                code: c.code,
                text: c.text.clone(),
            },
            AmqpError::Connection(c) => Refusal {
                connection: true,
                code: c.code,
                text: c.text.clone(),
            },
        }
    }
}

/// A refusal back into the error the client gets.
pub fn refusal_error(r: &Refusal) -> AmqpError {
    if r.connection {
        AmqpError::connection(r.code, r.text.clone())
    } else {
        AmqpError::channel(r.code, r.text.clone())
    }
}

fn done<T>(r: AmqpResult<T>) -> Applied {
    match r {
        Ok(_) => Applied::default(),
        Err(e) => Applied {
            error: Some(e.into()),
            ..Default::default()
        },
    }
}

impl Apply {
    fn admin<'a>(&'a self, broker: &'a Broker) -> super::admin::Admin<'a> {
        super::admin::Admin {
            broker,
            access: &self.access,
            connections: &self.connections,
            store: &self.store,
        }
    }

    fn vhost(&self, name: &str) -> AmqpResult<Arc<VHost>> {
        self.broker
            .upgrade()
            .and_then(|b| b.vhost(name))
            .ok_or_else(|| {
                AmqpError::connection(
                    crate::error::code::NOT_ALLOWED,
                    format!("vhost '{name}' not found"),
                )
            })
    }

    fn run(&self, op: &MetaOp, at: &ApplyContext) -> AmqpResult<Applied> {
        Ok(match op {
            MetaOp::Form { .. } => Applied::default(),
            MetaOp::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => done(self.vhost(vhost)?.declare_exchange(
                name,
                &ExchangeDeclare {
                    kind: kind.clone(),
                    passive: false,
                    durable: *durable,
                    auto_delete: *auto_delete,
                    internal: *internal,
                    arguments: arguments.clone(),
                },
            )),
            MetaOp::DeleteExchange {
                vhost,
                name,
                if_unused,
            } => done(self.vhost(vhost)?.delete_exchange(name, *if_unused)),
            MetaOp::DeclareQueue {
                vhost,
                name,
                node,
                durable,
                auto_delete,
                arguments,
            } => {
                let v = self.vhost(vhost)?;
                let new = v.find_queue(name).is_none();
                let quorum = (new && *durable && crate::broker::args::is_quorum(arguments))
                    .then(|| quorum_def(arguments, node, at));
                if let Some(def) = &quorum {
                    v.set_quorum(name, def.clone());
                }
                let member = quorum
                    .as_ref()
                    .is_some_and(|d| d.members.iter().any(|m| m == crate::config::this_node()));
                if new {
                    // A quorum queue's member keeps the queue itself (its group's leader serves
                    // it); any other node keeps a record pointing at its first member.
                    match &quorum {
                        Some(_) if member => {}
                        Some(d) => v.set_home(name, &d.members[0]),
                        None => v.set_home(name, node),
                    }
                }
                let declared = v.declare_queue(
                    name,
                    &QueueDeclare {
                        passive: false,
                        durable: *durable,
                        exclusive: false,
                        auto_delete: *auto_delete,
                        arguments: arguments.clone(),
                    },
                    0,
                );
                let (q, created) = match declared {
                    Ok(d) => d,
                    Err(e) => {
                        if new {
                            v.forget_home(name);
                            v.forget_quorum(name);
                        }
                        return Err(e);
                    }
                };
                if let (Some(def), true, true) = (quorum, created, member) {
                    self.start_replica(&q, def);
                }
                let c = q.counts();
                Applied {
                    error: None,
                    messages: c.ready,
                    consumers: c.consumers,
                }
            }
            MetaOp::DeleteQueue {
                vhost,
                name,
                if_unused,
                if_empty,
            } => {
                let v = self.vhost(vhost)?;
                let group = v
                    .find_queue(name)
                    .and_then(|q| q.replica().map(|r| r.def.group));
                let (n, consumers) = v.delete_queue(name, *if_unused, *if_empty, 0)?;
                super::queue::cancel_consumers(consumers);
                if let (Some(g), Some(c)) = (
                    group,
                    self.broker.upgrade().and_then(|b| b.cluster().cloned()),
                ) {
                    // The group and its files go with the queue, on every member.
                    tokio::spawn(async move { c.stop_queue_group(g, true).await });
                }
                Applied {
                    error: None,
                    messages: n,
                    consumers: 0,
                }
            }
            MetaOp::Bind {
                vhost,
                source,
                destination,
                to_queue,
                routing_key,
                arguments,
            } => {
                let v = self.vhost(vhost)?;
                done(if *to_queue {
                    v.bind_queue(destination, source, routing_key, arguments, 0)
                } else {
                    v.bind_exchange(destination, source, routing_key, arguments)
                })
            }
            MetaOp::SetQuorumMembers {
                vhost,
                name,
                group,
                members,
            } => {
                let v = self.vhost(vhost)?;
                let def = crate::store::QuorumDef {
                    group: *group,
                    members: members.clone(),
                };
                let Some(q) = v.find_queue(name) else {
                    return Ok(Applied::default());
                };
                if v.quorum_of(name).map(|d| d.group) != Some(*group) {
                    return Ok(Applied::default()); // another queue of that name since
                }
                v.set_quorum(name, def.clone());
                let me = crate::config::this_node();
                let member = members.iter().any(|m| m == me);
                match (member, q.replica().cloned()) {
                    (true, None) => {
                        // Added here: the record becomes the queue, tied to the group.
                        if let Some(q) = v.rehome(name, None) {
                            self.start_replica(&q, def);
                        }
                    }
                    (false, Some(r)) => {
                        // Removed here: the queue becomes a record of it; its group goes.
                        r.deactivate();
                        v.set_home(name, &members[0]);
                        v.rehome(name, Some(members[0].clone()));
                        if let Some(c) = self.broker.upgrade().and_then(|b| b.cluster().cloned()) {
                            let g = *group;
                            tokio::spawn(async move { c.stop_queue_group(g, true).await });
                        }
                    }
                    _ => v.persist_queue_def(&q),
                }
                Applied::default()
            }
            MetaOp::Unbind {
                vhost,
                source,
                destination,
                to_queue,
                routing_key,
                arguments,
            } => {
                let v = self.vhost(vhost)?;
                done(if *to_queue {
                    v.unbind_queue(destination, source, routing_key, arguments, 0)
                } else {
                    v.unbind_exchange(destination, source, routing_key, arguments)
                })
            }
            // Vhosts, users, permissions, limits, imports: as a single node applies them.
            op => {
                let broker = self.broker.upgrade().ok_or_else(|| {
                    AmqpError::connection(
                        crate::error::code::INTERNAL_ERROR,
                        "this node is stopping",
                    )
                })?;
                done(self.admin(&broker).apply(op))
            }
        })
    }
}

/// A new quorum queue's group: numbered by its declaration's log index, its members chosen
/// among the cluster's nodes, the declaring node first (`x-quorum-initial-group-size`, 3 by
/// default, at most every node).
fn quorum_def(
    arguments: &amq_protocol::types::FieldTable,
    node: &str,
    at: &ApplyContext,
) -> crate::store::QuorumDef {
    let size = arguments
        .inner()
        .get("x-quorum-initial-group-size")
        .and_then(crate::broker::args::as_int)
        .map_or(3, |n| n.max(1) as usize);
    let nodes: Vec<String> = at.members.iter().map(|m| m.name.clone()).collect();
    crate::store::QuorumDef {
        group: at.index,
        members: super::quorum::Replica::choose_members(&nodes, node, size),
    }
}

impl Apply {
    /// Tie a quorum queue to its group on this member node.
    fn start_replica(&self, q: &Arc<super::queue::Queue>, def: crate::store::QuorumDef) {
        let Some(b) = self.broker.upgrade() else {
            return;
        };
        let Some(c) = b.cluster().cloned() else {
            return;
        };
        let r = super::quorum::Replica::new(&c, q, def, b.memory);
        tokio::spawn(r.run(c));
    }
}

/// Tie every quorum queue this node is a member of to its group (at start, once the cluster
/// is up).
pub fn start_replicas(broker: &Arc<Broker>) {
    let Some(c) = broker.cluster().cloned() else {
        return;
    };
    for v in broker.vhost_list() {
        for (q, def) in v.member_quorum_queues() {
            if q.replica().is_none() {
                let r = super::quorum::Replica::new(&c, &q, def, broker.memory);
                tokio::spawn(r.run(c.clone()));
            }
        }
    }
}

/// How long a forwarded batch may wait for the message log before the sender is told no.
const FORWARD_STORE_LIMIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Enqueue messages forwarded by another node into this node's queues, as a publish here would
/// (stored once for all its queues). Returns the log position they wait for. A queue gone
/// meanwhile just does not take its copy, as after a local publish.
fn take_forwarded(
    broker: &Broker,
    batch: Vec<Forwarded>,
    tickets: &mut Vec<crate::cluster::forward::Ticket>,
) -> Result<u64, String> {
    let mut ticket = 0;
    let mut queues = Vec::new();
    for f in batch {
        let Some(v) = broker.vhost(&f.vhost) else {
            continue;
        };
        queues.clear();
        queues.extend(
            f.queues
                .iter()
                .filter_map(|n| v.find_queue(n))
                .filter(|q| q.remote.is_none()),
        );
        // Quorum queues: their groups take them (from a node that is not a member).
        queues.retain(|q| match q.replica() {
            Some(r) => {
                let mut one = f.clone();
                one.queues = vec![q.name.clone()];
                tickets.push(r.appender.send(one));
                false
            }
            None => true,
        });
        let properties = crate::broker::message::Properties::parse(f.properties)
            .map_err(|e| format!("forwarded message with bad properties: {e}"))?;
        let msg = Arc::new(crate::broker::message::Message::new(
            f.exchange,
            f.routing_key,
            properties,
            f.body,
            broker.memory,
        ));
        let (t, stored) = crate::broker::queue::store_message(&msg, &queues);
        ticket = ticket.max(t);
        for q in &queues {
            match q.stream() {
                Some(s) if !q.is_gone() => {
                    ticket = ticket.max(s.append(&msg, broker.clock.wall_ms()));
                    q.stream_published();
                }
                Some(_) => {}
                None => {
                    q.enqueue(msg.clone(), stored);
                }
            }
        }
    }
    Ok(ticket)
}

impl Applier for Apply {
    fn apply(&self, op: &MetaOp, at: &ApplyContext) -> Applied {
        self.run(op, at).unwrap_or_else(|e| Applied {
            error: Some(e.into()),
            ..Default::default()
        })
    }

    fn formed(&self, cluster_id: &str) {
        (self.on_formed)(cluster_id)
    }

    fn forwarded(
        &self,
        batch: crate::cluster::forward::Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let broker = self.broker.upgrade();
        let seen = self.seen.clone();
        Box::pin(async move {
            let broker = broker.ok_or("this node is stopping")?;
            let mut tickets = Vec::new();
            if !seen.lock().take(&batch) {
                // Sent again after a lost answer: taken already (while this node ran).
                return Ok(());
            }
            let ticket = take_forwarded(&broker, batch.msgs, &mut tickets)?;
            if !broker.stored(ticket, FORWARD_STORE_LIMIT).await {
                return Err("the message log could not store the messages in time".into());
            }
            if let Some(c) = broker.cluster().cloned() {
                let mut progress = c.progress();
                while !tickets.iter().all(|t| t.resolved()) {
                    if tokio::time::timeout(FORWARD_STORE_LIMIT, progress.changed())
                        .await
                        .is_err()
                    {
                        return Err("the quorum queue's group did not commit in time".into());
                    }
                }
                if !tickets.iter().all(|t| t.took()) {
                    return Err("the quorum queue's group refused the messages".into());
                }
            }
            Ok(())
        })
    }
}

/// The operations that make this node's stored definitions the cluster's: a single node's data
/// directory started in a cluster for the first time keeps its exchanges, queues (they stay on
/// this node, with their messages) and bindings.
pub fn adoption_ops(defs: &crate::store::Definitions, node: &str) -> Vec<MetaOp> {
    let mut ops = Vec::new();
    for e in &defs.exchanges {
        ops.push(MetaOp::DeclareExchange {
            vhost: e.vhost.clone(),
            name: e.name.clone(),
            kind: e.kind.clone(),
            durable: true,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: e.arguments.clone(),
        });
    }
    for q in &defs.queues {
        ops.push(MetaOp::DeclareQueue {
            vhost: q.vhost.clone(),
            name: q.name.clone(),
            node: node.to_owned(),
            durable: true,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
        });
    }
    for b in &defs.bindings {
        ops.push(MetaOp::Bind {
            vhost: b.vhost.clone(),
            source: b.source.clone(),
            destination: b.destination.clone(),
            to_queue: b.destination_kind == crate::store::DestKind::Queue,
            routing_key: b.routing_key.clone(),
            arguments: b.arguments.clone(),
        });
    }
    ops
}
