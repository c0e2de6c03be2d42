//! Stream arguments: the declare arguments (retention, segment size) and a consumer's
//! (`x-stream-offset`, filters, Warren's `x-stream-consumer-name`), with RabbitMQ's refusals.

use crate::broker::args::{as_int, str_bytes, type_name};
use crate::error::{AmqpError, AmqpResult};
use crate::store::stream::{Start, StreamOptions};
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's default segment size for streams.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// `x-max-age` as RabbitMQ reads it: a positive integer and one unit, `Y` (365 days), `M` (30
/// days), `D`, `h`, `m` or `s`. Returns milliseconds.
pub fn parse_age(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    let n: u64 = std::str::from_utf8(&s[..digits]).ok()?.parse().ok()?;
    let unit: u64 = match &s[digits..] {
        b"Y" => 365 * 86_400_000,
        b"M" => 30 * 86_400_000,
        b"D" => 86_400_000,
        b"h" => 3_600_000,
        b"m" => 60_000,
        b"s" => 1000,
        _ => return None,
    };
    (n > 0).then(|| n.saturating_mul(unit))
}

/// A stream's retention and segment size from its declare arguments (already validated).
pub fn stream_options(args: &FieldTable) -> StreamOptions {
    let t = args.inner();
    let positive = |k: &str| {
        t.get(k)
            .and_then(as_int)
            .filter(|&n| n > 0)
            .map(|n| n as u64)
    };
    StreamOptions {
        max_segment_bytes: positive("x-stream-max-segment-size-bytes")
            .unwrap_or(DEFAULT_SEGMENT_BYTES),
        max_bytes: positive("x-max-length-bytes"),
        max_age_ms: t.get("x-max-age").and_then(str_bytes).and_then(parse_age),
    }
}

/// What a consumer selects with `x-stream-filter`, and whether it also wants messages published
/// without a filter value (`x-stream-match-unfiltered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub values: Vec<Vec<u8>>,
    pub match_unfiltered: bool,
}

impl Filter {
    /// Whether a message with filter value `v` goes to this consumer.
    pub fn matches(&self, v: Option<&[u8]>) -> bool {
        match v {
            None => self.match_unfiltered,
            Some(v) => self.values.iter().any(|f| f == v),
        }
    }
}

/// Where a stream consumer starts, and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub start: Start,
    pub filter: Option<Filter>,
    /// `x-stream-consumer-name`: the broker keeps this reader's offset (Warren's extension).
    pub name: Option<String>,
    /// `x-single-active-consumer` (a consume argument, with a name): of the consumers of this
    /// stream with the same name, one reads at a time; the next takes over where it left off.
    pub single_active: bool,
}

/// RabbitMQ's rendering of a field value in `invalid_stream_offset_arg` errors (the Erlang term
/// of the AMQP field: `{longstr,<<"abc">>}`, `{bool,true}`).
fn erlang_term(v: &AMQPValue) -> String {
    let inner = match v {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) | AMQPValue::ByteArray(_) => {
            format!(
                "<<\"{}\">>",
                String::from_utf8_lossy(value_bytes(v).unwrap_or_default())
            )
        }
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Float(f) => f.to_string(),
        AMQPValue::Double(d) => d.to_string(),
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => "[]".to_owned(),
        AMQPValue::Void => "undefined".to_owned(),
        other => as_int(other).map_or_else(|| "?".to_owned(), |n| n.to_string()),
    };
    format!("{{{},{inner}}}", type_name(v))
}

/// A string-like value's bytes (long or short string, or a byte array).
fn value_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::ByteArray(b) => Some(b.as_slice()),
        v => str_bytes(v),
    }
}

/// The start a consumer asked for, as RabbitMQ reads it: no argument is `next`; `first`,
/// `last`, `next`; an integer offset (a negative one means the first, as in RabbitMQ); an AMQP
/// timestamp (seconds); any other string is an interval ("1h": that long ago). Timestamps and
/// intervals become wall-clock milliseconds against `now_ms`. Anything else is refused with
/// RabbitMQ's 406 (where RabbitMQ itself crashes the connection on a float, a bool or a string
/// that is not an interval, Warren refuses the same way).
fn start_of(v: Option<&AMQPValue>, now_ms: u64, queue: &str, vhost: &str) -> AmqpResult<Start> {
    let Some(v) = v else {
        return Ok(Start::Next);
    };
    if let AMQPValue::Timestamp(t) = v {
        return Ok(Start::Timestamp(t.saturating_mul(1000)));
    }
    if let Some(n) = as_int(v) {
        return Ok(if n < 0 {
            Start::First
        } else {
            Start::Offset(n as u64)
        });
    }
    let refused = || {
        AmqpError::precondition(format!(
            "invalid arg 'x-stream-offset' for queue '{queue}' in vhost '{vhost}': \
             {{invalid_stream_offset_arg,{}}}",
            erlang_term(v)
        ))
    };
    let s = value_bytes(v).ok_or_else(refused)?;
    Ok(match s {
        b"first" => Start::First,
        b"last" => Start::Last,
        b"next" => Start::Next,
        other => match parse_age(other) {
            Some(age) => Start::Timestamp(now_ms.saturating_sub(age)),
            None => return Err(refused()),
        },
    })
}

/// Consume arguments of other queue types that RabbitMQ refuses on a stream, by name.
const NOT_FOR_STREAM_CONSUMERS: &[&str] = &["x-priority"];

/// A stream consumer's arguments (basic.consume on a stream queue).
pub fn consumer_spec(
    args: &FieldTable,
    now_ms: u64,
    queue: &str,
    vhost: &str,
) -> AmqpResult<ConsumerSpec> {
    let t = args.inner();
    let start = start_of(t.get("x-stream-offset"), now_ms, queue, vhost)?;
    if let Some(k) = t
        .keys()
        .find(|k| NOT_FOR_STREAM_CONSUMERS.contains(&k.as_str()))
    {
        return Err(AmqpError::precondition(format!(
            "invalid arg '{}' for queue '{queue}' in vhost '{vhost}' of queue type \
             rabbit_stream_queue",
            k.as_str()
        )));
    }
    // As RabbitMQ 3.13 reads them: a string or an array of strings (other elements dropped);
    // anything else means no filter, and a match-unfiltered that is not a bool means false.
    let filter = t
        .get("x-stream-filter")
        .and_then(|v| match v {
            AMQPValue::FieldArray(a) => Some(
                a.as_slice()
                    .iter()
                    .filter_map(|x| str_bytes(x).map(<[u8]>::to_vec))
                    .collect::<Vec<_>>(),
            ),
            v => str_bytes(v).map(|s| vec![s.to_vec()]),
        })
        .map(|values| Filter {
            values,
            match_unfiltered: matches!(
                t.get("x-stream-match-unfiltered"),
                Some(AMQPValue::Boolean(true))
            ),
        });
    let name = match t.get("x-stream-consumer-name") {
        None => None,
        Some(v) => match str_bytes(v) {
            Some(s) if !s.is_empty() && s.len() <= 255 => {
                Some(String::from_utf8_lossy(s).into_owned())
            }
            _ => {
                return Err(AmqpError::precondition(format!(
                    "invalid arg 'x-stream-consumer-name' for queue '{queue}' in vhost \
                     '{vhost}': expected a non-empty string of at most 255 bytes"
                )))
            }
        },
    };
    let single_active = match t.get("x-single-active-consumer") {
        None => false,
        Some(AMQPValue::Boolean(b)) => *b,
        Some(v) => {
            return Err(AmqpError::precondition(format!(
                "invalid arg 'x-single-active-consumer' for queue '{queue}' in vhost \
                 '{vhost}': {{unacceptable_type,{}}}",
                type_name(v)
            )))
        }
    };
    if single_active && name.is_none() {
        return Err(AmqpError::precondition(format!(
            "invalid arg 'x-single-active-consumer' for queue '{queue}' in vhost '{vhost}': a \
             single active consumer of a stream needs an x-stream-consumer-name"
        )));
    }
    Ok(ConsumerSpec {
        start,
        filter,
        name,
        single_active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_rabbitmq_reads_them() {
        assert_eq!(parse_age(b"7D"), Some(7 * 86_400_000));
        assert_eq!(parse_age(b"12h"), Some(12 * 3_600_000));
        assert_eq!(parse_age(b"30m"), Some(30 * 60_000));
        assert_eq!(parse_age(b"10s"), Some(10_000));
        assert_eq!(parse_age(b"1Y"), Some(365 * 86_400_000));
        assert_eq!(parse_age(b"2M"), Some(60 * 86_400_000));
        for bad in [
            &b"0D"[..],
            b"abc",
            b"D",
            b"10",
            b"10d",
            b"1.5h",
            b"-1h",
            b"",
            b"1hh",
        ] {
            assert_eq!(parse_age(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    fn spec(k: &str, v: AMQPValue) -> AmqpResult<ConsumerSpec> {
        let mut t = FieldTable::default();
        t.insert(k.into(), v);
        consumer_spec(&t, 10_000_000, "s", "/")
    }

    #[test]
    fn offsets() {
        let s = |x: &str| AMQPValue::LongString(x.into());
        let start = |v| spec("x-stream-offset", v).map(|c| c.start);
        assert_eq!(
            consumer_spec(&FieldTable::default(), 0, "s", "/")
                .unwrap()
                .start,
            Start::Next
        );
        assert_eq!(start(s("first")).unwrap(), Start::First);
        assert_eq!(start(s("last")).unwrap(), Start::Last);
        assert_eq!(start(s("next")).unwrap(), Start::Next);
        assert_eq!(start(AMQPValue::LongInt(5)).unwrap(), Start::Offset(5));
        assert_eq!(
            start(AMQPValue::ShortShortUInt(0)).unwrap(),
            Start::Offset(0)
        );
        assert_eq!(
            start(AMQPValue::Timestamp(7)).unwrap(),
            Start::Timestamp(7000)
        );
        assert_eq!(
            start(s("1h")).unwrap(),
            Start::Timestamp(10_000_000 - 3_600_000)
        );
        assert_eq!(start(s("1Y")).unwrap(), Start::Timestamp(0));
        // As RabbitMQ: a negative offset is the first.
        assert_eq!(start(AMQPValue::LongInt(-1)).unwrap(), Start::First);
        assert_eq!(
            start(AMQPValue::ByteArray(b"first".to_vec().into())).unwrap(),
            Start::First
        );
        assert_eq!(
            start(s("5")).unwrap_err().reply_text(),
            "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': \
             {invalid_stream_offset_arg,{longstr,<<\"5\">>}}"
        );
        assert_eq!(start(s("abc")).unwrap_err().code, 406);
        assert!(spec("x-priority", AMQPValue::LongInt(5))
            .unwrap_err()
            .reply_text()
            .ends_with("of queue type rabbit_stream_queue"));
        assert_eq!(start(AMQPValue::Boolean(true)).unwrap_err().code, 406);
        assert_eq!(start(AMQPValue::Double(1.5)).unwrap_err().code, 406);
    }

    #[test]
    fn filters() {
        let s = |x: &str| AMQPValue::LongString(x.into());
        let f = spec("x-stream-filter", s("eu")).unwrap().filter.unwrap();
        assert!(f.matches(Some(b"eu")) && !f.matches(Some(b"us")) && !f.matches(None));
        let mut t = FieldTable::default();
        t.insert(
            "x-stream-filter".into(),
            AMQPValue::FieldArray(vec![s("eu"), s("us")].into()),
        );
        t.insert("x-stream-match-unfiltered".into(), AMQPValue::Boolean(true));
        let f = consumer_spec(&t, 0, "s", "/").unwrap().filter.unwrap();
        assert!(f.matches(Some(b"us")) && f.matches(None) && !f.matches(Some(b"ap")));
        // As RabbitMQ 3.13: a filter that is not a string (or strings) is no filter, a
        // match-unfiltered that is not a bool is false.
        assert_eq!(
            spec("x-stream-filter", AMQPValue::LongInt(1))
                .unwrap()
                .filter,
            None
        );
        t.insert("x-stream-match-unfiltered".into(), s("yes"));
        assert!(
            !consumer_spec(&t, 0, "s", "/")
                .unwrap()
                .filter
                .unwrap()
                .match_unfiltered
        );
        assert!(spec("x-stream-consumer-name", s("")).is_err());
        assert_eq!(
            spec("x-stream-consumer-name", s("app-1"))
                .unwrap()
                .name
                .as_deref(),
            Some("app-1")
        );
    }
}
