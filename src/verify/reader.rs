//! PostgreSQL's side of `verify`: table shapes from the catalog and rows in
//! primary-key order, read over a connection with the replication stream's
//! session settings, so every value's text is the text the stream carries.
//!
//! Each read is one statement (its own snapshot), never a long transaction.
//! Keys travel as PostgreSQL's text of each key column and are compared by
//! the server as literals of the column's type.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use pg_replication::{QueryResult, ReplicationConnection};
use pgfanout_core::{ColumnSchema, ColumnValue, Lsn, Row, TableName, TableSchema};
use pgoutput::value::TypeKind;
use pgoutput::{Oid, ReplicaIdentity, TypeRegistry};
use postgres_protocol::escape::{escape_identifier, escape_literal};

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

    /// The shape the stream gives `table` under `publication`: its published
    /// columns (no generated ones, the publication's column list if any), in
    /// tuple order, the primary key's columns as key.
    pub async fn table_schema(&mut self, table: &TableName, publication: &str) -> anyhow::Result<TableSchema> {
        let qualified = format!("{}.{}", escape_identifier(&table.schema), escape_identifier(&table.name));
        let published = self
            .query(
                &format!(
                    "SELECT attnames FROM pg_catalog.pg_publication_tables WHERE pubname = {} AND schemaname = {} \
                     AND tablename = {}",
                    escape_literal(publication),
                    escape_literal(&table.schema),
                    escape_literal(&table.name)
                ),
                &format!("reading publication {publication}"),
            )
            .await?;
        let Some(row) = published.rows.first() else {
            bail!("table {table} is not in publication {publication}: add it (ALTER PUBLICATION {publication} ADD TABLE {table}) or take it out of the sink's config");
        };
        let column_list: Option<Vec<String>> = row.first().cloned().flatten().map(|names| {
            names.trim_matches(|c| c == '{' || c == '}').split(',').map(|n| n.trim_matches('"').to_owned()).collect()
        });
        let columns = self
            .query(
                &format!(
                    "SELECT a.attname, a.atttypid, COALESCE(a.attnum = ANY (i.indkey), false) AS is_key, \
                     c.oid AS relid, c.relreplident FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                     LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary \
                     WHERE a.attrelid = {}::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                     AND a.attgenerated = '' ORDER BY a.attnum",
                    escape_literal(&qualified)
                ),
                &format!("reading the columns of {table}"),
            )
            .await?;
        let mut schema_columns = Vec::new();
        for row in 0..columns.rows.len() {
            let name = columns.get(row, "attname").unwrap_or_default().to_owned();
            if column_list.as_ref().is_some_and(|list| !list.contains(&name)) {
                continue;
            }
            schema_columns.push(ColumnSchema {
                type_oid: Oid(columns.get(row, "atttypid").and_then(|oid| oid.parse().ok()).unwrap_or(25)),
                is_key: columns.get(row, "is_key") == Some("t"),
                name,
            });
        }
        if !schema_columns.iter().any(|column| column.is_key) {
            bail!("table {table} has no primary key: verify compares rows by primary key; add one (ALTER TABLE {table} ADD PRIMARY KEY (…))");
        }
        let replica_identity = match columns.get(0, "relreplident") {
            Some("f") => ReplicaIdentity::Full,
            Some("n") => ReplicaIdentity::Nothing,
            Some("i") => ReplicaIdentity::Index,
            _ => ReplicaIdentity::Default,
        };
        Ok(TableSchema {
            oid: Oid(columns.get(0, "relid").and_then(|oid| oid.parse().ok()).unwrap_or(0)),
            table: table.clone(),
            replica_identity,
            columns: schema_columns,
            types: Arc::clone(&self.types),
        })
    }

    /// Up to `limit` rows with a key above `after` (from the first when
    /// `None`), in key order.
    pub async fn read_chunk(
        &mut self,
        table: &TableSchema,
        after: Option<&Key>,
        limit: usize,
    ) -> anyhow::Result<Vec<Row>> {
        let keys = key_list(table);
        let filter = match after {
            Some(key) => format!(" WHERE ({keys}) > ({})", literals(key)),
            None => String::new(),
        };
        let sql =
            format!("SELECT {} FROM {}{filter} ORDER BY {keys} LIMIT {limit}", column_list(table), qualified(table));
        let result = self.query(&sql, &format!("reading rows of {}", table.table)).await?;
        Ok(result.rows.into_iter().map(into_row).collect())
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
