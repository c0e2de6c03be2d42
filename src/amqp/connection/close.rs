//! Ending a connection: a connection error (connection.close, then only close/close-ok for a
//! few seconds), and releasing what the connection holds.

use super::*;

impl Connection {
    pub(super) fn connection_error(&mut self, e: impl Into<ConnectionError>) {
        let e = e.into();
        if matches!(
            self.state,
            ConnectionState::Closing | ConnectionState::Answered | ConnectionState::Closed
        ) {
            return;
        }
        if e.code == code::CONNECTION_FORCED {
            info!("closing connection: {}", e.reply_text());
        } else {
            warn!(
                code = e.code,
                class_id = e.class_id,
                method_id = e.method_id,
                "connection error: {}",
                e.reply_text()
            );
        }
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: sstr(&e.reply_text()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.teardown();
        self.state = ConnectionState::Closing;
    }

    /// Release everything the connection holds: channels (requeueing their unacked messages)
    /// and exclusive queues.
    pub(super) fn teardown(&mut self) {
        let Some(vhost) = self.vhost.clone() else {
            return;
        };
        let mut ctx = ctx!(self, &vhost);
        for (id, mut ch) in self.channels.drain() {
            ch.cleanup(&mut ctx);
            self.info.channel_closed(id);
        }
        for q in std::mem::take(&mut self.exclusive_queues)
            .iter()
            .filter_map(Weak::upgrade)
        {
            cancel_consumers(vhost.remove_queue(&q).1);
        }
    }
}
