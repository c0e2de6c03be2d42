//! Queue arguments (`x-…`) checked at declare, with RabbitMQ's refusals and texts, so a bad
//! declaration fails where RabbitMQ would fail it instead of being accepted and ignored.
//!
//! As RabbitMQ (3.10) does it: `x-queue-type` first; then the values of the arguments the queue's
//! type takes, in RabbitMQ's order; then, for quorum queues, arguments only other types take are
//! refused by name. A new quorum queue must also be durable, not exclusive, not auto-delete
//! (`validate_new_queue`), and cannot be server-named (`refuse_server_named`).

use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's name for a field type, as its error texts use it.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// An integer argument's value, whatever width the client encoded it in.
pub fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => *n as i64,
        AMQPValue::ShortShortUInt(n) => *n as i64,
        AMQPValue::ShortInt(n) => *n as i64,
        AMQPValue::ShortUInt(n) => *n as i64,
        AMQPValue::LongInt(n) => *n as i64,
        AMQPValue::LongUInt(n) => *n as i64,
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// The bytes of a string value, long or short (clients use either).
pub fn str_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// A string value, long or short, as text.
pub fn as_str(v: &AMQPValue) -> Option<String> {
    str_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The string argument `key` of a table, if it is one.
pub fn str_arg(t: &FieldTable, key: &str) -> Option<String> {
    t.inner().get(key).and_then(as_str)
}

#[derive(Clone, Copy)]
enum Rule {
    /// An integer: `min` is 0 (non-negative) or 1 (positive); `max` if bounded.
    Int {
        positive: bool,
        max: Option<i64>,
    },
    Str,
    /// `x-dead-letter-routing-key`: a string, and only with an `x-dead-letter-exchange`.
    DlxRoutingKey,
    /// A string from a list; anything else is refused with the given error term.
    OneOf(&'static [&'static str], &'static str),
    Bool,
    QueueType,
    /// A string from a list; anything else is refused naming the accepted values.
    Named(&'static [&'static str]),
    /// A stream's `x-max-age`: a positive integer and a unit (`7D`, `12h`, …).
    Age,
}

/// What the value of each argument must be, in the order RabbitMQ checks them (its first
/// refusal is the one reported), Warren's own arguments last.
const QUEUE_ARGS: &[(&str, Rule)] = &[
    ("x-expires", POSITIVE),
    ("x-message-ttl", NON_NEGATIVE),
    ("x-dead-letter-exchange", Rule::Str),
    ("x-dead-letter-routing-key", Rule::DlxRoutingKey),
    (
        "x-dead-letter-strategy",
        Rule::OneOf(&["at-most-once", "at-least-once"], "invalid_dlx_strategy"),
    ),
    ("x-max-length", NON_NEGATIVE),
    ("x-max-length-bytes", NON_NEGATIVE),
    ("x-max-in-memory-length", NON_NEGATIVE),
    ("x-max-in-memory-bytes", NON_NEGATIVE),
    (
        "x-max-priority",
        Rule::Int {
            positive: false,
            max: Some(255),
        },
    ),
    (
        "x-overflow",
        Rule::OneOf(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "invalid_overflow",
        ),
    ),
    ("x-single-active-consumer", Rule::Bool),
    // (x-queue-type comes here in RabbitMQ's list, but is checked before all others.)
    ("x-quorum-initial-group-size", POSITIVE),
    (
        "x-queue-leader-locator",
        Rule::OneOf(
            &["client-local", "balanced", "random", "least-leaders"],
            "invalid_queue_locator_arg",
        ),
    ),
];

/// Arguments RabbitMQ (3.10) does not check at declare, whose values Warren checks after
/// RabbitMQ's own checks (so a quorum queue's refusal of another type's argument comes first,
/// as in RabbitMQ).
const WARREN_ARGS: &[(&str, Rule)] = &[
    // Not checked by RabbitMQ 3.10 (its quorum queues take any value); Warren refuses
    // negative ones.
    ("x-delivery-limit", NON_NEGATIVE),
    ("x-consumer-timeout", NON_NEGATIVE),
    // Warren's own: what a consumer timeout does (see lifecycle::TimeoutAction).
    (
        "x-consumer-timeout-action",
        Rule::Named(&["close_channel", "cancel_consumer"]),
    ),
    // The rabbitmq-message-deduplication plugin's queue argument.
    ("x-message-deduplication", Rule::Bool),
];

const POSITIVE: Rule = Rule::Int {
    positive: true,
    max: None,
};
const NON_NEGATIVE: Rule = Rule::Int {
    positive: false,
    max: None,
};

/// Arguments of other queue types that RabbitMQ refuses for a quorum queue ("invalid arg …
/// of queue type rabbit_quorum_queue"): the classic-only and stream-only ones.
const NOT_FOR_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// The arguments a stream takes, checked in this order (RabbitMQ's).
const STREAM_ARGS: &[(&str, Rule)] = &[
    ("x-max-length-bytes", NON_NEGATIVE),
    ("x-max-age", Rule::Age),
    ("x-stream-max-segment-size-bytes", NON_NEGATIVE),
    ("x-initial-cluster-size", POSITIVE),
    (
        "x-queue-leader-locator",
        Rule::OneOf(
            &["client-local", "balanced", "random", "least-leaders"],
            "invalid_queue_locator_arg",
        ),
    ),
];

/// The largest segment a stream may ask for (RabbitMQ's limit).
pub const MAX_STREAM_SEGMENT: i64 = 3_000_000_000;

/// Arguments of other queue types that RabbitMQ refuses for a stream ("invalid arg … of queue
/// type rabbit_stream_queue"), by name, whatever their value (checked against RabbitMQ 3.10.8).
const NOT_FOR_STREAM: &[&str] = &[
    "x-max-length",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-overflow",
    "x-single-active-consumer",
    "x-expires",
    "x-queue-mode",
    "x-queue-version",
    "x-delivery-limit",
    "x-quorum-initial-group-size",
    "x-queue-master-locator",
];

/// Arguments only quorum queues take. RabbitMQ refuses them for classic queues; Warren keeps
/// accepting (and ignoring) them there, as before, and checks their values for quorum queues.
const QUORUM_ONLY: &[&str] = &[
    "x-dead-letter-strategy",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-queue-leader-locator",
];

/// Whether the arguments declare a quorum queue.
pub fn is_quorum(args: &FieldTable) -> bool {
    args.inner().get("x-queue-type").and_then(str_bytes) == Some(b"quorum")
}

/// Whether the arguments declare a stream queue.
pub fn is_stream(args: &FieldTable) -> bool {
    args.inner().get("x-queue-type").and_then(str_bytes) == Some(b"stream")
}

/// RabbitMQ's name of a queue type, as its error texts use it.
fn type_module(queue_type: &[u8]) -> Option<&'static str> {
    match queue_type {
        b"quorum" => Some("rabbit_quorum_queue"),
        b"stream" => Some("rabbit_stream_queue"),
        _ => None,
    }
}

/// RabbitMQ's name of a queue's type module, from its declare arguments.
pub fn queue_type_module(args: &FieldTable) -> &'static str {
    args.inner()
        .get("x-queue-type")
        .and_then(str_bytes)
        .and_then(type_module)
        .unwrap_or("rabbit_classic_queue")
}

/// queue.declare with an empty name: quorum and stream queues cannot be server-named.
pub fn refuse_server_named(args: &FieldTable) -> AmqpResult<()> {
    match args
        .inner()
        .get("x-queue-type")
        .and_then(str_bytes)
        .and_then(type_module)
    {
        Some(t) => Err(AmqpError::precondition(format!(
            "Cannot declare a server-named queue for type {t}"
        ))),
        None => Ok(()),
    }
}

/// queue.delete with if-unused or if-empty on a quorum queue: RabbitMQ does not support
/// these flags there and ends the connection (540), if-unused named first.
pub fn refuse_quorum_delete_flags(
    queue: &str,
    vhost: &str,
    if_unused: bool,
    if_empty: bool,
) -> AmqpResult<()> {
    let flag = match (if_unused, if_empty) {
        (true, _) => "if-unused",
        (_, true) => "if-empty",
        _ => return Ok(()),
    };
    Err(AmqpError::not_implemented(format!(
        "cannot delete queue '{queue}' in vhost '{vhost}'. queue.delete operations with {flag} \
         flag set are not supported by quorum queues"
    )))
}

/// basic.consume from a quorum queue on a channel with a channel-wide prefetch (basic.qos
/// global=true with a non-zero count): RabbitMQ ends the connection (540).
pub fn refuse_global_qos(queue: &str, vhost: &str) -> AmqpError {
    AmqpError::not_implemented(format!(
        "queue '{queue}' in vhost '{vhost}' does not support global qos"
    ))
}

/// A quorum queue's dead-letter strategy as it takes effect, said in the log as RabbitMQ
/// says it (nothing reaches the client): `at-least-once` needs `x-overflow: reject-publish`
/// and falls back to `at-most-once` otherwise; without `x-dead-letter-exchange` there is no
/// dead-lettering at all. (Warren dead-letters at-most-once in every case for now.)
pub fn log_dead_letter_strategy(queue: &str, vhost: &str, args: &FieldTable) {
    let Some(strategy) = str_arg(args, "x-dead-letter-strategy") else {
        return;
    };
    if !args.inner().contains_key("x-dead-letter-exchange") {
        tracing::info!(
            "Disabling dead-lettering for queue '{queue}' in vhost '{vhost}' despite configured \
             dead-letter-strategy '{strategy}' because dead-letter-exchange is not configured"
        );
        return;
    }
    let overflow = str_arg(args, "x-overflow").unwrap_or_else(|| "drop-head".to_owned());
    if strategy == "at-least-once" && overflow != "reject-publish" {
        tracing::info!(
            "Falling back to dead-letter-strategy at-most-once for queue '{queue}' in vhost \
             '{vhost}': at-least-once needs overflow reject-publish, the queue's is {overflow}"
        );
    }
}

/// The checks RabbitMQ makes only when a queue is created: a quorum queue or a stream is
/// refused if it is auto-delete, exclusive or not durable (in that order).
pub fn validate_new_queue(
    queue: &str,
    vhost: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &FieldTable,
) -> AmqpResult<()> {
    if !is_quorum(args) && !is_stream(args) {
        return Ok(());
    }
    let property = if auto_delete {
        "auto-delete"
    } else if exclusive {
        "exclusive-owner"
    } else if !durable {
        "non-durable"
    } else {
        return Ok(());
    };
    Err(AmqpError::precondition(format!(
        "invalid property '{property}' for queue '{queue}' in vhost '{vhost}'"
    )))
}

/// Check the `x-` arguments of a queue.declare as RabbitMQ does.
pub fn validate_queue_args(queue: &str, vhost: &str, args: &FieldTable) -> AmqpResult<()> {
    // The type first: it decides which arguments are checked.
    check_arg(queue, vhost, args, "x-queue-type", Rule::QueueType)?;
    let quorum = is_quorum(args);
    let stream = is_stream(args);
    if stream {
        for &(name, rule) in STREAM_ARGS {
            check_arg(queue, vhost, args, name, rule)?;
        }
        let segment = args.inner().get("x-stream-max-segment-size-bytes");
        if segment
            .and_then(as_int)
            .is_some_and(|n| n > MAX_STREAM_SEGMENT)
        {
            return Err(AmqpError::precondition(
                "Exceeded max value for x-stream-max-segment-size-bytes",
            ));
        }
    }
    for &(name, rule) in QUEUE_ARGS {
        let skip = if quorum {
            NOT_FOR_QUORUM.contains(&name) // refused by name below
        } else if stream {
            true // its own are checked above, the others refused by name below
        } else {
            QUORUM_ONLY.contains(&name)
        };
        if !skip {
            check_arg(queue, vhost, args, name, rule)?;
        }
    }
    let refused = match (quorum, stream) {
        (true, _) => Some((NOT_FOR_QUORUM, "rabbit_quorum_queue")),
        (_, true) => Some((NOT_FOR_STREAM, "rabbit_stream_queue")),
        _ => None,
    };
    if let Some((names, module)) = refused {
        // (RabbitMQ reports the first in the client's table order; FieldTable keeps them
        // sorted by name.)
        if let Some(name) = args.inner().keys().find(|k| names.contains(&k.as_str())) {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{}' for queue '{queue}' in vhost '{vhost}' of queue type \
                 {module}",
                name.as_str()
            )));
        }
    }
    if !stream {
        for &(name, rule) in WARREN_ARGS {
            check_arg(queue, vhost, args, name, rule)?;
        }
    }
    Ok(())
}

/// Check the value of argument `name` against `rule`.
fn check_arg(
    queue: &str,
    vhost: &str,
    args: &FieldTable,
    name: &str,
    rule: Rule,
) -> AmqpResult<()> {
    let Some(v) = args.inner().get(name) else {
        return Ok(());
    };
    let problem = match rule {
        Rule::Int { positive, max } => match as_int(v) {
            None => Some(format!("\"expected integer, got {}\"", type_name(v))),
            Some(0) if positive => Some("{value_zero,0}".to_owned()),
            Some(n) if n < 0 => Some(format!("{{value_negative,{n}}}")),
            Some(n) => match max {
                Some(m) if n > m => Some(format!("{{max_value_exceeded,{n}}}")),
                _ => None,
            },
        },
        Rule::Str => as_str(v)
            .is_none()
            .then(|| format!("{{unacceptable_type,{}}}", type_name(v))),
        Rule::DlxRoutingKey => match as_str(v) {
            None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
            Some(_) if !args.inner().contains_key("x-dead-letter-exchange") => {
                Some("routing_key_but_no_dlx_defined".to_owned())
            }
            Some(_) => None,
        },
        Rule::OneOf(allowed, error) => match as_str(v) {
            None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
            Some(s) if allowed.contains(&s.as_str()) => None,
            Some(_) => Some(error.to_owned()),
        },
        Rule::Bool => (!matches!(v, AMQPValue::Boolean(_)))
            .then(|| format!("{{unacceptable_type,{}}}", type_name(v))),
        Rule::Named(allowed) => match as_str(v) {
            None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
            Some(s) if allowed.contains(&s.as_str()) => None,
            Some(s) => Some(format!(
                "\"unknown value '{s}', expected one of: {}\"",
                allowed.join(", ")
            )),
        },
        Rule::Age => match str_bytes(v) {
            None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
            Some(s) if crate::broker::stream::args::parse_age(s).is_some() => None,
            Some(_) => Some("invalid_max_age".to_owned()),
        },
        Rule::QueueType => match as_str(v) {
            Some(s) if ["classic", "quorum", "stream"].contains(&s.as_str()) => None,
            Some(s) => Some(format!("\"unsupported queue type '{s}'\"")),
            None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
        },
    };
    if let Some(p) = problem {
        return Err(AmqpError::precondition(format!(
            "invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {p}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn check(k: &str, v: AMQPValue) -> Result<(), String> {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        validate_queue_args("q", "/", &t).map_err(|e| e.reply_text())
    }

    #[test]
    fn rabbitmq_texts() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        assert_eq!(
            check("x-expires", s("abc")).unwrap_err(),
            "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert!(check("x-max-length", AMQPValue::LongInt(-1))
            .unwrap_err()
            .ends_with("{value_negative,-1}"));
        assert!(check("x-expires", AMQPValue::LongInt(0))
            .unwrap_err()
            .ends_with("{value_zero,0}"));
        assert!(check("x-max-priority", AMQPValue::LongInt(256))
            .unwrap_err()
            .ends_with("{max_value_exceeded,256}"));
        assert!(check("x-overflow", s("bogus"))
            .unwrap_err()
            .ends_with("invalid_overflow"));
        assert!(check("x-single-active-consumer", s("yes"))
            .unwrap_err()
            .ends_with("{unacceptable_type,longstr}"));
        assert!(check("x-queue-type", s("nosuch"))
            .unwrap_err()
            .ends_with("\"unsupported queue type 'nosuch'\""));
        assert!(check("x-dead-letter-exchange", AMQPValue::LongInt(1)).is_err());
        // Accepted as RabbitMQ accepts them.
        assert!(check("x-message-ttl", AMQPValue::LongLongInt(0)).is_ok());
        assert!(check("x-queue-type", s("classic")).is_ok());
        assert!(check("x-queue-mode", s("lazy")).is_ok());
        assert!(check("x-unknown-arg", AMQPValue::LongInt(1)).is_ok());
        assert!(check("x-overflow", s("reject-publish")).is_ok());
        assert!(check("x-single-active-consumer", AMQPValue::Boolean(true)).is_ok());
    }

    fn quorum(extra: &[(&str, AMQPValue)]) -> Result<(), String> {
        let mut t = FieldTable::default();
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        for (k, v) in extra {
            t.insert((*k).into(), v.clone());
        }
        validate_queue_args("q", "/", &t).map_err(|e| e.reply_text())
    }

    /// Quorum queues: other types' arguments are refused by name (before their values are
    /// looked at), quorum-only ones have their values checked, RabbitMQ's order and texts
    /// (checked against RabbitMQ 3.10.8).
    #[test]
    fn quorum_arguments() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        for arg in NOT_FOR_QUORUM {
            assert_eq!(
                quorum(&[(arg, AMQPValue::LongInt(1))]).unwrap_err(),
                format!(
                    "PRECONDITION_FAILED - invalid arg '{arg}' for queue 'q' in vhost '/' of \
                     queue type rabbit_quorum_queue"
                )
            );
        }
        // Refused by name even with a value that is wrong anyway.
        assert!(quorum(&[("x-max-priority", AMQPValue::LongInt(-1))])
            .unwrap_err()
            .ends_with("of queue type rabbit_quorum_queue"));
        // The values of the arguments it takes are checked first.
        assert!(quorum(&[
            ("x-max-priority", AMQPValue::LongInt(5)),
            ("x-expires", AMQPValue::LongInt(0))
        ])
        .unwrap_err()
        .ends_with("'x-expires' for queue 'q' in vhost '/': {value_zero,0}"));
        assert!(quorum(&[("x-dead-letter-strategy", s("bogus"))])
            .unwrap_err()
            .ends_with(": invalid_dlx_strategy"));
        assert!(quorum(&[("x-queue-leader-locator", s("bogus"))])
            .unwrap_err()
            .ends_with(": invalid_queue_locator_arg"));
        assert!(
            quorum(&[("x-queue-leader-locator", AMQPValue::LongLongInt(5))])
                .unwrap_err()
                .ends_with(": {unacceptable_type,long}")
        );
        assert!(
            quorum(&[("x-quorum-initial-group-size", AMQPValue::LongInt(0))])
                .unwrap_err()
                .ends_with(": {value_zero,0}")
        );
        assert!(
            quorum(&[("x-max-in-memory-length", AMQPValue::LongInt(-1))])
                .unwrap_err()
                .ends_with(": {value_negative,-1}")
        );
        // What a quorum queue takes.
        for (k, v) in [
            ("x-message-ttl", AMQPValue::LongInt(1000)),
            ("x-expires", AMQPValue::LongInt(1000)),
            ("x-max-length", AMQPValue::LongInt(5)),
            ("x-max-length-bytes", AMQPValue::LongInt(5)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
            ("x-delivery-limit", AMQPValue::LongInt(5)),
            ("x-dead-letter-strategy", s("at-least-once")),
            ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
            ("x-queue-leader-locator", s("balanced")),
            ("x-max-in-memory-bytes", AMQPValue::LongInt(5)),
            ("x-foo", AMQPValue::LongInt(1)),
        ] {
            assert_eq!(quorum(&[(k, v)]), Ok(()), "{k}");
        }
        // Classic queues keep taking (and ignoring) quorum-only arguments, as before.
        assert!(check("x-dead-letter-strategy", s("bogus")).is_ok());
        assert!(check("x-max-priority", AMQPValue::LongInt(5)).is_ok());
    }

    /// `x-dead-letter-routing-key` needs an `x-dead-letter-exchange` (any queue type but a
    /// stream, which refuses both by name); for a quorum queue another type's argument is
    /// named before a bad value of an argument only Warren checks.
    #[test]
    fn dead_letter_routing_key_and_check_order() {
        let s = |x: &str| AMQPValue::LongString(LongString::from(x));
        let no_dlx = "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': \
                      routing_key_but_no_dlx_defined";
        assert!(check("x-dead-letter-routing-key", s("k"))
            .unwrap_err()
            .ends_with(no_dlx));
        assert!(quorum(&[("x-dead-letter-routing-key", s("k"))])
            .unwrap_err()
            .ends_with(no_dlx));
        assert!(
            quorum(&[("x-dead-letter-routing-key", AMQPValue::LongInt(1))])
                .unwrap_err()
                .ends_with("{unacceptable_type,signedint}")
        );
        assert_eq!(
            quorum(&[
                ("x-dead-letter-routing-key", s("k")),
                ("x-dead-letter-exchange", s(""))
            ]),
            Ok(())
        );
        assert!(quorum(&[
            ("x-delivery-limit", s("x")),
            ("x-max-priority", AMQPValue::LongInt(5))
        ])
        .unwrap_err()
        .ends_with(
            "'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        ));
        assert!(quorum(&[("x-delivery-limit", s("x"))])
            .unwrap_err()
            .ends_with("\"expected integer, got longstr\""));
        assert!(check("x-consumer-timeout", AMQPValue::LongInt(-1)).is_err());
        let err = |e: AmqpResult<()>| e.map_err(|e| (e.code, e.reply_text()));
        assert_eq!(
            err(refuse_quorum_delete_flags("q", "/", false, false)),
            Ok(())
        );
        assert_eq!(
            err(refuse_quorum_delete_flags("q", "/", true, true)),
            Err((
                540,
                "NOT_IMPLEMENTED - cannot delete queue 'q' in vhost '/'. queue.delete operations \
                 with if-unused flag set are not supported by quorum queues"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn new_quorum_queue_properties() {
        let mut t = FieldTable::default();
        t.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        let new = |durable, exclusive, auto_delete| {
            validate_new_queue("q", "/", durable, exclusive, auto_delete, &t)
                .map_err(|e| (e.code, e.reply_text()))
        };
        let refused = |p: &str| {
            Err((
                406,
                format!("PRECONDITION_FAILED - invalid property '{p}' for queue 'q' in vhost '/'"),
            ))
        };
        assert_eq!(new(true, false, false), Ok(()));
        assert_eq!(new(false, false, false), refused("non-durable"));
        assert_eq!(new(true, true, false), refused("exclusive-owner"));
        assert_eq!(new(false, true, false), refused("exclusive-owner"));
        assert_eq!(new(true, false, true), refused("auto-delete"));
        assert_eq!(new(false, true, true), refused("auto-delete"));
        // Classic queues: anything goes.
        let classic = FieldTable::default();
        assert!(validate_new_queue("q", "/", false, true, true, &classic).is_ok());
        assert!(refuse_server_named(&classic).is_ok());
        assert_eq!(
            refuse_server_named(&t).unwrap_err().reply_text(),
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
        );
    }
}
