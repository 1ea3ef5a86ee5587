//! The [`Encoder`]: turns a [`PgOutputMessage`] back into the bytes PostgreSQL would send.
//!
//! It exists for tools and tests, not for the replication path: fixtures and fuzz seeds,
//! hand-built messages that no available server version emits (v4 Stream Abort with abort LSN
//! and time), and test servers that play a replication stream to a client.
//!
//! # Invariants
//!
//! * It mirrors [`Decoder`] state for state: same protocol version, same parallel-streaming
//!   flag, same "inside a Stream Start … Stream Stop block" flag, moved by the same messages.
//!   Whatever an encoder accepts, a decoder in the same state decodes back to an equal message
//!   and consumes exactly the bytes written. Messages that have no such wire form (a
//!   subtransaction xid outside a stream block, abort information the layout cannot carry, a
//!   NUL inside a string, a count that overflows its field) are an [`EncodeError`], never
//!   silently written differently.
//! * Field order and layout follow PostgreSQL's `proto.c`; `pg_catalog` is written as the empty
//!   namespace, as PostgreSQL does.
//! * An error writes nothing and leaves the state unchanged.
//! * Like the decoder, it accepts every message type whatever the protocol version.

use bytes::{BufMut, Bytes, BytesMut};

use crate::layout::{
    self, tuple_kind, tuple_marker, COLUMN_IS_KEY, MESSAGE_TRANSACTIONAL, PG_CATALOG, STREAM_FIRST_SEGMENT,
    TRUNCATE_CASCADE, TRUNCATE_RESTART_IDENTITY,
};
use crate::{
    Decoder, EncodeError, Lsn, OldTuple, PgOutputMessage, PgTimestamp, RelationColumn, TupleColumn, TupleData, Xid,
};

/// Largest value of a wire `Int32` length or count.
const MAX_INT32_LEN: usize = i32::MAX as usize;
/// Largest value of a wire `Int16` count.
const MAX_INT16_COUNT: usize = u16::MAX as usize;

/// Encodes pgoutput messages of one (simulated) replication connection, in order.
///
/// ```
/// use bytes::Bytes;
/// use pgoutput::{Decoder, Encoder, Lsn, PgOutputMessage, PgTimestamp, StreamAbort, Xid};
///
/// // PostgreSQL 15 cannot send this: Stream Abort with abort LSN and time (v4, parallel).
/// let abort = PgOutputMessage::StreamAbort(StreamAbort {
///     xid: Xid(742),
///     subxid: Xid(742),
///     abort_lsn: Some("16/B374D880".parse::<Lsn>()?),
///     abort_time: Some(PgTimestamp(757_382_400_000_000)),
/// });
/// let bytes: Bytes = Encoder::new(4).with_parallel_streaming(true).encode(&abort)?;
/// assert_eq!(bytes.len(), 25);
///
/// let mut decoder = Decoder::new(4).with_parallel_streaming(true);
/// assert_eq!(decoder.decode(bytes)?, abort);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Encoder {
    protocol_version: u32,
    parallel_streaming: bool,
    in_stream: bool,
}

impl Encoder {
    /// An encoder for `protocol_version`, without parallel streaming, outside any stream block.
    pub fn new(protocol_version: u32) -> Self {
        Encoder { protocol_version, parallel_streaming: false, in_stream: false }
    }

    /// An encoder in the same state as `decoder`: what it writes, that decoder (or a clone)
    /// reads back unchanged.
    pub fn matching(decoder: &Decoder) -> Self {
        Encoder {
            protocol_version: decoder.protocol_version(),
            parallel_streaming: decoder.parallel_streaming(),
            in_stream: decoder.in_stream_block(),
        }
    }

    /// Declares `streaming 'parallel'`; with protocol v4+ Stream Abort then carries abort LSN
    /// and time (see [`Decoder::with_parallel_streaming`]).
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Self {
        self.parallel_streaming = parallel;
        self
    }

    /// The protocol version this encoder writes.
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Whether `streaming 'parallel'` was declared.
    pub fn parallel_streaming(&self) -> bool {
        self.parallel_streaming
    }

    /// Whether the last Stream Start written has not yet been closed by a Stream Stop.
    pub fn in_stream_block(&self) -> bool {
        self.in_stream
    }

    /// Encodes one message into a new buffer: the payload of one XLogData message.
    pub fn encode(&mut self, message: &PgOutputMessage) -> Result<Bytes, EncodeError> {
        let mut payload = BytesMut::new();
        self.write_message(message, &mut payload)?;
        self.follow_stream_block(message);
        Ok(payload.freeze())
    }

    /// Appends one encoded message to `out`, for example to build a capture file or a
    /// CopyData frame around it.
    ///
    /// Fails with [`EncodeError::BufferFull`] rather than panicking when `out` cannot take the
    /// whole message (a fixed-size `&mut [u8]`); on any error `out` is left untouched.
    pub fn encode_into<B: BufMut>(&mut self, message: &PgOutputMessage, out: &mut B) -> Result<(), EncodeError> {
        // Encoding into a scratch buffer first keeps `out` untouched when a field turns out to
        // have no wire form halfway through the message.
        let mut payload = BytesMut::new();
        self.write_message(message, &mut payload)?;
        if out.remaining_mut() < payload.len() {
            return Err(EncodeError::BufferFull { needed: payload.len(), available: out.remaining_mut() });
        }
        out.put_slice(&payload);
        self.follow_stream_block(message);
        Ok(())
    }

    /// Writes the message; leaves the state to the caller so that a failed write moves nothing.
    fn write_message(&self, message: &PgOutputMessage, out: &mut BytesMut) -> Result<(), EncodeError> {
        let tag = message.tag();
        out.put_u8(tag);
        match message {
            PgOutputMessage::Begin(begin) => {
                put_lsn(out, begin.final_lsn);
                put_timestamp(out, begin.commit_time);
                put_xid(out, begin.xid);
            }
            PgOutputMessage::Commit(commit) => {
                out.put_u8(commit.flags);
                put_lsn(out, commit.commit_lsn);
                put_lsn(out, commit.end_lsn);
                put_timestamp(out, commit.commit_time);
            }
            PgOutputMessage::Origin(origin) => {
                put_lsn(out, origin.commit_lsn);
                put_cstr(out, &origin.name, "origin name")?;
            }
            PgOutputMessage::Relation(relation) => {
                self.put_stream_xid(out, tag, relation.xid)?;
                out.put_u32(relation.oid.0);
                put_namespace(out, &relation.namespace)?;
                put_cstr(out, &relation.name, "relation name")?;
                out.put_u8(layout::replica_identity_byte(relation.replica_identity));
                put_int16_count(out, relation.columns.len(), "relation columns")?;
                for column in &relation.columns {
                    put_relation_column(out, column)?;
                }
            }
            PgOutputMessage::Type(type_message) => {
                self.put_stream_xid(out, tag, type_message.xid)?;
                out.put_u32(type_message.oid.0);
                put_namespace(out, &type_message.namespace)?;
                put_cstr(out, &type_message.name, "type name")?;
            }
            PgOutputMessage::Insert(insert) => {
                self.put_stream_xid(out, tag, insert.xid)?;
                out.put_u32(insert.relation.0);
                out.put_u8(tuple_marker::NEW);
                put_tuple(out, &insert.new_tuple)?;
            }
            PgOutputMessage::Update(update) => {
                self.put_stream_xid(out, tag, update.xid)?;
                out.put_u32(update.relation.0);
                if let Some(old_tuple) = &update.old_tuple {
                    put_old_tuple(out, old_tuple)?;
                }
                out.put_u8(tuple_marker::NEW);
                put_tuple(out, &update.new_tuple)?;
            }
            PgOutputMessage::Delete(delete) => {
                self.put_stream_xid(out, tag, delete.xid)?;
                out.put_u32(delete.relation.0);
                put_old_tuple(out, &delete.old_tuple)?;
            }
            PgOutputMessage::Truncate(truncate) => {
                self.put_stream_xid(out, tag, truncate.xid)?;
                put_int32_len(out, truncate.relations.len(), "truncated relations")?;
                let mut bits = 0;
                if truncate.options.cascade {
                    bits |= TRUNCATE_CASCADE;
                }
                if truncate.options.restart_identity {
                    bits |= TRUNCATE_RESTART_IDENTITY;
                }
                out.put_u8(bits);
                for relation in &truncate.relations {
                    out.put_u32(relation.0);
                }
            }
            PgOutputMessage::Message(message) => {
                self.put_stream_xid(out, tag, message.xid)?;
                out.put_u8(if message.transactional { MESSAGE_TRANSACTIONAL } else { 0 });
                put_lsn(out, message.lsn);
                put_cstr(out, &message.prefix, "message prefix")?;
                put_int32_len(out, message.content.len(), "message content")?;
                out.put_slice(&message.content);
            }
            PgOutputMessage::StreamStart(start) => {
                if self.in_stream {
                    return Err(EncodeError::StreamStartInsideBlock);
                }
                put_xid(out, start.xid);
                out.put_u8(if start.first_segment { STREAM_FIRST_SEGMENT } else { 0 });
            }
            PgOutputMessage::StreamStop => {
                if !self.in_stream {
                    return Err(EncodeError::StreamStopOutsideBlock);
                }
            }
            PgOutputMessage::StreamCommit(commit) => {
                put_xid(out, commit.xid);
                out.put_u8(commit.flags);
                put_lsn(out, commit.commit_lsn);
                put_lsn(out, commit.end_lsn);
                put_timestamp(out, commit.commit_time);
            }
            PgOutputMessage::StreamAbort(abort) => {
                put_xid(out, abort.xid);
                put_xid(out, abort.subxid);
                let required = layout::stream_abort_has_abort_info(self.protocol_version, self.parallel_streaming);
                match (required, abort.abort_lsn, abort.abort_time) {
                    (true, Some(abort_lsn), Some(abort_time)) => {
                        put_lsn(out, abort_lsn);
                        put_timestamp(out, abort_time);
                    }
                    (false, None, None) => {}
                    _ => return Err(EncodeError::AbortInfoMismatch { required }),
                }
            }
            PgOutputMessage::BeginPrepare(begin) => {
                put_lsn(out, begin.prepare_lsn);
                put_lsn(out, begin.end_lsn);
                put_timestamp(out, begin.prepare_time);
                put_xid(out, begin.xid);
                put_cstr(out, &begin.gid, "gid")?;
            }
            PgOutputMessage::Prepare(prepare) => {
                out.put_u8(prepare.flags);
                put_lsn(out, prepare.prepare_lsn);
                put_lsn(out, prepare.end_lsn);
                put_timestamp(out, prepare.prepare_time);
                put_xid(out, prepare.xid);
                put_cstr(out, &prepare.gid, "gid")?;
            }
            PgOutputMessage::CommitPrepared(commit) => {
                out.put_u8(commit.flags);
                put_lsn(out, commit.commit_lsn);
                put_lsn(out, commit.end_lsn);
                put_timestamp(out, commit.commit_time);
                put_xid(out, commit.xid);
                put_cstr(out, &commit.gid, "gid")?;
            }
            PgOutputMessage::RollbackPrepared(rollback) => {
                out.put_u8(rollback.flags);
                put_lsn(out, rollback.prepare_end_lsn);
                put_lsn(out, rollback.rollback_end_lsn);
                put_timestamp(out, rollback.prepare_time);
                put_timestamp(out, rollback.rollback_time);
                put_xid(out, rollback.xid);
                put_cstr(out, &rollback.gid, "gid")?;
            }
            PgOutputMessage::StreamPrepare(prepare) => {
                // Same body as Prepare.
                out.put_u8(prepare.flags);
                put_lsn(out, prepare.prepare_lsn);
                put_lsn(out, prepare.end_lsn);
                put_timestamp(out, prepare.prepare_time);
                put_xid(out, prepare.xid);
                put_cstr(out, &prepare.gid, "gid")?;
            }
        }
        Ok(())
    }

    /// Moves the block state exactly as [`Decoder`] does after decoding `message`.
    fn follow_stream_block(&mut self, message: &PgOutputMessage) {
        match message {
            PgOutputMessage::StreamStart(_) => self.in_stream = true,
            PgOutputMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
    }

    /// Writes the subtransaction xid that inside a stream block (and only there) prefixes
    /// DML and schema messages.
    fn put_stream_xid(&self, out: &mut BytesMut, tag: u8, xid: Option<Xid>) -> Result<(), EncodeError> {
        match (self.in_stream, xid) {
            (true, Some(xid)) => {
                put_xid(out, xid);
                Ok(())
            }
            (false, None) => Ok(()),
            (true, None) => Err(EncodeError::MissingStreamXid { tag }),
            (false, Some(_)) => Err(EncodeError::UnexpectedStreamXid { tag }),
        }
    }
}

fn put_lsn(out: &mut BytesMut, lsn: Lsn) {
    out.put_u64(lsn.0);
}

fn put_timestamp(out: &mut BytesMut, timestamp: PgTimestamp) {
    out.put_i64(timestamp.0);
}

fn put_xid(out: &mut BytesMut, xid: Xid) {
    out.put_u32(xid.0);
}

/// Writes a NUL-terminated string; `field` names it in the error.
fn put_cstr(out: &mut BytesMut, text: &str, field: &'static str) -> Result<(), EncodeError> {
    if text.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString { field });
    }
    out.put_slice(text.as_bytes());
    out.put_u8(0);
    Ok(())
}

/// Writes a namespace the way PostgreSQL does: `pg_catalog` as the empty string.
fn put_namespace(out: &mut BytesMut, namespace: &str) -> Result<(), EncodeError> {
    match namespace {
        "" => Err(EncodeError::EmptyNamespace),
        PG_CATALOG => put_cstr(out, "", "namespace"),
        other => put_cstr(out, other, "namespace"),
    }
}

/// Writes an `Int16` count, refusing counts the field cannot hold.
fn put_int16_count(out: &mut BytesMut, count: usize, field: &'static str) -> Result<(), EncodeError> {
    let count = u16::try_from(count).map_err(|_| EncodeError::TooLong { field, len: count, max: MAX_INT16_COUNT })?;
    out.put_u16(count);
    Ok(())
}

/// Writes a non-negative `Int32` length or count, refusing values above `i32::MAX`.
fn put_int32_len(out: &mut BytesMut, len: usize, field: &'static str) -> Result<(), EncodeError> {
    let wire = i32::try_from(len).map_err(|_| EncodeError::TooLong { field, len, max: MAX_INT32_LEN })?;
    out.put_i32(wire);
    Ok(())
}

fn put_relation_column(out: &mut BytesMut, column: &RelationColumn) -> Result<(), EncodeError> {
    out.put_u8(if column.is_key { COLUMN_IS_KEY } else { 0 });
    put_cstr(out, &column.name, "column name")?;
    out.put_u32(column.type_oid.0);
    out.put_i32(column.type_modifier);
    Ok(())
}

fn put_old_tuple(out: &mut BytesMut, old_tuple: &OldTuple) -> Result<(), EncodeError> {
    let (marker, tuple) = match old_tuple {
        OldTuple::Key(tuple) => (tuple_marker::OLD_KEY, tuple),
        OldTuple::Full(tuple) => (tuple_marker::OLD_ROW, tuple),
    };
    out.put_u8(marker);
    put_tuple(out, tuple)
}

/// Writes a TupleData as `logicalrep_write_tuple` does.
fn put_tuple(out: &mut BytesMut, tuple: &TupleData) -> Result<(), EncodeError> {
    put_int16_count(out, tuple.columns.len(), "tuple columns")?;
    for column in &tuple.columns {
        match column {
            TupleColumn::Null => out.put_u8(tuple_kind::NULL),
            TupleColumn::UnchangedToast => out.put_u8(tuple_kind::UNCHANGED_TOAST),
            TupleColumn::Text(value) => {
                out.put_u8(tuple_kind::TEXT);
                put_int32_len(out, value.len(), "column value")?;
                out.put_slice(value);
            }
            TupleColumn::Binary(value) => {
                out.put_u8(tuple_kind::BINARY);
                put_int32_len(out, value.len(), "column value")?;
                out.put_slice(value);
            }
        }
    }
    Ok(())
}
