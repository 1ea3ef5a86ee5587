//! Turns the flat sequence of pgoutput messages into whole [`Transaction`]s,
//! keeping the relation cache current.
//!
//! Invariant: a transaction is emitted only at its Commit, with every change
//! between its Begin and Commit in order; a Relation message replaces the
//! cached shape of its table at once, so a new column is picked up without
//! restart.

use std::collections::HashMap;
use std::sync::Arc;

use pgoutput::{Lsn, Oid, OldTuple, PgOutputMessage, TupleColumn, TupleData};

use crate::model::{Change, ChangeOp, ColumnSchema, ColumnValue, Row, TableName, TableSchema, Transaction};

/// Errors in the order or content of the message stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled {
    /// Nothing to hand on yet.
    Pending,
    /// A transaction committed.
    Committed(Transaction),
}

/// Relation cache plus the transaction being assembled.
#[derive(Debug, Default)]
pub struct TransactionAssembler {
    relations: HashMap<Oid, Arc<TableSchema>>,
    open: Option<Transaction>,
}

impl TransactionAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no transaction is open: everything received so far has been
    /// handed on.
    pub fn is_idle(&self) -> bool {
        self.open.is_none()
    }

    /// Drops the open transaction, if any (its connection was lost).
    pub fn discard_open(&mut self) {
        self.open = None;
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
                Ok(Assembled::Pending)
            }
            PgOutputMessage::Commit(commit) => {
                let mut transaction =
                    self.open.take().ok_or(AssembleError::OutsideTransaction { message: "commit" })?;
                transaction.commit_lsn = commit.commit_lsn;
                transaction.end_lsn = commit.end_lsn;
                transaction.commit_time = commit.commit_time;
                Ok(Assembled::Committed(transaction))
            }
            PgOutputMessage::Relation(relation) => {
                let schema = TableSchema {
                    oid: relation.oid,
                    table: TableName::new(relation.namespace, relation.name),
                    replica_identity: relation.replica_identity,
                    columns: relation
                        .columns
                        .into_iter()
                        .map(|c| ColumnSchema { name: c.name, type_oid: c.type_oid, is_key: c.is_key })
                        .collect(),
                };
                self.relations.insert(schema.oid, Arc::new(schema));
                Ok(Assembled::Pending)
            }
            PgOutputMessage::Insert(insert) => {
                let table = self.table(insert.relation)?;
                let new = to_row(&table, insert.new_tuple)?;
                self.add_change(table, ChangeOp::Insert { new }, "insert")
            }
            PgOutputMessage::Update(update) => {
                let table = self.table(update.relation)?;
                let old = update.old_tuple.map(|old| to_row(&table, old_tuple_data(old))).transpose()?;
                let new = to_row(&table, update.new_tuple)?;
                self.add_change(table, ChangeOp::Update { old, new }, "update")
            }
            PgOutputMessage::Delete(delete) => {
                let table = self.table(delete.relation)?;
                let old = to_row(&table, old_tuple_data(delete.old_tuple))?;
                self.add_change(table, ChangeOp::Delete { old }, "delete")
            }
            // Type and Origin carry nothing the sinks use yet; logical
            // messages, truncate, streaming and two-phase are not requested
            // by this client (proto v1, publication without truncate).
            _ => Ok(Assembled::Pending),
        }
    }

    fn table(&self, oid: Oid) -> Result<Arc<TableSchema>, AssembleError> {
        self.relations.get(&oid).cloned().ok_or(AssembleError::UnknownRelation(oid))
    }

    fn add_change(
        &mut self,
        table: Arc<TableSchema>,
        op: ChangeOp,
        message: &'static str,
    ) -> Result<Assembled, AssembleError> {
        let open = self.open.as_mut().ok_or(AssembleError::OutsideTransaction { message })?;
        let ordinal = open.changes.len() as u32;
        open.changes.push(Change { table, op, ordinal });
        Ok(Assembled::Pending)
    }
}

fn old_tuple_data(old: OldTuple) -> TupleData {
    match old {
        OldTuple::Key(data) | OldTuple::Full(data) => data,
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
        Begin, Commit, Delete, Insert, PgTimestamp, Relation, RelationColumn, ReplicaIdentity, Update, Xid,
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
    fn a_new_relation_message_replaces_the_shape() {
        let mut assembler = TransactionAssembler::new();
        assembler.push(relation(1, &[("id", true)])).unwrap();
        assembler.push(relation(1, &[("id", true), ("added", false)])).unwrap();
        assert_eq!(assembler.relation(Oid(1)).unwrap().columns.len(), 2);
    }

    #[test]
    fn protocol_order_errors_are_reported() {
        let mut assembler = TransactionAssembler::new();
        assert_eq!(assembler.push(commit()), Err(AssembleError::OutsideTransaction { message: "commit" }));
        assembler.push(begin()).unwrap();
        assert_eq!(assembler.push(begin()), Err(AssembleError::NestedBegin { open: Lsn(100) }));
        let insert = Insert { xid: None, relation: Oid(9), new_tuple: TupleData { columns: vec![] } };
        assert_eq!(assembler.push(PgOutputMessage::Insert(insert)), Err(AssembleError::UnknownRelation(Oid(9))));
        assembler.push(relation(1, &[("id", true), ("v", false)])).unwrap();
        let short = Insert { xid: None, relation: Oid(1), new_tuple: TupleData { columns: vec![text("1")] } };
        assert!(matches!(
            assembler.push(PgOutputMessage::Insert(short)),
            Err(AssembleError::ColumnCountMismatch { expected: 2, found: 1, .. })
        ));
    }
}
