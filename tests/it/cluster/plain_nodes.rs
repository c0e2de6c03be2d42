//! The fault driver and the clients against today's binary (nodes without cluster flags): kill -9
//! and SIGSTOP/SIGCONT cycles while confirmed publishers and acking consumers run against a
//! durable classic queue with persistent messages. Every confirmed id must come back.

use super::faults::{self, Kind, Plan, Timeline};
use super::harness::{Cluster, Options};
use super::workload::{Spec, Workload};
use std::time::Duration;

/// Faults on a single durable node: every confirmed persistent message is delivered after
/// kill -9 / restart and pause / continue cycles, nothing unpublished or damaged shows up, and
/// the clients really did reconnect. `WARREN_FAULT_SEED` replays a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_kill_and_pause_lose_nothing() {
    run_single(Plan {
        kinds: vec![Kind::Kill, Kind::Pause],
        hold: Duration::from_millis(500)..Duration::from_millis(1500),
        settle: Duration::from_millis(800)..Duration::from_millis(1500),
        ..Plan::from_env(4)
    })
    .await;
}

/// The long run of the same, 100 cycles by default (`WARREN_FAULT_CYCLES`, `WARREN_FAULT_SEED`):
/// `cargo test --test it single_node_faults_long -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run (minutes); see the doc comment"]
async fn single_node_faults_long() {
    run_single(Plan {
        kinds: vec![Kind::Kill, Kind::Pause],
        hold: Duration::from_millis(300)..Duration::from_millis(2000),
        settle: Duration::from_millis(300)..Duration::from_millis(1500),
        ..Plan::from_env(100)
    })
    .await;
}

async fn run_single(plan: Plan) {
    let mut cluster = Cluster::single().await;
    let timeline = Timeline::new();
    let mut spec = Spec::new(&["faults-single"]);
    spec.consumers_per_node = 2;
    let w = Workload::start(cluster.urls(), spec, timeline.clone()).await;
    if !w.wait_confirmed(300, Duration::from_secs(20)).await {
        faults::fail("the load did not start", &timeline, &cluster);
    }
    if let Err(e) = faults::run(&mut cluster, &plan, &timeline).await {
        faults::fail(&e, &timeline, &cluster);
    }
    let queues = w.check_queues().await;
    let report = w.finish(Duration::from_secs(20)).await;
    eprintln!("single-node faults, seed {}: {report}", plan.seed);
    let mut problems = report.problems();
    if let Err(e) = queues {
        problems.push(format!("a queue is gone: {e}"));
    }
    if report.confirmed < 200 {
        problems.push(format!("too little load: {} confirmed", report.confirmed));
    }
    if report.nacked > 0 {
        problems.push(format!(
            "{} nacks from a healthy durable queue",
            report.nacked
        ));
    }
    let kills = timeline.count("kill -9");
    if kills > 0 && report.publisher_connects <= 3 {
        problems.push("the publishers never reconnected after a kill".into());
    }
    if !problems.is_empty() {
        faults::fail(
            &format!("{report}\n{}", problems.join("\n")),
            &timeline,
            &cluster,
        );
    }
}

/// Publishers move to another node when theirs is killed, and what they had confirmed on the
/// killed node is still delivered once it is back (two independent nodes, consumers staying on
/// their own node's queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_move_to_another_node() {
    let mut cluster = Cluster::start_with(Options {
        clustered: false,
        ..Options::new(2)
    })
    .await;
    let timeline = Timeline::new();
    let mut spec = Spec::new(&["faults-move"]);
    spec.publishers = 2;
    spec.consumers_stay = true;
    let mut w = Workload::new(cluster.urls(), spec, timeline.clone());
    w.declare_on_every_node().await.unwrap();
    w.start_consumers();
    w.start_publishers();
    if !w.wait_confirmed(300, Duration::from_secs(20)).await {
        faults::fail("the load did not start", &timeline, &cluster);
    }
    let plan = Plan {
        kinds: vec![Kind::Kill],
        hold: Duration::from_millis(1000)..Duration::from_millis(1500),
        settle: Duration::from_millis(800)..Duration::from_millis(1200),
        ..Plan::from_env(2)
    };
    if let Err(e) = faults::run(&mut cluster, &plan, &timeline).await {
        faults::fail(&e, &timeline, &cluster);
    }
    let queues = w.check_queues().await;
    let report = w.finish(Duration::from_secs(20)).await;
    eprintln!("two plain nodes, seed {}: {report}", plan.seed);
    let moved = timeline.count("publisher 0 connected to node 1")
        + timeline.count("publisher 1 connected to node 0");
    let mut problems = report.problems();
    if let Err(e) = queues {
        problems.push(format!("a queue is gone: {e}"));
    }
    if moved == 0 {
        problems.push("no publisher moved to the other node".into());
    }
    if report.confirmed < 200 {
        problems.push(format!("too little load: {} confirmed", report.confirmed));
    }
    if !problems.is_empty() {
        faults::fail(
            &format!("{report}\n{}", problems.join("\n")),
            &timeline,
            &cluster,
        );
    }
}

/// The checks can fail: confirmed *transient* messages in a durable queue are dropped by a
/// restart (as in RabbitMQ), and `verify` reports every one of them missing; `check_queues`
/// reports a queue that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_messages_a_restart_dropped() {
    let mut cluster = Cluster::single().await;
    let timeline = Timeline::new();
    let mut spec = Spec::new(&["faults-transient"]);
    spec.persistent = false;
    spec.publishers = 2;
    let mut w = Workload::new(cluster.urls(), spec, timeline.clone());
    w.declare().await.unwrap();
    w.start_publishers();
    w.wait_confirmed(300, Duration::from_secs(20)).await;
    w.stop_publishers().await;
    cluster.kill9(0);
    cluster.restart(0).await.unwrap();
    w.start_consumers();
    assert!(!w.drain(Duration::from_secs(2)).await, "nothing to drain");
    w.stop_consumers().await;
    let r = w.report();
    assert!(r.confirmed >= 300, "{r}");
    assert_eq!(r.missing.len(), r.confirmed, "{r}");
    assert_eq!(r.delivered, 0, "{r}");
    assert_eq!(r.problems().len(), 1, "{:?}", r.problems());
    // And the queue check: the durable queue is there, a queue never declared is not.
    w.check_queues().await.unwrap();
    let none = Workload::new(cluster.urls(), Spec::new(&["never-declared"]), timeline);
    let e = none.check_queues().await.unwrap_err();
    assert!(e.contains("never-declared"), "{e}");
}
