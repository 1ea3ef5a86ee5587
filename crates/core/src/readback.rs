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
//! mean equal rows. `verify` first compares [`RowDigest`]s of the two
//! ([`ReadBack::expected_digest`], [`ReadBack::fetch_digests`]), which a
//! sink may compute without building the maps, and compares the maps only
//! for the keys whose digests differ. [`ReadBack::scan_keys`] lists the keys the store holds
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

/// A digest of a row's stored form: the wrapping sum of a 128-bit hash of
/// each (column name, text) pair, so the columns' order does not matter and
/// equal [`StoredColumns`] have equal digests; different ones collide with a
/// chance of about 2⁻¹²⁸. Build it with [`RowDigest::add`] per present
/// column, or [`RowDigest::of`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RowDigest(u128);

impl RowDigest {
    /// Adds a present column: its name and normalised text, as bytes.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        // Length-prefixed name, then the value: no two pairs share an input.
        const STACK: usize = 256;
        let length = u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes();
        let total = length.len() + name.len() + value.len();
        let hash = if total <= STACK {
            let mut input = [0u8; STACK];
            input[..4].copy_from_slice(&length);
            input[4..4 + name.len()].copy_from_slice(name);
            input[4 + name.len()..total].copy_from_slice(value);
            xxhash_rust::xxh3::xxh3_128(&input[..total])
        } else {
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(&length);
            hasher.update(name);
            hasher.update(value);
            hasher.digest128()
        };
        self.0 = self.0.wrapping_add(hash);
    }

    /// The digest of a whole stored row.
    pub fn of(columns: &StoredColumns) -> RowDigest {
        let mut digest = RowDigest::default();
        for (name, value) in columns {
            digest.add(name.as_bytes(), value.as_bytes());
        }
        digest
    }
}

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

    /// The [`RowDigest`] of [`ReadBack::expected`]. Default: computed from
    /// it; a sink may compute it without building the map.
    fn expected_digest(&self, table: &Arc<TableSchema>, row: &Row) -> Result<RowDigest, SinkError> {
        Ok(RowDigest::of(&self.expected(table, row)?))
    }

    /// The [`RowDigest`]s of what [`ReadBack::fetch`] returns, in the same
    /// order. Default: computed from it; a sink may compute them from the
    /// store's replies without building the maps.
    async fn fetch_digests(&self, table: &Arc<TableSchema>, rows: &[Row]) -> Result<Vec<Option<RowDigest>>, SinkError> {
        let stored = self.fetch(table, rows).await?;
        Ok(stored.iter().map(|columns| columns.as_ref().map(RowDigest::of)).collect())
    }

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

/// The key of `row` in one allocation (each key column's bytes after its
/// length), for sets of many keys; equal exactly when [`key_texts`] is.
/// `None` when a key column is NULL or missing.
pub fn key_bytes(table: &TableSchema, row: &Row) -> Option<Box<[u8]>> {
    let mut bytes = Vec::new();
    for position in table.key_positions() {
        let value = row.get(position).and_then(ColumnValue::as_bytes)?;
        bytes.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(value);
    }
    Some(bytes.into_boxed_slice())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, &str)]) -> StoredColumns {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn digests_ignore_column_order_and_tell_names_values_and_columns_apart() {
        let row = columns(&[("id", "1"), ("name", "x"), ("note", &"long ".repeat(100))]);
        let mut reversed = RowDigest::default();
        for (name, value) in row.iter().rev() {
            reversed.add(name.as_bytes(), value.as_bytes());
        }
        assert_eq!(RowDigest::of(&row), reversed, "the order of columns does not matter");
        for other in [
            columns(&[("id", "1"), ("name", "y"), ("note", &"long ".repeat(100))]),
            columns(&[("id", "1"), ("name", "x")]),
            columns(&[("id", "1"), ("nam", "ex"), ("note", &"long ".repeat(100))]),
            columns(&[("id", "1"), ("name", "x"), ("note", &"long ".repeat(99))]),
        ] {
            assert_ne!(RowDigest::of(&row), RowDigest::of(&other), "{other:?}");
        }
    }
}
