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
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx { cli, c, out, .. } = ctx;
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
    }
    Ok(())
}
