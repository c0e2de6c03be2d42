//! The handshake: connection.start/start-ok (PLAIN and AMQPLAIN against the configured user),
//! tune/tune-ok (channel_max, frame_max, heartbeat), open/open-ok (the virtual host).

use super::*;
use crate::auth::throttle::Protocol;

/// A login decided but not yet answered: failures (and every login from an address that failed
/// recently) wait before the answer (`auth::throttle`).
pub(super) struct PendingLogin {
    pub at: tokio::time::Instant,
    /// The refusal, and whether the client gets a connection.close (else the socket closes).
    pub refusal: Option<(AmqpError, bool)>,
}

pub(super) fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    p.insert("product".into(), s("Warren"));
    p.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert("platform".into(), s("Rust"));
    p.insert("cluster_name".into(), s("warren"));
    p.insert("copyright".into(), s("Copyright (c) the Warren authors"));
    p.insert(
        "information".into(),
        s("An AMQP 0-9-1 broker compatible with RabbitMQ clients"),
    );
    p
}

impl Connection {
    pub(super) fn on_handshake_frame(&mut self, frame: Frame) -> AmqpResult<()> {
        let Frame::Method {
            channel: 0,
            method: Method::Other(m),
            class_id,
            method_id,
        } = frame
        else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "expected a connection method on channel 0 during the handshake",
            ));
        };
        use connection::AMQPMethod as M;
        match (self.state, *m) {
            (_, AMQPClass::Connection(M::Close(_))) => {
                self.send(0, AMQPClass::Connection(M::CloseOk(connection::CloseOk {})));
                self.state = ConnectionState::Answered;
            }
            (ConnectionState::AwaitStartOk, AMQPClass::Connection(M::StartOk(s))) => {
                self.cancel_notify =
                    client_capability(&s.client_properties, "consumer_cancel_notify");
                self.blocked_notify = client_capability(&s.client_properties, "connection.blocked");
                let close_on_failure =
                    client_capability(&s.client_properties, "authentication_failure_close");
                let login = self.login(s.mechanism.as_str(), s.response.as_bytes());
                if matches!(login, Ok((_, false))) && self.may_recheck() {
                    self.recheck(class_id, method_id, AMQPClass::Connection(M::StartOk(s)));
                    return Ok(());
                }
                let refused = match login {
                    Ok((user, true)) => {
                        let mut d = self.info.details.lock();
                        d.user = user.clone();
                        d.auth_mechanism = s.mechanism.as_str().to_owned();
                        d.client_properties =
                            crate::broker::json::table_to_json(&s.client_properties);
                        drop(d);
                        tracing::Span::current().record("user", tracing::field::display(&user));
                        self.user = user;
                        None
                    }
                    Ok((user, false)) => Some((user, login_refused(s.mechanism.as_str()))),
                    Err(e) => Some((String::new(), e)),
                };
                let logins = &self.server.logins;
                logins.count(Protocol::Amqp091, refused.is_none());
                let delay = logins.delay(self.peer.ip(), refused.is_some());
                let refusal = refused.map(|(user, e)| {
                    warn!(user = %user, peer = %self.peer, delay_ms = delay.as_millis() as u64,
                        "authentication failed (mechanism {}): {}", s.mechanism.as_str(), e.text);
                    (e, close_on_failure)
                });
                // Answered by `answer_login` once the delay is over.
                self.login = Some(PendingLogin {
                    at: tokio::time::Instant::now() + delay,
                    refusal,
                });
            }
            (ConnectionState::AwaitTuneOk, AMQPClass::Connection(M::TuneOk(t))) => {
                let server_max = self.config.frame_max;
                let fm = if t.frame_max == 0 {
                    server_max
                } else {
                    t.frame_max
                };
                if fm > server_max {
                    return Err(AmqpError::connection(
                        code::NOT_ALLOWED,
                        format!("frame_max={fm} > {server_max} max size"),
                    ));
                }
                if fm < 4096 {
                    return Err(AmqpError::connection(
                        code::NOT_ALLOWED,
                        format!("frame_max={fm} < 4096 min size"),
                    ));
                }
                let cm = if t.channel_max == 0 {
                    self.config.channel_max
                } else {
                    t.channel_max
                };
                if cm > self.config.channel_max {
                    return Err(AmqpError::connection(
                        code::NOT_ALLOWED,
                        format!("channel_max={cm} > {} max", self.config.channel_max),
                    ));
                }
                self.frame_max = fm;
                self.channel_max = cm;
                self.heartbeat.store(t.heartbeat as u64, Ordering::Relaxed);
                self.state = ConnectionState::AwaitOpen;
            }
            (ConnectionState::AwaitOpen, AMQPClass::Connection(M::Open(o))) => {
                let name = o.virtual_host.as_str();
                let known = self.server.broker.vhost(name).is_some()
                    && self.server.users.may_access(&self.user, name);
                if !known && self.may_recheck() {
                    self.recheck(class_id, method_id, AMQPClass::Connection(M::Open(o)));
                    return Ok(());
                }
                let Some(v) = self.server.broker.vhost(name) else {
                    return Err(AmqpError::connection(
                        code::NOT_ALLOWED,
                        format!("vhost {name} not found"),
                    )
                    .at(class_id, method_id));
                };
                if !self.server.users.may_access(&self.user, name) {
                    return Err(AmqpError::connection(
                        code::NOT_ALLOWED,
                        format!("access to vhost '{name}' refused for user '{}'", self.user),
                    )
                    .at(class_id, method_id));
                }
                // The vhost's and the user's max-connections (RabbitMQ's texts).
                let admission = self.server.users.admit(&self.user, name).map_err(|why| {
                    AmqpError::connection(code::NOT_ALLOWED, why).at(class_id, method_id)
                })?;
                self.admission = Some(admission);
                {
                    let mut d = self.info.details.lock();
                    d.vhost = Some(name.to_owned());
                    d.frame_max = self.frame_max;
                    d.channel_max = self.channel_max;
                    d.heartbeat = self.heartbeat.load(Ordering::Relaxed) as u16;
                }
                self.grants = Some(crate::auth::grants::Grants::new(
                    self.server.users.clone(),
                    &self.user,
                    name,
                ));
                self.vhost = Some(v);
                self.send(0, AMQPClass::Connection(M::OpenOk(connection::OpenOk {})));
                self.state = ConnectionState::Open;
                tracing::Span::current().record("vhost", tracing::field::display(name));
                info!("connection opened");
            }
            (state, m) => {
                return Err(AmqpError::connection(
                    code::COMMAND_INVALID,
                    format!(
                        "unexpected method class {} id {} in handshake state {state:?}",
                        m.get_amqp_class_id(),
                        m.get_amqp_method_id()
                    ),
                )
                .at(class_id, method_id))
            }
        }
        Ok(())
    }

    /// Answer a login whose delay is over: tune, or the refusal — as RabbitMQ, connection.close
    /// 403 (class/method 0) to clients that announce authentication_failure_close, a plain
    /// socket close to the others.
    pub(super) fn answer_login(&mut self, login: PendingLogin) -> AmqpResult<()> {
        use connection::AMQPMethod as M;
        match login.refusal {
            Some((e, true)) => return Err(e),
            Some((_, false)) => self.state = ConnectionState::Closed,
            None => {
                self.send(
                    0,
                    AMQPClass::Connection(M::Tune(connection::Tune {
                        channel_max: self.config.channel_max,
                        frame_max: self.config.frame_max,
                        heartbeat: self.config.heartbeat,
                    })),
                );
                self.state = ConnectionState::AwaitTuneOk;
            }
        }
        Ok(())
    }

    /// In a cluster, a refusal is decided only after catching up with the cluster (a user or
    /// vhost created, a password or permission changed through another node a moment ago).
    fn may_recheck(&self) -> bool {
        !self.rechecking && self.server.broker.cluster().is_some()
    }

    fn recheck(&mut self, class_id: u16, method_id: u16, m: AMQPClass) {
        self.recheck = Some(Frame::Method {
            channel: 0,
            class_id,
            method_id,
            method: Method::Other(Box::new(m)),
        });
    }

    pub(super) fn authenticate(&self, user: &str, pass: &str) -> bool {
        let c = &self.config;
        if !self.server.users.check_password(user, pass) {
            return false;
        }
        // Like RabbitMQ's loopback_users: these may only log in from the local host.
        !c.loopback_users.iter().any(|u| u == user) || self.peer.ip().is_loopback()
    }
}

pub(super) fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

pub(super) fn login_refused(mechanism: &str) -> AmqpError {
    AmqpError::connection(
        code::ACCESS_REFUSED,
        format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the \
             broker logfile."
        ),
    )
}

/// Decode the SASL response of PLAIN (`\0user\0pass`) or AMQPLAIN (a field table body).
pub(super) fn credentials(mechanism: &str, response: &[u8]) -> AmqpResult<(String, String)> {
    let bad = || login_refused(mechanism);
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|&b| b == 0);
            let _authzid = parts.next().ok_or_else(bad)?;
            let user = parts.next().ok_or_else(bad)?;
            let pass = parts.next().ok_or_else(bad)?;
            Ok((
                String::from_utf8_lossy(user).into_owned(),
                String::from_utf8_lossy(pass).into_owned(),
            ))
        }
        "AMQPLAIN" => {
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            let (_, t) =
                amq_protocol::types::parsing::parse_field_table(&framed[..]).map_err(|_| bad())?;
            let get = |k: &str| crate::broker::args::str_arg(&t, k);
            Ok((
                get("LOGIN").ok_or_else(bad)?,
                get("PASSWORD").ok_or_else(bad)?,
            ))
        }
        other => Err(AmqpError::connection(
            code::ACCESS_REFUSED,
            format!("unsupported authentication mechanism '{other}'"),
        )),
    }
}
