//! A fault-injecting TCP proxy for the links between cluster nodes.
//!
//! `Proxy::start(target)` listens on 127.0.0.1:0 and forwards every connection it accepts to
//! `target`. At run time it can be cut (`Cut::Blackhole`: connections, current and new, are held
//! open and nothing moves either way, as in a network partition; `Cut::Reset`: current
//! connections are reset and new ones are accepted and reset at once), restored, slowed down
//! (`delay`: latency added to every chunk, in both directions, without limiting throughput), and
//! asked what went through it (`stats`). Everything stops when the `Proxy` is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How a cut link behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Silent, like a partition: connections stay open, new ones are accepted, no byte is
    /// forwarded either way (nothing more is read, so senders meet TCP back-pressure). On
    /// `restore` the held connections carry on, bytes already read included, as TCP does when a
    /// partition heals before its timeouts.
    Blackhole,
    /// Loud: every current connection is reset (RST both ways), new ones are accepted and reset.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    Cut(Cut),
    Closed,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    /// Bumped by `sever`: connections from an older epoch are reset.
    epoch: u64,
}

/// What went through a proxy so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes forwarded from the connecting side to the target.
    pub bytes_up: u64,
    /// Bytes forwarded from the target back to the connecting side.
    pub bytes_down: u64,
    /// Connections accepted (while cut too).
    pub accepted: u64,
    /// Connections open right now (held ones included).
    pub open: u64,
    /// Connections the proxy reset (cuts in `Reset` mode, `sever`, target unreachable).
    pub resets: u64,
}

struct Shared {
    target: SocketAddr,
    state: watch::Sender<State>,
    delay_us: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
}

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on 127.0.0.1:0, forwarding. Must be called inside a tokio runtime.
    pub fn start(target: SocketAddr) -> Proxy {
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        let listener = TcpListener::from_std(std).expect("inside a tokio runtime");
        let shared = Arc::new(Shared {
            target,
            state: watch::Sender::new(State {
                mode: Mode::Open,
                epoch: 0,
            }),
            delay_us: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, _)) => {
                        sh.accepted.fetch_add(1, Relaxed);
                        tokio::spawn(serve(s, sh.clone()));
                    }
                    // Out of descriptors or the like: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        Proxy {
            addr,
            shared,
            accept,
        }
    }

    /// Where clients of the proxy connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Cut the link (see `Cut`). Cutting a cut link changes its mode.
    pub fn cut(&self, how: Cut) {
        self.shared.state.send_modify(|s| s.mode = Mode::Cut(how));
    }

    /// Forward again. Held connections resume; reset ones stay gone.
    pub fn restore(&self) {
        self.shared.state.send_modify(|s| s.mode = Mode::Open);
    }

    /// How the link is cut, if it is.
    pub fn is_cut(&self) -> Option<Cut> {
        match self.shared.state.borrow().mode {
            Mode::Cut(c) => Some(c),
            _ => None,
        }
    }

    /// Reset every current connection without changing the mode (new ones are served as
    /// the mode says).
    pub fn sever(&self) {
        self.shared.state.send_modify(|s| s.epoch += 1);
    }

    /// Latency added to every chunk, each way (zero: none). Applies to chunks read from now on.
    pub fn delay(&self, d: Duration) {
        self.shared.delay_us.store(d.as_micros() as u64, Relaxed);
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            bytes_up: s.up.load(Relaxed),
            bytes_down: s.down.load(Relaxed),
            accepted: s.accepted.load(Relaxed),
            open: s.open.load(Relaxed),
            resets: s.resets.load(Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.state.send_modify(|s| s.mode = Mode::Closed);
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({} -> {})", self.addr, self.shared.target)
    }
}

/// Counts a connection as open while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

fn must_reset(s: &State, epoch: u64) -> bool {
    matches!(s.mode, Mode::Cut(Cut::Reset) | Mode::Closed) || s.epoch != epoch
}

/// Reset (RST, not FIN) a socket as it is dropped.
fn reset(s: &TcpStream, sh: &Shared) {
    let _ = s.set_zero_linger();
    sh.resets.fetch_add(1, Relaxed);
}

async fn serve(client: TcpStream, sh: Arc<Shared>) {
    sh.open.fetch_add(1, Relaxed);
    let _guard = OpenGuard(sh.clone());
    let mut st = sh.state.subscribe();
    let epoch = st.borrow().epoch;
    // Held here while blackholed: the target is not even dialled.
    loop {
        let s = *st.borrow_and_update();
        if must_reset(&s, epoch) {
            return reset(&client, &sh);
        }
        if s.mode == Mode::Open {
            break;
        }
        if st.changed().await.is_err() {
            return;
        }
    }
    let upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(sh.target)).await {
            Ok(Ok(u)) => u,
            // The target is down: the client sees its connection reset, as it would see a refusal.
            _ => return reset(&client, &sh),
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let reset_now = {
        let (st_up, st_down) = (st.clone(), st.clone());
        // Clean when both directions ended with a FIN; a failure either way resets both.
        let pumps = async {
            let up = pump(&mut cr, &mut uw, &sh, &sh.up, st_up);
            let down = pump(&mut ur, &mut cw, &sh, &sh.down, st_down);
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            while !(up_done && down_done) {
                let ok = tokio::select! {
                    ok = &mut up, if !up_done => { up_done = true; ok }
                    ok = &mut down, if !down_done => { down_done = true; ok }
                };
                if !ok {
                    return false;
                }
            }
            true
        };
        let until_reset = async {
            loop {
                if must_reset(&st.borrow_and_update(), epoch) || st.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            clean = pumps => !clean,
            _ = until_reset => true,
        }
    };
    if reset_now {
        let _ = cr.as_ref().set_zero_linger();
        reset(ur.as_ref(), &sh);
    }
}

/// Wait until the link is open (forever if it is being reset: the caller's select ends it).
async fn gate(st: &mut watch::Receiver<State>) {
    loop {
        if st.borrow_and_update().mode == Mode::Open {
            return;
        }
        if st.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One direction: a reader stamping chunks as they arrive, a writer sending each once its
/// delay has passed (so latency is added without throttling throughput), both gated by cuts.
/// True when the reader met EOF and everything read was written (and the FIN passed on);
/// false as soon as a read or a write fails.
async fn pump(
    r: &mut OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    sh: &Shared,
    counter: &AtomicU64,
    st: watch::Receiver<State>,
) -> bool {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(32);
    let mut rst = st.clone();
    let read = async move {
        loop {
            gate(&mut rst).await;
            let mut buf = vec![0u8; 16 * 1024];
            match r.read(&mut buf).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now(), buf)).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };
    let mut wst = st;
    let write = async move {
        while let Some((at, chunk)) = rx.recv().await {
            let d = sh.delay_us.load(Relaxed);
            if d > 0 {
                tokio::time::sleep_until(at + Duration::from_micros(d)).await;
            }
            gate(&mut wst).await;
            if w.write_all(&chunk).await.is_err() {
                return false;
            }
            counter.fetch_add(chunk.len() as u64, Relaxed);
        }
        // The other side closed its sending half: pass the FIN on.
        w.shutdown().await.is_ok()
    };
    tokio::pin!(read, write);
    let mut read_done = false;
    loop {
        tokio::select! {
            ok = &mut read, if !read_done => {
                if !ok {
                    return false;
                }
                read_done = true;
            }
            // Ends after the reader (its sender gone) or on a failed write.
            ok = &mut write => return ok,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The proxy against a plain echo server.

    use super::*;
    use std::io::ErrorKind;

    /// An echo server on 127.0.0.1:0; its task ends with the test's runtime.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Write `msg` and read back as many bytes, within `within`.
    async fn round_trip(
        s: &mut TcpStream,
        msg: &[u8],
        within: Duration,
    ) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut back))
            .await
            .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "no echo in time"))??;
        Ok(back)
    }

    /// Reading from `s` ends (EOF or error) within a second: the proxy closed or reset it.
    async fn closed_soon(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Bytes go both ways unchanged and are counted, per connection and in total.
    #[tokio::test]
    async fn forwards_and_counts() {
        let p = Proxy::start(echo_server().await);
        let mut a = TcpStream::connect(p.addr()).await.unwrap();
        let mut b = TcpStream::connect(p.addr()).await.unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            round_trip(&mut a, &big, Duration::from_secs(5))
                .await
                .unwrap(),
            big
        );
        assert_eq!(
            round_trip(&mut b, b"hello", Duration::from_secs(5))
                .await
                .unwrap(),
            b"hello"
        );
        let s = p.stats();
        assert_eq!((s.bytes_up, s.bytes_down), (200_005, 200_005));
        assert_eq!((s.accepted, s.open, s.resets), (2, 2, 0));
        drop(a);
        wait_for("the closed connection to leave the count", || {
            p.stats().open == 1
        })
        .await;
        assert!(p.is_cut().is_none());
    }

    /// A delay is added each way to every chunk, and removed again.
    #[tokio::test]
    async fn delay_adds_latency_each_way() {
        let p = Proxy::start(echo_server().await);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut s, b"warm", Duration::from_secs(5))
            .await
            .unwrap();
        p.delay(Duration::from_millis(150));
        let t = std::time::Instant::now();
        round_trip(&mut s, b"slow", Duration::from_secs(5))
            .await
            .unwrap();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "round trip took {took:?}"
        );
        assert!(
            took < Duration::from_millis(1500),
            "round trip took {took:?}"
        );
        p.delay(Duration::ZERO);
        let t = std::time::Instant::now();
        round_trip(&mut s, b"fast", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(250),
            "took {:?}",
            t.elapsed()
        );
    }

    /// Blackhole: an open connection and a new one (accepted) get nothing back while cut and
    /// nothing is counted; after `restore` both get their held bytes echoed.
    #[tokio::test]
    async fn blackhole_holds_then_resumes() {
        let p = Proxy::start(echo_server().await);
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut old, b"before", Duration::from_secs(5))
            .await
            .unwrap();
        let before = p.stats();
        p.cut(Cut::Blackhole);
        assert_eq!(p.is_cut(), Some(Cut::Blackhole));
        let mut new = TcpStream::connect(p.addr())
            .await
            .expect("accepted while blackholed");
        let e = round_trip(&mut old, b"during", Duration::from_millis(400))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        let e = round_trip(&mut new, b"newone", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        let during = p.stats();
        assert_eq!(
            (during.bytes_up, during.bytes_down),
            (before.bytes_up, before.bytes_down)
        );
        assert_eq!((during.accepted, during.open, during.resets), (2, 2, 0));
        p.restore();
        let mut back = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), old.read_exact(&mut back))
            .await
            .expect("held bytes delivered after restore")
            .unwrap();
        assert_eq!(&back, b"during");
        tokio::time::timeout(Duration::from_secs(2), new.read_exact(&mut back))
            .await
            .expect("the connection accepted during the cut is served after restore")
            .unwrap();
        assert_eq!(&back, b"newone");
    }

    /// Reset: the open connection ends at once; a new one is accepted and ended; after
    /// `restore` new connections work.
    #[tokio::test]
    async fn reset_ends_connections_until_restored() {
        let p = Proxy::start(echo_server().await);
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut old, b"before", Duration::from_secs(5))
            .await
            .unwrap();
        p.cut(Cut::Reset);
        assert!(closed_soon(&mut old).await, "the open connection was reset");
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed_soon(&mut new).await, "a new connection was reset");
        assert_eq!(p.stats().resets, 2);
        p.restore();
        let mut again = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(
            round_trip(&mut again, b"after", Duration::from_secs(5))
                .await
                .unwrap(),
            b"after"
        );
    }

    /// `sever` resets the current connections only; the link stays open for new ones.
    #[tokio::test]
    async fn sever_resets_current_connections() {
        let p = Proxy::start(echo_server().await);
        let mut old = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut old, b"x", Duration::from_secs(5))
            .await
            .unwrap();
        p.sever();
        assert!(closed_soon(&mut old).await);
        let mut new = TcpStream::connect(p.addr()).await.unwrap();
        round_trip(&mut new, b"y", Duration::from_secs(5))
            .await
            .unwrap();
    }

    /// A target that resets its connection: the proxy resets the client's side too and lets go
    /// of the connection at once, though the client itself sent nothing more.
    #[tokio::test]
    async fn target_reset_passes_through() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 3];
                let _ = s.read_exact(&mut b).await;
                let _ = s.set_zero_linger();
            }
        });
        let p = Proxy::start(target);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"die").await.unwrap();
        assert!(closed_soon(&mut s).await);
        wait_for("the proxy to drop the connection", || p.stats().open == 0).await;
        assert_eq!(p.stats().resets, 1);
    }

    /// A target that is down: the client's connection is accepted and reset, not left hanging.
    #[tokio::test]
    async fn target_down_resets_client() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = Proxy::start(dead);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert!(closed_soon(&mut s).await);
        assert_eq!(p.stats().resets, 1);
    }

    /// Dropping the proxy closes its port and its connections.
    #[tokio::test]
    async fn drop_stops_everything() {
        let p = Proxy::start(echo_server().await);
        let addr = p.addr();
        let mut s = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut s, b"x", Duration::from_secs(5))
            .await
            .unwrap();
        drop(p);
        assert!(
            closed_soon(&mut s).await,
            "the open connection ended with the proxy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed"
        );
    }
}
