//! RabbitMQ's official Grafana dashboard ("RabbitMQ-Overview", read at run time from
//! `../shared/grafana/`) against Warren, through a real Prometheus: every panel's query and
//! every dashboard variable's query must return data, and the numbers that matter must be right.
//!
//! Needs the `prometheus` binary (Debian's `prometheus` package; `.ci/run` installs it).

use crate::harness::*;
use crate::prometheus::{scrape, value, Sample};
use lapin::options::*;
use lapin::BasicProperties;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What Grafana puts for its built-in variables: `$__rate_interval` is at least four scrape
/// intervals (Grafana's default scrape interval is 15 s), `$__range` the dashboard's time range
/// (its default is the last hour).
const RATE_INTERVAL: &str = "15s";
const RANGE: &str = "1h";
/// The `namespace` label a Kubernetes scrape (the RabbitMQ cluster operator's) would add.
const NAMESPACE: &str = "warren-it";
const WATERMARK: u64 = 512 << 20;

/// A Prometheus server scraping one target every second, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Start Prometheus on a free port with two jobs scraping `target`: one plain (as RabbitMQ's
    /// own docker set-up scrapes), one adding the `namespace` label as a Kubernetes scrape does.
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let bin = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join("prometheus"))
                        .find(|p| p.exists())
                })
            })
            .unwrap_or_else(|| {
                panic!(
                    "the `prometheus` binary is not installed: this test runs RabbitMQ's Grafana \
                     dashboard's queries through a real Prometheus (Debian/Ubuntu: \
                     `apt-get install prometheus`; .ci/run installs it)"
                )
            });
        let dir = temp_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             - job_name: warren\n  static_configs:\n  - targets: ['{target}']\n\
             - job_name: warren-k8s\n  static_configs:\n  - targets: ['{target}']\n    \
             labels:\n      namespace: {NAMESPACE}\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // A free port: bound by the OS, released, then given to Prometheus.
        let port = crate::harness::reserve_port().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // `request` fails the test on a refused connection: knock first.
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            if listening
                && request("GET", format!("{}/-/ready", p.url), None, None, &[])
                    .await
                    .status
                    == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready; its log:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let r = request(
            "GET",
            format!("{}{path}?{}", self.url, query.join("&")),
            None,
            None,
            &[],
        )
        .await;
        if r.status != 200 || r.body["status"] != "success" {
            return Err(format!("HTTP {}: {}", r.status, r.text));
        }
        Ok(r.body["data"].clone())
    }

    /// An instant query's samples: (labels, value).
    async fn query(&self, q: &str) -> Result<Vec<(Value, f64)>, String> {
        let data = self.api("/api/v1/query", &[("query", q)]).await?;
        let samples = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["metric"].clone(), number(&s["value"][1])))
                .collect(),
            Some("scalar") => vec![(Value::Null, number(&data["result"][1]))],
            other => return Err(format!("unexpected result type {other:?}")),
        };
        Ok(samples)
    }

    /// A range query's points, every series together: (labels, value).
    async fn query_range(
        &self,
        q: &str,
        start: f64,
        end: f64,
    ) -> Result<Vec<(Value, f64)>, String> {
        let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", q),
                    ("start", &start),
                    ("end", &end),
                    ("step", "1"),
                ],
            )
            .await?;
        let mut points = Vec::new();
        for s in data["result"].as_array().unwrap() {
            for v in s["values"].as_array().unwrap() {
                points.push((s["metric"].clone(), number(&v[1])));
            }
        }
        Ok(points)
    }

    /// Grafana's `label_values(selector, label)`: the label's values among the selected series.
    async fn label_values(&self, q: &str) -> Result<Vec<String>, String> {
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("not a label_values query: {q}"))?;
        let (selector, label) = inner
            .rsplit_once(',')
            .ok_or_else(|| format!("label_values without a selector: {q}"))?;
        let data = self
            .api(
                &format!("/api/v1/label/{}/values", label.trim()),
                &[("match[]", selector.trim())],
            )
            .await?;
        Ok(data
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect())
    }
}

fn number(v: &Value) -> f64 {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One query of the dashboard.
struct Target {
    panel: String,
    expr: String,
    instant: bool,
}

/// The dashboard's panel queries (rows' panels included) and its variables' queries, by name.
fn dashboard() -> (Vec<Target>, Vec<(String, String)>) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/grafana/RabbitMQ-Overview.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the dashboard {}: {e}", path.display()));
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    fn walk(panels: &Value, out: &mut Vec<Target>) {
        for p in panels.as_array().into_iter().flatten() {
            walk(&p["panels"], out);
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(Target {
                        panel: p["title"].as_str().unwrap_or("(untitled)").to_owned(),
                        expr: expr.to_owned(),
                        instant: t["instant"].as_bool().unwrap_or(false),
                    });
                }
            }
        }
    }
    let mut targets = Vec::new();
    walk(&d["panels"], &mut targets);
    let variables = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap();
            (v["name"].as_str().unwrap().to_owned(), q.to_owned())
        })
        .collect();
    (targets, variables)
}

/// Grafana's substitution of the dashboard's variables and its own.
fn substitute(expr: &str, vars: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", RANGE);
    // Longest names first, so that no name is replaced inside a longer one.
    let mut vars: Vec<&(String, String)> = vars.iter().collect();
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, v) in vars {
        e = e.replace(&format!("${{{name}}}"), v);
        e = e.replace(&format!("${name}"), v);
    }
    e
}

/// Wait until Prometheus has scraped `job` `n` more times.
async fn scrapes(p: &Prometheus, job: &str, n: u32) {
    let q = format!("count_over_time(up{{job=\"{job}\"}}[1h])");
    let count = |r: Result<Vec<(Value, f64)>, String>| {
        r.ok().and_then(|v| v.first().map(|s| s.1)).unwrap_or(0.0)
    };
    let start = count(p.query(&q).await);
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(p.query(&q).await) < start + n as f64 {
        assert!(
            Instant::now() < deadline,
            "Prometheus is not scraping Warren ({job}); its log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publish `body` with confirms on, waiting for the confirm.
async fn publish_confirm(ch: &lapin::Channel, queue: &str, body: &[u8]) {
    let c = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(c.is_ack());
}

fn labels(s: &[Sample], name: &str) -> std::collections::BTreeMap<String, String> {
    s.iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .labels
        .clone()
}

fn bucket(s: &[Sample], le: &str) -> f64 {
    s.iter()
        .find(|x| x.name == "rabbitmq_message_size_bytes_bucket" && x.labels["le"] == le)
        .unwrap_or_else(|| panic!("no bucket le={le}"))
        .value
}

/// The dashboard issue: every panel of RabbitMQ-Overview joins on `rabbitmq_identity_info`,
/// which Warren did not export, and half the series it plots (connection, channel and queue
/// churn, publishers, confirms expected, empty gets, disk, file descriptors, uptime, the
/// message-size histogram) were missing, so Grafana showed no data at all; its memory panel
/// (limit minus RSS) did not show the headroom of Warren's memory alarm, which counts message
/// bytes. Each query must now return data through a real Prometheus, and the values be right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_overview_dashboard_shows_data_for_every_panel() {
    let (targets, variables) = dashboard();
    assert!(targets.len() >= 50, "{} panel queries", targets.len());
    assert_eq!(variables.len(), 3, "{variables:?}");
    let b = Broker::start_with(|c| c.memory_high_watermark_bytes = WATERMARK).await;
    let target = b.handle.prometheus_addr.expect("prometheus listener");
    let prom = Prometheus::start(target).await;
    // Counters must move between scrapes for rates and increases to show anything.
    scrapes(&prom, "warren", 1).await;
    scrapes(&prom, "warren-k8s", 1).await;
    let traffic_start = now() - 1.0;

    // Publishers with confirms: one message in each size bucket up to 10 MB.
    let (pub_conn, publisher) = b.channel().await;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&publisher, "g-work").await;
    let sizes = [10usize, 100, 101, 1_000, 5_000, 50_000, 500_000, 2_000_000];
    for &n in &sizes {
        publish_confirm(&publisher, "g-work", &vec![b'x'; n]).await;
    }
    // Consumers with acks, one nack with requeue (a redelivery).
    let (_cons_conn, consumer_ch) = b.channel().await;
    let mut consumer = consume(&consumer_ch, "g-work", false).await;
    let got = take(&mut consumer, sizes.len()).await;
    consumer_ch
        .basic_nack(
            got[0].delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for d in &got[1..] {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let again = take(&mut consumer, 1).await;
    assert!(again[0].redelivered);
    again[0].ack(BasicAckOptions::default()).await.unwrap();
    // Polling: empty, manual ack, auto ack.
    let (_poll_conn, poller) = b.channel().await;
    declare(&poller, "g-poll").await;
    assert!(poller
        .basic_get("g-poll".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    publish(&poller, "", "g-poll", b"p1").await;
    publish(&poller, "", "g-poll", b"p2").await;
    let m = get_with(&poller, "g-poll", false).await.expect("a message");
    m.ack(BasicAckOptions::default()).await.unwrap();
    get_with(&poller, "g-poll", true).await.expect("a message");
    // Unroutable: dropped, and returned (mandatory).
    publish(&poller, "amq.direct", "nowhere", b"u").await;
    poller
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"r",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    // Messages left ready, and one unacknowledged.
    declare(&poller, "g-held").await;
    for _ in 0..3 {
        publish(&poller, "", "g-held", &[b'h'; 1000]).await;
    }
    let (_unacked_conn, holder) = b.channel().await;
    holder
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut held = consume(&holder, "g-held", false).await;
    take(&mut held, 1).await;
    // Churn: connections and channels opened and closed, queues declared, created, deleted.
    let mut closed_conns = 0;
    let mut closed_channels = 0;
    let mut kept = Vec::new();
    for k in 0..3 {
        let c = b.connect().await;
        let ch1 = c.create_channel().await.unwrap();
        let ch2 = c.create_channel().await.unwrap();
        ch1.close(200, "bye".into()).await.unwrap();
        closed_channels += 1;
        if k < 2 {
            c.close(200, "bye".into()).await.unwrap();
            closed_conns += 1;
            closed_channels += 1; // ch2 goes with its connection
        } else {
            kept.push((c, ch2)); // both stay open (lapin closes a dropped channel)
        }
    }
    declare(&poller, "g-work").await; // declared again: not created
    for k in 0..3 {
        let q = format!("g-tmp-{k}");
        declare(&poller, &q).await;
        poller
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    // A socket that never completes its handshake is neither opened nor closed.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(b.handle.amqp_addr)
            .await
            .unwrap();
        s.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ---- The values that matter, straight from Warren --------------------------------------
    let (_, s) = scrape(format!("http://{target}/metrics")).await;
    let v = |name: &str| value(&s, name, None);
    let opened_conns = 4.0 + 3.0; // publisher, consumer, poller, holder; 3 churned
    assert_eq!(v("rabbitmq_connections_opened_total"), opened_conns);
    assert_eq!(v("rabbitmq_connections_closed_total"), closed_conns as f64);
    assert_eq!(
        v("rabbitmq_connections_opened_total") - v("rabbitmq_connections_closed_total"),
        v("rabbitmq_connections")
    );
    assert_eq!(v("rabbitmq_channels_opened_total"), 4.0 + 6.0);
    assert_eq!(v("rabbitmq_channels_closed_total"), closed_channels as f64);
    assert_eq!(
        v("rabbitmq_channels_opened_total") - v("rabbitmq_channels_closed_total"),
        v("rabbitmq_channels")
    );
    // g-work twice, g-poll, g-held, 3 temporary ones.
    assert_eq!(v("rabbitmq_queues_declared_total"), 7.0);
    assert_eq!(v("rabbitmq_queues_created_total"), 6.0);
    assert_eq!(v("rabbitmq_queues_deleted_total"), 3.0);
    // Publishers: the open channels that published (publisher and poller).
    assert_eq!(v("rabbitmq_global_publishers"), 2.0);
    assert_eq!(
        v("rabbitmq_global_messages_received_confirm_total"),
        sizes.len() as f64
    );
    assert_eq!(
        v("rabbitmq_global_messages_confirmed_total"),
        sizes.len() as f64
    );
    assert_eq!(v("rabbitmq_global_messages_get_empty_total"), 1.0);
    assert_eq!(v("rabbitmq_global_messages_redelivered_total"), 1.0);
    // The histogram counts every publish by body size, cumulatively: the sizes above and
    // p1, p2, u, r and the three held messages.
    let mut all: Vec<usize> = sizes.to_vec();
    all.extend([2, 2, 1, 1, 1000, 1000, 1000]);
    let received = v("rabbitmq_global_messages_received_total");
    assert_eq!(received, all.len() as f64);
    for (le, bound) in [
        ("100.0", 100),
        ("1000.0", 1_000),
        ("10000.0", 10_000),
        ("100000.0", 100_000),
        ("1e+06", 1_000_000),
        ("1e+07", 10_000_000),
        ("5e+07", 50_000_000),
        ("1e+08", 100_000_000),
        ("+Inf", usize::MAX),
    ] {
        let expected = all.iter().filter(|&&n| n <= bound).count();
        assert_eq!(bucket(&s, le), expected as f64, "bucket le={le}");
    }
    assert_eq!(bucket(&s, "100.0"), 6.0);
    assert_eq!(bucket(&s, "1e+07"), 15.0);
    assert_eq!(v("rabbitmq_message_size_bytes_count"), received);
    let sum: usize = all.iter().sum();
    assert_eq!(v("rabbitmq_message_size_bytes_sum"), sum as f64);
    assert_eq!(
        labels(&s, "rabbitmq_message_size_bytes_count")["protocol"],
        "amqp091"
    );
    // Identity: the node and cluster names the management API gives, and the endpoint.
    let api = Api::of(&b);
    let node = api.get("/api/overview").await.body["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster = api.get("/api/cluster-name").await.body["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = labels(&s, "rabbitmq_identity_info");
    assert_eq!(id["rabbitmq_node"], node);
    assert_eq!(id["rabbitmq_cluster"], cluster);
    assert_eq!(id["rabbitmq_endpoint"], "aggregated");
    assert_eq!(v("rabbitmq_identity_info"), 1.0);
    let (_, per_object) = scrape(format!("http://{target}/metrics/per-object")).await;
    assert_eq!(
        labels(&per_object, "rabbitmq_identity_info")["rabbitmq_endpoint"],
        "per-object"
    );
    // Memory: limit minus resident memory is the alarm's headroom, the watermark minus the
    // bytes of live messages (three ready, one unacked here).
    let used = v("warren_message_memory_bytes");
    assert!(used >= 3000.0, "message bytes {used}");
    assert_eq!(v("warren_memory_high_watermark_bytes"), WATERMARK as f64);
    assert_eq!(
        v("rabbitmq_resident_memory_limit_bytes") - v("rabbitmq_process_resident_memory_bytes"),
        WATERMARK as f64 - used
    );
    let rss = v("rabbitmq_process_resident_memory_bytes");
    assert!(rss > 1e6, "resident memory is the process's RSS: {rss}");
    // Disk, file descriptors, uptime.
    assert!(v("rabbitmq_disk_space_available_bytes") > 0.0);
    assert_eq!(
        v("rabbitmq_disk_space_available_limit_bytes"),
        b.handle.state.config.disk_free_limit_bytes as f64
    );
    let fds = v("rabbitmq_process_open_fds");
    assert!(fds >= 10.0, "sockets and files: {fds}");
    assert!(v("rabbitmq_process_max_fds") >= fds);
    let up = v("rabbitmq_erlang_uptime_seconds");
    assert!((1.0..60.0).contains(&up), "uptime {up}");
    let n = api.get("/api/nodes").await.body[0].clone();
    assert!(n["fd_used"].as_u64().unwrap() > 0, "{n}");
    assert!(n["uptime"].as_u64().unwrap() < 60_000, "{n}");
    assert_eq!(
        n["disk_free_limit"].as_u64().unwrap(),
        b.handle.state.config.disk_free_limit_bytes
    );

    // ---- Every query of the dashboard, through Prometheus ----------------------------------
    scrapes(&prom, "warren", 2).await;
    scrapes(&prom, "warren-k8s", 2).await;
    let end = now();
    let mut failures = Vec::new();
    let mut evaluated = 0;
    let (ns_name, ns_query) = &variables[0];
    assert_eq!(ns_name, "namespace");
    match prom.label_values(ns_query).await {
        Ok(values) if values == [NAMESPACE] => {}
        other => failures.push(format!("variable {ns_name}: {ns_query}\n  -> {other:?}")),
    }
    evaluated += 1;
    // With the Kubernetes label, and without it (Grafana then substitutes an empty value,
    // which selects the series that have no such label).
    for namespace in [NAMESPACE, ""] {
        let mut vars = vec![(ns_name.clone(), namespace.to_owned())];
        for (name, q) in &variables[1..] {
            let q = substitute(q, &vars);
            evaluated += 1;
            match prom.label_values(&q).await {
                Ok(values) if !values.is_empty() => vars.push((name.clone(), values[0].clone())),
                other => {
                    failures.push(format!("variable {name}: {q}\n  -> {other:?}"));
                    vars.push((name.clone(), String::new()));
                }
            }
        }
        assert_eq!(vars[1].1, cluster, "{vars:?}");
        assert_eq!(vars[2].1, "aggregated", "{vars:?}");
        for t in &targets {
            let expr = substitute(&t.expr, &vars);
            evaluated += 1;
            if expr.contains('$') {
                failures.push(format!("[{}] unsubstituted variable: {expr}", t.panel));
                continue;
            }
            let r = if t.instant {
                prom.query(&expr).await
            } else {
                prom.query_range(&expr, traffic_start, end).await
            };
            match r {
                Ok(points) if points.iter().any(|(_, x)| x.is_finite()) => {}
                Ok(points) => failures.push(format!(
                    "[{}] (namespace {namespace:?}) no data: {expr}\n  -> {points:?}",
                    t.panel
                )),
                Err(e) => failures.push(format!(
                    "[{}] (namespace {namespace:?}) failed: {expr}\n  -> {e}",
                    t.panel
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {evaluated} dashboard queries show no data:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(evaluated, 1 + 2 * (2 + targets.len()));

    // The memory panel shows the alarm's headroom.
    let memory = targets
        .iter()
        .find(|t| t.panel == "Memory available before publishers blocked")
        .expect("memory panel");
    let vars = [
        ("namespace".to_owned(), NAMESPACE.to_owned()),
        ("rabbitmq_cluster".to_owned(), cluster.clone()),
        ("endpoint".to_owned(), "aggregated".to_owned()),
    ];
    let shown = prom.query(&substitute(&memory.expr, &vars)).await.unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].0["rabbitmq_node"], node.as_str());
    let (_, s) = scrape(format!("http://{target}/metrics")).await;
    assert_eq!(
        shown[0].1,
        WATERMARK as f64 - value(&s, "warren_message_memory_bytes", None),
        "the panel shows the memory alarm's headroom"
    );
    drop((pub_conn, kept));
    drop(prom);
    b.handle.shutdown().await;
}

/// A scrape's text parses back (checked by `parse`), with identity_info untyped and the
/// histogram's buckets in rabbitmq_prometheus's `le` spelling, before any traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_broker_exports_identity_and_an_empty_histogram() {
    let b = Broker::start().await;
    let target = b.handle.prometheus_addr.expect("prometheus listener");
    let (text, s) = scrape(format!("http://{target}/metrics")).await;
    assert!(
        text.contains("# TYPE rabbitmq_identity_info untyped\n"),
        "{text}"
    );
    assert!(text.contains("# TYPE rabbitmq_message_size_bytes histogram\n"));
    let les: Vec<&str> = s
        .iter()
        .filter(|x| x.name == "rabbitmq_message_size_bytes_bucket")
        .map(|x| x.labels["le"].as_str())
        .collect();
    assert_eq!(
        les,
        ["100.0", "1000.0", "10000.0", "100000.0", "1e+06", "1e+07", "5e+07", "1e+08", "+Inf"]
    );
    assert_eq!(value(&s, "rabbitmq_message_size_bytes_count", None), 0.0);
    assert_eq!(value(&s, "rabbitmq_connections_opened_total", None), 0.0);
    assert_eq!(value(&s, "rabbitmq_global_publishers", None), 0.0);
    b.handle.shutdown().await;
}
