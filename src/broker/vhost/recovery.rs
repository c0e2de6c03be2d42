//! Recovery at start: the stored definitions recreated in their vhost, and the stored messages
//! put back in their queues (paged out: bodies are read back as consumers reach them).

use super::VHost;
use crate::broker::exchange::{Dest, Exchange, ExchangeKind};
use crate::broker::memory::MemoryMonitor;
use crate::broker::queue::Queue;
use crate::store::{Definitions, DestKind, Recovered};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{error, warn};

impl VHost {
    /// Recreate stored definitions (at start, before clients connect). Entries that no longer
    /// make sense (a binding to a missing queue) are skipped with a warning, not fatal.
    pub fn recover(
        &self,
        defs: &Definitions,
        messages: &mut Recovered,
        memory: &'static MemoryMonitor,
    ) {
        let _ = self.memory.set(memory);
        for d in defs.exchanges.iter().filter(|d| d.vhost == self.name) {
            let (kind, mut plugin) = match crate::broker::exchange::plugins::parse(
                &d.kind,
                &d.arguments,
                &self.clock,
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
            let q = Queue::new(
                d.name.clone(),
                self.me.clone(),
                self.clock.clone(),
                self.name.clone(),
                true,
                d.auto_delete,
                None,
                d.arguments.clone(),
            );
            if let Some(home) = &d.node {
                self.set_home(&d.name, home);
            }
            if let Some(g) = &d.quorum {
                self.set_quorum(&d.name, g.clone());
            }
            let q = if let Some(home) = self.remote_home(&d.name) {
                let mut q = q;
                q.remote = Some(home);
                q
            } else if crate::broker::args::is_stream(&d.arguments) {
                match self.stream_queue(q, Some(d.id)) {
                    Ok(q) => q,
                    Err(e) => {
                        error!(queue = %d.name, vhost = %self.name,
                            "cannot open the stream; it is left out until the next start: {e}");
                        continue;
                    }
                }
            } else {
                self.with_log(q, Some(d.id))
            };
            let q = self
                .queues
                .entry(d.name.clone())
                .or_insert_with(|| Arc::new(q))
                .clone();
            if d.id != q.store_id && q.store_id != 0 {
                // Stored before queues had log ids: record the one just given.
                let mut def = d.clone();
                def.id = q.store_id;
                if let Err(e) = self.persist(|st| st.put_queue(&def)) {
                    warn!(queue = %d.name, "cannot record the queue's log id: {}", e.text);
                }
            }
            if q.remote.is_none() {
                self.watch_expiry(&q);
            }
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
                        VHost::note_partition(&source, q, &d.arguments);
                    }
                }
                Ok(false) => {}
                Err(e) => warn!("skipping stored binding: {}", e.text),
            }
        }
    }
}
