//! Real clients in other languages: tests/interop/run.sh drives the in-process broker with pika,
//! aio-pika, amqplib and a Celery worker plus client (installing them from PyPI and npm on first
//! use).

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_amqplib_and_celery() {
    let b = Broker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/run.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(b.url())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("").to_owned();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "interop suites failed:\n{stdout}\n{stderr}"
    );
    eprintln!("interop: {last}");
}
