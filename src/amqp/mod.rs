//! The wire: the only code that sees AMQP frames and amq-protocol's method types.

pub mod channel;
pub mod codec;
pub mod connection;
pub mod nesting;
pub mod outbox;
pub mod whole_publish;
