//! Finishing a channel's deferred work in a cluster (see `channel::replicated`): the
//! connection reads no further frames until it is done.

use super::*;
use crate::amqp::channel::replicated::{Deferred, Work};

impl Connection {
    pub(super) async fn run_deferred(&mut self, d: Deferred, shutdown: &mut watch::Receiver<bool>) {
        let Some(cluster) = self.server.broker.cluster().cloned() else {
            return;
        };
        let shutting_down = || {
            AmqpError::connection(
                code::CONNECTION_FORCED,
                "broker forced connection closure with reason 'shutdown'",
            )
        };
        let unavailable = |why: String| {
            warn!("{why}");
            AmqpError::connection(code::INTERNAL_ERROR, why)
        };
        let r = match d.work {
            Work::Propose { op, reply, nowait } => {
                let applied = tokio::select! {
                    r = cluster.propose(op) => r.map_err(unavailable),
                    _ = shutdown.changed() => Err(shutting_down()),
                };
                match (applied, self.channels.get_mut(&d.channel)) {
                    (Ok(a), Some(ch)) => ch
                        .finish_replicated(a, reply, nowait)
                        .map(|_| After::Continue),
                    (Ok(_), None) => Ok(After::Continue),
                    (Err(e), _) => Err(e),
                }
            }
            Work::Remote(w) => {
                let vhost = self.vhost.clone().expect("open connections have a vhost");
                let broker = self.server.broker.clone();
                let done = tokio::select! {
                    r = w.run(&broker, &vhost) => r,
                    _ = shutdown.changed() => Err(shutting_down()),
                };
                match done {
                    Ok(done) => {
                        let mut ctx = ctx!(self, &vhost);
                        match self.channels.get_mut(&d.channel) {
                            Some(ch) => ch.finish_remote(&mut ctx, done).map(|_| After::Continue),
                            None => {
                                done.abandon();
                                Ok(After::Continue)
                            }
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Work::Retry {
                class_id,
                method_id,
                method,
            } => {
                let caught_up = tokio::select! {
                    r = cluster.barrier() => r.map_err(unavailable),
                    _ = shutdown.changed() => Err(shutting_down()),
                };
                match caught_up {
                    Ok(()) => {
                        let vhost = self.vhost.clone().expect("open connections have a vhost");
                        let mut ctx = ctx!(self, &vhost);
                        // Once: a second miss is the answer.
                        ctx.cluster = None;
                        match self.channels.get_mut(&d.channel) {
                            Some(ch) => ch.on_method(&mut ctx, class_id, method_id, method),
                            None => Ok(After::Continue),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = self.channel_outcome(d.channel, r) {
            self.connection_error(e);
        }
    }
}
