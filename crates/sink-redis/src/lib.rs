//! Redis sink for pgfanout: one key per PostgreSQL row, a hash or a JSON
//! string.
//!
//! What it is: the mapping from row changes to the records of a server-side
//! batch script ([`encode`], pure), the script itself (`lua/apply_batch.lua`)
//! and the sink that runs it, one `EVALSHA` per batch with the checkpoint
//! last in it ([`sink`]).
//!
//! What it is not: a Redis Cluster client (a batch's keys may span hash
//! slots), nor a reader: nothing is read back per row on the client side.
//!
//! Invariants: a row is written only by a change newer than the version it
//! stores (the version guard, on by default), so re-delivery and replays
//! never move a key backwards; unchanged TOAST values never overwrite stored
//! values; the checkpoint is stored only after every record of its call
//! succeeded; one round trip per batch (plus one per `SCAN` page of a
//! truncate by scan).

#![warn(missing_docs)]

pub mod config;
pub mod encode;
pub mod error;
pub mod readback;
pub mod sink;
pub mod wipe;

pub use config::{RedisSinkConfig, RedisTableConfig, TruncateMode};
pub use encode::RowFormat;
pub use error::RedisSinkError;
pub use sink::RedisSink;
