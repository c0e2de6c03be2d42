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
//! - A change is all or nothing (`Store::commit`): several keys change in one sled
//!   transaction, and a change whose flush fails is undone in sled before the error is returned,
//!   so a later flush cannot make durable what the caller was told failed. Callers change their
//!   own state only after the store accepted (users, permissions, vhosts: [`crate::auth`]).
//! - Users, permissions and vhost metadata live in the trees `users`, `permissions` (key
//!   `user \0 vhost`), `topic_permissions` (key `user \0 vhost \0 exchange`) and `vhosts`; a
//!   user or vhost leaves together with its permissions and topic permissions. User and vhost
//!   limits are fields of the user's and the vhost's record.
//! - Keys are `vhost \0 name` (exchanges, queues) and `vhost \0 source \0 kind \0 destination \0
//!   routing key \0 arguments-json` (bindings), so one binding is stored at most once.
//!
//! - `messages/`: the message log (see `log`): persistent messages routed to durable queues,
//!   in segment files, each durable queue named by the numeric `id` of its `QueueDef` (ids are
//!   never reused: `meta/next_queue_id`).
//! - `spill/`: a scratch log of the same format where queues page out transient messages beyond
//!   their RAM budget; never synced, and deleted at every start.

mod access;
mod definitions;
pub mod log;
pub mod stream;

pub use definitions::{BindingDef, DestKind, ExchangeDef, QueueDef, QuorumDef};
pub use log::{
    LoadedRecord, LogOptions, MessageLog, NewRecord, Recovered, RecoveredMessage, Stored,
};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The on-disk format this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;

/// What went wrong in the store. Each variant keeps the error it came from as its `source()`
/// and says what was being read or written; the Display text (logged, and returned to API
/// clients) includes the cause too, since it is usually printed without its chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path} is in use by another running broker")]
    Locked { path: PathBuf },
    /// A file of the store (lock, format marker, message log) could not be opened, read or
    /// written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// sled could not open the definitions database (or one of its trees).
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// sled reports the database damaged or written in a form it does not support.
    #[error("store {path} is corrupt or unreadable: {source}")]
    Damaged {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The store is inconsistent in a way no underlying error describes.
    #[error("store {path} is corrupt or unreadable: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("store {path} has format version {found}; this Warren understands {FORMAT_VERSION}")]
    Version { path: PathBuf, found: String },
    /// A stored record could not be read.
    #[error("cannot read {what} from store {path}: {source}")]
    Read {
        what: String,
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A stored record does not parse.
    #[error("store {path} is corrupt or unreadable: {what} does not parse: {source}")]
    Decode {
        what: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A definition could not be encoded for storing.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A change was not made durable (nothing of it was kept: see `Store::commit`).
    #[error("cannot {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: sled::Error,
    },
    #[error("cannot allocate a queue id: all {} have been used", log::MAX_QUEUE_ID)]
    IdsExhausted,
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
    users: sled::Tree,
    permissions: sled::Tree,
    /// Key `user \0 vhost \0 exchange`.
    topic_permissions: sled::Tree,
    vhosts: sled::Tree,
    messages: std::sync::Arc<MessageLog>,
    /// Where queues page out transient messages (a scratch log, emptied at every start).
    spill: std::sync::Arc<MessageLog>,
    recovered: parking_lot::Mutex<Option<Recovered>>,
    /// Make every flush of the definitions fail ([`Store::inject_definition_write_failure`]).
    inject_failure: AtomicBool,
    _lock: File,
}

/// One change of a `Store::commit`: set `key` in `tree` to `value`, or remove it (`None`).
struct Change<'a> {
    tree: &'a sled::Tree,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
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
            .map_err(|source| StoreError::Io {
                what: "open",
                path: lock_path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: dir.to_owned(),
            });
        }
        let path = dir.join("definitions");
        let corrupt = |source: sled::Error| match source {
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => StoreError::Damaged {
                path: path.clone(),
                source,
            },
            source => StoreError::Open {
                path: path.clone(),
                source,
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
                std::fs::write(&marker, format!("{FORMAT_VERSION}\n")).map_err(|source| {
                    StoreError::Io {
                        what: "write",
                        path: marker.clone(),
                        source,
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
        let (spill, _) = MessageLog::open(
            &dir.join("spill"),
            LogOptions {
                sync_interval: None,
                scratch: true,
                ..options
            },
        )?;
        Ok(Store {
            meta,
            messages,
            spill,
            recovered: parking_lot::Mutex::new(Some(recovered)),
            exchanges: db.open_tree("exchanges").map_err(corrupt)?,
            queues: db.open_tree("queues").map_err(corrupt)?,
            bindings: db.open_tree("bindings").map_err(corrupt)?,
            users: db.open_tree("users").map_err(corrupt)?,
            permissions: db.open_tree("permissions").map_err(corrupt)?,
            topic_permissions: db.open_tree("topic_permissions").map_err(corrupt)?,
            vhosts: db.open_tree("vhosts").map_err(corrupt)?,
            db,
            path,
            inject_failure: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// The message log.
    pub fn messages(&self) -> &std::sync::Arc<MessageLog> {
        &self.messages
    }

    /// Where stream queues keep their segment files: `data_dir/streams/<queue id>/`.
    pub fn stream_dir(&self, id: u32) -> PathBuf {
        let root = self
            .path
            .parent()
            .map_or_else(|| self.path.clone(), Path::to_owned);
        root.join("streams").join(format!("{id:08}"))
    }

    /// The scratch log transient messages are paged out to.
    pub fn spill(&self) -> &std::sync::Arc<MessageLog> {
        &self.spill
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
            .map_err(|source| StoreError::Write {
                what: "allocate a queue id".into(),
                source,
            })?
            .and_then(|b| b.as_ref().try_into().ok())
            .map_or(1, u32::from_be_bytes);
        if next > log::MAX_QUEUE_ID {
            return Err(StoreError::IdsExhausted);
        }
        Ok(next)
    }

    /// The log id reserved for `name` (e.g. a vhost's delayed messages), created on first use.
    pub fn named_id(&self, name: &str) -> Result<u32, StoreError> {
        let key = format!("id:{name}");
        let stored = self.meta.get(&key).map_err(|source| StoreError::Read {
            what: format!("the log id of {name}"),
            path: self.path.clone(),
            source,
        })?;
        if let Some(v) = stored {
            if let Ok(b) = <[u8; 4]>::try_from(v.as_ref()) {
                return Ok(u32::from_be_bytes(b));
            }
        }
        let id = self.next_queue_id()?;
        self.commit(
            || format!("store the log id of {name}"),
            vec![Change {
                tree: &self.meta,
                key: key.into_bytes(),
                value: Some(id.to_be_bytes().to_vec()),
            }],
        )?;
        Ok(id)
    }

    /// For tests: while `on`, every write of definitions (exchanges, queues, bindings, users,
    /// permissions, vhosts) fails as a failing disk would make it fail, at the flush, after sled
    /// took the change in memory: the path where `Store::commit` must undo it. The message
    /// log has its own switch ([`MessageLog::inject_write_failure`]).
    pub fn inject_definition_write_failure(&self, on: bool) {
        self.inject_failure.store(on, Ordering::Relaxed);
    }

    /// Apply `changes` at once (one sled transaction when there are several) and make them
    /// durable before returning, or keep none of them: when the flush fails, the previous values
    /// are put back, so that neither this process nor a later flush sees a change the caller
    /// was told failed. `what` names the change for the error ("store user 'x'").
    fn commit(
        &self,
        what: impl Fn() -> String,
        changes: Vec<Change<'_>>,
    ) -> Result<(), StoreError> {
        let failed = |source| StoreError::Write {
            what: what(),
            source,
        };
        let olds = apply(&changes).map_err(failed)?;
        if changes
            .iter()
            .zip(&olds)
            .all(|(c, old)| c.value.is_none() && old.is_none())
        {
            return Ok(()); // removed what was not there: nothing to make durable
        }
        if let Err(source) = self.flush() {
            let undo: Vec<Change> = changes
                .iter()
                .zip(olds)
                .rev()
                .map(|(c, old)| Change {
                    tree: c.tree,
                    key: c.key.clone(),
                    value: old.map(|v| v.to_vec()),
                })
                .collect();
            if let Err(e) = apply(&undo) {
                tracing::error!(
                    "cannot undo a change that was not made durable ({}): {e}",
                    what()
                );
            }
            return Err(failed(source));
        }
        Ok(())
    }

    /// Make every change so far durable (before the client is told it happened).
    fn flush(&self) -> sled::Result<()> {
        if self.inject_failure.load(Ordering::Relaxed) {
            return Err(sled::Error::Io(std::io::Error::other(
                "definition write failure injected for a test",
            )));
        }
        self.db.flush().map(|_| ())
    }
}

/// Apply changes in memory (not flushed); the previous value of each, in order.
fn apply(changes: &[Change<'_>]) -> sled::Result<Vec<Option<sled::IVec>>> {
    use sled::transaction::{TransactionError, Transactional};
    match changes {
        [] => Ok(Vec::new()),
        [c] => Ok(vec![match &c.value {
            Some(v) => c.tree.insert(c.key.as_slice(), v.as_slice())?,
            None => c.tree.remove(c.key.as_slice())?,
        }]),
        _ => {
            // A transaction over each distinct tree once; `at[i]` is changes[i]'s tree in it.
            let mut trees: Vec<&sled::Tree> = Vec::new();
            let at: Vec<usize> = changes
                .iter()
                .map(
                    |c| match trees.iter().position(|t| t.name() == c.tree.name()) {
                        Some(i) => i,
                        None => {
                            trees.push(c.tree);
                            trees.len() - 1
                        }
                    },
                )
                .collect();
            trees
                .as_slice()
                .transaction(|views| {
                    let mut olds = Vec::with_capacity(changes.len());
                    for (c, &i) in changes.iter().zip(&at) {
                        olds.push(match &c.value {
                            Some(v) => views[i].insert(c.key.as_slice(), v.as_slice())?,
                            None => views[i].remove(c.key.as_slice())?,
                        });
                    }
                    Ok(olds)
                })
                .map_err(|e: TransactionError<std::convert::Infallible>| match e {
                    TransactionError::Storage(e) => e,
                    TransactionError::Abort(never) => match never {},
                })
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.messages.close();
        self.spill.close();
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
