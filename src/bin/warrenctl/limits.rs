//! Tenant limits and topic permissions, with rabbitmqctl's arguments: limits are given as one
//! JSON document (`set_vhost_limits '{"max-connections": 10}'`); `set_vhost_limits` replaces
//! the vhost's limits (those left out are cleared) and `set_user_limits` adds to the user's, as
//! rabbitmqctl does.

use crate::client::{list, seg};
use crate::{Ctx, Failure, Res};
use clap::Subcommand;
use serde_json::{json, Map, Value};

const VHOST_LIMITS: [&str; 2] = ["max-connections", "max-queues"];
const USER_LIMITS: [&str; 2] = ["max-connections", "max-channels"];

/// The variants are named after the commands, hence the shared prefixes.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Set the vhost's limits to a JSON document, e.g. '{"max-connections": 10, "max-queues":
    /// 100}' (-1: no limit, 0: none allowed); limits left out are cleared.
    SetVhostLimits { definition: String },
    /// Clear all of the vhost's limits.
    ClearVhostLimits,
    /// The vhost's limits, as JSON.
    ListVhostLimits,
    /// Add to a user's limits, given as a JSON document, e.g. '{"max-channels": 20}'.
    SetUserLimits { user: String, definition: String },
    /// Clear one of a user's limits (max-connections, max-channels), or `all`.
    ClearUserLimits { user: String, limit: String },
    /// A user's limits (default: the --username), as JSON.
    ListUserLimits {
        #[arg(long)]
        user: Option<String>,
    },
    /// Set a user's write and read patterns for routing keys on a topic exchange in the vhost.
    SetTopicPermissions {
        user: String,
        exchange: String,
        write: String,
        read: String,
    },
    /// Clear a user's topic permissions in the vhost (only the exchange's if given).
    ClearTopicPermissions {
        user: String,
        exchange: Option<String>,
    },
    /// Topic permissions in the vhost (columns: user exchange write read).
    ListTopicPermissions,
    /// A user's topic permissions (columns: vhost exchange write read).
    ListUserTopicPermissions { user: String },
}

/// A limits document: a JSON object.
fn definition(text: &str) -> Res<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Failure {
            code: 65,
            message: format!("limits must be a JSON object, not {other}"),
        }),
        Err(e) => Err(Failure {
            code: 65,
            message: format!("JSON decoding error: {e}"),
        }),
    }
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx {
        cli,
        c,
        out,
        v,
        vh,
        in_vhost,
        ..
    } = ctx;
    let ok = || out.done(&json!({"result": "ok"}));
    match verb {
        Verb::SetVhostLimits { definition: d } => {
            out.info(&format!(
                "Setting vhost limits to \"{d}\" for vhost \"{v}\" ..."
            ));
            let m = definition(d)?;
            for (name, value) in &m {
                c.call(
                    "PUT",
                    &format!("/api/vhost-limits/{vh}/{}", seg(name)),
                    Some(&json!({ "value": value })),
                    in_vhost,
                )?;
            }
            clear_vhost_limits(ctx, VHOST_LIMITS.iter().filter(|n| !m.contains_key(**n)))?;
            ok();
        }
        Verb::ClearVhostLimits => {
            out.info(&format!("Clearing vhost \"{v}\" limits ..."));
            clear_vhost_limits(ctx, VHOST_LIMITS.iter())?;
            ok();
        }
        Verb::ListVhostLimits => {
            let rows = list(c, &format!("/api/vhost-limits/{vh}"), in_vhost)?;
            out.info(&format!("Listing limits for vhost \"{v}\" ..."));
            let value = rows.first().map_or(json!({}), |r| r["value"].clone());
            println!("{value}");
        }
        Verb::SetUserLimits {
            user,
            definition: d,
        } => {
            out.info(&format!(
                "Setting user limits to \"{d}\" for user \"{user}\" ..."
            ));
            for (name, value) in &definition(d)? {
                c.call(
                    "PUT",
                    &format!("/api/user-limits/{}/{}", seg(user), seg(name)),
                    Some(&json!({ "value": value })),
                    &format!("user '{user}'"),
                )?;
            }
            ok();
        }
        Verb::ClearUserLimits { user, limit } => {
            let names: Vec<&str> = if limit == "all" {
                out.info(&format!("Clearing all limits for user \"{user}\" ..."));
                USER_LIMITS.to_vec()
            } else if USER_LIMITS.contains(&limit.as_str()) {
                out.info(&format!(
                    "Clearing \"{limit}\" limit for user \"{user}\" ..."
                ));
                vec![limit.as_str()]
            } else {
                return Err(Failure {
                    code: 64,
                    message: format!(
                        "unknown limit '{limit}': one of {}, or all",
                        USER_LIMITS.join(", ")
                    ),
                });
            };
            for name in names {
                c.call(
                    "DELETE",
                    &format!("/api/user-limits/{}/{name}", seg(user)),
                    None,
                    &format!("user '{user}'"),
                )?;
            }
            ok();
        }
        Verb::ListUserLimits { user } => {
            let user = user.as_deref().unwrap_or(&cli.username);
            let rows = list(
                c,
                &format!("/api/user-limits/{}", seg(user)),
                &format!("user '{user}'"),
            )?;
            out.info(&format!("Listing limits for user \"{user}\" ..."));
            let value = rows.first().map_or(json!({}), |r| r["value"].clone());
            println!("{value}");
        }
        Verb::SetTopicPermissions {
            user,
            exchange,
            write,
            read,
        } => {
            out.info(&format!(
                "Setting topic permissions on \"{exchange}\" for user \"{user}\" in vhost \"{v}\" ..."
            ));
            c.call(
                "PUT",
                &format!("/api/topic-permissions/{vh}/{}", seg(user)),
                Some(&json!({"exchange": exchange, "write": write, "read": read})),
                &format!("user '{user}' or {in_vhost}"),
            )?;
            ok();
        }
        Verb::ClearTopicPermissions { user, exchange } => {
            let mut path = format!("/api/topic-permissions/{vh}/{}", seg(user));
            match exchange {
                Some(x) => {
                    out.info(&format!(
                        "Clearing topic permissions on \"{x}\" for user \"{user}\" in vhost \"{v}\" ..."
                    ));
                    path.push_str(&format!("?exchange={}", seg(x)));
                }
                None => out.info(&format!(
                    "Clearing topic permissions for user \"{user}\" in vhost \"{v}\" ..."
                )),
            }
            c.call(
                "DELETE",
                &path,
                None,
                &format!("topic permissions of user '{user}' in {in_vhost}"),
            )?;
            ok();
        }
        Verb::ListTopicPermissions => {
            let items = list(c, &format!("/api/vhosts/{vh}/topic-permissions"), in_vhost)?;
            out.info(&format!("Listing topic permissions for vhost \"{v}\" ..."));
            out.table(
                "topic_permissions",
                &items,
                &[],
                &["user", "exchange", "write", "read"],
            );
        }
        Verb::ListUserTopicPermissions { user } => {
            let items = list(
                c,
                &format!("/api/users/{}/topic-permissions", seg(user)),
                &format!("user '{user}'"),
            )?;
            out.info(&format!(
                "Listing topic permissions for user \"{user}\" ..."
            ));
            out.table(
                "topic_permissions",
                &items,
                &[],
                &["vhost", "exchange", "write", "read"],
            );
        }
    }
    Ok(())
}

/// Remove the vhost's limits named by `names` (DELETE each; one not set is no error).
fn clear_vhost_limits<'a>(ctx: &Ctx, names: impl Iterator<Item = &'a &'a str>) -> Res<()> {
    for name in names {
        ctx.c.call(
            "DELETE",
            &format!("/api/vhost-limits/{}/{name}", ctx.vh),
            None,
            &ctx.in_vhost,
        )?;
    }
    Ok(())
}
