//! Resource permissions as a connection checks them: the user's configure / write / read
//! patterns on the connection's vhost, compiled once and compiled again only after an operator
//! changed permissions (a generation counter in [`Access`]), so that a check on the publish path
//! is a counter load and, for the usual `.*`, nothing more.
//!
//! Matching follows RabbitMQ's internal backend: a pattern matches anywhere in the name unless it
//! is anchored, the empty pattern means `^$` (nothing), and the default exchange is checked under
//! the name `amq.default`.

use super::{Access, Permission};
use regex::Regex;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Configure,
    Write,
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Exchange,
    Queue,
}

impl Resource {
    fn noun(self) -> &'static str {
        match self {
            Resource::Exchange => "exchange",
            Resource::Queue => "queue",
        }
    }
}

#[derive(Debug)]
enum Pattern {
    All,
    Nothing,
    Re(Regex),
}

impl Pattern {
    fn compile(p: &str) -> Pattern {
        match p {
            ".*" | "^.*" | ".*$" | "^.*$" => Pattern::All,
            "" | "^$" => Pattern::Nothing,
            _ => match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                Ok(re) => Pattern::Re(re),
                Err(e) => {
                    // Stored patterns are checked when set; one that still fails grants nothing.
                    tracing::warn!(
                        "permission pattern '{p}' does not compile, granting nothing: {e}"
                    );
                    Pattern::Nothing
                }
            },
        }
    }

    fn allows(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Nothing => false,
            Pattern::Re(re) => re.is_match(name),
        }
    }
}

#[derive(Debug)]
struct Compiled {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

impl Compiled {
    fn of(p: Option<&Permission>) -> Self {
        match p {
            Some(p) => Compiled {
                configure: Pattern::compile(&p.configure),
                write: Pattern::compile(&p.write),
                read: Pattern::compile(&p.read),
            },
            None => Compiled {
                configure: Pattern::Nothing,
                write: Pattern::Nothing,
                read: Pattern::Nothing,
            },
        }
    }
}

/// One connection's permissions; owned by the connection, so checks take no lock.
#[derive(Debug)]
pub struct Grants {
    access: Arc<Access>,
    user: String,
    vhost: String,
    generation: u64,
    compiled: Compiled,
}

impl Grants {
    pub fn new(access: Arc<Access>, user: &str, vhost: &str) -> Self {
        let generation = access.generation();
        let compiled = Compiled::of(access.permission(user, vhost).as_ref());
        Grants {
            access,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            generation,
            compiled,
        }
    }

    /// Whether `perm` on the resource `name` is granted; `Err` carries RabbitMQ's refusal text.
    pub fn check(&mut self, perm: Perm, kind: Resource, name: &str) -> Result<(), String> {
        let now = self.access.generation();
        if now != self.generation {
            self.generation = now;
            self.compiled = Compiled::of(self.access.permission(&self.user, &self.vhost).as_ref());
        }
        let name = if name.is_empty() && kind == Resource::Exchange {
            "amq.default"
        } else {
            name
        };
        let pattern = match perm {
            Perm::Configure => &self.compiled.configure,
            Perm::Write => &self.compiled.write,
            Perm::Read => &self.compiled.read,
        };
        if pattern.allows(name) {
            Ok(())
        } else {
            Err(format!(
                "access to {} '{name}' in vhost '{}' refused for user '{}'",
                kind.noun(),
                self.vhost,
                self.user
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(configure: &str, write: &str, read: &str) -> (Arc<Access>, Grants) {
        let a = Arc::new(Access::load(None, "guest", "guest", &[]).unwrap());
        a.put_permission(Permission {
            user: "guest".into(),
            vhost: "/".into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
        .unwrap();
        let g = Grants::new(a.clone(), "guest", "/");
        (a, g)
    }

    #[test]
    fn patterns_as_rabbitmq_matches_them() {
        let (_, mut g) = grants("^app-", "^(app-.*|amq\\.default)$", "");
        assert!(g.check(Perm::Configure, Resource::Queue, "app-1").is_ok());
        // Unanchored at the end: a prefix pattern matches longer names.
        assert!(g.check(Perm::Configure, Resource::Queue, "app-1-x").is_ok());
        assert!(g
            .check(Perm::Configure, Resource::Queue, "my-app-1")
            .is_err());
        // The default exchange is checked as amq.default.
        assert!(g.check(Perm::Write, Resource::Exchange, "").is_ok());
        assert!(g.check(Perm::Write, Resource::Queue, "").is_err());
        // The empty pattern grants nothing, not even the empty name.
        assert!(g.check(Perm::Read, Resource::Queue, "").is_err());
        assert_eq!(
            g.check(Perm::Write, Resource::Exchange, "amq.direct"),
            Err("access to exchange 'amq.direct' in vhost '/' refused for user 'guest'".into())
        );
    }

    #[test]
    fn a_change_applies_to_open_connections() {
        let (a, mut g) = grants(".*", ".*", ".*");
        assert!(g.check(Perm::Read, Resource::Queue, "q").is_ok());
        a.put_permission(Permission {
            user: "guest".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: "^other$".into(),
        })
        .unwrap();
        assert!(g.check(Perm::Read, Resource::Queue, "q").is_err());
        assert!(a.delete_permission("guest", "/").unwrap());
        assert!(g.check(Perm::Configure, Resource::Queue, "q").is_err());
    }
}
