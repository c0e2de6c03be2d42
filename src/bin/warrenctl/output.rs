//! Output: informational lines (unless `--quiet`), tables of rabbitmqctl's columns, tab
//! separated with a header row (unless `--no-table-headers`), or JSON with `--json`.

use crate::Cli;
use serde_json::{json, Value};
use std::io::Write;

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

/// One table cell: strings bare, lists of strings as `[a, b]`, an empty table as `[]`, other
/// values as JSON.
pub fn cell(v: Option<&Value>) -> String {
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

/// Prints as the global options say.
pub struct Out<'a> {
    pub cli: &'a Cli,
}

impl Out<'_> {
    pub fn info(&self, line: &str) {
        if !self.cli.quiet && !self.cli.json {
            println!("{line}");
        }
    }

    /// Print items with the chosen columns.
    pub fn table(&self, kind: &str, items: &[Value], columns: &[String], defaults: &[&str]) {
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

    pub fn done(&self, v: &Value) {
        if self.cli.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        }
    }
}
