//! A pure, synchronous decoder of PostgreSQL's `pgoutput` logical replication messages,
//! protocol versions 1 to 4 (PostgreSQL 14–18).
//!
//! # What it is
//!
//! [`Decoder::decode`] takes the payload of one XLogData message — the bytes after the 25-byte
//! `w` header — and returns one typed [`PgOutputMessage`]. Each message has one body type named
//! after it ([`Begin`], [`Relation`], [`Update`], …) and one tag constant in [`tag`]. Scalars are
//! newtypes: [`Lsn`] (with PostgreSQL's `HI/LO` text form), [`Oid`], [`Xid`], [`PgTimestamp`].
//!
//! [`Decoder::decode_prefix`] reads the message at the front of a longer buffer and says how
//! many bytes it took, for inputs that are not one message per buffer; [`capture::CaptureReader`]
//! uses it to read the files `pg_recvlogical --file` writes.
//!
//! [`Encoder`] goes the other way, for fixtures, fuzz seeds and test servers: it writes any
//! message exactly as PostgreSQL would, in the same protocol and stream state as a decoder.
//!
//! # What it is not
//!
//! * No I/O and no async runtime: it depends on `bytes` and `thiserror` only. Reading the
//!   CopyBoth stream, parsing the XLogData/keepalive headers and sending status updates belong
//!   to the replication client.
//! * No transaction assembly or ordering checks beyond what the layout needs: it does not cache
//!   Relation messages, match Begin to Commit, or buffer streamed transactions.
//! * Decoding a message does not convert values: tuple columns stay as the text or binary bytes
//!   PostgreSQL sent. Converting them to typed [`Value`]s is a separate, optional step through
//!   a [`TypeRegistry`] (module [`value`]), which knows the built-in types and whatever enums,
//!   domains and arrays the caller registers.
//!
//! # Invariants
//!
//! * Never panics, whatever the input; every malformed payload is a [`DecodeError`] with the
//!   offset where it went wrong.
//! * For [`Decoder::decode`] a payload is exactly one message: a short payload is
//!   [`DecodeError::UnexpectedEof`], a long one [`DecodeError::TrailingBytes`].
//! * `decode(encode(m)) == m` for every message the [`Encoder`] accepts, with encoder and
//!   decoder in the same state; the fuzz target in `fuzz/` checks it on arbitrary input.
//! * Allocation is bounded by the payload's length, never by a count read from it.
//! * Text/binary column values and logical message content are zero-copy slices of the payload.
//! * The decoder's only state is whether it is inside a Stream Start … Stream Stop block, which
//!   decides whether DML and schema messages carry a leading xid; it changes only on a
//!   successfully decoded Stream Start/Stop. After any error the stream cannot be resynchronised
//!   (pgoutput has no inner framing): drop the decoder and reconnect.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use pgoutput::{Decoder, Lsn, PgOutputMessage, Xid};
//!
//! let mut payload = vec![b'B'];
//! payload.extend_from_slice(&0x16_B374_D848_u64.to_be_bytes()); // final LSN
//! payload.extend_from_slice(&0_i64.to_be_bytes()); // commit time
//! payload.extend_from_slice(&742_u32.to_be_bytes()); // xid
//!
//! let mut decoder = Decoder::new(1);
//! let PgOutputMessage::Begin(begin) = decoder.decode(Bytes::from(payload))? else {
//!     unreachable!("a B payload decodes to Begin");
//! };
//! assert_eq!(begin.final_lsn, "16/B374D848".parse::<Lsn>()?);
//! assert_eq!(begin.xid, Xid(742));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod capture;
mod cursor;
mod decoder;
mod encode;
mod error;
mod layout;
mod lsn;
mod message;
mod scalar;
pub mod value;

pub use decoder::Decoder;
pub use encode::Encoder;
pub use error::{DecodeError, EncodeError};
pub use lsn::{Lsn, ParseLsnError};
pub use message::{
    tag, Begin, BeginPrepare, Commit, CommitPrepared, Delete, Insert, LogicalMessage, OldTuple, Origin,
    PgOutputMessage, Prepare, Relation, RelationColumn, ReplicaIdentity, RollbackPrepared, StreamAbort, StreamCommit,
    StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn, TupleData, TypeMessage, Update,
};
pub use scalar::{Oid, PgTimestamp, Xid};
pub use value::{ColumnValue, TypeRegistry, Value, ValueError};
