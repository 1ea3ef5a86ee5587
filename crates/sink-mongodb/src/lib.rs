//! MongoDB sink for pgfanout: one document per PostgreSQL row, and running aggregates.
//!
//! What it owns: the mapping from row changes to guarded MongoDB write statements
//! ([`encode`], pure), PostgreSQL values to BSON ([`value`], [`json`]), and the sink that
//! sends a batch as a few bulk commands and then its checkpoint ([`sink`]).
//!
//! # Documents
//!
//! Each row is a document in the table's collection; `_id` is the primary key's value (one
//! key column), a sub-document `{column: value, …}` in key order (several), or the value of
//! `id_columns`. Updates `$set` the replicated columns and `$unset` nothing else, so fields
//! written by other applications survive; unchanged TOAST values are not written. A key
//! change removes the old document and upserts the new one; unchanged TOAST values the
//! change left out are first taken from the old document (see [`encode`], "Key moves").
//!
//! # Types
//!
//! | PostgreSQL | BSON |
//! | --- | --- |
//! | `bool` | Boolean |
//! | `int2`, `int4` | Int32 |
//! | `int8`, `oid` | Int64 |
//! | `float4`, `float8` | Double (NaN, ±Infinity kept) |
//! | `numeric` | Decimal128, exact (same digits and scale; NaN, ±Infinity); `types.numeric` = `string` / `double`; more than 34 significant digits: `types.numeric_unrepresentable` (`error` or `string`) |
//! | `timestamptz`, `timestamp` | DateTime (UTC milliseconds; `timestamp` read as UTC; sub-millisecond digits dropped) or, with `types.timestamps = "string"`, PostgreSQL's text |
//! | `date` | DateTime at 00:00 UTC (or text, as above) |
//! | outside years 1–9999, `±infinity` | `types.timestamp_out_of_range`: `clamp` (to 0001-01-01 / 9999-12-31T23:59:59.999), `string`, `null` or `error` |
//! | `bytea` | Binary (generic subtype) |
//! | `uuid` | Binary subtype 4, or with `types.uuid = "string"` its text |
//! | `json`, `jsonb` | documents (key order kept) and arrays; integers Int32/Int64, other numbers Double when that is exact to their shortest spelling, else Decimal128 (as `numeric`) |
//! | arrays | arrays, nested per dimension; NULL elements are null |
//! | enums | String (the label) |
//! | `text`, `varchar`, `xml`, `time`, `interval`, `inet`, … and unknown types | String (PostgreSQL's text); unknown binary values Binary |
//! | NULL | null, or with `types.nulls = "unset"` the field is removed |
//!
//! # Idempotence
//!
//! Every document carries the version (commit LSN and position) of the change that wrote
//! it, in `version_field`, and every write is filtered on it: a replayed change matches
//! nothing. A replayed upsert then fails with a duplicate key (11000), read as "already
//! newer". Deletes are guarded the same way; with `tombstones = true` a delete leaves
//! `{_id, version, deleted: true}` so that even a stale insert replayed after it cannot
//! bring the row back. TRUNCATE removes (or tombstones) the table's documents that carry
//! the version field and are older than the truncate — documents other applications wrote
//! without one are left alone — and resets the table's aggregates.
//!
//! # Running aggregates
//!
//! Per `[[sink.table.aggregate]]`, one document per group value counting rows and summing
//! columns with `$inc`; exactness under replay is explained on
//! [`encode::AggregatePlan`]. Updates and deletes need the old row: the table must have
//! `REPLICA IDENTITY FULL` (`pgfanout check` reports it), and the sink one lane.
//!
//! # Not atomic across documents
//!
//! A transaction touching several rows is applied document by document: a reader may see
//! part of it. The checkpoint is written only after the whole batch.

#![warn(missing_docs)]

pub mod config;
pub mod encode;
pub mod error;
pub mod json;
pub mod readback;
pub mod sink;
pub mod value;
pub mod wipe;

pub use config::{MongoSinkConfig, MongoTableConfig};
pub use error::MongoSinkError;
pub use sink::MongoSink;
