//! The [`Decoder`]: turns one payload into one [`PgOutputMessage`], or reads the message at the
//! front of a longer buffer and says where it ended.
//!
//! The only state it keeps is what changes the wire layout: the negotiated protocol version,
//! whether `streaming 'parallel'` was requested (Stream Abort grows by 16 bytes), and whether we
//! are inside a Stream Start … Stream Stop block (Relation, Type, Insert, Update, Delete,
//! Truncate and Message then start with a subtransaction xid). That state changes only when a
//! Stream Start/Stop decodes successfully.

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::layout::{
    self, tuple_kind, tuple_marker, COLUMN_IS_KEY, MESSAGE_TRANSACTIONAL, MIN_RELATION_COLUMN_LEN,
    MIN_TUPLE_COLUMN_LEN, PG_CATALOG, STREAM_FIRST_SEGMENT, TRUNCATE_CASCADE, TRUNCATE_OID_LEN,
    TRUNCATE_RESTART_IDENTITY,
};
use crate::message::tag;
use crate::{
    Begin, BeginPrepare, Commit, CommitPrepared, DecodeError, Delete, Insert, LogicalMessage, Lsn, Oid, OldTuple,
    Origin, PgOutputMessage, PgTimestamp, Prepare, Relation, RelationColumn, RollbackPrepared, StreamAbort,
    StreamCommit, StreamPrepare, StreamStart, Truncate, TruncateOptions, TupleColumn, TupleData, TypeMessage, Update,
    Xid,
};

/// Decodes pgoutput messages of one replication connection, in order.
///
/// Create one per `START_REPLICATION` and feed it every XLogData payload (after the 25-byte
/// XLogData header). After an error, discard it with the connection: the stream cannot be
/// resynchronised.
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol_version: u32,
    parallel_streaming: bool,
    in_stream: bool,
}

impl Decoder {
    /// A decoder for the `proto_version` passed to `START_REPLICATION`, without parallel
    /// streaming.
    pub fn new(protocol_version: u32) -> Self {
        Decoder { protocol_version, parallel_streaming: false, in_stream: false }
    }

    /// Declares whether `streaming 'parallel'` was requested. With protocol v4+ this makes
    /// Stream Abort carry the abort LSN and time; the layout cannot be told from the bytes
    /// alone, so it must be said here.
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Self {
        self.parallel_streaming = parallel;
        self
    }

    /// The protocol version this decoder was created for.
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// Whether `streaming 'parallel'` was declared with [`Decoder::with_parallel_streaming`].
    pub fn parallel_streaming(&self) -> bool {
        self.parallel_streaming
    }

    /// Whether the last Stream Start has not yet been closed by a Stream Stop.
    pub fn in_stream_block(&self) -> bool {
        self.in_stream
    }

    /// Decodes one pgoutput message; takes `Bytes` so Text/Binary tuple values and Message
    /// content are zero-copy slices of it.
    ///
    /// The whole payload must be one message: leftover bytes are [`DecodeError::TrailingBytes`].
    /// Message types are accepted whatever the protocol version; only layouts that depend on
    /// the version (Stream Abort) consult it.
    pub fn decode(&mut self, payload: Bytes) -> Result<PgOutputMessage, DecodeError> {
        let mut cur = Cursor::new(payload);
        let message = self.read_message(&mut cur)?;
        cur.finish()?;
        self.follow_stream_block(&message);
        Ok(message)
    }

    /// Decodes the message at the front of `payload` and returns it with the number of bytes
    /// it took; whatever follows is left alone.
    ///
    /// This is for inputs where messages are not framed one per buffer, such as the files
    /// `pg_recvlogical --file` writes (each message followed by a `\n`, no length prefix):
    /// pgoutput messages are self-delimiting once the decoder's state is known, so the caller
    /// can slice off `consumed` bytes, check its own separator, and call again. Values in the
    /// message are zero-copy slices of `payload`. Errors and state changes are as for
    /// [`Decoder::decode`], except that there is no [`DecodeError::TrailingBytes`]; a message
    /// cut short by the end of `payload` is [`DecodeError::UnexpectedEof`].
    pub fn decode_prefix(&mut self, payload: &Bytes) -> Result<(PgOutputMessage, usize), DecodeError> {
        let mut cur = Cursor::new(payload.clone());
        let message = self.read_message(&mut cur)?;
        let consumed = cur.offset();
        self.follow_stream_block(&message);
        Ok((message, consumed))
    }

    /// Reads one message from the cursor without touching the decoder's state.
    fn read_message(&self, cur: &mut Cursor) -> Result<PgOutputMessage, DecodeError> {
        Ok(match cur.read_u8()? {
            tag::BEGIN => PgOutputMessage::Begin(read_begin(cur)?),
            tag::COMMIT => PgOutputMessage::Commit(read_commit(cur)?),
            tag::ORIGIN => PgOutputMessage::Origin(read_origin(cur)?),
            tag::RELATION => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Relation(read_relation(cur, xid)?)
            }
            tag::TYPE => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Type(read_type(cur, xid)?)
            }
            tag::INSERT => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Insert(read_insert(cur, xid)?)
            }
            tag::UPDATE => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Update(read_update(cur, xid)?)
            }
            tag::DELETE => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Delete(read_delete(cur, xid)?)
            }
            tag::TRUNCATE => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Truncate(read_truncate(cur, xid)?)
            }
            tag::MESSAGE => {
                let xid = self.read_stream_xid(cur)?;
                PgOutputMessage::Message(read_message(cur, xid)?)
            }
            tag::STREAM_START => {
                if self.in_stream {
                    return Err(DecodeError::StreamStartInsideBlock);
                }
                PgOutputMessage::StreamStart(read_stream_start(cur)?)
            }
            tag::STREAM_STOP => {
                if !self.in_stream {
                    return Err(DecodeError::StreamStopOutsideBlock);
                }
                PgOutputMessage::StreamStop
            }
            tag::STREAM_COMMIT => PgOutputMessage::StreamCommit(read_stream_commit(cur)?),
            tag::STREAM_ABORT => {
                let with_abort_info =
                    layout::stream_abort_has_abort_info(self.protocol_version, self.parallel_streaming);
                PgOutputMessage::StreamAbort(read_stream_abort(cur, with_abort_info)?)
            }
            tag::BEGIN_PREPARE => PgOutputMessage::BeginPrepare(read_begin_prepare(cur)?),
            tag::PREPARE => PgOutputMessage::Prepare(read_prepare(cur)?),
            tag::COMMIT_PREPARED => PgOutputMessage::CommitPrepared(read_commit_prepared(cur)?),
            tag::ROLLBACK_PREPARED => PgOutputMessage::RollbackPrepared(read_rollback_prepared(cur)?),
            tag::STREAM_PREPARE => {
                let p = read_prepare(cur)?;
                PgOutputMessage::StreamPrepare(StreamPrepare {
                    flags: p.flags,
                    prepare_lsn: p.prepare_lsn,
                    end_lsn: p.end_lsn,
                    prepare_time: p.prepare_time,
                    xid: p.xid,
                    gid: p.gid,
                })
            }
            other => return Err(DecodeError::UnknownMessageTag { tag: other }),
        })
    }

    /// Moves the block state; called only once a message has fully decoded, so that an invalid
    /// Stream Start/Stop never changes how the next payload is read.
    fn follow_stream_block(&mut self, message: &PgOutputMessage) {
        match message {
            PgOutputMessage::StreamStart(_) => self.in_stream = true,
            PgOutputMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
    }

    /// Reads the subtransaction xid that prefixes DML/schema messages inside a stream block.
    fn read_stream_xid(&self, cur: &mut Cursor) -> Result<Option<Xid>, DecodeError> {
        if self.in_stream {
            read_xid(cur).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn read_lsn(cur: &mut Cursor) -> Result<Lsn, DecodeError> {
    cur.read_u64().map(Lsn)
}

fn read_timestamp(cur: &mut Cursor) -> Result<PgTimestamp, DecodeError> {
    cur.read_i64().map(PgTimestamp)
}

fn read_xid(cur: &mut Cursor) -> Result<Xid, DecodeError> {
    cur.read_u32().map(Xid)
}

fn read_oid(cur: &mut Cursor) -> Result<Oid, DecodeError> {
    cur.read_u32().map(Oid)
}

/// Reads a namespace, mapping PostgreSQL's empty-string shorthand back to `pg_catalog`.
fn read_namespace(cur: &mut Cursor) -> Result<String, DecodeError> {
    let namespace = cur.read_cstr()?;
    Ok(if namespace.is_empty() { PG_CATALOG.to_owned() } else { namespace })
}

fn read_begin(cur: &mut Cursor) -> Result<Begin, DecodeError> {
    Ok(Begin { final_lsn: read_lsn(cur)?, commit_time: read_timestamp(cur)?, xid: read_xid(cur)? })
}

fn read_commit(cur: &mut Cursor) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: cur.read_u8()?,
        commit_lsn: read_lsn(cur)?,
        end_lsn: read_lsn(cur)?,
        commit_time: read_timestamp(cur)?,
    })
}

fn read_origin(cur: &mut Cursor) -> Result<Origin, DecodeError> {
    Ok(Origin { commit_lsn: read_lsn(cur)?, name: cur.read_cstr()? })
}

fn read_relation(cur: &mut Cursor, xid: Option<Xid>) -> Result<Relation, DecodeError> {
    let oid = read_oid(cur)?;
    let namespace = read_namespace(cur)?;
    let name = cur.read_cstr()?;
    let identity_offset = cur.offset();
    let identity_byte = cur.read_u8()?;
    let replica_identity = layout::replica_identity_from_byte(identity_byte)
        .ok_or(DecodeError::InvalidReplicaIdentity { offset: identity_offset, byte: identity_byte })?;
    let count = usize::from(cur.read_u16()?);
    // The count is untrusted: reserve no more than the remaining bytes could possibly hold.
    let mut columns = Vec::with_capacity(count.min(cur.remaining() / MIN_RELATION_COLUMN_LEN));
    for _ in 0..count {
        columns.push(RelationColumn {
            is_key: cur.read_u8()? & COLUMN_IS_KEY != 0,
            name: cur.read_cstr()?,
            type_oid: read_oid(cur)?,
            type_modifier: cur.read_i32()?,
        });
    }
    Ok(Relation { xid, oid, namespace, name, replica_identity, columns })
}

fn read_type(cur: &mut Cursor, xid: Option<Xid>) -> Result<TypeMessage, DecodeError> {
    Ok(TypeMessage { xid, oid: read_oid(cur)?, namespace: read_namespace(cur)?, name: cur.read_cstr()? })
}

fn read_tuple(cur: &mut Cursor) -> Result<TupleData, DecodeError> {
    let count = usize::from(cur.read_u16()?);
    // Every column takes at least its kind byte, which bounds the reservation by the input.
    let mut columns = Vec::with_capacity(count.min(cur.remaining() / MIN_TUPLE_COLUMN_LEN));
    for _ in 0..count {
        let offset = cur.offset();
        let column = match cur.read_u8()? {
            tuple_kind::NULL => TupleColumn::Null,
            tuple_kind::UNCHANGED_TOAST => TupleColumn::UnchangedToast,
            tuple_kind::TEXT => {
                let len = cur.read_len_i32()?;
                TupleColumn::Text(cur.read_bytes(len)?)
            }
            tuple_kind::BINARY => {
                let len = cur.read_len_i32()?;
                TupleColumn::Binary(cur.read_bytes(len)?)
            }
            kind => return Err(DecodeError::UnknownTupleKind { offset, kind }),
        };
        columns.push(column);
    }
    Ok(TupleData { columns })
}

/// Reads the marker byte that must announce the new tuple.
fn expect_new_marker(cur: &mut Cursor, expected: &'static str) -> Result<(), DecodeError> {
    let offset = cur.offset();
    match cur.read_u8()? {
        tuple_marker::NEW => Ok(()),
        found => Err(DecodeError::UnexpectedByte { offset, expected, found }),
    }
}

fn read_insert(cur: &mut Cursor, xid: Option<Xid>) -> Result<Insert, DecodeError> {
    let relation = read_oid(cur)?;
    expect_new_marker(cur, "'N'")?;
    Ok(Insert { xid, relation, new_tuple: read_tuple(cur)? })
}

fn read_update(cur: &mut Cursor, xid: Option<Xid>) -> Result<Update, DecodeError> {
    let relation = read_oid(cur)?;
    let offset = cur.offset();
    let old_tuple = match cur.read_u8()? {
        tuple_marker::OLD_KEY => Some(OldTuple::Key(read_tuple(cur)?)),
        tuple_marker::OLD_ROW => Some(OldTuple::Full(read_tuple(cur)?)),
        tuple_marker::NEW => None,
        found => return Err(DecodeError::UnexpectedByte { offset, expected: "'K', 'O' or 'N'", found }),
    };
    if old_tuple.is_some() {
        expect_new_marker(cur, "'N'")?;
    }
    Ok(Update { xid, relation, old_tuple, new_tuple: read_tuple(cur)? })
}

fn read_delete(cur: &mut Cursor, xid: Option<Xid>) -> Result<Delete, DecodeError> {
    let relation = read_oid(cur)?;
    let offset = cur.offset();
    let old_tuple = match cur.read_u8()? {
        tuple_marker::OLD_KEY => OldTuple::Key(read_tuple(cur)?),
        tuple_marker::OLD_ROW => OldTuple::Full(read_tuple(cur)?),
        found => return Err(DecodeError::UnexpectedByte { offset, expected: "'K' or 'O'", found }),
    };
    Ok(Delete { xid, relation, old_tuple })
}

fn read_truncate(cur: &mut Cursor, xid: Option<Xid>) -> Result<Truncate, DecodeError> {
    let count = cur.read_len_i32()?;
    let bits = cur.read_u8()?;
    // OIDs are fixed-size, so the whole list can be bounds-checked before allocating.
    cur.need(count.saturating_mul(TRUNCATE_OID_LEN))?;
    let mut relations = Vec::with_capacity(count);
    for _ in 0..count {
        relations.push(read_oid(cur)?);
    }
    Ok(Truncate {
        xid,
        options: TruncateOptions {
            cascade: bits & TRUNCATE_CASCADE != 0,
            restart_identity: bits & TRUNCATE_RESTART_IDENTITY != 0,
        },
        relations,
    })
}

fn read_message(cur: &mut Cursor, xid: Option<Xid>) -> Result<LogicalMessage, DecodeError> {
    let transactional = cur.read_u8()? & MESSAGE_TRANSACTIONAL != 0;
    let lsn = read_lsn(cur)?;
    let prefix = cur.read_cstr()?;
    let len = cur.read_len_i32()?;
    Ok(LogicalMessage { xid, transactional, lsn, prefix, content: cur.read_bytes(len)? })
}

fn read_stream_start(cur: &mut Cursor) -> Result<StreamStart, DecodeError> {
    Ok(StreamStart {
        xid: read_xid(cur)?,
        // As PostgreSQL's own reader does: only 1 means "first".
        first_segment: cur.read_u8()? == STREAM_FIRST_SEGMENT,
    })
}

fn read_stream_commit(cur: &mut Cursor) -> Result<StreamCommit, DecodeError> {
    Ok(StreamCommit {
        xid: read_xid(cur)?,
        flags: cur.read_u8()?,
        commit_lsn: read_lsn(cur)?,
        end_lsn: read_lsn(cur)?,
        commit_time: read_timestamp(cur)?,
    })
}

fn read_stream_abort(cur: &mut Cursor, with_abort_info: bool) -> Result<StreamAbort, DecodeError> {
    let xid = read_xid(cur)?;
    let subxid = read_xid(cur)?;
    let (abort_lsn, abort_time) =
        if with_abort_info { (Some(read_lsn(cur)?), Some(read_timestamp(cur)?)) } else { (None, None) };
    Ok(StreamAbort { xid, subxid, abort_lsn, abort_time })
}

fn read_begin_prepare(cur: &mut Cursor) -> Result<BeginPrepare, DecodeError> {
    Ok(BeginPrepare {
        prepare_lsn: read_lsn(cur)?,
        end_lsn: read_lsn(cur)?,
        prepare_time: read_timestamp(cur)?,
        xid: read_xid(cur)?,
        gid: cur.read_cstr()?,
    })
}

fn read_prepare(cur: &mut Cursor) -> Result<Prepare, DecodeError> {
    Ok(Prepare {
        flags: cur.read_u8()?,
        prepare_lsn: read_lsn(cur)?,
        end_lsn: read_lsn(cur)?,
        prepare_time: read_timestamp(cur)?,
        xid: read_xid(cur)?,
        gid: cur.read_cstr()?,
    })
}

fn read_commit_prepared(cur: &mut Cursor) -> Result<CommitPrepared, DecodeError> {
    Ok(CommitPrepared {
        flags: cur.read_u8()?,
        commit_lsn: read_lsn(cur)?,
        end_lsn: read_lsn(cur)?,
        commit_time: read_timestamp(cur)?,
        xid: read_xid(cur)?,
        gid: cur.read_cstr()?,
    })
}

fn read_rollback_prepared(cur: &mut Cursor) -> Result<RollbackPrepared, DecodeError> {
    Ok(RollbackPrepared {
        flags: cur.read_u8()?,
        prepare_end_lsn: read_lsn(cur)?,
        rollback_end_lsn: read_lsn(cur)?,
        prepare_time: read_timestamp(cur)?,
        rollback_time: read_timestamp(cur)?,
        xid: read_xid(cur)?,
        gid: cur.read_cstr()?,
    })
}
