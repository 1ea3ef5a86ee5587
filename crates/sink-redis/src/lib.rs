//! Redis sink for pgfanout: one hash per PostgreSQL row.
//!
//! What it is: the mapping from row changes to Redis hashes under key
//! templates ([`encode`]), and the sink that applies a batch in one atomic
//! round trip together with its checkpoint ([`sink`]).
//!
//! What it is not (yet): JSON rows, TTLs, invalidation rules, event streams
//! and version guards come with later work; TRUNCATE is not published to it.
//!
//! Invariants: unchanged TOAST values never overwrite stored fields; a
//! batch and its checkpoint are written atomically (`MULTI`/`EXEC`); nothing
//! is ever read back per row, so a batch costs one round trip.

#![warn(missing_docs)]

pub mod config;
pub mod encode;
pub mod error;
pub mod sink;

pub use config::{RedisSinkConfig, RedisTableConfig};
pub use error::RedisSinkError;
pub use sink::RedisSink;
