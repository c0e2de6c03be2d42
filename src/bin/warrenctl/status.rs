//! `status`: the node's versions, uptime, object and message counts, and memory.

use crate::client::list;
use crate::output::cell;
use crate::{Ctx, Res};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Node status: versions, uptime, object counts, memory.
    Status,
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx { cli, c, out, .. } = ctx;
    match verb {
        Verb::Status => {
            let o = c.call("GET", "/api/overview", None, "overview")?;
            let nodes = list(c, "/api/nodes", "nodes")?;
            if cli.json {
                out.done(&json!({"overview": o, "nodes": nodes}));
                return Ok(());
            }
            // In a cluster every member is listed: this node is the one the overview names.
            let node = nodes
                .iter()
                .find(|n| n.get("name") == o.get("node"))
                .or(nodes.first())
                .cloned()
                .unwrap_or(Value::Null);
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
    }
    Ok(())
}
