//! The real `warren` binary as a child process, for restarts and `kill -9`.

use lapin::{Channel, Connection, ConnectionProperties};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `warren` child process on ephemeral ports; its AMQP address read from its log.
pub struct Proc {
    child: Child,
    pub url: String,
    /// The management listener, `host:port`.
    pub http: String,
}

/// A test that fails half-way must not leave its broker running.
impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn spawn(dir: &Path) -> Result<Proc, String> {
    spawn_with(dir, &[])
}

/// `spawn` with a config file holding `toml` (written into `dir`), started again the same way by
/// calling it again.
pub fn spawn_configured(dir: &Path, toml: &str) -> Result<Proc, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let cfg = dir.join("test-config.toml");
    std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
    spawn_with(dir, &["--config", cfg.to_str().expect("utf-8 path")])
}

/// `spawn` with extra command-line arguments (e.g. `--config FILE`).
pub fn spawn_with(dir: &Path, extra: &[&str]) -> Result<Proc, String> {
    spawn_env(dir, extra, &[])
}

/// `spawn_with` and environment variables. The ones the binary reads are cleared first, so the
/// caller's environment cannot change what a test sees.
pub fn spawn_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Proc, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .env_remove("RABBITMQ_DEFAULT_USER")
        .env_remove("RABBITMQ_DEFAULT_PASS")
        .env_remove("WARREN_CONFIG")
        .envs(env.iter().copied())
        .args([
            "--amqp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Read the log on a thread: the address line, or everything until exit (an error), or give
    // up after 20 s so a broker that never starts cannot hang the test run.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(at) = line.find("amqp_addr=") {
                let field = |at: usize| {
                    line[at..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_owned()
                };
                let amqp = field(at + 10);
                let http = line
                    .find("http_addr=")
                    .map(|h| field(h + 10))
                    .unwrap_or_default();
                let _ = tx.send(Ok((amqp, http)));
                // Keep draining so the child never blocks on a full pipe (echoed with
                // WARREN_CHILD_LOG set, to debug a test).
                let echo = std::env::var_os("WARREN_CHILD_LOG").is_some();
                for line in lines.map_while(Result::ok) {
                    if echo {
                        eprintln!("[child] {line}");
                    }
                }
                return;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok((addr, http))) => Ok(Proc {
            child,
            url: format!("amqp://guest:guest@{addr}/%2f"),
            http,
        }),
        Ok(Err(log)) => {
            let _ = child.wait();
            Err(log)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("no start-up line within 20 s".into())
        }
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident memory in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let c = Connection::connect(&self.url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = c.create_channel().await.unwrap();
        (c, ch)
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Proc {
    /// Send the process a signal (`kill -HUP`, ...).
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn term(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "clean exit on SIGTERM"
        );
    }
}

/// Bytes in the files under `dir` (recursively).
pub fn du(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => du(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
