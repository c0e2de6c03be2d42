//! Message properties as JSON, both ways (for /get and /publish).

use super::error::lenient;
use super::{ApiError, ApiResult};
use crate::broker::json::{json_to_table, table_to_json};
use crate::broker::message::Properties;
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::ShortString;
use serde_json::{json, Map, Value};

pub fn properties_to_json(p: &Properties) -> Value {
    let Some(p) = p.decode() else {
        return Value::Object(Map::new());
    };
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), Value::String(v.as_str().to_owned()));
        }
    };
    s("content_type", p.content_type());
    s("content_encoding", p.content_encoding());
    s("correlation_id", p.correlation_id());
    s("reply_to", p.reply_to());
    s("expiration", p.expiration());
    s("message_id", p.message_id());
    s("type", p.kind());
    s("user_id", p.user_id());
    s("app_id", p.app_id());
    s("cluster_id", p.cluster_id());
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    if let Some(d) = p.delivery_mode() {
        m.insert("delivery_mode".into(), (*d).into());
    }
    if let Some(x) = p.priority() {
        m.insert("priority".into(), (*x).into());
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), (*t).into());
    }
    Value::Object(m)
}

/// A message's properties as /get shows them: none at all is `[]`, as RabbitMQ answers (its
/// empty property list encodes as an array), so `rabbitmqadmin get` lists the same columns.
pub fn get_properties_json(p: &Properties) -> Value {
    match properties_to_json(p) {
        Value::Object(m) if m.is_empty() => Value::Array(Vec::new()),
        v => v,
    }
}

/// A property of the wrong kind is refused as RabbitMQ refuses it: `["not_string", name]` or
/// `["not_int", name]` (Warren also takes numbers for strings and digits for integers).
fn refuse(kind: &str, k: &str) -> ApiError {
    ApiError::BadValue(json!([kind, k]))
}

fn short(k: &str, v: &Value) -> ApiResult<ShortString> {
    let text = lenient::text_of(v).map_err(|_| refuse("not_string", k))?;
    ShortString::try_new(text).map_err(|_| ApiError::bad(format!("property {k} is too long")))
}

fn int(k: &str, v: &Value) -> ApiResult<i64> {
    match v {
        // RabbitMQ takes no fractions here.
        Value::Number(n) if n.is_f64() => Err(refuse("not_int", k)),
        _ => lenient::int_of(v).map_err(|_| refuse("not_int", k)),
    }
}

fn small_int(k: &str, v: &Value) -> ApiResult<u8> {
    u8::try_from(int(k, v)?)
        .map_err(|_| ApiError::bad(format!("property {k} must be an integer 0-255")))
}

/// The `properties` object of a publish request as AMQP properties.
pub fn json_to_properties(v: Option<&Value>) -> ApiResult<Properties> {
    let mut p = AMQPProperties::default();
    if let Some(v) = v.filter(|v| !v.is_null()) {
        let Value::Object(m) = v else {
            return Err(ApiError::bad("properties must be an object"));
        };
        for (k, v) in m {
            p = match k.as_str() {
                "content_type" => p.with_content_type(short(k, v)?),
                "content_encoding" => p.with_content_encoding(short(k, v)?),
                "correlation_id" => p.with_correlation_id(short(k, v)?),
                "reply_to" => p.with_reply_to(short(k, v)?),
                "expiration" => p.with_expiration(short(k, v)?),
                "message_id" => p.with_message_id(short(k, v)?),
                "type" => p.with_type(short(k, v)?),
                "user_id" => p.with_user_id(short(k, v)?),
                "app_id" => p.with_app_id(short(k, v)?),
                "cluster_id" => p.with_cluster_id(short(k, v)?),
                "delivery_mode" => p.with_delivery_mode(small_int(k, v)?),
                "priority" => p.with_priority(small_int(k, v)?),
                "timestamp" => p.with_timestamp(
                    u64::try_from(int(k, v)?)
                        .map_err(|_| ApiError::bad("property timestamp must not be negative"))?,
                ),
                "headers" => p.with_headers(
                    json_to_table(Some(v)).map_err(|e| ApiError::bad(format!("headers: {e}")))?,
                ),
                other => return Err(ApiError::bad(format!("unknown property '{other}'"))),
            };
        }
    }
    let props =
        Properties::encode(&p).ok_or_else(|| ApiError::bad("properties cannot be encoded"))?;
    if let Err(why) = props.ttl_ms() {
        return Err(ApiError::bad(format!("invalid expiration: {why}")));
    }
    Ok(props)
}
