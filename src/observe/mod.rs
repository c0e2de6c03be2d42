//! Observation: counters and snapshots of connections and channels, written by the adapters
//! (the wire layer counts what its clients do) and read by the management API and metrics
//! without any lock the message path takes. It knows nothing of frames or HTTP.

pub mod channel;
pub mod churn;
pub mod connection;
pub mod stages;

pub use channel::{
    bump, bump_shared, ChannelObs, ChannelStats, ConsumerObs, Counters, SizeHistogram, SIZE_BOUNDS,
    SIZE_BUCKETS,
};
mod rates;
pub use churn::Churn;
pub use connection::{ConnChurn, ConnInfo, Details, Registration, Registry};
pub use rates::RatePair;
