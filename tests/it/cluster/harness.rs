//! `Cluster`: n real `warren` processes on loopback, each with its own data directory, node name
//! and ports, and one fault-injecting `Proxy` per directed inter-node link: node i reaches node j
//! only through `link(i, j)`, because node i's seeds are its outgoing proxies.
//!
//! Ports: AMQP and HTTP are ephemeral on the first start (read from the node's log, as
//! `child.rs` does) and reused by every restart, so client URLs stay valid; the cluster port is
//! chosen up front (bound, read, released) since the proxies must know it. Prometheus is off.
//!
//! Every process is killed when the `Cluster` is dropped, also on panic (a paused one is
//! continued first). The data directories are removed unless the test is panicking, in which case
//! their path is printed.

use super::proxy::{Cut, Proxy};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Log lines kept per node (the tail, for failure reports).
const LOG_LINES: usize = 400;

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    /// Start the nodes as a cluster (`--node-name`, `--cluster-listen`, `--cluster-seeds`, the
    /// shared secret). Off: n independent single nodes, as today's binary runs (the proxies exist
    /// all the same).
    pub clustered: bool,
    /// Also list a node's own cluster address among its seeds (directly, not through a proxy).
    pub seed_self: bool,
    /// More TOML for every node's config file (appended after the `[cluster]` table, so start
    /// it with a table header).
    pub extra_toml: String,
    /// More command-line arguments for every node.
    pub extra_args: Vec<String>,
    /// How long a node may take to print its start-up line.
    pub start_timeout: Duration,
}

impl Options {
    pub fn new(nodes: usize) -> Options {
        Options {
            nodes,
            clustered: true,
            seed_self: false,
            extra_toml: String::new(),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    cluster: SocketAddr,
    /// Known after the first start; reused by restarts.
    amqp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    proc: Option<Child>,
    /// Kills the node if this test process dies without its `Drop` (see `watchdog`).
    watchdog: Option<Child>,
    paused: bool,
    log: Arc<Mutex<VecDeque<String>>>,
    starts: u32,
}

pub struct Cluster {
    base: PathBuf,
    opts: Options,
    nodes: Vec<Node>,
    /// `links[i][j]`: the proxy node i dials to reach node j (None on the diagonal).
    links: Vec<Vec<Option<Proxy>>>,
}

impl Cluster {
    /// `n` clustered nodes, each seeded with its n−1 outgoing proxies.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(Options::new(n)).await
    }

    /// One node without cluster flags: today's single broker, under the same controls.
    pub async fn single() -> Cluster {
        Self::start_with(Options {
            clustered: false,
            ..Options::new(1)
        })
        .await
    }

    /// Start every node at once (a node may wait for its peers before it listens) and wait for
    /// each one's start-up line. Panics, with the logs, if one does not start.
    pub async fn start_with(opts: Options) -> Cluster {
        assert!(opts.nodes >= 1);
        let base = std::env::temp_dir().join(format!(
            "warren-cluster-{}-{}",
            std::process::id(),
            crate::harness::unique("c")
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let secret = base.join("secret");
        std::fs::write(&secret, format!("{:032x}\n", rand::random::<u128>())).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Cluster ports: held together so they differ, then released for the nodes (from
        // below the ephemeral range, see `reserve_port`).
        let cluster_addrs: Vec<SocketAddr> = {
            let held: Vec<_> = (0..opts.nodes)
                .map(|_| crate::harness::reserve_port())
                .collect();
            held.iter().map(|l| l.local_addr().unwrap()).collect()
        };
        let links: Vec<Vec<Option<Proxy>>> = (0..opts.nodes)
            .map(|i| {
                (0..opts.nodes)
                    .map(|j| (i != j).then(|| Proxy::start(cluster_addrs[j])))
                    .collect()
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, &cluster) in cluster_addrs.iter().enumerate() {
            let dir = base.join(format!("n{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = base.join(format!("n{i}.toml"));
            let mut toml = String::new();
            if opts.clustered {
                toml.push_str(&format!(
                    "[cluster]\nsecret_file = {:?}\n",
                    secret.to_str().expect("utf-8 temp path")
                ));
            }
            toml.push_str(&opts.extra_toml);
            std::fs::write(&config, toml).unwrap();
            nodes.push(Node {
                name: format!("warren@n{i}"),
                dir,
                config,
                cluster,
                amqp: None,
                http: None,
                proc: None,
                watchdog: None,
                paused: false,
                log: Arc::new(Mutex::new(VecDeque::new())),
                starts: 0,
            });
        }
        let mut c = Cluster {
            base,
            opts,
            nodes,
            links,
        };
        let waits: Vec<_> = (0..c.len()).map(|i| c.spawn(i)).collect();
        for (i, w) in waits.into_iter().enumerate() {
            if let Err(e) = c.await_start(i, w).await {
                // A start can fail under load (a port taken meanwhile despite `reserve_port`,
                // a slow start-up): started again, as `restart` does.
                if let Err(again) = c.restart(i).await {
                    panic!("{e}\nagain: {again}\n{}", c.dump_logs());
                }
            }
        }
        c
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `warren@n{i}`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The node's AMQP URL (guest, vhost `/`); the same across restarts.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp(i))
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    pub fn amqp(&self, i: usize) -> SocketAddr {
        self.nodes[i].amqp.expect("started once")
    }

    /// The management listener, `host:port`.
    pub fn http(&self, i: usize) -> String {
        self.nodes[i].http.expect("started once").to_string()
    }

    /// The node's own cluster listener (peers reach it through their proxies).
    pub fn cluster_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].cluster
    }

    /// What node i was given as `--cluster-seeds`.
    pub fn seeds(&self, i: usize) -> String {
        let mut s: Vec<String> = (0..self.len())
            .filter(|&j| j != i)
            .map(|j| self.link(i, j).addr().to_string())
            .collect();
        if self.opts.seed_self {
            s.push(self.nodes[i].cluster.to_string());
        }
        s.join(",")
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// The proxy node i dials to reach node j.
    pub fn link(&self, i: usize, j: usize) -> &Proxy {
        self.links[i][j]
            .as_ref()
            .expect("no link from a node to itself")
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.as_ref().map(|c| c.id())
    }

    /// Started and not killed by the harness (a paused node counts as running).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].proc.is_some()
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Nodes that exited on their own (a crash or a refusal to run): index and exit status.
    /// A fault test checks this after every cycle.
    pub fn crashed(&mut self) -> Vec<(usize, ExitStatus)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = n.proc.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    out.push((i, st));
                }
            }
        }
        out
    }

    /// SIGKILL, and reap. No-op on a node that is not running.
    pub fn kill9(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(mut c) = n.proc.take() {
            if n.paused {
                signal(c.id(), "-CONT");
                n.paused = false;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        n.end_watchdog();
    }

    /// SIGTERM and wait for the exit (up to 30 s, then SIGKILL). Whether it exited cleanly.
    pub async fn term(&mut self, i: usize) -> bool {
        self.cont(i);
        let Some(mut c) = self.nodes[i].proc.take() else {
            return false;
        };
        signal(c.id(), "-TERM");
        let mut clean = false;
        for _ in 0..300 {
            if let Ok(Some(st)) = c.try_wait() {
                clean = st.success();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        self.nodes[i].end_watchdog();
        clean
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn stop(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let (Some(c), false) = (&n.proc, n.paused) {
            signal(c.id(), "-STOP");
            n.paused = true;
        }
    }

    /// SIGCONT after `stop`.
    pub fn cont(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let (Some(c), true) = (&n.proc, n.paused) {
            signal(c.id(), "-CONT");
            n.paused = false;
        }
    }

    /// Start node i again (SIGKILL first if it still runs): same data directory, name, ports and
    /// flags. Retried twice if it exits at start (an ephemeral port taken meanwhile, say).
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill9(i);
        let mut last = String::new();
        for _ in 0..3 {
            let w = self.spawn(i);
            match self.await_start(i, w).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last)
    }

    /// SIGKILL node i and delete its data directory (a lost disk); `restart` then starts it
    /// empty under the same name and ports.
    pub fn wipe(&mut self, i: usize) {
        self.kill9(i);
        let dir = &self.nodes[i].dir;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
    }

    /// A management API call on node i as guest (5 s timeout, off the runtime): the status and
    /// the JSON body (Null if none). Err if the node does not answer.
    pub async fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), String> {
        let url = format!("http://{}{path}", self.http(i));
        let method = method.to_owned();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let b = ureq::http::Request::builder()
                .method(method.as_str())
                .uri(&url)
                .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q="); // guest:guest
            let r = match body {
                Some(v) => agent.run(
                    b.header("Content-Type", "application/json")
                        .body(v.to_string().into_bytes())
                        .unwrap(),
                ),
                None => agent.run(b.body(()).unwrap()),
            };
            let mut r = r.map_err(|e| format!("{method} {url}: {e}"))?;
            let text = r.body_mut().read_to_string().unwrap_or_default();
            Ok((
                r.status().as_u16(),
                serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            ))
        })
        .await
        .unwrap()
    }

    /// Wait until every running, unpaused node's `/api/nodes` lists all the cluster's node
    /// names with `"running": true` (RabbitMQ's field). Err with the last answers on timeout.
    pub async fn wait_nodes_running(&self, timeout: Duration) -> Result<(), String> {
        let names: Vec<&str> = (0..self.len()).map(|i| self.name(i)).collect();
        let mut last = String::new();
        let t = std::time::Instant::now();
        while t.elapsed() < timeout {
            let mut all = true;
            for i in (0..self.len()).filter(|&i| self.is_running(i) && !self.is_paused(i)) {
                let ok = match self.api(i, "GET", "/api/nodes", None).await {
                    Ok((200, v)) => {
                        let ok = names.iter().all(|n| {
                            v.as_array().is_some_and(|a| {
                                a.iter().any(|e| e["name"] == *n && e["running"] == true)
                            })
                        });
                        last = format!("{}: {v}", self.name(i));
                        ok
                    }
                    Ok((st, v)) => {
                        last = format!("{}: {st} {v}", self.name(i));
                        false
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                };
                all &= ok;
            }
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "nodes not all running after {timeout:?}; last answer: {last}"
        ))
    }

    /// Established connections to a node's cluster port that this test process does not own,
    /// i.e. that bypass the proxies (which live here): (node dialled, the connection's local
    /// address). Read from /proc/net/tcp and this process's socket inodes.
    pub fn direct_links(&self) -> Vec<(usize, String)> {
        let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter_map(|l| {
                        let l = l.to_string_lossy().into_owned();
                        Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let mut out = Vec::new();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
            let Some(rem) = port(f[2]) else { continue };
            for i in 0..self.len() {
                if self.nodes[i].cluster.port() == rem && !ours.contains(f[9]) {
                    out.push((i, format!("local port {}", port(f[1]).unwrap_or(0))));
                }
            }
        }
        out
    }

    /// Partition nodes i and j (both directions), silently.
    pub fn cut(&self, i: usize, j: usize) {
        self.cut_with(i, j, Cut::Blackhole);
    }

    /// Partition nodes i and j (both directions) in the given mode.
    pub fn cut_with(&self, i: usize, j: usize, how: Cut) {
        self.link(i, j).cut(how);
        self.link(j, i).cut(how);
    }

    /// Cut only the link i→j: calls i makes to j fail, calls j makes to i still work.
    pub fn cut_directed(&self, i: usize, j: usize, how: Cut) {
        self.link(i, j).cut(how);
    }

    /// Undo `cut(i, j)` (both directions).
    pub fn restore(&self, i: usize, j: usize) {
        self.link(i, j).restore();
        self.link(j, i).restore();
    }

    /// Cut every link to and from node i, silently.
    pub fn isolate(&self, i: usize) {
        self.isolate_with(i, Cut::Blackhole);
    }

    pub fn isolate_with(&self, i: usize, how: Cut) {
        for j in (0..self.len()).filter(|&j| j != i) {
            self.cut_with(i, j, how);
        }
    }

    /// Restore every link.
    pub fn heal(&self) {
        for p in self.links.iter().flatten().flatten() {
            p.restore();
        }
    }

    /// Latency on the links between i and j, each way (zero: none).
    pub fn delay(&self, i: usize, j: usize, d: Duration) {
        self.link(i, j).delay(d);
        self.link(j, i).delay(d);
    }

    /// The last lines node i logged (across its restarts).
    pub fn logs(&self, i: usize) -> String {
        let l = self.nodes[i].log.lock();
        l.iter().map(|s| format!("{s}\n")).collect()
    }

    /// Every node's log tail, headed by its name, for a failure report.
    pub fn dump_logs(&self) -> String {
        (0..self.len())
            .map(|i| format!("----- {} (log tail) -----\n{}", self.name(i), self.logs(i)))
            .collect()
    }

    fn args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let port = |a: Option<SocketAddr>| a.map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut a: Vec<String> = vec![
            "--amqp-listen".into(),
            port(n.amqp),
            "--http-listen".into(),
            port(n.http),
            "--prometheus-listen".into(),
            String::new(),
            "--data-dir".into(),
            n.dir.to_str().unwrap().into(),
            "--config".into(),
            n.config.to_str().unwrap().into(),
        ];
        if self.opts.clustered {
            a.extend([
                "--node-name".into(),
                n.name.clone(),
                "--cluster-listen".into(),
                n.cluster.to_string(),
            ]);
            let seeds = self.seeds(i);
            if !seeds.is_empty() {
                a.extend(["--cluster-seeds".into(), seeds]);
            }
        }
        a.extend(self.opts.extra_args.iter().cloned());
        a
    }

    /// Launch node i; the receiver gets its AMQP and HTTP addresses from the start-up line, or
    /// an error once its log ends without one.
    fn spawn(
        &mut self,
        i: usize,
    ) -> tokio::sync::oneshot::Receiver<Result<(SocketAddr, SocketAddr), String>> {
        let args = self.args(i);
        let n = &mut self.nodes[i];
        n.starts += 1;
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .env_remove("RABBITMQ_DEFAULT_USER")
            .env_remove("RABBITMQ_DEFAULT_PASS")
            .env_remove("WARREN_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("WARREN_CLUSTER_RUST_LOG").unwrap_or("info".into()),
            )
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn warren");
        let stderr = child.stderr.take().unwrap();
        n.end_watchdog();
        n.watchdog = watchdog(std::process::id(), child.id());
        n.proc = Some(child);
        n.paused = false;
        let log = n.log.clone();
        let tag = format!("[{} #{}]", n.name, n.starts);
        log.lock()
            .push_back(format!("{tag} started: warren {}", args.join(" ")));
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Read the log on a thread for the process's whole life (it must never block on a full
        // pipe): keep the tail, echo it with WARREN_CHILD_LOG set, report the start-up line.
        std::thread::spawn(move || {
            let echo = std::env::var_os("WARREN_CHILD_LOG").is_some();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{tag} {line}");
                }
                if let Some(at) = line.find("amqp_addr=") {
                    let field = |at: usize| -> Option<SocketAddr> {
                        line[at..].split_whitespace().next()?.parse().ok()
                    };
                    let found =
                        field(at + 10).zip(line.find("http_addr=").and_then(|h| field(h + 10)));
                    if let Some(addrs) = found {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(addrs));
                        }
                    }
                }
                let mut l = log.lock();
                if l.len() == LOG_LINES {
                    l.pop_front();
                }
                l.push_back(format!("{tag} {line}"));
            }
            log.lock().push_back(format!("{tag} (log ended)"));
            if let Some(tx) = tx {
                let _ = tx.send(Err(format!("{tag} exited without a start-up line")));
            }
        });
        rx
    }

    async fn await_start(
        &mut self,
        i: usize,
        rx: tokio::sync::oneshot::Receiver<Result<(SocketAddr, SocketAddr), String>>,
    ) -> Result<(), String> {
        let res = match tokio::time::timeout(self.opts.start_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("log reader gone".into()),
            Err(_) => Err(format!(
                "{} printed no start-up line within {:?}",
                self.name(i),
                self.opts.start_timeout
            )),
        };
        match res {
            Ok((amqp, http)) => {
                let n = &mut self.nodes[i];
                n.amqp = Some(amqp);
                n.http = Some(http);
                Ok(())
            }
            Err(e) => {
                self.kill9(i);
                // The reader thread appends the last lines as the pipe closes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(format!("{e}\n{}", self.logs(i)))
            }
        }
    }
}

impl Node {
    fn end_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A shell that SIGKILLs `target` (continuing it first) once `watched` is gone: a test process
/// killed outright (a CI timeout, say) runs no `Drop`, and its nodes must not outlive it.
fn watchdog(watched: u32, target: u32) -> Option<Child> {
    Command::new("sh")
        .args([
            "-c",
            "while kill -0 $0 2>/dev/null; do sleep 1; done; kill -CONT $1; kill -9 $1",
            &watched.to_string(),
            &target.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if std::thread::panicking() {
            eprintln!("cluster data kept for inspection: {}", self.base.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

/// `kill -SIG pid` (the crate forbids unsafe code, so no libc).
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    //! The harness against today's binary: independent nodes (no cluster flags yet).

    use super::*;
    use crate::cluster::proxy::Cut;
    use lapin::types::FieldTable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn connect(url: &str, within: Duration) -> Result<lapin::Connection, String> {
        match tokio::time::timeout(within, lapin::Connection::connect(url, Default::default()))
            .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    fn alive(pid: u32) -> bool {
        // A reaped process has no /proc entry; a zombie would still have one.
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Node controls on two plain nodes: kill -9 makes the URL refuse, restart brings the node
    /// back on the same URL with its durable queue (same data dir), SIGSTOP makes a handshake
    /// hang and SIGCONT lets it finish, and dropping the cluster leaves no process behind even
    /// with a node paused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_controls_on_plain_nodes() {
        let mut c = Cluster::start_with(Options {
            clustered: false,
            ..Options::new(2)
        })
        .await;
        assert_ne!(c.url(0), c.url(1));
        assert_ne!(c.data_dir(0), c.data_dir(1));
        let conn = connect(&c.url(0), Duration::from_secs(5)).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        crate::harness::declare_durable(&ch, "kept", FieldTable::default()).await;
        let url0 = c.url(0);
        let pid0 = c.pid(0).unwrap();
        c.kill9(0);
        assert!(!c.is_running(0) && !alive(pid0));
        assert!(
            connect(&url0, Duration::from_secs(5)).await.is_err(),
            "killed node refuses"
        );
        c.restart(0).await.unwrap();
        assert_eq!(c.url(0), url0, "same AMQP port after restart");
        assert_ne!(c.pid(0).unwrap(), pid0);
        let conn = connect(&url0, Duration::from_secs(5)).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        crate::harness::passive(&ch, "kept")
            .await
            .expect("durable queue kept");

        c.stop(1);
        assert!(c.is_paused(1));
        let url1 = c.url(1);
        let pending = tokio::spawn(async move { connect(&url1, Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !pending.is_finished(),
            "a paused node does not answer a handshake"
        );
        c.cont(1);
        pending
            .await
            .unwrap()
            .expect("handshake completes after SIGCONT");

        // The API helper, and wiping a node's disk.
        let (st, nodes) = c.api(1, "GET", "/api/nodes", None).await.unwrap();
        assert_eq!(st, 200, "{nodes}");
        assert_eq!(nodes[0]["running"], true, "{nodes}");
        let (st, _) = c.api(0, "GET", "/api/queues/%2f/kept", None).await.unwrap();
        assert_eq!(st, 200);
        c.wipe(0);
        assert!(
            c.api(0, "GET", "/api/overview", None).await.is_err(),
            "down"
        );
        c.restart(0).await.unwrap();
        let (st, _) = c.api(0, "GET", "/api/queues/%2f/kept", None).await.unwrap();
        assert_eq!(st, 404, "the wiped node starts empty");

        assert!(c.crashed().is_empty());
        let pids = [c.pid(0).unwrap(), c.pid(1).unwrap()];
        let base = c.base.clone();
        c.stop(1);
        drop(c);
        assert!(
            !pids.iter().any(|&p| alive(p)),
            "no process outlives the cluster"
        );
        assert!(!base.exists(), "data removed");
    }

    /// The watchdog kills its target, even a stopped one, within a couple of seconds of the
    /// watched process's death, and leaves it alone while the watched process lives.
    #[tokio::test]
    async fn watchdog_kills_orphans() {
        let sleeper = || Command::new("sleep").arg("60").spawn().unwrap();
        let (mut watched, mut target) = (sleeper(), sleeper());
        signal(target.id(), "-STOP");
        let mut w = watchdog(watched.id(), target.id()).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            target.try_wait().unwrap().is_none(),
            "alive while watched lives"
        );
        watched.kill().unwrap();
        watched.wait().unwrap();
        let mut gone = false;
        for _ in 0..40 {
            if target.try_wait().unwrap().is_some() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = target.kill();
        let _ = target.wait();
        let _ = w.wait();
        assert!(gone, "the watchdog killed its target");
    }

    /// A node that exits on its own is reported by `crashed`, and a node that cannot start makes
    /// `restart` fail with its log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashes_and_failed_starts_are_reported() {
        let mut c = Cluster::single().await;
        let pid = c.pid(0).unwrap();
        signal(pid, "-KILL"); // not through the harness: as if it crashed
        for _ in 0..100 {
            if !c.crashed().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.crashed().len(), 1);
        // A config file the binary refuses: every restart attempt fails, with the log.
        std::fs::write(&c.nodes[0].config, "this is not toml = = =").unwrap();
        let e = c.restart(0).await.unwrap_err();
        assert!(e.contains("warren@n0"), "{e}");
    }

    /// The wiring: node i's seeds are its outgoing proxies, link (i, j) leads to node j's
    /// cluster port, and cut / restore / isolate / heal act on the right proxies. Checked with a
    /// listener standing in for node 1's cluster port, since today's binary has none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_are_wired_and_cut_per_pair() {
        let c = Cluster::start_with(Options {
            clustered: false,
            ..Options::new(3)
        })
        .await;
        for i in 0..3 {
            let seeds = c.seeds(i);
            let seeds: Vec<&str> = seeds.split(',').collect();
            assert_eq!(seeds.len(), 2);
            for j in (0..3).filter(|&j| j != i) {
                assert_eq!(c.link(i, j).target(), c.cluster_addr(j));
                assert!(seeds.contains(&c.link(i, j).addr().to_string().as_str()));
            }
        }
        let l = tokio::net::TcpListener::bind(c.cluster_addr(1))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        async fn echoes(p: &Proxy) -> bool {
            let Ok(mut s) = tokio::net::TcpStream::connect(p.addr()).await else {
                return false;
            };
            let mut b = [0u8; 4];
            s.write_all(b"ping").await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut b)).await,
                    Ok(Ok(_))
                )
        }
        assert!(echoes(c.link(0, 1)).await && echoes(c.link(2, 1)).await);
        // direct_links: connections the test process owns (the proxies', these) do not count; a
        // connection from another process straight to the port does.
        let _held = tokio::net::TcpStream::connect(c.link(0, 1).addr())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(c.direct_links().is_empty(), "{:?}", c.direct_links());
        let port = c.cluster_addr(1).port().to_string();
        let mut nc = Command::new("python3")
            .args([
                "-c",
                &format!("import socket,time; s=socket.create_connection(('127.0.0.1',{port})); time.sleep(30)"),
            ])
            .spawn()
            .expect("python3");
        let mut found = false;
        for _ in 0..50 {
            if c.direct_links().iter().any(|(i, _)| *i == 1) {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = nc.kill();
        let _ = nc.wait();
        assert!(found, "a connection from another process is found");
        c.cut(0, 1);
        assert_eq!(
            c.link(1, 0).is_cut(),
            Some(Cut::Blackhole),
            "both directions"
        );
        assert!(!echoes(c.link(0, 1)).await);
        assert!(echoes(c.link(2, 1)).await, "other links untouched");
        c.restore(0, 1);
        assert!(echoes(c.link(0, 1)).await);
        c.isolate_with(1, Cut::Reset);
        assert!(!echoes(c.link(0, 1)).await && !echoes(c.link(2, 1)).await);
        assert_eq!(c.link(1, 2).is_cut(), Some(Cut::Reset));
        assert!(
            c.link(0, 2).is_cut().is_none(),
            "a link not touching node 1"
        );
        c.heal();
        assert!(echoes(c.link(0, 1)).await && echoes(c.link(2, 1)).await);
        assert!(c
            .links
            .iter()
            .flatten()
            .flatten()
            .all(|p| p.is_cut().is_none()));
    }
}
