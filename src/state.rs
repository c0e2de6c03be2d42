//! What every connection and every management request shares.

use crate::broker::Broker;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every connection shares.
#[derive(Debug)]
pub struct ServerState {
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    /// Live connections and their channels (management, metrics, closing from the API).
    pub connections: Arc<crate::observe::Registry>,
    /// Users, permissions and vhost metadata.
    pub users: Arc<crate::auth::Access>,
    /// Login attempts: counted, and slowed down per source address after failures.
    pub logins: Arc<crate::auth::throttle::Logins>,
    /// Message rates, sampled periodically.
    pub rates: Arc<crate::metrics::Rates>,
    /// The durable store, for vhosts created at run time.
    pub store: Option<Arc<crate::store::Store>>,
    /// Where the listeners are bound (ports chosen by the OS included).
    pub listeners: Listeners,
}

#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    pub amqp: SocketAddr,
    pub http: SocketAddr,
    pub prometheus: Option<SocketAddr>,
    /// AMQP over TLS and the management listener over HTTPS, when configured.
    pub amqps: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

impl ServerState {
    /// Where vhosts, users, permissions and limits change (`broker::admin`).
    pub fn admin(&self) -> crate::broker::admin::Admin<'_> {
        crate::broker::admin::Admin {
            broker: &self.broker,
            access: &self.users,
            connections: &self.connections,
            store: &self.store,
        }
    }
}
