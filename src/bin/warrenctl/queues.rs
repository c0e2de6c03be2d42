//! Queue commands: purge_queue, delete_queue.

use crate::client::seg;
use crate::{Ctx, Res};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
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
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx {
        c,
        out,
        v,
        vh,
        in_vhost,
        ..
    } = ctx;
    match verb {
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
    }
    Ok(())
}
