//! The browser dashboard (web/), end to end: tests/dashboard/run.sh drives it in Debian's headless
//! Chromium (playwright-core) against the in-process broker's management listener, with amqplib on
//! the side: log in, see a client's queue appear, publish and get a message through the page.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let b = Broker::start().await;
    let mgmt = format!("http://{}/", b.handle.http_addr);
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let overview = shot.with_file_name("dashboard-overview.png");
    let _ = std::fs::remove_file(&shot);
    let _ = std::fs::remove_file(&overview);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/run.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&mgmt)
        .arg(b.url())
        .arg(&shot)
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or("").to_owned();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed") && !last.starts_with("0 "),
        "dashboard test failed:\n{stdout}\n{stderr}"
    );
    for p in [&shot, &overview] {
        let png = std::fs::read(p).unwrap_or_else(|e| panic!("screenshot {}: {e}", p.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", p.display());
    }
    eprintln!(
        "dashboard: {last}; screenshots {} and {}",
        shot.display(),
        overview.display()
    );
}
