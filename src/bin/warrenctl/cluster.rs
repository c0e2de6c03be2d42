//! `cluster_status`, `join_cluster`, `forget_cluster_node`: the cluster's members and their
//! state, and membership changes (rabbitmqctl's commands of the same names).

use crate::client::seg;
use crate::output::cell;
use crate::{Ctx, Res};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// The cluster's members: which answer, which leads the metadata group.
    ClusterStatus,
    /// Make the node at --url join the cluster of the node at ADDRESS (its cluster link,
    /// HOST:PORT).
    JoinCluster { address: String },
    /// Remove the node named NODE from the cluster (ask any other member).
    ForgetClusterNode { node: String },
    /// A replica of quorum queue QUEUE (in the vhost of -p) on NODE (rabbitmq-queues
    /// add_member).
    AddMember { queue: String, node: String },
    /// Remove quorum queue QUEUE's replica on NODE (rabbitmq-queues delete_member).
    DeleteMember { queue: String, node: String },
    /// A replica on NODE for every quorum queue without one; `even`: only queues with an even
    /// number of members (rabbitmq-queues grow).
    Grow { node: String, strategy: String },
    /// Remove every quorum queue's replica on NODE (rabbitmq-queues shrink).
    Shrink { node: String },
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx {
        cli, c, out, vh, ..
    } = ctx;
    match verb {
        Verb::ClusterStatus => {
            let s = c.call("GET", "/api/warren/cluster", None, "cluster")?;
            if cli.json {
                out.done(&s);
                return Ok(());
            }
            out.info(&format!(
                "Cluster status of node {} ...",
                cell(s.get("node_name"))
            ));
            println!("Cluster id: {}", cell(s.get("cluster_id")));
            println!("Metadata leader: {}", cell(s.get("leader")));
            let members = s
                .get("members")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let names = |pick: &dyn Fn(&Value) -> bool| -> Vec<String> {
                members
                    .iter()
                    .filter(|m| pick(m))
                    .map(|m| cell(m.get("name")))
                    .collect()
            };
            println!("\nDisk Nodes\n");
            for n in names(&|_| true) {
                println!("{n}");
            }
            println!("\nRunning Nodes\n");
            for n in names(&|m| m.get("running") == Some(&json!(true))) {
                println!("{n}");
            }
            let down = names(&|m| m.get("running") != Some(&json!(true)));
            if !down.is_empty() {
                println!("\nUnreachable Nodes\n");
                for n in down {
                    println!("{n}");
                }
            }
        }
        Verb::JoinCluster { address } => {
            out.info(&format!("Clustering node with {address} ..."));
            c.call(
                "POST",
                "/api/warren/cluster/join",
                Some(&json!({"node": address})),
                "cluster",
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::ForgetClusterNode { node } => {
            out.info(&format!("Removing node {node} from the cluster"));
            c.call(
                "DELETE",
                &format!("/api/warren/cluster/nodes/{}", seg(node)),
                None,
                &format!("node '{node}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::AddMember { queue, node } => {
            out.info(&format!(
                "Adding a replica for queue {queue} on node {node}..."
            ));
            c.call(
                "POST",
                &format!("/api/warren/queues/{vh}/{}/members", seg(queue)),
                Some(&json!({ "node": node })),
                &format!("queue '{queue}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::DeleteMember { queue, node } => {
            out.info(&format!(
                "Removing a replica of queue {queue} on node {node}..."
            ));
            c.call(
                "DELETE",
                &format!(
                    "/api/warren/queues/{vh}/{}/members/{}",
                    seg(queue),
                    seg(node)
                ),
                None,
                &format!("queue '{queue}'"),
            )?;
            out.done(&json!({"result": "ok"}));
        }
        Verb::Grow { node, strategy } => {
            out.info(&format!("Growing {strategy} quorum queues on {node}..."));
            let rows = c.call(
                "POST",
                "/api/warren/quorum/grow",
                Some(&json!({ "node": node, "strategy": strategy })),
                "grow",
            )?;
            changed(ctx, &rows);
        }
        Verb::Shrink { node } => {
            out.info(&format!("Shrinking quorum queues on {node}..."));
            let rows = c.call(
                "POST",
                "/api/warren/quorum/shrink",
                Some(&json!({ "node": node })),
                "shrink",
            )?;
            changed(ctx, &rows);
        }
    }
    Ok(())
}

/// The queues a grow or shrink changed: vhost, name, new size, result.
fn changed(ctx: &Ctx, rows: &Value) {
    let items = rows.as_array().cloned().unwrap_or_default();
    ctx.out
        .table("quorum", &items, &[], &["vhost", "name", "size", "result"]);
}
