//! The list_* commands: one GET of a collection, printed as a table of rabbitmqctl's columns
//! (or JSON).

use crate::client::list;
use crate::{Ctx, Res};
use clap::Subcommand;

/// The variants are named after the commands (`ListQueues` is list_queues), hence the prefix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
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
        Verb::ListQueues { columns } => {
            let items = list(c, &format!("/api/queues/{vh}"), in_vhost)?;
            out.info(&format!("Listing queues for vhost {v} ..."));
            out.table("queues", &items, columns, &["name", "messages"]);
        }
        Verb::ListExchanges { columns } => {
            let items = list(c, &format!("/api/exchanges/{vh}"), in_vhost)?;
            out.info(&format!("Listing exchanges for vhost {v} ..."));
            out.table("exchanges", &items, columns, &["name", "type"]);
        }
        Verb::ListBindings { columns } => {
            let items = list(c, &format!("/api/bindings/{vh}"), in_vhost)?;
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
            let items = list(c, "/api/connections", "connections")?;
            out.info("Listing connections ...");
            out.table(
                "connections",
                &items,
                columns,
                &["user", "peer_host", "peer_port", "state"],
            );
        }
        Verb::ListChannels { columns } => {
            let items = list(c, "/api/channels", "channels")?;
            out.info("Listing channels ...");
            out.table(
                "channels",
                &items,
                columns,
                &["name", "user", "consumer_count", "messages_unacknowledged"],
            );
        }
        Verb::ListConsumers { columns } => {
            let items = list(c, &format!("/api/consumers/{vh}"), in_vhost)?;
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
            let items = list(c, "/api/users", "users")?;
            out.info("Listing users ...");
            out.table("users", &items, &[], &["user", "tags"]);
        }
        Verb::ListVhosts { columns } => {
            let items = list(c, "/api/vhosts", "vhosts")?;
            out.info("Listing vhosts ...");
            out.table("vhosts", &items, columns, &["name"]);
        }
        Verb::ListPermissions => {
            let items = list(c, &format!("/api/vhosts/{vh}/permissions"), in_vhost)?;
            out.info(&format!("Listing permissions for vhost \"{v}\" ..."));
            out.table(
                "permissions",
                &items,
                &[],
                &["user", "configure", "write", "read"],
            );
        }
    }
    Ok(())
}
