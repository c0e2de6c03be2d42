//! Warren: an AMQP 0-9-1 message broker that speaks RabbitMQ's dialect.
//!
//! Layout (each layer knows only those below it; see DESIGN.md):
//! - `amqp/`    an adapter: frames (`codec`), the writer (`outbox`), `connection` and `channel`.
//!   The only code that knows frames.
//! - `http/`    an adapter: RabbitMQ's management API, the web/ dashboard, /metrics.
//! - `broker/`  the model: every operation a client can ask for, whichever adapter it came
//!   through — vhosts (`vhost/`: declare, bind, publish, recovery), exchanges
//!   (`exchange/`: routing, the plugin types, delayed delivery), queues (`queue/`),
//!   messages, and the one clock (`clock`). No sockets, no frames.
//! - `observe/` counters and snapshots of connections and channels: written by the adapters,
//!   read by `http/` and `metrics` without the message path's locks.
//! - `store/`   durable state: definitions in sled, message bodies in the segment log.
//! - `auth/`    users, password hashes, permissions, vhost metadata.
//! - `metrics`  message rates and the Prometheus output.
//! - `server`   `Server::start` binds the listeners and returns a `ServerHandle`; tests start the
//!   broker in-process on port 0 this way. `state` is what every connection shares.
//! - `config`   the `config.toml` schema; `error` AMQP exceptions typed by what they close.
//! - `tls`      rustls for the amqps and https listeners: certificates (reloadable), handshakes,
//!   what a session tells the management API and the EXTERNAL mechanism.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod observe;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;

pub use server::{Server, ServerHandle, StartError};
pub use state::{Listeners, ServerState};
