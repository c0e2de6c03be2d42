//! Stream storage: one stream's append-only log of messages, in segment files of its own (beside
//! the message log), addressed by offset (0, 1, 2, … per stream, never reused), with a sparse
//! offset/timestamp index, and retention that deletes whole segments.
//!
//! Durability goes through the message log's writer thread (`MessageLog::append_external`): a
//! stream's appends join the same group commit as queue messages, so a publisher confirm waits
//! for one position (the ticket) whichever kind of queue the message reached. A record becomes
//! readable (committed) once the writer has synced it; readers never see an offset that a crash
//! could take back.
//!
//! RAM is bounded whatever the stream's length: a few dozen bytes per segment in memory; the
//! per-segment index lives in its own file and is read when a reader seeks.
//!
//! STUB: the contract only; the implementation is being written.

use crate::store::{MessageLog, StoreError};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Retention and segment size of a stream (its declare arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// `x-stream-max-segment-size-bytes`: a new segment is started once the current one would
    /// grow past this (RabbitMQ's default: 500,000,000).
    pub max_segment_bytes: u64,
    /// `x-max-length-bytes`: whole old segments are deleted while the stream is larger.
    pub max_bytes: Option<u64>,
    /// `x-max-age` in milliseconds: whole segments whose newest message is older are deleted.
    pub max_age_ms: Option<u64>,
}

/// A message to append. `properties` writes the message's encoded basic properties for the
/// offset the message gets (the broker adds the `x-stream-offset` header there, so that a
/// delivery sends the stored bytes as they are).
pub struct NewEntry<'a> {
    /// Wall-clock milliseconds at publication.
    pub timestamp: u64,
    /// `x-stream-filter-value` of the message, if any.
    pub filter: Option<&'a [u8]>,
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub properties: &'a dyn Fn(u64, &mut Vec<u8>),
    pub body: &'a [u8],
}

/// A message read back. The byte fields are slices of one read buffer (no copies).
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub offset: u64,
    pub timestamp: u64,
    pub filter: Option<Bytes>,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

/// Where a reader starts (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest message still held.
    First,
    /// The newest committed message (then everything after it); `Next` when empty.
    Last,
    /// Only messages committed from now on.
    Next,
    /// This offset; the first held one if it was deleted; `Next` if beyond the tail.
    Offset(u64),
    /// The first message published at or after this wall-clock time (ms); `Next` if none.
    Timestamp(u64),
}

/// A reader's position: the next offset to read, and where it is in the files (so consecutive
/// reads neither search the index nor reopen files).
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    pub next: u64,
}

/// What a stream holds, for management and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamInfo {
    /// The first offset held (== `next` when empty).
    pub first: u64,
    /// The offset the next committed message will get (one past the last committed one).
    pub next: u64,
    pub messages: u64,
    pub segments: u32,
    /// Bytes of segment files on disk.
    pub bytes: u64,
    /// Publication time of the first and last messages held (0 when empty).
    pub first_timestamp: u64,
    pub last_timestamp: u64,
}

/// One stream's files.
#[derive(Debug)]
pub struct StreamLog {
    _log: Arc<MessageLog>,
}

impl StreamLog {
    /// Open (creating) the stream in `dir`, recovering what its files hold (a torn tail is cut
    /// off), with `log` as its writer.
    pub fn open(
        _dir: &Path,
        _options: StreamOptions,
        _log: Arc<MessageLog>,
    ) -> Result<Arc<StreamLog>, StoreError> {
        todo!()
    }

    /// Append one message; returns its offset and the message-log position its confirm waits
    /// for. Applies the size retention when a segment fills.
    pub fn append(self: &Arc<Self>, _e: &NewEntry) -> (u64, u64) {
        todo!()
    }

    /// Watch the committed end (`StreamInfo::next`) move.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        todo!()
    }

    /// The first offset a reader starting at `start` reads.
    pub fn seek(&self, _start: Start) -> Result<Cursor, StoreError> {
        todo!()
    }

    /// Read committed messages from `cursor` on: at most `max_count` messages, and stopping
    /// after the one that reaches `max_bytes` (at least one is returned if any is committed).
    /// A cursor behind the first offset held (retention deleted it) jumps to it. Returns an
    /// empty list at the committed end.
    pub fn read(
        &self,
        _cursor: &mut Cursor,
        _max_count: usize,
        _max_bytes: usize,
    ) -> Result<Vec<StreamMessage>, StoreError> {
        todo!()
    }

    /// Delete segments beyond `max_age_ms` (called periodically; the size limit is applied as
    /// segments fill).
    pub fn apply_retention(&self, _now_ms: u64) {
        todo!()
    }

    pub fn info(&self) -> StreamInfo {
        todo!()
    }

    /// Delete every file of the stream (the queue was deleted); appends are refused after.
    pub fn delete(&self) {
        todo!()
    }
}
