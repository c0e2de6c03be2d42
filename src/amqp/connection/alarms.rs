//! Publishers held back: the memory and disk alarms block connections that publish (as RabbitMQ
//! does, with connection.blocked for clients that understand it) until they clear.

use super::*;

impl Connection {
    /// Stop reading from a publishing connection while the memory or disk alarm is on (as
    /// RabbitMQ does, telling clients that understand it with connection.blocked). Confirms that
    /// become due meanwhile still go out.
    pub(super) async fn block_until_alarms_clear(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        synced_rx: &mut Option<watch::Receiver<u64>>,
    ) {
        let broker = self.server.broker.clone();
        let reason = if broker.memory.alarmed() {
            "low on memory"
        } else {
            "low on disk"
        };
        warn!("blocking publishing connection: {reason}");
        if self.blocked_notify {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: reason.into(),
                })),
            );
        }
        while broker.memory.alarmed() || broker.disk.alarmed() {
            tokio::select! {
                _ = broker.memory.wait_clear(), if broker.memory.alarmed() => {}
                _ = broker.disk.wait_clear(), if broker.disk.alarmed() => {}
                _ = log_advanced(synced_rx) => {
                    let synced = synced_rx.as_mut().map_or(u64::MAX, |r| *r.borrow_and_update());
                    for ch in self.channels.values_mut() {
                        ch.flush_confirms(synced);
                    }
                }
                _ = shutdown.changed() => {
                    self.connection_error(AmqpError::connection(
                        code::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                    return;
                }
            }
        }
        if self.blocked_notify {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        info!("unblocked publishing connection");
    }
}
