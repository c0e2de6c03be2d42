//! One scrape: every series, with rabbitmq_prometheus's names, types, labels and help texts,
//! so that RabbitMQ's own Grafana dashboards ("RabbitMQ-Overview") work unchanged. Aggregated
//! on `/metrics` (RabbitMQ's `rabbitmq_endpoint="aggregated"`), per queue on
//! `/metrics/per-object` (`"per-object"`), plus Warren's own `warren_*` series.

use super::process;
use super::text::{Kind, Text};
use crate::auth::throttle::{AttemptCounts, Logins, Protocol};
use crate::broker::stats::QueueSnapshot;
use crate::broker::stream::{ReaderStatus, StreamStatus};
use crate::broker::Broker;
use crate::observe::{Churn, Registry, SIZE_BUCKETS};
use crate::store::stream::StreamInfo;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The label every global (protocol-level) series carries in rabbitmq_prometheus.
const PROTOCOL: (&str, &str) = ("protocol", "amqp091");

/// The `le` labels of the message-size buckets (`observe::SIZE_BOUNDS`), written as
/// rabbitmq_prometheus writes them and as its dashboards select them.
const SIZE_LE: [&str; SIZE_BUCKETS - 1] = [
    "100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08",
];

/// The per-queue metrics, with their help text and kind.
const QUEUE_METRICS: &[(&str, &str, Kind)] = &[
    (
        "rabbitmq_queue_messages_ready",
        "Messages ready to be delivered to consumers",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "Messages delivered to consumers but not yet acknowledged",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_messages",
        "Sum of ready and unacknowledged messages - total queue depth",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "Size in bytes of ready messages",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_consumers",
        "Consumers on a queue",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_process_memory_bytes",
        "Memory in bytes used by the queue (its structures and ready message bodies)",
        Kind::Gauge,
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "Total number of messages published to queues",
        Kind::Counter,
    ),
    (
        "warren_queue_head_message_age_seconds",
        "Age of the oldest ready message in the queue (0 when empty): consumer lag as time",
        Kind::Gauge,
    ),
];

fn queue_values(q: &QueueRow) -> [f64; 8] {
    let s = &q.snap;
    [
        s.ready as f64,
        s.unacked as f64,
        (s.ready + s.unacked) as f64,
        s.ready_bytes as f64,
        s.consumers as f64,
        q.memory as f64,
        s.counters.publish as f64,
        s.head_age_secs(),
    ]
}

/// Warren's per-stream metrics (`x-queue-type: stream`), with what each reads.
type StreamPick = fn(&StreamInfo) -> u64;
const STREAM_METRICS: &[(&str, &str, StreamPick)] = &[
    (
        "warren_stream_messages",
        "Messages held by the stream",
        |i| i.messages,
    ),
    (
        "warren_stream_segments",
        "Segment files of the stream",
        |i| i.segments as u64,
    ),
    (
        "warren_stream_disk_bytes",
        "Bytes of the stream's segment files on disk",
        |i| i.bytes,
    ),
    (
        "warren_stream_first_offset",
        "The oldest offset the stream holds (retention moves it)",
        |i| i.first,
    ),
    (
        "warren_stream_next_offset",
        "The offset the stream's next message gets: one past its newest",
        |i| i.next,
    ),
];

/// Warren's per-consumer stream metrics, with what each reads.
type ReaderPick = fn(&ReaderStatus) -> f64;
const READER_METRICS: &[(&str, &str, ReaderPick)] = &[
    (
        "warren_stream_consumer_lag_messages",
        "Messages between a stream consumer's last acknowledged offset (or its start) and the \
         stream's end",
        |r| r.lag_messages as f64,
    ),
    (
        "warren_stream_consumer_lag_seconds",
        "Publication time between the newest message a stream consumer acknowledged and the \
         stream's newest message (0 when caught up)",
        |r| r.lag_ms as f64 / 1000.0,
    ),
];

const TRACKED_LAG: (&str, &str) = (
    "warren_stream_tracked_lag_messages",
    "Messages between a named stream consumer's tracked offset (x-stream-consumer-name) and \
     the stream's end, whether it is connected or not",
);

/// One queue as a scrape sees it.
struct QueueRow {
    vhost: String,
    name: String,
    snap: QueueSnapshot,
    memory: u64,
    stream: Option<StreamStatus>,
}

/// What both the aggregated and the per-object outputs need.
pub struct Scrape<'a> {
    pub broker: &'a Broker,
    pub registry: &'a Registry,
    /// `memory_high_watermark` in bytes: the limit of the memory alarm.
    pub memory_limit: u64,
    /// `disk_free_limit_bytes`: the limit of the disk alarm.
    pub disk_limit: u64,
    /// The node's name; also the cluster's, as `/api/cluster-name` says.
    pub node: &'a str,
    /// Time since the broker started.
    pub uptime: Duration,
    /// Login attempts per protocol.
    pub logins: &'a Logins,
}

impl Scrape<'_> {
    /// The series that are the same on every endpoint; returns the queues' snapshots.
    fn common(&self, out: &mut Text, endpoint: &str) -> Vec<QueueRow> {
        let conns = self.registry.list();
        let channels: usize = conns.iter().map(|c| c.channel_count()).sum();
        let mut queues = Vec::new();
        for v in self.broker.vhost_list() {
            for q in v.queue_list() {
                let snap = q.snapshot();
                queues.push(QueueRow {
                    vhost: v.name.clone(),
                    name: q.name.clone(),
                    memory: super::queue_memory(&q, &snap),
                    snap,
                    stream: q.stream_status(),
                });
            }
        }
        let consumers: u64 = queues.iter().map(|q| q.snap.consumers as u64).sum();
        let g = self.registry.totals();
        let churn = self.registry.churn();
        let (gauge, counter, untyped) = (Kind::Gauge, Kind::Counter, Kind::Untyped);

        out.single(
            "rabbitmq_build_info",
            "RabbitMQ & Erlang/OTP version info",
            untyped,
            &[
                ("product_name", "Warren"),
                ("product_version", env!("CARGO_PKG_VERSION")),
                ("rabbitmq_version", env!("CARGO_PKG_VERSION")),
                ("erlang_version", "none (Rust)"),
            ],
            1.0,
        );
        out.single(
            "rabbitmq_identity_info",
            "RabbitMQ node & cluster identity info",
            untyped,
            &[
                ("rabbitmq_node", self.node),
                ("rabbitmq_cluster", self.node),
                ("rabbitmq_endpoint", endpoint),
            ],
            1.0,
        );
        for (name, help, v) in [
            (
                "rabbitmq_connections",
                "Connections currently open",
                conns.len(),
            ),
            ("rabbitmq_channels", "Channels currently open", channels),
            (
                "rabbitmq_consumers",
                "Consumers currently connected",
                consumers as usize,
            ),
            ("rabbitmq_queues", "Queues available", queues.len()),
        ] {
            out.single(name, help, gauge, &[], v as f64);
        }
        let queue_churn = &self.broker.churn;
        for (name, help, v) in [
            (
                "rabbitmq_connections_opened_total",
                "Total number of connections opened",
                churn.connections_opened,
            ),
            (
                "rabbitmq_connections_closed_total",
                "Total number of connections closed or terminated (of those opened: a socket \
                 closed before connection.open is not counted)",
                churn.connections_closed,
            ),
            (
                "rabbitmq_channels_opened_total",
                "Total number of channels opened",
                churn.channels_opened,
            ),
            (
                "rabbitmq_channels_closed_total",
                "Total number of channels closed",
                churn.channels_closed,
            ),
            (
                "rabbitmq_queues_declared_total",
                "Total number of queues declared",
                Churn::get(&queue_churn.queues_declared),
            ),
            (
                "rabbitmq_queues_created_total",
                "Total number of queues created",
                Churn::get(&queue_churn.queues_created),
            ),
            (
                "rabbitmq_queues_deleted_total",
                "Total number of queues deleted",
                Churn::get(&queue_churn.queues_deleted),
            ),
            (
                "rabbitmq_connection_incoming_bytes_total",
                "Total number of bytes received on a connection",
                conns
                    .iter()
                    .map(|c| c.recv_oct.load(Ordering::Relaxed))
                    .sum::<u64>(),
            ),
            (
                "rabbitmq_connection_outgoing_bytes_total",
                "Total number of bytes sent on a connection",
                conns
                    .iter()
                    .map(|c| c.send_oct.load(Ordering::Relaxed))
                    .sum::<u64>(),
            ),
        ] {
            out.single(name, help, counter, &[], v as f64);
        }
        out.single(
            "rabbitmq_global_consumers",
            "Current number of consumers",
            gauge,
            &[PROTOCOL],
            consumers as f64,
        );
        out.single(
            "rabbitmq_global_publishers",
            "Current number of publishers",
            gauge,
            &[PROTOCOL],
            self.registry.publishers() as f64,
        );
        for (name, help, v) in [
            (
                "rabbitmq_global_messages_received_total",
                "Total number of messages received from publishers",
                g.publish,
            ),
            (
                "rabbitmq_global_messages_received_confirm_total",
                "Total number of messages received from publishers expecting confirmations",
                g.publish_confirm,
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
                "rabbitmq_global_messages_get_empty_total",
                "Total number of times basic.get operations fetched no message",
                g.get_empty,
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
            out.single(name, help, counter, &[PROTOCOL], v as f64);
        }
        out.histogram(
            "rabbitmq_message_size_bytes",
            "Size of messages received from publishers",
            &[PROTOCOL],
            &SIZE_LE,
            &g.size_buckets,
            g.size_sum as f64,
        );
        self.node_metrics(out);
        self.auth_metrics(out);
        queues
    }

    /// Login attempts per protocol, as rabbitmq_prometheus's auth attempt metrics.
    fn auth_metrics(&self, out: &mut Text) {
        type Pick = fn(&AttemptCounts) -> u64;
        let families: [(&str, &str, Pick); 3] = [
            (
                "rabbitmq_auth_attempts_total",
                "Total number of authentication attempts",
                |c| c.total(),
            ),
            (
                "rabbitmq_auth_attempts_succeeded_total",
                "Total number of successful authentication attempts",
                |c| c.succeeded,
            ),
            (
                "rabbitmq_auth_attempts_failed_total",
                "Total number of failed authentication attempts",
                |c| c.failed,
            ),
        ];
        for (name, help, pick) in families {
            out.family(name, help, Kind::Counter);
            for p in Protocol::ALL {
                let v = pick(&self.logins.counts(p));
                out.sample(name, &[("protocol", p.label())], v as f64);
            }
        }
    }

    /// The node's resources and alarms.
    fn node_metrics(&self, out: &mut Text) {
        let (gauge, untyped) = (Kind::Gauge, Kind::Untyped);
        let used = self.broker.memory.used();
        let alarm = |on: bool| if on { 1.0 } else { 0.0 };
        out.single(
            "warren_message_memory_bytes",
            "Memory held by messages, in bytes (what the memory alarm watches)",
            gauge,
            &[],
            used as f64,
        );
        out.single(
            "warren_memory_high_watermark_bytes",
            "The memory alarm's limit (memory_high_watermark): publishers are blocked while \
             warren_message_memory_bytes is above it",
            gauge,
            &[],
            self.memory_limit as f64,
        );
        if let Some(rss) = process::resident_memory() {
            out.single(
                "rabbitmq_process_resident_memory_bytes",
                "Memory used in bytes",
                gauge,
                &[],
                rss as f64,
            );
            // RabbitMQ's dashboards show "memory available before publishers are blocked" as
            // this minus the resident memory above. Warren's alarm counts message bytes, not
            // RSS, so this is the resident memory plus the message bytes still allowed: the
            // difference is then exactly the alarm's headroom.
            out.single(
                "rabbitmq_resident_memory_limit_bytes",
                "Memory high watermark in bytes, expressed against resident memory: \
                 rabbitmq_process_resident_memory_bytes plus the message bytes still allowed \
                 before the memory alarm blocks publishers (Warren's alarm compares \
                 warren_message_memory_bytes with warren_memory_high_watermark_bytes, not RSS), \
                 so that limit minus resident memory is the alarm's headroom",
                gauge,
                &[],
                rss as f64 + self.memory_limit as f64 - used as f64,
            );
        }
        out.single(
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            untyped,
            &[],
            alarm(self.broker.memory.alarmed()),
        );
        let disk = &self.broker.disk;
        // u64::MAX: not measured (yet), or the filesystem could not say.
        if disk.free() != u64::MAX {
            out.single(
                "rabbitmq_disk_space_available_bytes",
                "Disk space available in bytes",
                gauge,
                &[],
                disk.free() as f64,
            );
        }
        out.single(
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            gauge,
            &[],
            self.disk_limit as f64,
        );
        out.single(
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            untyped,
            &[],
            alarm(disk.alarmed()),
        );
        if let Some(n) = process::open_fds() {
            out.single(
                "rabbitmq_process_open_fds",
                "Open file descriptors",
                gauge,
                &[],
                n as f64,
            );
        }
        if let Some(n) = process::max_fds() {
            out.single(
                "rabbitmq_process_max_fds",
                "Open file descriptors limit",
                gauge,
                &[],
                n as f64,
            );
        }
        out.single(
            "rabbitmq_erlang_uptime_seconds",
            "Node uptime (Warren: seconds since the broker started)",
            gauge,
            &[],
            self.uptime.as_secs_f64(),
        );
    }

    /// `/metrics`: totals only (queue metrics summed, head age as the maximum).
    pub fn aggregated(&self) -> String {
        let mut out = Text::with_capacity(16 * 1024);
        let queues = self.common(&mut out, "aggregated");
        let mut sums = [0f64; 8];
        for q in &queues {
            let v = queue_values(q);
            for k in 0..7 {
                sums[k] += v[k];
            }
            sums[7] = sums[7].max(v[7]);
        }
        for (k, (name, help, kind)) in QUEUE_METRICS.iter().enumerate() {
            out.single(name, help, *kind, &[], sums[k]);
        }
        // Streams: sizes summed (offsets are per stream: per-object only), lags as the
        // largest of any consumer.
        let streams: Vec<&StreamStatus> = queues.iter().filter_map(|q| q.stream.as_ref()).collect();
        for (name, help, pick) in &STREAM_METRICS[..3] {
            let sum: u64 = streams.iter().map(|s| pick(&s.info)).sum();
            out.single(name, help, Kind::Gauge, &[], sum as f64);
        }
        for (name, help, pick) in READER_METRICS {
            let max = streams
                .iter()
                .flat_map(|s| &s.readers)
                .map(pick)
                .fold(0.0, f64::max);
            out.single(name, help, Kind::Gauge, &[], max);
        }
        let max = streams
            .iter()
            .flat_map(|s| &s.tracked)
            .map(|t| t.2)
            .max()
            .unwrap_or(0);
        out.single(TRACKED_LAG.0, TRACKED_LAG.1, Kind::Gauge, &[], max as f64);
        out.finish()
    }

    /// `/metrics/per-object`: one sample per queue, labelled `vhost` and `queue`.
    pub fn per_object(&self) -> String {
        let mut out = Text::with_capacity(16 * 1024);
        let queues = self.common(&mut out, "per-object");
        let values: Vec<[f64; 8]> = queues.iter().map(queue_values).collect();
        for (k, (name, help, kind)) in QUEUE_METRICS.iter().enumerate() {
            out.family(name, help, *kind);
            for (q, v) in queues.iter().zip(&values) {
                out.sample(name, &[("vhost", &q.vhost), ("queue", &q.name)], v[k]);
            }
        }
        let streams: Vec<(&QueueRow, &StreamStatus)> = queues
            .iter()
            .filter_map(|q| q.stream.as_ref().map(|s| (q, s)))
            .collect();
        for (name, help, pick) in STREAM_METRICS {
            out.family(name, help, Kind::Gauge);
            for (q, s) in &streams {
                let labels = [("vhost", q.vhost.as_str()), ("queue", q.name.as_str())];
                out.sample(name, &labels, pick(&s.info) as f64);
            }
        }
        // Per consumer: labelled with its tag, and its name when it has one.
        for (name, help, pick) in READER_METRICS {
            out.family(name, help, Kind::Gauge);
            for (q, s) in &streams {
                for r in &s.readers {
                    let mut labels = vec![
                        ("vhost", q.vhost.as_str()),
                        ("queue", q.name.as_str()),
                        ("consumer_tag", r.consumer_tag.as_str()),
                    ];
                    if let Some(n) = &r.name {
                        labels.push(("name", n.as_str()));
                    }
                    out.sample(name, &labels, pick(r));
                }
            }
        }
        out.family(TRACKED_LAG.0, TRACKED_LAG.1, Kind::Gauge);
        for (q, s) in &streams {
            for (n, _, lag) in &s.tracked {
                let labels = [
                    ("vhost", q.vhost.as_str()),
                    ("queue", q.name.as_str()),
                    ("name", n.as_str()),
                ];
                out.sample(TRACKED_LAG.0, &labels, *lag as f64);
            }
        }
        out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::SIZE_BOUNDS;

    /// The `le` labels are the bounds, written as rabbitmq_prometheus writes them.
    #[test]
    fn size_labels_are_the_bounds() {
        for (le, bound) in SIZE_LE.iter().zip(SIZE_BOUNDS) {
            assert_eq!(le.parse::<f64>().unwrap(), bound as f64, "{le}");
        }
        assert_eq!(SIZE_LE[4], "1e+06");
    }
}
