//! API errors, answered as RabbitMQ's management plugin answers them.

use crate::error::{code, AmqpError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    /// 404 {"error":"Object Not Found","reason":"Not Found"}
    NotFound,
    /// 401 with `WWW-Authenticate`.
    Unauthorized(&'static str),
    /// 400 {"error":"bad_request","reason":…}
    BadRequest(String),
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
        } else if e.code == code::ACCESS_REFUSED {
            // RabbitMQ answers refused operations (amq.* names, the default exchange) so.
            ApiError::Other(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                "Access refused.".into(),
            )
        } else {
            ApiError::BadRequest(e.text)
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

/// Parse a JSON request body (an empty body is `{}`); bad JSON is a 400, never a 500.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("not_json: expected a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad(format!("Invalid JSON: {e}")))
}
