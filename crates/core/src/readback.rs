//! Reading back what a sink stored, for `pgfanout verify`.
//!
//! A sink that can be verified implements [`ReadBack`] beside [`Sink`]
//! (and returns itself from [`Sink::read_back`]). Both sides of the
//! comparison go through the sink, so they meet in one form:
//! - [`ReadBack::expected`]: what the sink *would* store for a row of
//!   PostgreSQL (a row of the mapped shape, as the stream delivers it),
//!   built from the same encoding code the apply path uses;
//! - [`ReadBack::fetch`]: what the store holds for those rows' keys.
//!
//! Both give [`StoredColumns`]: column name (as the sink names it) → one
//! normalised text per column, NULL and "not stored" both absent. Equal maps
//! mean equal rows. [`ReadBack::scan_keys`] lists the keys the store holds
//! for a table (to find rows PostgreSQL no longer has), as key rows of the
//! mapped shape: the key columns' PostgreSQL text, NULL elsewhere, which is
//! also what a delete change carries, so an extra row can be removed through
//! [`Sink::apply`].
//!
//! Derived data (graph relationships from foreign keys, running aggregates)
//! is part of [`ReadBack::expected`] and [`ReadBack::fetch`] where the sink
//! keeps it per row. Data derived from groups of one table's rows is a
//! [`Derivation`] of that table ([`ReadBack::derive`]); data derived across
//! tables (graph `[[derived]]` relationships) one of the sink's
//! ([`ReadBack::derive_across`]), compared once every table it is derived
//! from was found equal. A sink that keeps data it cannot read back says so
//! in [`ReadBack::unverifiable`].
//!
//! [`Sink`]: crate::Sink
//! [`Sink::read_back`]: crate::Sink::read_back
//! [`Sink::apply`]: crate::Sink::apply

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{ColumnValue, Row, TableSchema};
use crate::sink::SinkError;

/// A stored row, normalised: column name → comparable text. NULL and a
/// column the store does not hold are both absent.
pub type StoredColumns = BTreeMap<String, String>;

/// One page of the keys a store holds for a table.
#[derive(Debug, Default)]
pub struct KeyPage {
    /// Key rows: the key columns' PostgreSQL text, [`ColumnValue::Null`] elsewhere.
    pub keys: Vec<Row>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<String>,
}

/// How a document a sink derives from a group of rows differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivedDifference {
    /// PostgreSQL's rows make the group; the store has no document for it.
    Missing,
    /// The store has a document for a group no row makes.
    Extra,
    /// Both have it; these fields differ.
    Fields(Vec<String>),
}

/// One derived document that differs: where, which group, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedMismatch {
    /// What holds it (`aggregate host_statistics`).
    pub holder: String,
    /// The group, as `column=value`.
    pub group: String,
    /// How it differs.
    pub difference: DerivedDifference,
}

/// Documents a sink derives from groups of a table's rows (MongoDB's
/// running aggregates), recomputed from PostgreSQL's rows by `verify`; or
/// relationships it derives across tables (graph `[[derived]]` rules),
/// recomputed over the stored rows once those were found equal to
/// PostgreSQL's ([`ReadBack::derive_across`]).
#[async_trait]
pub trait Derivation: Send {
    /// Adds whole rows of the mapped shape (every row of the table, once).
    /// Not called for a [`ReadBack::derive_across`] derivation.
    fn add(&mut self, rows: &[Row]) -> Result<(), SinkError>;

    /// The stored documents against the recomputed ones.
    async fn compare(&mut self) -> Result<Vec<DerivedMismatch>, SinkError>;

    /// Re-writes the documents of `mismatches` as recomputed (deletes the
    /// extra ones), marked with `version` so the stream's later changes
    /// apply on top.
    async fn repair(&mut self, mismatches: &[DerivedMismatch], version: crate::Version) -> Result<(), SinkError>;
}

/// Read access to what a sink stored (see the module docs).
#[async_trait]
pub trait ReadBack: Send + Sync {
    /// Readies reading `table` back (prepares statements, learns the
    /// store's column types) before the first [`ReadBack::expected`] of it;
    /// called once per table and run. Default: nothing to do.
    async fn prepare(&self, table: &Arc<TableSchema>) -> Result<(), SinkError> {
        let _ = table;
        Ok(())
    }

    /// What the sink stores for `row`, a whole row (no unchanged TOAST
    /// value) of the mapped shape `table`.
    fn expected(&self, table: &Arc<TableSchema>, row: &Row) -> Result<StoredColumns, SinkError>;

    /// What the store holds for each of `rows` (whole rows or key rows of
    /// the mapped shape `table`; only their key is read), in the same order;
    /// `None` where it holds nothing.
    async fn fetch(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<StoredColumns>>, SinkError>;

    /// One page of the keys the store holds for `table`, starting at
    /// `cursor` (`None`: the first page). Pages may overlap; a key may come
    /// twice.
    async fn scan_keys(&self, table: &Arc<TableSchema>, cursor: Option<String>) -> Result<KeyPage, SinkError>;

    /// What the sink derives from groups of `table`'s rows, to recompute
    /// (`None`: nothing).
    fn derive(&self, table: &Arc<TableSchema>) -> Option<Box<dyn Derivation + '_>> {
        let _ = table;
        None
    }

    /// What the sink derives across several of its tables (graph
    /// `[[derived]]` relationships) that any of `tables` (mapped shapes of
    /// the tables being verified) feeds, to recompute from the stored rows
    /// once every table of the sink was found equal to PostgreSQL (so the
    /// rows it is recomputed from are PostgreSQL's). `None`: nothing.
    fn derive_across(&self, tables: &[Arc<TableSchema>]) -> Option<Box<dyn Derivation + '_>> {
        let _ = tables;
        None
    }

    /// What of `table` this sink stores but cannot compare, one line each
    /// (shown in `verify`'s report); empty when everything is compared.
    fn unverifiable(&self, table: &TableSchema) -> Vec<String> {
        let _ = table;
        Vec::new()
    }

    /// Whether `verify --repair` may re-write rows of `table` through
    /// [`Sink::apply`](crate::Sink::apply); the reason (with what to do
    /// instead) when it may not. Default: it may.
    fn repairable(&self, table: &TableSchema) -> Result<(), String> {
        let _ = table;
        Ok(())
    }
}

/// The key of `row` as a list of texts (key columns in tuple order), for
/// matching rows of PostgreSQL with rows of a store; `None` when a key
/// column is NULL or missing.
pub fn key_texts(table: &TableSchema, row: &Row) -> Option<Vec<String>> {
    table
        .key_positions()
        .map(|position| {
            row.get(position).and_then(ColumnValue::as_bytes).map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect()
}

/// A key row of `table` (key columns from `key`, NULL elsewhere), the old
/// image of a delete.
pub fn key_row(table: &TableSchema, key: &[String]) -> Row {
    let mut row = vec![ColumnValue::Null; table.columns.len()];
    for (position, text) in table.key_positions().zip(key) {
        row[position] = ColumnValue::Text(bytes::Bytes::from(text.clone()));
    }
    row
}

/// The present values of `row` as text, by column name: the normalised form
/// of a sink that stores PostgreSQL's text as is (Redis).
pub fn text_columns(table: &TableSchema, row: &Row) -> StoredColumns {
    table
        .columns
        .iter()
        .zip(row)
        .filter_map(|(column, value)| {
            value.as_bytes().map(|bytes| (column.name.clone(), String::from_utf8_lossy(bytes).into_owned()))
        })
        .collect()
}
