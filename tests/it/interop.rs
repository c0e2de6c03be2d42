//! Real clients in other languages: tests/interop/run.sh drives the in-process broker with pika,
//! aio-pika, amqplib and a Celery worker plus client (installing them from PyPI and npm on first
//! use). The broker also listens for TLS: pika and amqplib connect over it with and without a
//! client certificate and log in with EXTERNAL.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_amqplib_and_celery() {
    let pki = crate::tls::Pki::new();
    let b = Broker::start_with(|c| pki.configure(c)).await;
    let (cert, key) = pki.ca.client("tlsuser");
    std::fs::write(pki.path("client.pem"), cert).unwrap();
    std::fs::write(pki.path("client.key"), key).unwrap();
    Api::of(&b)
        .put(
            "/api/users/tlsuser",
            serde_json::json!({"password": "x", "tags": ""}),
        )
        .await;
    Api::of(&b)
        .put(
            "/api/permissions/%2F/tlsuser",
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    let amqps = format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f",
        b.handle.amqps_addr.unwrap().port()
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/run.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(b.url())
        .env("AMQPS_URL", amqps)
        .env("TLS_CA", pki.path("ca.pem"))
        .env("TLS_CERT", pki.path("client.pem"))
        .env("TLS_KEY", pki.path("client.key"))
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
