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
//! Filters are exact or refused:
//! - a filter naming a column the table does not publish is a config error
//!   ([`TableMapping::check`], run by `check` and at the start of `run`);
//! - a column the filter reads may hold an unchanged TOAST value in an
//!   update (the server does not send it). Under REPLICA IDENTITY FULL the
//!   old row has it and the filter reads it there; otherwise the config is
//!   refused unless the column can never be TOASTed, and should one arrive
//!   anyway, [`TableMapping::apply`] fails rather than guess;
//! - an expression that fails to evaluate is an error, not "no match"; only
//!   a comparison with SQL NULL does not match (as in SQL's `WHERE`).
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
use pgoutput::ReplicaIdentity;

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
    /// The filter names a column the table does not publish.
    #[error(
        "filter {filter:?} reads column {column}, which table {table} does not publish: fix the name (columns: {known})"
    )]
    UnknownFilterColumn {
        /// The expression.
        filter: String,
        /// The table.
        table: String,
        /// The unknown name.
        column: String,
        /// The columns the table publishes.
        known: String,
    },
    /// The filter reads a column whose value an update may leave out.
    #[error(
        "filter {filter:?} reads column {column} of table {table}, whose value an update that does not change it \
         leaves out (TOAST) unless the table has REPLICA IDENTITY FULL, so the filter could not decide: run \
         ALTER TABLE {table} REPLICA IDENTITY FULL, or take {column} out of the filter, or, if its values are \
         short, ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE PLAIN"
    )]
    ToastedFilterColumn {
        /// The expression.
        filter: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The filter met an unchanged TOAST value it cannot read.
    #[error(
        "filter {filter:?} needs column {column} of table {table}, which this update left out (unchanged TOAST) \
         and the table has no REPLICA IDENTITY FULL to read it from the old row: run ALTER TABLE {table} REPLICA \
         IDENTITY FULL, or take {column} out of the filter"
    )]
    UnchangedToast {
        /// The expression.
        filter: String,
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The filter failed on a row's values (a type mismatch).
    #[error("filter {filter:?} cannot be evaluated on a row of table {table}: {reason}; fix the filter")]
    Evaluation {
        /// The expression.
        filter: String,
        /// The table.
        table: String,
        /// The evaluator's message (names no value).
        reason: String,
    },
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

    /// Config problems of this mapping against a shape of its table (as
    /// the stream announces it): a filter reading a column the table does
    /// not publish, or one whose value an update may leave out
    /// (`toastable`: the columns that can hold out-of-line TOAST values)
    /// on a table without REPLICA IDENTITY FULL.
    pub fn check(&self, table: &TableSchema, toastable: &[String]) -> Vec<MappingError> {
        let (Some(filter), Some(text)) = (&self.filter, &self.config.filter) else { return Vec::new() };
        let mut problems = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for column in filter.iter_read_variable_identifiers() {
            if seen.contains(&column) {
                continue;
            }
            seen.push(column);
            if table.position(column).is_none() {
                problems.push(MappingError::UnknownFilterColumn {
                    filter: text.clone(),
                    table: table.table.to_string(),
                    column: column.to_owned(),
                    known: table.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            } else if table.replica_identity != ReplicaIdentity::Full && toastable.iter().any(|t| t == column) {
                problems.push(MappingError::ToastedFilterColumn {
                    filter: text.clone(),
                    table: table.table.to_string(),
                    column: column.to_owned(),
                });
            }
        }
        problems
    }

    /// The shape the sink sees for `source` (columns kept and renamed).
    pub fn mapped_shape(&self, source: &Arc<TableSchema>) -> Arc<TableSchema> {
        self.shape(source).0
    }

    /// The change as the sink must see it; an error when the filter cannot
    /// decide (see the module docs).
    pub fn apply(&self, change: &Change) -> Result<Mapped, MappingError> {
        // Decide on borrowed rows; copy values once, into the mapped shape.
        let decided = match (&self.filter, &change.op) {
            (_, ChangeOp::Delete { old }) => Decided::Delete(old),
            // A truncate removes filtered-in rows too: all of them go.
            (_, ChangeOp::Truncate) => Decided::Truncate,
            (None, ChangeOp::Insert { new }) => Decided::Insert(new),
            (None, ChangeOp::Update { old, new }) => Decided::Update(old.as_ref(), new),
            (Some(filter), ChangeOp::Insert { new }) => {
                if !self.matches(filter, &change.table, new, None)? {
                    return Ok(Mapped::Filtered);
                }
                Decided::Insert(new)
            }
            (Some(filter), ChangeOp::Update { old, new }) => {
                if self.matches(filter, &change.table, new, old.as_ref())? {
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
        Ok(Mapped::Change(Change { table, op, ordinal: change.ordinal }))
    }

    /// Whether `row` is in the filter; an unchanged TOAST value is read from
    /// `old` (an update's old row, whole under REPLICA IDENTITY FULL).
    fn matches(
        &self,
        filter: &Node<DefaultNumericTypes>,
        table: &TableSchema,
        row: &Row,
        old: Option<&Row>,
    ) -> Result<bool, MappingError> {
        let text = || self.config.filter.clone().unwrap_or_default();
        let mut context = HashMapContext::<DefaultNumericTypes>::new();
        let mut read_null = false;
        for identifier in filter.iter_read_variable_identifiers() {
            let position = table.position(identifier);
            let value = match position.and_then(|i| row.get(i)) {
                Some(ColumnValue::UnchangedToast) => {
                    let stored = old
                        .filter(|_| table.replica_identity == ReplicaIdentity::Full)
                        .and_then(|old| old.get(position?))
                        .filter(|value| !matches!(value, ColumnValue::UnchangedToast));
                    stored.ok_or_else(|| MappingError::UnchangedToast {
                        filter: text(),
                        table: table.table.to_string(),
                        column: identifier.to_owned(),
                    })?
                }
                Some(value) => value,
                // `check` refuses such filters before streaming; a column
                // dropped since is as good as NULL.
                None => &ColumnValue::Null,
            };
            let value = match position.and_then(|i| table.columns.get(i)) {
                Some(column) => filter_value(value, column),
                None => Value::Empty,
            };
            read_null |= matches!(value, Value::Empty);
            // Identifiers are plain names; setting a variable cannot fail for them.
            let _ = context.set_value(identifier.to_owned(), value);
        }
        match filter.eval_boolean_with_context(&context) {
            Ok(matched) => Ok(matched),
            // A comparison with NULL is unknown, which a WHERE clause treats as false.
            Err(_) if read_null => Ok(false),
            Err(err) => Err(MappingError::Evaluation {
                filter: text(),
                table: table.table.to_string(),
                // The variant's name only: the message quotes row values.
                reason: format!("{err:?}").split(['(', '{', ' ']).next().unwrap_or_default().to_owned(),
            }),
        }
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
        let Mapped::Change(mapped) = mapping.apply(&insert(row("1", "new", "5.00"))).unwrap() else {
            panic!("no filter: passes")
        };
        let names: Vec<&str> = mapped.table.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "state", "amount"], "the key stays even when excluded");
        assert_eq!(mapped.op, ChangeOp::Insert { new: vec![text("1"), text("new"), text("5.00")] });
        assert_eq!(mapped.ordinal, 3);
        // The mapped shape is computed once per source shape and shared.
        let Mapped::Change(again) = mapping.apply(&insert(row("2", "x", "1"))).unwrap() else {
            panic!("no filter: passes")
        };
        assert!(Arc::ptr_eq(&again.table, &mapped.table), "one mapped shape per source shape");
    }

    #[test]
    fn only_listed_columns_pass() {
        let mapping = mapping(MappingConfig { columns: Some(vec!["amount".into()]), ..MappingConfig::default() });
        let Mapped::Change(mapped) = mapping.apply(&change(ChangeOp::Delete { old: row("9", "a", "1") })).unwrap()
        else {
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
        assert_eq!(
            mapping.apply(&change(ChangeOp::Insert { new: row("1", "new", "99.99") })).unwrap(),
            Mapped::Filtered
        );
        assert!(matches!(
            mapping.apply(&change(ChangeOp::Insert { new: row("1", "new", "100.00") })).unwrap(),
            Mapped::Change(Change { op: ChangeOp::Insert { .. }, .. })
        ));
        let leaving = change(ChangeOp::Update { old: None, new: row("1", "cancelled", "150") });
        let Mapped::Change(mapped) = mapping.apply(&leaving).unwrap() else { panic!() };
        assert_eq!(mapped.op, ChangeOp::Delete { old: row("1", "cancelled", "150") });
        let staying = change(ChangeOp::Update { old: None, new: row("1", "paid", "150") });
        assert!(matches!(mapping.apply(&staying).unwrap(), Mapped::Change(Change { op: ChangeOp::Update { .. }, .. })));
        let delete =
            change(ChangeOp::Delete { old: vec![text("1"), ColumnValue::Null, ColumnValue::Null, ColumnValue::Null] });
        assert!(matches!(mapping.apply(&delete).unwrap(), Mapped::Change(Change { op: ChangeOp::Delete { .. }, .. })));
    }

    #[test]
    fn null_values_never_match_a_comparison() {
        let mapping = mapping(MappingConfig { filter: Some("amount > 1".into()), ..MappingConfig::default() });
        let new = vec![text("1"), text("x"), ColumnValue::Null, ColumnValue::Null];
        assert_eq!(mapping.apply(&change(ChangeOp::Insert { new })).unwrap(), Mapped::Filtered);
    }

    fn full(table: Arc<TableSchema>) -> Arc<TableSchema> {
        Arc::new(TableSchema { replica_identity: ReplicaIdentity::Full, ..(*table).clone() })
    }

    #[test]
    fn filters_on_unknown_or_toastable_columns_are_config_errors() {
        let mapping = mapping(MappingConfig {
            filter: Some(r#"stauts != "cancelled" && amount >= 100 && secret == "x""#.into()),
            ..MappingConfig::default()
        });
        let toastable = ["secret".to_owned(), "status".to_owned()];
        let problems: Vec<String> = mapping.check(&table(), &toastable).iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("reads column stauts, which table public.reservations does not publish"));
        assert!(problems[1].contains("reads column secret") && problems[1].contains("REPLICA IDENTITY FULL"));
        // Under FULL the old row has every value: only the unknown name remains.
        assert_eq!(mapping.check(&full(table()), &toastable).len(), 1);
    }

    #[test]
    fn an_unchanged_toast_value_is_read_from_the_old_row_under_full_identity() {
        let mapping =
            mapping(MappingConfig { filter: Some(r#"secret == "s3cr3t""#.into()), ..MappingConfig::default() });
        let new = vec![text("1"), text("paid"), text("1"), ColumnValue::UnchangedToast];
        let update = Change {
            table: full(table()),
            op: ChangeOp::Update { old: Some(row("1", "new", "1")), new: new.clone() },
            ordinal: 0,
        };
        assert!(
            matches!(mapping.apply(&update).unwrap(), Mapped::Change(Change { op: ChangeOp::Update { .. }, .. })),
            "the row stays: its unchanged value matches"
        );
        // Without FULL there is no old value to read: an error, never a delete.
        let update = change(ChangeOp::Update { old: None, new });
        assert!(matches!(mapping.apply(&update), Err(MappingError::UnchangedToast { .. })));
    }

    #[test]
    fn an_expression_that_fails_is_an_error_without_the_values() {
        let mapping = mapping(MappingConfig { filter: Some("status > 3".into()), ..MappingConfig::default() });
        let err = mapping.apply(&change(ChangeOp::Insert { new: row("1", "s3cr3t-status", "1") })).unwrap_err();
        assert!(matches!(err, MappingError::Evaluation { .. }), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
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
