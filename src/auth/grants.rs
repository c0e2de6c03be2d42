//! Resource permissions as a connection checks them: the user's configure / write / read
//! patterns on the connection's vhost, compiled once and compiled again only after an operator
//! changed permissions (a generation counter in [`Access`]), so that a check on the publish path
//! is a counter load and, for the usual `.*`, nothing more.
//!
//! Matching follows RabbitMQ's internal backend: a pattern matches anywhere in the name unless it
//! is anchored, the empty pattern means `^$` (nothing), and the default exchange is checked under
//! the name `amq.default`.
//!
//! Topic permissions ([`Grants::check_topic`]) are compiled with the same cache: per exchange, a
//! write pattern for routing keys published to it and a read pattern for binding keys bound from
//! it, checked only on topic exchanges; an exchange without one allows everything. `{username}`
//! and `{vhost}` in a pattern are replaced by the connection's user and vhost before compiling,
//! as they are, unescaped, as RabbitMQ does. RabbitMQ expands `{client_id}` only for plugins'
//! connections (MQTT, STOMP), never for AMQP 0-9-1 ones, where it stays the literal text
//! `{client_id}` (checked against RabbitMQ 3.10.8: a client_id client property changes
//! nothing); so it stays here. A brace that does not start a repetition is a literal, as in
//! RabbitMQ's regular expressions (PCRE), which the `regex` crate would refuse.

use super::{Access, Permission, TopicPermission};
use regex::Regex;
use std::collections::HashMap;
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

/// `pattern` with every `{` that does not open a `{n}`, `{n,}` or `{n,m}` repetition escaped,
/// so that the `regex` crate reads it as PCRE does: as a literal brace.
pub fn pcre_braces(pattern: &str) -> String {
    let b = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut i = 0;
    let mut class = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\\' => {
                // An escape: copy it and what it escapes.
                let next = pattern[i + 1..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&pattern[i..i + 1 + next]);
                i += 1 + next;
                continue;
            }
            b'[' => class = true,
            b']' => class = false,
            b'{' if !class && !repetition(&b[i + 1..]) => {
                out.push_str("\\{");
                i += 1;
                continue;
            }
            b'}' if !class => {
                // A closing brace not ending a repetition is literal too.
                let opened = out
                    .rfind('{')
                    .is_some_and(|o| !out[..o].ends_with('\\') && !out[o + 1..].contains('}'));
                if !opened {
                    out.push_str("\\}");
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        let len = pattern[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&pattern[i..i + len]);
        i += len;
    }
    out
}

/// Whether `rest` (after a `{`) is `n}`, `n,}` or `n,m}`.
fn repetition(rest: &[u8]) -> bool {
    let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
    let n = digits(rest);
    if n == 0 {
        return false;
    }
    match rest.get(n) {
        Some(b'}') => true,
        Some(b',') => {
            let m = digits(&rest[n + 1..]);
            rest.get(n + 1 + m) == Some(&b'}')
        }
        _ => false,
    }
}

/// A topic permission's pattern as it is matched: variables expanded, PCRE's braces.
fn topic_pattern(p: &str, user: &str, vhost: &str) -> String {
    let p = if p.is_empty() { "^$" } else { p };
    pcre_braces(&p.replace("{username}", user).replace("{vhost}", vhost))
}

#[derive(Debug)]
struct TopicPatterns {
    write: Pattern,
    read: Pattern,
}

#[derive(Debug)]
struct Compiled {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
    /// By exchange name.
    topics: HashMap<String, TopicPatterns>,
}

impl Compiled {
    fn load(access: &Access, user: &str, vhost: &str) -> Self {
        let mut c = Compiled::of(access.permission(user, vhost).as_ref());
        c.topics = access
            .topic_permissions_of(user, vhost)
            .into_iter()
            .map(|t: TopicPermission| {
                let patterns = TopicPatterns {
                    write: Pattern::compile(&topic_pattern(&t.write, user, vhost)),
                    read: Pattern::compile(&topic_pattern(&t.read, user, vhost)),
                };
                (t.exchange, patterns)
            })
            .collect();
        c
    }

    fn of(p: Option<&Permission>) -> Self {
        match p {
            Some(p) => Compiled {
                configure: Pattern::compile(&p.configure),
                write: Pattern::compile(&p.write),
                read: Pattern::compile(&p.read),
                topics: HashMap::new(),
            },
            None => Compiled {
                configure: Pattern::Nothing,
                write: Pattern::Nothing,
                read: Pattern::Nothing,
                topics: HashMap::new(),
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
        let compiled = Compiled::load(&access, user, vhost);
        Grants {
            access,
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            generation,
            compiled,
        }
    }

    /// Compile again if an operator changed permissions since.
    #[inline]
    fn refresh(&mut self) {
        let now = self.access.generation();
        if now != self.generation {
            self.generation = now;
            self.compiled = Compiled::load(&self.access, &self.user, &self.vhost);
        }
    }

    /// Whether the user has any topic permission in the vhost (so publishes and binds must be
    /// checked with [`Grants::check_topic`]).
    #[inline]
    pub fn has_topic_permissions(&mut self) -> bool {
        self.refresh();
        !self.compiled.topics.is_empty()
    }

    /// The access-control state these grants come from.
    pub fn access(&self) -> &Arc<Access> {
        &self.access
    }

    /// Whether `perm` (write: publish, read: bind) on the routing or binding `key` is granted on
    /// `exchange`, if it is a topic exchange (`is_topic`, asked only when the exchange has a
    /// topic permission); `Err` carries RabbitMQ's refusal text. Without topic permissions this
    /// is a counter load and an empty map's check.
    pub fn check_topic(
        &mut self,
        perm: Perm,
        exchange: &str,
        key: &str,
        is_topic: impl FnOnce() -> bool,
    ) -> Result<(), String> {
        self.refresh();
        if self.compiled.topics.is_empty() {
            return Ok(());
        }
        let Some(t) = self.compiled.topics.get(exchange) else {
            return Ok(());
        };
        let pattern = match perm {
            Perm::Write => &t.write,
            Perm::Read => &t.read,
            Perm::Configure => return Ok(()),
        };
        if pattern.allows(key) || !is_topic() {
            return Ok(());
        }
        Err(format!(
            "access to topic '{key}' in exchange '{exchange}' in vhost '{}' refused for user '{}'",
            self.vhost, self.user
        ))
    }

    /// Whether `perm` on the resource `name` is granted; `Err` carries RabbitMQ's refusal text.
    pub fn check(&mut self, perm: Perm, kind: Resource, name: &str) -> Result<(), String> {
        self.refresh();
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
    fn braces_read_as_pcre_reads_them() {
        assert_eq!(pcre_braces("^{client_id}$"), "^\\{client_id\\}$");
        assert_eq!(pcre_braces("a{2}b{1,}c{1,3}"), "a{2}b{1,}c{1,3}");
        assert_eq!(pcre_braces("\\{x\\}[{}]"), "\\{x\\}[{}]");
        assert_eq!(pcre_braces("a{,3}"), "a\\{,3\\}");
        assert_eq!(pcre_braces("é{x"), "é\\{x");
        for p in ["^{client_id}", "a{2}", "[{]", "x}", "{", "a{1,2"] {
            assert!(Regex::new(&pcre_braces(p)).is_ok(), "{p}");
        }
        assert!(Regex::new(&pcre_braces("^{client_id}"))
            .unwrap()
            .is_match("{client_id}.a"));
    }

    #[test]
    fn topic_patterns_expand_and_apply_per_exchange() {
        let (a, mut g) = grants(".*", ".*", ".*");
        let yes = || true;
        assert!(g.check_topic(Perm::Write, "amq.topic", "x", yes).is_ok());
        a.put_topic_permission(TopicPermission {
            user: "guest".into(),
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            write: "^{username}\\.".into(),
            read: "^{vhost}-{client_id}".into(),
        })
        .unwrap();
        assert!(g
            .check_topic(Perm::Write, "amq.topic", "guest.a", yes)
            .is_ok());
        assert_eq!(
            g.check_topic(Perm::Write, "amq.topic", "other.a", yes),
            Err(
                "access to topic 'other.a' in exchange 'amq.topic' in vhost '/' refused for \
                 user 'guest'"
                    .into()
            )
        );
        assert!(g
            .check_topic(Perm::Read, "amq.topic", "/-{client_id}", yes)
            .is_ok());
        assert!(g
            .check_topic(Perm::Read, "amq.topic", "/-abc", yes)
            .is_err());
        // Not a topic exchange, or another exchange: allowed.
        assert!(g
            .check_topic(Perm::Write, "amq.topic", "other", || false)
            .is_ok());
        assert!(g
            .check_topic(Perm::Write, "amq.direct", "other", yes)
            .is_ok());
        assert!(a.delete_topic_permissions("guest", "/", None).unwrap());
        assert!(g
            .check_topic(Perm::Write, "amq.topic", "other.a", yes)
            .is_ok());
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
