//! The connection target: a scripted client against a real connection over an in-memory pipe.

use super::*;

/// A broker without a store, as a connection sees it.
#[doc(hidden)]
pub fn in_memory_state(config: Config) -> Arc<ServerState> {
    let users = Arc::new(
        crate::auth::Access::load(None, &config.default_user, &config.default_pass, &[])
            .expect("no store, no error"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Arc::new(ServerState {
        broker: Arc::new(Broker::new(u64::MAX / 2, None)),
        config: Arc::new(config),
        connections: Default::default(),
        users,
        // no growing delay before refusing a bad login: every input starts afresh anyway
        logins: Arc::new(crate::auth::throttle::Logins::new(
            Duration::ZERO,
            Duration::ZERO,
        )),
        rates: Default::default(),
        store: None,
        listeners: Listeners {
            amqp: addr,
            http: addr,
            prometheus: None,
            amqps: None,
            https: None,
        },
    })
}

/// How long (real time) one fuzzed connection may take before it counts as a hang.
pub(super) const HANG: Duration = Duration::from_secs(20);

/// A connection driven by frames picked from the input: see the module's doc.
pub fn connection(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(writes) = script(&mut u) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let config = Config {
            handshake_timeout_ms: 2_000,
            max_message_size: 16 << 10,
            ..Config::default()
        };
        let state = in_memory_state(config);
        let received = tokio::time::timeout(HANG, run_client(&state, writes))
            .await
            .expect("the connection ended in bounded time");
        check_output(&received);
        check_consistent(&state);
        tokio::time::timeout(HANG, probe(&state))
            .await
            .expect("the probe connection ended in bounded time");
        // With every queue and exchange gone, no message is accounted any more.
        for v in state.broker.vhost_list() {
            v.delete_everything();
        }
        assert_eq!(state.broker.memory.used(), 0, "message memory leaked");
    });
}

/// A connection task serving one end of an in-memory pipe (its peer 127.0.0.1:`port`): the
/// client's end, the shutdown switch (dropping it changes nothing), and the task.
fn open_pipe(
    state: &Arc<ServerState>,
    port: u16,
) -> (
    tokio::io::DuplexStream,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (client, server) = tokio::io::duplex(64 << 10);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let srv = tokio::spawn(crate::amqp::connection::serve(
        server,
        peer,
        state.listeners.amqp,
        state.clone(),
        shutdown_rx,
    ));
    (client, shutdown_tx, srv)
}

async fn run_client(state: &Arc<ServerState>, writes: Vec<Step>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, shutdown_tx, srv) = open_pipe(state, 40000);
    let (mut rd, mut wr) = tokio::io::split(client);
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    });
    let clock = state.broker.clock.clone();
    let broker = state.broker.clone();
    for step in writes {
        match step {
            Step::Advance(ms) => {
                // let the broker catch up with what was sent, then move its clock
                tokio::time::sleep(Duration::from_millis(1)).await;
                clock.advance(Duration::from_millis(ms));
                broker.sweep_expired();
            }
            Step::Write(w) => {
                if wr.write_all(&w).await.is_err() {
                    break; // the broker closed the connection
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    drop(wr);
    srv.await.expect("the connection task did not panic");
    drop(shutdown_tx);
    reader.await.expect("reader")
}

/// Every frame the broker sent is well formed, and its methods parse.
pub(super) fn check_output(out: &[u8]) {
    let mut pos = 0;
    if out.starts_with(b"AMQP") {
        return; // the protocol header was refused (never for our header)
    }
    while pos < out.len() {
        let rest = &out[pos..];
        assert!(rest.len() >= 8, "truncated frame at the end of the output");
        let size = u32::from_be_bytes(rest[3..7].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= size + 8,
            "truncated frame at the end of the output"
        );
        assert_eq!(rest[size + 7], codec::FRAME_END, "bad frame end in output");
        assert!(size <= 131_072, "frame over frame_max in output");
        if rest[0] == codec::FRAME_METHOD {
            let (left, _) = parse_frame(&rest[..size + 8])
                .unwrap_or_else(|e| panic!("broker sent an unparseable method: {e:?}"));
            assert!(left.is_empty());
        } else {
            assert!(
                [
                    codec::FRAME_HEADER,
                    codec::FRAME_BODY,
                    codec::FRAME_HEARTBEAT
                ]
                .contains(&rest[0]),
                "bad frame type in output"
            );
        }
        pos += size + 8;
    }
}

/// Once its only connection is gone, the broker holds nothing of it.
pub(super) fn check_consistent(state: &Arc<ServerState>) {
    assert!(
        state.connections.list().is_empty(),
        "a closed connection is still registered"
    );
    for v in state.broker.vhost_list() {
        for q in v.queue_list() {
            let c = q.counts();
            assert_eq!(c.consumers, 0, "queue {} kept a consumer", q.name);
            assert_eq!(c.unacked, 0, "queue {} kept unacked messages", q.name);
        }
    }
}

/// A well-behaved client: declare a queue, publish to it, get the message back, close.
async fn probe(state: &Arc<ServerState>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, _shutdown_tx, srv) = open_pipe(state, 40001);
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut w = codec::PROTOCOL_HEADER.to_vec();
    use connection::AMQPMethod as Conn;
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(&b"\0guest\0guest"[..]),
            locale: "en_US".into(),
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    put_method(
        &mut w,
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let q = "fuzz-probe-\u{1F6A7}";
    put_method(
        &mut w,
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: q.into(),
            exclusive: true,
            auto_delete: false,
            durable: false,
            passive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    put_method(
        &mut w,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: true,
            immediate: false,
        })),
    );
    let mut header = BytesMut::new();
    header.put_u16(60);
    header.put_u16(0);
    header.put_u64(4);
    header.put_u16(0);
    put_frame(&mut w, codec::FRAME_HEADER, 1, &header);
    put_frame(&mut w, codec::FRAME_BODY, 1, b"ping");
    put_method(
        &mut w,
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: q.into(),
            no_ack: true,
        })),
    );
    put_method(
        &mut w,
        0,
        AMQPClass::Connection(Conn::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    wr.write_all(&w).await.expect("probe writes");
    // Read until close-ok, then close our side as a client does.
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    'read: loop {
        let mut chunk = [0u8; 4096];
        let n = rd.read(&mut chunk).await.expect("probe reads");
        assert!(n > 0, "probe connection closed early; got {frames:?}");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok((rest, f)) = parse_frame(&buf[..]) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            let done = matches!(
                f,
                AMQPFrame::Method(0, AMQPClass::Connection(Conn::CloseOk(_)))
            );
            frames.push(f);
            if done {
                break 'read;
            }
        }
    }
    drop(wr);
    drop(rd);
    srv.await.expect("probe connection task");
    let got_body = frames
        .iter()
        .any(|f| matches!(f, AMQPFrame::Body(1, b) if b == b"ping"));
    let got_ok = frames.iter().any(|f| {
        matches!(
            f,
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))
        )
    });
    assert!(
        got_ok && got_body,
        "probe did not get its message: {frames:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(out: &[u8]) -> Vec<(u16, u16)> {
        let mut v = vec![];
        let mut rest = out;
        while let Ok((r, f)) = parse_frame(rest) {
            if let AMQPFrame::Method(_, m) = f {
                v.push((m.get_amqp_class_id(), m.get_amqp_method_id()));
            }
            rest = r;
        }
        v
    }

    /// The connection harness reaches the broker's state: a scripted session (declare, consume,
    /// publish) gets its consumer registered and a delivery, and after the run the consistency
    /// checks pass.
    #[test]
    fn scripted_session_consumes() {
        let mut w = Vec::new();
        let mut u = Unstructured::new(&[0xff; 64]);
        let Step::Write(hs) = script(&mut u).unwrap().remove(0) else {
            panic!("handshake first")
        };
        w.extend_from_slice(&hs);
        put_method(
            &mut w,
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q".into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        put_method(
            &mut w,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "c1".into(),
                no_local: false,
                no_ack: false,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        );
        put_method(
            &mut w,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "q".into(),
                mandatory: false,
                immediate: false,
            })),
        );
        put_frame(
            &mut w,
            codec::FRAME_HEADER,
            1,
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
        );
        put_frame(&mut w, codec::FRAME_BODY, 1, b"x");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let state = in_memory_state(Config::default());
            let out = run_client(&state, vec![Step::Write(w)]).await;
            let m = methods(&out);
            assert!(m.contains(&(60, 21)), "no consume-ok in {m:?}");
            assert!(m.contains(&(60, 60)), "no deliver in {m:?}");
            check_output(&out);
            check_consistent(&state);
        });
    }
}
