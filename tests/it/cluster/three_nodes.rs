//! The proof of issue 14, point 5: three clustered nodes, confirmed publishing to quorum queues
//! through all three, consumers acking on every node, while the driver kills, pauses and
//! restarts nodes and cuts links. Ignored until the binary takes the cluster flags and quorum
//! queues exist; then remove the `#[ignore]` of the first (CI, ~30-60 s).

use super::faults::{self, Plan, Timeline};
use super::harness::Cluster;
use super::workload::{Spec, Workload};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

/// Every fault kind at least once on 3 nodes; every confirmed message delivered, nothing
/// unexpected, no queue lost (a return fails the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster (issue 14)"]
async fn three_nodes_quorum_queues_survive_faults() {
    run_three(Plan::from_env(6)).await;
}

/// The long run: `WARREN_FAULT_CYCLES=100 cargo test --test it three_nodes_faults_long --
/// --ignored --nocapture` (`WARREN_FAULT_SEED` replays one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run (needs the cluster, issue 14)"]
async fn three_nodes_faults_long() {
    run_three(Plan::from_env(100)).await;
}

async fn run_three(plan: Plan) {
    let mut cluster = Cluster::start(3).await;
    let timeline = Timeline::new();
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        faults::fail(&e, &timeline, &cluster);
    }
    let mut spec = Spec::new(&["qq-a", "qq-b", "qq-c"]);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    spec.queue_args = args;
    spec.publishers = 3;
    spec.consumers_per_node = 1;
    let w = Workload::start(cluster.urls(), spec, timeline.clone()).await;
    if !w.wait_confirmed(300, Duration::from_secs(20)).await {
        faults::fail("the load did not start", &timeline, &cluster);
    }
    if let Err(e) = faults::run(&mut cluster, &plan, &timeline).await {
        faults::fail(&e, &timeline, &cluster);
    }
    let queues = w.check_queues().await;
    let report = w.finish(Duration::from_secs(60)).await;
    eprintln!("3-node faults, seed {}: {report}", plan.seed);
    let mut problems = report.problems();
    if let Err(e) = queues {
        problems.push(format!("a queue is gone: {e}"));
    }
    if report.confirmed < 200 {
        problems.push(format!("too little load: {} confirmed", report.confirmed));
    }
    if let Err(e) = faults::check_alive(&mut cluster, &timeline) {
        problems.push(e);
    }
    if !problems.is_empty() {
        faults::fail(
            &format!("{report}\n{}", problems.join("\n")),
            &timeline,
            &cluster,
        );
    }
}
