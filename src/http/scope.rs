//! What a management user may see and do, as RabbitMQ's management plugin decides it.
//!
//! - `administrator`: everything.
//! - `monitoring`: reads everything; changes only in vhosts it has permissions on.
//! - `management` / `policymaker`: only vhosts it has permissions on, and of connections and
//!   channels only its own.
//!
//! A path naming a vhost the user may not use is answered 401 before any handler runs; list
//! endpoints drop the rows the user may not see (`visible`, applied where every list is paged);
//! changes to queues, exchanges and bindings, and publishing or fetching messages, are checked
//! against the user's configure / write / read patterns as an AMQP client's would be (`allow`).

use super::{ApiError, ApiResult, ApiUser};
use crate::auth::grants::{Grants, Perm, Resource};
use crate::ServerState;
use axum::http::{Method, StatusCode};
use std::collections::HashSet;

/// The request's view.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// The vhosts it may see; None: all.
    vhosts: Option<HashSet<String>>,
    /// Only this user's connections and channels; None: everyone's.
    owner: Option<String>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

impl Scope {
    pub fn of(st: &ServerState, u: &ApiUser, method: &Method) -> Scope {
        let has = |t: &str| u.tags.iter().any(|x| x == t);
        if has("administrator") || (has("monitoring") && method == Method::GET) {
            return Scope::default();
        }
        let vhosts = st
            .users
            .permissions()
            .into_iter()
            .filter(|p| p.user == u.name)
            .map(|p| p.vhost)
            .collect();
        Scope {
            vhosts: Some(vhosts),
            owner: (!has("monitoring")).then(|| u.name.clone()),
        }
    }

    pub fn sees_vhost(&self, vhost: &str) -> bool {
        self.vhosts.as_ref().is_none_or(|s| s.contains(vhost))
    }

    /// Run `f` (the rest of the request) with this scope in force.
    pub async fn enter<F: std::future::Future>(self, f: F) -> F::Output {
        SCOPE.scope(self, f).await
    }
}

/// Whether the current request may see an object in `vhost` belonging to connection user
/// `owner` (None: not a connection-owned object). Outside a request: yes.
pub fn visible(vhost: &str, owner: Option<&str>) -> bool {
    SCOPE
        .try_with(|s| {
            s.sees_vhost(vhost)
                && match (&s.owner, owner) {
                    (Some(me), Some(o)) => me == o,
                    _ => true,
                }
        })
        .unwrap_or(true)
}

/// The vhost a management path names, decoded: `/api/{queues,exchanges,bindings,consumers,
/// aliveness-test,definitions,vhosts,vhost-limits,super-streams}/{vhost}/…`.
pub fn path_vhost(path: &str) -> Option<String> {
    let mut seg = path.trim_start_matches('/').split('/');
    if seg.next() != Some("api") {
        return None;
    }
    let kind = seg.next()?;
    let v = seg.next()?;
    matches!(
        kind,
        "queues"
            | "exchanges"
            | "bindings"
            | "consumers"
            | "aliveness-test"
            | "definitions"
            | "vhosts"
            | "vhost-limits"
            | "super-streams"
    )
    .then(|| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned()
    })
}

pub fn vhost_refused() -> ApiError {
    ApiError::Other(
        StatusCode::UNAUTHORIZED,
        "not_authorised",
        "User not authorised to access virtual host".into(),
    )
}

/// A resource permission check for a management action; `Err` carries RabbitMQ's text
/// ("access to queue 'q' in vhost '/' refused for user 'u'") for the caller to shape.
pub fn check(
    st: &ServerState,
    u: &ApiUser,
    vhost: &str,
    perm: Perm,
    kind: Resource,
    name: &str,
) -> Result<(), String> {
    Grants::new(st.users.clone(), &u.name, vhost).check(perm, kind, name)
}

/// A topic permission check (RabbitMQ's, as for an AMQP client) of `key` on `exchange` in
/// `vhost`, if it is a topic exchange; `Err` carries RabbitMQ's text for the caller to shape.
pub fn check_topic(
    st: &ServerState,
    u: &ApiUser,
    vhost: &str,
    perm: Perm,
    exchange: &str,
    key: &str,
) -> Result<(), String> {
    let is_topic = || {
        st.broker.vhost(vhost).is_some_and(|v| {
            v.exchange(exchange)
                .is_ok_and(|e| e.kind == crate::broker::exchange::ExchangeKind::Topic)
        })
    };
    Grants::new(st.users.clone(), &u.name, vhost).check_topic(perm, exchange, key, is_topic)
}

/// `check`, refused as RabbitMQ refuses declares, deletes, purges and bindings: 401 "Access
/// refused.".
pub fn allow(
    st: &ServerState,
    u: &ApiUser,
    vhost: &str,
    perm: Perm,
    kind: Resource,
    name: &str,
) -> ApiResult<()> {
    check(st, u, vhost, perm, kind, name).map_err(|why| {
        tracing::info!(user = %u.name, "management: {why}");
        ApiError::Other(
            StatusCode::UNAUTHORIZED,
            "not_authorised",
            "Access refused.".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_of_a_path() {
        assert_eq!(path_vhost("/api/queues/%2F/q"), Some("/".into()));
        assert_eq!(path_vhost("/api/exchanges/other"), Some("other".into()));
        assert_eq!(path_vhost("/api/queues"), None);
        assert_eq!(path_vhost("/api/users/bob"), None);
        assert_eq!(path_vhost("/api/vhosts/v%201/channels"), Some("v 1".into()));
    }
}
