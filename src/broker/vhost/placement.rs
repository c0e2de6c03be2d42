//! In a cluster: a queue's placement on this node changing (a quorum queue's replica added
//! here or removed), its definition written again.

use super::VHost;
use crate::broker::exchange::Dest;
use crate::broker::queue::Queue;
use crate::store::QueueDef;
use std::sync::Arc;
use tracing::warn;

impl VHost {
    /// Write a durable queue's definition again (its cluster placement changed).
    pub fn persist_queue_def(&self, q: &Arc<Queue>) {
        if !q.durable || q.exclusive_owner.is_some() {
            return;
        }
        let def = QueueDef {
            vhost: self.name.clone(),
            name: q.name.clone(),
            id: q.store_id,
            auto_delete: q.auto_delete,
            arguments: q.arguments.clone(),
            node: q.remote.clone(),
            quorum: self.quorum_of(&q.name),
        };
        if let Err(e) = self.persist(|st| st.put_queue(&def)) {
            warn!(queue = %q.name, "cannot record the queue's new placement: {}", e.text);
        }
    }

    /// In a cluster: replace a queue by a new object of the same definition, living here
    /// (`remote` None) or a record of a queue on another node, with the same bindings (a
    /// quorum queue's member added to or removed from this node). The old object is gone.
    pub fn rehome(&self, name: &str, remote: Option<String>) -> Option<Arc<Queue>> {
        let old = self.find_queue(name)?;
        let mut q = Queue::new(
            name.to_owned(),
            self.me.clone(),
            self.clock.clone(),
            self.name.clone(),
            old.durable,
            old.auto_delete,
            None,
            old.arguments.clone(),
        );
        q.remote = remote;
        let q = Arc::new(q);
        let bound: Vec<_> = std::mem::take(&mut *old.bound_from.lock());
        let from = Dest::Queue(old.clone());
        for (e, key, args) in &bound {
            e.unbind(&from, key, args);
            if let Err(err) = e.bind(Dest::Queue(q.clone()), key, args) {
                warn!(queue = %name, "cannot move a binding: {}", err);
            }
        }
        *q.bound_from.lock() = bound;
        self.queues.insert(name.to_owned(), q.clone());
        let (_, consumers) = old.mark_deleted();
        crate::broker::queue::cancel_consumers(consumers);
        self.persist_queue_def(&q);
        Some(q)
    }
}
