//! TLS: the amqps listener (lapin over TLS, with and without a client certificate), the EXTERNAL
//! mechanism, client certificate checks, handshake limits, certificate reload, and the
//! management API and warrenctl over HTTPS. Certificates are made at test time with rcgen.

use crate::harness::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The client certificate's subject as RabbitMQ formats it (checked against RabbitMQ 3.10 with
/// the same subject: most specific RDN first, `,` and `+` escaped).
const CLIENT_DN: &str = "CN=tlsuser,OU=Ops\\+Dev,O=Acme\\, Inc.,ST=Some State,C=GB";

/// A CA that signs server and client certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Warren Tests");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        let c = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (c.pem(), key.serialize_pem())
    }

    /// A client certificate with the subject C, ST, O, OU, CN (CN most specific).
    pub fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CountryName, "GB");
        dn.push(DnType::StateOrProvinceName, "Some State");
        dn.push(DnType::OrganizationName, "Acme, Inc.");
        dn.push(DnType::OrganizationalUnitName, "Ops+Dev");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        let c = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (c.pem(), key.serialize_pem())
    }
}

/// Certificate files for a broker, removed when dropped.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "warren-it-tls-{}-{}",
            std::process::id(),
            unique("pki")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("Test CA");
        let pki = Pki { dir, ca };
        pki.install(&pki.ca);
        pki
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Write a server certificate signed by `ca` (and `ca` as the client CA) to the files the
    /// broker reads.
    pub fn install(&self, ca: &Ca) {
        let (cert, key) = ca.server();
        std::fs::write(self.path("server.pem"), cert).unwrap();
        std::fs::write(self.path("server.key"), key).unwrap();
        std::fs::write(self.path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(self.path("trust.pem"), ca.pem()).unwrap();
    }

    pub fn configure(&self, c: &mut warren::config::Config) {
        c.amqps_listen = "127.0.0.1:0".into();
        c.https_listen = "127.0.0.1:0".into();
        c.tls.cert_file = self.path("server.pem");
        c.tls.key_file = self.path("server.key");
        c.tls.ca_file = self.path("ca.pem");
        c.tls.verify_peer = true;
    }
}

/// TLS settings for lapin: trust `ca_pem`, present `identity` if any.
pub fn client_tls(ca_pem: &str, identity: Option<&(String, String)>) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: identity.map(|(cert, key)| OwnedIdentity::PKCS8 {
            pem: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }),
        cert_chain: Some(ca_pem.to_owned()),
    }
}

/// Connect lapin over TLS to the broker's amqps listener.
pub async fn connect_tls(
    b: &Broker,
    userinfo: &str,
    query: &str,
    tls: OwnedTLSConfig,
) -> lapin::Result<Connection> {
    let port = b.handle.amqps_addr.expect("amqps listener").port();
    connect_tls_port(port, userinfo, query, tls).await
}

/// `connect_tls` to 127.0.0.1:`port`.
pub async fn connect_tls_port(
    port: u16,
    userinfo: &str,
    query: &str,
    tls: OwnedTLSConfig,
) -> lapin::Result<Connection> {
    let uri = format!("amqps://{userinfo}127.0.0.1:{port}/%2f{query}");
    tokio::time::timeout(
        Duration::from_secs(10),
        lapin::DefaultConnectionBuilder::new()?
            .with_uri_str(uri)
            .with_properties(ConnectionProperties::default())
            .with_tls_config(tls)
            .connect(),
    )
    .await
    .expect("connect in time")
}

/// Publish a message through `c` and get it back: the connection carries traffic.
async fn round_trip(c: &Connection, q: &str) {
    let ch = c.create_channel().await.expect("channel.open");
    declare(&ch, q).await;
    publish(&ch, "", q, b"over tls").await;
    let m = get_one(&ch, q).await.expect("message back");
    assert_eq!(m.delivery.data, b"over tls");
}

/// The management API's view of the one connection whose `user` is `user`.
async fn conn_json(b: &Broker, user: &str) -> Value {
    for _ in 0..50 {
        let list = Api::of(b).get("/api/connections").await.body;
        if let Some(c) = list.as_array().unwrap().iter().find(|c| c["user"] == user) {
            return c.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no connection of user {user}");
}

async fn add_user(b: &Broker, name: &str) {
    let path = |p: &str| format!("{p}{}", percent(name));
    let r = Api::of(b)
        .put(
            &path("/api/users/"),
            json!({"password": "unused-pw", "tags": ""}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let r = Api::of(b)
        .put(
            &format!("/api/permissions/%2F/{}", percent(name)),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A clean broker on an ephemeral amqps port, with the PKI's files and `f` applied.
async fn tls_broker(pki: &Pki, f: impl FnOnce(&mut warren::config::Config)) -> Broker {
    Broker::start_with(|c| {
        pki.configure(c);
        f(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_over_tls_with_and_without_a_client_certificate() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {}).await;
    let ca = pki.ca.pem();

    let anon = connect_tls(&b, "guest:guest@", "", client_tls(&ca, None))
        .await
        .expect("TLS without a client certificate (verify_peer, not fail_if_no_peer_cert)");
    round_trip(&anon, "tls-anon").await;
    let j = conn_json(&b, "guest").await;
    assert_eq!(j["ssl"], true);
    assert_eq!(j["ssl_protocol"], "tlsv1.3");
    assert_eq!(j["ssl_key_exchange"], "any");
    assert_eq!(j["ssl_hash"], "aead");
    assert!(
        ["aes_256_gcm", "aes_128_gcm", "chacha20_poly1305"]
            .contains(&j["ssl_cipher"].as_str().unwrap()),
        "{j}"
    );
    assert_eq!(j["peer_cert_subject"], Value::Null);
    assert_eq!(j["auth_mechanism"], "PLAIN");
    assert_eq!(j["port"], b.handle.amqps_addr.unwrap().port());
    anon.close(200, "bye".into()).await.unwrap();

    let id = pki.ca.client("tlsuser");
    let with_cert = connect_tls(&b, "guest:guest@", "", client_tls(&ca, Some(&id)))
        .await
        .expect("TLS with a client certificate");
    round_trip(&with_cert, "tls-cert").await;
    let j = conn_json(&b, "guest").await;
    assert_eq!(j["ssl"], true);
    assert_eq!(j["peer_cert_subject"], CLIENT_DN);
    assert_eq!(j["peer_cert_issuer"], "O=Warren Tests,CN=Test CA");
    let validity = j["peer_cert_validity"].as_str().unwrap();
    let re =
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ - \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$");
    assert!(re.unwrap().is_match(validity), "{validity}");

    // The plain listener is unchanged beside it.
    let plain = b.connect().await;
    round_trip(&plain, "tls-plain").await;
    let list = Api::of(&b).get("/api/connections").await.body;
    let ssl: Vec<bool> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ssl"].as_bool().unwrap())
        .collect();
    assert_eq!(ssl.iter().filter(|s| **s).count(), 1, "{list}");
    assert_eq!(ssl.iter().filter(|s| !**s).count(), 1, "{list}");
    let plain_json = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ssl"] == false)
        .unwrap();
    assert_eq!(plain_json["ssl_protocol"], Value::Null);
    assert_eq!(plain_json["ssl_cipher"], Value::Null);

    let overview = Api::of(&b).get("/api/overview").await.body;
    let protos: Vec<&str> = overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["protocol"].as_str().unwrap())
        .collect();
    assert!(
        protos.contains(&"amqp/ssl") && protos.contains(&"https"),
        "{protos:?}"
    );
    drop(with_cert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_takes_the_certificate_common_name() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {}).await;
    let ca = pki.ca.pem();
    add_user(&b, "tlsuser").await;
    let q = "?auth_mechanism=external";

    let c = connect_tls(&b, "", q, client_tls(&ca, Some(&pki.ca.client("tlsuser"))))
        .await
        .expect("EXTERNAL login as the certificate's CN");
    round_trip(&c, "tls-external").await;
    let j = conn_json(&b, "tlsuser").await;
    assert_eq!(j["auth_mechanism"], "EXTERNAL");
    assert_eq!(j["peer_cert_subject"], CLIENT_DN);

    // A certificate naming no existing user: RabbitMQ's refusal.
    let e = connect_tls(&b, "", q, client_tls(&ca, Some(&pki.ca.client("nobody"))))
        .await
        .expect_err("no such user");
    assert_eq!(code(&e), Some(403), "{e:?}");
    assert_eq!(
        text(&e),
        "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details \
         see the broker logfile."
    );

    // EXTERNAL over TLS without a certificate: offered (as RabbitMQ does), refused the same way.
    let e = connect_tls(&b, "", q, client_tls(&ca, None))
        .await
        .expect_err("no certificate");
    assert_eq!(code(&e), Some(403), "{e:?}");

    // EXTERNAL on the plain listener is not offered; a client that tries it anyway is refused.
    let plain = format!("amqp://{}/%2f?auth_mechanism=external", b.handle.amqp_addr);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&plain, ConnectionProperties::default()),
    )
    .await
    .expect("answer in time");
    let e = r.expect_err("EXTERNAL accepted on plain TCP");
    assert_eq!(code(&e), Some(503), "{e:?}");
    assert_eq!(
        text(&e),
        "COMMAND_INVALID - invalid authentication mechanism 'EXTERNAL'"
    );

    // Password logins still work over TLS.
    let e = connect_tls(&b, "guest:wrong@", "", client_tls(&ca, None))
        .await
        .expect_err("bad password");
    assert_eq!(code(&e), Some(403), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_login_with_the_distinguished_name() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |c| {
        c.tls.cert_login_from = "distinguished_name".into();
    })
    .await;
    let ca = pki.ca.pem();
    let q = "?auth_mechanism=external";
    let id = pki.ca.client("tlsuser");
    // A user named by the CN alone does not match in this mode.
    add_user(&b, "tlsuser").await;
    let e = connect_tls(&b, "", q, client_tls(&ca, Some(&id)))
        .await
        .expect_err("CN is not the user name here");
    assert_eq!(code(&e), Some(403), "{e:?}");

    add_user(&b, CLIENT_DN).await;
    let c = connect_tls(&b, "", q, client_tls(&ca, Some(&id)))
        .await
        .expect("EXTERNAL login as the certificate's DN");
    round_trip(&c, "tls-dn").await;
    assert_eq!(conn_json(&b, CLIENT_DN).await["auth_mechanism"], "EXTERNAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_checked() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |c| c.tls.fail_if_no_peer_cert = true).await;
    let ca = pki.ca.pem();

    // fail_if_no_peer_cert: no certificate, no connection.
    let e = connect_tls(&b, "guest:guest@", "", client_tls(&ca, None)).await;
    assert!(e.is_err(), "connected without a client certificate");

    // A certificate from a CA the broker does not trust.
    let other = Ca::new("Other CA");
    let e = connect_tls(
        &b,
        "guest:guest@",
        "",
        client_tls(&ca, Some(&other.client("tlsuser"))),
    )
    .await;
    assert!(e.is_err(), "connected with an untrusted client certificate");

    // A trusted one.
    let c = connect_tls(
        &b,
        "guest:guest@",
        "",
        client_tls(&ca, Some(&pki.ca.client("tlsuser"))),
    )
    .await
    .expect("trusted client certificate");
    round_trip(&c, "tls-trusted").await;

    // The client verifies the server too: a client trusting another CA gets no connection.
    let e = connect_tls(&b, "guest:guest@", "", client_tls(&other.pem(), None)).await;
    assert!(e.is_err(), "client accepted an unknown server certificate");
}

/// Bytes a raw TCP client gets from the amqps port before the broker closes it, and how long
/// that took (panics if the broker keeps it open for `limit`).
async fn raw_until_closed(b: &Broker, send: &[u8], limit: Duration) -> (Vec<u8>, Duration) {
    let mut s = tokio::net::TcpStream::connect(b.handle.amqps_addr.unwrap())
        .await
        .unwrap();
    let t = Instant::now();
    s.write_all(send).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the broker kept the socket open for {limit:?}");
    (got, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_on_the_tls_port_is_dropped_promptly() {
    let pki = Pki::new();
    // A long handshake timeout: the drop must come from the bad bytes, not the timer.
    let b = tls_broker(&pki, |c| c.handshake_timeout_ms = 30_000).await;
    let (got, took) = raw_until_closed(&b, b"AMQP\x00\x00\x09\x01", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Whatever came back is a TLS alert record, never an AMQP protocol header.
    assert!(!got.starts_with(b"AMQP"), "{got:?}");
    // The broker still serves TLS clients, and the permit came back.
    let c = connect_tls(&b, "guest:guest@", "", client_tls(&pki.ca.pem(), None))
        .await
        .expect("TLS after the plaintext client");
    round_trip(&c, "tls-after-plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_at_the_handshake_timeout() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |c| {
        c.handshake_timeout_ms = 400;
        // One connection slot: a stuck handshake would hold it forever.
        c.max_connections = 1;
    })
    .await;
    // A client that connects and sends half a ClientHello, then nothing.
    let (_, took) = raw_until_closed(&b, &[0x16, 0x03, 0x01, 0x02], Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let c = connect_tls(&b, "guest:guest@", "", client_tls(&pki.ca.pem(), None))
        .await
        .expect("the slot is free again");
    round_trip(&c, "tls-after-stall").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_open_connections_and_serves_the_new_certificate() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {}).await;
    let old_ca = pki.ca.pem();
    let before = connect_tls(&b, "guest:guest@", "", client_tls(&old_ca, None))
        .await
        .expect("connect before the reload");
    round_trip(&before, "tls-reload-before").await;

    // A new server certificate from a new CA; clients trusting only the old CA now fail.
    let new = Ca::new("New CA");
    pki.install(&new);
    b.handle.reload_tls().expect("reload");
    let after = connect_tls(&b, "guest:guest@", "", client_tls(&new.pem(), None))
        .await
        .expect("a new connection sees the new certificate");
    round_trip(&after, "tls-reload-after").await;
    let e = connect_tls(&b, "guest:guest@", "", client_tls(&old_ca, None)).await;
    assert!(e.is_err(), "the old certificate is still served");
    // The connection opened before the reload is still up and working.
    round_trip(&before, "tls-reload-before-2").await;

    // A reload that fails (a broken key file) keeps the certificate in use.
    std::fs::write(pki.path("server.key"), "not a key").unwrap();
    let err = b.handle.reload_tls().expect_err("a broken key is refused");
    assert!(err.to_string().contains("key_file"), "{err}");
    let again = connect_tls(&b, "guest:guest@", "", client_tls(&new.pem(), None))
        .await
        .expect("still the new certificate after a failed reload");
    round_trip(&again, "tls-reload-failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_without_usable_files_is_a_start_error() {
    let mut c = warren::config::Config {
        amqp_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        prometheus_listen: "".into(),
        amqps_listen: "127.0.0.1:0".into(),
        data_dir: temp_data_dir(),
        ..Default::default()
    };
    let dir = c.data_dir.clone();
    let e = warren::Server::start(c.clone())
        .await
        .err()
        .expect("no cert_file");
    assert!(e.to_string().contains("cert_file"), "{e}");
    c.tls.cert_file = "/nonexistent/server.pem".into();
    c.tls.key_file = "/nonexistent/server.key".into();
    let e = warren::Server::start(c.clone())
        .await
        .err()
        .expect("missing file");
    assert!(e.to_string().contains("/nonexistent/server.pem"), "{e}");
    // verify_peer needs a CA.
    let pki = Pki::new();
    c.tls.cert_file = pki.path("server.pem");
    c.tls.key_file = pki.path("server.key");
    c.tls.verify_peer = true;
    let e = warren::Server::start(c.clone())
        .await
        .err()
        .expect("no ca_file");
    assert!(e.to_string().contains("ca_file"), "{e}");
    c.https_listen = "127.0.0.1:0".into();
    c.amqps_listen = String::new();
    c.tls.ca_file = pki.path("ca.pem");
    let ok = warren::Server::start(c).await.expect("https alone starts");
    assert!(ok.https_addr.is_some() && ok.amqps_addr.is_none());
    ok.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// GET over HTTPS trusting `ca_pem`.
async fn https_get(url: String, ca_pem: String) -> Result<(u16, String), String> {
    tokio::task::spawn_blocking(move || {
        let certs: Vec<_> = ureq::tls::parse_pem(ca_pem.as_bytes())
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            )
            .build()
            .into();
        let mut r = agent
            .get(&url)
            .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
            .call()
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_api_dashboard_and_warrenctl_over_https() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |c| c.tls.fail_if_no_peer_cert = true).await;
    let base = format!("https://localhost:{}", b.handle.https_addr.unwrap().port());
    let (status, body) = https_get(format!("{base}/api/overview"), pki.ca.pem())
        .await
        .expect("API over HTTPS");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["protocol"] == "https"));
    let (status, body) = https_get(format!("{base}/"), pki.ca.pem()).await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "{body}"
    );
    // An untrusted server certificate is refused by the client.
    assert!(
        https_get(format!("{base}/api/overview"), Ca::new("x").pem())
            .await
            .is_err()
    );

    let (_c, ch) = b.channel().await;
    declare(&ch, "over-https").await;
    let run = |args: Vec<String>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_warrenctl"))
                .env("WARREN_URL", base)
                .env_remove("WARREN_CACERT")
                .args(args)
                .output()
                .expect("warrenctl runs")
        })
    };
    let out = run(vec![
        "--cacert".into(),
        pki.path("ca.pem"),
        "list_queues".into(),
        "-q".into(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {:?}", out.stderr);
    assert!(stdout.contains("over-https"), "{stdout}");
    // Without --cacert the test CA is unknown: the broker is unreachable (exit 69).
    let out = run(vec!["list_queues".into()]).await.unwrap();
    assert_eq!(out.status.code(), Some(69), "{:?}", out);
    // A --cacert that is not a certificate: usage error.
    let out = run(vec![
        "--cacert".into(),
        pki.path("server.key"),
        "list_queues".into(),
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64), "{:?}", out);
    // A plain HTTP request on the HTTPS port gets no API answer.
    let r = tokio::task::spawn_blocking({
        let addr = b.handle.https_addr.unwrap();
        move || {
            ureq::get(&format!("http://{addr}/api/overview"))
                .config()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .call()
        }
    })
    .await
    .unwrap();
    assert!(r.is_err(), "plain HTTP answered on the HTTPS port");
}

/// SIGHUP makes the real binary reload its certificate files: a connection opened before stays up,
/// a new one gets the new certificate. (`--amqps-listen` on the command line, files in the
/// config file.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_in_the_binary() {
    let pki = Pki::new();
    let dir = temp_data_dir();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = pki.dir.join("warren.toml");
    std::fs::write(
        &cfg,
        format!(
            "prometheus_listen = \"\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    )
    .unwrap();
    let amqps = format!("127.0.0.1:{port}");
    let cfg = cfg.display().to_string();
    let p = crate::child::spawn_with(&dir, &["--config", &cfg, "--amqps-listen", &amqps])
        .expect("warren starts with TLS");
    let old_ca = pki.ca.pem();
    let before = connect_tls_port(port, "guest:guest@", "", client_tls(&old_ca, None))
        .await
        .expect("connect before SIGHUP");
    round_trip(&before, "hup-before").await;

    let new = Ca::new("New CA");
    pki.install(&new);
    p.signal("-HUP");
    let mut after = None;
    for _ in 0..100 {
        if let Ok(c) =
            connect_tls_port(port, "guest:guest@", "", client_tls(&new.pem(), None)).await
        {
            after = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("the new certificate is served after SIGHUP");
    round_trip(&after, "hup-after").await;
    assert!(
        connect_tls_port(port, "guest:guest@", "", client_tls(&old_ca, None))
            .await
            .is_err(),
        "the old certificate is still served"
    );
    round_trip(&before, "hup-before-2").await;
    drop((before, after));
    p.term();
    let _ = std::fs::remove_dir_all(dir);
}

/// A raw AMQP client over TLS (tokio-rustls), to control how fast it reads.
async fn raw_tls_consumer(b: &Broker, ca_pem: &str, queue: &str) -> RawTls {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
    use amq_protocol::types::{FieldTable, LongString};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject, pki_types::CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(b.handle.amqps_addr.unwrap())
        .await
        .unwrap();
    let sock = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let mut r = RawTls {
        sock,
        buf: Vec::new(),
    };
    r.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    r.recv().await.expect("connection.start");
    let m = |ch: u16, c: AMQPClass| AMQPFrame::Method(ch, c);
    use connection::AMQPMethod as C;
    r.send(&m(
        0,
        AMQPClass::Connection(C::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from("\0guest\0guest"),
            locale: "en_US".into(),
        })),
    ))
    .await;
    r.recv().await.expect("connection.tune");
    r.send(&m(
        0,
        AMQPClass::Connection(C::TuneOk(connection::TuneOk {
            channel_max: 16,
            frame_max: 131_072,
            heartbeat: 0,
        })),
    ))
    .await;
    r.send(&m(
        0,
        AMQPClass::Connection(C::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    ))
    .await;
    r.recv().await.expect("connection.open-ok");
    r.send(&m(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    r.recv().await.expect("channel.open-ok");
    r.send(&m(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "slow".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    r
}

struct RawTls {
    sock: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl RawTls {
    async fn send(&mut self, f: &amq_protocol::frame::AMQPFrame) {
        let bytes =
            cookie_factory::gen_simple(amq_protocol::frame::gen_frame(f), Vec::new()).unwrap();
        self.sock.write_all(&bytes).await.unwrap();
    }

    /// The next frame, read `chunk` bytes at a time with `pause` between reads; None when the
    /// socket closes or stays silent for 5 s.
    async fn recv_slowly(
        &mut self,
        chunk: usize,
        pause: Duration,
    ) -> Option<amq_protocol::frame::AMQPFrame> {
        loop {
            if let Ok((rest, f)) = amq_protocol::frame::parse_frame(&self.buf[..]) {
                let used = self.buf.len() - rest.len();
                self.buf.drain(..used);
                return Some(f);
            }
            let mut b = vec![0u8; chunk];
            match tokio::time::timeout(Duration::from_secs(5), self.sock.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&b[..n]),
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }

    async fn recv(&mut self) -> Option<amq_protocol::frame::AMQPFrame> {
        self.recv_slowly(64 * 1024, Duration::ZERO).await
    }
}

/// A message far larger than the socket buffers reaches a slow reader over TLS whole: TCP
/// back-pressure through the TLS layer, and the tail of the burst is not left behind in rustls'
/// buffer (the writer flushes after each batch; the stall needs a send buffer smaller than
/// rustls' own, so this test does not force it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_of_a_burst_reaches_a_slow_reader_over_tls() {
    use amq_protocol::frame::AMQPFrame;
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {}).await;
    let (_p, pch) = b.channel().await;
    declare(&pch, "tls-burst").await;
    // Far beyond the socket buffers and rustls' own.
    let size = 8 << 20;
    publish(&pch, "", "tls-burst", &vec![7u8; size]).await;
    let mut r = raw_tls_consumer(&b, &pki.ca.pem(), "tls-burst").await;
    // Let the broker fill the socket, then read slowly so that it stays full.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = 0;
    while got < size {
        match r.recv_slowly(16 * 1024, Duration::from_micros(200)).await {
            Some(AMQPFrame::Body(_, b)) => got += b.len(),
            Some(_) => {}
            None => panic!("stalled after {got} of {size} body bytes"),
        }
    }
}
