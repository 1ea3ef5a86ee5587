//! Message bodies: one type per pgoutput message, fields named as in the PostgreSQL docs.
//!
//! These are plain data. They hold exactly what was on the wire, with one normalisation: an
//! empty namespace in Relation/Type messages becomes `"pg_catalog"`, which is what PostgreSQL
//! means by it.

use bytes::Bytes;

use crate::{Lsn, Oid, PgTimestamp, Xid};

/// Message type bytes (the first byte of every pgoutput payload).
///
/// `K`, `O` and `N` are also tuple markers inside Update/Delete, and `r`/`p` are also
/// standby-status tags one layer down; these constants only apply at offset 0.
pub mod tag {
    /// [`Begin`](crate::Begin).
    pub const BEGIN: u8 = b'B';
    /// [`Commit`](crate::Commit).
    pub const COMMIT: u8 = b'C';
    /// [`Origin`](crate::Origin).
    pub const ORIGIN: u8 = b'O';
    /// [`Relation`](crate::Relation).
    pub const RELATION: u8 = b'R';
    /// [`TypeMessage`](crate::TypeMessage).
    pub const TYPE: u8 = b'Y';
    /// [`Insert`](crate::Insert).
    pub const INSERT: u8 = b'I';
    /// [`Update`](crate::Update).
    pub const UPDATE: u8 = b'U';
    /// [`Delete`](crate::Delete).
    pub const DELETE: u8 = b'D';
    /// [`Truncate`](crate::Truncate).
    pub const TRUNCATE: u8 = b'T';
    /// [`LogicalMessage`](crate::LogicalMessage).
    pub const MESSAGE: u8 = b'M';
    /// [`StreamStart`](crate::StreamStart) (v2+).
    pub const STREAM_START: u8 = b'S';
    /// Stream Stop (v2+), which has no body.
    pub const STREAM_STOP: u8 = b'E';
    /// [`StreamCommit`](crate::StreamCommit) (v2+).
    pub const STREAM_COMMIT: u8 = b'c';
    /// [`StreamAbort`](crate::StreamAbort) (v2+).
    pub const STREAM_ABORT: u8 = b'A';
    /// [`BeginPrepare`](crate::BeginPrepare) (v3+).
    pub const BEGIN_PREPARE: u8 = b'b';
    /// [`Prepare`](crate::Prepare) (v3+).
    pub const PREPARE: u8 = b'P';
    /// [`CommitPrepared`](crate::CommitPrepared) (v3+).
    pub const COMMIT_PREPARED: u8 = b'K';
    /// [`RollbackPrepared`](crate::RollbackPrepared) (v3+).
    pub const ROLLBACK_PREPARED: u8 = b'r';
    /// [`StreamPrepare`](crate::StreamPrepare) (v3+).
    pub const STREAM_PREPARE: u8 = b'p';
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// `B`: start of a (non-streamed) transaction.
    Begin(Begin),
    /// `C`: end of a (non-streamed) transaction.
    Commit(Commit),
    /// `O`: the transaction was replayed from another node with this origin.
    Origin(Origin),
    /// `R`: a relation's schema, sent before its first change on this connection.
    Relation(Relation),
    /// `Y`: a non-built-in type used by a following Relation.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: one or more relations were truncated.
    Truncate(Truncate),
    /// `M`: output of `pg_logical_emit_message`.
    Message(LogicalMessage),
    /// `S`: start of a block of changes of a streamed (in-progress) transaction.
    StreamStart(StreamStart),
    /// `E`: end of the current stream block.
    StreamStop,
    /// `c`: a streamed transaction committed.
    StreamCommit(StreamCommit),
    /// `A`: a streamed transaction or subtransaction aborted.
    StreamAbort(StreamAbort),
    /// `b`: start of a transaction prepared for two-phase commit.
    BeginPrepare(BeginPrepare),
    /// `P`: end of a prepared transaction's changes.
    Prepare(Prepare),
    /// `K`: a prepared transaction was committed.
    CommitPrepared(CommitPrepared),
    /// `r`: a prepared transaction was rolled back.
    RollbackPrepared(RollbackPrepared),
    /// `p`: a streamed transaction was prepared.
    StreamPrepare(StreamPrepare),
}

impl PgOutputMessage {
    /// The message type byte this message was decoded from (see [`tag`]).
    pub fn tag(&self) -> u8 {
        match self {
            PgOutputMessage::Begin(_) => tag::BEGIN,
            PgOutputMessage::Commit(_) => tag::COMMIT,
            PgOutputMessage::Origin(_) => tag::ORIGIN,
            PgOutputMessage::Relation(_) => tag::RELATION,
            PgOutputMessage::Type(_) => tag::TYPE,
            PgOutputMessage::Insert(_) => tag::INSERT,
            PgOutputMessage::Update(_) => tag::UPDATE,
            PgOutputMessage::Delete(_) => tag::DELETE,
            PgOutputMessage::Truncate(_) => tag::TRUNCATE,
            PgOutputMessage::Message(_) => tag::MESSAGE,
            PgOutputMessage::StreamStart(_) => tag::STREAM_START,
            PgOutputMessage::StreamStop => tag::STREAM_STOP,
            PgOutputMessage::StreamCommit(_) => tag::STREAM_COMMIT,
            PgOutputMessage::StreamAbort(_) => tag::STREAM_ABORT,
            PgOutputMessage::BeginPrepare(_) => tag::BEGIN_PREPARE,
            PgOutputMessage::Prepare(_) => tag::PREPARE,
            PgOutputMessage::CommitPrepared(_) => tag::COMMIT_PREPARED,
            PgOutputMessage::RollbackPrepared(_) => tag::ROLLBACK_PREPARED,
            PgOutputMessage::StreamPrepare(_) => tag::STREAM_PREPARE,
        }
    }
}

/// Begin `B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (equals the matching [`Commit::commit_lsn`]).
    pub final_lsn: Lsn,
    /// Commit time of the transaction.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
}

/// Commit `C`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// Start LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit record: the position to acknowledge once the transaction is stored.
    pub end_lsn: Lsn,
    /// Commit time of the transaction.
    pub commit_time: PgTimestamp,
}

/// Origin `O`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server (0 when sent after a Stream Start).
    pub commit_lsn: Lsn,
    /// Replication origin name.
    pub name: String,
}

/// Relation `R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// Relation OID, the key DML messages refer to.
    pub oid: Oid,
    /// Schema name; an empty name on the wire is normalised to `"pg_catalog"`.
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// The relation's replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns in wire order (not necessarily `attnum` order).
    pub columns: Vec<RelationColumn>,
}

/// A relation's `REPLICA IDENTITY` (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: no old-row information.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (every column, with identity FULL).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// Type OID of the column.
    pub type_oid: Oid,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

/// Type `Y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// Type OID as used in Relation columns (for a domain, the domain's OID).
    pub oid: Oid,
    /// Schema name; an empty name on the wire is normalised to `"pg_catalog"`.
    pub namespace: String,
    /// Type name (for a domain, its base type's name).
    pub name: String,
}

/// A row image (TupleData): one entry per column of the current Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData {
    /// Column values in Relation column order.
    pub columns: Vec<TupleColumn>,
}

/// One column value inside [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleColumn {
    /// `n`: SQL NULL (also non-key columns of a key-only old tuple).
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: the type's text output, in the client encoding; a zero-copy slice of the payload.
    Text(Bytes),
    /// `b`: the type's binary send format; a zero-copy slice of the payload.
    Binary(Bytes),
}

/// Insert `I`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// OID of the relation (see the preceding [`Relation`]).
    pub relation: Oid,
    /// The inserted row.
    pub new_tuple: TupleData,
}

/// The old-row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only replica identity columns carry values; the others are [`TupleColumn::Null`].
    Key(TupleData),
    /// `O`: the whole old row (replica identity FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// Update `U`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// OID of the relation.
    pub relation: Oid,
    /// Old key or row; absent when the identity did not change (take the key from `new_tuple`).
    pub old_tuple: Option<OldTuple>,
    /// The new row.
    pub new_tuple: TupleData,
}

/// Delete `D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// OID of the relation.
    pub relation: Oid,
    /// Old key or row.
    pub old_tuple: OldTuple,
}

/// Options written on a `TRUNCATE` statement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TruncateOptions {
    /// `CASCADE` was written (option value 1).
    pub cascade: bool,
    /// `RESTART IDENTITY` was written (option value 2).
    pub restart_identity: bool,
}

/// Truncate `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// Statement options.
    pub options: TruncateOptions,
    /// OIDs of the truncated (published) relations.
    pub relations: Vec<Oid>,
}

/// Message `M` (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Subtransaction xid; present only inside a stream block.
    pub xid: Option<Xid>,
    /// Whether the message is part of its transaction (flags value 1) or was delivered at once.
    pub transactional: bool,
    /// LSN of the message record.
    pub lsn: Lsn,
    /// Prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// Content; a zero-copy slice of the payload.
    pub content: Bytes,
}

/// Stream Start `S`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// Top-level transaction id of the streamed transaction.
    pub xid: Xid,
    /// Whether this is the first block of this transaction (wire value 1).
    pub first_segment: bool,
}

/// Stream Commit `c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCommit {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// Start LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit record: the position to acknowledge.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
}

/// Stream Abort `A`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAbort {
    /// Top-level transaction id.
    pub xid: Xid,
    /// Aborted (sub)transaction id; equals `xid` when the whole transaction aborted.
    pub subxid: Xid,
    /// Abort LSN; sent only with protocol v4+ and `streaming 'parallel'`.
    pub abort_lsn: Option<Lsn>,
    /// Abort time; sent only with protocol v4+ and `streaming 'parallel'`.
    pub abort_time: Option<PgTimestamp>,
}

/// Begin Prepare `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeginPrepare {
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepare record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id given to `PREPARE TRANSACTION`.
    pub gid: String,
}

/// Prepare `P`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepare record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

/// Commit Prepared `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPrepared {
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// LSN of the commit-prepared record.
    pub commit_lsn: Lsn,
    /// End LSN of the commit-prepared record: the position to acknowledge.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

/// Rollback Prepared `r`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPrepared {
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// End LSN of the prepare record.
    pub prepare_end_lsn: Lsn,
    /// End LSN of the rollback-prepared record.
    pub rollback_end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Rollback time.
    pub rollback_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}

/// Stream Prepare `p` (same body as [`Prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPrepare {
    /// Flags; currently always 0, kept as sent.
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: Lsn,
    /// End LSN of the prepare record.
    pub end_lsn: Lsn,
    /// Prepare time.
    pub prepare_time: PgTimestamp,
    /// Transaction id.
    pub xid: Xid,
    /// Global transaction id.
    pub gid: String,
}
