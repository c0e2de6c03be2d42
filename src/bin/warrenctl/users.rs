//! Access commands: virtual hosts, users and their tags, and permissions.

use crate::client::seg;
use crate::{Ctx, Failure, Res};
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
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
    }
    Ok(())
}
