//! The dashboard's Nodes panel with a real cluster (issue 14: "the dashboard shows and changes
//! membership"), in headless Chromium: tests/dashboard/cluster.mjs, run through
//! tests/dashboard/run.sh against three clustered `warren` processes and a fourth that has
//! `[cluster]` but no reachable seed (so it waits, not in a cluster).

use super::harness::Cluster;
use crate::child;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Through the browser: the three members listed running with one metadata leader and this
/// node's figures; node 1 or 2 killed (kill -9; the metadata leader if it is one of them) shows
/// as not running, in red, with a Forget button, and a running member leads;
/// cancelling its confirm dialog keeps it, confirming leaves two members (the API agrees); the
/// waiting node shows itself alone (its `/api/nodes` listed nothing) with the join form, which
/// shows the API's error for an address nobody listens on and, given a member's cluster
/// address, makes it a member seen from both sides, every member running (the joined node
/// could reach only the member it joined through while its seed never answered); restarted,
/// the joined node still reaches every member and takes a declare (it reached none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_and_changes_membership() {
    let mut cluster = Cluster::start(3).await;
    if let Err(e) = cluster.wait_nodes_running(Duration::from_secs(30)).await {
        panic!("{e}\n{}", cluster.dump_logs());
    }
    let base = cluster.data_dir(0).parent().unwrap().to_owned();
    let secret = base.join("secret");
    let secret = secret.to_str().unwrap();
    // Port 1: nothing listens there, so this node waits for its seed and forms nothing. Its
    // cluster port is fixed up front (bound, read, released) so a restart keeps its address.
    let link = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let args = [
        "--node-name",
        "warren@joiner",
        "--cluster-listen",
        &link,
        "--cluster-seeds",
        "127.0.0.1:1",
        "--cluster-secret-file",
        secret,
        "--prometheus-listen",
        "",
    ];
    let joiner = child::spawn_with(&base.join("joiner"), &args).unwrap();
    // The script kills whichever of nodes 1 and 2 leads the metadata group (else node 1).
    let victims = [cluster.name(1).to_owned(), cluster.name(2).to_owned()];
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
        .arg(victims.join(","))
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
    let mut killed = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(i) = line
            .strip_prefix("KILL ")
            .and_then(|name| (1..3).find(|&i| cluster.name(i) == name))
        {
            cluster.kill9(i);
            killed = Some(i);
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
    let killed = killed.expect("the script never asked for the kill");
    assert!(!cluster.is_running(killed));
    for p in &names {
        let png = std::fs::read(p).unwrap_or_else(|e| panic!("screenshot {}: {e}", p.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", p.display());
    }
    eprintln!(
        "{stdout}dashboard nodes: screenshots {}-*.png",
        shots.display()
    );

    // Restarted with the same dead seed, the joined node still reaches every member (it reached
    // none: its seed never answered) and a declare through it is committed.
    joiner.kill9();
    let joiner = child::spawn_with(&base.join("joiner"), &args).unwrap();
    let mut last = serde_json::Value::Null;
    let mut all_running = false;
    for _ in 0..100 {
        last = get(&joiner.http, "/api/warren/cluster").await;
        let members = last["members"].as_array().cloned().unwrap_or_default();
        if members.len() == 3 && members.iter().all(|m| m["running"] == true) {
            all_running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        all_running,
        "after a restart: {last}\n{}",
        cluster.dump_logs()
    );
    let (c, ch) = joiner.channel().await;
    ch.queue_declare(
        "through-the-joined-node".into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .expect("a declare through the restarted node");
    drop(c);
    let (status, _) = cluster
        .api(0, "GET", "/api/queues/%2F/through-the-joined-node", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "the declare reached the cluster");
    joiner.kill9();
}

/// GET `path` on the management listener at `http` (host:port) as guest: the JSON body.
async fn get(http: &str, path: &str) -> serde_json::Value {
    let url = format!("http://{http}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut r = match agent
            .get(&url)
            .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .call()
        {
            Ok(r) => r,
            Err(_) => return serde_json::Value::Null,
        };
        serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(serde_json::Value::Null)
    })
    .await
    .unwrap()
}
