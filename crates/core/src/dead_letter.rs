//! The record written for a change a store rejected: everything needed to
//! understand and replay it by hand, as one JSON object.
//!
//! Shape (stable; documented for users who consume dead letters):
//! `{"sink", "error", "table", "op", "xid", "commit_lsn", "end_lsn",
//! "commit_time_unix_micros", "ordinal", "old", "new"}` where `old`/`new` map
//! column names to the value's text, `null` for SQL NULL,
//! `{"unchanged_toast": true}` for a TOAST value the server did not send, and
//! `{"binary_hex": "…"}` for binary-format values.

use serde_json::{json, Map, Value};

use crate::model::{ColumnValue, Row, TableSchema};
use crate::sink::ChangeRef;

/// The dead-letter record of `change`, rejected by `sink` with `error`.
pub fn dead_letter_record(sink: &str, change: ChangeRef<'_>, error: &str) -> Value {
    let table = &change.change.table;
    let (old, new) = change.change.op.images();
    json!({
        "sink": sink,
        "error": error,
        "table": table.table.to_string(),
        "op": change.change.op.label(),
        "xid": change.transaction.xid.0,
        "commit_lsn": change.transaction.commit_lsn.to_string(),
        "end_lsn": change.transaction.end_lsn.to_string(),
        "commit_time_unix_micros": change.transaction.commit_time.to_unix_micros(),
        "ordinal": change.change.ordinal,
        "old": old.map(|row| row_json(table, row)),
        "new": new.map(|row| row_json(table, row)),
    })
}

/// A row image as a JSON object, column name → text value, `null` for SQL
/// NULL, `{"unchanged_toast": true}` for a TOAST value the server did not
/// send, `{"binary_hex": "…"}` for binary-format values. The one row format
/// of every JSON pgfanout writes (dead letters, Redis event streams).
pub fn row_json(table: &TableSchema, row: &Row) -> Value {
    let mut object = Map::with_capacity(row.len());
    for (column, value) in table.columns.iter().zip(row) {
        let value = match value {
            ColumnValue::Null => Value::Null,
            ColumnValue::UnchangedToast => json!({ "unchanged_toast": true }),
            ColumnValue::Text(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
            ColumnValue::Binary(bytes) => {
                json!({ "binary_hex": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>() })
            }
        };
        object.insert(column.name.clone(), value);
    }
    Value::Object(object)
}
