//! The management listener: RabbitMQ's HTTP API under `/api` (HTTP basic auth against Warren's
//! users), the dashboard from `web/` (embedded at build time) at `/`, and Prometheus metrics at
//! `/metrics` (also on the dedicated listener, without auth, as rabbitmq_prometheus serves them).
//!
//! One module per RabbitMQ resource; `paging` is the shared list handling; `error` the one
//! `IntoResponse` for API errors. Handlers read snapshots (queue counts under one short lock,
//! counters summed on read) and never block the message path.

mod auth_attempts;
mod bindings;
mod cluster;
mod connections;
mod definitions;
mod error;
mod exchanges;
mod limits;
mod message;
mod overview;
mod paging;
mod queues;
mod scope;
mod super_streams;
mod users;

use crate::auth::throttle::Protocol;
use crate::broker::vhost::VHost;
use crate::ServerState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
pub use error::{ApiError, ApiResult};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type St = State<Arc<ServerState>>;

/// The dashboard's files, compiled into the binary.
#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct Assets;

/// The user a request is authenticated as.
#[derive(Debug, Clone)]
pub struct ApiUser {
    pub name: String,
    pub tags: Vec<String>,
}

impl ApiUser {
    pub fn is_admin(&self) -> bool {
        self.tags.iter().any(|t| t == "administrator")
    }

    /// Node details: administrators and monitoring users.
    pub fn require_monitor(&self) -> ApiResult<()> {
        if self.is_admin() || self.tags.iter().any(|t| t == "monitoring") {
            Ok(())
        } else {
            Err(ApiError::Other(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                "Not monitor user".into(),
            ))
        }
    }

    /// Administrator-only endpoints (users, vhosts, permissions, definitions).
    pub fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Other(
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                "Not administrator user".into(),
            ))
        }
    }
}

/// The node name shown in every object: `node_name` from the config, else `warren@host`.
pub fn node_name() -> &'static str {
    crate::config::this_node()
}

/// In a cluster: propose a definition change and wait until this node has applied it (None
/// when this node is alone: the caller changes the model itself). A refusal is the AMQP error
/// the change gave; a cluster without a reachable majority is a 503.
pub async fn replicate(
    st: &ServerState,
    op: impl FnOnce() -> crate::cluster::meta::MetaOp,
) -> Option<ApiResult<crate::cluster::meta::Applied>> {
    let c = st.broker.cluster()?;
    Some(match c.propose(op()).await {
        Ok(a) => match &a.error {
            Some(r) => Err(crate::broker::replicated::refusal_error(r).into()),
            None => Ok(a),
        },
        Err(why) => Err(ApiError::Unavailable(why)),
    })
}

/// A change of vhosts, users, permissions or limits (`broker::admin`): in a cluster proposed
/// and answered once applied here (every node applies it), alone applied here at once.
pub async fn change(st: &ServerState, op: crate::cluster::meta::MetaOp) -> ApiResult<()> {
    if st.broker.cluster().is_none() {
        return Ok(st.admin().apply(&op)?);
    }
    replicate(st, || op).await.map_or(Ok(()), |r| r.map(|_| ()))
}

/// Check a change against this node's state (`check`'s refusal is the answer); in a cluster a
/// refusal is checked again after catching up with the cluster, since what it lacked (a user,
/// a vhost) may just have been created through another node.
pub async fn checked(
    st: &ServerState,
    check: impl Fn(&crate::broker::admin::Admin) -> crate::error::AmqpResult<()>,
) -> ApiResult<()> {
    let Err(e) = check(&st.admin()) else {
        return Ok(());
    };
    match st.broker.cluster() {
        Some(c) if c.barrier().await.is_ok() => Ok(check(&st.admin())?),
        _ => Err(e.into()),
    }
}

/// Whether `exists` holds here; in a cluster, if not, once caught up with the cluster.
pub async fn known(st: &ServerState, exists: impl Fn() -> bool) -> bool {
    if exists() {
        return true;
    }
    match st.broker.cluster() {
        Some(c) => c.barrier().await.is_ok() && exists(),
        None => false,
    }
}

/// The vhost named in a path, or 404.
pub fn vhost(st: &ServerState, name: &str) -> ApiResult<Arc<VHost>> {
    st.broker.vhost(name).ok_or(ApiError::NotFound)
}

/// RabbitMQ's `{"rate": r}` detail object.
pub fn rate(r: f64) -> serde_json::Value {
    serde_json::json!({ "rate": (r * 10.0).round() / 10.0 })
}

async fn authenticate(
    State(st): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Basic ")
                .or_else(|| h.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, pass)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        // No credentials: not a login attempt (RabbitMQ does not count these either).
        return ApiError::Unauthorized("Login failed").into_response();
    };
    // In a cluster, a user or password this node does not know may have just been set
    // through another: catch up before refusing.
    let known = known(&st, || st.users.check_password(user, pass)).await;
    let refusal = if !known {
        Some("Login failed")
    } else if !st.users.allowed_from(user, peer.ip().is_loopback()) {
        Some("User can only log in via localhost")
    } else {
        None
    };
    // Failed logins, and every login from an address that failed recently, wait (auth::throttle).
    let delay = st.logins.delay(peer.ip(), refusal.is_some());
    if let Some(reason) = refusal {
        st.logins.count(Protocol::Http, false);
        tracing::warn!(user, %peer, delay_ms = delay.as_millis() as u64,
            "HTTP API authentication failed: {reason}");
        tokio::time::sleep(delay).await;
        return ApiError::Unauthorized(reason).into_response();
    }
    tokio::time::sleep(delay).await;
    let tags = st.users.user(user).map(|u| u.tags).unwrap_or_default();
    if !tags.iter().any(|t| {
        matches!(
            t.as_str(),
            "administrator" | "management" | "monitoring" | "policymaker"
        )
    }) {
        st.logins.count(Protocol::Http, false);
        return ApiError::Unauthorized("Not management user").into_response();
    }
    let user = ApiUser {
        name: user.to_owned(),
        tags,
    };
    let view = scope::Scope::of(&st, &user, req.method());
    if let Some(v) = scope::path_vhost(req.uri().path()) {
        // A vhost that does not exist is left to the handler's 404.
        if !view.sees_vhost(&v) && st.broker.vhost(&v).is_some() {
            st.logins.count(Protocol::Http, false);
            return scope::vhost_refused().into_response();
        }
    }
    req.extensions_mut().insert(user);
    // In a cluster, a GET that finds nothing is asked again once this node has caught up with
    // the cluster: what was created through another node is never "not found" here after its
    // answer (AMQP lookups do the same). Lists are not waited for.
    let again = match st.broker.cluster() {
        Some(c) if req.method() == axum::http::Method::GET => {
            let mut r = Request::new(axum::body::Body::empty());
            *r.uri_mut() = req.uri().clone();
            *r.headers_mut() = req.headers().clone();
            *r.extensions_mut() = req.extensions().clone();
            Some((c.clone(), r, next.clone(), view.clone()))
        }
        _ => None,
    };
    let mut resp = view.enter(next.run(req)).await;
    if let Some((c, r, next, view)) = again {
        if resp.status() == StatusCode::NOT_FOUND && c.barrier().await.is_ok() {
            resp = view.enter(next.run(r)).await;
        }
    }
    // As RabbitMQ, a request refused for the user's tags or permissions counts as a failed
    // attempt.
    st.logins
        .count(Protocol::Http, resp.status() != StatusCode::UNAUTHORIZED);
    resp
}

/// Files of the dashboard; `/` is index.html. Unknown `/api` paths are RabbitMQ's JSON 404.
async fn assets(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    if path == "api" || path.starts_with("api/") {
        return ApiError::NotFound.into_response();
    }
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_owned()
    };
    match Assets::get(&path) {
        Some(f) => {
            let mime = f.metadata.mimetype().to_owned();
            let mut r = f.data.into_owned().into_response();
            if let Ok(v) = HeaderValue::from_str(&mime) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

fn scrape(st: &ServerState) -> crate::metrics::Scrape<'_> {
    crate::metrics::Scrape {
        broker: &st.broker,
        registry: &st.connections,
        memory_limit: st.config.memory_limit(),
        disk_limit: st.broker.disk.limit(),
        node: node_name(),
        uptime: st.rates.uptime(),
        logins: &st.logins,
    }
}

async fn metrics(State(st): St) -> Response {
    let body = scrape(&st).aggregated();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn metrics_per_object(State(st): St) -> Response {
    let body = scrape(&st).per_object();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

fn metrics_routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/per-object", get(metrics_per_object))
}

/// Every `/api` route, behind basic auth.
fn api(state: &Arc<ServerState>) -> Router<Arc<ServerState>> {
    Router::new()
        .merge(overview::routes())
        .merge(auth_attempts::routes())
        .merge(connections::routes())
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(users::routes())
        .merge(definitions::routes())
        // Tenant limits and topic permissions.
        .merge(limits::routes())
        .merge(super_streams::routes())
        .merge(cluster::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
}

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .merge(api(&state))
        .merge(metrics_routes())
        .fallback(assets)
        // Definitions of large brokers and published test messages exceed axum's 2 MiB default.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The management listener, plain (`TcpListener`) or over TLS (`tls::HttpsListener`).
pub async fn serve<L>(listener: L, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let app = router(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    use axum::serve::ListenerExt;
    // tap_io: axum gives the peer address (ConnectInfo) of any listener through TapIo.
    if let Err(e) = axum::serve(
        listener.tap_io(|_| {}),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    {
        tracing::warn!("http listener stopped: {e}");
    }
}

/// The dedicated Prometheus listener: `/metrics` and `/metrics/per-object`, no auth.
pub async fn serve_prometheus(
    listener: TcpListener,
    state: Arc<ServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = metrics_routes()
        .fallback(|| async { (StatusCode::NOT_FOUND, "Not Found") })
        .with_state(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::warn!("prometheus listener stopped: {e}");
    }
}
