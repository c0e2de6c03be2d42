//! Failed logins over AMQP and the management API: counted as RabbitMQ counts them
//! (`/api/auth/attempts/{node}`, `rabbitmq_auth_attempts_*` on /metrics), and slowed down per
//! source address without slowing other addresses.

use crate::harness::raw_client::{amqp_login, http_from, Login};
use crate::harness::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn row<'a>(rows: &'a Value, protocol: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["protocol"] == protocol)
        .unwrap_or_else(|| panic!("no {protocol} row in {rows}"))
}

/// The value of one Prometheus sample line, e.g. `name{protocol="http"}`.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Login attempts were not counted anywhere: RabbitMQ's `/api/auth/attempts/{node}` did not
/// exist (404) and /metrics had no `rabbitmq_auth_attempts_*` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_counted_per_protocol_in_the_api_and_metrics() {
    let b = Broker::start_with(|c| c.auth_failure_delay_ms = 0).await;
    let api = Api::of(&b);
    let addr = b.handle.amqp_addr;
    let local = ip("127.0.0.1");
    // AMQP: two wrong passwords, an unknown user, one success.
    for (user, pass) in [("guest", "bad"), ("guest", "worse"), ("nobody", "x")] {
        let (answer, _) = amqp_login(addr, local, user, pass).await;
        assert_eq!(answer, Login::Refused(403));
    }
    assert_eq!(
        amqp_login(addr, local, "guest", "guest").await.0,
        Login::Tuned
    );
    // HTTP: a wrong password, an unknown user, no credentials at all (not an attempt, as in
    // RabbitMQ), a management user refused a monitoring endpoint (a failed attempt, as in
    // RabbitMQ), and the administrator's own requests (successes).
    let node = api.get("/api/overview").await.body["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/auth/attempts/{node}");
    let http = b.handle.http_addr;
    assert_eq!(
        http_from(http, local, "GET", &path, Some(("guest", "no")))
            .await
            .0,
        401
    );
    assert_eq!(
        http_from(http, local, "GET", &path, Some(("eve", "no")))
            .await
            .0,
        401
    );
    assert_eq!(http_from(http, local, "GET", &path, None).await.0, 401);
    let r = api
        .put(
            "/api/users/mgmt",
            json!({"password": "m", "tags": "management"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    assert_eq!(
        http_from(http, local, "GET", &path, Some(("mgmt", "m")))
            .await
            .0,
        401
    );
    // Successes so far: /api/overview and the PUT (the reading request counts after it answers).
    let rows = api.get(&path).await.body;
    assert_eq!(rows.as_array().unwrap().len(), 2, "{rows}");
    assert_eq!(
        row(&rows, "amqp091"),
        &json!({"protocol": "amqp091", "auth_attempts": 4, "auth_attempts_failed": 3,
                "auth_attempts_succeeded": 1})
    );
    assert_eq!(
        row(&rows, "http"),
        &json!({"protocol": "http", "auth_attempts": 5, "auth_attempts_failed": 3,
                "auth_attempts_succeeded": 2})
    );
    // Per-source tracking is off, as in RabbitMQ by default; another node is 404.
    assert_eq!(api.get(&format!("{path}/source")).await.body, json!([]));
    assert_eq!(
        api.get("/api/auth/attempts/rabbit@elsewhere").await.status,
        404
    );
    // The same numbers on /metrics (the last three requests were successes).
    let m = request("GET", format!("http://{http}/metrics"), None, None, &[])
        .await
        .text;
    for (series, v) in [
        ("rabbitmq_auth_attempts_total{protocol=\"amqp091\"}", 4.0),
        (
            "rabbitmq_auth_attempts_failed_total{protocol=\"amqp091\"}",
            3.0,
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total{protocol=\"amqp091\"}",
            1.0,
        ),
        ("rabbitmq_auth_attempts_total{protocol=\"http\"}", 8.0),
        (
            "rabbitmq_auth_attempts_failed_total{protocol=\"http\"}",
            3.0,
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total{protocol=\"http\"}",
            5.0,
        ),
    ] {
        assert_eq!(sample(&m, series), v, "{series}");
    }
    assert!(m.contains("# TYPE rabbitmq_auth_attempts_failed_total counter"));
}

/// Password guessing was as fast as the broker could answer: repeated failures from one
/// address were refused at once. Now each failure from an address doubles its wait (shared by
/// AMQP and HTTP), while logins from other addresses stay prompt even as many delayed refusals
/// are pending (no thread or lock is held while one waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_address_slow_down_and_others_do_not() {
    let b = Broker::start_with(|c| {
        c.auth_failure_delay_ms = 50;
        c.auth_failure_delay_max_ms = 800;
    })
    .await;
    let (amqp, http) = (b.handle.amqp_addr, b.handle.http_addr);
    // The delays are lower bounds (a timer never fires early); upper bounds allow a loaded box
    // about 8 times the expected time.
    let mut waits = Vec::new();
    for _ in 0..5 {
        let (answer, t) = amqp_login(amqp, ip("127.0.0.1"), "guest", "wrong").await;
        assert_eq!(answer, Login::Refused(403));
        waits.push(t);
    }
    eprintln!("AMQP refusals from 127.0.0.1: {waits:?}");
    // Lower bounds with 5 ms of slack: tokio's timer wheel counts whole milliseconds from its
    // own start, so a wait measured with the client's clock can come out a little short
    // (98.1 ms for 100 ms was seen once).
    for (t, expected) in waits.iter().zip([50, 100, 200, 400, 800]) {
        assert!(*t + 5 * MS >= expected * MS, "{waits:?}");
    }
    assert!(waits[0] < 400 * MS, "{waits:?}");
    // A correct login from another address is prompt …
    let (answer, t) = amqp_login(amqp, ip("127.0.0.2"), "guest", "guest").await;
    assert_eq!(answer, Login::Tuned);
    assert!(t < 400 * MS, "127.0.0.2 waited {t:?}");
    // … while one from the guessing address waits too (an early answer would tell it apart).
    let (answer, t) = amqp_login(amqp, ip("127.0.0.1"), "guest", "guest").await;
    assert_eq!(answer, Login::Tuned);
    assert!(t >= 800 * MS, "{t:?}");
    // The address's level is shared with the API: a wrong password there waits the cap.
    let (status, t) = http_from(
        http,
        ip("127.0.0.1"),
        "GET",
        "/api/overview",
        Some(("guest", "x")),
    )
    .await;
    assert_eq!(status, 401);
    assert!(t >= 800 * MS, "{t:?}");
    // Over HTTP from a fresh address: the same doubling.
    let mut waits = Vec::new();
    for _ in 0..4 {
        let (status, t) = http_from(
            http,
            ip("127.0.0.3"),
            "GET",
            "/api/overview",
            Some(("guest", "x")),
        )
        .await;
        assert_eq!(status, 401);
        waits.push(t);
    }
    eprintln!("HTTP refusals from 127.0.0.3: {waits:?}");
    for (t, expected) in waits.iter().zip([50, 100, 200, 400]) {
        assert!(*t + 5 * MS >= expected * MS, "{waits:?}");
    }
    // Many refusals pending at once from one address (each waiting up to the cap) hold no
    // worker thread and no lock: other addresses are answered at once meanwhile.
    let guesses: Vec<_> = (0..32)
        .map(|i| {
            let pass = format!("guess{i}");
            tokio::spawn(async move { amqp_login(amqp, ip("127.0.0.5"), "guest", &pass).await })
        })
        .collect();
    tokio::time::sleep(100 * MS).await;
    let (answer, t) = amqp_login(amqp, ip("127.0.0.2"), "guest", "guest").await;
    assert_eq!(answer, Login::Tuned);
    assert!(
        t < 400 * MS,
        "127.0.0.2 waited {t:?} beside 32 pending refusals"
    );
    let (status, t) = http_from(
        http,
        ip("127.0.0.4"),
        "GET",
        "/api/overview",
        Some(("guest", "guest")),
    )
    .await;
    assert_eq!(status, 200);
    assert!(t < 400 * MS, "127.0.0.4 waited {t:?}");
    for g in guesses {
        assert_eq!(g.await.unwrap().0, Login::Refused(403));
    }
    let counts = b
        .handle
        .state
        .logins
        .counts(warren::auth::throttle::Protocol::Amqp091);
    assert_eq!((counts.failed, counts.succeeded), (37, 3));
}

/// A delayed refusal does not outlive the handshake timeout: the socket is closed at the
/// deadline, unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_refusal_ends_at_the_handshake_timeout() {
    let b = Broker::start_with(|c| {
        c.auth_failure_delay_ms = 2_000;
        c.auth_failure_delay_max_ms = 10_000;
        c.handshake_timeout_ms = 500;
    })
    .await;
    let (answer, t) = amqp_login(b.handle.amqp_addr, ip("127.0.0.1"), "guest", "x").await;
    assert_eq!(answer, Login::Dropped);
    assert!(t < 1_900 * MS, "closed after {t:?}");
    // The broker still serves other addresses promptly.
    let (answer, _) = amqp_login(b.handle.amqp_addr, ip("127.0.0.2"), "guest", "guest").await;
    assert_eq!(answer, Login::Tuned);
}
