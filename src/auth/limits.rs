//! Per-tenant limits with RabbitMQ's names: a vhost's `max-connections` and `max-queues`, a
//! user's `max-connections` and `max-channels`. A negative value is no limit, 0 allows none.
//!
//! The limits themselves persist with their vhost's or user's record ([`super::VhostMeta`],
//! [`super::User`]). What counts against them lives here: one [`Slot`] per vhost and user for
//! connections and one per user for channels, each a pair of atomics (in use, limit) that a
//! connection takes at connection.open and a channel at channel.open, and gives back when it
//! ends (dropping its [`Held`]). A limit changed through the API updates the slot at once, so
//! open connections meet it at their next channel.open; what is already open stays open, as in
//! RabbitMQ. `max-queues` is compared with the vhost's queue count at each new queue's declare.

use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub const MAX_CONNECTIONS: &str = "max-connections";
pub const MAX_QUEUES: &str = "max-queues";
pub const MAX_CHANNELS: &str = "max-channels";

/// The limits a vhost takes.
pub const VHOST_LIMITS: [&str; 2] = [MAX_CONNECTIONS, MAX_QUEUES];
/// The limits a user takes.
pub const USER_LIMITS: [&str; 2] = [MAX_CONNECTIONS, MAX_CHANNELS];

/// How many of something are in use, and how many may be (negative: any number).
#[derive(Debug)]
pub struct Slot {
    used: AtomicI64,
    limit: AtomicI64,
}

impl Slot {
    pub(super) fn new(limit: Option<i64>) -> Arc<Slot> {
        Arc::new(Slot {
            used: AtomicI64::new(0),
            limit: AtomicI64::new(limit.unwrap_or(-1)),
        })
    }

    pub(super) fn set_limit(&self, limit: Option<i64>) {
        self.limit.store(limit.unwrap_or(-1), Ordering::Release);
    }

    pub fn used(&self) -> i64 {
        self.used.load(Ordering::Acquire)
    }

    /// Take one, unless that would go over the limit (then `Err(limit)`). Never over: the
    /// count is raised first and given back if it went past.
    pub fn take(self: &Arc<Self>) -> Result<Held, i64> {
        let limit = self.limit.load(Ordering::Acquire);
        let before = self.used.fetch_add(1, Ordering::AcqRel);
        if limit >= 0 && before >= limit {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return Err(limit);
        }
        Ok(Held(self.clone()))
    }
}

/// One taken from a [`Slot`]; given back when dropped.
#[derive(Debug)]
pub struct Held(Arc<Slot>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A user's slots.
#[derive(Debug)]
pub struct UserSlots {
    pub connections: Arc<Slot>,
    pub channels: Arc<Slot>,
}

/// What an open connection holds: its place in its vhost's and its user's connection counts,
/// and its user's channel slot for its channels.
#[derive(Debug)]
pub struct Admission {
    _vhost: Held,
    _user: Held,
    user: String,
    channels: Arc<Slot>,
}

impl Admission {
    pub(super) fn new(vhost: Held, user_held: Held, user: &str, channels: Arc<Slot>) -> Self {
        Admission {
            _vhost: vhost,
            _user: user_held,
            user: user.to_owned(),
            channels,
        }
    }

    /// A channel's place under the user's `max-channels`, or RabbitMQ's refusal text.
    pub fn open_channel(&self) -> Result<Held, String> {
        self.channels.take().map_err(|limit| {
            format!(
                "number of channels opened for user '{}' has reached the maximum allowed user \
                 limit of ({limit})",
                self.user
            )
        })
    }
}

pub fn vhost_connections_refused(vhost: &str, user: &str, limit: i64) -> String {
    format!("access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached")
}

pub fn user_connections_refused(user: &str, limit: i64) -> String {
    format!("connection refused for user '{user}': user connection limit ({limit}) is reached")
}

pub fn queues_refused(queue: &str, vhost: &str, limit: i64) -> String {
    format!("cannot declare queue '{queue}': queue limit in vhost '{vhost}' ({limit}) is reached")
}

/// A JSON value as RabbitMQ's errors print the Erlang term it decoded to.
fn term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Array(a) => format!("[{}]", a.iter().map(term).collect::<Vec<_>>().join(",")),
        Value::Object(m) => format!(
            "#{{{}}}",
            m.iter()
                .map(|(k, v)| format!("<<\"{k}\">> => {}", term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// Check one limit as RabbitMQ's API does: a known name (of `known`) with an integer value.
/// `Err` is RabbitMQ's reason text; `what` is "limits" (vhost) or "user-limits".
pub fn check(known: &[&str], name: &str, value: &Value, what: &str) -> Result<i64, String> {
    if !known.contains(&name) {
        return Err(format!(
            "Unrecognised terms [{{<<\"{name}\">>,{}}}] in {what}",
            term(value)
        ));
    }
    value
        .as_i64()
        .ok_or_else(|| format!("{name} should be a number, actually was {}", term(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_slot_never_goes_over_and_gives_back_on_drop() {
        let s = Slot::new(Some(2));
        let a = s.take().unwrap();
        let _b = s.take().unwrap();
        assert_eq!(s.take().unwrap_err(), 2);
        assert_eq!(s.used(), 2);
        drop(a);
        let _c = s.take().unwrap();
        s.set_limit(Some(0));
        assert_eq!(
            s.take().unwrap_err(),
            0,
            "a lowered limit applies to the next take"
        );
        assert_eq!(s.used(), 2, "what was taken stays");
        s.set_limit(Some(-5));
        let _d = s.take().expect("negative: no limit");
        s.set_limit(None);
        let _e = s.take().expect("cleared: no limit");
    }

    #[test]
    fn values_are_checked_as_rabbitmq_checks_them() {
        assert_eq!(
            check(&VHOST_LIMITS, "max-queues", &json!(3), "limits"),
            Ok(3)
        );
        assert_eq!(
            check(&VHOST_LIMITS, "max-queues", &json!(-2), "limits"),
            Ok(-2)
        );
        assert_eq!(
            check(&VHOST_LIMITS, "max-queues", &json!("x"), "limits"),
            Err("max-queues should be a number, actually was <<\"x\">>".into())
        );
        assert_eq!(
            check(&USER_LIMITS, "max-channels", &json!(1.5), "user-limits"),
            Err("max-channels should be a number, actually was 1.5".into())
        );
        assert_eq!(
            check(&USER_LIMITS, "max-queues", &json!(2), "user-limits"),
            Err("Unrecognised terms [{<<\"max-queues\">>,2}] in user-limits".into())
        );
    }
}
