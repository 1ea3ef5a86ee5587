//! Cassandra/ScyllaDB sink for pgfanout: PostgreSQL rows kept as rows of
//! CQL query tables.
//!
//! What it is: the mapping from row changes to CQL statements — one or more
//! target tables per source table, each with its own partition and
//! clustering key ([`encode`]); PostgreSQL → CQL types and values
//! ([`types`]); write timestamps derived from change versions
//! ([`timestamp`]); what key moves carried over, kept for changes applied
//! again after a crash or by a replay ([`carried`]); and the sink that prepares, batches by
//! partition and sends the statements, manages the schema when asked, and
//! stores its checkpoint in a small table ([`sink`]).
//!
//! Invariants: a change to a row is written to every target table; a change
//! of a target's key deletes the row under the old key before writing the
//! new one (or, when unchanged TOAST values must be carried over from the
//! old row, reads it, records what it carries until neither a crash nor a
//! replay can apply the change again ([`carried`]), writes the new row, then deletes the old one);
//! unchanged TOAST values are never written (so never overwrite);
//! the checkpoint row is written only after the batch it covers. With write
//! timestamps (the default) every statement carries `USING TIMESTAMP` from
//! [`timestamp::WriteClock`], so the last change to a row wins whatever
//! order requests arrive in.

#![warn(missing_docs)]

pub mod carried;
pub mod config;
pub mod encode;
pub mod error;
pub mod readback;
pub mod sink;
pub mod timestamp;
pub mod types;
pub mod wipe;

pub use config::{ScyllaSinkConfig, ScyllaTableConfig, TargetTableConfig};
pub use error::ScyllaSinkError;
pub use sink::ScyllaSink;
