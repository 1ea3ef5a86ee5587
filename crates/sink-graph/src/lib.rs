//! Graph sink for pgfanout: a node per row, relationships from foreign keys
//! and join tables, and derived relationships (counts over rows) kept exact.
//!
//! What it is: one Cypher layer ([`encode`]: changes → statements with
//! parameters, pure) and two transports that run those statements —
//! FalkorDB over RESP ([`falkordb`], `GRAPH.QUERY` with a `CYPHER` parameter
//! prefix) and Bolt through `neo4rs` ([`bolt`], Neo4j 4.4 and later) — joined
//! by the sink ([`sink`]), which also creates key indexes and stores the
//! checkpoint in a node.
//!
//! Invariants: every write is guarded by the change's version (a property
//! holding [`pgfanout_core::Version::to_sortable_string`]), so re-delivered
//! changes never move a node or relationship backwards; unchanged TOAST
//! values are never written; derived counts are recomputed from the rows
//! they count, never incremented; a batch is one transaction of the store;
//! changes touching one node are applied in stream order (one lane, and
//! within a batch no delete runs ahead of an earlier `MERGE` of its node);
//! a node that only relationships made (a stub) goes with the last of them.

#![warn(missing_docs)]

pub mod bolt;
pub mod config;
pub mod encode;
pub mod error;
pub mod falkordb;
pub mod readback;
pub mod sink;
#[cfg(test)]
mod test_support;
pub mod value;
pub mod wipe;

pub use config::{GraphSinkConfig, GraphTableConfig, Transport};
pub use error::GraphSinkError;
pub use sink::GraphSink;
