//! The cluster: membership and replication on openraft. One Raft group holds the metadata
//! (definitions), one group per quorum queue holds that queue's messages and settlements; the
//! link carries Raft RPCs and forwarded operations between nodes. The model calls into this
//! module; it never calls the adapters (`amqp/`, `http/`).
//!
//! Without `[cluster]` in the config none of this runs and Warren is a single node.

pub mod access;
pub mod forward;
pub mod link;
pub mod meta;
pub mod network;
pub mod node;
pub mod quorum;
pub mod raft_log;
pub mod subscribe;
pub mod types;
