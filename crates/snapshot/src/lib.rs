//! pgfanout's snapshot: copies the rows a table already holds into a sink
//! while the live stream goes on.
//!
//! What it is: the chunked [`TableReader`] (key-ordered, also what `verify`
//! reads PostgreSQL with; by heap block range for plain tables without
//! TOASTed values, see [`table::BlockLayout`]), and the watermark merge that turns each chunk
//! into changes a sink applies at a precise point of the stream. What it is
//! not: it opens no replication stream and writes to no store itself; the
//! binary wires it between the source and the sink workers.
//!
//! Invariants:
//! - a snapshot row has exactly the shape and text values a streamed insert
//!   of the same row has ([`SnapshotTable`] mirrors pgoutput's Relation);
//! - no transaction stays open on the primary between two chunks;
//! - chunks of a table are read in strictly increasing key (or block)
//!   order, so a snapshot resumes after the last chunk a sink durably
//!   applied.

#![warn(missing_docs)]

pub mod error;
pub mod progress;
pub mod reader;
pub mod runner;
pub mod table;
pub mod watermark;

pub use error::SnapshotError;
pub use progress::{ProgressError, SnapshotProgress, TableProgress};
pub use reader::{Chunk, ChunkLimits, FetchedChunk, KeyText, ReadVisibility, Rows, TableReader};
pub use runner::{RunError, SinkTarget, SnapshotSettings, Snapshotter};
pub use table::SnapshotTable;
pub use watermark::{ChunkOutcome, ChunkTicket, ReadChunk, WatermarkMerge, WATERMARK_PREFIX};
