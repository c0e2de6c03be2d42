//! AMQP exceptions, typed by what they close.
//!
//! Every refusal the broker makes is an `AmqpError`: a `ChannelError` that ends only its channel,
//! or a `ConnectionError` that ends the whole connection, each carrying an `Exception` (reply code,
//! RabbitMQ's text, the failing method). The wire layer fills in the class and method ids of the
//! method that failed and sends the close; nothing else sends closes.

use std::fmt;

/// Reply codes of AMQP 0-9-1, as RabbitMQ uses them.
pub mod code {
    pub const CONTENT_TOO_LARGE: u16 = 311;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const INVALID_PATH: u16 = 402;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const INTERNAL_ERROR: u16 = 541;

    /// The symbolic name RabbitMQ puts before the text ("NOT_FOUND - no queue ...").
    pub fn name(code: u16) -> &'static str {
        match code {
            CONTENT_TOO_LARGE => "CONTENT_TOO_LARGE",
            NO_ROUTE => "NO_ROUTE",
            CONNECTION_FORCED => "CONNECTION_FORCED",
            INVALID_PATH => "INVALID_PATH",
            ACCESS_REFUSED => "ACCESS_REFUSED",
            NOT_FOUND => "NOT_FOUND",
            RESOURCE_LOCKED => "RESOURCE_LOCKED",
            PRECONDITION_FAILED => "PRECONDITION_FAILED",
            FRAME_ERROR => "FRAME_ERROR",
            SYNTAX_ERROR => "SYNTAX_ERROR",
            COMMAND_INVALID => "COMMAND_INVALID",
            CHANNEL_ERROR => "CHANNEL_ERROR",
            UNEXPECTED_FRAME => "UNEXPECTED_FRAME",
            RESOURCE_ERROR => "RESOURCE_ERROR",
            NOT_ALLOWED => "NOT_ALLOWED",
            NOT_IMPLEMENTED => "NOT_IMPLEMENTED",
            INTERNAL_ERROR => "INTERNAL_ERROR",
            _ => "UNKNOWN",
        }
    }
}

/// What an AMQP exception says: the reply code, the text (without the symbolic prefix), and the
/// method that caused it (filled in by the wire layer when it is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Exception {
    fn new(code: u16, text: impl Into<String>) -> Self {
        Exception {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    /// The reply text as RabbitMQ sends it: `NAME - text`, cut to fit a short string.
    pub fn reply_text(&self) -> String {
        let mut s = format!("{} - {}", code::name(self.code), self.text);
        if s.len() > 255 {
            let mut cut = 255;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

/// An exception that closes one channel (channel.close); the connection and its other channels
/// carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelError(pub Exception);

/// An exception that closes the whole connection (connection.close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError(pub Exception);

impl ConnectionError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        ConnectionError(Exception::new(code, text))
    }
}

/// A refusal, typed by what it closes. The model raises these with RabbitMQ's codes and texts;
/// the wire layer sends the close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    Channel(ChannelError),
    Connection(ConnectionError),
}

impl std::ops::Deref for ChannelError {
    type Target = Exception;
    fn deref(&self) -> &Exception {
        &self.0
    }
}

impl std::ops::Deref for ConnectionError {
    type Target = Exception;
    fn deref(&self) -> &Exception {
        &self.0
    }
}

impl std::ops::Deref for AmqpError {
    type Target = Exception;
    fn deref(&self) -> &Exception {
        match self {
            AmqpError::Channel(e) => &e.0,
            AmqpError::Connection(e) => &e.0,
        }
    }
}

impl From<ConnectionError> for AmqpError {
    fn from(e: ConnectionError) -> Self {
        AmqpError::Connection(e)
    }
}

/// Where there is no channel to close (the handshake, channel 0, the frame layer), every refusal
/// closes the connection, with its own code and text.
impl From<AmqpError> for ConnectionError {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Connection(e) => e,
            AmqpError::Channel(ChannelError(x)) => ConnectionError(x),
        }
    }
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        AmqpError::Channel(ChannelError(Exception::new(code, text)))
    }

    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        AmqpError::Connection(ConnectionError::new(code, text))
    }

    pub fn not_found(text: impl Into<String>) -> Self {
        Self::channel(code::NOT_FOUND, text)
    }
    pub fn precondition(text: impl Into<String>) -> Self {
        Self::channel(code::PRECONDITION_FAILED, text)
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::channel(code::ACCESS_REFUSED, text)
    }
    pub fn locked(text: impl Into<String>) -> Self {
        Self::channel(code::RESOURCE_LOCKED, text)
    }
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Self::connection(code::NOT_IMPLEMENTED, text)
    }

    /// Attach the method that caused the error, unless one is already set.
    pub fn at(mut self, class_id: u16, method_id: u16) -> Self {
        let x = match &mut self {
            AmqpError::Channel(e) => &mut e.0,
            AmqpError::Connection(e) => &mut e.0,
        };
        if x.class_id == 0 && x.method_id == 0 {
            x.class_id = class_id;
            x.method_id = method_id;
        }
        self
    }

    /// The exception, whatever it closes.
    pub fn into_exception(self) -> Exception {
        match self {
            AmqpError::Channel(e) => e.0,
            AmqpError::Connection(e) => e.0,
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reply_text())
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for AmqpError {}

pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_is_prefixed_and_bounded() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'");
        assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
        let long = AmqpError::precondition("é".repeat(300));
        assert!(long.reply_text().len() <= 255);
    }
}
