//! Message rates and Prometheus metrics.
//!
//! `Rates` samples every counter every `SAMPLE_INTERVAL` (RabbitMQ's
//! `collect_statistics_interval` is 5 s too): the global ones here, each queue's in the queue
//! itself (`Queue::sample_rates`, a few bytes per queue), so reading a rate is a lookup, never a
//! walk of the message path. Prometheus output uses
//! rabbitmq_prometheus's metric names: aggregated on `/metrics`, per queue on
//! `/metrics/per-object`, plus Warren's `warren_queue_head_message_age_seconds`.

use crate::broker::queue::Queue;
use crate::broker::stats::QueueSnapshot;
use crate::broker::Broker;
use crate::observe::{Counters, Registry};
use parking_lot::Mutex;
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

pub use crate::broker::stats::QueueRates;

pub fn global_array(c: &Counters) -> [u64; 11] {
    [
        c.publish,
        c.routed,
        c.confirm,
        c.return_unroutable,
        c.drop_unroutable,
        c.deliver,
        c.deliver_no_ack,
        c.get,
        c.get_no_ack,
        c.ack,
        c.redeliver,
    ]
}

/// Per-second rates of the global counters (same order as `global_array`) and queue totals.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalRates {
    pub counters: [f64; 11],
    pub messages: f64,
    pub ready: f64,
    pub unacked: f64,
}

#[derive(Debug, Default)]
struct Inner {
    at: Option<Instant>,
    global: [u64; 11],
    depth: [u64; 2],
    global_rates: GlobalRates,
}

/// The global rates; each queue keeps its own (`Queue::sample_rates`).
#[derive(Debug, Default)]
pub struct Rates {
    inner: Mutex<Inner>,
}

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn delta(now: u64, before: u64, secs: f64) -> f64 {
    (now as f64 - before as f64) / secs
}

impl Rates {
    /// Take a sample of every counter and update the rates.
    pub fn sample(&self, broker: &Broker, registry: &Registry) {
        let now = Instant::now();
        let global = global_array(&registry.totals());
        let at = self.inner.lock().at;
        let secs = at.map(|t| now.duration_since(t).as_secs_f64().max(1e-3));
        for c in registry.list() {
            c.sample_rates(secs);
        }
        let mut depth = [0u64; 2];
        for v in broker.vhost_list() {
            for q in v.queue_list() {
                let s = q.sample_rates(secs);
                depth[0] += s.ready;
                depth[1] += s.unacked;
            }
            for e in v.exchange_list() {
                e.stats.sample(secs);
            }
        }
        let mut i = self.inner.lock();
        let mut g = GlobalRates::default();
        if let Some(secs) = secs {
            for (out, (now, before)) in g.counters.iter_mut().zip(global.iter().zip(i.global)) {
                *out = rate(*now, before, secs);
            }
            g.ready = delta(depth[0], i.depth[0], secs);
            g.unacked = delta(depth[1], i.depth[1], secs);
            g.messages = g.ready + g.unacked;
        }
        i.at = Some(now);
        i.global = global;
        i.depth = depth;
        i.global_rates = g;
    }

    pub fn global(&self) -> GlobalRates {
        self.inner.lock().global_rates
    }

    /// Rates of each of `queues` as of the last sample.
    pub fn queues(&self, queues: &[Arc<Queue>]) -> Vec<QueueRates> {
        queues.iter().map(|q| q.rates()).collect()
    }
}

// ---- Prometheus -------------------------------------------------------------------------------

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_owned());
    l.set_value(value.to_owned());
    l
}

fn sample(labels: &[LabelPair], value: f64, kind: MetricType) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels.to_vec());
    match kind {
        MetricType::COUNTER => {
            let mut c = prometheus::proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

fn single(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut f = family(name, help, kind);
    f.mut_metric().push(sample(&[], value, kind));
    f
}

/// The per-queue metrics, with their help text and kind.
const QUEUE_METRICS: &[(&str, &str, MetricType)] = &[
    (
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_consumers",
        "Consumers on a queue",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_process_memory_bytes",
        "Memory in bytes used by the queue (its structures and ready message bodies)",
        MetricType::GAUGE,
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "Total number of messages published to queues",
        MetricType::COUNTER,
    ),
    (
        "warren_queue_head_message_age_seconds",
        "Age of the oldest ready message in the queue (0 when empty): consumer lag as time",
        MetricType::GAUGE,
    ),
];

fn queue_values(s: &QueueSnapshot) -> [f64; 8] {
    [
        s.ready as f64,
        s.unacked as f64,
        (s.ready + s.unacked) as f64,
        s.ready_bytes as f64,
        s.consumers as f64,
        s.memory() as f64,
        s.counters.publish as f64,
        s.head_age_secs(),
    ]
}

/// What both the aggregated and the per-object outputs need.
pub struct Scrape<'a> {
    pub broker: &'a Broker,
    pub registry: &'a Registry,
    pub memory_limit: u64,
}

impl Scrape<'_> {
    fn common(&self, out: &mut Vec<MetricFamily>) -> Vec<(String, String, QueueSnapshot)> {
        let conns = self.registry.list();
        let channels: usize = conns.iter().map(|c| c.channel_count()).sum();
        let mut queues = Vec::new();
        for v in self.broker.vhost_list() {
            for q in v.queue_list() {
                queues.push((v.name.clone(), q.name.clone(), q.snapshot()));
            }
        }
        let consumers: u64 = queues.iter().map(|(_, _, s)| s.consumers as u64).sum();
        let g = self.registry.totals();
        let gauge = MetricType::GAUGE;
        let counter = MetricType::COUNTER;
        let mut build = family(
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            gauge,
        );
        build.mut_metric().push(sample(
            &[
                label("product_name", "Warren"),
                label("product_version", env!("CARGO_PKG_VERSION")),
                label("rabbitmq_version", env!("CARGO_PKG_VERSION")),
            ],
            1.0,
            gauge,
        ));
        out.push(build);
        out.push(single(
            "rabbitmq_connections",
            "Connections currently open",
            gauge,
            conns.len() as f64,
        ));
        out.push(single(
            "rabbitmq_channels",
            "Channels currently open",
            gauge,
            channels as f64,
        ));
        for (name, help, v) in [
            (
                "rabbitmq_connection_incoming_bytes_total",
                "Total number of bytes received on a connection",
                conns
                    .iter()
                    .map(|c| c.recv_oct.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>(),
            ),
            (
                "rabbitmq_connection_outgoing_bytes_total",
                "Total number of bytes sent on a connection",
                conns
                    .iter()
                    .map(|c| c.send_oct.load(std::sync::atomic::Ordering::Relaxed))
                    .sum::<u64>(),
            ),
        ] {
            out.push(single(name, help, counter, v as f64));
        }
        out.push(single(
            "rabbitmq_consumers",
            "Consumers currently connected",
            gauge,
            consumers as f64,
        ));
        out.push(single(
            "rabbitmq_queues",
            "Queues available",
            gauge,
            queues.len() as f64,
        ));
        out.push(single(
            "rabbitmq_global_consumers",
            "Current number of consumers",
            gauge,
            consumers as f64,
        ));
        for (name, help, v) in [
            (
                "rabbitmq_global_messages_received_total",
                "Total number of messages received from publishers",
                g.publish,
            ),
            (
                "rabbitmq_global_messages_routed_total",
                "Total number of messages routed to queues",
                g.routed,
            ),
            (
                "rabbitmq_global_messages_unroutable_dropped_total",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
                g.drop_unroutable,
            ),
            (
                "rabbitmq_global_messages_unroutable_returned_total",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
                g.return_unroutable,
            ),
            (
                "rabbitmq_global_messages_confirmed_total",
                "Total number of messages confirmed to publishers",
                g.confirm,
            ),
            (
                "rabbitmq_global_messages_delivered_total",
                "Total number of messages delivered to consumers",
                g.deliver + g.deliver_no_ack + g.get + g.get_no_ack,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_manual_ack_total",
                "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
                g.deliver,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_auto_ack_total",
                "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
                g.deliver_no_ack,
            ),
            (
                "rabbitmq_global_messages_delivered_get_manual_ack_total",
                "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
                g.get,
            ),
            (
                "rabbitmq_global_messages_delivered_get_auto_ack_total",
                "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
                g.get_no_ack,
            ),
            (
                "rabbitmq_global_messages_redelivered_total",
                "Total number of messages redelivered to consumers",
                g.redeliver,
            ),
            (
                "rabbitmq_global_messages_acknowledged_total",
                "Total number of messages acknowledged by consumers",
                g.ack,
            ),
        ] {
            out.push(single(name, help, counter, v as f64));
        }
        if let Some(rss) = resident_memory() {
            out.push(single(
                "rabbitmq_process_resident_memory_bytes",
                "Memory used in bytes",
                gauge,
                rss as f64,
            ));
        }
        out.push(single(
            "warren_message_memory_bytes",
            "Memory held by messages, in bytes (what the memory alarm watches)",
            gauge,
            self.broker.memory.used() as f64,
        ));
        out.push(single(
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            gauge,
            self.memory_limit as f64,
        ));
        out.push(single(
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            gauge,
            if self.broker.memory.alarmed() {
                1.0
            } else {
                0.0
            },
        ));
        queues
    }

    /// `/metrics`: totals only (queue metrics summed, head age as the maximum).
    pub fn aggregated(&self) -> String {
        let mut out = Vec::new();
        let queues = self.common(&mut out);
        let mut sums = [0f64; 8];
        for (_, _, s) in &queues {
            let v = queue_values(s);
            for k in 0..7 {
                sums[k] += v[k];
            }
            sums[7] = sums[7].max(v[7]);
        }
        for (k, (name, help, kind)) in QUEUE_METRICS.iter().enumerate() {
            out.push(single(name, help, *kind, sums[k]));
        }
        encode(&out)
    }

    /// `/metrics/per-object`: one sample per queue, labelled `vhost` and `queue`.
    pub fn per_object(&self) -> String {
        let mut out = Vec::new();
        let queues = self.common(&mut out);
        let mut fams: Vec<MetricFamily> = QUEUE_METRICS
            .iter()
            .map(|(n, h, k)| {
                let mut f = family(n, h, *k);
                f.mut_metric().reserve(queues.len());
                f
            })
            .collect();
        for (vhost, name, s) in &queues {
            let labels = [label("vhost", vhost), label("queue", name)];
            for (k, v) in queue_values(s).into_iter().enumerate() {
                let kind = QUEUE_METRICS[k].2;
                fams[k].mut_metric().push(sample(&labels, v, kind));
            }
        }
        out.extend(fams);
        encode(&out)
    }
}

/// The process's resident set size (Linux), in bytes.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn encode(fams: &[MetricFamily]) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::with_capacity(64 * 1024);
    if let Err(e) = prometheus::TextEncoder::new().encode(fams, &mut buf) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
