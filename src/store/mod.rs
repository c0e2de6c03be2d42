//! Durable state: the only writer of anything that survives a restart.
//!
//! Layout under `data_dir`:
//! - `LOCK`: held (an exclusive advisory lock) by the running broker; a second broker on the same
//!   directory refuses to start.
//! - `definitions/`: a sled database (sled 0.34.7) with one tree per kind of definition. Values
//!   are JSON (`serde_json`) so they stay readable and can grow fields compatibly.
//! - `FORMAT`: written once the store is initialised. If it exists but the database has no format
//!   record, the database was lost or damaged (sled may open a damaged log as empty): Warren
//!   refuses to start rather than silently start empty.
//!
//! Format version: `FORMAT_VERSION`, stored in the `meta` tree under `format`. A store written by a
//! newer, incompatible Warren is refused at open instead of being misread.
//!
//! Invariants:
//! - Only durable exchanges, durable non-exclusive queues, and bindings whose source and
//!   destination are both durable are stored. Transient and exclusive entities never are.
//! - Every change is flushed (`sled::Db::flush`) before the client hears declare-ok / bind-ok /
//!   delete-ok, so an acknowledged definition survives `kill -9` of the broker. sled's flush is
//!   `sync_file_range`, not fsync: a power cut within sled's 500 ms sync interval can lose the
//!   latest definitions. Message confirms (next step) will fdatasync their own log.
//! - Keys are `vhost \0 name` (exchanges, queues) and `vhost \0 source \0 kind \0 destination \0
//!   routing key \0 arguments-json` (bindings), so one binding is stored at most once.
//!
//! - `messages/`: the message log (see `log`): persistent messages routed to durable queues,
//!   in segment files, each durable queue named by the numeric `id` of its `QueueDef` (ids are
//!   never reused: `meta/next_queue_id`).

mod access;
mod definitions;
pub mod log;

pub use definitions::{BindingDef, DestKind, ExchangeDef, QueueDef};
pub use log::{
    LoadedRecord, LogOptions, MessageLog, NewRecord, Recovered, RecoveredMessage, Stored,
};

use std::fs::File;
use std::path::{Path, PathBuf};

/// The on-disk format this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another running broker")]
    Locked { path: PathBuf },
    #[error("cannot open store {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store {path} is corrupt or unreadable: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path} has format version {found}; this Warren understands {FORMAT_VERSION}")]
    Version { path: PathBuf, found: String },
    #[error("store write failed: {0}")]
    Write(String),
}

/// The open store. Dropping it releases the directory lock.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    exchanges: sled::Tree,
    queues: sled::Tree,
    bindings: sled::Tree,
    meta: sled::Tree,
    messages: std::sync::Arc<MessageLog>,
    recovered: parking_lot::Mutex<Option<Recovered>>,
    _lock: File,
}

/// Everything recovered at start.
#[derive(Debug, Default)]
pub struct Definitions {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, LogOptions::default())
    }

    pub fn open_with(dir: &Path, options: LogOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let lock_path = dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                path: lock_path.clone(),
                detail: e.to_string(),
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: dir.to_owned(),
            });
        }
        let path = dir.join("definitions");
        let corrupt = |e: sled::Error| match e {
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            },
            other => StoreError::Open {
                path: path.clone(),
                detail: other.to_string(),
            },
        };
        let db = open_sled(&path).map_err(corrupt)?;
        let meta = db.open_tree("meta").map_err(corrupt)?;
        let marker = dir.join("FORMAT");
        match meta.get("format").map_err(corrupt)? {
            None if marker.exists() => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: format!(
                        "{} says this store was initialised, but its database holds no format \
                         record (lost or damaged); refusing to start empty",
                        marker.display()
                    ),
                })
            }
            None => {
                meta.insert("format", FORMAT_VERSION.to_string().as_bytes())
                    .map_err(corrupt)?;
                db.flush().map_err(corrupt)?;
                std::fs::write(&marker, format!("{FORMAT_VERSION}\n")).map_err(|e| {
                    StoreError::Open {
                        path: marker.clone(),
                        detail: e.to_string(),
                    }
                })?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_string().as_bytes() => {}
            Some(v) => {
                return Err(StoreError::Version {
                    path,
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        let (messages, recovered) = MessageLog::open(&dir.join("messages"), options)?;
        Ok(Store {
            meta,
            messages,
            recovered: parking_lot::Mutex::new(Some(recovered)),
            exchanges: db.open_tree("exchanges").map_err(corrupt)?,
            queues: db.open_tree("queues").map_err(corrupt)?,
            bindings: db.open_tree("bindings").map_err(corrupt)?,
            db,
            path,
            _lock: lock,
        })
    }

    /// The message log.
    pub fn messages(&self) -> &std::sync::Arc<MessageLog> {
        &self.messages
    }

    /// The messages read back at open (once).
    pub fn take_recovered(&self) -> Recovered {
        self.recovered.lock().take().unwrap_or_default()
    }

    /// A fresh id for a durable queue's messages in the log (never reused).
    pub fn next_queue_id(&self) -> Result<u32, StoreError> {
        let next = self
            .meta
            .update_and_fetch("next_queue_id", |old| {
                let n = old
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_be_bytes);
                Some(n.wrapping_add(1).max(1).to_be_bytes().to_vec())
            })
            .map_err(|e| StoreError::Write(e.to_string()))?
            .and_then(|b| b.as_ref().try_into().ok())
            .map_or(1, u32::from_be_bytes);
        if next > log::MAX_QUEUE_ID {
            return Err(StoreError::Write("queue ids exhausted".into()));
        }
        Ok(next)
    }

    /// The log id reserved for `name` (e.g. a vhost's delayed messages), created on first use.
    pub fn named_id(&self, name: &str) -> Result<u32, StoreError> {
        let key = format!("id:{name}");
        if let Some(v) = self
            .meta
            .get(&key)
            .map_err(|e| StoreError::Write(e.to_string()))?
        {
            if let Ok(b) = <[u8; 4]>::try_from(v.as_ref()) {
                return Ok(u32::from_be_bytes(b));
            }
        }
        let id = self.next_queue_id()?;
        self.meta
            .insert(key, &id.to_be_bytes())
            .map_err(|e| StoreError::Write(e.to_string()))?;
        self.flush()?;
        Ok(id)
    }

    /// Make every change so far durable (before the client is told it happened).
    fn flush(&self) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::Write(e.to_string()))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.messages.close();
    }
}

/// Open the definitions database. Our LOCK (held above) already rules out another broker, so a
/// sled lock still held can only be this process's previous store on the directory, whose
/// background flusher lets go of it a moment after the store is dropped: wait for that briefly.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(16 << 20)
            .open()
        {
            // sled reports it as ErrorKind::Other with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
