//! A bound on how deeply a client's field tables and arrays nest, checked before any of them is
//! parsed.
//!
//! amq-protocol parses nested tables recursively, about 1.4 KB of stack per level: a 7.5 KB frame
//! nesting arrays 1,500 deep overflowed a tokio worker's stack and aborted the whole broker, even
//! before login (connection.start-ok carries a table). So every table a client can send — the
//! table argument of the methods that have one, and the `headers` property of a content header —
//! is first walked here, iteratively, and refused past `MAX_DEPTH` with 502 SYNTAX_ERROR. RabbitMQ
//! (whose Erlang parser cannot overflow) has no such limit; real clients nest a few levels.
//!
//! The walk mirrors amq-protocol's value types (RabbitMQ's flavour: `s` is a short int). Input
//! it cannot follow (a length past the end, an unknown type) is left to the real parser, which
//! rejects it: a nested value always lies within its parent's declared length, so nothing can
//! hide past a point where the walk stops.

use crate::error::{code, AmqpError, AmqpResult};

/// Nesting allowed: a method's argument table or the headers table is level 1.
pub const MAX_DEPTH: usize = 64;

/// What precedes the table argument of each client method that has one.
#[derive(Clone, Copy)]
enum Field {
    U8,
    U16,
    ShortStr,
}

fn before_table(class_id: u16, method_id: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match (class_id, method_id) {
        (10, 10) => &[U8, U8], // connection.start: version, then table
        (10, 11) => &[],       // connection.start-ok: client-properties
        (40, 10) => &[U16, ShortStr, ShortStr, U8], // exchange.declare
        (40, 30) | (40, 40) => &[U16, ShortStr, ShortStr, ShortStr, U8], // exchange.(un)bind
        (50, 10) => &[U16, ShortStr, U8], // queue.declare
        (50, 20) => &[U16, ShortStr, ShortStr, ShortStr, U8], // queue.bind
        (50, 50) => &[U16, ShortStr, ShortStr, ShortStr], // queue.unbind (no no-wait)
        (60, 20) => &[U16, ShortStr, ShortStr, U8], // basic.consume
        _ => return None,
    })
}

fn too_deep(class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::connection(
        code::SYNTAX_ERROR,
        format!("field table nested more than {MAX_DEPTH} levels deep"),
    )
    .at(class_id, method_id)
}

/// Check the table argument of a method frame's payload (class and method ids first).
pub fn check_method(class_id: u16, method_id: u16, payload: &[u8]) -> AmqpResult<()> {
    let Some(fields) = before_table(class_id, method_id) else {
        return Ok(());
    };
    let mut pos = 4;
    for f in fields {
        pos += match f {
            Field::U8 => 1,
            Field::U16 => 2,
            Field::ShortStr => match payload.get(pos) {
                Some(&n) => 1 + n as usize,
                None => return Ok(()),
            },
        };
    }
    match payload.get(pos..) {
        Some(table) if !depth_within(table, MAX_DEPTH) => Err(too_deep(class_id, method_id)),
        _ => Ok(()),
    }
}

/// Check the `headers` property in a content header's property list (flags first).
pub fn check_properties(props: &[u8]) -> AmqpResult<()> {
    let Some(flags) = props.get(..2).map(|f| u16::from_be_bytes([f[0], f[1]])) else {
        return Ok(());
    };
    let mut pos = 2;
    let mut more = flags & 1 != 0;
    while more {
        // Continuation flag words (basic has only 14 properties; skip them as a parser would).
        let Some(w) = props.get(pos..pos + 2) else {
            return Ok(());
        };
        more = w[1] & 1 != 0;
        pos += 2;
    }
    for bit in [15, 14] {
        // content-type, content-encoding: short strings before the headers.
        if flags & (1 << bit) != 0 {
            match props.get(pos) {
                Some(&n) => pos += 1 + n as usize,
                None => return Ok(()),
            }
        }
    }
    if flags & (1 << 13) == 0 {
        return Ok(());
    }
    match props.get(pos..) {
        Some(table) if !depth_within(table, MAX_DEPTH) => Err(too_deep(60, 40)),
        _ => Ok(()),
    }
}

fn u32_at(b: &[u8], pos: usize) -> Option<usize> {
    b.get(pos..pos + 4)
        .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]) as usize)
}

/// Whether the field table at the start of `b` nests tables and arrays at most `max` deep
/// (counting itself as 1). Iterative: the walk's own memory is bounded by `max`.
pub fn depth_within(b: &[u8], max: usize) -> bool {
    // Open containers: (end offset, is a table: entries have names).
    let mut open: Vec<(usize, bool)> = Vec::new();
    let Some(len) = u32_at(b, 0) else {
        return true;
    };
    let mut pos = 4;
    open.push(((pos + len).min(b.len()), true));
    while let Some(&(end, table)) = open.last() {
        if pos >= end {
            open.pop();
            pos = end;
            continue;
        }
        if table {
            let Some(&n) = b.get(pos) else {
                return true;
            };
            pos += 1 + n as usize; // the entry's name
        }
        let Some(&tag) = b.get(pos) else {
            return true;
        };
        pos += 1;
        let fixed = match tag {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'S' | b'x' => match u32_at(b, pos) {
                Some(n) => 4 + n,
                None => return true,
            },
            b'A' | b'F' => {
                let Some(n) = u32_at(b, pos) else {
                    return true;
                };
                if open.len() >= max {
                    return false;
                }
                pos += 4;
                open.push(((pos + n).min(end), tag == b'F'));
                continue;
            }
            _ => return true, // unknown type: the parser refuses the frame
        };
        pos += fixed;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table holding one entry "x" whose value nests `depth - 1` more containers of `kind`.
    fn nested(depth: usize, kind: u8) -> Vec<u8> {
        let mut v = b"V".to_vec();
        for _ in 1..depth {
            let mut inner = Vec::new();
            if kind == b'F' {
                inner.extend_from_slice(&[1, b'a']);
            }
            inner.extend_from_slice(&v);
            v = vec![kind];
            v.extend_from_slice(&(inner.len() as u32).to_be_bytes());
            v.extend_from_slice(&inner);
        }
        let mut entry = vec![1, b'x'];
        entry.extend_from_slice(&v);
        let mut t = (entry.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&entry);
        t
    }

    #[test]
    fn depth_is_counted_for_tables_and_arrays() {
        for kind in [b'F', b'A'] {
            assert!(depth_within(&nested(1, kind), 1));
            assert!(depth_within(&nested(64, kind), 64));
            assert!(!depth_within(&nested(65, kind), 64));
            assert!(!depth_within(&nested(20_000, kind), 64));
        }
    }

    #[test]
    fn every_value_type_is_skipped_as_amq_protocol_parses_it() {
        use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
        let mut inner = FieldTable::default();
        inner.insert("n".into(), AMQPValue::LongLongInt(-1));
        let mut t = FieldTable::default();
        let values = [
            AMQPValue::Boolean(true),
            AMQPValue::ShortShortInt(-1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(-2),
            AMQPValue::ShortUInt(2),
            AMQPValue::LongInt(-3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(-4),
            AMQPValue::Float(1.5),
            AMQPValue::Double(2.5),
            AMQPValue::DecimalValue(amq_protocol::types::DecimalValue { scale: 2, value: 7 }),
            AMQPValue::LongString("long".into()),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner.clone())])),
            AMQPValue::Timestamp(9),
            AMQPValue::ByteArray(vec![1, 2, 3].into()),
            AMQPValue::Void,
            AMQPValue::FieldTable(inner),
        ];
        for (i, v) in values.into_iter().enumerate() {
            t.insert(format!("k{i}").into(), v);
        }
        let mut buf = vec![0u8; 4096];
        let n = {
            let (_, pos) = cookie_factory::gen(
                amq_protocol::types::generation::gen_field_table(&t),
                &mut buf[..],
            )
            .unwrap();
            pos as usize
        };
        let bytes = &buf[..n];
        assert!(depth_within(bytes, 3)); // table > array > table
        assert!(!depth_within(bytes, 2));
    }

    #[test]
    fn method_and_property_tables_are_found() {
        // queue.declare: class 50, method 10, reserved u16, queue "q", bits, arguments.
        let mut p = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        p.extend_from_slice(&nested(100, b'A'));
        assert!(check_method(50, 10, &p).is_err());
        let mut ok = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
        ok.extend_from_slice(&nested(3, b'A'));
        assert!(check_method(50, 10, &ok).is_ok());
        // connection.start-ok: the table comes first.
        let mut s = vec![0, 10, 0, 11];
        s.extend_from_slice(&nested(1500, b'A'));
        assert_eq!(
            check_method(10, 11, &s).unwrap_err().code,
            code::SYNTAX_ERROR
        );
        // Properties: content-type "t", then headers.
        let mut props = vec![0b1010_0000, 0, 1, b't'];
        props.extend_from_slice(&nested(100, b'F'));
        assert!(check_properties(&props).is_err());
        let mut props = vec![0b1010_0000, 0, 1, b't'];
        props.extend_from_slice(&nested(2, b'F'));
        assert!(check_properties(&props).is_ok());
    }
}
