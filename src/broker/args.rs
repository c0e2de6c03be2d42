//! Queue arguments (`x-…`) checked at declare, with RabbitMQ's refusals and texts, so a bad
//! declaration fails where RabbitMQ would fail it instead of being accepted and ignored.

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
    OneOf(&'static [&'static str]),
    Bool,
    QueueType,
    /// A string from a list; anything else is refused naming the accepted values.
    Named(&'static [&'static str]),
}

const QUEUE_ARGS: &[(&str, Rule)] = &[
    (
        "x-expires",
        Rule::Int {
            positive: true,
            max: None,
        },
    ),
    (
        "x-message-ttl",
        Rule::Int {
            positive: false,
            max: None,
        },
    ),
    (
        "x-max-length",
        Rule::Int {
            positive: false,
            max: None,
        },
    ),
    (
        "x-max-length-bytes",
        Rule::Int {
            positive: false,
            max: None,
        },
    ),
    (
        "x-delivery-limit",
        Rule::Int {
            positive: false,
            max: None,
        },
    ),
    (
        "x-max-priority",
        Rule::Int {
            positive: false,
            max: Some(255),
        },
    ),
    ("x-dead-letter-exchange", Rule::Str),
    ("x-dead-letter-routing-key", Rule::Str),
    (
        "x-overflow",
        Rule::OneOf(&["drop-head", "reject-publish", "reject-publish-dlx"]),
    ),
    ("x-single-active-consumer", Rule::Bool),
    ("x-queue-type", Rule::QueueType),
    (
        "x-consumer-timeout",
        Rule::Int {
            positive: false,
            max: None,
        },
    ),
    // Warren's own: what a consumer timeout does (see lifecycle::TimeoutAction).
    (
        "x-consumer-timeout-action",
        Rule::Named(&["close_channel", "cancel_consumer"]),
    ),
    // The rabbitmq-message-deduplication plugin's queue argument.
    ("x-message-deduplication", Rule::Bool),
];

/// Check the `x-` arguments of a queue.declare as RabbitMQ does.
pub fn validate_queue_args(queue: &str, vhost: &str, args: &FieldTable) -> AmqpResult<()> {
    for (name, rule) in QUEUE_ARGS {
        let Some(v) = args.inner().get(*name) else {
            continue;
        };
        let problem = match *rule {
            Rule::Int { positive, max } => match as_int(v) {
                None => Some(format!("\"expected integer, got {}\"", type_name(v))),
                Some(0) if positive => Some("{value_zero,0}".to_owned()),
                Some(n) if n < 0 => Some(format!("{{value_negative,{n}}}")),
                Some(n) => match max {
                    Some(m) if n > m => Some(format!("{{value_too_large,{n},{m}}}")),
                    _ => None,
                },
            },
            Rule::Str => as_str(v)
                .is_none()
                .then(|| format!("{{unacceptable_type,{}}}", type_name(v))),
            Rule::OneOf(allowed) => match as_str(v) {
                None => Some(format!("{{unacceptable_type,{}}}", type_name(v))),
                Some(s) if allowed.contains(&s.as_str()) => None,
                Some(_) => Some("invalid_overflow".to_owned()),
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
            .ends_with("{value_too_large,256,255}"));
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
}
