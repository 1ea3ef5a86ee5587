//! The change model every sink consumes: transactions of row changes with
//! their relation's shape attached.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use pgoutput::{Lsn, Oid, PgTimestamp, ReplicaIdentity, TypeRegistry, Value, ValueError, Xid};

/// Schema-qualified table name, displayed as `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    /// Namespace (`public`, …).
    pub schema: String,
    /// Relation name.
    pub name: String,
}

impl TableName {
    /// Builds a name from its two parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName { schema: schema.into(), name: name.into() }
    }

    /// Parses `schema.table`, or `table` meaning `public.table`.
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((schema, name)) => TableName::new(schema, name),
            None => TableName::new("public", text),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One column of a relation as announced by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSchema {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: Oid,
    /// Whether the column is part of the row's key, the one sinks key rows
    /// by by default: the table's primary key. Under REPLICA IDENTITY DEFAULT
    /// that is what pgoutput flags; under USING INDEX it is the index's
    /// columns (the only ones an old key carries); under FULL (pgoutput flags
    /// every column) and NOTHING (none) the primary key from the catalog
    /// (see [`crate::TransactionAssembler::register_primary_keys`]), so that
    /// switching a table to FULL does not re-key any sink. A table without a
    /// primary key then has no key column, and a sink needs its key columns
    /// named in its config.
    pub is_key: bool,
}

/// The shape of a table at some point of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Relation OID, the key DML messages refer to.
    pub oid: Oid,
    /// Qualified name.
    pub table: TableName,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Published columns, in tuple order.
    pub columns: Vec<ColumnSchema>,
    /// How the columns' types convert to typed values: the stream's type
    /// registry as it was when the server announced this shape. PostgreSQL
    /// sends a type's Type message before the first Relation message that
    /// uses it, so the snapshot knows every column's type that can be known.
    pub types: Arc<TypeRegistry>,
}

impl TableSchema {
    /// A row's typed values, column by column (see [`ColumnValue::to_value`]).
    pub fn typed_row(&self, row: &Row) -> Result<Vec<Option<Value>>, ValueError> {
        self.columns.iter().zip(row).map(|(column, value)| value.to_value(column.type_oid, &self.types)).collect()
    }

    /// The typed value of the column at `position` holding `value`; `None`
    /// for an unchanged TOAST value or a position past the last column.
    pub fn typed_value(&self, position: usize, value: &ColumnValue) -> Result<Option<Value>, ValueError> {
        match self.columns.get(position) {
            Some(column) => value.to_value(column.type_oid, &self.types),
            None => Ok(None),
        }
    }

    /// Positions of the key columns, in tuple order.
    pub fn key_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns.iter().enumerate().filter(|(_, c)| c.is_key).map(|(i, _)| i)
    }

    /// Position of a column by name.
    pub fn position(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == column)
    }
}

/// One column's value in a row image, as the server sent it; the typed
/// [`Value`] is one call away ([`ColumnValue::to_value`]), so sinks that
/// write text (Redis) pay no conversion and sinks that need types do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change; the server did not send it
    /// and a sink must keep what it stored.
    UnchangedToast,
    /// Text-format value (the type's output function, UTF-8).
    Text(Bytes),
    /// Binary-format value (the type's send function).
    Binary(Bytes),
}

impl ColumnValue {
    /// The typed value of a column of type `type_oid`: `None` for an
    /// unchanged TOAST value (not sent), `Some(Value::Null)` for SQL NULL.
    /// Types `types` does not know pass through as text, never dropped.
    pub fn to_value(&self, type_oid: Oid, types: &TypeRegistry) -> Result<Option<Value>, ValueError> {
        match self {
            ColumnValue::Null => Ok(Some(Value::Null)),
            ColumnValue::UnchangedToast => Ok(None),
            ColumnValue::Text(bytes) => types.decode_text(type_oid, bytes).map(Some),
            ColumnValue::Binary(bytes) => types.decode_binary(type_oid, bytes).map(Some),
        }
    }

    /// The raw bytes of a present value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }
}

/// A row image: one value per column of its [`TableSchema`], in order.
pub type Row = Vec<ColumnValue>;

/// What happened to a row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ChangeOp {
    /// A new row.
    Insert {
        /// The inserted row.
        new: Row,
    },
    /// A changed row.
    Update {
        /// The old key (identity DEFAULT/INDEX, only when the key changed) or
        /// the whole old row (identity FULL).
        old: Option<Row>,
        /// The new row; may hold [`ColumnValue::UnchangedToast`].
        new: Row,
    },
    /// A removed row.
    Delete {
        /// The old key, or the whole old row under identity FULL.
        old: Row,
    },
    /// Every row of the table removed (`TRUNCATE`). A statement truncating
    /// several tables (or cascading to them) gives one change per table,
    /// in the order the server listed them.
    Truncate,
}

impl ChangeOp {
    /// The old and the new row image, where the change has them.
    pub fn images(&self) -> (Option<&Row>, Option<&Row>) {
        match self {
            ChangeOp::Insert { new } => (None, Some(new)),
            ChangeOp::Update { old, new } => (old.as_ref(), Some(new)),
            ChangeOp::Delete { old } => (Some(old), None),
            ChangeOp::Truncate => (None, None),
        }
    }

    /// `insert`, `update`, `delete` or `truncate`, for logs and metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            ChangeOp::Insert { .. } => "insert",
            ChangeOp::Update { .. } => "update",
            ChangeOp::Delete { .. } => "delete",
            ChangeOp::Truncate => "truncate",
        }
    }
}

/// One row change inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The table's shape when the change was made.
    pub table: Arc<TableSchema>,
    /// The change itself.
    pub op: ChangeOp,
    /// Position in the transaction, from 0; with the commit LSN it orders
    /// every change of the stream.
    pub ordinal: u32,
}

impl Change {
    /// Approximate bytes the change occupies in memory, for memory bounds.
    pub fn approximate_size(&self) -> usize {
        const PER_CHANGE: usize = 96;
        const PER_VALUE: usize = 24;
        let row_size = |row: &Row| row.iter().map(|v| PER_VALUE + v.as_bytes().map_or(0, <[u8]>::len)).sum::<usize>();
        PER_CHANGE
            + match &self.op {
                ChangeOp::Insert { new } => row_size(new),
                ChangeOp::Update { old, new } => old.as_ref().map_or(0, row_size) + row_size(new),
                ChangeOp::Delete { old } => row_size(old),
                ChangeOp::Truncate => 0,
            }
    }

    /// The row image that identifies the row before the change (old key or
    /// old row if sent, else the new row); `None` for a truncate, which
    /// touches no single row.
    pub fn identity_row(&self) -> Option<&Row> {
        match &self.op {
            ChangeOp::Insert { new } => Some(new),
            ChangeOp::Update { old: Some(old), .. } => Some(old),
            ChangeOp::Update { old: None, new } => Some(new),
            ChangeOp::Delete { old } => Some(old),
            ChangeOp::Truncate => None,
        }
    }
}

/// What [`Transaction::approximate_size`] counts for a transaction besides its changes.
pub const TRANSACTION_OVERHEAD_BYTES: usize = 64;

impl Transaction {
    /// Approximate bytes the transaction's changes occupy in memory.
    pub fn approximate_size(&self) -> usize {
        self.changes.iter().map(Change::approximate_size).sum::<usize>() + TRANSACTION_OVERHEAD_BYTES
    }
}

/// A committed transaction with the changes of published tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id on the source.
    pub xid: Xid,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once applied.
    pub end_lsn: Lsn,
    /// Commit time on the source.
    pub commit_time: PgTimestamp,
    /// Changes in commit order.
    pub changes: Vec<Change>,
}

/// Changes counted per (table, op), for metrics: one label lookup per group
/// instead of one per change. Consecutive runs are merged; order is kept.
pub fn count_by_table_and_op<'a>(
    changes: impl Iterator<Item = &'a Change>,
) -> Vec<((&'a TableName, &'static str), u64)> {
    let mut counts: Vec<((&TableName, &'static str), u64)> = Vec::new();
    // Changes come in runs of one shape and operation: a change like the
    // previous one adds to the same count without a search.
    let mut run: Option<(&TableSchema, &'static str, usize)> = None;
    for change in changes {
        let label = change.op.label();
        if let Some((shape, op, at)) = run {
            if std::ptr::eq(shape, &*change.table) && std::ptr::eq(op, label) {
                counts[at].1 += 1;
                continue;
            }
        }
        let key = (&change.table.table, label);
        // The same shape is the same table: comparing addresses spares
        // comparing names for nearly every change.
        // Labels are the same static strings: their addresses differ only between ops.
        let same = |known: &(&TableName, &'static str)| {
            std::ptr::eq(known.1, key.1) && (std::ptr::eq(known.0, key.0) || known.0 == key.0)
        };
        let at = match counts.iter().position(|(known, _)| same(known)) {
            Some(at) => {
                counts[at].1 += 1;
                at
            }
            None => {
                counts.push((key, 1));
                counts.len() - 1
            }
        };
        run = Some((&*change.table, label, at));
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_runs_and_keep_first_appearance_order() {
        let shape = |name: &str| {
            Arc::new(TableSchema {
                oid: Oid(1),
                table: TableName::new("public", name),
                replica_identity: pgoutput::ReplicaIdentity::Default,
                columns: Vec::new(),
                types: Arc::new(TypeRegistry::new()),
            })
        };
        let (a, b, a_again) = (shape("a"), shape("b"), shape("a"));
        let change = |table: &Arc<TableSchema>, op: ChangeOp| Change { table: table.clone(), op, ordinal: 0 };
        let insert = || ChangeOp::Insert { new: Vec::new() };
        let changes = [
            change(&a, insert()),
            change(&a, insert()),
            change(&b, insert()),
            change(&a, ChangeOp::Delete { old: Vec::new() }),
            change(&a_again, insert()),
            change(&b, insert()),
        ];
        let counts: Vec<(String, &str, u64)> = count_by_table_and_op(changes.iter())
            .into_iter()
            .map(|((table, op), count)| (table.to_string(), op, count))
            .collect();
        let expected = [("public.a", "insert", 3), ("public.b", "insert", 2), ("public.a", "delete", 1)];
        assert_eq!(counts, expected.map(|(table, op, count)| (table.to_owned(), op, count)));
    }
}
