//! Connection commands: close_connection.

use crate::client::seg;
use crate::{Ctx, Res};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Close a connection (by its name as list_connections shows it).
    CloseConnection {
        name: String,
        #[arg(default_value = "Closed via warrenctl")]
        explanation: String,
    },
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx { c, out, .. } = ctx;
    match verb {
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
    }
    Ok(())
}
