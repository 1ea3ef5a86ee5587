//! Turns the flat sequence of pgoutput messages into whole [`Transaction`]s,
//! keeping the relation cache current.
//!
//! Two kinds of transaction arrive. Ordinary ones come whole, between Begin
//! and Commit. Streamed ones (protocol 2+, `streaming` on) come in Stream
//! Start … Stream Stop blocks while they are still running, interleaved with
//! others, and end with Stream Commit or Stream Abort; their changes wait in
//! [`StreamedTransactions`] (which spills to disk past a memory bound).
//! An ordinary transaction that grows past one piece
//! ([`PIECE_MAX_CHANGES`], [`PIECE_MAX_BYTES`]) moves there too, so a
//! transaction of any size, streamed or not (`streaming = false`, protocol
//! 1), costs at most the spill memory bound. A transaction larger than one
//! piece is handed on as [`Assembled::CommittedInPieces`], to be read back
//! and applied a piece at a time.
//!
//! Invariants:
//! - a transaction is emitted only at its Commit or Stream Commit, with its
//!   changes in order and without those of aborted subtransactions (whole,
//!   or in pieces whose ordinals continue from one to the next);
//! - a Relation message replaces the cached shape of its table at once, so a
//!   new column is picked up without restart. Inside a stream block it only
//!   applies to that streamed transaction until it commits (then it becomes
//!   the shape for everyone, as pgoutput assumes); if it aborts, the shape is
//!   forgotten, because the server will not send the old one again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use pgoutput::value::TypeKind;
use pgoutput::{Lsn, Oid, OldTuple, PgOutputMessage, ReplicaIdentity, TupleColumn, TupleData, TypeRegistry, Xid};

use crate::model::{
    Change, ChangeOp, ColumnSchema, ColumnValue, Row, TableName, TableSchema, Transaction, TRANSACTION_OVERHEAD_BYTES,
};
use crate::streamed::{CommittedChanges, SpillError, SpillSettings, StreamedTransactions};

/// Most changes a transaction handed on whole may hold; a larger one is
/// handed on in pieces of at most this many changes.
pub const PIECE_MAX_CHANGES: usize = 1000;

/// Most bytes (approximate, see [`Change::approximate_size`]) of changes a
/// transaction handed on whole may hold, and a piece of a larger one.
pub const PIECE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Errors in the order or content of the message stream.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// A change arrived outside Begin … Commit.
    #[error("{message} received outside a transaction")]
    OutsideTransaction {
        /// Which message.
        message: &'static str,
    },
    /// Begin arrived while a transaction was open.
    #[error("begin of a new transaction while transaction with final lsn {open} is open")]
    NestedBegin {
        /// The open transaction's final LSN.
        open: Lsn,
    },
    /// A change refers to a relation no Relation message announced.
    #[error("change for relation oid {0} that was never announced by a relation message")]
    UnknownRelation(Oid),
    /// Stream Start while a stream block or an ordinary transaction was open.
    #[error("stream start for transaction {xid} while {open} is open")]
    NestedStreamStart {
        /// The transaction the new block belongs to.
        xid: Xid,
        /// What was open: `a stream block` or `a transaction`.
        open: &'static str,
    },
    /// A streamed transaction's changes could not be spilled or read back.
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// A tuple's column count differs from its relation's.
    #[error("tuple for {table} has {found} columns, its relation message announced {expected}")]
    ColumnCountMismatch {
        /// The table.
        table: TableName,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        found: usize,
    },
}

/// What the assembler produced from one message.
#[derive(Debug)]
pub enum Assembled {
    /// Nothing to hand on yet.
    Pending,
    /// A transaction committed, with all its changes.
    Committed(Transaction),
    /// A transaction larger than one piece committed: its identity (with no
    /// changes) and its changes, to be read a piece at a time with
    /// `next_piece(PIECE_MAX_CHANGES, PIECE_MAX_BYTES)`.
    CommittedInPieces(Transaction, CommittedChanges),
}

/// Hashes a relation OID with one multiplication. The relation cache is
/// looked up for every row change, and OIDs come from the server, not from
/// anyone who could pick colliding ones: SipHash's protection buys nothing.
#[derive(Debug, Default)]
struct OidHasher(u64);

impl Hasher for OidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u32(u32::from(*byte) ^ (self.0 as u32));
        }
    }

    fn write_u32(&mut self, value: u32) {
        // Fibonacci hashing: the high bits, which the table uses, mix every input bit.
        self.0 = (u64::from(value) ^ self.0.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Relation cache plus the transactions being assembled.
#[derive(Debug, Default)]
pub struct TransactionAssembler {
    relations: HashMap<Oid, Arc<TableSchema>, BuildHasherDefault<OidHasher>>,
    /// Value conversion for the stream's types: built-ins, the user types
    /// registered from the catalog, and the names Type messages announce.
    /// Shared with the table shapes announced since its last change.
    types: Arc<TypeRegistry>,
    open: Option<Transaction>,
    /// Bytes of the open transaction's changes while they are in `open`.
    open_bytes: usize,
    /// Whether the open transaction outgrew one piece: its changes are then
    /// in `streamed`, under its xid, not in `open`.
    open_held: bool,
    /// [`Transaction::approximate_size`] of the transaction the last Commit
    /// handed on whole, counted while it arrived (see [`Self::committed_size`]).
    committed_size: Option<usize>,
    /// Top-level xid of the stream block being received.
    stream_block: Option<Xid>,
    streamed: StreamedTransactions,
    /// Relation shapes announced inside stream blocks, per streamed transaction.
    stream_relations: HashMap<Xid, HashMap<Oid, Arc<TableSchema>>>,
    /// Primary key columns per table, from the catalog: the key of tables
    /// whose replica identity does not name it (FULL, NOTHING).
    primary_keys: HashMap<TableName, Vec<String>>,
}

impl TransactionAssembler {
    /// An empty assembler with default spill settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty assembler spilling streamed transactions by `settings`.
    pub fn with_spill(settings: SpillSettings) -> Self {
        TransactionAssembler { streamed: StreamedTransactions::new(settings), ..Self::default() }
    }

    /// Whether no ordinary transaction and no stream block is open: every
    /// message received so far has been accounted for. Streamed transactions
    /// may still be in progress between blocks; confirming a position inside
    /// them is safe, because the server re-sends any transaction that
    /// commits after the confirmed position.
    pub fn is_idle(&self) -> bool {
        self.open.is_none() && self.stream_block.is_none()
    }

    /// How column values of this stream convert to typed values.
    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    /// Registers user types (enums, domains, arrays; typically read from
    /// `pg_type`). Shapes announced from now on convert with them; shapes
    /// already cached keep the registry they were announced with, which is
    /// why this is best called before streaming starts, or whenever a Type
    /// message names a type the registry cannot convert (the server sends
    /// the Relation message that uses it right after).
    pub fn register_types(&mut self, kinds: impl IntoIterator<Item = (Oid, TypeKind)>) {
        let types = Arc::make_mut(&mut self.types);
        for (oid, kind) in kinds {
            // Built-in OIDs are refused by the registry and need no registration.
            let _ = types.register(oid, kind);
        }
    }

    /// Registers each table's primary key columns (read from `pg_index`).
    /// Under REPLICA IDENTITY FULL or NOTHING they, not pgoutput's flags,
    /// mark the key columns of the shapes announced from now on (see
    /// [`ColumnSchema::is_key`]); a table not registered has no key there.
    pub fn register_primary_keys(&mut self, keys: impl IntoIterator<Item = (TableName, Vec<String>)>) {
        self.primary_keys.extend(keys);
    }

    /// Whether the registry converts values of `oid` (built in or registered).
    pub fn converts(&self, oid: Oid) -> bool {
        self.types.kind(oid).is_some()
    }

    /// Whether a stream block is open or streamed transactions are held.
    pub fn is_streaming(&self) -> bool {
        self.stream_block.is_some() || !self.streamed.is_empty()
    }

    /// Bytes of streamed, uncommitted changes held in memory.
    pub fn streamed_in_memory_bytes(&self) -> usize {
        self.streamed.in_memory_bytes()
    }

    /// Bytes of streamed changes spilled to disk since start.
    pub fn streamed_spilled_bytes_total(&self) -> u64 {
        self.streamed.spilled_bytes_total()
    }

    /// Drops every partial transaction, ordinary or streamed (the connection
    /// was lost; the server sends them again from their start).
    pub fn discard_open(&mut self) {
        self.open = None;
        self.open_bytes = 0;
        self.open_held = false;
        self.stream_block = None;
        self.streamed.clear();
        self.stream_relations.clear();
    }

    /// [`Transaction::approximate_size`] of the transaction that the last
    /// message committed, if it was handed on whole ([`Assembled::Committed`])
    /// from an ordinary Begin … Commit: counted as its changes arrived, so
    /// that the pipeline need not walk them again. `None` otherwise.
    pub fn committed_size(&self) -> Option<usize> {
        self.committed_size
    }

    /// The cached shape of a relation.
    pub fn relation(&self, oid: Oid) -> Option<&Arc<TableSchema>> {
        self.relations.get(&oid)
    }

    /// Feeds one decoded message.
    pub fn push(&mut self, message: PgOutputMessage) -> Result<Assembled, AssembleError> {
        match message {
            PgOutputMessage::Begin(begin) => {
                if let Some(open) = &self.open {
                    return Err(AssembleError::NestedBegin { open: open.commit_lsn });
                }
                self.open = Some(Transaction {
                    xid: begin.xid,
                    commit_lsn: begin.final_lsn,
                    end_lsn: Lsn::ZERO,
                    commit_time: begin.commit_time,
                    changes: Vec::new(),
                });
                self.open_bytes = 0;
                self.open_held = false;
                Ok(Assembled::Pending)
            }
            PgOutputMessage::Commit(commit) => {
                let mut transaction =
                    self.open.take().ok_or(AssembleError::OutsideTransaction { message: "commit" })?;
                transaction.commit_lsn = commit.commit_lsn;
                transaction.end_lsn = commit.end_lsn;
                transaction.commit_time = commit.commit_time;
                self.committed_size = None;
                if std::mem::take(&mut self.open_held) {
                    let changes = self.streamed.commit(transaction.xid)?;
                    return Ok(Assembled::CommittedInPieces(transaction, changes));
                }
                self.committed_size = Some(self.open_bytes + TRANSACTION_OVERHEAD_BYTES);
                Ok(Assembled::Committed(transaction))
            }
            PgOutputMessage::Type(announced) => {
                Arc::make_mut(&mut self.types).observe(&announced);
                Ok(Assembled::Pending)
            }
            PgOutputMessage::Relation(relation) => {
                let table = TableName::new(relation.namespace, relation.name);
                // pgoutput's flags are the replica identity: the primary key
                // under DEFAULT, the index under USING INDEX, but every column
                // under FULL and none under NOTHING; there the catalog's
                // primary key is the key.
                let primary_key = match relation.replica_identity {
                    ReplicaIdentity::Full | ReplicaIdentity::Nothing => {
                        Some(self.primary_keys.get(&table).map(Vec::as_slice).unwrap_or_default())
                    }
                    _ => None,
                };
                let schema = Arc::new(TableSchema {
                    oid: relation.oid,
                    table,
                    replica_identity: relation.replica_identity,
                    columns: relation
                        .columns
                        .into_iter()
                        .map(|c| {
                            let is_key = primary_key.map_or(c.is_key, |key| key.contains(&c.name));
                            ColumnSchema { name: c.name, type_oid: c.type_oid, is_key }
                        })
                        .collect(),
                    types: Arc::clone(&self.types),
                });
                match self.stream_block {
                    Some(xid) => self.stream_relations.entry(xid).or_default().insert(schema.oid, schema),
                    None => self.relations.insert(schema.oid, schema),
                };
                Ok(Assembled::Pending)
            }
            PgOutputMessage::Insert(insert) => {
                let table = self.table(insert.relation)?;
                let new = to_row(&table, insert.new_tuple)?;
                self.add_change(table, ChangeOp::Insert { new }, insert.xid, "insert")
            }
            PgOutputMessage::Update(update) => {
                let table = self.table(update.relation)?;
                let whole_old_row = matches!(update.old_tuple, Some(OldTuple::Full(_)));
                let old = update.old_tuple.map(|old| to_row(&table, old_tuple_data(old))).transpose()?;
                let mut new = to_row(&table, update.new_tuple)?;
                if let (true, Some(old)) = (whole_old_row, &old) {
                    fill_unchanged_toast(&mut new, old);
                }
                self.add_change(table, ChangeOp::Update { old, new }, update.xid, "update")
            }
            PgOutputMessage::Delete(delete) => {
                let table = self.table(delete.relation)?;
                let old = to_row(&table, old_tuple_data(delete.old_tuple))?;
                self.add_change(table, ChangeOp::Delete { old }, delete.xid, "delete")
            }
            PgOutputMessage::Truncate(truncate) => {
                for relation in truncate.relations {
                    let table = self.table(relation)?;
                    self.add_change(table, ChangeOp::Truncate, truncate.xid, "truncate")?;
                }
                Ok(Assembled::Pending)
            }
            PgOutputMessage::StreamStart(start) => {
                if self.stream_block.is_some() || self.open.is_some() {
                    let open = if self.open.is_some() { "a transaction" } else { "a stream block" };
                    return Err(AssembleError::NestedStreamStart { xid: start.xid, open });
                }
                self.stream_block = Some(start.xid);
                Ok(Assembled::Pending)
            }
            PgOutputMessage::StreamStop => {
                self.stream_block.take().ok_or(AssembleError::OutsideTransaction { message: "stream stop" })?;
                Ok(Assembled::Pending)
            }
            PgOutputMessage::StreamCommit(commit) => {
                self.committed_size = None;
                let changes = self.streamed.commit(commit.xid)?;
                // pgoutput now considers the shapes sent in the stream known
                // to us for ordinary transactions too.
                if let Some(shapes) = self.stream_relations.remove(&commit.xid) {
                    self.relations.extend(shapes);
                }
                let mut transaction = Transaction {
                    xid: commit.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time: commit.commit_time,
                    changes: Vec::new(),
                };
                if !changes.fits(PIECE_MAX_CHANGES, PIECE_MAX_BYTES) {
                    return Ok(Assembled::CommittedInPieces(transaction, changes));
                }
                transaction.changes = changes.into_vec()?;
                Ok(Assembled::Committed(transaction))
            }
            PgOutputMessage::StreamAbort(abort) => {
                self.streamed.abort(abort.xid, abort.subxid);
                if abort.xid == abort.subxid {
                    self.stream_relations.remove(&abort.xid);
                }
                Ok(Assembled::Pending)
            }
            // Origin carries nothing the sinks use yet; logical messages
            // (requested for heartbeats) are not changes; two-phase is not
            // requested.
            _ => Ok(Assembled::Pending),
        }
    }

    /// The shape of `oid` as the message being processed sees it: a streamed
    /// transaction's own announcement first, then the shared cache.
    fn table(&self, oid: Oid) -> Result<Arc<TableSchema>, AssembleError> {
        self.stream_block
            .and_then(|xid| self.stream_relations.get(&xid))
            .and_then(|shapes| shapes.get(&oid))
            .or_else(|| self.relations.get(&oid))
            .cloned()
            .ok_or(AssembleError::UnknownRelation(oid))
    }

    /// Adds a change to the open transaction, or inside a stream block to the
    /// streamed transaction (`subtransaction` is the xid the message carries).
    fn add_change(
        &mut self,
        table: Arc<TableSchema>,
        op: ChangeOp,
        subtransaction: Option<Xid>,
        message: &'static str,
    ) -> Result<Assembled, AssembleError> {
        if let Some(xid) = self.stream_block {
            self.streamed.add(xid, subtransaction.unwrap_or(xid), Change { table, op, ordinal: 0 })?;
            return Ok(Assembled::Pending);
        }
        let open = self.open.as_mut().ok_or(AssembleError::OutsideTransaction { message })?;
        if self.open_held {
            self.streamed.add(open.xid, open.xid, Change { table, op, ordinal: 0 })?;
            return Ok(Assembled::Pending);
        }
        let change = Change { table, op, ordinal: open.changes.len() as u32 };
        self.open_bytes += change.approximate_size();
        open.changes.push(change);
        if open.changes.len() > PIECE_MAX_CHANGES || self.open_bytes > PIECE_MAX_BYTES {
            // Too large to hand on whole: held (and spilled past the memory
            // bound) like a streamed transaction, then read back in pieces.
            for change in std::mem::take(&mut open.changes) {
                self.streamed.add(open.xid, open.xid, change)?;
            }
            self.open_bytes = 0;
            self.open_held = true;
        }
        Ok(Assembled::Pending)
    }
}

fn old_tuple_data(old: OldTuple) -> TupleData {
    match old {
        OldTuple::Key(data) | OldTuple::Full(data) => data,
    }
}

/// Under identity FULL the old row holds every value, TOASTed ones included
/// (the server detoasts it), so an unchanged TOAST column of the new row is
/// taken from it. Every sink then gets a whole new row: one keyed by a
/// changed key (a document, node or hash re-created under the new key)
/// would otherwise lose the value it cannot read from anywhere else.
fn fill_unchanged_toast(new: &mut Row, old: &Row) {
    for (value, before) in new.iter_mut().zip(old) {
        if matches!(value, ColumnValue::UnchangedToast) && !matches!(before, ColumnValue::UnchangedToast) {
            *value = before.clone();
        }
    }
}

fn to_row(table: &TableSchema, tuple: TupleData) -> Result<Row, AssembleError> {
    if tuple.columns.len() != table.columns.len() {
        return Err(AssembleError::ColumnCountMismatch {
            table: table.table.clone(),
            expected: table.columns.len(),
            found: tuple.columns.len(),
        });
    }
    Ok(tuple
        .columns
        .into_iter()
        .map(|column| match column {
            TupleColumn::Null => ColumnValue::Null,
            TupleColumn::UnchangedToast => ColumnValue::UnchangedToast,
            TupleColumn::Text(bytes) => ColumnValue::Text(bytes),
            TupleColumn::Binary(bytes) => ColumnValue::Binary(bytes),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use pgoutput::{
        Begin, Commit, Delete, Insert, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, StreamAbort,
        StreamCommit, StreamStart, Update, Xid,
    };

    fn relation(oid: u32, columns: &[(&str, bool)]) -> PgOutputMessage {
        PgOutputMessage::Relation(Relation {
            xid: None,
            oid: Oid(oid),
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|(name, is_key)| RelationColumn {
                    is_key: *is_key,
                    name: (*name).into(),
                    type_oid: Oid(25),
                    type_modifier: -1,
                })
                .collect(),
        })
    }

    fn text(value: &'static str) -> TupleColumn {
        TupleColumn::Text(Bytes::from_static(value.as_bytes()))
    }

    fn begin() -> PgOutputMessage {
        PgOutputMessage::Begin(Begin { final_lsn: Lsn(100), commit_time: PgTimestamp(1), xid: Xid(7) })
    }

    fn commit() -> PgOutputMessage {
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(120),
            commit_time: PgTimestamp(2),
        })
    }

    #[test]
    fn a_large_ordinary_transaction_is_spilled_and_handed_on_in_pieces() {
        let mut assembler =
            TransactionAssembler::with_spill(SpillSettings { memory_limit: 64 * 1024, directory: None });
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        assembler.push(begin()).unwrap();
        let count = PIECE_MAX_CHANGES * 5 / 2;
        for id in 0..count {
            let id = TupleColumn::Text(Bytes::from(id.to_string()));
            let insert = Insert { xid: None, relation: Oid(1), new_tuple: TupleData { columns: vec![id, text("a")] } };
            assert!(matches!(assembler.push(PgOutputMessage::Insert(insert)).unwrap(), Assembled::Pending));
            assert!(assembler.streamed_in_memory_bytes() <= 64 * 1024, "bounded while it arrives");
        }
        assert!(assembler.streamed_spilled_bytes_total() > 0, "an ordinary transaction spills too");
        let Assembled::CommittedInPieces(header, mut changes) = assembler.push(commit()).unwrap() else {
            panic!("a transaction of {count} changes comes in pieces")
        };
        assert!(assembler.is_idle());
        assert_eq!((header.commit_lsn, header.end_lsn, header.changes.len()), (Lsn(100), Lsn(120), 0));
        let mut ids = Vec::new();
        loop {
            let piece = changes.next_piece(PIECE_MAX_CHANGES, PIECE_MAX_BYTES).unwrap();
            if piece.is_empty() {
                break;
            }
            assert!(piece.len() <= PIECE_MAX_CHANGES);
            for change in piece {
                assert_eq!(change.ordinal as usize, ids.len());
                let ChangeOp::Insert { new } = &change.op else { panic!("inserts only") };
                ids.push(std::str::from_utf8(new[0].as_bytes().unwrap()).unwrap().parse::<usize>().unwrap());
            }
        }
        assert_eq!(ids, (0..count).collect::<Vec<_>>());
    }

    #[test]
    fn assembles_a_transaction_in_order() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        assert!(assembler.is_idle());
        assembler.push(begin()).unwrap();
        assert!(!assembler.is_idle());
        let insert =
            Insert { xid: None, relation: Oid(1), new_tuple: TupleData { columns: vec![text("1"), text("a")] } };
        assembler.push(PgOutputMessage::Insert(insert)).unwrap();
        let update = Update {
            xid: None,
            relation: Oid(1),
            old_tuple: None,
            new_tuple: TupleData { columns: vec![text("1"), TupleColumn::UnchangedToast] },
        };
        assembler.push(PgOutputMessage::Update(update)).unwrap();
        let delete = Delete {
            xid: None,
            relation: Oid(1),
            old_tuple: OldTuple::Key(TupleData { columns: vec![text("1"), TupleColumn::Null] }),
        };
        assembler.push(PgOutputMessage::Delete(delete)).unwrap();
        let Assembled::Committed(transaction) = assembler.push(commit()).unwrap() else {
            panic!("commit must emit the transaction");
        };
        assert!(assembler.is_idle());
        assert_eq!(transaction.end_lsn, Lsn(120));
        assert_eq!(transaction.xid, Xid(7));
        let ops: Vec<_> = transaction.changes.iter().map(|c| (c.ordinal, c.op.label())).collect();
        assert_eq!(ops, vec![(0, "insert"), (1, "update"), (2, "delete")]);
        assert_eq!(
            transaction.changes[1].op,
            ChangeOp::Update {
                old: None,
                new: vec![ColumnValue::Text(Bytes::from_static(b"1")), ColumnValue::UnchangedToast]
            }
        );
    }

    #[test]
    fn under_full_identity_an_unchanged_toast_value_is_taken_from_the_old_row() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true), ("notes", false)])).unwrap();
        assembler.push(begin()).unwrap();
        let update = |old_tuple| Update {
            xid: None,
            relation: Oid(1),
            old_tuple: Some(old_tuple),
            new_tuple: TupleData { columns: vec![text("2"), TupleColumn::UnchangedToast] },
        };
        let old = || TupleData { columns: vec![text("1"), text("long")] };
        assembler.push(PgOutputMessage::Update(update(OldTuple::Full(old())))).unwrap();
        assembler.push(PgOutputMessage::Update(update(OldTuple::Key(old())))).unwrap();
        let Assembled::Committed(transaction) = assembler.push(commit()).unwrap() else {
            panic!("commit must emit the transaction");
        };
        let notes: Vec<_> = transaction
            .changes
            .iter()
            .map(|change| match &change.op {
                ChangeOp::Update { new, .. } => new[1].clone(),
                other => panic!("an update was expected, not {other:?}"),
            })
            .collect();
        let long = ColumnValue::Text(Bytes::from_static(b"long"));
        assert_eq!(notes, [long, ColumnValue::UnchangedToast], "FULL fills it in; a key-only old row cannot");
    }

    #[test]
    fn under_full_identity_the_key_is_the_primary_key_not_every_column() {
        let full = |identity| {
            let mut shape = relation(1, &[("id", true), ("status", true), ("notes", true)]);
            if let PgOutputMessage::Relation(r) = &mut shape {
                r.replica_identity = identity;
            }
            shape
        };
        let keys = |assembler: &TransactionAssembler| -> Vec<String> {
            let table = assembler.relation(Oid(1)).unwrap();
            table.key_positions().map(|p| table.columns[p].name.clone()).collect()
        };
        let mut assembler = TransactionAssembler::new();
        assembler.push(full(ReplicaIdentity::Full)).unwrap();
        assert!(keys(&assembler).is_empty(), "no primary key known: no key column, not every column");
        assembler.register_primary_keys([(TableName::new("public", "t"), vec!["id".to_owned()])]);
        assembler.push(full(ReplicaIdentity::Full)).unwrap();
        assert_eq!(keys(&assembler), ["id"]);
        // DEFAULT and USING INDEX: pgoutput's flags are the key.
        assembler.push(relation(1, &[("id", false), ("status", true), ("notes", false)])).unwrap();
        assert_eq!(keys(&assembler), ["status"]);
    }

    #[test]
    fn a_new_relation_message_replaces_the_shape() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true)])).unwrap();
        assembler.push(relation(1, &[("id", true), ("added", false)])).unwrap();
        assert_eq!(assembler.relation(Oid(1)).unwrap().columns.len(), 2);
    }

    #[test]
    fn protocol_order_errors_are_reported() {
        let mut assembler = TransactionAssembler::new();
        assert!(matches!(assembler.push(commit()), Err(AssembleError::OutsideTransaction { message: "commit" })));
        assembler.push(begin()).unwrap();
        assert!(matches!(assembler.push(begin()), Err(AssembleError::NestedBegin { open: Lsn(100) })));
        let insert = Insert { xid: None, relation: Oid(9), new_tuple: TupleData { columns: vec![] } };
        assert!(matches!(assembler.push(PgOutputMessage::Insert(insert)), Err(AssembleError::UnknownRelation(Oid(9)))));
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        let short = Insert { xid: None, relation: Oid(1), new_tuple: TupleData { columns: vec![text("1")] } };
        assert!(matches!(
            assembler.push(PgOutputMessage::Insert(short)),
            Err(AssembleError::ColumnCountMismatch { expected: 2, found: 1, .. })
        ));
    }

    fn stream_start(xid: u32) -> PgOutputMessage {
        PgOutputMessage::StreamStart(StreamStart { xid: Xid(xid), first_segment: false })
    }

    fn stream_insert(subtransaction: u32, id: &'static str) -> PgOutputMessage {
        PgOutputMessage::Insert(Insert {
            xid: Some(Xid(subtransaction)),
            relation: Oid(1),
            new_tuple: TupleData { columns: vec![text(id), text("v")] },
        })
    }

    fn inserted_ids(transaction: &Transaction) -> Vec<String> {
        transaction
            .changes
            .iter()
            .map(|c| match &c.op {
                ChangeOp::Insert { new } => String::from_utf8(new[0].as_bytes().unwrap().to_vec()).unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn stream_commit(xid: u32, end: u64) -> PgOutputMessage {
        PgOutputMessage::StreamCommit(StreamCommit {
            xid: Xid(xid),
            flags: 0,
            commit_lsn: Lsn(end - 10),
            end_lsn: Lsn(end),
            commit_time: PgTimestamp(3),
        })
    }

    fn stream_abort(xid: u32, subxid: u32) -> PgOutputMessage {
        PgOutputMessage::StreamAbort(StreamAbort {
            xid: Xid(xid),
            subxid: Xid(subxid),
            abort_lsn: None,
            abort_time: None,
        })
    }

    #[test]
    fn streamed_transactions_wait_for_their_commit_and_keep_their_order() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        // Two streamed transactions interleaved, with an ordinary one between blocks.
        for (xid, id) in [(50, "a1"), (60, "b1"), (50, "a2"), (60, "b2")] {
            assembler.push(stream_start(xid)).unwrap();
            assert!(!assembler.is_idle(), "inside a stream block");
            assert!(matches!(assembler.push(stream_insert(xid, id)).unwrap(), Assembled::Pending));
            assembler.push(PgOutputMessage::StreamStop).unwrap();
            assert!(assembler.is_idle(), "between blocks");
        }
        assembler.push(begin()).unwrap();
        assembler
            .push(PgOutputMessage::Insert(Insert {
                xid: None,
                relation: Oid(1),
                new_tuple: TupleData { columns: vec![text("plain"), text("v")] },
            }))
            .unwrap();
        let Assembled::Committed(plain) = assembler.push(commit()).unwrap() else { panic!("ordinary commit") };
        assert_eq!(inserted_ids(&plain), ["plain"]);

        let Assembled::Committed(b) = assembler.push(stream_commit(60, 500)).unwrap() else { panic!("stream commit") };
        assert_eq!((b.xid, b.end_lsn), (Xid(60), Lsn(500)));
        assert_eq!(inserted_ids(&b), ["b1", "b2"]);
        assert_eq!(b.changes.iter().map(|c| c.ordinal).collect::<Vec<_>>(), [0, 1]);
        let Assembled::Committed(a) = assembler.push(stream_commit(50, 600)).unwrap() else { panic!("stream commit") };
        assert_eq!(inserted_ids(&a), ["a1", "a2"]);
        assert_eq!(assembler.streamed_in_memory_bytes(), 0);
    }

    #[test]
    fn stream_aborts_drop_the_subtransaction_or_the_whole_transaction() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        assembler.push(stream_start(70)).unwrap();
        for (sub, id) in [(70, "kept1"), (71, "rolled_back"), (70, "kept2")] {
            assembler.push(stream_insert(sub, id)).unwrap();
        }
        assembler.push(PgOutputMessage::StreamStop).unwrap();
        assembler.push(stream_abort(70, 71)).unwrap();
        let Assembled::Committed(t) = assembler.push(stream_commit(70, 900)).unwrap() else { panic!("commit") };
        assert_eq!(inserted_ids(&t), ["kept1", "kept2"]);

        assembler.push(stream_start(80)).unwrap();
        assembler.push(stream_insert(80, "gone")).unwrap();
        assembler.push(PgOutputMessage::StreamStop).unwrap();
        assembler.push(stream_abort(80, 80)).unwrap();
        let Assembled::Committed(empty) = assembler.push(stream_commit(80, 950)).unwrap() else { panic!("commit") };
        assert!(empty.changes.is_empty(), "an aborted transaction leaves nothing");
    }

    #[test]
    fn a_shape_announced_in_an_aborted_stream_does_not_leak_into_ordinary_transactions() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        assembler.push(stream_start(90)).unwrap();
        let mut altered = relation(1, &[("id", true), ("v", false), ("added", false)]);
        if let PgOutputMessage::Relation(r) = &mut altered {
            r.xid = Some(Xid(90));
        }
        assembler.push(altered).unwrap();
        assembler
            .push(PgOutputMessage::Insert(Insert {
                xid: Some(Xid(90)),
                relation: Oid(1),
                new_tuple: TupleData { columns: vec![text("s"), text("v"), text("x")] },
            }))
            .unwrap();
        assembler.push(PgOutputMessage::StreamStop).unwrap();
        assert_eq!(assembler.relation(Oid(1)).unwrap().columns.len(), 2, "ordinary transactions keep the old shape");
        assembler.push(stream_abort(90, 90)).unwrap();
        assert_eq!(assembler.relation(Oid(1)).unwrap().columns.len(), 2);

        // Had it committed, the new shape would become everyone's.
        assembler.push(stream_start(91)).unwrap();
        assembler.push(relation(1, &[("id", true), ("v", false), ("added", false)])).unwrap();
        assembler.push(PgOutputMessage::StreamStop).unwrap();
        assembler.push(stream_commit(91, 1000)).unwrap();
        assert_eq!(assembler.relation(Oid(1)).unwrap().columns.len(), 3);
    }

    #[test]
    fn nested_stream_blocks_are_protocol_errors() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(stream_start(1)).unwrap();
        assert!(matches!(assembler.push(stream_start(2)), Err(AssembleError::NestedStreamStart { .. })));
        assembler.discard_open();
        assert!(assembler.is_idle());
        assert!(matches!(
            assembler.push(PgOutputMessage::StreamStop),
            Err(AssembleError::OutsideTransaction { message: "stream stop" })
        ));
    }

    #[test]
    fn changes_carry_values_convertible_to_typed_values() {
        use pgoutput::Value;
        let mut assembler = TransactionAssembler::new();
        let mut shape = relation(1, &[("id", true), ("v", false)]);
        if let PgOutputMessage::Relation(r) = &mut shape {
            r.columns[0].type_oid = Oid(20); // int8
            r.columns[1].type_oid = Oid(1700); // numeric
        }
        assembler.push(shape).unwrap();
        assembler.push(begin()).unwrap();
        let insert = Insert {
            xid: None,
            relation: Oid(1),
            new_tuple: TupleData { columns: vec![text("42"), text("12345678901234567890.50")] },
        };
        assembler.push(PgOutputMessage::Insert(insert)).unwrap();
        let Assembled::Committed(transaction) = assembler.push(commit()).unwrap() else { panic!("commit") };
        let change = &transaction.changes[0];
        let ChangeOp::Insert { new } = &change.op else { panic!("insert") };
        let typed = change.table.typed_row(new).unwrap();
        assert_eq!(typed[0], Some(Value::Int8(42)));
        assert_eq!(typed[1].as_ref().map(ToString::to_string).as_deref(), Some("12345678901234567890.50"), "exact");
        assert_eq!(ColumnValue::UnchangedToast.to_value(Oid(25), assembler.types()).unwrap(), None);
    }

    #[test]
    fn shapes_convert_with_the_types_registered_before_their_announcement() {
        use pgoutput::Value;
        let mood = Oid(16_500);
        let shape_with_mood = || {
            let mut shape = relation(1, &[("id", true), ("mood", false)]);
            if let PgOutputMessage::Relation(r) = &mut shape {
                r.columns[1].type_oid = mood;
            }
            shape
        };
        let mut assembler = TransactionAssembler::new();
        assembler.push(shape_with_mood()).unwrap();
        let unknown = Arc::clone(assembler.relation(Oid(1)).unwrap());
        assert!(!assembler.converts(mood));

        assembler.register_types([(mood, TypeKind::Enum), (Oid(20), TypeKind::Enum)]);
        assert!(assembler.converts(mood));
        assembler.push(shape_with_mood()).unwrap();
        let known = Arc::clone(assembler.relation(Oid(1)).unwrap());

        let happy = ColumnValue::Text(Bytes::from_static(b"happy"));
        assert_eq!(
            unknown.typed_value(1, &happy).unwrap(),
            Some(Value::Unknown { type_oid: mood, text: "happy".into() })
        );
        assert_eq!(known.typed_value(1, &happy).unwrap(), Some(Value::Enum { type_oid: mood, label: "happy".into() }));
        // The built-in OID in the same call was refused; int8 still converts as int8.
        let forty_two = ColumnValue::Text(Bytes::from_static(b"42"));
        assert_eq!(known.types.decode_text(Oid(20), b"42").unwrap(), Value::Int8(42));
        assert_eq!(known.typed_value(5, &forty_two).unwrap(), None, "no such column");
    }

    #[test]
    fn a_truncate_becomes_one_change_per_table_in_message_order() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true)])).unwrap();
        assembler.push(relation(2, &[("id", true)])).unwrap();
        assembler.push(begin()).unwrap();
        let truncate = pgoutput::Truncate {
            xid: None,
            options: pgoutput::TruncateOptions { cascade: true, restart_identity: false },
            relations: vec![Oid(2), Oid(1)],
        };
        assembler.push(PgOutputMessage::Truncate(truncate.clone())).unwrap();
        let Assembled::Committed(transaction) = assembler.push(commit()).unwrap() else { panic!("commit") };
        let truncated: Vec<(Oid, &ChangeOp, u32)> =
            transaction.changes.iter().map(|c| (c.table.oid, &c.op, c.ordinal)).collect();
        assert_eq!(truncated, [(Oid(2), &ChangeOp::Truncate, 0), (Oid(1), &ChangeOp::Truncate, 1)]);

        let unknown = pgoutput::Truncate { relations: vec![Oid(9)], ..truncate };
        assembler.push(begin()).unwrap();
        assert!(matches!(
            assembler.push(PgOutputMessage::Truncate(unknown)),
            Err(AssembleError::UnknownRelation(Oid(9)))
        ));
    }
}
