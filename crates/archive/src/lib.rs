//! pgfanout's change archive: an append-only log of the committed
//! transactions of the routed tables, on the sidecar's own disk, so that any
//! past change can be applied again (`pgfanout replay --from <LSN>`) although
//! PostgreSQL never sends a slot what lies before its confirmed flush LSN.
//!
//! What it owns: the byte layout ([`mod@format`]), segment files and their LSN
//! indexes ([`segment`]), the single writer ([`Archive`]), readers
//! ([`ArchiveReader`]), the archive as an acknowledging sink ([`ArchiveSink`])
//! and the checks of its folder that `pgfanout check` runs ([`preflight`]). What it is not: it decides nothing about which
//! transactions to keep (the pipeline routes it every table some sink routes)
//! and applies nothing to stores.
//!
//! Invariants:
//! - records are in stream order; each has a crc32c, and each transaction
//!   ends with a record flagged as its end, so a torn or unfinished tail is
//!   recognised and cut when the archive is opened; PostgreSQL sends those
//!   transactions again, because the archive acknowledges a transaction only
//!   once it is synced (see [`FsyncPolicy`]);
//! - each change is archived once, whatever is re-delivered (see [`Archive::append`]);
//! - seeking to a commit LSN reads one segment index and at most
//!   [`segment::INDEX_INTERVAL_BYTES`] of records before the target;
//! - retention removes whole segments, oldest first, never the active one.
//!
//! # Why a segmented log of our own
//!
//! The access pattern is the simplest there is: one writer appending in LSN
//! order, readers scanning forward from an LSN, deletion of whole prefixes.
//! An embedded key-value store (sled, redb, fjall, RocksDB) would index every
//! record in a B-tree or LSM tree, rewrite data on compaction, and keep a
//! write-ahead log of its own in front of it: the same bytes written two or
//! more times for a guarantee (random access, updates) the archive never
//! uses, and deletion by prefix that frees space only after compaction.
//! A segmented log writes each byte once, deletes a prefix with `unlink`,
//! is readable with a 60-line decoder (`format`), and costs little code:
//! the measured append cost (criterion bench `append` in this crate, figures
//! in `benches/archive.md`: 0.28 µs per change, 3.6 M changes/s without
//! fsync, 306 k changes/s with one fsync per 1,000-change batch) is far below
//! what a sink write costs.
//!
//! Format choice: hand-written, length-prefixed and versioned
//! ([`format::FORMAT_VERSION`] in every segment header) rather than a serde
//! format, so that the layout is documented in one place, stable across
//! dependency upgrades, and values stay the exact bytes PostgreSQL sent.

#![warn(missing_docs)]

pub mod error;
pub mod format;
pub mod preflight;
pub mod reader;
pub mod segment;
pub mod sink;
pub mod writer;

pub use error::ArchiveError;
pub use format::PieceHeader;
pub use reader::{ArchiveReader, ArchivedPiece};
pub use sink::{ArchiveSink, ARCHIVE_SINK_NAME};
pub use writer::{Archive, ArchiveOptions, FsyncPolicy, OpenReport, Retention};
