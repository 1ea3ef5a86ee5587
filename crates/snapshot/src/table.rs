//! A table's shape as the snapshot reads it, from the catalog.
//!
//! Invariant: the [`TableSchema`] built here has the columns, in the order,
//! with the type OIDs and key flags that pgoutput's Relation message for the
//! same table carries (non-dropped, non-generated columns in `attnum` order,
//! narrowed to the publication's column list where it has one; the key is
//! the replica identity index under `REPLICA IDENTITY USING INDEX`, the
//! primary key otherwise), so a snapshot row and a streamed insert of the
//! same row look the same to every sink and mapping.

use std::sync::Arc;

use pg_replication::ReplicationConnection;
use pgfanout_core::{ColumnSchema, TableName, TableSchema};
use pgoutput::{Oid, ReplicaIdentity, TypeRegistry};
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::error::SnapshotError;

/// A table ready to be read in key order.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    /// The table's shape, as a streamed change of it carries.
    pub schema: Arc<TableSchema>,
    /// Positions (in `schema.columns`) of the key columns, in the key
    /// index's column order: the order chunks are read in.
    pub key_positions: Vec<usize>,
    /// SQL type of each key column (`format_type`), same order, for the
    /// literals of the resume condition.
    pub key_types: Vec<String>,
    /// The version of the table's `pg_class` row when it was described
    /// (its `xmin`): an `ALTER TABLE` changes it, so a chunk read under
    /// another version was read with a stale column list.
    pub shape_version: String,
}

impl SnapshotTable {
    /// Reads the shape of `table` from the catalog over `connection`.
    /// `publication`, when given, narrows the columns to its column list
    /// (PostgreSQL 15+), as pgoutput does; `types` converts the values.
    pub async fn describe(
        connection: &mut ReplicationConnection,
        table: &TableName,
        publication: Option<&str>,
        types: Arc<TypeRegistry>,
    ) -> Result<SnapshotTable, SnapshotError> {
        let published_filter = match publication {
            Some(publication) if connection.server_version() >= 150000 => format!(
                " AND a.attname = ANY (COALESCE((SELECT p.attnames FROM pg_catalog.pg_publication_tables p \
                 WHERE p.pubname = {} AND p.schemaname = n.nspname AND p.tablename = c.relname), \
                 ARRAY[a.attname]))",
                escape_literal(publication)
            ),
            _ => String::new(),
        };
        let sql = format!(
            "SELECT c.oid, c.xmin::text AS shape_version, c.relreplident, a.attname, a.atttypid, \
             pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name, \
             array_position(k.columns, a.attnum) AS key_rank \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' \
             LEFT JOIN LATERAL (SELECT i.indkey::int2[] AS columns FROM pg_catalog.pg_index i \
               WHERE i.indrelid = c.oid AND CASE WHEN c.relreplident = 'i' THEN i.indisreplident \
               ELSE i.indisprimary END LIMIT 1) k ON true \
             WHERE n.nspname = {} AND c.relname = {}{published_filter} ORDER BY a.attnum",
            escape_literal(&table.schema),
            escape_literal(&table.name),
        );
        let result = connection.simple_query(&sql).await.map_err(|source| SnapshotError::Source {
            table: table.clone(),
            doing: "reading its columns from the catalog".to_owned(),
            source,
        })?;
        if result.rows.is_empty() {
            return Err(SnapshotError::NoSuchTable { table: table.clone() });
        }
        let unexpected = |what: &str| SnapshotError::Unexpected { table: table.clone(), what: what.to_owned() };
        let shape_version = result.get(0, "shape_version").ok_or_else(|| unexpected("shape_version"))?.to_owned();
        let oid = result.get(0, "oid").and_then(|text| text.parse().ok()).map(Oid).ok_or_else(|| unexpected("oid"))?;
        let replica_identity = match result.get(0, "relreplident") {
            Some("d") => ReplicaIdentity::Default,
            Some("n") => ReplicaIdentity::Nothing,
            Some("f") => ReplicaIdentity::Full,
            Some("i") => ReplicaIdentity::Index,
            _ => return Err(unexpected("relreplident")),
        };
        let mut columns = Vec::with_capacity(result.rows.len());
        let mut keys: Vec<(u32, usize, String)> = Vec::new();
        for row in 0..result.rows.len() {
            let name = result.get(row, "attname").ok_or_else(|| unexpected("attname"))?.to_owned();
            let type_oid = result
                .get(row, "atttypid")
                .and_then(|t| t.parse().ok())
                .map(Oid)
                .ok_or_else(|| unexpected("atttypid"))?;
            let key_rank: Option<u32> = result.get(row, "key_rank").and_then(|text| text.parse().ok());
            if let Some(rank) = key_rank {
                let type_name = result.get(row, "type_name").ok_or_else(|| unexpected("type_name"))?.to_owned();
                keys.push((rank, columns.len(), type_name));
            }
            columns.push(ColumnSchema { name, type_oid, is_key: key_rank.is_some() });
        }
        if keys.is_empty() {
            return Err(SnapshotError::NoKey { table: table.clone() });
        }
        keys.sort_by_key(|(rank, _, _)| *rank);
        let schema = TableSchema { oid, table: table.clone(), replica_identity, columns, types };
        Ok(SnapshotTable {
            schema: Arc::new(schema),
            key_positions: keys.iter().map(|(_, position, _)| *position).collect(),
            key_types: keys.into_iter().map(|(_, _, type_name)| type_name).collect(),
            shape_version,
        })
    }

    /// The table's name quoted for SQL (`"schema"."table"`).
    pub fn quoted_name(&self) -> String {
        format!("{}.{}", escape_identifier(&self.schema.table.schema), escape_identifier(&self.schema.table.name))
    }

    /// The key columns quoted and comma-separated, in key order.
    pub(crate) fn quoted_key_list(&self) -> String {
        self.key_positions
            .iter()
            .filter_map(|&position| self.schema.columns.get(position))
            .map(|column| escape_identifier(&column.name))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every column quoted and comma-separated, in tuple order.
    pub(crate) fn quoted_column_list(&self) -> String {
        self.schema.columns.iter().map(|column| escape_identifier(&column.name)).collect::<Vec<_>>().join(", ")
    }
}
