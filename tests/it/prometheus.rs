//! Prometheus metrics: scraped over HTTP from the dedicated listener and the management one,
//! parsed back, and checked against queue states a real client created.

use crate::harness::*;

use lapin::options::*;
use lapin::types::FieldTable;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One sample of the text format: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text format (the subset Warren writes), checking its shape: every
/// sample belongs to a family with a TYPE line (a histogram's `_bucket`, `_sum` and `_count`
/// to their histogram).
pub fn parse(text: &str) -> Vec<Sample> {
    let mut typed = std::collections::HashMap::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it.next().unwrap_or_default();
            assert!(
                matches!(kind, "gauge" | "counter" | "untyped" | "histogram"),
                "{line}"
            );
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').expect("closing brace");
                let labels = l
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (n.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        let histogram = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| typed.get(base).is_some_and(|k| k == "histogram"))
        });
        assert!(
            typed.contains_key(&name) || histogram,
            "{name} has a TYPE line"
        );
        out.push(Sample {
            name,
            labels,
            value: value.parse().expect("a number"),
        });
    }
    out
}

pub fn value(samples: &[Sample], name: &str, queue: Option<&str>) -> f64 {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && queue.is_none_or(|q| s.labels.get("queue").map(String::as_str) == Some(q))
        })
        .unwrap_or_else(|| panic!("no sample {name} {queue:?}"))
        .value
}

pub async fn scrape(url: String) -> (String, Vec<Sample>) {
    let r = request("GET", url, None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let s = parse(&r.text);
    (r.text, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_matches_queue_states() {
    let b = Broker::start().await;
    let prom = format!(
        "http://{}",
        b.handle.prometheus_addr.expect("prometheus listener")
    );
    let (_c, ch) = b.channel().await;
    declare(&ch, "pa").await;
    declare(&ch, "pb").await;
    for _ in 0..3 {
        publish(&ch, "", "pa", b"12345").await;
    }
    publish(&ch, "", "pb", b"1").await;
    publish(&ch, "", "pb", b"2").await;
    let (_c2, ch2) = b.channel().await;
    ch2.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch2, "pb", false).await;
    let d = take(&mut consumer, 1).await;
    assert_eq!(d[0].data, b"1");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (_, s) = scrape(format!("{prom}/metrics/per-object")).await;
    assert_eq!(value(&s, "rabbitmq_queue_messages_ready", Some("pa")), 3.0);
    assert_eq!(
        value(&s, "rabbitmq_queue_messages_unacked", Some("pa")),
        0.0
    );
    assert_eq!(
        value(&s, "rabbitmq_queue_messages_ready_bytes", Some("pa")),
        15.0
    );
    assert_eq!(value(&s, "rabbitmq_queue_messages_ready", Some("pb")), 1.0);
    assert_eq!(
        value(&s, "rabbitmq_queue_messages_unacked", Some("pb")),
        1.0
    );
    assert_eq!(value(&s, "rabbitmq_queue_messages", Some("pb")), 2.0);
    assert_eq!(value(&s, "rabbitmq_queue_consumers", Some("pb")), 1.0);
    assert_eq!(
        value(&s, "rabbitmq_queue_messages_published_total", Some("pa")),
        3.0
    );
    let age = value(&s, "warren_queue_head_message_age_seconds", Some("pa"));
    assert!((0.2..30.0).contains(&age), "head age {age}");
    let pa = s
        .iter()
        .find(|x| x.name == "rabbitmq_queue_messages_ready" && x.labels["queue"] == "pa")
        .unwrap();
    assert_eq!(pa.labels["vhost"], "/");

    let (_, s) = scrape(format!("{prom}/metrics")).await;
    assert_eq!(value(&s, "rabbitmq_queues", None), 2.0);
    assert_eq!(value(&s, "rabbitmq_connections", None), 2.0);
    assert_eq!(value(&s, "rabbitmq_channels", None), 2.0);
    assert_eq!(value(&s, "rabbitmq_consumers", None), 1.0);
    assert_eq!(value(&s, "rabbitmq_queue_messages_ready", None), 4.0);
    assert_eq!(value(&s, "rabbitmq_queue_messages_unacked", None), 1.0);
    assert_eq!(
        value(&s, "rabbitmq_global_messages_received_total", None),
        5.0
    );
    assert_eq!(
        value(&s, "rabbitmq_global_messages_routed_total", None),
        5.0
    );
    assert_eq!(
        value(
            &s,
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            None
        ),
        1.0
    );
    assert!(value(&s, "warren_queue_head_message_age_seconds", None) >= age);
    assert!(
        !s.iter().any(|x| x.labels.contains_key("queue")),
        "aggregated: no per-queue series"
    );

    // Ack, and an unroutable publish: counters move, gauges follow.
    ch2.basic_ack(d[0].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    publish(&ch, "amq.direct", "nowhere", b"x").await;
    take(&mut consumer, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, s) = scrape(format!("{prom}/metrics")).await;
    assert_eq!(
        value(&s, "rabbitmq_global_messages_acknowledged_total", None),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "rabbitmq_global_messages_unroutable_dropped_total",
            None
        ),
        1.0
    );
    assert_eq!(value(&s, "rabbitmq_queue_messages_ready", None), 3.0);

    // The management listener serves the same, without auth too.
    let (_, s) = scrape(format!("http://{}/metrics", b.handle.http_addr)).await;
    assert_eq!(value(&s, "rabbitmq_queues", None), 2.0);
    let r = request("GET", format!("{prom}/api/overview"), None, None, &[]).await;
    assert_eq!(r.status, 404, "only metrics on the Prometheus listener");
    b.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_listener_can_be_disabled() {
    let b = Broker::start_with(|c| c.prometheus_listen = String::new()).await;
    assert!(b.handle.prometheus_addr.is_none());
    let (_, s) = scrape(format!("http://{}/metrics", b.handle.http_addr)).await;
    assert_eq!(value(&s, "rabbitmq_queues", None), 0.0);
    b.handle.shutdown().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The figures for the report: /api/queues and /metrics with 10,000 queues. Run with
/// `cargo test --release --test it -- --ignored ten_thousand --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ten_thousand_queues_list_and_scrape_timings() {
    let b = Broker::start().await;
    let (_c, ch) = b.channel().await;
    for i in 0..10_000 {
        ch.queue_declare(
            format!("perf-{i:05}").as_str().into(),
            QueueDeclareOptions {
                nowait: i % 100 != 99,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        if i % 10 == 0 {
            publish(&ch, "", &format!("perf-{i:05}"), b"m").await;
        }
    }
    let api = Api::of(&b);
    let o = api.get("/api/overview").await.body;
    assert_eq!(o["object_totals"]["queues"], 10_000);
    let time = |path: String, n: usize| {
        let api_base = api.base.clone();
        async move {
            let mut t = Vec::new();
            for _ in 0..n {
                let start = Instant::now();
                let r = request(
                    "GET",
                    format!("{api_base}{path}"),
                    Some(("guest", "guest")),
                    None,
                    &[],
                )
                .await;
                t.push(start.elapsed());
                assert_eq!(r.status, 200);
            }
            t.sort();
            (percentile(&t, 0.5), percentile(&t, 0.99), t[t.len() - 1])
        }
    };
    for path in [
        "/api/queues?page=1&page_size=100".to_owned(),
        "/api/queues?page=50&page_size=100&name=perf-0".to_owned(),
        "/api/queues?page=1&page_size=100&sort=messages&sort_reverse=true".to_owned(),
        "/api/queues".to_owned(),
        "/api/overview".to_owned(),
        "/metrics".to_owned(),
        "/metrics/per-object".to_owned(),
    ] {
        let (p50, p99, max) = time(path.clone(), 200).await;
        println!("{path}: median {p50:?}, p99 {p99:?}, max {max:?}");
    }
    let r = request(
        "GET",
        format!("{}/metrics/per-object", api.base),
        None,
        None,
        &[],
    )
    .await;
    println!("per-object scrape: {} bytes", r.text.len());
    b.handle.shutdown().await;
}
