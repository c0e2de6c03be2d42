//! The dashboard's Nodes panel with a real cluster (issue 14: "the dashboard shows and changes
//! membership"), in headless Chromium: tests/dashboard/cluster.mjs, run through
//! tests/dashboard/run.sh against three clustered `warren` processes and a fourth that has
//! `[cluster]` but no reachable seed (so it waits, not in a cluster).

use super::harness::Cluster;
use crate::child;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Through the browser: the three members listed running with one metadata leader and this
/// node's figures; node 2 killed (kill -9) shows as not running, in red, with a Forget button;
/// cancelling its confirm dialog keeps it, confirming leaves two members (the API agrees); the
/// waiting node shows itself alone (its `/api/nodes` listed nothing before this change) with the
/// join form, which shows the API's error for an address nobody listens on and, given a
/// member's cluster address, makes it a member seen from both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_changes_membership() {
    let mut cluster = Cluster::start(3).await;
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        panic!("{e}\n{}", cluster.dump_logs());
    }
    let base = cluster.data_dir(0).parent().unwrap().to_owned();
    let secret = base.join("secret");
    // Port 1: nothing listens there, so this node waits for its seed and forms nothing.
    let joiner = child::spawn_with(
        &base.join("joiner"),
        &[
            "--node-name",
            "warren@joiner",
            "--cluster-listen",
            "127.0.0.1:0",
            "--cluster-seeds",
            "127.0.0.1:1",
            "--cluster-secret-file",
            secret.to_str().unwrap(),
            "--prometheus-listen",
            "",
        ],
    )
    .unwrap();
    let victim = cluster.name(2).to_owned();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-nodes");
    let names: Vec<_> = ["cluster", "cluster-down", "waiting", "joined"]
        .iter()
        .map(|n| shots.with_file_name(format!("dashboard-nodes-{n}.png")))
        .collect();
    for p in &names {
        let _ = std::fs::remove_file(p);
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/run.sh");
    let mut proc = tokio::process::Command::new("bash")
        .arg(script)
        .args(["--script", "cluster.mjs"])
        .arg(format!("http://{}/", cluster.http(0)))
        .arg(format!("http://{}/", joiner.http))
        .arg(cluster.cluster_addr(0).to_string())
        .arg(&victim)
        .arg(&shots)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bash runs");
    let mut stdin = proc.stdin.take().unwrap();
    let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let kill = format!("KILL {victim}");
    while let Some(line) = lines.next_line().await.unwrap() {
        if line == kill {
            cluster.kill9(2);
            stdin.write_all(b"killed\n").await.unwrap();
            stdin.flush().await.unwrap();
        }
        stdout.push_str(&line);
        stdout.push('\n');
    }
    drop(stdin);
    let out = proc.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("").to_owned();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "dashboard cluster test failed:\n{stdout}\n{stderr}\n{}",
        cluster.dump_logs()
    );
    assert!(
        !cluster.is_running(2),
        "the script never asked for the kill"
    );
    for p in &names {
        let png = std::fs::read(p).unwrap_or_else(|e| panic!("screenshot {}: {e}", p.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", p.display());
    }
    eprintln!(
        "dashboard nodes: {last}; screenshots {}-*.png",
        shots.display()
    );
    drop(joiner);
}
