//! The SASL login at connection.start-ok: PLAIN and AMQPLAIN check a password (`handshake`);
//! EXTERNAL, as RabbitMQ's rabbitmq_auth_mechanism_ssl, takes the user from the verified client
//! certificate of a TLS connection and checks no password, only that the user exists (and the
//! loopback rule).

use super::handshake::{credentials, login_refused};
use super::*;

impl Connection {
    /// The user the client asked to log in as, and whether the login is accepted.
    pub(super) fn login(&self, mechanism: &str, response: &[u8]) -> AmqpResult<(String, bool)> {
        if mechanism == "EXTERNAL" {
            return self.external_login();
        }
        let (user, pass) = credentials(mechanism, response)?;
        let accepted = self.authenticate(&user, &pass);
        Ok((user, accepted))
    }

    fn external_login(&self) -> AmqpResult<(String, bool)> {
        // Not offered on plain TCP: RabbitMQ's answer to a mechanism it did not offer.
        let Some(tls) = &self.tls else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "invalid authentication mechanism 'EXTERNAL'",
            ));
        };
        let Some(cert) = &tls.peer_cert else {
            warn!("EXTERNAL login refused: the client presented no TLS certificate");
            return Err(login_refused("EXTERNAL"));
        };
        let user = if self.config.tls.cert_login_from == "distinguished_name" {
            cert.subject.clone()
        } else {
            match &cert.common_name {
                Some(cn) => cn.clone(),
                None => {
                    warn!(subject = %cert.subject,
                        "EXTERNAL login refused: the certificate's subject has no CN");
                    return Err(login_refused("EXTERNAL"));
                }
            }
        };
        let exists = self.server.users.user(&user).is_some();
        let from_here = !self.config.loopback_users.contains(&user) || self.peer.ip().is_loopback();
        if !exists {
            warn!(user = %user, "EXTERNAL login refused: no such user");
        }
        Ok((user, exists && from_here))
    }
}
