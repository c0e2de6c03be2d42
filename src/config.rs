//! Configuration: the schema of `config.toml`, its defaults, and validation.
//!
//! The shipped `config.toml` documents every field; a field left out takes the default below.
//! Command-line flags override the file (see `main.rs`).

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub amqp_listen: String,
    pub http_listen: String,
    /// The dedicated Prometheus listener (no auth); empty disables it.
    pub prometheus_listen: String,
    pub data_dir: PathBuf,
    pub default_user: String,
    pub default_pass: String,
    pub loopback_users: Vec<String>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub max_message_size: u64,
    pub max_connections: usize,
    pub handshake_timeout_ms: u64,
    /// A failed login waits this long before it is refused, doubling with each further failure
    /// from the same address up to `auth_failure_delay_max_ms` (and decaying when it stops);
    /// 0 turns the delay off. See `auth::throttle`.
    pub auth_failure_delay_ms: u64,
    pub auth_failure_delay_max_ms: u64,
    pub memory_high_watermark: f64,
    pub memory_high_watermark_bytes: u64,
    pub message_sync_interval_ms: u64,
    pub segment_size_bytes: u64,
    pub queue_ram_budget_bytes: u64,
    pub disk_free_limit_bytes: u64,
    pub log_level: String,
    /// A manual-ack delivery not acknowledged within this many milliseconds trips the consumer
    /// timeout (RabbitMQ's `consumer_timeout`; per queue: `x-consumer-timeout`).
    pub consumer_timeout_ms: u64,
    /// What the consumer timeout does: "close_channel" (RabbitMQ: 406 on the channel) or
    /// "cancel_consumer" (cancel only that consumer and requeue its unacked deliveries; per
    /// queue: `x-consumer-timeout-action`).
    pub consumer_timeout_action: String,
    /// The AMQP-over-TLS listener (RabbitMQ's 5671), HOST:PORT; empty (the default) disables it.
    pub amqps_listen: String,
    /// The management listener over HTTPS, HOST:PORT; empty (the default) disables it.
    pub https_listen: String,
    /// Certificates for `amqps_listen` and `https_listen`.
    pub tls: TlsSection,
    /// This node's name in a cluster; empty: `warren@<hostname>`.
    pub node_name: String,
    /// Clustering; without `listen`, Warren is a single node.
    pub cluster: ClusterSection,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// The inter-node listener (Raft and forwarding), HOST:PORT; empty: no cluster.
    pub listen: String,
    /// The cluster link addresses of the nodes that form the cluster (this one may be listed).
    pub seeds: Vec<String>,
    /// A file holding the secret every node of the cluster shares (RabbitMQ's Erlang cookie).
    pub secret_file: String,
    /// A quorum queue's group takes a snapshot (its messages whole) every this many log entries
    /// (batches of messages or settlements), then drops the log before it. 0: 5000.
    pub quorum_snapshot_every: u64,
    /// The size of a quorum queue's Raft log segment files (purged and reused whole). 0: 16 MiB.
    pub quorum_segment_bytes: u64,
}

/// The `[tls]` table: PEM files and client certificate checks (RabbitMQ's `ssl_options`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: String,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// CA certificates (PEM) that client certificates are verified against.
    pub ca_file: String,
    /// Ask clients for a certificate and verify it against `ca_file`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
    /// The user the EXTERNAL mechanism logs in as: the certificate subject's "common_name" or
    /// its full "distinguished_name" (RabbitMQ's `ssl_cert_login_from`).
    pub cert_login_from: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            verify_peer: false,
            fail_if_no_peer_cert: false,
            cert_login_from: "common_name".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            amqp_listen: "0.0.0.0:5672".into(),
            http_listen: "0.0.0.0:15672".into(),
            prometheus_listen: "0.0.0.0:15692".into(),
            data_dir: PathBuf::from("./data"),
            default_user: "guest".into(),
            default_pass: "guest".into(),
            loopback_users: vec!["guest".into()],
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 << 20,
            max_connections: 65_536,
            handshake_timeout_ms: 10_000,
            auth_failure_delay_ms: 100,
            auth_failure_delay_max_ms: 5_000,
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: 0,
            message_sync_interval_ms: 0,
            segment_size_bytes: 32 << 20,
            queue_ram_budget_bytes: 8 << 20,
            disk_free_limit_bytes: 50_000_000,
            log_level: "info".into(),
            consumer_timeout_ms: crate::broker::ack_watch::DEFAULT_TIMEOUT_MS,
            consumer_timeout_action: "close_channel".into(),
            amqps_listen: String::new(),
            https_listen: String::new(),
            tls: TlsSection::default(),
            node_name: String::new(),
            cluster: ClusterSection::default(),
        }
    }
}

static THIS_NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This process's node name: the configured `node_name` once the server has started with one
/// (`set_this_node`), else `warren@<hostname>`.
pub fn this_node() -> &'static str {
    THIS_NODE.get_or_init(default_node_name)
}

/// Name this process's node (at start, before anything is shown; later calls change nothing).
pub fn set_this_node(name: String) {
    let _ = THIS_NODE.set(name);
}

/// `warren@<hostname>`.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("warren@{host}")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// The broker-wide consumer timeout settings.
    pub fn consumer_timeout(&self) -> crate::broker::ack_watch::TimeoutDefaults {
        crate::broker::ack_watch::TimeoutDefaults {
            timeout_ms: self.consumer_timeout_ms,
            action: crate::broker::queue::lifecycle::TimeoutAction::parse(
                &self.consumer_timeout_action,
            )
            .unwrap_or(crate::broker::queue::lifecycle::TimeoutAction::CloseChannel),
        }
    }

    /// The memory alarm threshold in bytes of messages.
    pub fn memory_limit(&self) -> u64 {
        if self.memory_high_watermark_bytes > 0 {
            return self.memory_high_watermark_bytes;
        }
        let total = crate::broker::memory::total_memory().unwrap_or(8 << 30);
        (total as f64 * self.memory_high_watermark) as u64
    }

    /// How the message log syncs and splits its files.
    pub fn log_options(&self) -> crate::store::LogOptions {
        crate::store::LogOptions {
            segment_size: self.segment_size_bytes,
            sync_interval: (self.message_sync_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(self.message_sync_interval_ms)),
            queue_ram_budget: self.queue_ram_budget_bytes,
            scratch: false,
        }
    }

    /// This node's name: `node_name`, or `warren@<hostname>`.
    pub fn node_name(&self) -> String {
        if self.node_name.is_empty() {
            default_node_name()
        } else {
            self.node_name.clone()
        }
    }

    /// The cluster secret, read from `[cluster] secret_file` (surrounding whitespace trimmed).
    pub fn cluster_secret(&self) -> Result<Vec<u8>, String> {
        let path = &self.cluster.secret_file;
        let text = std::fs::read(path).map_err(|e| format!("cluster secret_file {path}: {e}"))?;
        let secret = text.trim_ascii().to_vec();
        if secret.is_empty() {
            return Err(format!("cluster secret_file {path} is empty"));
        }
        Ok(secret)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.message().replace('\n', " "),
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.frame_max < 4096 {
            return bad(format!(
                "frame_max {} is below the AMQP minimum 4096",
                self.frame_max
            ));
        }
        if self.channel_max == 0 {
            return bad("channel_max must be at least 1".into());
        }
        if self.max_message_size == 0 || self.max_message_size > 512 << 20 {
            return bad(format!(
                "max_message_size {} must be between 1 and 536870912 (512 MiB)",
                self.max_message_size
            ));
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if !(self.memory_high_watermark > 0.0 && self.memory_high_watermark <= 1.0) {
            return bad(format!(
                "memory_high_watermark {} must be a fraction of physical memory in (0, 1]",
                self.memory_high_watermark
            ));
        }
        if crate::broker::queue::lifecycle::TimeoutAction::parse(&self.consumer_timeout_action)
            .is_none()
        {
            return bad(format!(
                "consumer_timeout_action '{}' must be \"close_channel\" or \"cancel_consumer\"",
                self.consumer_timeout_action
            ));
        }
        if self.consumer_timeout_ms == 0 {
            return bad("consumer_timeout_ms must be at least 1".into());
        }
        if !(1 << 20..=1 << 30).contains(&self.segment_size_bytes) {
            return bad(format!(
                "segment_size_bytes {} must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
                self.segment_size_bytes
            ));
        }
        let q = self.cluster.quorum_segment_bytes;
        if q != 0 && !(4096..=1 << 30).contains(&q) {
            return bad(format!(
                "[cluster] quorum_segment_bytes {q} must be 0 (16 MiB) or between 4096 and 1073741824 (1 GiB)"
            ));
        }
        if !matches!(
            self.tls.cert_login_from.as_str(),
            "common_name" | "distinguished_name"
        ) {
            return bad(format!(
                "[tls] cert_login_from '{}' must be \"common_name\" or \"distinguished_name\"",
                self.tls.cert_login_from
            ));
        }
        if self.default_user.is_empty() {
            return bad("default_user must not be empty".into());
        }
        if !self.cluster.listen.is_empty() && self.cluster.secret_file.is_empty() {
            return bad(
                "[cluster] needs secret_file: the secret every node of the cluster shares".into(),
            );
        }
        if self.node_name.len() > 255 {
            return bad("node_name must be at most 255 bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_file_is_the_defaults() {
        let shipped = Config::parse(include_str!("../config.toml")).unwrap();
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::parse("frame_max = 100").is_err());
        assert!(Config::parse("nonsense = 1").is_err());
        assert!(Config::parse("heartbeat = \"x\"").is_err());
        assert!(Config::parse("channel_max = 0").is_err());
        assert!(Config::parse("consumer_timeout_action = \"explode\"").is_err());
        assert!(Config::parse("consumer_timeout_ms = 0").is_err());
        assert!(Config::parse("consumer_timeout_action = \"cancel_consumer\"").is_ok());
        assert!(Config::parse("[tls]\ncert_login_from = \"serial\"").is_err());
        assert!(Config::parse("[tls]\nverify = true").is_err());
        assert!(Config::parse("[cluster]\nlisten = \"127.0.0.1:25672\"").is_err());
        assert!(Config::parse("[cluster]\nquorum_segment_bytes = 100").is_err());
        assert!(Config::parse("[cluster]\nquorum_segment_bytes = 65536").is_ok());
        let c = Config::parse(
            "node_name = \"warren@a\"\n[cluster]\nlisten = \"127.0.0.1:25672\"\n\
             seeds = [\"127.0.0.1:25673\"]\nsecret_file = \"/s\"",
        )
        .unwrap();
        assert_eq!(c.node_name(), "warren@a");
        assert_eq!(c.cluster.seeds, ["127.0.0.1:25673"]);
        let c = Config::parse(
            "amqps_listen = \"127.0.0.1:5671\"\n[tls]\ncert_file = \"c.pem\"\nverify_peer = true",
        )
        .unwrap();
        assert_eq!(c.amqps_listen, "127.0.0.1:5671");
        assert!(c.tls.verify_peer && !c.tls.fail_if_no_peer_cert);
        assert_eq!(c.tls.cert_login_from, "common_name");
    }
}
