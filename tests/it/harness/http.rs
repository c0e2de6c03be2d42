//! An HTTP client for the management API (ureq, on a blocking thread).

use super::Broker;
use serde_json::Value;
use std::time::Duration;

/// One HTTP answer.
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP request from a blocking thread (the broker runs on this test's runtime).
pub async fn request(
    method: &str,
    url: String,
    auth: Option<(&str, &str)>,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Resp {
    use base64::Engine;
    let method = method.to_owned();
    let auth = auth.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut b = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(&url);
        if let Some(a) = &auth {
            b = b.header("Authorization", a);
        }
        for (k, v) in &headers {
            b = b.header(k, v);
        }
        let r = match body {
            Some(text) => agent.run(
                b.header("Content-Type", "application/json")
                    .body(text.into_bytes())
                    .unwrap(),
            ),
            None => agent.run(b.body(()).unwrap()),
        };
        let mut r = r.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = r
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            body,
            text,
            headers,
        }
    })
    .await
    .unwrap()
}

/// Management API calls as guest against one broker.
pub struct Api {
    pub base: String,
}

impl Api {
    pub fn of(b: &Broker) -> Api {
        Api {
            base: format!("http://{}", b.handle.http_addr),
        }
    }
    pub async fn get(&self, path: &str) -> Resp {
        request(
            "GET",
            format!("{}{path}", self.base),
            Some(GUEST),
            None,
            &[],
        )
        .await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send("PUT", path, body).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, body).await
    }
    pub async fn send(&self, method: &str, path: &str, body: Value) -> Resp {
        let url = format!("{}{path}", self.base);
        request(method, url, Some(GUEST), Some(body.to_string()), &[]).await
    }
    pub async fn raw(&self, method: &str, path: &str, body: &str) -> Resp {
        let url = format!("{}{path}", self.base);
        request(method, url, Some(GUEST), Some(body.to_owned()), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        request(
            "DELETE",
            format!("{}{path}", self.base),
            Some(GUEST),
            None,
            &[],
        )
        .await
    }
}

pub const GUEST: (&str, &str) = ("guest", "guest");

/// Wait until `f` holds for the JSON at `path`.
pub async fn eventually(api: &Api, path: &str, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let r = api.get(path).await;
        if r.status == 200 && f(&r.body) {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{path} never satisfied the condition: {}",
        api.get(path).await.text
    );
}
