//! The management HTTP API, driven over HTTP (ureq) against a live broker, with lapin clients
//! creating the state it reports.
//!
//! One file per resource of the API: `auth` (authentication and scoping), `overview` (overview,
//! nodes, health, the dashboard's files), `queues`, `lists` (paging, sorting, filtering),
//! `exchanges`, `bindings`, `connections` (with channels and consumers), `users` (with vhosts
//! and permissions), `definitions`, `input` (bad input), `stats` (message rates and counters).

mod auth;
mod bindings;
mod connections;
mod definitions;
mod exchanges;
mod input;
mod lists;
mod overview;
mod queues;
mod stats;
mod users;

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

/// `r` is the API's 404, with RabbitMQ's body.
fn not_found(r: &Resp) {
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
}

/// As the harness's `eventually`, with a time limit of the caller's (for stats sampled every
/// few seconds).
async fn eventually_for(
    api: &Api,
    path: &str,
    limit: Duration,
    f: impl Fn(&Value) -> bool,
) -> Value {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let r = api.get(path).await;
        if r.status == 200 && f(&r.body) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{path} never satisfied the condition: {}",
        api.get(path).await.text
    );
}
