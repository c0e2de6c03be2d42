//! Field tables as JSON, the way RabbitMQ's management API shows and accepts arguments, headers
//! and client properties.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

pub fn value_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::Float(f) => Number::from_f64(*f as f64).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Number::from_f64(d.value as f64 / 10f64.powi(d.scale as i32))
            .map_or(Value::Null, Value::Number),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect::<Map<String, Value>>(),
    )
}

/// Why JSON could not become a field table.
#[derive(Debug, thiserror::Error)]
pub enum JsonTableError {
    #[error("expected a JSON object for a table, got {0}")]
    NotAnObject(&'static str),
    #[error("table key longer than 255 bytes")]
    LongKey,
    #[error("tables nested too deeply")]
    TooDeep,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_value(v: &Value, depth: u32) -> Result<AMQPValue, JsonTableError> {
    if depth > 32 {
        return Err(JsonTableError::TooDeep);
    }
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) if n.is_u64() => AMQPValue::LongLongInt(f.min(i64::MAX as f64) as i64),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter()
                .map(|x| json_value(x, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(_) => AMQPValue::FieldTable(json_table(v, depth + 1)?),
    })
}

fn json_table(v: &Value, depth: u32) -> Result<FieldTable, JsonTableError> {
    let Value::Object(m) = v else {
        return Err(JsonTableError::NotAnObject(kind(v)));
    };
    let mut t = FieldTable::default();
    for (k, v) in m {
        let key = ShortString::try_new(k.as_str()).map_err(|_| JsonTableError::LongKey)?;
        t.insert(key, json_value(v, depth)?);
    }
    Ok(t)
}

/// A JSON object as a field table (null or absent: empty). Integers become 64-bit integers,
/// other numbers doubles, strings long strings, as RabbitMQ's management plugin does.
pub fn json_to_table(v: Option<&Value>) -> Result<FieldTable, JsonTableError> {
    match v {
        None | Some(Value::Null) => Ok(FieldTable::default()),
        Some(v) => json_table(v, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let j = serde_json::json!({"a": 1, "b": "x", "c": [true, 2.5], "d": {"e": null}});
        let t = json_to_table(Some(&j)).unwrap();
        assert_eq!(table_to_json(&t), j);
        assert!(json_to_table(Some(&serde_json::json!([1]))).is_err());
        assert!(json_to_table(Some(&serde_json::json!({"k".repeat(300): 1}))).is_err());
    }
}
