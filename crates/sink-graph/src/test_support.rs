//! Shapes and rows for this crate's unit tests.

use std::sync::Arc;

use bytes::Bytes;
use pgfanout_core::{ColumnSchema, ColumnValue, Row, TableName, TableSchema};
use pgoutput::{Oid, ReplicaIdentity};

/// `public.<name>` with `columns`, the first the key: `text_column` is text,
/// every other column int8.
pub(crate) fn table(name: &str, columns: &[&str], text_column: &str) -> Arc<TableSchema> {
    Arc::new(TableSchema {
        oid: Oid(1),
        table: TableName::new("public", name),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, column)| ColumnSchema {
                name: (*column).into(),
                type_oid: Oid(if *column == text_column { 25 } else { 20 }),
                is_key: i == 0,
            })
            .collect(),
        types: Default::default(),
    })
}

/// A row of text values; `None` is NULL and `"<toast>"` an unchanged TOAST value.
pub(crate) fn row(values: &[Option<&str>]) -> Row {
    values
        .iter()
        .map(|value| match value {
            Some("<toast>") => ColumnValue::UnchangedToast,
            Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            None => ColumnValue::Null,
        })
        .collect()
}
