//! PostgreSQL's side of `verify`: table shapes and chunked, key-ordered
//! reads (the snapshot crate's [`TableReader`]), rows by key, WAL
//! positions; over a replication-mode connection with the stream's session
//! settings, so every value's text is the text the stream carries.
//!
//! Each read is one short statement or transaction, never a long one.
//! Keys travel as PostgreSQL's text of each key column (in tuple order
//! here; the [`TableReader`]'s resume keys are in key-index order) and are
//! compared by the server as literals of the column's type.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use pg_replication::{QueryResult, ReplicationConnection};
use pgfanout_core::{ColumnValue, Lsn, Row, TableName, TableSchema};
use pgfanout_snapshot::{Chunk, ChunkLimits, SnapshotTable, TableReader};
use pgoutput::value::TypeKind;
use pgoutput::{Oid, TypeRegistry};
use postgres_protocol::escape::{escape_identifier, escape_literal};

/// Rows read from PostgreSQL (and fetched from the store) at a time.
const CHUNK_ROWS: usize = 2000;

/// A table's key: the key columns' text, in tuple order.
pub type Key = Vec<String>;

/// Reads tables of the source database.
pub struct SourceReader {
    connection: ReplicationConnection,
    types: Arc<TypeRegistry>,
}

impl SourceReader {
    /// A reader over `connection`, converting user types as `user_types` say.
    pub fn new(connection: ReplicationConnection, user_types: Vec<(Oid, TypeKind)>) -> Self {
        let mut types = TypeRegistry::new();
        for (oid, kind) in user_types {
            // A type the registry refuses stays text, as in the stream.
            let _ = types.register(oid, kind);
        }
        SourceReader { connection, types: Arc::new(types) }
    }

    async fn query(&mut self, sql: &str, what: &str) -> anyhow::Result<QueryResult> {
        self.connection.simple_query(sql).await.with_context(|| what.to_owned())
    }

    /// The table's shape as the stream gives it under `publication`, and
    /// a chunked, key-ordered reader of it (the snapshot's).
    pub async fn table(&mut self, table: &TableName, publication: &str) -> anyhow::Result<TableReader> {
        let described =
            SnapshotTable::describe(&mut self.connection, table, Some(publication), Arc::clone(&self.types)).await?;
        Ok(TableReader::new(described, ChunkLimits { rows: CHUNK_ROWS, ..ChunkLimits::default() }))
    }

    /// The chunk of `reader`'s table after `after` (a key in the reader's
    /// key order; from the start for `None`).
    pub async fn read_chunk(&mut self, reader: &TableReader, after: Option<&[String]>) -> anyhow::Result<Chunk> {
        Ok(reader.read_chunk(&mut self.connection, after).await?)
    }

    /// The rows of `keys` that exist, by key.
    pub async fn read_keys(&mut self, table: &TableSchema, keys: &[Key]) -> anyhow::Result<HashMap<Key, Row>> {
        let mut rows = HashMap::new();
        for batch in keys.chunks(1000) {
            let list = batch.iter().map(|key| format!("({})", literals(key))).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {} FROM {} WHERE ({}) IN ({list})",
                column_list(table),
                qualified(table),
                key_list(table)
            );
            let result = self.query(&sql, &format!("reading rows of {} by key", table.table)).await?;
            for row in result.rows.into_iter().map(into_row) {
                if let Some(key) = pgfanout_core::readback::key_texts(table, &row) {
                    rows.insert(key, row);
                }
            }
        }
        Ok(rows)
    }

    /// The server's current WAL insert position.
    pub async fn current_lsn(&mut self) -> anyhow::Result<Lsn> {
        let result = self.query("SELECT pg_catalog.pg_current_wal_lsn() AS lsn", "reading the WAL position").await?;
        result.get(0, "lsn").and_then(|lsn| lsn.parse().ok()).context("pg_current_wal_lsn() gave no LSN")
    }

    /// The slot's `confirmed_flush_lsn`: every sink holds what lies before it.
    pub async fn confirmed_flush(&mut self, slot: &str) -> anyhow::Result<Option<Lsn>> {
        let state = self.connection.slot_state(slot).await.with_context(|| format!("reading slot {slot}"))?;
        Ok(state.and_then(|state| state.confirmed_flush_lsn))
    }

    /// Writes a little WAL (a non-transactional logical message), so that
    /// an idle server's walsender sends a keepalive pgfanout can confirm.
    pub async fn nudge(&mut self) -> anyhow::Result<()> {
        self.query("SELECT pg_catalog.pg_logical_emit_message(false, 'pgfanout-verify', '')", "writing a WAL marker")
            .await
            .map(drop)
    }
}

fn qualified(table: &TableSchema) -> String {
    format!("{}.{}", escape_identifier(&table.table.schema), escape_identifier(&table.table.name))
}

fn column_list(table: &TableSchema) -> String {
    table.columns.iter().map(|column| escape_identifier(&column.name)).collect::<Vec<_>>().join(", ")
}

fn key_list(table: &TableSchema) -> String {
    table
        .key_positions()
        .map(|position| escape_identifier(&table.columns[position].name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn literals(key: &Key) -> String {
    key.iter().map(|text| escape_literal(text)).collect::<Vec<_>>().join(", ")
}

fn into_row(values: Vec<Option<String>>) -> Row {
    values
        .into_iter()
        .map(|value| match value {
            Some(text) => ColumnValue::Text(Bytes::from(text)),
            None => ColumnValue::Null,
        })
        .collect()
}
