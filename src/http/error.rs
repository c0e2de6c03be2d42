//! API errors, answered as RabbitMQ's management plugin answers them.

use crate::error::{code, AmqpError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{Deserialize, Deserializer};
use serde_json::{json, Value};

#[derive(Debug)]
pub enum ApiError {
    /// 404 {"error":"Object Not Found","reason":"Not Found"}
    NotFound,
    /// 401 with `WWW-Authenticate`.
    Unauthorized(&'static str),
    /// 400 {"error":"bad_request","reason":…}
    BadRequest(String),
    /// 400 whose reason is JSON, as RabbitMQ answers a body value of the wrong kind:
    /// {"error":"bad_request","reason":["not_boolean","maybe"]}.
    BadValue(Value),
    /// 503 for failing health checks.
    Unavailable(String),
    /// Any other status with RabbitMQ's {"error": kind, "reason": …} body.
    Other(StatusCode, &'static str, String),
    /// 500 {"error":"internal_server_error","reason":…}, as RabbitMQ answers a change it could
    /// not make (e.g. the store refused it); the reason is the error's text, also logged.
    Internal(String),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn bad(reason: impl Into<String>) -> Self {
        ApiError::BadRequest(reason.into())
    }
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        if e.code == code::NOT_FOUND {
            ApiError::NotFound
        } else if e.code == code::INTERNAL_ERROR {
            // A change the store could not persist (RabbitMQ's 500 shape; nothing changed).
            ApiError::Internal(e.into_exception().text)
        } else if e.code == code::ACCESS_REFUSED {
            // RabbitMQ answers refused operations (amq.* names, the default exchange) so.
            ApiError::Other(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                "Access refused.".into(),
            )
        } else {
            ApiError::BadRequest(e.into_exception().text)
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!("{e}");
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "Object Not Found", "reason": "Not Found"})),
            )
                .into_response(),
            ApiError::Unauthorized(reason) => {
                let mut r = (
                    StatusCode::UNAUTHORIZED,
                    Json(json!({"error": "not_authorized", "reason": reason})),
                )
                    .into_response();
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
                );
                r
            }
            ApiError::BadRequest(reason) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad_request", "reason": reason})),
            )
                .into_response(),
            ApiError::BadValue(reason) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "bad_request", "reason": reason})),
            )
                .into_response(),
            ApiError::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "failed", "reason": reason})),
            )
                .into_response(),
            ApiError::Internal(reason) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "internal_server_error", "reason": reason})),
            )
                .into_response(),
            ApiError::Other(status, error, reason) => {
                (status, Json(json!({"error": error, "reason": reason}))).into_response()
            }
        }
    }
}

/// Parse a JSON request body (an empty body is `{}`); bad JSON is a 400, never a 500. A field
/// read with one of the [`lenient`] helpers that holds a value RabbitMQ would refuse answers
/// RabbitMQ's 400 for it.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("not_json: expected a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        // A lenient helper's refusal travels through serde as a tagged message (from_value
        // errors carry no position, so the message is exactly what the helper wrote).
        match msg.strip_prefix(lenient::TAG).map(serde_json::from_str) {
            Some(Ok(reason)) => ApiError::BadValue(reason),
            _ => ApiError::bad(format!("Invalid JSON: {msg}")),
        }
    })
}

/// RabbitMQ's management API takes booleans and integers in request bodies either as JSON
/// values or as strings (`"durable": "false"`, `"count": "1"`: what `rabbitmqadmin` sends), and
/// refuses anything else with `["not_boolean", value]` / `["not_integer", value]` as the reason
/// (checked against RabbitMQ 3.10). One place for it, used by every body that has such fields:
/// `#[serde(default, deserialize_with = "lenient::bool")]` and friends, or [`lenient::bool_of`]
/// on a JSON value (definitions import). The `*_of` functions' error is RabbitMQ's reason.
pub mod lenient {
    use super::*;

    pub(super) const TAG: &str = "\u{1}lenient-reason:";

    fn refuse(kind: &str, v: &Value) -> Value {
        json!([kind, v])
    }

    /// `true`/`false`, or exactly the strings "true"/"false" (not "True", "1" or 1; a null is
    /// refused too, as RabbitMQ does).
    pub fn bool_of(v: &Value) -> Result<bool, Value> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            _ => Err(refuse("not_boolean", v)),
        }
    }

    /// An integer: a JSON integer, a JSON float (truncated toward zero), or a string of decimal
    /// digits with an optional sign ("+1", "01", "-1"; not " 1", "1.5" or "1e0"). Values beyond
    /// i64 saturate.
    pub fn int_of(v: &Value) -> Result<i64, Value> {
        match v {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(i)
                } else if n.as_u64().is_some() {
                    Ok(i64::MAX)
                } else {
                    // `as` truncates toward zero and saturates.
                    Ok(n.as_f64().map_or(0, |f| f as i64))
                }
            }
            Value::String(s) => {
                let (neg, digits) = match s.as_bytes().first() {
                    Some(b'-') => (true, &s[1..]),
                    Some(b'+') => (false, &s[1..]),
                    _ => (false, s.as_str()),
                };
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(refuse("not_integer", v));
                }
                Ok(match (digits.parse::<i64>(), neg) {
                    (Ok(i), false) => i,
                    (Ok(i), true) => -i,
                    (Err(_), false) => i64::MAX,
                    (Err(_), true) => i64::MIN,
                })
            }
            _ => Err(refuse("not_integer", v)),
        }
    }

    /// A string, or a number written out (RabbitMQ takes `"routing_key": 5`).
    pub fn text_of(v: &Value) -> Result<String, Value> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(refuse("not_string", v)),
        }
    }

    /// A serde error that [`parse_body`] answers as a 400 with `reason` (JSON) as its reason.
    pub fn reason_error<E: serde::de::Error>(reason: Value) -> E {
        E::custom(format!("{TAG}{reason}"))
    }

    fn with<'de, D: Deserializer<'de>, T>(
        d: D,
        f: fn(&Value) -> Result<T, Value>,
    ) -> Result<T, D::Error> {
        f(&Value::deserialize(d)?).map_err(reason_error)
    }

    pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        with(d, bool_of)
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        with(d, bool_of).map(Some)
    }

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        with(d, int_of)
    }

    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        with(d, int_of).map(Some)
    }

    pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        with(d, text_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[serde(default, deserialize_with = "lenient::bool")]
        flag: bool,
        #[serde(default, deserialize_with = "lenient::opt_int")]
        n: Option<i64>,
        #[serde(default, deserialize_with = "lenient::text")]
        key: String,
    }

    fn reason(body: &str) -> Value {
        match parse_body::<Body>(body.as_bytes()) {
            Err(ApiError::BadValue(v)) => v,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn booleans_and_integers_as_strings() {
        let b: Body = parse_body(br#"{"flag":"true","n":"-12","key":5}"#).unwrap();
        assert!(b.flag);
        assert_eq!(b.n, Some(-12));
        assert_eq!(b.key, "5");
        let b: Body = parse_body(br#"{"flag":"false","n":2.9}"#).unwrap();
        assert!(!b.flag);
        assert_eq!(b.n, Some(2));
        let b: Body = parse_body(br#"{"flag":true,"n":"+01"}"#).unwrap();
        assert!(b.flag);
        assert_eq!(b.n, Some(1));
        let b: Body = parse_body(b"").unwrap();
        assert!(!b.flag);
        assert_eq!(b.n, None);
        let b: Body = parse_body(br#"{"n":"99999999999999999999"}"#).unwrap();
        assert_eq!(b.n, Some(i64::MAX));
    }

    #[test]
    fn junk_is_refused_with_rabbitmqs_reason() {
        for (body, want) in [
            (r#"{"flag":"maybe"}"#, json!(["not_boolean", "maybe"])),
            (r#"{"flag":"True"}"#, json!(["not_boolean", "True"])),
            (r#"{"flag":1}"#, json!(["not_boolean", 1])),
            (r#"{"flag":null}"#, json!(["not_boolean", null])),
            (r#"{"flag":[]}"#, json!(["not_boolean", []])),
            (r#"{"n":"junk"}"#, json!(["not_integer", "junk"])),
            (r#"{"n":"1.5"}"#, json!(["not_integer", "1.5"])),
            (r#"{"n":" 1"}"#, json!(["not_integer", " 1"])),
            (r#"{"n":"-"}"#, json!(["not_integer", "-"])),
            (r#"{"n":true}"#, json!(["not_integer", true])),
            (r#"{"n":null}"#, json!(["not_integer", null])),
            (r#"{"key":{}}"#, json!(["not_string", {}])),
        ] {
            assert_eq!(reason(body), want, "{body}");
        }
        // Other mistakes keep their plain-text reason.
        assert!(matches!(
            parse_body::<Body>(br#"{"flag":"#),
            Err(ApiError::BadRequest(_))
        ));
    }
}
