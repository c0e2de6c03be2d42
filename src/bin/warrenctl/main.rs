//! `warrenctl`: a rabbitmqctl-like command line for Warren, a client of its HTTP API only.
//!
//! Output is rabbitmqctl-shaped: an informational line ("Listing queues for vhost / ..."),
//! unless `--quiet`, then a header row and tab-separated rows; `--json` prints JSON instead.
//! Exit codes follow rabbitmqctl's (sysexits): 0 success, 64 usage, 65 bad input refused by
//! the broker, 69 broker unreachable, 70 unexpected broker error, 77 authentication refused,
//! 1 no such object.

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Manage a Warren broker over its HTTP management API.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "warrenctl: manage a Warren broker over its HTTP management API (rabbitmqctl-like)"
)]
struct Cli {
    /// Management API base URL.
    #[arg(
        long,
        env = "WARREN_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    #[arg(
        long,
        short = 'u',
        env = "WARREN_USERNAME",
        default_value = "guest",
        global = true
    )]
    username: String,
    #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", global = true)]
    password: String,
    /// Virtual host (rabbitmqctl's -p).
    #[arg(long, short = 'p', default_value = "/", global = true)]
    vhost: String,
    /// Print JSON instead of tab-separated text.
    #[arg(long, global = true)]
    json: bool,
    /// Leave out informational lines.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Leave out the header row of listings.
    #[arg(long, short = 's', global = true)]
    no_table_headers: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Verb {
    /// Node status: versions, uptime, object counts, memory.
    Status,
    /// Queues (default columns: name messages).
    ListQueues { columns: Vec<String> },
    /// Exchanges (default columns: name type).
    ListExchanges { columns: Vec<String> },
    /// Bindings (default: source_name source_kind destination_name destination_kind
    /// routing_key arguments).
    ListBindings { columns: Vec<String> },
    /// Connections (default columns: user peer_host peer_port state).
    ListConnections { columns: Vec<String> },
    /// Channels (default columns: name user consumer_count messages_unacknowledged).
    ListChannels { columns: Vec<String> },
    /// Consumers (default: queue_name channel_name consumer_tag ack_required prefetch_count
    /// active arguments).
    ListConsumers { columns: Vec<String> },
    /// Users (columns: user tags).
    ListUsers,
    /// Virtual hosts (default columns: name).
    ListVhosts { columns: Vec<String> },
    /// Permissions in the vhost (columns: user configure write read).
    ListPermissions,
    /// Remove every ready message from a queue.
    PurgeQueue { name: String },
    /// Delete a queue.
    DeleteQueue {
        name: String,
        #[arg(long = "if-empty")]
        if_empty: bool,
        #[arg(long = "if-unused")]
        if_unused: bool,
    },
    /// Close a connection (by its name as list_connections shows it).
    CloseConnection {
        name: String,
        #[arg(default_value = "Closed via warrenctl")]
        explanation: String,
    },
    /// Create a virtual host.
    AddVhost {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a virtual host and everything in it.
    DeleteVhost { name: String },
    /// Create a user (no tags; see set_user_tags).
    AddUser {
        name: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
    },
    /// Delete a user and its permissions.
    DeleteUser { name: String },
    /// Set a user's password.
    ChangePassword {
        name: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
    },
    /// Replace a user's tags (administrator, management, monitoring, policymaker).
    SetUserTags { name: String, tags: Vec<String> },
    /// Set a user's configure/write/read patterns in the vhost.
    SetPermissions {
        user: String,
        configure: String,
        write: String,
        read: String,
    },
    /// Remove a user's permissions in the vhost.
    ClearPermissions { user: String },
    /// Write all definitions as JSON to a file ("-": standard output).
    ExportDefinitions { path: String },
    /// Import definitions from a JSON file ("-": standard input).
    ImportDefinitions { path: String },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 70,
            message: format!("{e:#}"),
        }
    }
}

type Res<T> = Result<T, Failure>;

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    fn new(cli: &Cli) -> Self {
        use base64::Engine;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", cli.username, cli.password));
        Client {
            agent,
            base: cli.url.trim_end_matches('/').to_owned(),
            auth: format!("Basic {auth}"),
        }
    }

    /// One request; `what` names the object for a 404 ("queue 'q' in vhost '/'").
    fn call(&self, method: &str, path: &str, body: Option<&Value>, what: &str) -> Res<Value> {
        self.call_with(method, path, body, what, None)
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        what: &str,
        reason: Option<&str>,
    ) -> Res<Value> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| Failure {
            code: 69,
            message: format!("cannot reach Warren at {}: {e}", self.base),
        };
        let r = match method {
            "GET" => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .call(),
            "DELETE" => {
                let mut rq = self.agent.delete(&url).header("Authorization", &self.auth);
                if let Some(x) = reason {
                    rq = rq.header("X-Reason", x);
                }
                rq.call()
            }
            m => {
                let text = body.map(Value::to_string).unwrap_or_else(|| "{}".into());
                let rq = if m == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                rq.header("Authorization", &self.auth)
                    .header("Content-Type", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut resp = r.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reason = parsed
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or(text.trim())
            .to_owned();
        match status {
            200..=299 => Ok(parsed),
            401 => Err(Failure {
                code: 77,
                message: format!("access refused for user '{}': {reason}", self.user()),
            }),
            404 => Err(Failure {
                code: 1,
                message: format!("{what} not found"),
            }),
            400 => Err(Failure {
                code: 65,
                message: reason,
            }),
            s => Err(Failure {
                code: 70,
                message: format!("broker answered {s}: {reason}"),
            }),
        }
    }

    fn user(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim_start_matches("Basic "))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, _)| u.to_owned()))
            .unwrap_or_default()
    }
}

/// rabbitmqctl's column names that differ from the API's JSON paths.
fn column_path<'a>(kind: &str, column: &'a str) -> &'a str {
    match (kind, column) {
        ("bindings", "source_name") => "source",
        ("bindings", "destination_name") => "destination",
        ("bindings", "destination_kind") => "destination_type",
        ("consumers", "queue_name") => "queue.name",
        ("consumers", "channel_name" | "channel_pid") => "channel_details.name",
        ("consumers", "connection_name") => "channel_details.connection_name",
        ("users", "user") => "name",
        (_, "pid") => "name",
        _ => column,
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            format!(
                "[{}]",
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Some(Value::Object(o)) if o.is_empty() => "[]".into(),
        Some(other) => other.to_string(),
    }
}

struct Out<'a> {
    cli: &'a Cli,
}

impl Out<'_> {
    fn info(&self, line: &str) {
        if !self.cli.quiet && !self.cli.json {
            println!("{line}");
        }
    }

    /// Print items with the chosen columns.
    fn table(&self, kind: &str, items: &[Value], columns: &[String], defaults: &[&str]) {
        let columns: Vec<String> = if columns.is_empty() {
            defaults.iter().map(|s| s.to_string()).collect()
        } else {
            columns
                .iter()
                .flat_map(|c| c.split(','))
                .map(str::to_owned)
                .collect()
        };
        let synth = |item: &Value, c: &str| -> Option<Value> {
            match (kind, c) {
                ("bindings", "source_kind") => Some(json!("exchange")),
                _ => lookup(item, column_path(kind, c)).cloned(),
            }
        };
        if self.cli.json {
            let rows: Vec<Value> = items
                .iter()
                .map(|i| {
                    let mut m = serde_json::Map::new();
                    for c in &columns {
                        m.insert(c.clone(), synth(i, c).unwrap_or(Value::Null));
                    }
                    Value::Object(m)
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
            return;
        }
        let stdout = std::io::stdout();
        let mut w = stdout.lock();
        if !self.cli.no_table_headers {
            let _ = writeln!(w, "{}", columns.join("\t"));
        }
        for i in items {
            let row: Vec<String> = columns.iter().map(|c| cell(synth(i, c).as_ref())).collect();
            let _ = writeln!(w, "{}", row.join("\t"));
        }
    }

    fn done(&self, v: &Value) {
        if self.cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
    }
}

fn list(c: &Client, path: &str, what: &str) -> Res<Vec<Value>> {
    match c.call("GET", path, None, what)? {
        Value::Array(a) => Ok(a),
        other => Err(anyhow!("unexpected answer: {other}").into()),
    }
}

fn run(cli: &Cli) -> Res<()> {
    let c = Client::new(cli);
    let out = Out { cli };
    let v = &cli.vhost;
    let vh = seg(v);
    let in_vhost = format!("vhost '{v}'");
    match &cli.verb {
        Verb::Status => {
            let o = c.call("GET", "/api/overview", None, "overview")?;
            let nodes = list(&c, "/api/nodes", "nodes")?;
            if cli.json {
                out.done(&json!({"overview": o, "nodes": nodes}));
                return Ok(());
            }
            let node = nodes.first().cloned().unwrap_or(Value::Null);
            out.info(&format!("Status of node {} ...", cell(o.get("node"))));
            println!(
                "Product: {} {}",
                cell(o.get("product_name")),
                cell(o.get("product_version"))
            );
            println!("Uptime (ms): {}", cell(node.get("uptime")));
            let t = o.get("object_totals").cloned().unwrap_or(Value::Null);
            for k in [
                "connections",
                "channels",
                "queues",
                "exchanges",
                "consumers",
            ] {
                println!("{k}: {}", cell(t.get(k)));
            }
            let q = o.get("queue_totals").cloned().unwrap_or(Value::Null);
            println!("messages: {}", cell(q.get("messages")));
            println!("messages_ready: {}", cell(q.get("messages_ready")));
            println!(
                "messages_unacknowledged: {}",
                cell(q.get("messages_unacknowledged"))
            );
            println!("memory used: {}", cell(node.get("mem_used")));
            println!("memory limit: {}", cell(node.get("mem_limit")));
            println!("memory alarm: {}", cell(node.get("mem_alarm")));
        }
        Verb::ListQueues { columns } => {
            let items = list(&c, &format!("/api/queues/{vh}"), &in_vhost)?;
            out.info(&format!("Listing queues for vhost {v} ..."));
            out.table("queues", &items, columns, &["name", "messages"]);
        }
        Verb::ListExchanges { columns } => {
            let items = list(&c, &format!("/api/exchanges/{vh}"), &in_vhost)?;
            out.info(&format!("Listing exchanges for vhost {v} ..."));
            out.table("exchanges", &items, columns, &["name", "type"]);
        }
        Verb::ListBindings { columns } => {
            let items = list(&c, &format!("/api/bindings/{vh}"), &in_vhost)?;
            out.info(&format!("Listing bindings for vhost {v}..."));
            out.table(
                "bindings",
                &items,
                columns,
                &[
                    "source_name",
                    "source_kind",
                    "destination_name",
                    "destination_kind",
                    "routing_key",
                    "arguments",
                ],
            );
        }
        Verb::ListConnections { columns } => {
            let items = list(&c, "/api/connections", "connections")?;
            out.info("Listing connections ...");
            out.table(
                "connections",
                &items,
                columns,
                &["user", "peer_host", "peer_port", "state"],
            );
        }
        Verb::ListChannels { columns } => {
            let items = list(&c, "/api/channels", "channels")?;
            out.info("Listing channels ...");
            out.table(
                "channels",
                &items,
                columns,
                &["name", "user", "consumer_count", "messages_unacknowledged"],
            );
        }
        Verb::ListConsumers { columns } => {
            let items = list(&c, &format!("/api/consumers/{vh}"), &in_vhost)?;
            out.info(&format!("Listing consumers in vhost {v} ..."));
            out.table(
                "consumers",
                &items,
                columns,
                &[
                    "queue_name",
                    "channel_name",
                    "consumer_tag",
                    "ack_required",
                    "prefetch_count",
                    "active",
                    "arguments",
                ],
            );
        }
        Verb::ListUsers => {
            let items = list(&c, "/api/users", "users")?;
            out.info("Listing users ...");
            out.table("users", &items, &[], &["user", "tags"]);
        }
        Verb::ListVhosts { columns } => {
            let items = list(&c, "/api/vhosts", "vhosts")?;
            out.info("Listing vhosts ...");
            out.table("vhosts", &items, columns, &["name"]);
        }
        Verb::ListPermissions => {
            let items = list(&c, &format!("/api/vhosts/{vh}/permissions"), &in_vhost)?;
            out.info(&format!("Listing permissions for vhost \"{v}\" ..."));
            out.table(
                "permissions",
                &items,
                &[],
                &["user", "configure", "write", "read"],
            );
        }
        Verb::PurgeQueue { name } => {
            out.info(&format!("Purging queue '{name}' in vhost '{v}' ..."));
            c.call(
                "DELETE",
                &format!("/api/queues/{vh}/{}/contents", seg(name)),
                None,
                &format!("queue '{name}' in {in_vhost}"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::DeleteQueue {
            name,
            if_empty,
            if_unused,
        } => {
            out.info(&format!("Deleting queue '{name}' on vhost '{v}' ..."));
            let mut q = Vec::new();
            if *if_empty {
                q.push("if-empty=true");
            }
            if *if_unused {
                q.push("if-unused=true");
            }
            let query = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            c.call(
                "DELETE",
                &format!("/api/queues/{vh}/{}{query}", seg(name)),
                None,
                &format!("queue '{name}' in {in_vhost}"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::CloseConnection { name, explanation } => {
            out.info(&format!(
                "Closing connection {name}, reason: {explanation}..."
            ));
            c.call_with(
                "DELETE",
                &format!("/api/connections/{}", seg(name)),
                None,
                &format!("connection '{name}'"),
                Some(explanation),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::AddVhost { name, description } => {
            out.info(&format!("Adding vhost \"{name}\" ..."));
            c.call(
                "PUT",
                &format!("/api/vhosts/{}", seg(name)),
                Some(&json!({"description": description})),
                &format!("vhost '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::DeleteVhost { name } => {
            out.info(&format!("Deleting vhost \"{name}\" ..."));
            c.call(
                "DELETE",
                &format!("/api/vhosts/{}", seg(name)),
                None,
                &format!("vhost '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::AddUser {
            name,
            new_password: password,
        } => {
            out.info(&format!("Adding user \"{name}\" ..."));
            let path = format!("/api/users/{}", seg(name));
            if c.call("GET", &path, None, "user").is_ok() {
                return Err(Failure {
                    code: 65,
                    message: format!("user '{name}' already exists"),
                });
            }
            c.call(
                "PUT",
                &path,
                Some(&json!({"password": password, "tags": ""})),
                &format!("user '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::DeleteUser { name } => {
            out.info(&format!("Deleting user \"{name}\" ..."));
            c.call(
                "DELETE",
                &format!("/api/users/{}", seg(name)),
                None,
                &format!("user '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::ChangePassword {
            name,
            new_password: password,
        } => {
            out.info(&format!("Changing password for user \"{name}\" ..."));
            let path = format!("/api/users/{}", seg(name));
            c.call("GET", &path, None, &format!("user '{name}'"))?;
            c.call(
                "PUT",
                &path,
                Some(&json!({"password": password})),
                &format!("user '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::SetUserTags { name, tags } => {
            out.info(&format!(
                "Setting tags for user \"{name}\" to [{}] ...",
                tags.join(", ")
            ));
            let path = format!("/api/users/{}", seg(name));
            c.call("GET", &path, None, &format!("user '{name}'"))?;
            c.call(
                "PUT",
                &path,
                Some(&json!({"tags": tags})),
                &format!("user '{name}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::SetPermissions {
            user,
            configure,
            write,
            read,
        } => {
            out.info(&format!(
                "Setting permissions for user \"{user}\" in vhost \"{v}\" ..."
            ));
            c.call(
                "PUT",
                &format!("/api/permissions/{vh}/{}", seg(user)),
                Some(&json!({"configure": configure, "write": write, "read": read})),
                &format!("user '{user}' or {in_vhost}"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::ClearPermissions { user } => {
            out.info(&format!(
                "Clearing permissions for user \"{user}\" in vhost \"{v}\" ..."
            ));
            c.call(
                "DELETE",
                &format!("/api/permissions/{vh}/{}", seg(user)),
                None,
                &format!("permissions of user '{user}' in {in_vhost}"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::ExportDefinitions { path } => {
            let d = c.call("GET", "/api/definitions", None, "definitions")?;
            let text = serde_json::to_string_pretty(&d).context("encoding definitions")?;
            if path == "-" {
                println!("{text}");
            } else {
                std::fs::write(path, text + "\n")
                    .with_context(|| format!("cannot write {path}"))
                    .map_err(|e| Failure {
                        code: 73,
                        message: format!("{e:#}"),
                    })?;
                out.info(&format!("Exported definitions for vhosts to \"{path}\""));
            }
        }
        Verb::ImportDefinitions { path } => {
            let mut text = String::new();
            let r = if path == "-" {
                std::io::stdin().read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            r.map_err(|e| Failure {
                code: 66,
                message: format!("cannot read {path}: {e}"),
            })?;
            let d: Value = serde_json::from_str(&text).map_err(|e| Failure {
                code: 65,
                message: format!("{path} is not valid JSON: {e}"),
            })?;
            out.info(&format!(
                "Importing definitions in JSON from a file at \"{path}\" ..."
            ));
            c.call("POST", "/api/definitions", Some(&d), "definitions")?;
            out.info("Imported definitions.");
            out.done(&json!({"result": "ok"}));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { 64 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
