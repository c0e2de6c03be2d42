//! The HTTP client of the management API: one request at a time, with basic auth, and the
//! broker's answer turned into JSON or into a `Failure` with rabbitmqctl's exit code.

use crate::{Cli, Failure, Res};
use anyhow::anyhow;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use std::time::Duration;

const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` as one URL path segment.
pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The API at `--url`, as `--username`.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Client {
    /// The client for `--url`; with `--cacert`, https:// servers are verified against the CA
    /// certificates in that file (exit code 64 if it cannot be read).
    pub fn new(cli: &Cli) -> Res<Self> {
        use base64::Engine;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)));
        if let Some(path) = &cli.cacert {
            let bad = |m: String| Failure {
                code: 64,
                message: format!("cannot use --cacert {}: {m}", path.display()),
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let agent: ureq::Agent = config.build().into();
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", cli.username, cli.password));
        Ok(Client {
            agent,
            base: cli.url.trim_end_matches('/').to_owned(),
            auth: format!("Basic {auth}"),
        })
    }

    /// One request; `what` names the object for a 404 ("queue 'q' in vhost '/'").
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>, what: &str) -> Res<Value> {
        self.call_with(method, path, body, what, None)
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        what: &str,
        reason: Option<&str>,
    ) -> Res<Value> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| Failure {
            code: 69,
            message: format!("cannot reach Warren at {}: {e}", self.base),
        };
        let r = match method {
            "GET" => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .call(),
            "DELETE" => {
                let mut rq = self.agent.delete(&url).header("Authorization", &self.auth);
                if let Some(x) = reason {
                    rq = rq.header("X-Reason", x);
                }
                rq.call()
            }
            m => {
                let text = body.map(Value::to_string).unwrap_or_else(|| "{}".into());
                let rq = if m == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                rq.header("Authorization", &self.auth)
                    .header("Content-Type", "application/json")
                    .send(text.as_bytes())
            }
        };
        let mut resp = r.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let reason = parsed
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or(text.trim())
            .to_owned();
        match status {
            200..=299 => Ok(parsed),
            401 => Err(Failure {
                code: 77,
                message: format!("access refused for user '{}': {reason}", self.user()),
            }),
            404 => Err(Failure {
                code: 1,
                message: format!("{what} not found"),
            }),
            400 => Err(Failure {
                code: 65,
                message: reason,
            }),
            s => Err(Failure {
                code: 70,
                message: format!("broker answered {s}: {reason}"),
            }),
        }
    }

    fn user(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim_start_matches("Basic "))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, _)| u.to_owned()))
            .unwrap_or_default()
    }
}

/// GET a collection.
pub fn list(c: &Client, path: &str, what: &str) -> Res<Vec<Value>> {
    match c.call("GET", path, None, what)? {
        Value::Array(a) => Ok(a),
        other => Err(anyhow!("unexpected answer: {other}").into()),
    }
}
