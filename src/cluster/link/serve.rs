//! The accepting side of the link: connections from peers, their handshakes, and the calls
//! they make, each served by a task of its own (a panic in a handler answers with an error).

use super::*;

pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let shut = shut_down(inner.shut_tx.subscribe());
    tokio::pin!(shut);
    loop {
        let accepted = tokio::select! {
            _ = &mut shut => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((s, peer)) => {
                let Ok(permit) = inner.handshaking.clone().try_acquire_owned() else {
                    warn!(node = %inner.name, "cluster link: {MAX_HANDSHAKING} handshakes already in progress; closed the connection from {peer}");
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let shut = shut_down(inner.shut_tx.subscribe());
                    tokio::select! {
                        _ = shut => {}
                        _ = serve(inner.clone(), s, peer, permit) => {}
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: try again shortly rather than spin.
                warn!(node = %inner.name, "cluster link: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    debug!(node = %inner.name, "cluster link listener closed");
}

/// Serves one accepted connection: the handshake, then the peer's calls.
async fn serve(inner: Arc<Inner>, s: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let _ = s.set_nodelay(true);
    let me = inner.local();
    let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::handshake(s, &me, peer)).await;
    drop(me);
    drop(permit);
    let (s, remote) = match hs {
        Ok(Ok(x)) => x,
        Ok(Err(_)) => return, // logged by the handshake
        Err(_) => {
            warn!(node = %inner.name, "cluster link: {peer} did not complete the handshake within {HANDSHAKE_TIMEOUT:?}; closed");
            return;
        }
    };
    info!(node = %inner.name, "cluster link: node {} connected from {peer}", remote.name);
    inner.handler.connected(&remote);
    let remote = Arc::new(remote);
    let (r, w) = s.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let why = tokio::select! {
        why = serve_calls(inner.clone(), frame::FrameReader::new(r), tx, remote.clone()) => why,
        r = frame::write_loop(w, rx) => match r {
            Ok(()) => "the writer stopped".to_owned(),
            Err(e) => format!("write failed: {e}"),
        },
    };
    if why.is_empty() {
        debug!(node = %inner.name, "cluster link: node {} ({peer}) disconnected", remote.name);
    } else {
        warn!(node = %inner.name, "cluster link: closed the connection from node {} ({peer}): {why}", remote.name);
    }
}

/// Reads calls and runs each in its own task; returns why the connection ends ("" for a clean
/// close by the peer).
async fn serve_calls(
    inner: Arc<Inner>,
    mut r: frame::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    tx: mpsc::UnboundedSender<frame::Out>,
    remote: Arc<Remote>,
) -> String {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let pongs = Arc::new(Semaphore::new(4));
    let running = Running::default();
    loop {
        let f = match tokio::time::timeout(IDLE_CLOSE, r.next()).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return String::new(),
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("nothing received for {IDLE_CLOSE:?}, not even a ping"),
        };
        if f.kind == frame::PING {
            // Answered even when every call slot is busy (a saturated peer is alive), but at
            // most a few unsent at a time: a peer that pings and never reads gets no more.
            if let Ok(p) = pongs.clone().try_acquire_owned() {
                let pong = frame::Out::new(frame::PONG, f.id, 0, Bytes::new(), Some(Arc::new(p)));
                let _ = tx.send(pong);
            }
            continue;
        }
        if f.kind == frame::CANCEL {
            if let Some(h) = running.0.lock().remove(&f.id) {
                h.abort();
            }
            continue;
        }
        if f.kind != frame::CALL {
            return format!("unexpected frame kind {} from a caller", f.kind);
        }
        // Waits while MAX_IN_FLIGHT calls of this peer are running or their replies unsent:
        // the peer is then not read, and TCP pushes back.
        let slot = Arc::new(slots.clone().acquire_owned().await.expect("never closed"));
        let handler = inner.handler.clone();
        let remote = remote.clone();
        let tx = tx.clone();
        let calls = running.0.clone();
        // Spawned and registered under the lock, so the task cannot unregister before it is
        // registered.
        let mut reg = running.0.lock();
        let task = tokio::spawn(async move {
            let fut = std::panic::catch_unwind(AssertUnwindSafe(|| {
                handler.call(&remote, f.service, f.payload)
            }));
            let result = match fut {
                Ok(fut) => CatchUnwind(fut).await,
                Err(_) => Err(()),
            };
            calls.lock().remove(&f.id);
            let out = match result {
                Ok(Ok(b)) if b.len() <= MAX_PAYLOAD => {
                    frame::Out::new(frame::REPLY_OK, f.id, f.service, b, Some(slot))
                }
                Ok(Ok(b)) => error_reply(
                    f.id,
                    f.service,
                    format!(
                        "the reply of {} bytes exceeds the link's limit of {MAX_PAYLOAD} bytes",
                        b.len()
                    ),
                    slot,
                ),
                Ok(Err(e)) => error_reply(f.id, f.service, e, slot),
                Err(()) => {
                    warn!(
                        "cluster link: the handler panicked serving service {} for node {}",
                        f.service, remote.name
                    );
                    error_reply(f.id, f.service, "the handler panicked".into(), slot)
                }
            };
            let _ = tx.send(out);
        });
        reg.insert(f.id, task.abort_handle());
    }
}

/// The handler calls running for one connection: cancelled by the caller's cancel frames, and
/// all of them when the connection ends (their callers have their answer: an error).
#[derive(Default)]
struct Running(Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, h) in self.0.lock().drain() {
            h.abort();
        }
    }
}

fn error_reply(
    id: u64,
    service: u32,
    mut e: String,
    slot: Arc<OwnedSemaphorePermit>,
) -> frame::Out {
    if e.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !e.is_char_boundary(cut) {
            cut -= 1;
        }
        e.truncate(cut);
    }
    frame::Out::new(frame::REPLY_ERR, id, service, Bytes::from(e), Some(slot))
}

/// Turns a panic while polling the handler's future into an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let f = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *f).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}
