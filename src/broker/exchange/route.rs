//! Routing shared by every exchange kind: exchange-to-exchange bindings (each exchange visited
//! once, so cycles end), the alternate exchange when an exchange's own bindings select nothing,
//! the extra routing keys of sender-selected distribution (`CC` / `BCC`), and one copy per queue.

use super::{Dest, Exchange};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use bytes::Bytes;
use dashmap::DashMap;
use std::sync::Arc;

/// Fill `out` with the distinct queues `msg` reaches from `e` under its routing key and each
/// key of `cc`. `exchanges` resolves alternate-exchange names; `scratch` is a reusable buffer, so
/// routing allocates nothing in the steady state.
pub fn route(
    exchanges: &DashMap<String, Arc<Exchange>>,
    e: &Arc<Exchange>,
    msg: &Message,
    cc: &[Bytes],
    out: &mut Vec<Arc<Queue>>,
    scratch: &mut Vec<Dest>,
) {
    let mut visited: Vec<*const Exchange> = Vec::new();
    route_from(
        exchanges,
        e,
        &msg.routing_key,
        msg,
        out,
        scratch,
        &mut visited,
    );
    for key in cc {
        visited.clear();
        route_from(exchanges, e, key, msg, out, scratch, &mut visited);
    }
    dedup(out);
}

/// Keep one of each queue (routing may reach a queue through several bindings).
pub fn dedup(out: &mut Vec<Arc<Queue>>) {
    if out.len() > 1 {
        out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        out.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

fn route_from(
    exchanges: &DashMap<String, Arc<Exchange>>,
    e: &Arc<Exchange>,
    key: &[u8],
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
    e.route(key, msg, scratch);
    let mut k = base;
    while k < scratch.len() {
        match scratch[k].clone() {
            Dest::Queue(q) => out.push(q),
            Dest::Exchange(x) => route_from(exchanges, &x, key, msg, out, scratch, visited),
        }
        k += 1;
    }
    scratch.truncate(base);
    if out.len() == start {
        if let Some(ae) = &e.alternate {
            if let Some(ae) = exchanges.get(ae.as_str()).map(|a| a.clone()) {
                route_from(exchanges, &ae, key, msg, out, scratch, visited);
            }
        }
    }
}
