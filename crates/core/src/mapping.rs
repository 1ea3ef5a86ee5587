//! Per sink and per table: which columns a sink sees, under which names, and
//! which rows (a filter on column values).
//!
//! A [`TableMapping`] turns a change of the source table into the change the
//! sink receives, or into nothing:
//! - `columns` keeps only the listed columns, `exclude` drops the listed
//!   ones; replica identity (key) columns are always kept, because sinks
//!   identify rows by them;
//! - `rename` gives columns other names in the sink;
//! - `filter` is a boolean expression over column values (source names), as
//!   `status != "cancelled" && amount > 100`. A row is in the sink while the
//!   filter holds. An insert that does not match is dropped; a delete is
//!   always passed on (deleting a row the sink never had is harmless, and the
//!   old image usually holds only the key); an update whose new row no
//!   longer matches becomes a delete of the old key, one whose new row
//!   matches stays an update (it may bring the row into the sink).
//!
//! Values in filters: integer types compare as integers, `float4/8` and
//! `numeric` as 64-bit floats (fine for thresholds, not for exact decimal
//! equality), `bool` as booleans, everything else as text; SQL NULL is
//! `()` and compares unequal to everything.
//!
//! Invariant: the mapped shape of a given source shape is computed once and
//! shared (`Arc`), so a sink can cache per shape by pointer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use evalexpr::{ContextWithMutableVariables, DefaultNumericTypes, HashMapContext, Node, Value};
use pgoutput::Oid;
use serde::Deserialize;

use crate::model::{Change, ChangeOp, ColumnSchema, ColumnValue, Row, TableSchema};

/// Mapping settings of one `[[sink.table]]`, as written in the config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Only these columns reach the sink (key columns always do).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// These columns never reach the sink (key columns always do).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Source column name → name in the sink.
    #[serde(default)]
    pub rename: HashMap<String, String>,
    /// Boolean expression over column values; rows that fail it stay out.
    #[serde(default)]
    pub filter: Option<String>,
}

/// A mapping that is not valid.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// The filter does not parse.
    #[error(
        "filter {filter:?} does not parse: {reason}; write it like 'status != \"cancelled\" && amount >= 100' \
     (double-quoted strings, == != < <= > >=, && || !)"
    )]
    Filter {
        /// The expression.
        filter: String,
        /// The parser's message.
        reason: String,
    },
    /// `columns` and `exclude` were both given.
    #[error("give either columns or exclude, not both")]
    ColumnsAndExclude,
    /// Two columns would have the same name in the sink.
    #[error("two columns would be named {0:?} in the sink; fix rename")]
    DuplicateName(String),
}

/// A change as a sink receives it after mapping.
#[derive(Debug, PartialEq, Eq)]
pub enum Mapped {
    /// The change, mapped (possibly turned from an update into a delete).
    Change(Change),
    /// The row is outside the sink's filter: nothing to do.
    Filtered,
}

/// A validated mapping for one table of one sink.
#[derive(Debug)]
pub struct TableMapping {
    config: MappingConfig,
    filter: Option<Node<DefaultNumericTypes>>,
    /// Mapped shapes, one per source shape seen.
    shapes: Mutex<Vec<MappedShape>>,
}

/// A source shape, its mapped shape and the source positions kept.
#[derive(Debug)]
struct MappedShape {
    source: Arc<TableSchema>,
    mapped: Arc<TableSchema>,
    positions: Arc<[usize]>,
}

impl TableMapping {
    /// Validates `config`; `None` settings mean "pass everything as is".
    pub fn new(config: MappingConfig) -> Result<Self, MappingError> {
        if config.columns.is_some() && !config.exclude.is_empty() {
            return Err(MappingError::ColumnsAndExclude);
        }
        let filter = config
            .filter
            .as_deref()
            .map(|text| {
                evalexpr::build_operator_tree::<DefaultNumericTypes>(text)
                    .map_err(|err| MappingError::Filter { filter: text.to_owned(), reason: err.to_string() })
            })
            .transpose()?;
        let mut targets: Vec<&String> = config.rename.values().collect();
        targets.sort();
        if let Some(pair) = targets.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MappingError::DuplicateName(pair[0].clone()));
        }
        Ok(TableMapping { config, filter, shapes: Mutex::new(Vec::new()) })
    }

    /// The identity mapping.
    pub fn identity() -> Self {
        TableMapping { config: MappingConfig::default(), filter: None, shapes: Mutex::new(Vec::new()) }
    }

    /// Whether this mapping changes nothing (the change can be shared as is).
    pub fn is_identity(&self) -> bool {
        self.config == MappingConfig::default()
    }

    /// The change as the sink must see it.
    pub fn apply(&self, change: &Change) -> Mapped {
        // Decide on borrowed rows; copy values once, into the mapped shape.
        let decided = match (&self.filter, &change.op) {
            (_, ChangeOp::Delete { old }) => Decided::Delete(old),
            // A truncate removes filtered-in rows too: all of them go.
            (_, ChangeOp::Truncate) => Decided::Truncate,
            (None, ChangeOp::Insert { new }) => Decided::Insert(new),
            (None, ChangeOp::Update { old, new }) => Decided::Update(old.as_ref(), new),
            (Some(filter), ChangeOp::Insert { new }) => {
                if !self.matches(filter, &change.table, new) {
                    return Mapped::Filtered;
                }
                Decided::Insert(new)
            }
            (Some(filter), ChangeOp::Update { old, new }) => {
                if self.matches(filter, &change.table, new) {
                    Decided::Update(old.as_ref(), new)
                } else {
                    // Out of the filter now: remove it (by its old key if it moved).
                    Decided::Delete(old.as_ref().unwrap_or(new))
                }
            }
        };
        let (table, positions) = self.shape(&change.table);
        let pick = |row: &Row| -> Row {
            positions.iter().map(|&i| row.get(i).cloned().unwrap_or(ColumnValue::Null)).collect()
        };
        let op = match decided {
            Decided::Insert(new) => ChangeOp::Insert { new: pick(new) },
            Decided::Update(old, new) => ChangeOp::Update { old: old.map(pick), new: pick(new) },
            Decided::Delete(old) => ChangeOp::Delete { old: pick(old) },
            Decided::Truncate => ChangeOp::Truncate,
        };
        Mapped::Change(Change { table, op, ordinal: change.ordinal })
    }

    fn matches(&self, filter: &Node<DefaultNumericTypes>, table: &TableSchema, row: &Row) -> bool {
        let mut context = HashMapContext::<DefaultNumericTypes>::new();
        for identifier in filter.iter_read_variable_identifiers() {
            let value = table
                .position(identifier)
                .and_then(|i| Some(filter_value(row.get(i)?, table.columns.get(i)?)))
                .unwrap_or(Value::Empty);
            // Identifiers are plain names; setting a variable cannot fail for them.
            let _ = context.set_value(identifier.to_owned(), value);
        }
        // An expression that fails on these values (a type mismatch) does not match.
        filter.eval_boolean_with_context(&context).unwrap_or(false)
    }

    /// The mapped shape of `source` and the source positions it keeps.
    fn shape(&self, source: &Arc<TableSchema>) -> (Arc<TableSchema>, Arc<[usize]>) {
        let mut shapes = self.shapes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(shape) = shapes.iter().find(|shape| Arc::ptr_eq(&shape.source, source)) {
            return (Arc::clone(&shape.mapped), Arc::clone(&shape.positions));
        }
        let keep = |column: &ColumnSchema| {
            column.is_key
                || match &self.config.columns {
                    Some(columns) => columns.contains(&column.name),
                    None => !self.config.exclude.contains(&column.name),
                }
        };
        let positions: Arc<[usize]> =
            source.columns.iter().enumerate().filter(|(_, c)| keep(c)).map(|(i, _)| i).collect();
        let columns = positions
            .iter()
            .map(|&i| {
                let column = &source.columns[i];
                let name = self.config.rename.get(&column.name).cloned().unwrap_or_else(|| column.name.clone());
                ColumnSchema { name, ..column.clone() }
            })
            .collect();
        let mapped = Arc::new(TableSchema { columns, ..(**source).clone() });
        // Old shapes of the table are dropped once a new one arrives (a few at most).
        shapes.retain(|shape| shape.source.table != source.table);
        shapes.push(MappedShape {
            source: Arc::clone(source),
            mapped: Arc::clone(&mapped),
            positions: Arc::clone(&positions),
        });
        (mapped, positions)
    }
}

/// What a change becomes for the sink, on borrowed source rows.
enum Decided<'a> {
    Insert(&'a Row),
    Update(Option<&'a Row>, &'a Row),
    Delete(&'a Row),
    Truncate,
}

/// A column value as the filter sees it.
fn filter_value(value: &ColumnValue, column: &ColumnSchema) -> Value<DefaultNumericTypes> {
    const INT2: Oid = Oid(21);
    const INT4: Oid = Oid(23);
    const INT8: Oid = Oid(20);
    const OID: Oid = Oid(26);
    const FLOAT4: Oid = Oid(700);
    const FLOAT8: Oid = Oid(701);
    const NUMERIC: Oid = Oid(1700);
    const BOOL: Oid = Oid(16);
    let ColumnValue::Text(bytes) = value else { return Value::Empty };
    let Ok(text) = std::str::from_utf8(bytes) else { return Value::Empty };
    match Some(column.type_oid) {
        Some(INT2 | INT4 | INT8 | OID) => text.parse::<i64>().map(Value::from_int).unwrap_or(Value::Empty),
        Some(FLOAT4 | FLOAT8 | NUMERIC) => text.parse::<f64>().map(Value::from_float).unwrap_or(Value::Empty),
        Some(BOOL) => Value::Boolean(text == "t"),
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TableName;
    use bytes::Bytes;
    use pgoutput::ReplicaIdentity;

    fn table() -> Arc<TableSchema> {
        let column = |name: &str, type_oid: u32, is_key: bool| ColumnSchema {
            name: name.into(),
            type_oid: Oid(type_oid),
            is_key,
        };
        Arc::new(TableSchema {
            types: Default::default(),
            oid: Oid(1),
            table: TableName::new("public", "reservations"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", 20, true),
                column("status", 25, false),
                column("amount", 1700, false),
                column("secret", 25, false),
            ],
        })
    }

    fn text(value: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::from(value.to_owned()))
    }

    fn row(id: &str, status: &str, amount: &str) -> Row {
        vec![text(id), text(status), text(amount), text("s3cr3t")]
    }

    fn change(op: ChangeOp) -> Change {
        Change { table: table(), op, ordinal: 3 }
    }

    fn mapping(config: MappingConfig) -> TableMapping {
        TableMapping::new(config).unwrap()
    }

    #[test]
    fn columns_are_excluded_renamed_and_keys_kept() {
        let mapping = mapping(MappingConfig {
            exclude: vec!["secret".into(), "id".into()],
            rename: HashMap::from([("status".into(), "state".into())]),
            ..MappingConfig::default()
        });
        let source = table();
        let insert = |new: Row| Change { table: Arc::clone(&source), op: ChangeOp::Insert { new }, ordinal: 3 };
        let Mapped::Change(mapped) = mapping.apply(&insert(row("1", "new", "5.00"))) else {
            panic!("no filter: passes")
        };
        let names: Vec<&str> = mapped.table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "state", "amount"], "the key stays even when excluded");
        assert_eq!(mapped.op, ChangeOp::Insert { new: vec![text("1"), text("new"), text("5.00")] });
        assert_eq!(mapped.ordinal, 3);
        // The mapped shape is computed once per source shape and shared.
        let Mapped::Change(again) = mapping.apply(&insert(row("2", "x", "1"))) else { panic!("no filter: passes") };
        assert!(Arc::ptr_eq(&again.table, &mapped.table), "one mapped shape per source shape");
    }

    #[test]
    fn only_listed_columns_pass() {
        let mapping = mapping(MappingConfig { columns: Some(vec!["amount".into()]), ..MappingConfig::default() });
        let Mapped::Change(mapped) = mapping.apply(&change(ChangeOp::Delete { old: row("9", "a", "1") })) else {
            panic!()
        };
        assert_eq!(mapped.op, ChangeOp::Delete { old: vec![text("9"), text("1")] });
    }

    #[test]
    fn filters_drop_inserts_and_turn_leaving_updates_into_deletes() {
        let mapping = mapping(MappingConfig {
            filter: Some(r#"status != "cancelled" && amount >= 100"#.into()),
            ..MappingConfig::default()
        });
        assert_eq!(mapping.apply(&change(ChangeOp::Insert { new: row("1", "new", "99.99") })), Mapped::Filtered);
        assert!(matches!(
            mapping.apply(&change(ChangeOp::Insert { new: row("1", "new", "100.00") })),
            Mapped::Change(Change { op: ChangeOp::Insert { .. }, .. })
        ));
        let leaving = change(ChangeOp::Update { old: None, new: row("1", "cancelled", "150") });
        let Mapped::Change(mapped) = mapping.apply(&leaving) else { panic!() };
        assert_eq!(mapped.op, ChangeOp::Delete { old: row("1", "cancelled", "150") });
        let staying = change(ChangeOp::Update { old: None, new: row("1", "paid", "150") });
        assert!(matches!(mapping.apply(&staying), Mapped::Change(Change { op: ChangeOp::Update { .. }, .. })));
        let delete =
            change(ChangeOp::Delete { old: vec![text("1"), ColumnValue::Null, ColumnValue::Null, ColumnValue::Null] });
        assert!(matches!(mapping.apply(&delete), Mapped::Change(Change { op: ChangeOp::Delete { .. }, .. })));
    }

    #[test]
    fn null_values_never_match_a_comparison() {
        let mapping = mapping(MappingConfig { filter: Some("amount > 1".into()), ..MappingConfig::default() });
        let new = vec![text("1"), text("x"), ColumnValue::Null, ColumnValue::Null];
        assert_eq!(mapping.apply(&change(ChangeOp::Insert { new })), Mapped::Filtered);
    }

    #[test]
    fn invalid_mappings_are_refused_with_a_reason() {
        let bad_filter =
            TableMapping::new(MappingConfig { filter: Some("(status == \"x\"".into()), ..MappingConfig::default() });
        assert!(bad_filter.unwrap_err().to_string().contains("does not parse"));
        let both = TableMapping::new(MappingConfig {
            columns: Some(vec!["a".into()]),
            exclude: vec!["b".into()],
            ..MappingConfig::default()
        });
        assert!(matches!(both, Err(MappingError::ColumnsAndExclude)));
        let clash = TableMapping::new(MappingConfig {
            rename: HashMap::from([("a".into(), "x".into()), ("b".into(), "x".into())]),
            ..MappingConfig::default()
        });
        assert!(matches!(clash, Err(MappingError::DuplicateName(name)) if name == "x"));
    }
}
