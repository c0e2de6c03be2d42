//! Clients on raw sockets bound to a chosen source address (127.0.0.2 … are loopback too), for
//! tests that care which address a login comes from and how long its answer takes.

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from `from` (any port).
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// How the broker answered a start-ok.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    Tuned,
    Refused(u16),
    /// The socket closed (or nothing came within 20 s).
    Dropped,
}

pub fn frame_bytes(f: &AMQPFrame) -> Vec<u8> {
    cookie_factory::gen_simple(gen_frame(f), Vec::new()).unwrap()
}

/// Read one frame into `buf`'s keeping; None on close or after 20 s.
pub async fn read_frame(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<AMQPFrame> {
    loop {
        if let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            return Some(f);
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(20), sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The protocol header and a PLAIN start-ok from `from`; the answer and how long it took after
/// the start-ok was sent. The client announces authentication_failure_close.
pub async fn amqp_login(to: SocketAddr, from: IpAddr, user: &str, pass: &str) -> (Login, Duration) {
    let mut sock = connect_from(from, to).await;
    let mut buf = Vec::new();
    sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let start = read_frame(&mut sock, &mut buf).await;
    assert!(
        matches!(
            start,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Start(_))
            ))
        ),
        "{start:?}"
    );
    let mut caps = FieldTable::default();
    caps.insert(
        "authentication_failure_close".into(),
        AMQPValue::Boolean(true),
    );
    let mut client_properties = FieldTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let start_ok = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties,
            mechanism: "PLAIN".into(),
            response: LongString::from(format!("\0{user}\0{pass}")),
            locale: "en_US".into(),
        })),
    );
    sock.write_all(&frame_bytes(&start_ok)).await.unwrap();
    let t = Instant::now();
    let answer = match read_frame(&mut sock, &mut buf).await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))) => {
            Login::Tuned
        }
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            Login::Refused(c.reply_code)
        }
        None => Login::Dropped,
        other => panic!("unexpected answer to start-ok: {other:?}"),
    };
    (answer, t.elapsed())
}

/// One HTTP/1.1 request from `from`: the status and how long the answer took.
pub async fn http_from(
    to: SocketAddr,
    from: IpAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
) -> (u16, Duration) {
    use base64::Engine;
    let mut sock = connect_from(from, to).await;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n");
    if let Some((u, p)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let t = Instant::now();
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), sock.read(&mut chunk))
            .await
            .expect("an HTTP answer within 20 s")
            .unwrap();
        assert!(n > 0, "connection closed before the status line");
        head.extend_from_slice(&chunk[..n]);
    }
    let elapsed = t.elapsed();
    let line = String::from_utf8_lossy(&head);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {line}"));
    (status, elapsed)
}

/// An AMQP connection on a raw socket, opened on vhost `/` as guest.
pub struct RawConn {
    pub sock: TcpStream,
    pub buf: Vec<u8>,
}

impl RawConn {
    /// Protocol header, start-ok, tune-ok (`frame_max`, channel_max 2047, no heartbeats), open.
    pub async fn open(to: SocketAddr, frame_max: u32) -> RawConn {
        let mut c = RawConn {
            sock: TcpStream::connect(to).await.unwrap(),
            buf: Vec::new(),
        };
        c.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        c.expect(|f| matches!(f, AMQPClass::Connection(connection::AMQPMethod::Start(_))))
            .await;
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        ))
        .await;
        c.expect(|f| matches!(f, AMQPClass::Connection(connection::AMQPMethod::Tune(_))))
            .await;
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max,
                heartbeat: 0,
            })),
        ))
        .await;
        c.send(&AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ))
        .await;
        c.expect(|f| matches!(f, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))))
            .await;
        c
    }

    pub async fn send(&mut self, f: &AMQPFrame) {
        self.sock.write_all(&frame_bytes(f)).await.unwrap();
    }

    pub async fn recv(&mut self) -> Option<AMQPFrame> {
        read_frame(&mut self.sock, &mut self.buf).await
    }

    /// The next method frame must satisfy `f` (heartbeats skipped).
    pub async fn expect(&mut self, f: impl Fn(&AMQPClass) -> bool) -> AMQPClass {
        loop {
            match self.recv().await {
                Some(AMQPFrame::Heartbeat) => continue,
                Some(AMQPFrame::Method(_, m)) if f(&m) => return m,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Read until a connection.close arrives: its reply code and text (None: the socket closed).
    pub async fn connection_close(&mut self) -> Option<(u16, String)> {
        while let Some(f) = self.recv().await {
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) = f
            {
                return Some((c.reply_code, c.reply_text.to_string()));
            }
        }
        None
    }
}
