//! Three clustered nodes. First the harness against the real cluster (the nodes form through the
//! proxies, a declare is seen everywhere, a killed node comes back). Then the proof of issue 14,
//! point 5: confirmed publishing to quorum queues through all three, consumers acking on every
//! node, while the driver kills, pauses and restarts nodes and cuts links (CI, ~30 s; the long
//! run of 100 cycles is ignored, run by hand).

use super::faults::{self, Plan, Timeline};
use super::harness::Cluster;
use super::workload::{Spec, Workload};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

/// The harness with the real cluster: three nodes whose only way to each other is the proxies
/// form one cluster (every node's /api/nodes lists all three running, and every node's traffic
/// went through the proxies); a queue declared on node 0 is there on nodes 1 and 2; node 2 killed and
/// restarted rejoins and still sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_through_the_proxies() {
    let mut cluster = Cluster::start(3).await;
    let timeline = Timeline::new();
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        faults::fail(&e, &timeline, &cluster);
    }
    // Every node talked to a peer through the proxies, one way or the other (a follower may
    // only ever be dialled).
    for i in 0..3 {
        let bytes: u64 = (0..3)
            .filter(|&j| j != i)
            .map(|j| cluster.link(i, j).stats().bytes_up + cluster.link(j, i).stats().bytes_up)
            .sum();
        if bytes == 0 {
            let e = format!("{} exchanged nothing through the proxies", cluster.name(i));
            faults::fail(&e, &timeline, &cluster);
        }
    }
    let spec = Spec::new(&["formed"]);
    let w = Workload::new(vec![cluster.url(0)], spec.clone(), timeline.clone());
    w.declare().await.unwrap();
    let everywhere = Workload::new(cluster.urls(), spec, timeline.clone());
    if let Err(e) = everywhere.check_queues().await {
        faults::fail(&e, &timeline, &cluster);
    }
    cluster.kill9(2);
    cluster.restart(2).await.unwrap();
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        faults::fail(&e, &timeline, &cluster);
    }
    if let Err(e) = everywhere.check_queues().await {
        faults::fail(&e, &timeline, &cluster);
    }
}

/// Every inter-node connection runs through a proxy: no node holds a connection to another
/// node's cluster port that the test process (where the proxies live) does not own. Regression:
/// nodes dialled peers at their advertised cluster addresses when a seed's first dial failed
/// before the seed was known to be that peer, so cuts could not cut those links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_run_only_through_the_proxies() {
    let cluster = Cluster::start(3).await;
    let timeline = Timeline::new();
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        faults::fail(&e, &timeline, &cluster);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let direct = cluster.direct_links();
    if !direct.is_empty() {
        faults::fail(
            &format!("links around the proxies: {direct:?}"),
            &timeline,
            &cluster,
        );
    }
}

/// A node cut off from the other two (silently) does not stop the majority: a queue declared on
/// node 0 meanwhile is not seen on the isolated node 2, and is there once the partition heals.
/// (Failed now and then while links went around the proxies: see
/// `links_run_only_through_the_proxies`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_node_catches_up_after_heal() {
    let cluster = Cluster::start(3).await;
    let timeline = Timeline::new();
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        faults::fail(&e, &timeline, &cluster);
    }
    cluster.isolate(2);
    timeline.log("isolated warren@n2");
    let during = Workload::new(
        vec![cluster.url(0), cluster.url(1)],
        Spec::new(&["declared-during-partition"]),
        timeline.clone(),
    );
    let declared = tokio::time::timeout(Duration::from_secs(20), during.declare()).await;
    if !matches!(declared, Ok(Ok(()))) {
        faults::fail(
            &format!("the majority could not declare: {declared:?}"),
            &timeline,
            &cluster,
        );
    }
    // The cut is real: the isolated node does not see the new queue.
    let isolated = Workload::new(
        vec![cluster.url(2)],
        Spec::new(&["declared-during-partition"]),
        timeline.clone(),
    );
    let seen = tokio::time::timeout(Duration::from_secs(3), isolated.check_queues()).await;
    timeline.log(format!("lookup on the isolated node: {seen:?}"));
    if matches!(seen, Ok(Ok(()))) {
        faults::fail("the isolated node saw the queue", &timeline, &cluster);
    }
    cluster.heal();
    timeline.log("healed");
    let everywhere = Workload::new(
        cluster.urls(),
        Spec::new(&["declared-during-partition"]),
        timeline.clone(),
    );
    let mut last = Err(String::new());
    for _ in 0..50 {
        last = everywhere.check_queues().await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Err(e) = last {
        faults::fail(
            &format!("not caught up 10 s after the heal: {e}"),
            &timeline,
            &cluster,
        );
    }
}

/// Every fault kind at least once on 3 nodes; every confirmed message delivered, nothing
/// unexpected, no queue lost (a return fails the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_quorum_queues_survive_faults() {
    run_three(Plan::from_env(6)).await;
}

/// The long run: `WARREN_FAULT_CYCLES=100 cargo test --test it three_nodes_faults_long --
/// --ignored --nocapture` (`WARREN_FAULT_SEED` replays one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 100 fault cycles"]
async fn three_nodes_faults_long() {
    run_three(Plan::from_env(100)).await;
}

async fn run_three(plan: Plan) {
    // Small Raft log segments and frequent snapshots: the queues' logs are purged, and purged
    // segment files reused, all through the faults.
    let mut opts = super::harness::Options::new(3);
    opts.extra_toml = "quorum_snapshot_every = 100\nquorum_segment_bytes = 65536\n".into();
    let mut cluster = Cluster::start_with(opts).await;
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
