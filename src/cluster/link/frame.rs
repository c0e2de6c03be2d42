//! The link's frames once the handshake is done, and the reader and writer halves that carry them.
//!
//! A frame is `u32 length | u8 kind | u64 call id | u32 service | payload`, big-endian, where
//! `length` counts everything after itself (so at least 13). A length above [`MAX_FRAME`] closes
//! the connection before anything is buffered.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

/// The largest frame (kind, call id, service and payload) either side accepts: 64 MiB.
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes of a frame after its length field and before its payload.
const FIXED: usize = 1 + 8 + 4;
/// The largest payload a frame can carry.
pub const MAX_PAYLOAD: usize = MAX_FRAME - FIXED;

pub const CALL: u8 = 0;
pub const REPLY_OK: u8 = 1;
pub const REPLY_ERR: u8 = 2;
/// Sent by the dialer when it has calls pending and heard nothing for a while; answered with
/// [`PONG`] (same id) by the listener's reader itself, not by the handler.
pub const PING: u8 = 3;
pub const PONG: u8 = 4;
/// Sent by the dialer for a call it gave up on (same id): the listener drops the handler's
/// future; no reply follows.
pub const CANCEL: u8 = 5;

/// When a connection last received bytes, for the dialer's liveness check.
pub struct Activity {
    born: std::time::Instant,
    ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: std::time::Instant::now(),
            ms: Default::default(),
        })
    }
    pub fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
    /// Time since the last `touch` (or creation).
    pub fn silent_for(&self) -> std::time::Duration {
        let last = self.ms.load(std::sync::atomic::Ordering::Relaxed);
        self.born
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }
}

/// One frame read off the socket; the payload is cut out of the read buffer without a copy.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub id: u64,
    pub service: u32,
    pub payload: Bytes,
}

/// A frame queued for the writer. The permit (when any) is the call slot the frame belongs to:
/// it is released only once the frame has left the queue, so the queue is bounded by the number
/// of slots even when the other side stops reading.
pub struct Out {
    head: [u8; 4 + FIXED],
    payload: Bytes,
    _slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl Out {
    /// `payload` must be at most [`MAX_PAYLOAD`] bytes (callers check).
    pub fn new(
        kind: u8,
        id: u64,
        service: u32,
        payload: Bytes,
        slot: Option<Arc<OwnedSemaphorePermit>>,
    ) -> Out {
        debug_assert!(payload.len() <= MAX_PAYLOAD);
        let mut head = [0u8; 4 + FIXED];
        head[..4].copy_from_slice(&((FIXED + payload.len()) as u32).to_be_bytes());
        head[4] = kind;
        head[5..13].copy_from_slice(&id.to_be_bytes());
        head[13..17].copy_from_slice(&service.to_be_bytes());
        Out {
            head,
            payload,
            _slot: slot,
        }
    }
}

/// Reads frames from one half of a connection.
pub struct FrameReader<R> {
    r: R,
    buf: BytesMut,
    activity: Option<Arc<Activity>>,
}

/// How much the reader asks the socket for at a time (and reserves ahead of a large frame).
const READ_CHUNK: usize = 64 << 10;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            r,
            buf: BytesMut::with_capacity(READ_CHUNK),
            activity: None,
        }
    }

    /// Also records in `a` when bytes last arrived.
    pub fn with_activity(mut self, a: Arc<Activity>) -> Self {
        self.activity = Some(a);
        self
    }

    /// The next frame; `Ok(None)` at a clean end of stream (between frames). An oversized or
    /// undersized length, or an end of stream inside a frame, is an `InvalidData` error.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                if !(FIXED..=MAX_FRAME).contains(&len) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "frame length {len} outside {FIXED}..={MAX_FRAME} bytes; connection closed"
                        ),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    let kind = self.buf.get_u8();
                    let id = self.buf.get_u64();
                    let service = self.buf.get_u32();
                    let payload = self.buf.split_to(len - FIXED).freeze();
                    return Ok(Some(Frame {
                        kind,
                        id,
                        service,
                        payload,
                    }));
                }
                // Grow toward the frame at most 1 MiB at a time: a peer announcing 64 MiB and
                // sending nothing costs 1 MiB, not 64.
                let missing = 4 + len - self.buf.len();
                self.buf.reserve(missing.min(1 << 20));
            } else {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.r.read_buf(&mut self.buf).await?;
            if let Some(a) = &self.activity {
                a.touch();
            }
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame",
                ));
            }
        }
    }
}

/// At most this many frames, or about this many bytes, go into one batch of writes, so a steady
/// stream of frames still leaves the node promptly.
const BATCH: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
/// Payloads up to this size are copied next to their headers; larger ones are written from
/// where they are (vectored writes), never copied.
const COPY_MAX: usize = 4096;
/// Slices per `writev`.
const IOV: usize = 64;

/// Writes queued frames, many per syscall under load: it takes every frame already queued (up
/// to a batch) and writes them with vectored writes; it never writes frame by frame. Returns
/// when the queue's senders are gone.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> std::io::Result<()> {
    let mut batch: Vec<Out> = Vec::with_capacity(BATCH);
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut stage = BytesMut::with_capacity(READ_CHUNK);
    while let Some(out) = rx.recv().await {
        let mut bytes = out.head.len() + out.payload.len();
        batch.push(out);
        while batch.len() < BATCH && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(out) => {
                    bytes += out.head.len() + out.payload.len();
                    batch.push(out);
                }
                Err(_) => break,
            }
        }
        for out in &batch {
            stage.extend_from_slice(&out.head);
            if out.payload.len() <= COPY_MAX {
                stage.extend_from_slice(&out.payload);
            } else {
                if !stage.is_empty() {
                    chunks.push(stage.split().freeze());
                }
                chunks.push(out.payload.clone());
            }
        }
        if !stage.is_empty() {
            chunks.push(stage.split().freeze());
        }
        write_all_vectored(&mut w, &chunks).await?;
        chunks.clear();
        // The frames' slots are released only now that they are written.
        batch.clear();
        w.flush().await?;
    }
    Ok(())
}

async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &[Bytes],
) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < chunks.len() {
        let mut iov = Vec::with_capacity(IOV.min(chunks.len() - i));
        iov.push(std::io::IoSlice::new(&chunks[i][off..]));
        for c in chunks[i + 1..].iter().take(IOV - 1) {
            iov.push(std::io::IoSlice::new(c));
        }
        let mut n = w.write_vectored(&iov).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let left = chunks[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_errors() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(a, rx));
        tx.send(Out::new(CALL, 7, 9, Bytes::from_static(b"hello"), None))
            .unwrap();
        tx.send(Out::new(REPLY_ERR, u64::MAX, 0, Bytes::new(), None))
            .unwrap();
        drop(tx);
        let mut r = FrameReader::new(b);
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(
            (f.kind, f.id, f.service, &f.payload[..]),
            (CALL, 7, 9, &b"hello"[..])
        );
        let f = r.next().await.unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (REPLY_ERR, u64::MAX, 0));
        assert!(r.next().await.unwrap().is_none());

        for len in [0u32, 12, (MAX_FRAME + 1) as u32, u32::MAX] {
            let (mut a, b) = tokio::io::duplex(64);
            a.write_all(&len.to_be_bytes()).await.unwrap();
            let err = FrameReader::new(b).next().await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "length {len}");
        }
        // A pipe of 100 bytes forces partial vectored writes; mixed sizes (copied and not) come
        // out whole and in order.
        let (a, b) = tokio::io::duplex(100);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(a, rx));
        let sizes = [0usize, 10, COPY_MAX, COPY_MAX + 1, 100_000, 3, 1 << 20];
        for (i, &n) in sizes.iter().enumerate() {
            let p: Vec<u8> = (0..n).map(|j| (i + j) as u8).collect();
            tx.send(Out::new(CALL, i as u64, 0, p.into(), None))
                .unwrap();
        }
        drop(tx);
        let mut r = FrameReader::new(b);
        for (i, &n) in sizes.iter().enumerate() {
            let f = r.next().await.unwrap().unwrap();
            assert_eq!((f.id, f.payload.len()), (i as u64, n));
            assert!(f
                .payload
                .iter()
                .enumerate()
                .all(|(j, &x)| x == (i + j) as u8));
        }
        assert!(r.next().await.unwrap().is_none());

        // An end of stream inside a frame is an error, not a clean end.
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 0, 0, 20, 0, 0]).await.unwrap();
        drop(a);
        let err = FrameReader::new(b).next().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
