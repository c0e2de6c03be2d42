//! TLS for the AMQP listener (`amqps_listen`) and the management listener (`https_listen`), with
//! rustls.
//!
//! `Tls` holds the rustls server configurations built from the `[tls]` files; `reload` rebuilds
//! them from the files (SIGHUP) and swaps them in: handshakes that start afterwards use the new
//! certificate, key and CA, sessions already established are untouched, and a reload that fails
//! keeps the old configuration. Handshakes run in each connection's own task, bounded by the
//! handshake timeout, never in an accept loop.
//!
//! `Session` is what a finished handshake tells the rest of the broker: protocol, cipher and the
//! client certificate's subject, issuer and validity in RabbitMQ's formats (the management API
//! shows them; the `EXTERNAL` mechanism logs in as the subject's CN or its full DN).

use crate::config::TlsSection;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::{self, pki_types, server::WebPkiClientVerifier, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] {what} is not set")]
    Missing { what: &'static str },
    #[error("cannot read [tls] {what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("[tls] {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("invalid TLS settings: {0}")]
    Rustls(String),
    #[error("TLS is not configured (neither amqps_listen nor https_listen is set)")]
    NotConfigured,
}

/// The TLS configurations in use, swapped whole on reload.
#[derive(Debug)]
struct Configs {
    amqp: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The server's TLS state: the settings (file names) and the configurations built from them.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSection,
    current: parking_lot::RwLock<Configs>,
}

impl Tls {
    /// Read the files named in `[tls]` and build the server configurations.
    pub fn load(settings: &TlsSection) -> Result<Self, TlsError> {
        let configs = build(settings)?;
        Ok(Tls {
            settings: settings.clone(),
            current: parking_lot::RwLock::new(configs),
        })
    }

    /// Re-read the certificate, key and CA files. On failure the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match build(&self.settings) {
            Ok(c) => {
                *self.current.write() = c;
                info!(cert_file = %self.settings.cert_file, "TLS certificate, key and CA reloaded");
                Ok(())
            }
            Err(e) => {
                warn!("TLS reload failed, keeping the previous certificate: {e}");
                Err(e)
            }
        }
    }

    pub fn amqp_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().amqp.clone())
    }

    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().http.clone())
    }
}

/// rustls' ring provider, named explicitly (no process-wide default to install). Deprecated in
/// rustls 0.23.48 for lacking post-quantum key exchange; aws-lc-rs would cost a C/CMake build.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(s: &TlsSection) -> Result<Configs, TlsError> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    fn file_err(what: &'static str, path: &str) -> impl Fn(pki_types::pem::Error) -> TlsError {
        let path = path.to_owned();
        move |e| TlsError::File {
            what,
            path: path.clone(),
            message: e.to_string(),
        }
    }
    if s.cert_file.is_empty() {
        return Err(TlsError::Missing { what: "cert_file" });
    }
    if s.key_file.is_empty() {
        return Err(TlsError::Missing { what: "key_file" });
    }
    let certs = CertificateDer::pem_file_iter(&s.cert_file)
        .map_err(file_err("cert_file", &s.cert_file))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_err("cert_file", &s.cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "cert_file",
            path: s.cert_file.clone(),
            expected: "PEM certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| match e {
        pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "key_file",
            path: s.key_file.clone(),
            expected: "PEM private key",
        },
        e => file_err("key_file", &s.key_file)(e),
    })?;
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err)
    };
    let client_auth = if s.verify_peer {
        if s.ca_file.is_empty() {
            return Err(TlsError::Missing {
                what: "ca_file (needed by verify_peer)",
            });
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in
            CertificateDer::pem_file_iter(&s.ca_file).map_err(file_err("ca_file", &s.ca_file))?
        {
            roots
                .add(c.map_err(file_err("ca_file", &s.ca_file))?)
                .map_err(rustls_err)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Empty {
                what: "ca_file",
                path: s.ca_file.clone(),
                expected: "PEM certificate",
            });
        }
        let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        if !s.fail_if_no_peer_cert {
            v = v.allow_unauthenticated();
        }
        Some(v.build().map_err(|e| TlsError::Rustls(e.to_string()))?)
    } else {
        None
    };
    let amqp = match client_auth {
        Some(v) => builder()?.with_client_cert_verifier(v),
        None => builder()?.with_no_client_auth(),
    }
    .with_single_cert(certs.clone(), key.clone_key())
    .map_err(rustls_err)?;
    // The management listener asks for no client certificate: browsers and warrenctl log in
    // with a password.
    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls_err)?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Configs {
        amqp: Arc::new(amqp),
        http: Arc::new(http),
    })
}

/// Run a TLS handshake on an accepted socket, within `timeout`. Failures are logged (naming the
/// peer) and give `None`: a plaintext client on the TLS port, an untrusted or missing client
/// certificate, a client that stalls.
pub async fn handshake(
    acceptor: TlsAcceptor,
    sock: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            warn!(%peer, "TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            warn!(%peer, "TLS handshake timed out after {timeout:?}");
            None
        }
    }
}

/// A client's verified certificate, in RabbitMQ's formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject's distinguished name, most specific attribute first (`CN=…,O=…,C=…`).
    pub subject: String,
    pub issuer: String,
    /// `not_before - not_after`, both as `YYYY-MM-DDTHH:MM:SSZ`.
    pub validity: String,
    /// The subject's (first) common name.
    pub common_name: Option<String>,
}

/// What a finished TLS handshake established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `tlsv1.3` or `tlsv1.2`.
    pub protocol: String,
    /// As RabbitMQ names them: cipher (`aes_256_gcm`), key exchange (`any` under TLS 1.3,
    /// `ecdhe_rsa`…) and hash (`aead` under TLS 1.3, `sha384`…).
    pub cipher: String,
    pub key_exchange: String,
    pub hash: String,
    /// Present when the client sent a certificate (it was verified, or the handshake would
    /// have failed).
    pub peer_cert: Option<PeerCert>,
}

impl Session {
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2".to_owned(),
            Some(v) => format!("{v:?}").to_lowercase(),
            None => String::new(),
        };
        let suite = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let (key_exchange, cipher, hash) = suite_names(&suite);
        Session {
            protocol,
            cipher,
            key_exchange,
            hash,
            peer_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| peer_cert(c.as_ref())),
        }
    }
}

/// Split a rustls suite name (`TLS13_AES_256_GCM_SHA384`, `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`)
/// into RabbitMQ's key exchange, cipher and hash names.
fn suite_names(suite: &str) -> (String, String, String) {
    let lower = suite.to_lowercase();
    if let Some(rest) = lower.strip_prefix("tls13_") {
        // TLS 1.3 suites name no key exchange and authenticate with AEAD only.
        let cipher = rest.rsplit_once('_').map_or(rest, |(c, _)| c).to_owned();
        return ("any".into(), cipher, "aead".into());
    }
    if let Some((kx, rest)) = lower
        .strip_prefix("tls_")
        .and_then(|s| s.split_once("_with_"))
    {
        let (cipher, hash) = rest.rsplit_once('_').unwrap_or((rest, ""));
        return (kx.to_owned(), cipher.to_owned(), hash.to_owned());
    }
    (String::new(), lower, String::new())
}

/// Short names of the attribute types RabbitMQ names; others are shown by their OID.
const ATTRIBUTE_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.4", "SN"),
    ("2.5.4.5", "SERIALNUMBER"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.12", "TITLE"),
    ("2.5.4.42", "GIVENNAME"),
    ("2.5.4.43", "INITIALS"),
    ("2.5.4.44", "GENERATIONQUALIFIER"),
    ("2.5.4.65", "PSEUDONYM"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "EMAILADDRESS"),
];

/// A certificate's subject, issuer and validity, or `None` if it does not parse.
pub fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let v = cert.validity();
    Some(PeerCert {
        subject: format_name(cert.subject()),
        issuer: format_name(cert.issuer()),
        validity: format!(
            "{} - {}",
            iso8601(v.not_before.timestamp()),
            iso8601(v.not_after.timestamp())
        ),
        common_name,
    })
}

/// A distinguished name as RabbitMQ shows it (RFC 4514's order, most specific RDN first;
/// the attributes of a multi-valued RDN joined by `+`).
fn format_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|a| {
                    let oid = a.attr_type().to_id_string();
                    let key = ATTRIBUTE_NAMES
                        .iter()
                        .find(|(o, _)| *o == oid)
                        .map_or(oid.as_str(), |(_, n)| n);
                    let value = match a.as_str() {
                        Ok(s) => s.to_owned(),
                        Err(_) => String::from_utf8_lossy(a.as_slice()).into_owned(),
                    };
                    format!("{key}={}", escape_value(&value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// RFC 4514 escaping of an attribute value.
fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The management listener over TLS, for `axum::serve`: a task accepts TCP connections and
/// spawns one handshake task per connection (bounded by the handshake timeout); finished
/// sessions come out of `accept`. Dropping the listener stops the accepting task.
pub struct HttpsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsListener {
    pub fn new(listener: TcpListener, tls: Arc<Tls>, timeout: Duration) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("https accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tx = tx.clone();
                let acceptor = tls.http_acceptor();
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    if let Some(s) = handshake(acceptor, sock, peer, timeout).await {
                        let _ = tx.send((s, peer)).await;
                    }
                });
            }
        });
        Ok(HttpsListener { local, rx, task })
    }
}

impl Drop for HttpsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accepting task is gone (only when aborted, as the listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_as_rabbitmq() {
        assert_eq!(
            suite_names("TLS13_AES_256_GCM_SHA384"),
            ("any".into(), "aes_256_gcm".into(), "aead".into())
        );
        assert_eq!(
            suite_names("TLS13_CHACHA20_POLY1305_SHA256"),
            ("any".into(), "chacha20_poly1305".into(), "aead".into())
        );
        assert_eq!(
            suite_names("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            ("ecdhe_rsa".into(), "aes_128_gcm".into(), "sha256".into())
        );
    }

    #[test]
    fn dates_and_escapes() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_566_355), "2026-12-06T14:12:35Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(escape_value("Acme, Inc."), "Acme\\, Inc.");
        assert_eq!(escape_value("Ops+Dev"), "Ops\\+Dev");
        assert_eq!(escape_value(" x "), "\\ x\\ ");
    }
}
